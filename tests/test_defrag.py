"""The replay defragmenter: reassembly in any order, and every attack drops the whole datagram."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, fragment6
from scapy.packet import Packet, raw

from gateway.fastpath.common import (
    EV_ANOMALY,
    R_FRAGMENT_LIMIT,
    R_FRAGMENT_OVERLAP,
    R_MALFORMED,
    CompiledPolicy,
    format_event,
)
from gateway.stream.defrag import DefragLimits, Defragmenter, Dropped, Reassembled

A, B = "198.18.20.10", "198.18.30.40"
T = 1_700_000_000_000_000
EMPTY_POLICY = CompiledPolicy(zones=(), prefixes=(), interfaces={}, rules=())


def datagram(size: int = 3000, ident: int = 77) -> Packet:
    return IP(src=A, dst=B, id=ident) / UDP(sport=4000, dport=53) / (bytes(range(256)) * (size // 256 + 1))


def frags(pkt: Packet, size: int = 1000) -> list[bytes]:
    return [raw(f) for f in fragment(pkt, fragsize=size)]


def raw_frag(offset8: int, payload: bytes, mf: bool, ident: int = 5, proto: int = 6, src: str = A) -> bytes:
    return raw(IP(src=src, dst=B, id=ident, proto=proto, frag=offset8, flags="MF" if mf else 0) / payload)


def feed_all(d: Defragmenter[int], pieces: list[bytes], ts: int = T) -> list[Reassembled[int] | Dropped[int]]:
    out: list[Reassembled[int] | Dropped[int]] = []
    for i, p in enumerate(pieces):
        out += d.feed(p, ts + i, i)
    return out


def test_in_order_ipv4() -> None:
    pkt = datagram()
    pieces = frags(pkt)
    d: Defragmenter[int] = Defragmenter()
    results = feed_all(d, pieces)
    assert len(results) == 1
    [r] = results
    assert isinstance(r, Reassembled)
    assert r.packet == raw(pkt)  # header rebuilt: length, flags, offset, checksum
    assert r.handles == tuple(range(len(pieces)))
    assert r.ts_us == T + len(pieces) - 1
    assert d.pending == 0 and d.held_bytes == 0
    assert d.counters["reassembled"] == 1


@settings(max_examples=30, deadline=None)
@given(st.permutations(range(6)), st.integers(min_value=4, max_value=60))  # <= 64 fragments
def test_any_order_ipv4(order: list[int], size8: int) -> None:
    pkt = datagram(1500)
    pieces = frags(pkt, size8 * 8)
    order = [i for i in order if i < len(pieces)] + list(range(6, len(pieces)))
    d: Defragmenter[int] = Defragmenter()
    out: list[Reassembled[int] | Dropped[int]] = []
    for i in order:
        out += d.feed(pieces[i], T, i)
    assert len(out) == 1 and isinstance(out[0], Reassembled)
    assert out[0].packet == raw(pkt)
    assert out[0].handles == tuple(order)


def test_df_flag_kept_and_padding_ignored() -> None:
    pkt = IP(src=A, dst=B, id=9, flags="DF") / ICMP() / (b"p" * 40)
    body = raw(pkt)[20:]
    first = raw(IP(src=A, dst=B, id=9, flags="DF+MF", proto=1) / body[:24]) + b"\x00" * 6  # Ethernet padding
    last = raw(IP(src=A, dst=B, id=9, flags="DF", frag=3, proto=1) / body[24:])
    d: Defragmenter[int] = Defragmenter()
    [r] = feed_all(d, [first, last])
    assert isinstance(r, Reassembled) and r.packet == raw(pkt)


def test_tiny_fragments_split_tcp_header() -> None:
    """RFC 1858 tiny fragments: the decision is made on the reassembled header, so they are harmless."""
    pkt = IP(src=A, dst=B, id=3) / TCP(sport=1234, dport=25, flags="S") / b"hello world....."
    pieces = frags(pkt, 8)
    assert len(pieces) >= 4
    d: Defragmenter[int] = Defragmenter()
    [r] = feed_all(d, pieces[::-1])
    assert isinstance(r, Reassembled)
    assert IP(r.packet)[TCP].dport == 25 and r.packet == raw(pkt)


@pytest.mark.parametrize(
    "pieces",
    [
        # exact duplicate of a fragment
        [(0, b"A" * 16, True), (0, b"A" * 16, True), (2, b"B" * 8, False)],
        # Teardrop: the second fragment starts inside the first and ends inside it
        [(0, b"A" * 24, True), (1, b"B" * 8, False)],
        # RFC 1858 offset=1 attack rewriting TCP flags after the first fragment
        [(0, b"A" * 16, True), (1, b"X" * 16, True), (3, b"C" * 8, False)],
        # overlap at the end, last fragment first
        [(2, b"C" * 8, False), (1, b"B" * 16, True)],
    ],
)
def test_overlap_drops_whole_datagram(pieces: list[tuple[int, bytes, bool]]) -> None:
    d: Defragmenter[int] = Defragmenter()
    out = feed_all(d, [raw_frag(o, p, mf) for o, p, mf in pieces])
    dropped = [r for r in out if isinstance(r, Dropped)]
    assert not [r for r in out if isinstance(r, Reassembled)]
    assert dropped[0].reason == R_FRAGMENT_OVERLAP
    assert set(dropped[0].handles) | {h for r in dropped[1:] for h in r.handles} == set(range(len(pieces)))
    ev = dropped[0].event
    assert ev is not None and ev.kind == EV_ANOMALY
    rendered = format_event(ev, EMPTY_POLICY)
    assert rendered["event_type"] == "anomaly" and rendered["reason"] == "fragment_overlap"
    assert rendered["src_ip"] == A and rendered["dest_ip"] == B and rendered["action"] == "drop"
    assert d.pending == 0 and d.held_bytes == 0


def test_after_overlap_rest_of_datagram_dropped_until_timeout() -> None:
    d: Defragmenter[int] = Defragmenter()
    f0 = raw_frag(0, b"A" * 16, True)
    f1 = raw_frag(2, b"B" * 8, False)
    out = d.feed(f0, T, 0) + d.feed(f0, T + 1, 1)
    assert [type(r) for r in out] == [Dropped]
    # the attacker's "second chance" to complete it is dropped too, without a second event
    [late] = d.feed(f1, T + 2, 2)
    assert isinstance(late, Dropped) and late.reason == R_FRAGMENT_OVERLAP and late.event is None
    # after the timeout the id is free again
    out = d.feed(f0, T + 31_000_000, 3) + d.feed(f1, T + 31_000_001, 4)
    assert [type(r) for r in out] == [Reassembled]


def test_timeout() -> None:
    d: Defragmenter[int] = Defragmenter()
    pieces = frags(datagram())
    assert d.feed(pieces[0], T, 0) == []
    assert d.expire(T + 30_000_000) == []  # exactly 30 s: still waiting
    [r] = d.expire(T + 30_000_001)
    assert r.reason == R_FRAGMENT_LIMIT and r.handles == (0,)
    assert r.event is not None and r.event.ts_us == T + 30_000_000
    assert d.pending == 0
    # timed out lazily by a later fragment of anything
    d.feed(pieces[0], T, 0)
    out = d.feed(raw_frag(0, b"x" * 8, True), T + 40_000_000, 1)
    assert [(type(x), x.handles) for x in out] == [(Dropped, (0,))]
    assert d.counters["dropped_timeout"] == 2


def test_flush_at_end_of_input() -> None:
    d: Defragmenter[int] = Defragmenter()
    d.feed(frags(datagram())[1], T, 0)
    [r] = d.flush()
    assert r.reason == R_FRAGMENT_LIMIT and r.handles == (0,)
    assert d.pending == 0


def test_limit_fragments_per_datagram() -> None:
    d: Defragmenter[int] = Defragmenter(DefragLimits(max_fragments=4))
    pieces = [raw_frag(i, b"x" * 8, True) for i in range(5)]
    out = feed_all(d, pieces)
    [r] = out
    assert isinstance(r, Dropped) and r.reason == R_FRAGMENT_LIMIT and r.handles == (0, 1, 2, 3, 4)


def test_limit_pending_datagrams_evicts_oldest() -> None:
    d: Defragmenter[int] = Defragmenter(DefragLimits(max_datagrams=3))
    for i in range(3):
        assert d.feed(raw_frag(0, b"x" * 8, True, ident=i), T + i, i) == []
    [r] = d.feed(raw_frag(0, b"x" * 8, True, ident=99), T + 5, 5)
    assert isinstance(r, Dropped) and r.reason == R_FRAGMENT_LIMIT and r.handles == (0,)
    assert d.pending == 3
    # the newest can still complete
    [ok] = d.feed(raw_frag(1, b"y" * 8, False, ident=99), T + 6, 6)
    assert isinstance(ok, Reassembled) and ok.handles == (5, 6)


def test_limit_held_bytes() -> None:
    d: Defragmenter[int] = Defragmenter(DefragLimits(max_held_bytes=2000))
    out = []
    for i in range(4):
        out += d.feed(raw_frag(0, b"x" * 800, True, ident=i), T + i, i)
    assert [r.handles for r in out] == [(0,), (1,)]
    assert d.held_bytes <= 2000


def test_ping_of_death() -> None:
    d: Defragmenter[int] = Defragmenter()
    out = d.feed(raw_frag(0, b"x" * 1480, True, proto=1), T, 0)
    out += d.feed(raw_frag(8189, b"x" * 100, False, proto=1), T + 1, 1)  # ends past 65535
    [r] = out
    assert isinstance(r, Dropped) and r.reason == R_FRAGMENT_LIMIT and r.handles == (0, 1)


def test_inconsistent_ends_and_malformed() -> None:
    d: Defragmenter[int] = Defragmenter()
    out = feed_all(d, [raw_frag(0, b"a" * 16, True), raw_frag(4, b"b" * 8, False), raw_frag(6, b"c" * 8, False)])
    [r] = out
    assert isinstance(r, Dropped) and r.reason == R_MALFORMED and r.handles == (0, 1, 2)
    # MF fragment whose size is not a multiple of 8
    [r] = d.feed(raw_frag(0, b"a" * 13, True, ident=6), T, 7)
    assert isinstance(r, Dropped) and r.reason == R_MALFORMED and r.event is not None
    # not a fragment, not IP, truncated
    for bad in (raw(IP(src=A, dst=B) / UDP()), b"\x00" * 30, b"\x45\x00", b""):
        [r] = d.feed(bad, T, 8)
        assert isinstance(r, Dropped) and r.reason == R_MALFORMED
    assert d.pending == 0


def test_key_includes_protocol_and_addresses() -> None:
    d: Defragmenter[int] = Defragmenter()
    out = feed_all(
        d,
        [
            raw_frag(0, b"a" * 8, True, proto=6),
            raw_frag(1, b"b" * 8, False, proto=17),
            raw_frag(0, b"a" * 8, True, src="198.18.20.11"),
        ],
    )
    assert out == [] and d.pending == 3


# --- IPv6 -----------------------------------------------------------------------------------------
def v6_datagram(ext: Packet | None = None) -> Packet:
    base = IPv6(src="2001:db8:20::10", dst="2001:db8:30::40")
    if ext is not None:
        base = base / ext
    return base / IPv6ExtHdrFragment(id=1234) / UDP(sport=5, dport=6) / (bytes(range(256)) * 12)


@pytest.mark.parametrize("ext", [None, IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt()])
def test_ipv6_reassembly(ext: Packet | None) -> None:
    pkt = v6_datagram(ext)
    pieces = [raw(p) for p in fragment6(pkt, 1280)]
    assert len(pieces) >= 3
    expected = IPv6(raw(pkt))
    # the original without the fragment header: what the reassembled packet must be
    base = IPv6(src="2001:db8:20::10", dst="2001:db8:30::40")
    if ext is not None:
        base = base / ext.copy()
    want = raw(base / expected[UDP])
    for order in (
        list(range(len(pieces))),
        list(reversed(range(len(pieces)))),
        random.Random(1).sample(range(len(pieces)), len(pieces)),
    ):
        d: Defragmenter[int] = Defragmenter()
        out: list[Reassembled[int] | Dropped[int]] = []
        for i in order:
            out += d.feed(pieces[i], T, i)
        [r] = out
        assert isinstance(r, Reassembled)
        assert r.packet == want
        assert IPv6(r.packet)[UDP].dport == 6


def test_ipv6_overlap_and_atomic() -> None:
    v6 = IPv6(src="2001:db8::1", dst="2001:db8::2")
    f0 = raw(v6 / IPv6ExtHdrFragment(id=7, offset=0, m=1, nh=17) / (b"a" * 16))
    f1 = raw(v6 / IPv6ExtHdrFragment(id=7, offset=1, m=0, nh=17) / (b"b" * 16))
    d: Defragmenter[int] = Defragmenter()
    [r] = feed_all(d, [f0, f1])
    assert isinstance(r, Dropped) and r.reason == R_FRAGMENT_OVERLAP
    assert r.event is not None and format_event(r.event, EMPTY_POLICY)["src_ip"] == "2001:db8::1"
    # key is (src, dst, id): a different next header in a later fragment is the same datagram
    g0 = raw(v6 / IPv6ExtHdrFragment(id=8, offset=0, m=1, nh=17) / (b"a" * 16))
    g1 = raw(v6 / IPv6ExtHdrFragment(id=8, offset=2, m=0, nh=6) / (b"b" * 8))
    [r] = feed_all(d, [g0, g1])
    assert isinstance(r, Reassembled) and IPv6(r.packet).nh == 17 and IPv6(r.packet).plen == 24
    # atomic fragment: its own datagram
    atomic = raw(v6 / IPv6ExtHdrFragment(id=9, offset=0, m=0, nh=17) / UDP(sport=1, dport=2))
    [r] = d.feed(atomic, T, 0)
    assert isinstance(r, Reassembled) and r.packet == raw(v6 / UDP(sport=1, dport=2))


def test_ipv6_without_fragment_header_is_malformed() -> None:
    d: Defragmenter[int] = Defragmenter()
    [r] = d.feed(raw(IPv6() / UDP()), T, 0)
    assert isinstance(r, Dropped) and r.reason == R_MALFORMED
