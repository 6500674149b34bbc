"""The compiled fast path (gateway._fastpath) against the pure-Python reference, bit for bit.

Hypothesis generates packet sequences over a small address space (so flows, replies, reuse,
evictions and timeouts happen), valid packets of every kind next to truncated and corrupted ones,
policy reloads and expiry sweeps in between. Both engines get the same sequence; every Decision,
every event, the counters and the flow count must be identical at every step.

Packets are built with struct rather than scapy: hypothesis builds thousands of them per run and
the test must stay well under a minute.
"""

from __future__ import annotations

import importlib
import os
import struct
from array import array
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.fastpath import reference
from gateway.fastpath.common import (
    ACT_ALLOW,
    ACT_DENY,
    ACT_INSPECT,
    EV_FLOW,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    CompiledPolicy,
    Limits,
    RuleSpec,
    ZoneSpec,
    flow_id_for,
    fnv1a64,
    net_to_prefix,
)


def _compiled() -> Any:
    try:
        return importlib.import_module("gateway._fastpath")
    except ImportError:
        if os.environ.get("CI"):
            raise  # CI must test the compiled engine, never skip it silently
        pytest.skip("gateway._fastpath is not built")


fast = _compiled()

SETTINGS = settings(
    max_examples=int(os.environ.get("LGWAN_EQUIV_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=bool(os.environ.get("CI")),  # CI runs are reproducible; local runs explore
)

# --- policies ----------------------------------------------------------------------------------

Z_A, Z_B, Z_WIDE, Z_CLOSED = 0, 1, 2, 3


def _prefixes(nets: list[tuple[str, int]]) -> tuple[tuple[int, int, int], ...]:
    return tuple(sorted(((*net_to_prefix(n), z) for n, z in nets), key=lambda p: -p[1]))


def make_policy(variant: int = 0) -> CompiledPolicy:
    """Four zones over 198.18.x.0/24 and 2001:db8::/32, rules of every kind.

    `variant` 1 flips a few actions so a reload changes verdicts of existing flows.
    """
    zones = (
        ZoneSpec("a", 1),
        ZoneSpec("b", 1),
        ZoneSpec("wide", 2),  # a shorter prefix containing the others: LPM must pick the longest
        ZoneSpec("closed", 0, intra_zone_allow=False),
    )
    prefixes = _prefixes(
        [
            ("198.18.1.0/24", Z_A),
            ("2001:db8:1::/48", Z_A),
            ("198.18.2.0/24", Z_B),
            ("2001:db8:2::/48", Z_B),
            ("198.18.0.0/16", Z_WIDE),
            ("2001:db8::/32", Z_WIDE),
            ("198.18.4.0/24", Z_CLOSED),
        ]
    )
    flip = ACT_DENY if variant else ACT_ALLOW
    rules = (
        RuleSpec("a-b-web", Z_A, Z_B, flip, 6, dst_ports=((80, 80), (443, 443))),
        RuleSpec("a-b-mail", Z_A, Z_B, ACT_INSPECT, 6, dst_ports=((25, 25),)),
        RuleSpec("a-b-dns", Z_A, Z_B, ACT_ALLOW, 17, src_ports=((1000, 1001),), dst_ports=((53, 53),)),
        RuleSpec("a-b-echo", Z_A, Z_B, ACT_ALLOW, 1, icmp_types=(8,)),
        RuleSpec("a-b-echo6", Z_A, Z_B, ACT_ALLOW if variant else ACT_INSPECT, 58, icmp_types=(128,)),
        RuleSpec(
            "b-a-host", Z_B, Z_A, ACT_ALLOW, 0, (net_to_prefix("198.18.2.1/32"),), (net_to_prefix("198.18.1.0/25"),)
        ),
        RuleSpec("b-a-v6host", Z_B, Z_A, ACT_ALLOW, 0, (net_to_prefix("2001:db8:2::1/128"),)),
        RuleSpec("b-wide-deny", Z_B, Z_WIDE, ACT_DENY, 6, dst_ports=((80, 80),)),
        RuleSpec("b-wide-any", Z_B, Z_WIDE, ACT_INSPECT if variant else ACT_ALLOW),
        RuleSpec("wide-a-icmp-any", Z_WIDE, Z_A, ACT_ALLOW, 1),
        RuleSpec("wide-a-ports-on-any-proto", Z_WIDE, Z_A, ACT_ALLOW, 0, dst_ports=((53, 53),)),
        RuleSpec("wide-a-icmptype-on-any-proto", Z_WIDE, Z_A, ACT_ALLOW, 0, icmp_types=(0, 129)),
        RuleSpec("closed-b", Z_CLOSED, Z_B, ACT_ALLOW, 17),
    )
    return CompiledPolicy(
        zones=zones,
        prefixes=prefixes,
        interfaces={"eth-a": Z_A, "eth-b": Z_B, "eth-wide": Z_WIDE, "eth-closed": Z_CLOSED},
        rules=rules,
        malformed_accept=bool(variant),
        generation=1 + variant,
    )


POLICIES = (make_policy(0), make_policy(1))

# --- packet builders ----------------------------------------------------------------------------

V4_HOSTS = [f"198.18.{n}.{h}" for n in (1, 2, 3, 4) for h in (1, 2)] + ["203.0.113.9"]
V6_HOSTS = [f"2001:db8:{n}::{h}" for n in (1, 2, 3) for h in (1, 2)] + ["2001:db9::1"]
Hosts = tuple[list[str], list[str]]
HOSTS: Hosts = (V4_HOSTS, V6_HOSTS)
PORTS = [25, 53, 80, 443, 1000, 1001, 40000]
IFACES = [None, None, None, "eth-a", "eth-b", "eth-wide", "eth-closed", "bogus"]


def v4addr(text: str) -> bytes:
    return bytes(int(x) for x in text.split("."))


def v6addr(text: str) -> bytes:
    import ipaddress

    return ipaddress.IPv6Address(text).packed


def tcp(sport: int, dport: int, flags: int, doff: int = 5, payload: bytes = b"") -> bytes:
    opts = b"\x01" * (max(doff, 5) * 4 - 20)
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, doff << 4, flags, 1024, 0, 0) + opts + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(itype: int, code: int, rest: bytes) -> bytes:
    return struct.pack("!BBH", itype, code, 0) + rest


def ipv4(src: str, dst: str, proto: int, l4: bytes, frag: int = 0, options: int = 0) -> bytes:
    ihl = 5 + options
    total = ihl * 4 + len(l4)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 1, frag, 64, proto, 0, v4addr(src), v4addr(dst))
    return hdr + b"\x01" * (options * 4) + l4


def ipv6(src: str, dst: str, nh: int, l4: bytes, ext: list[tuple[int, bytes]] | None = None) -> bytes:
    """ext: (header type, body) pairs; their next-header fields are chained here."""
    chain = b""
    types = [t for t, _ in ext or []] + [nh]
    for i, (_, body) in enumerate(ext or []):
        chain += bytes([types[i + 1]]) + body
    payload = chain + l4
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), types[0], 64, v6addr(src), v6addr(dst)) + payload


def ext_header(kind: int, variant: int) -> tuple[int, bytes]:
    """Body (without the next-header byte) of an IPv6 extension header of type `kind`."""
    if kind == 44:  # fragment: atomic (offset 0, M clear), M set, or a later fragment
        fo = (0, 1, 8 << 3)[variant % 3]
        return 44, struct.pack("!BHI", 0, fo, 7)
    if kind == 51:  # AH: payload length in 4-byte units minus 2 -> 12 bytes total
        return 51, bytes([1]) + b"\x00" * 10
    if kind == 43:  # routing header, type 0 (RH0, dropped) or 2
        return 43, bytes([0, (0, 2, 4)[variant % 3], 0]) + b"\x00" * 4
    return kind, bytes([0]) + b"\x01\x04\x00\x00\x00\x00"  # PadN option, 8 bytes in all


@st.composite
def l4_segment(draw: st.DrawFn, family: int, hosts: Hosts) -> tuple[int, bytes]:
    kind = draw(st.sampled_from(["tcp", "tcp", "tcp", "udp", "udp", "icmp", "icmp", "error", "other"]))
    sport, dport = draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS))
    if kind == "tcp":
        flags = draw(
            st.one_of(
                st.sampled_from([0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x02, 0x12, 0x10]),
                st.integers(0, 255),
            )
        )
        doff = draw(st.sampled_from([5, 5, 5, 6, 4, 15]))
        return 6, tcp(sport, dport, flags, doff, draw(st.binary(max_size=8)))
    if kind == "udp":
        return 17, udp(sport, dport, draw(st.binary(max_size=8)))
    proto = 1 if family == 4 else 58
    if draw(st.integers(0, 9)) == 0:
        proto = 58 if family == 4 else 1  # ICMP of the other family: "another protocol"
    if kind == "icmp":
        echo = (8, 0) if family == 4 else (128, 129)
        itype = draw(st.one_of(st.sampled_from(echo), st.integers(0, 255)))
        ident = draw(st.sampled_from([1, 2, 7]))
        return proto, icmp(itype, draw(st.integers(0, 3)), struct.pack("!HH", ident, 1))
    if kind == "error":
        errors = (3, 11, 4, 5, 12) if family == 4 else (1, 2, 3, 4)
        itype = draw(st.sampled_from(errors))
        quoted = draw(packet(hosts, quoted=True, family=family))
        cut = draw(st.sampled_from([None, None, 28, 48, 20, 10]))
        return proto, icmp(itype, 0, b"\x00" * 4 + (quoted if cut is None else quoted[:cut]))
    return draw(st.sampled_from([47, 50, 59, 132])), draw(st.binary(max_size=12))


@st.composite
def packet(draw: st.DrawFn, hosts: Hosts = HOSTS, quoted: bool = False, family: int | None = None) -> bytes:
    """A valid IPv4/IPv6 packet (fragments, options and extension headers included)."""
    fam = family or draw(st.sampled_from([4, 4, 6]))
    if quoted:
        # a quoted packet is the one that caused the error: usually TCP/UDP/echo
        proto, l4 = draw(l4_segment(fam, hosts).filter(lambda seg: seg[0] in (6, 17, 1, 58)))
    else:
        proto, l4 = draw(l4_segment(fam, hosts))
    pool = hosts[0] if fam == 4 else hosts[1]
    src, dst = draw(st.sampled_from(pool)), draw(st.sampled_from(pool))
    if fam == 4:
        frag = draw(st.sampled_from([0] * 12 + [0x4000, 0x4000, 0x2000, 0x0010, 0x2010]))
        return ipv4(src, dst, proto, l4, frag, draw(st.sampled_from([0, 0, 0, 1, 10])))
    kinds: list[int] = []
    if draw(st.booleans()):
        kinds = draw(st.lists(st.sampled_from([0, 60, 43, 44, 51, 135]), min_size=1, max_size=4))
    if len(kinds) < 4 and draw(st.integers(0, 20)) == 0:
        kinds = [60] * 9  # more than max_ipv6_ext_headers
    ext = [ext_header(k, draw(st.integers(0, 5))) for k in kinds]
    return ipv6(src, dst, proto, l4, ext)


@st.composite
def mutated(draw: st.DrawFn, hosts: Hosts = HOSTS) -> bytes:
    """A packet, often damaged: truncated, bytes overwritten, trailing garbage, or pure noise."""
    pkt = draw(packet(hosts))
    how = draw(st.sampled_from(["ok", "ok", "ok", "ok", "truncate", "corrupt", "trail", "noise"]))
    if how == "truncate":
        return pkt[: draw(st.integers(0, max(0, len(pkt) - 1)))]
    if how == "corrupt":
        buf = bytearray(pkt)
        for _ in range(draw(st.integers(1, 3))):
            buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
        return bytes(buf)
    if how == "trail":
        return pkt + draw(st.binary(min_size=1, max_size=6))
    if how == "noise":
        return draw(st.binary(max_size=60))
    return pkt


# A step: a packet (with time step and interfaces), a reload, or an expiry sweep.
time_steps = st.one_of(
    st.integers(0, 40), st.integers(0, 40), st.integers(-5, 0), st.sampled_from([31_000_000, 3_700_000_000])
)
pkt_step = st.tuples(st.just("pkt"), mutated(), time_steps, st.sampled_from(IFACES), st.sampled_from(IFACES))
weighted_steps = st.one_of(
    *[pkt_step] * 10,
    st.tuples(st.just("reload"), st.integers(0, 1)),
    st.tuples(st.just("expire"), st.integers(0, 200)),
)

limits_st = st.builds(
    Limits,
    max_flows=st.sampled_from([1, 2, 3, 5, 64]),
    tcp_syn_timeout_us=st.sampled_from([30_000_000, 50]),
    tcp_established_timeout_us=st.sampled_from([3_600_000_000, 100]),
    tcp_closing_timeout_us=st.sampled_from([120_000_000, 30]),
    tcp_closed_timeout_us=st.sampled_from([10_000_000, 10]),
    udp_timeout_us=st.sampled_from([60_000_000, 60]),
    icmp_timeout_us=st.sampled_from([30_000_000, 40]),
    other_timeout_us=st.sampled_from([60_000_000, 60]),
    max_ipv6_ext_headers=st.sampled_from([8, 2]),
)


def run_both(seq: list[tuple[Any, ...]], limits: Limits, policy: int = 0) -> tuple[Any, Any]:
    ref = reference.Engine(POLICIES[policy], limits)
    cy = fast.Engine(POLICIES[policy], limits)
    ts = 1_700_000_000_000_000
    for i, step in enumerate(seq):
        if step[0] == "pkt":
            _, pkt, dt, in_if, out_if = step
            ts += dt
            want = ref.decide(pkt, ts, in_if, out_if)
            got = cy.decide(pkt, ts, in_if, out_if)
            assert got == want, (i, pkt.hex(), in_if, out_if)
            assert type(got) is type(want)
        elif step[0] == "reload":
            ref.set_policy(POLICIES[step[1]])
            cy.set_policy(POLICIES[step[1]])
        else:
            assert cy.expire(ts + step[1]) == ref.expire(ts + step[1])
        assert cy.pop_events() == ref.pop_events(), i
        assert cy.flow_count == ref.flow_count, i
    assert cy.counters() == ref.counters()
    return ref, cy


# --- the equivalence properties -----------------------------------------------------------------


@SETTINGS
@given(seq=st.lists(weighted_steps, min_size=1, max_size=60), limits=limits_st, policy=st.integers(0, 1))
def test_sequences_agree(seq: list[tuple[Any, ...]], limits: Limits, policy: int) -> None:
    run_both(seq, limits, policy)


@st.composite
def conversations(draw: st.DrawFn, hosts: Hosts = HOSTS) -> list[tuple[Any, ...]]:
    """Requests and their replies (same 5-tuple both ways), so flows live long enough to be
    replied to, closed, reused, quoted by ICMP errors, evicted and re-decided."""
    out: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 25))):
        pkt = draw(packet(hosts))
        dt = draw(st.one_of(st.integers(0, 30), st.integers(0, 30), st.sampled_from([45, 120, 40_000_000])))
        out.append(("pkt", pkt, dt, None, None))
        if draw(st.booleans()):
            out.append(("pkt", reply_of(pkt, draw(st.sampled_from([0x12, 0x10, 0x11, 0x04, 0x02]))), 1, None, None))
        if draw(st.integers(0, 5)) == 0:
            out.append(("pkt", error_about(pkt), 1, None, None))
        if draw(st.integers(0, 8)) == 0:
            out.append(("reload", draw(st.integers(0, 1))))
        if draw(st.integers(0, 8)) == 0:
            out.append(("expire", draw(st.sampled_from([0, 50, 100, 200]))))
    return out


def reply_of(pkt: bytes, tcp_flags: int) -> bytes:
    """The same packet with addresses and ports swapped (echo request -> reply)."""
    buf = bytearray(pkt)
    if buf[0] >> 4 == 4:
        ihl = (buf[0] & 15) * 4
        buf[12:16], buf[16:20] = buf[16:20], buf[12:16]
        proto, l4 = buf[9], ihl
    else:
        buf[8:24], buf[24:40] = buf[24:40], buf[8:24]
        proto, l4 = buf[6], 40  # with extension headers the ports stay put: fine, still a packet
    if proto in (6, 17) and len(buf) >= l4 + 4:
        buf[l4 : l4 + 2], buf[l4 + 2 : l4 + 4] = buf[l4 + 2 : l4 + 4], buf[l4 : l4 + 2]
        if proto == 6 and len(buf) > l4 + 13:
            buf[l4 + 13] = tcp_flags
    elif proto in (1, 58) and len(buf) > l4:
        buf[l4] = {8: 0, 128: 129}.get(buf[l4], buf[l4])
    return bytes(buf)


def error_about(pkt: bytes) -> bytes:
    """An ICMP error sent back to pkt's source by a router in pkt's destination network."""
    if pkt[0] >> 4 == 4:
        src = ".".join(str(b) for b in pkt[16:20])
        dst = ".".join(str(b) for b in pkt[12:16])
        return ipv4(src, dst, 1, icmp(3, 1, b"\x00" * 4 + pkt[:28]))
    import ipaddress

    src, dst = str(ipaddress.IPv6Address(pkt[24:40])), str(ipaddress.IPv6Address(pkt[8:24]))
    return ipv6(src, dst, 58, icmp(1, 0, b"\x00" * 4 + pkt[:48]))


@SETTINGS
@given(seq=conversations(), limits=limits_st)
def test_conversations_agree(seq: list[tuple[Any, ...]], limits: Limits) -> None:
    run_both(seq, limits)


# --- link layers and decide_frames ---------------------------------------------------------------


def frame(linktype: int, ip: bytes, variant: int) -> bytes:
    """Wrap an IP packet in a link header of `linktype`; some variants are not IP or are cut."""
    v6 = bool(ip) and ip[0] >> 4 == 6
    etype = 0x86DD if v6 else 0x0800
    if variant == 9:
        etype = 0x0806  # ARP: not IP
    if linktype == LINKTYPE_ETHERNET:
        tags = b"".join(struct.pack("!HH", tpid, 5) for tpid in (0x8100, 0x88A8, 0x9100)[: variant % 4])
        hdr = b"\x02" * 6 + b"\x04" * 6
        if tags:
            return hdr + tags[:2] + tags[2:] + struct.pack("!H", etype) + ip
        if variant == 8:
            return hdr[:10]  # cut inside the header
        return hdr + struct.pack("!H", etype) + ip
    if linktype == LINKTYPE_LINUX_SLL:
        return struct.pack("!HHH8sH", 0, 1, 6, b"\x00" * 8, etype) + ip if variant != 8 else b"\x00" * 15
    if linktype == LINKTYPE_LINUX_SLL2:
        return struct.pack("!HHIHBB8s", etype, 0, 2, 1, 0, 6, b"\x00" * 8) + ip if variant != 8 else b"\x00" * 19
    if linktype == LINKTYPE_NULL:
        af = 2 if not v6 else (10, 24, 28, 30)[variant % 4]
        if variant == 9:
            af = 7
        order = "<I" if variant % 2 == 0 else ">I"
        return struct.pack(order, af) + ip if variant != 8 else b"\x02\x00"
    return ip  # RAW / IPV4 / IPV6


LINKTYPES = [
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
]


def decide_all(
    eng: Any, buf: bytes, offsets: array[int], lengths: array[int], stamps: array[int], linktype: int, out: bytearray
) -> list[int]:
    """Run decide_frames to the end of the batch (it stops after each fragment); return the stops."""
    pos, stops = 0, []
    while pos < len(offsets):
        pos = eng.decide_frames(buf, offsets, lengths, stamps, linktype, out, pos)
        stops.append(pos)
    return stops


@SETTINGS
@given(
    linktype=st.sampled_from(LINKTYPES),
    frames=st.lists(st.tuples(mutated(), st.integers(0, 9), st.integers(0, 50)), max_size=40),
    limits=limits_st,
)
def test_decide_frames_agrees(linktype: int, frames: list[tuple[bytes, int, int]], limits: Limits) -> None:
    buf = bytearray(b"\xee" * 3)  # frames do not start at 0
    offsets, lengths, stamps = array("q"), array("q"), array("q")
    ts = 1_000_000
    for ip, variant, dt in frames:
        f = frame(linktype, ip, variant)
        ts += dt
        offsets.append(len(buf))
        lengths.append(len(f))
        stamps.append(ts)
        buf += f + b"\xee" * (variant % 3)  # bytes between frames must not be read
    ref = reference.Engine(POLICIES[0], limits)
    cy = fast.Engine(POLICIES[0], limits)
    want, got = bytearray(len(frames)), bytearray(len(frames))
    want_stops = decide_all(ref, bytes(buf), offsets, lengths, stamps, linktype, want)
    got_stops = decide_all(cy, bytes(buf), offsets, lengths, stamps, linktype, got)
    assert got == want
    assert got_stops == want_stops
    assert cy.pop_events() == ref.pop_events()
    assert cy.counters() == ref.counters()
    assert cy.flow_count == ref.flow_count

    # the batch path and per-packet decide() agree on every frame that carries IP
    single = fast.Engine(POLICIES[0], limits)
    for i, (ip, variant, _) in enumerate(frames):
        f = frame(linktype, ip, variant)
        one = array("q", [0])
        out = bytearray(1)
        single.decide_frames(f, one, array("q", [len(f)]), array("q", [stamps[i]]), linktype, out)
        assert out[0] == got[i]


def test_decide_frames_matches_decide_on_raw_ip() -> None:
    """decide_frames on raw IP is decide() in a loop: same verdicts, events and counters."""
    pkts = [
        ipv4("198.18.1.1", "198.18.2.1", 6, tcp(1000, 80, 0x02)),
        ipv4("198.18.2.1", "198.18.1.1", 6, tcp(80, 1000, 0x12)),
        ipv4("198.18.1.1", "198.18.2.1", 6, tcp(1000, 80, 0x10)),
        ipv6("2001:db8:1::1", "2001:db8:2::1", 58, icmp(128, 0, struct.pack("!HH", 7, 1))),
        b"\x45\x00",
    ]
    batch, loop = fast.Engine(POLICIES[0]), fast.Engine(POLICIES[0])
    buf = b"".join(pkts)
    offsets = array("q", [sum(map(len, pkts[:i])) for i in range(len(pkts))])
    lengths = array("q", map(len, pkts))
    stamps = array("q", range(10, 10 + len(pkts)))
    out = bytearray(len(pkts))
    decide_all(batch, buf, offsets, lengths, stamps, LINKTYPE_RAW, out)
    assert list(out) == [loop.decide(p, t).verdict for p, t in zip(pkts, stamps, strict=True)]
    assert batch.pop_events() == loop.pop_events()
    assert batch.counters() == loop.counters()


def test_decide_frames_rejects_bad_arguments() -> None:
    eng = fast.Engine(POLICIES[0])
    with pytest.raises(ValueError):
        eng.decide_frames(b"", array("q"), array("q"), array("q"), 9999, bytearray())
    with pytest.raises(ValueError):  # a frame past the end of the buffer is a caller bug
        eng.decide_frames(b"\x45", array("q", [0]), array("q", [5]), array("q", [0]), LINKTYPE_RAW, bytearray(1))


# --- pcap record scanning -------------------------------------------------------------------------


@SETTINGS
@given(
    records=st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 999_999_999), st.binary(max_size=40))),
    nanosecond=st.booleans(),
    swapped=st.booleans(),
    cut=st.integers(0, 60),
    start=st.integers(0, 24),
)
def test_scan_pcap_records_agrees(
    records: list[tuple[int, int, bytes]], nanosecond: bool, swapped: bool, cut: int, start: int
) -> None:
    fmt = ">IIII" if swapped else "<IIII"
    buf = b"\x00" * start + b"".join(
        struct.pack(fmt, sec, frac, len(data), len(data) + 3) + data for sec, frac, data in records
    )
    buf = buf[: max(start, len(buf) - cut)]
    results = []
    for impl in (reference, fast):
        arrays = [array("q", [42]) for _ in range(4)]  # appended to, never overwritten
        end = impl.scan_pcap_records(buf, start, nanosecond, swapped, *arrays)
        results.append((end, [a.tolist() for a in arrays]))
    assert results[0] == results[1]


# --- fixed points ----------------------------------------------------------------------------------


def _tagged_tcp(seq: int) -> bytes:
    return struct.pack("!HHIIBBHHH", 40000, 80, seq, 0, 5 << 4, 0x02, 1024, 0, 0)


V4_A, V4_B = "198.18.1.2", "198.18.2.1"
TAG_CASES = [
    # (packet, ports of the canonical key (side A = the smaller address), the tag common.flow_tag
    # must give: the TCP ISN, else FNV-1a over at most 64 transport payload bytes)
    (ipv4(V4_A, V4_B, 6, _tagged_tcp(0xDEADBEEF)), (40000, 80), 0xDEADBEEF),
    (ipv4(V4_A, V4_B, 17, udp(1000, 53, bytes(range(100)))), (1000, 53), fnv1a64(bytes(range(64)))),
    (ipv4(V4_A, V4_B, 17, udp(1000, 53, b"q")), (1000, 53), fnv1a64(b"q")),
    (ipv4(V4_A, V4_B, 17, udp(1000, 53)), (1000, 53), fnv1a64(b"")),
    (ipv4(V4_A, V4_B, 1, icmp(8, 0, b"\x00\x07\x00\x01ping")), (7, 7), fnv1a64(b"\x00\x07\x00\x01ping")),
    (
        ipv6("2001:db8:1::1", "2001:db8:2::1", 58, icmp(128, 0, b"\x00\x09\x00\x01"), ext=[(0, bytes(7))]),
        (9, 9),
        fnv1a64(b"\x00\x09\x00\x01"),
    ),
    (ipv4(V4_B, V4_A, 47, b"\x00\x00\x08\x00gre"), (0, 0), fnv1a64(b"\x00\x00\x08\x00gre")),
]


@pytest.mark.parametrize(("packet", "ports", "tag"), TAG_CASES)
def test_flow_id_is_the_key_and_the_first_packets_tag_not_its_time(
    packet: bytes, ports: tuple[int, int], tag: int
) -> None:
    """Both engines: flow_id = common.flow_id_for(key, flow_tag) whatever the packet's timestamp
    (a live daemon and a replay of its capture stamp packets with different clocks)."""
    ref = reference.Engine(POLICIES[0])
    ref.decide(packet, 1_000)
    (ev,) = ref.pop_events()
    assert ev.kind == EV_FLOW
    a, b = sorted((ev.src, ev.dst))
    assert ev.flow_id == flow_id_for(a, b, *ports, ev.proto, tag)
    for impl in (reference, fast):
        for ts in (-123_456, 0, 1_700_000_000_000_000):
            d = impl.Engine(POLICIES[0]).decide(packet, ts)
            assert d.flow_id == ev.flow_id, (impl, ts)


@SETTINGS
@given(
    seq=st.integers(0, 2**32 - 1),
    size=st.integers(0, 200),
    fill=st.integers(0, 255),
    proto=st.sampled_from([6, 17, 1, 47]),
    v6=st.booleans(),
)
def test_flow_tags_agree(seq: int, size: int, fill: int, proto: int, v6: bool) -> None:
    """Any ISN, payloads across the 64-byte tag window, every tag branch: same id in both engines."""
    payload = bytes((fill + 37 * i) % 256 for i in range(size))
    l4 = {
        6: struct.pack("!HHIIBBHHH", 40000, 80, seq, 0, 5 << 4, 0x02, 1024, 0, 0) + payload,
        17: udp(1000, 53, payload),
        1: icmp(128 if v6 else 8, 0, seq.to_bytes(4, "big") + payload),
        47: payload,
    }[proto]
    nh = 58 if proto == 1 and v6 else proto
    pkt = ipv6("2001:db8:1::1", "2001:db8:2::1", nh, l4) if v6 else ipv4(V4_A, V4_B, proto, l4)
    ids = [impl.Engine(POLICIES[0]).decide(pkt, 0).flow_id for impl in (reference, fast)]
    assert ids[0] == ids[1] != 0


def test_thousands_of_flows_agree() -> None:
    """Past the compiled table's initial bucket array (it grows and rehashes), with LRU eviction
    and idle expiry at scale: same decisions, events and counters as the reference."""
    limits = Limits(max_flows=2000, udp_timeout_us=5_000)
    ref, cy = reference.Engine(POLICIES[0], limits), fast.Engine(POLICIES[0], limits)
    ts = 0
    for i in range(8000):
        ts += 1
        src = f"198.18.1.{1 + i % 200}"
        pkt = ipv4(src, "198.18.2.1", 17, udp(1000 + (i * 7919) % 3000, 53))
        if i % 5 == 4:  # a reply to an earlier flow (often evicted by now)
            pkt = ipv4("198.18.2.1", f"198.18.1.{1 + (i // 3) % 200}", 17, udp(53, 1000 + (i * 31) % 3000))
        assert cy.decide(pkt, ts) == ref.decide(pkt, ts), i
        if i == 6000:
            ts += 4_000  # some flows idle past the UDP timeout
            assert cy.expire(ts) == ref.expire(ts)
    assert cy.pop_events() == ref.pop_events()
    assert cy.counters() == ref.counters()
    assert cy.counters()["flows_evicted"] > 0 and cy.counters()["flows_expired"] > 0


def test_malformed_input_never_raises() -> None:
    eng = fast.Engine(POLICIES[0], Limits(max_flows=2))
    for n in range(0, 70):
        for fill in (0x00, 0x45, 0x60, 0xFF):
            eng.decide(bytes([fill]) * n, n)
    eng.decide(bytearray(b"\x45" * 30), 1)
    eng.decide(memoryview(b"\x60" * 50), 2)


# --- the shipped configurations ------------------------------------------------------------------

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.toml"))


def hosts_of(policy: CompiledPolicy) -> Hosts:
    """Addresses inside every zone prefix and rule network of a policy (plus one outside all)."""
    import ipaddress

    nets = [(net, plen) for net, plen, _ in policy.prefixes]
    for r in policy.rules:
        nets += list(r.src_nets) + list(r.dst_nets)
    v4, v6 = {"203.0.113.9"}, {"2001:db9::1"}
    for net, _ in nets:
        for delta in (0, 1, 10):
            value = net + delta
            if value >> 32 == 0xFFFF:
                v4.add(str(ipaddress.IPv4Address(value & 0xFFFFFFFF)))
            else:
                v6.add(str(ipaddress.IPv6Address(value)))
    return sorted(v4), sorted(v6)


@pytest.mark.skipif(not CONFIGS, reason="no configs/*.toml")
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
@settings(SETTINGS, max_examples=max(10, SETTINGS.max_examples // 3))
@given(data=st.data())
def test_shipped_configs_agree(config: Path, data: st.DataObject) -> None:
    from gateway.policy import load_policy

    loaded = load_policy(config)
    hosts = hosts_of(loaded.compiled)
    seq = data.draw(conversations(hosts))
    ref = reference.Engine(loaded.compiled, loaded.limits)
    cy = fast.Engine(loaded.compiled, loaded.limits)
    ts = 0
    for i, step in enumerate(seq):
        if step[0] == "pkt":
            ts += step[2]
            assert cy.decide(step[1], ts) == ref.decide(step[1], ts), i
        elif step[0] == "reload":
            ref.set_policy(loaded.compiled)
            cy.set_policy(loaded.compiled)
        else:
            assert cy.expire(ts + step[1]) == ref.expire(ts + step[1])
        assert cy.pop_events() == ref.pop_events(), i
    assert cy.counters() == ref.counters()
    assert cy.flow_count == ref.flow_count
