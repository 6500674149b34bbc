"""Sans-I/O IPv4/IPv6 defragmenter for replay (docs/design.md "Fragments in replay").

Live, conntrack reassembles fragments before the queue; replay does it here so that the engine
decides whole datagrams in both modes. Fragments go in with an opaque handle (replay passes what
it needs to write the frame later); a completed datagram comes out with the handles of all its
fragments, so the caller can give every held fragment the datagram's verdict.

Policy, stricter than RFC 791 and like Linux for IPv6 (RFC 5722): any overlap, even an exact
duplicate, drops the whole datagram, and later fragments of it are dropped until the reassembly
timeout. Everything is bounded: pending datagrams, fragments per datagram, datagram size, held
bytes and time (counted from the first fragment, like `ipfrag_time`).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gateway.fastpath.common import (
    DROP,
    EV_ANOMALY,
    IPV4_MAPPED_PREFIX,
    R_FRAGMENT_LIMIT,
    R_FRAGMENT_OVERLAP,
    R_MALFORMED,
    RawEvent,
)

H = TypeVar("H")

# IPv6 extension headers that may precede a fragment header (hop-by-hop, routing, destination
# options, mobility, HIP, shim6) and AH, whose length is counted in 4-byte units.
_IPV6_EXT = frozenset({0, 43, 60, 135, 139, 140})
_IPV6_AH = 51
_IPV6_FRAG = 44
_MAX_EXT_HEADERS = 16


@dataclass(frozen=True)
class DefragLimits:
    max_datagrams: int = 4096
    max_fragments: int = 64
    max_datagram_size: int = 65535  # IPv4 total length / IPv6 payload length (ping of death)
    max_held_bytes: int = 32 * 1024 * 1024
    timeout_us: int = 30_000_000


@dataclass(frozen=True)
class Reassembled(Generic[H]):
    handles: tuple[H, ...]  # every fragment of the datagram, in arrival order
    packet: bytes  # the reassembled IP packet
    ts_us: int  # time of the fragment that completed it


@dataclass(frozen=True)
class Dropped(Generic[H]):
    handles: tuple[H, ...]
    reason: int  # R_FRAGMENT_OVERLAP, R_FRAGMENT_LIMIT or R_MALFORMED
    # one anomaly event per dropped datagram; None for fragments of an already dropped datagram
    event: RawEvent | None


Result = Reassembled[H] | Dropped[H]

_Key = tuple[int, int, int, int, int]  # family, src, dst, id, proto (-1 for IPv6)


@dataclass(eq=False)
class _Frag:
    family: int
    key: _Key
    src: int
    dst: int
    proto: int
    start: int  # byte offset of the data in the datagram's fragmentable part
    more: bool
    data: bytes
    # from the fragment with offset 0: the header to rebuild the datagram with, and for IPv6 the
    # position of the next-header byte that pointed at the fragment header
    header: bytes
    nh_pos: int


@dataclass(eq=False)
class _Datagram(Generic[H]):
    frag: _Frag  # the first one seen (addresses, protocol for events)
    first_ts: int
    handles: list[H] = field(default_factory=list)
    parts: list[tuple[int, int, bytes]] = field(default_factory=list)  # start, end, data
    header: bytes | None = None
    nh_pos: int = 0
    next_header: int = 0
    total: int = -1  # fragmentable length, known once the last fragment arrived
    held: int = 0


class Defragmenter(Generic[H]):
    """Feed fragments with `feed`; completed and dropped datagrams come back as results."""

    def __init__(self, limits: DefragLimits | None = None) -> None:
        self.limits = limits or DefragLimits()
        self._pending: OrderedDict[_Key, _Datagram[H]] = OrderedDict()  # in creation order
        self._dead: OrderedDict[_Key, int] = OrderedDict()  # dropped for overlap -> until when
        self._held = 0
        self.counters: dict[str, int] = dict.fromkeys(
            ("fragments", "reassembled", "dropped_overlap", "dropped_limit", "dropped_timeout", "dropped_malformed"),
            0,
        )

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def held_bytes(self) -> int:
        return self._held

    def feed(self, packet: bytes, ts_us: int, handle: H) -> list[Result[H]]:
        """Take one fragment (an IP packet starting at its IP header)."""
        self.counters["fragments"] += 1
        out: list[Result[H]] = list(self.expire(ts_us))
        frag = _parse(packet)
        if isinstance(frag, str):
            self.counters["dropped_malformed"] += 1
            out.append(Dropped((handle,), R_MALFORMED, _event(None, ts_us, R_MALFORMED)))
            return out
        if frag.start == 0 and not frag.more:
            # an IPv6 atomic fragment (RFC 6946): a datagram of its own
            self.counters["reassembled"] += 1
            packet_out = _build(frag.header, frag.nh_pos, frag.proto, frag.family, frag.data)
            out.append(Reassembled((handle,), packet_out, ts_us))
            return out
        key = frag.key
        if key in self._dead:
            self.counters["dropped_overlap"] += 1
            out.append(Dropped((handle,), R_FRAGMENT_OVERLAP, None))
            return out
        end = frag.start + len(frag.data)
        d = self._pending.get(key)
        if d is None:
            while len(self._pending) >= self.limits.max_datagrams:
                out.append(self._drop_oldest(ts_us))
            d = _Datagram(frag, ts_us)
            self._pending[key] = d
        d.handles.append(handle)
        # IPv4: total length (header included) is 16 bits; IPv6: the payload length is
        hdr_len = len(frag.header) - (40 if frag.family == 6 else 0)
        if any(frag.start < e and s < end for s, e, _ in d.parts):
            self._remove(key, d)
            self._dead[key] = ts_us + self.limits.timeout_us
            while len(self._dead) > self.limits.max_datagrams:
                self._dead.popitem(last=False)
            self.counters["dropped_overlap"] += 1
            out.append(Dropped(tuple(d.handles), R_FRAGMENT_OVERLAP, _event(d.frag, ts_us, R_FRAGMENT_OVERLAP)))
            return out
        if hdr_len + end > self.limits.max_datagram_size or len(d.parts) >= self.limits.max_fragments:
            self._remove(key, d)
            self.counters["dropped_limit"] += 1
            out.append(Dropped(tuple(d.handles), R_FRAGMENT_LIMIT, _event(d.frag, ts_us, R_FRAGMENT_LIMIT)))
            return out
        inconsistent = (d.total >= 0 and (end > d.total or (not frag.more and end != d.total))) or (
            not frag.more and any(e > end for _, e, _ in d.parts)
        )
        if inconsistent:
            # two different ends, or data beyond the end: Linux discards the whole queue too
            self._remove(key, d)
            self.counters["dropped_malformed"] += 1
            out.append(Dropped(tuple(d.handles), R_MALFORMED, _event(d.frag, ts_us, R_MALFORMED)))
            return out
        d.parts.append((frag.start, end, frag.data))
        d.held += len(packet)
        self._held += len(packet)
        if not frag.more:
            d.total = end
        if frag.start == 0:
            d.header = frag.header
            d.nh_pos = frag.nh_pos
            d.next_header = frag.proto
        if d.total >= 0 and d.header is not None and sum(e - s for s, e, _ in d.parts) == d.total:
            # no overlaps and nothing beyond the end, so the lengths adding up means full coverage
            self._remove(key, d)
            d.parts.sort(key=lambda p: p[0])
            payload = b"".join(p[2] for p in d.parts)
            self.counters["reassembled"] += 1
            packet_out = _build(d.header, d.nh_pos, d.next_header, frag.family, payload)
            out.append(Reassembled(tuple(d.handles), packet_out, ts_us))
            return out
        while self._held > self.limits.max_held_bytes and len(self._pending) > 1:
            out.append(self._drop_oldest(ts_us))
        return out

    def expire(self, now_us: int) -> list[Dropped[H]]:
        """Drop datagrams whose first fragment is older than the timeout."""
        out: list[Dropped[H]] = []
        timeout = self.limits.timeout_us
        while self._pending:
            key, d = next(iter(self._pending.items()))
            if now_us - d.first_ts <= timeout:
                break
            self._remove(key, d)
            self.counters["dropped_timeout"] += 1
            out.append(self._timed_out(d))
        while self._dead:
            key, until = next(iter(self._dead.items()))
            if now_us <= until:
                break
            del self._dead[key]
        return out

    def flush(self) -> list[Dropped[H]]:
        """End of input: every incomplete datagram times out."""
        out: list[Dropped[H]] = []
        for key, d in list(self._pending.items()):
            self._remove(key, d)
            self.counters["dropped_timeout"] += 1
            out.append(self._timed_out(d))
        self._dead.clear()
        return out

    def _timed_out(self, d: _Datagram[H]) -> Dropped[H]:
        # stamped with the moment it timed out, not when we noticed: independent of batching
        ts = d.first_ts + self.limits.timeout_us
        return Dropped(tuple(d.handles), R_FRAGMENT_LIMIT, _event(d.frag, ts, R_FRAGMENT_LIMIT))

    def _remove(self, key: _Key, d: _Datagram[H]) -> None:
        self._pending.pop(key, None)
        self._held -= d.held
        d.held = 0

    def _drop_oldest(self, ts_us: int) -> Dropped[H]:
        key, d = next(iter(self._pending.items()))
        self._remove(key, d)
        self.counters["dropped_limit"] += 1
        return Dropped(tuple(d.handles), R_FRAGMENT_LIMIT, _event(d.frag, ts_us, R_FRAGMENT_LIMIT))


def _event(frag: _Frag | None, ts_us: int, reason: int) -> RawEvent:
    if frag is None:
        return RawEvent(EV_ANOMALY, ts_us, 0, 0, 0, 0, 0, 0, 0, -1, -1, DROP, -1, reason)
    proto = frag.proto if frag.proto >= 0 else 0
    return RawEvent(EV_ANOMALY, ts_us, 0, frag.family, frag.src, frag.dst, 0, 0, proto, -1, -1, DROP, -1, reason)


def _parse(pkt: bytes) -> _Frag | str:
    """One fragment, or a string saying why it is not a usable fragment."""
    if not pkt:
        return "empty"
    version = pkt[0] >> 4
    if version == 4:
        return _parse4(pkt)
    if version == 6:
        return _parse6(pkt)
    return "not IP"


def _parse4(pkt: bytes) -> _Frag | str:
    if len(pkt) < 20:
        return "truncated IPv4 header"
    ihl = (pkt[0] & 0x0F) * 4
    total = (pkt[2] << 8) | pkt[3]
    if ihl < 20 or total < ihl or total > len(pkt):
        return "bad IPv4 lengths"
    ident = (pkt[4] << 8) | pkt[5]
    fo = (pkt[6] << 8) | pkt[7]
    more = bool(fo & 0x2000)
    start = (fo & 0x1FFF) * 8
    if not more and start == 0:
        return "IPv4 packet is not a fragment"
    data = pkt[ihl:total]  # trailing bytes (link-layer padding) are not part of it
    if more and (not data or len(data) % 8):
        return "IPv4 fragment size not a multiple of 8"
    src = IPV4_MAPPED_PREFIX | int.from_bytes(pkt[12:16], "big")
    dst = IPV4_MAPPED_PREFIX | int.from_bytes(pkt[16:20], "big")
    proto = pkt[9]
    return _Frag(4, (4, src, dst, ident, proto), src, dst, proto, start, more, data, pkt[:ihl], 0)


def _parse6(pkt: bytes) -> _Frag | str:
    if len(pkt) < 40:
        return "truncated IPv6 header"
    plen = (pkt[4] << 8) | pkt[5]
    if plen == 0 or 40 + plen > len(pkt):
        return "bad IPv6 payload length"  # jumbograms are never fragmented
    pkt = pkt[: 40 + plen]
    nh = pkt[6]
    nh_pos = 6
    pos = 40
    for _ in range(_MAX_EXT_HEADERS):
        if nh == _IPV6_FRAG:
            break
        if pos + 2 > len(pkt):
            return "truncated IPv6 extension header"
        if nh in _IPV6_EXT:
            hlen = (pkt[pos + 1] + 1) * 8
        elif nh == _IPV6_AH:
            hlen = (pkt[pos + 1] + 2) * 4
        else:
            return "IPv6 packet without a fragment header"
        nh = pkt[pos]
        nh_pos = pos
        pos += hlen
    else:
        return "too many IPv6 extension headers"
    if pos + 8 > len(pkt):
        return "truncated IPv6 fragment header"
    frag_nh = pkt[pos]
    (fo,) = struct.unpack_from(">H", pkt, pos + 2)
    (ident,) = struct.unpack_from(">I", pkt, pos + 4)
    more = bool(fo & 1)
    start = (fo >> 3) * 8
    data = pkt[pos + 8 :]
    if more and (not data or len(data) % 8):
        return "IPv6 fragment size not a multiple of 8"
    src = int.from_bytes(pkt[8:24], "big")
    dst = int.from_bytes(pkt[24:40], "big")
    # RFC 8200: the key is (source, destination, identification), not the upper protocol
    return _Frag(6, (6, src, dst, ident, -1), src, dst, frag_nh, start, more, data, pkt[:pos], nh_pos)


def _build(header: bytes, nh_pos: int, next_header: int, family: int, payload: bytes) -> bytes:
    hdr = bytearray(header)
    if family == 4:
        total = len(hdr) + len(payload)
        hdr[2:4] = total.to_bytes(2, "big")
        hdr[6] &= 0xC0  # keep DF (and the reserved bit), clear MF and the offset
        hdr[7] = 0
        hdr[10:12] = b"\x00\x00"
        hdr[10:12] = _checksum(hdr).to_bytes(2, "big")
    else:
        hdr[nh_pos] = next_header  # the fragment header is gone: point past it
        hdr[4:6] = (len(hdr) - 40 + len(payload)).to_bytes(2, "big")
    return bytes(hdr) + payload


def _checksum(data: bytes | bytearray) -> int:
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    s: int = sum(struct.unpack(f">{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
