"""Streaming capture readers (classic pcap, pcapng) and a classic pcap writer.

Files are read in bounded chunks, so a multi-GB capture costs a few MiB of memory. Each chunk
becomes one or more `Batch`es laid out the way `Engine.decide_frames` wants them: one buffer,
`array('q')` offsets/lengths/timestamps (integer microseconds) and one link type.

Classic pcap records are indexed by `gateway.fastpath.scan_pcap_records` (compiled when the fast
path is built); pcapng blocks are walked here in Python, since pcapng is rarely used for the
multi-GB captures where speed matters.
"""

from __future__ import annotations

import logging
import re
import struct
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from gateway.fastpath.common import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
# Larger than any snap length tcpdump/dumpcap write (262144); a bigger record is corruption, and
# without a bound a corrupt length would make the reader buffer the rest of the file.
MAX_RECORD = 256 * 1024
# pcapng blocks also carry options around the packet data
MAX_BLOCK = MAX_RECORD + 64 * 1024

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D

_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_IPV6 = 0x86DD
_VLAN_TPIDS = frozenset({0x8100, 0x88A8, 0x9100})
_BSD_AF_INET6 = frozenset({10, 24, 28, 30})

ScanFn = Callable[[bytes, int, bool, bool, "array[int]", "array[int]", "array[int]", "array[int]"], int]


class PcapError(Exception):
    """A capture that cannot be read; `offset` is the file offset where the problem is."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at byte offset {offset})")
        self.offset = offset


@dataclass(eq=False)
class Batch:
    """Frames of one link type, in capture order, ready for `Engine.decide_frames`.

    `raw_records`: every frame is preceded in `buf` by its little-endian microsecond classic
    pcap record header (16 bytes) and consecutive frames are contiguous, so the writer can copy
    runs of records verbatim.
    """

    buf: bytes
    offsets: array[int]
    lengths: array[int]
    ts_us: array[int]
    orig_lengths: array[int]
    linktype: int
    raw_records: bool = False

    def __len__(self) -> int:
        return len(self.offsets)

    def frame(self, i: int) -> bytes:
        off = self.offsets[i]
        return self.buf[off : off + self.lengths[i]]

    def slice(self, start: int, stop: int) -> Batch:
        """Frames [start, stop) sharing the same buffer (arrays are copied, the buffer is not)."""
        return Batch(
            self.buf,
            self.offsets[start:stop],
            self.lengths[start:stop],
            self.ts_us[start:stop],
            self.orig_lengths[start:stop],
            self.linktype,
            self.raw_records,
        )


def _new_arrays() -> tuple[array[int], array[int], array[int], array[int]]:
    return array("q"), array("q"), array("q"), array("q")


@dataclass(eq=False)
class CaptureReader:
    """Common state of both readers: what the summary reports besides the frames."""

    fileobj: BinaryIO
    chunk_size: int = DEFAULT_CHUNK_SIZE
    format: str = ""
    warnings: list[str] = field(default_factory=list)
    truncated: bool = False
    linktypes: set[int] = field(default_factory=set)
    frames: int = 0
    bytes_read: int = 0

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning("%s", message)

    def __iter__(self) -> Iterator[Batch]:  # pragma: no cover - overridden
        raise NotImplementedError


@dataclass(eq=False)
class PcapReader(CaptureReader):
    """Classic pcap, either byte order, microsecond or nanosecond timestamps."""

    scan: ScanFn | None = None

    def __iter__(self) -> Iterator[Batch]:
        f = self.fileobj
        head = _read_exact(f, 24)
        if len(head) < 24:
            raise PcapError("file too short for a pcap header", 0)
        magic_le = struct.unpack_from("<I", head)[0]
        magic_be = struct.unpack_from(">I", head)[0]
        if magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            big, nanosecond = False, magic_le == PCAP_MAGIC_NS
        elif magic_be in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            big, nanosecond = True, magic_be == PCAP_MAGIC_NS
        else:
            raise PcapError(f"not a pcap file (magic {head[:4].hex()})", 0)
        network = struct.unpack_from(">I" if big else "<I", head, 20)[0]
        linktype = network & 0x0FFFFFFF  # upper bits: FCS length flags
        self.format = "pcap-ns" if nanosecond else "pcap"
        self.linktypes.add(linktype)
        # Records can be copied verbatim by the writer only if their header is already in its format.
        raw_records = not big and not nanosecond
        scan = self.scan
        if scan is None:
            from gateway.fastpath import scan_pcap_records

            scan = scan_pcap_records
        chunk_size = max(self.chunk_size, 64)
        buf = b""
        base = 24  # file offset of buf[0]
        pos = 0  # first unindexed byte in buf
        while True:
            need = chunk_size
            if len(buf) - pos >= 16:
                # the pending record may be larger than a chunk: read at least all of it
                incl = struct.unpack_from(">I" if big else "<I", buf, pos + 8)[0]
                need = max(need, 16 + incl - (len(buf) - pos))
            data = f.read(need)
            if not data:
                break
            self.bytes_read += len(data)
            buf = buf[pos:] + data
            base += pos
            pos = 0
            offsets, lengths, ts_us, orig = _new_arrays()
            pos = scan(buf, 0, nanosecond, big, offsets, lengths, ts_us, orig)
            if offsets and max(lengths) > MAX_RECORD:
                i = next(i for i, n in enumerate(lengths) if n > MAX_RECORD)
                raise PcapError(f"record length {lengths[i]} exceeds {MAX_RECORD}", base + offsets[i] - 16)
            if len(buf) - pos >= 16:
                incl = struct.unpack_from(">I" if big else "<I", buf, pos + 8)[0]
                if incl > MAX_RECORD:
                    raise PcapError(f"record length {incl} exceeds {MAX_RECORD}", base + pos)
            if offsets:
                self.frames += len(offsets)
                yield Batch(buf, offsets, lengths, ts_us, orig, linktype, raw_records)
        if pos < len(buf):
            self.truncated = True
            self._warn(f"capture truncated: incomplete last record at byte offset {base + pos}, ignored")


@dataclass(eq=False)
class _Interface:
    linktype: int
    snaplen: int
    # timestamp units per second and offset (seconds), from if_tsresol / if_tsoffset
    units: int = 1_000_000
    offset_s: int = 0


@dataclass(eq=False)
class PcapNgReader(CaptureReader):
    """pcapng: sections of either byte order, any number of interfaces and link types.

    Enhanced, simple and (obsolete) packet blocks are read; other blocks are skipped. Consecutive
    frames of one link type share a batch, so batches never reorder packets.
    """

    def __iter__(self) -> Iterator[Batch]:
        self.format = "pcapng"
        f = self.fileobj
        chunk_size = max(self.chunk_size, 64)
        buf = b""
        base = 0
        pos = 0
        endian = "<"
        ifaces: list[_Interface] = []
        last_ts = 0
        seen_shb = False
        while True:
            need = chunk_size
            if len(buf) - pos >= 12:
                blen = _block_len(buf, pos, endian)
                if blen is not None:
                    need = max(need, blen - (len(buf) - pos))
            data = f.read(need)
            if not data:
                break
            self.bytes_read += len(data)
            buf = buf[pos:] + data
            base += pos
            pos = 0
            n = len(buf)
            offsets, lengths, ts_us, orig = _new_arrays()
            cur_link = -1
            while pos + 12 <= n:
                if buf[pos : pos + 4] == b"\x0a\x0d\x0d\x0a":
                    bom = buf[pos + 8 : pos + 12]
                    if bom == b"\x4d\x3c\x2b\x1a":
                        endian = "<"
                    elif bom == b"\x1a\x2b\x3c\x4d":
                        endian = ">"
                    else:
                        raise PcapError("pcapng section header with a bad byte-order magic", base + pos)
                elif not seen_shb:
                    raise PcapError(f"not a pcap or pcapng file (magic {buf[:4].hex()})", base + pos)
                btype, blen = struct.unpack_from(endian + "II", buf, pos)
                if blen < 12 or blen % 4 or blen > MAX_BLOCK:
                    raise PcapError(f"pcapng block of type {btype:#x} with bad length {blen}", base + pos)
                if pos + blen > n:
                    break  # incomplete: next chunk
                body = pos + 8
                end = pos + blen - 4
                if struct.unpack_from(endian + "I", buf, end)[0] != blen:
                    raise PcapError("pcapng block trailer length differs from header", base + pos)
                frame: tuple[int, int, int, int, int] | None = None  # iface, off, caplen, len, ts
                if btype == PCAPNG_SHB:
                    seen_shb = True
                    ifaces = []  # interface ids are per section
                elif btype == 1:  # IDB
                    if end - body < 8:
                        raise PcapError("pcapng interface block too short", base + pos)
                    link, _, snap = struct.unpack_from(endian + "HHI", buf, body)
                    iface = _Interface(link, snap)
                    _read_idb_options(buf, body + 8, end, endian, iface)
                    ifaces.append(iface)
                    self.linktypes.add(link)
                elif btype == 6:  # EPB
                    if end - body < 20:
                        raise PcapError("pcapng enhanced packet block too short", base + pos)
                    if_id, hi, lo, cap, length = struct.unpack_from(endian + "IIIII", buf, body)
                    frame = (if_id, body + 20, cap, length, (hi << 32) | lo)
                elif btype == 2:  # obsolete packet block
                    if end - body < 20:
                        raise PcapError("pcapng packet block too short", base + pos)
                    if_id, _, hi, lo, cap, length = struct.unpack_from(endian + "HHIIII", buf, body)
                    frame = (if_id, body + 20, cap, length, (hi << 32) | lo)
                elif btype == 3:  # SPB: interface 0, no timestamp
                    if end - body < 4:
                        raise PcapError("pcapng simple packet block too short", base + pos)
                    length = struct.unpack_from(endian + "I", buf, body)[0]
                    snap = ifaces[0].snaplen if ifaces else 0
                    cap = min(length, end - body - 4, snap or length)
                    frame = (0, body + 4, cap, length, -1)
                if frame is not None:
                    if_id, off, cap, length, raw_ts = frame
                    if if_id >= len(ifaces):
                        raise PcapError(f"packet block refers to unknown interface {if_id}", base + pos)
                    if off + cap > end:
                        raise PcapError(f"packet data ({cap} bytes) overruns its block", base + pos)
                    if cap > MAX_RECORD:
                        raise PcapError(f"record length {cap} exceeds {MAX_RECORD}", base + pos)
                    iface = ifaces[if_id]
                    if raw_ts < 0:
                        ts = last_ts  # SPBs carry no time: keep the stream's clock monotone
                    else:
                        ts = _ts_us(raw_ts, iface)
                        last_ts = ts
                    if iface.linktype != cur_link and offsets:
                        self.frames += len(offsets)
                        yield Batch(buf, offsets, lengths, ts_us, orig, cur_link)
                        offsets, lengths, ts_us, orig = _new_arrays()
                    cur_link = iface.linktype
                    offsets.append(off)
                    lengths.append(cap)
                    ts_us.append(ts)
                    orig.append(length)
                pos += blen
            if offsets:
                self.frames += len(offsets)
                yield Batch(buf, offsets, lengths, ts_us, orig, cur_link)
        if not seen_shb and not buf:
            raise PcapError("empty file", 0)
        if pos < len(buf):
            self.truncated = True
            self._warn(f"capture truncated: incomplete last pcapng block at byte offset {base + pos}, ignored")


def _block_len(buf: bytes, pos: int, endian: str) -> int | None:
    if buf[pos : pos + 4] == b"\x0a\x0d\x0d\x0a":
        endian = "<" if buf[pos + 8 : pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
    blen: int = struct.unpack_from(endian + "I", buf, pos + 4)[0]
    return blen if blen <= MAX_BLOCK else None


def _read_idb_options(buf: bytes, pos: int, end: int, endian: str, iface: _Interface) -> None:
    while pos + 4 <= end:
        code, olen = struct.unpack_from(endian + "HH", buf, pos)
        if code == 0:
            break
        val = pos + 4
        if code == 9 and olen >= 1:  # if_tsresol
            r = buf[val]
            iface.units = 2 ** (r & 0x7F) if r & 0x80 else 10**r
        elif code == 14 and olen >= 8:  # if_tsoffset, seconds
            iface.offset_s = struct.unpack_from(endian + "q", buf, val)[0]
        pos = val + ((olen + 3) & ~3)


def _ts_us(raw: int, iface: _Interface) -> int:
    units = iface.units
    if units == 1_000_000:
        us = raw
    elif units % 1_000_000 == 0:
        us = raw // (units // 1_000_000)
    else:
        us = raw * 1_000_000 // units
    return us + iface.offset_s * 1_000_000


def _read_exact(f: BinaryIO, n: int) -> bytes:
    parts = []
    while n > 0:
        b = f.read(n)
        if not b:
            break
        parts.append(b)
        n -= len(b)
    return b"".join(parts)


class _Prefixed:
    """A file object that first returns already-read bytes (the sniffed magic)."""

    def __init__(self, head: bytes, f: BinaryIO) -> None:
        self._head = head
        self._f = f

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0:
                out = self._head + self._f.read()
                self._head = b""
                return out
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self._f.read(n)


def open_capture(fileobj: BinaryIO, chunk_size: int = DEFAULT_CHUNK_SIZE, scan: ScanFn | None = None) -> CaptureReader:
    """Sniff the format from the first bytes and return the matching reader (iterate it)."""
    head = _read_exact(fileobj, 4)
    if len(head) < 4:
        raise PcapError("file too short to be a capture", 0)
    stream: BinaryIO = _Prefixed(head, fileobj)  # type: ignore[assignment]
    if head == b"\x0a\x0d\x0d\x0a":
        return PcapNgReader(stream, chunk_size)
    if head in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"):
        return PcapReader(stream, chunk_size, scan=scan)
    raise PcapError(f"not a pcap or pcapng file (magic {head.hex()})", 0)


def iter_capture(path: str | Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[Batch]:
    """Convenience: all batches of a capture file."""
    with open(path, "rb") as f:
        yield from open_capture(f, chunk_size)


# --- link layer -------------------------------------------------------------------------------
def ip_offset(linktype: int, frame: bytes) -> int | None:
    """Offset of the IPv4/IPv6 header in a link-layer frame, None if it carries no IP.

    The engine strips link layers itself; this is for the rare frames replay handles in Python
    (fragments). Same rules as the engine (docs/design.md "Link layer").
    """
    n = len(frame)
    if linktype == LINKTYPE_ETHERNET:
        pos = 12
        while pos + 2 <= n:
            etype = (frame[pos] << 8) | frame[pos + 1]
            if etype in _VLAN_TPIDS:
                pos += 4
                continue
            return pos + 2 if etype in (_ETHERTYPE_IPV4, _ETHERTYPE_IPV6) else None
        return None
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return 0
    if linktype == LINKTYPE_LINUX_SLL:
        if n >= 16 and ((frame[14] << 8) | frame[15]) in (_ETHERTYPE_IPV4, _ETHERTYPE_IPV6):
            return 16
        return None
    if linktype == LINKTYPE_LINUX_SLL2:
        if n >= 20 and ((frame[0] << 8) | frame[1]) in (_ETHERTYPE_IPV4, _ETHERTYPE_IPV6):
            return 20
        return None
    if linktype == LINKTYPE_NULL:
        if n < 4:
            return None
        family = int.from_bytes(frame[:4], "little")
        if family > 0xFFFF:  # written by a big-endian host
            family = int.from_bytes(frame[:4], "big")
        return 4 if family == 2 or family in _BSD_AF_INET6 else None
    return None


# --- writer -----------------------------------------------------------------------------------
_REC = struct.Struct("<IIII")


class PcapWriter:
    """Classic pcap, little-endian, microsecond timestamps, one link type."""

    def __init__(self, fileobj: BinaryIO, linktype: int, snaplen: int = 262144) -> None:
        self._f = fileobj
        self.linktype = linktype
        self.records = 0
        fileobj.write(struct.pack("<IHHiIII", PCAP_MAGIC_US, 2, 4, 0, 0, snaplen, linktype))

    def write(self, ts_us: int, frame: bytes, orig_len: int | None = None) -> None:
        sec, usec = divmod(ts_us, 1_000_000)
        self._f.write(_REC.pack(sec & 0xFFFFFFFF, usec, len(frame), orig_len if orig_len is not None else len(frame)))
        self._f.write(frame)
        self.records += 1

    def write_selected(
        self, batch: Batch, verdicts: bytes | bytearray, value: int, start: int = 0, stop: int = -1
    ) -> int:
        """Write the frames i in [start, stop) with verdicts[i] == value; return how many.

        Runs of selected frames are found by a regex (C speed); for classic microsecond input
        each run is one slice of the input buffer, headers included.
        """
        if stop < 0:
            stop = len(batch)
        if batch.linktype != self.linktype:
            raise ValueError(f"batch link type {batch.linktype} differs from the output's {self.linktype}")
        buf = batch.buf
        offs = batch.offsets
        lens = batch.lengths
        written = 0
        run = re.compile(re.escape(bytes([value])) + b"+")
        for m in run.finditer(verdicts, start, stop):
            a, b = m.start(), m.end()
            written += b - a
            if batch.raw_records:
                self._f.write(buf[offs[a] - 16 : offs[b - 1] + lens[b - 1]])
            else:
                ts = batch.ts_us
                orig = batch.orig_lengths
                for i in range(a, b):
                    off = offs[i]
                    self.write(ts[i], buf[off : off + lens[i]], orig[i])
        if batch.raw_records:
            self.records += written
        return written

    def flush(self) -> None:
        self._f.flush()
