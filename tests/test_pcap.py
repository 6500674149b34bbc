"""Capture readers and writer: every format variant, any chunking, corrupt and truncated files."""

from __future__ import annotations

import io
import struct
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Dot1Q, Ether, Loopback
from scapy.packet import Packet, raw
from scapy.utils import EDecimal, PcapNgWriter, PcapWriter, rdpcap

from gateway.fastpath import reference
from gateway.fastpath.common import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)
from gateway.io.pcap import (
    MAX_RECORD,
    Batch,
    CaptureReader,
    PcapError,
    ip_offset,
    open_capture,
)
from gateway.io.pcap import (
    PcapWriter as GwPcapWriter,
)

T0 = 1_700_000_000_000_000  # µs
# explicit MACs: without a dst scapy resolves one through the neighbour table (slow, noisy)
MAC_A, MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"

Frame = tuple[int, int, bytes, int]  # linktype, ts_us, data, orig_len


def _scanners() -> list[Any]:
    out: list[Any] = [reference.scan_pcap_records]
    try:
        from gateway import _fastpath

        out.append(_fastpath.scan_pcap_records)
    except ImportError:
        pass
    return out


@pytest.fixture(params=_scanners(), ids=lambda f: f.__module__)
def scan(request: pytest.FixtureRequest) -> Any:
    return request.param


def ip_packets() -> list[Packet]:
    a, b = "198.18.20.10", "198.18.30.40"
    return [
        IP(src=a, dst=b) / TCP(sport=40000, dport=443, flags="S"),
        IP(src=b, dst=a) / TCP(sport=443, dport=40000, flags="SA"),
        IP(src=a, dst=b) / UDP(sport=5353, dport=53) / (b"x" * 300),
        IP(src=a, dst=b) / ICMP(type=8, id=7),
        IPv6(src="2001:db8:20::10", dst="2001:db8:30::40") / UDP(sport=1, dport=2) / b"v6",
    ]


def frames_for(linktype: int) -> list[bytes]:
    pkts = ip_packets()
    if linktype == LINKTYPE_ETHERNET:
        out = [
            raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=10) / Dot1Q(vlan=20) / p)
            for p in pkts
        ]
        out.append(raw(Ether(src=MAC_A, dst=MAC_B) / ARP()))
        out.append(raw(Ether(src=MAC_A, dst=MAC_B) / pkts[0]))
        return out
    if linktype == LINKTYPE_RAW:
        return [raw(p) for p in pkts]
    if linktype == LINKTYPE_LINUX_SLL:
        return [raw(CookedLinux(proto=0x86DD if p.version == 6 else 0x0800) / p) for p in pkts]
    if linktype == LINKTYPE_LINUX_SLL2:
        return [raw(CookedLinuxV2(proto=0x86DD if p.version == 6 else 0x0800) / p) for p in pkts]
    if linktype == LINKTYPE_NULL:
        return [raw(Loopback(type=24 if p.version == 6 else 2) / p) for p in pkts]
    raise AssertionError(linktype)


ALL_LINKTYPES = [LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_NULL]


def write_scapy_pcap(
    path: Path, linktype: int, frames: list[bytes], endianness: str = "", nano: bool = False
) -> list[int]:
    """Frames at T0 + i*1.000001 s (+7 ns with nanosecond files, which the reader truncates)."""
    # scapy reads linktype 0 as "not given": let it infer DLT_NULL from Loopback packets
    w = PcapWriter(str(path), linktype=linktype or None, endianness=endianness, nano=nano, sync=True)
    ts = []
    for i, data in enumerate(frames):
        us = T0 + i * 1_000_001
        ts.append(us)
        pkt = Loopback(data) if linktype == LINKTYPE_NULL else Packet(data)
        pkt.time = EDecimal(us) / 1_000_000 + (EDecimal("0.000000007") if nano else 0)
        w.write(pkt)
    w.close()
    return ts


def read_all(
    data: bytes, chunk_size: int = 4 << 20, scan: Any = None, reader_out: list[CaptureReader] | None = None
) -> list[Frame]:
    reader = open_capture(io.BytesIO(data), chunk_size, scan=scan)
    out = []
    for b in reader:
        for i in range(len(b)):
            out.append((b.linktype, b.ts_us[i], b.frame(i), b.orig_lengths[i]))
    if reader_out is not None:
        reader_out.append(reader)
    return out


class OneByte(io.RawIOBase):
    """A file that returns one byte per read(): the reader must never assume full reads."""

    def __init__(self, data: bytes) -> None:
        self._b = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._b.read(1 if n != 0 else 0)


# --- classic pcap -------------------------------------------------------------------------------
@pytest.mark.parametrize("linktype", ALL_LINKTYPES)
@pytest.mark.parametrize(("endianness", "nano"), [("<", False), (">", False), ("<", True), (">", True)])
def test_classic_variants(tmp_path: Path, scan: Any, linktype: int, endianness: str, nano: bool) -> None:
    frames = frames_for(linktype)
    path = tmp_path / "c.pcap"
    ts = write_scapy_pcap(path, linktype, frames, endianness, nano)
    data = path.read_bytes()
    expect = [(linktype, t, f, len(f)) for t, f in zip(ts, frames, strict=True)]
    readers: list[CaptureReader] = []
    assert read_all(data, scan=scan, reader_out=readers) == expect
    assert readers[0].format == ("pcap-ns" if nano else "pcap")
    assert not readers[0].truncated and not readers[0].warnings
    # any chunking gives the same frames
    for chunk in (64, 65, 100, 1000):
        assert read_all(data, chunk, scan=scan) == expect
    reader = open_capture(OneByte(data), 64, scan=scan)  # type: ignore[arg-type]
    assert [(b.linktype, b.ts_us[i], b.frame(i), b.orig_lengths[i]) for b in reader for i in range(len(b))] == expect


def test_classic_snaplen_orig_length(scan: Any) -> None:
    frame = frames_for(LINKTYPE_ETHERNET)[2]
    data = _classic_header() + struct.pack("<IIII", 1, 2, 64, len(frame)) + frame[:64]
    [(_, ts, data, orig)] = read_all(data, scan=scan)
    assert ts == 1_000_002
    assert data == frame[:64] and orig == len(frame)


def test_truncated_classic_warns_and_stops(tmp_path: Path, scan: Any) -> None:
    frames = frames_for(LINKTYPE_ETHERNET)
    path = tmp_path / "t.pcap"
    write_scapy_pcap(path, 1, frames)
    data = path.read_bytes()
    full = read_all(data, scan=scan)
    # cut everywhere after the file header: a prefix of the records, flagged truncated
    for cut in range(24, len(data)):
        readers: list[CaptureReader] = []
        got = read_all(data[:cut], 64, scan=scan, reader_out=readers)
        assert got == full[: len(got)]
        ends = {24 + sum(16 + len(f[2]) for f in full[:k]) for k in range(len(full) + 1)}
        assert readers[0].truncated == (cut not in ends)
        if readers[0].truncated:
            assert "truncated" in readers[0].warnings[0]


def test_bad_magic_and_short_files() -> None:
    with pytest.raises(PcapError) as e:
        read_all(b"GIF89a" + b"\x00" * 40)
    assert e.value.offset == 0
    with pytest.raises(PcapError):
        read_all(b"\xd4\xc3")
    with pytest.raises(PcapError):
        read_all(b"\xd4\xc3\xb2\xa1\x02\x00")


def _classic_header(big: bool = False) -> bytes:
    return struct.pack(">IHHiIII" if big else "<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)


@pytest.mark.parametrize("big", [False, True])
def test_record_too_long_is_an_error(scan: Any, big: bool) -> None:
    fmt = ">IIII" if big else "<IIII"
    good = struct.pack(fmt, 1, 0, 60, 60) + b"\x00" * 60
    bad = struct.pack(fmt, 1, 0, MAX_RECORD + 1, MAX_RECORD + 1)
    data = _classic_header(big) + good + bad + b"\x00" * 100
    with pytest.raises(PcapError) as e:
        read_all(data, scan=scan)
    assert e.value.offset == 24 + 16 + 60
    # a record of exactly the limit is fine, even when far larger than a chunk
    ok = struct.pack(fmt, 1, 0, MAX_RECORD, MAX_RECORD) + b"\x01" * MAX_RECORD
    got = read_all(_classic_header(big) + good + ok, 64, scan=scan)
    assert [len(f[2]) for f in got] == [60, MAX_RECORD]


def test_empty_capture_has_no_batches(scan: Any) -> None:
    assert read_all(_classic_header(), scan=scan) == []


# --- pcapng -------------------------------------------------------------------------------------
class NgBuilder:
    """Hand-made pcapng, for what scapy cannot write (big endian, several link types, tsresol)."""

    def __init__(self, endian: str = "<") -> None:
        self.e = endian
        self.out = bytearray()

    def block(self, btype: int, body: bytes) -> NgBuilder:
        body = body + b"\x00" * (-len(body) % 4)
        n = 12 + len(body)
        self.out += struct.pack(self.e + "II", btype, n) + body + struct.pack(self.e + "I", n)
        return self

    def shb(self) -> NgBuilder:
        return self.block(0x0A0D0D0A, struct.pack(self.e + "IHHq", 0x1A2B3C4D, 1, 0, -1))

    def idb(
        self, linktype: int, tsresol: int | None = None, tsoffset: int | None = None, snaplen: int = 0
    ) -> NgBuilder:
        opts = b""
        opts += struct.pack(self.e + "HH", 2, 3) + b"eth\x00"  # if_name, padded
        if tsresol is not None:
            opts += struct.pack(self.e + "HH", 9, 1) + bytes([tsresol]) + b"\x00\x00\x00"
        if tsoffset is not None:
            opts += struct.pack(self.e + "HHq", 14, 8, tsoffset)
        opts += struct.pack(self.e + "HH", 0, 0)
        return self.block(1, struct.pack(self.e + "HHI", linktype, 0, snaplen) + opts)

    def epb(self, if_id: int, ts: int, data: bytes, orig: int | None = None) -> NgBuilder:
        body = struct.pack(self.e + "IIIII", if_id, ts >> 32, ts & 0xFFFFFFFF, len(data), orig or len(data))
        body += data + b"\x00" * (-len(data) % 4)
        body += struct.pack(self.e + "HH", 1, 5) + b"hello\x00\x00\x00" + struct.pack(self.e + "HH", 0, 0)
        return self.block(6, body)

    def opb(self, if_id: int, ts: int, data: bytes) -> NgBuilder:
        body = struct.pack(self.e + "HHIIII", if_id, 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data)) + data
        return self.block(2, body)

    def spb(self, data: bytes) -> NgBuilder:
        return self.block(3, struct.pack(self.e + "I", len(data)) + data)


def test_pcapng_from_scapy(tmp_path: Path) -> None:
    frames = frames_for(LINKTYPE_ETHERNET)
    path = tmp_path / "s.pcapng"
    w = PcapNgWriter(str(path))
    for i, f in enumerate(frames):
        p = Ether(f)
        p.time = EDecimal(T0 + i * 1000) / 1_000_000
        w.write(p)
    w.close()
    readers: list[CaptureReader] = []
    got = read_all(path.read_bytes(), reader_out=readers)
    assert got == [(1, T0 + i * 1000, f, len(f)) for i, f in enumerate(frames)]
    assert readers[0].format == "pcapng"


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_interfaces_linktypes_resolutions(endian: str) -> None:
    eth = frames_for(LINKTYPE_ETHERNET)
    rawf = frames_for(LINKTYPE_RAW)
    sll2 = frames_for(LINKTYPE_LINUX_SLL2)
    b = NgBuilder(endian).shb()
    b.idb(LINKTYPE_ETHERNET)  # 0: µs
    b.idb(LINKTYPE_RAW, tsresol=9)  # 1: ns
    b.idb(LINKTYPE_LINUX_SLL2, tsresol=0x80 | 10, tsoffset=100)  # 2: 2^-10 s, +100 s
    b.block(4, b"\x00" * 8)  # name resolution block: skipped
    b.block(5, struct.pack(endian + "III", 0, 0, 0))  # interface statistics: skipped
    b.block(0x40000BAD, b"custom")  # unknown/custom: skipped
    b.epb(0, T0, eth[0])
    b.epb(0, T0 + 1, eth[1])
    b.epb(1, (T0 + 2) * 1000 + 999, rawf[0])
    b.epb(2, 1024 * 5, sll2[0])  # 5 s
    b.opb(0, T0 + 3, eth[2])
    b.spb(eth[3])  # no timestamp: the previous one
    b.epb(1, (T0 + 4) * 1000, rawf[1], orig=1500)
    data = bytes(b.out)
    expect = [
        (1, T0, eth[0], len(eth[0])),
        (1, T0 + 1, eth[1], len(eth[1])),
        (101, T0 + 2, rawf[0], len(rawf[0])),
        (276, 105_000_000, sll2[0], len(sll2[0])),
        (1, T0 + 3, eth[2], len(eth[2])),
        (1, T0 + 3, eth[3], len(eth[3])),
        (101, T0 + 4, rawf[1], 1500),
    ]
    for chunk in (4 << 20, 64, 77, 200):
        readers: list[CaptureReader] = []
        assert read_all(data, chunk, reader_out=readers) == expect
        assert readers[0].linktypes == {1, 101, 276}
    # consecutive frames of one link type share a batch; a change starts a new one
    batches = list(open_capture(io.BytesIO(data)))
    assert [(x.linktype, len(x)) for x in batches] == [(1, 2), (101, 1), (276, 1), (1, 2), (101, 1)]


def test_pcapng_two_sections_reset_interfaces() -> None:
    f = frames_for(LINKTYPE_RAW)[0]
    b = NgBuilder("<").shb().idb(LINKTYPE_ETHERNET).epb(0, T0, frames_for(1)[0])
    b2 = NgBuilder(">").shb().idb(LINKTYPE_RAW).epb(0, T0 + 5, f)
    got = read_all(bytes(b.out + b2.out), 64)
    assert [(x[0], x[1]) for x in got] == [(1, T0), (101, T0 + 5)]


def test_pcapng_corrupt() -> None:
    f = frames_for(LINKTYPE_ETHERNET)[0]
    good = bytes(NgBuilder().shb().idb(1).epb(0, T0, f).out)
    # truncated: warn and stop, the complete blocks are kept
    readers: list[CaptureReader] = []
    assert read_all(good[:-3], reader_out=readers) == []
    assert readers[0].truncated
    two = bytes(NgBuilder().shb().idb(1).epb(0, T0, f).epb(0, T0, f).out)
    readers = []
    assert len(read_all(two[:-10], 64, reader_out=readers)) == 1 and readers[0].truncated
    # a packet of an interface that was never described
    with pytest.raises(PcapError, match="unknown interface"):
        read_all(bytes(NgBuilder().shb().idb(1).epb(3, T0, f).out))
    # block length not a multiple of 4 / huge
    bad = bytearray(good)
    shb_len = struct.unpack_from("<I", bad, 4)[0]
    struct.pack_into("<I", bad, shb_len + 4, 13)
    with pytest.raises(PcapError, match="bad length") as e:
        read_all(bytes(bad))
    assert e.value.offset == shb_len
    struct.pack_into("<I", bad, shb_len + 4, 1 << 30)
    with pytest.raises(PcapError, match="bad length"):
        read_all(bytes(bad))
    # trailer length differs
    bad = bytearray(good)
    bad[-4:] = b"\x00\x00\x00\x00"
    with pytest.raises(PcapError, match="trailer"):
        read_all(bytes(bad))
    # byte-order magic
    bad = bytearray(good)
    bad[8:12] = b"\x00\x00\x00\x00"
    with pytest.raises(PcapError, match="byte-order"):
        read_all(bytes(bad))
    # captured length larger than the block
    bad = bytearray(good)
    epb = len(good) - struct.unpack_from("<I", good, len(good) - 4)[0]
    struct.pack_into("<I", bad, epb + 8 + 12, 4000)
    with pytest.raises(PcapError, match="overruns"):
        read_all(bytes(bad))


# --- link layer helpers ------------------------------------------------------------------------
@pytest.mark.parametrize("linktype", ALL_LINKTYPES)
def test_ip_offset(linktype: int) -> None:
    for f in frames_for(linktype):
        off = ip_offset(linktype, f)
        if linktype == LINKTYPE_ETHERNET and Ether(f).haslayer(ARP):
            assert off is None
            continue
        assert off is not None
        assert f[off] >> 4 in (4, 6)
        pkt = IP(f[off:]) if f[off] >> 4 == 4 else IPv6(f[off:])
        assert pkt.haslayer(TCP) or pkt.haslayer(UDP) or pkt.haslayer(ICMP)
    assert ip_offset(LINKTYPE_ETHERNET, b"\x00" * 10) is None
    assert ip_offset(LINKTYPE_NULL, struct.pack(">I", 2) + b"E") == 4  # big-endian writer
    assert ip_offset(999, b"\x45" * 40) is None


def _frag_frames(linktype: int) -> Iterator[tuple[bytes, bool]]:
    """(frame, is_fragment) for a mix that includes fragments the engine will flag."""
    a, b = "198.18.20.10", "198.18.30.40"
    pkts: list[tuple[Packet, bool]] = []
    for p in fragment(IP(src=a, dst=b, flags="DF") / UDP() / (b"z" * 3000), fragsize=1000):
        pkts.append((p, True))
    pkts.append((IP(src=a, dst=b, flags="DF") / TCP(), False))
    v6 = IPv6(src="2001:db8::1", dst="2001:db8::2")
    pkts.append((v6 / IPv6ExtHdrFragment(offset=0, m=1, id=9) / (b"a" * 64), True))
    pkts.append((v6 / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(offset=8, m=0, id=9) / (b"a" * 64), True))
    pkts.append((v6 / UDP() / b"x", False))
    for p, is_frag in pkts:
        if linktype == LINKTYPE_ETHERNET:
            yield raw(Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=3) / p), is_frag
        elif linktype == LINKTYPE_LINUX_SLL:
            yield raw(CookedLinux(proto=0x86DD if p.version == 6 else 0x0800) / p), is_frag
        elif linktype == LINKTYPE_LINUX_SLL2:
            yield raw(CookedLinuxV2(proto=0x86DD if p.version == 6 else 0x0800) / p), is_frag
        elif linktype == LINKTYPE_NULL:
            yield raw(Loopback(type=30 if p.version == 6 else 2) / p), is_frag
        else:
            yield raw(p), is_frag


def _batch(linktype: int, frames: list[bytes]) -> Batch:
    buf = b""
    offsets, lengths, ts, orig = array("q"), array("q"), array("q"), array("q")
    for i, f in enumerate(frames):
        buf += struct.pack("<IIII", 1, i, len(f), len(f))
        offsets.append(len(buf))
        lengths.append(len(f))
        ts.append(1_000_000 + i)
        orig.append(len(f))
        buf += f
    return Batch(buf, offsets, lengths, ts, orig, linktype, raw_records=True)


@pytest.mark.parametrize("linktype", ALL_LINKTYPES)
def test_decide_frames_stops_after_each_fragment(linktype: int, engine_cls: Any) -> None:
    """Replay relies on this to decide a reassembled datagram before the frames after it."""
    from gateway.fastpath.common import FRAGMENT, CompiledPolicy

    items = list(_frag_frames(linktype))
    batch = _batch(linktype, [f for f, _ in items])
    eng = engine_cls(CompiledPolicy(zones=(), prefixes=(), interfaces={}, rules=()))
    out = bytearray(len(batch))
    pos, stops = 0, []
    while pos < len(batch):
        pos = eng.decide_frames(batch.buf, batch.offsets, batch.lengths, batch.ts_us, linktype, out, pos)
        stops.append(pos)
    fragments = [i for i, (_, is_frag) in enumerate(items) if is_frag]
    assert [i for i, v in enumerate(out) if v == FRAGMENT] == fragments
    assert stops == [i + 1 for i in fragments] + ([len(batch)] if fragments[-1] != len(batch) - 1 else [])
    assert eng.counters()["packets"] == len(batch)  # each frame decided exactly once


# --- writer -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("endianness", "nano"), [("<", False), (">", True)])
def test_writer_selected_records(tmp_path: Path, endianness: str, nano: bool) -> None:
    frames = frames_for(LINKTYPE_ETHERNET)
    src = tmp_path / "in.pcap"
    ts = write_scapy_pcap(src, 1, frames, endianness, nano)
    select = bytes([1, 1, 0, 1, 0, 0, 1])
    out = io.BytesIO()
    w = GwPcapWriter(out, LINKTYPE_ETHERNET)
    n = 0
    for b in open_capture(io.BytesIO(src.read_bytes()), 100):
        assert b.raw_records == (endianness == "<" and not nano)
        k = len(b)
        n += w.write_selected(b, select[:k], 1)
        select = select[k:]
    assert n == w.records == 4
    dst = tmp_path / "out.pcap"
    dst.write_bytes(out.getvalue())
    got = rdpcap(str(dst))
    keep = [0, 1, 3, 6]
    assert [raw(p) for p in got] == [frames[i] for i in keep]
    assert [round(float(p.time) * 1e6) for p in got] == [ts[i] for i in keep]
    header = out.getvalue()[:24]
    assert struct.unpack("<IHHiIII", header) == (0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)


def test_writer_rejects_other_linktype() -> None:
    w = GwPcapWriter(io.BytesIO(), LINKTYPE_RAW)
    with pytest.raises(ValueError):
        w.write_selected(_batch(LINKTYPE_ETHERNET, [b"\x00" * 20]), b"\x01", 1)
