"""Engine semantics, playbook style: given these packets, expect these decisions and events.

Runs against both implementations through the `engine_cls` fixture.
"""

from __future__ import annotations

from array import array
from typing import Any

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrRouting
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, raw

from gateway.fastpath.common import (
    ACCEPT,
    ACT_ALLOW,
    ACT_DENY,
    ACT_INSPECT,
    DROP,
    EV_ANOMALY,
    EV_DROP,
    EV_FLOW,
    FRAGMENT,
    INSPECT,
    LINKTYPE_ETHERNET,
    REASONS,
    CompiledPolicy,
    Limits,
    RuleSpec,
    ZoneSpec,
    format_event,
    net_to_prefix,
)

MYNUMBER, LGWAN, WAN, INTERNET = 0, 1, 2, 3


def lab_policy(generation: int = 1, mail_action: int = ACT_INSPECT, rdp_action: int = ACT_ALLOW) -> CompiledPolicy:
    zones = (
        ZoneSpec("mynumber", 0, intra_zone_allow=False),
        ZoneSpec("lgwan", 1),
        ZoneSpec("lgwan-wan", 1),
        ZoneSpec("internet", 2),
    )
    nets = [
        ("198.18.10.0/24", MYNUMBER),
        ("198.18.20.0/24", LGWAN),
        ("2001:db8:20::/48", LGWAN),
        ("198.18.30.0/24", WAN),
        ("198.19.40.0/24", INTERNET),
        ("198.19.40.128/25", INTERNET),  # a longer prefix of the same zone: LPM must still work
    ]
    prefixes = tuple(sorted(((*net_to_prefix(n), z) for n, z in nets), key=lambda p: -p[1]))

    def host(a: str) -> tuple[tuple[int, int], ...]:
        return (net_to_prefix(a),)

    rules = (
        RuleSpec("mynumber-chukan", MYNUMBER, WAN, ACT_ALLOW, 6, (), host("198.18.30.40/32"), (), ((443, 443),)),
        RuleSpec("lgwan-mail", LGWAN, WAN, ACT_ALLOW, 6, dst_ports=((25, 25),)),
        RuleSpec("lgwan-echo", LGWAN, WAN, ACT_ALLOW, 1, icmp_types=(8,)),
        RuleSpec("wan-echo", WAN, LGWAN, ACT_ALLOW, 1, icmp_types=(8,)),
        RuleSpec(
            "rdp",
            LGWAN,
            INTERNET,
            rdp_action,
            6,
            host("198.18.20.10/32"),
            host("198.19.40.80/32"),
            (),
            ((3389, 3389),),
            kind="screen_transfer",
        ),
        RuleSpec(
            "mail-in",
            INTERNET,
            LGWAN,
            mail_action,
            6,
            host("198.19.40.25/32"),
            host("198.18.20.25/32"),
            (),
            ((25, 25),),
            profile="mail" if mail_action == ACT_INSPECT else "",
        ),
        RuleSpec("udp-range", LGWAN, WAN, ACT_ALLOW, 17, dst_ports=((5000, 5010), (53, 53))),
        RuleSpec("deny-wan-udp", WAN, LGWAN, ACT_DENY, 17),
    )
    return CompiledPolicy(zones, prefixes, {"eth-lgwan": LGWAN, "eth-inet": INTERNET}, rules, generation=generation)


S = 1_000_000  # one second in microseconds


def decide(eng: Any, pkt: Packet | bytes, ts: int = S, **kw: Any) -> tuple[int, str, int]:
    d = eng.decide(pkt if isinstance(pkt, bytes) else raw(pkt), ts, **kw)
    assert len(d) == 6
    return d.verdict, REASONS[d.reason], d.rule


def tcp(src: str, dst: str, sport: int, dport: int, flags: str, **kw: Any) -> bytes:
    return raw(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, **kw))


def test_allowed_tcp_handshake_and_replies(engine_cls: Any) -> None:
    eng = engine_cls(lab_policy())
    assert decide(eng, tcp("198.18.10.10", "198.18.30.40", 40000, 443, "S")) == (ACCEPT, "rule", 0)
    assert decide(eng, tcp("198.18.30.40", "198.18.10.10", 443, 40000, "SA")) == (ACCEPT, "flow", 0)
    assert decide(eng, tcp("198.18.10.10", "198.18.30.40", 40000, 443, "A")) == (ACCEPT, "flow", 0)
    assert decide(eng, tcp("198.18.10.10", "198.18.30.40", 40000, 443, "FA")) == (ACCEPT, "flow", 0)
    events = eng.pop_events()
    assert [e.kind for e in events] == [EV_FLOW]  # one flow event per flow
    assert eng.counters()["flows_created"] == 1


def test_mynumber_to_internet_denied_and_retransmissions_have_no_second_event(engine_cls: Any) -> None:
    eng = engine_cls(lab_policy())
    syn = tcp("198.18.10.10", "198.19.40.100", 40000, 443, "S")
    assert decide(eng, syn) == (DROP, "rule", -1)
    assert decide(eng, syn, ts=2 * S) == (DROP, "flow", -1)
    ev = eng.pop_events()
    assert len(ev) == 1
    rendered = format_event(ev[0], lab_policy())
    assert rendered["rule_id"] == "default-deny"
    assert rendered["src_tier"] == "mynumber" and rendered["dest_tier"] == "internet"


def test_reply_looking_packet_without_flow_is_not_a_loophole(engine_cls: Any) -> None:
    eng = engine_cls(lab_policy())
    # an internet host "answers" an LGWAN host that never asked
    for flags in ("SA", "A", "PA", "R", "FA"):
        assert decide(eng, tcp("198.19.40.100", "198.18.20.10", 443, 40000, flags))[0] == DROP
    # UDP "replies" are judged as new flows from their sender: internet -> lgwan is denied
    assert decide(eng, raw(IP(src="198.19.40.100", dst="198.18.20.10") / UDP(sport=53, dport=5000)))[0] == DROP
    assert eng.flow_count == 1  # only the UDP flow; no TCP flow starts without a SYN
    assert {e.kind for e in eng.pop_events()} == {EV_DROP, EV_FLOW}


def test_flow_starts_only_with_syn(engine_cls: Any) -> None:
    eng = engine_cls(lab_policy())
    assert decide(eng, tcp("198.18.10.10", "198.18.30.40", 40000, 443, "A")) == (DROP, "no_flow", -1)
    assert decide(eng, tcp("198.18.10.10", "198.18.30.40", 40000, 443, "SF")) == (DROP, "bad_tcp_flags", -1)
    assert decide(eng, tcp("198.18.10.10", "198.18.30.40", 40000, 443, "")) == (DROP, "bad_tcp_flags", -1)
    assert decide(eng, tcp("198.18.10.10", "198.18.30.40", 40000, 443, "F")) == (DROP, "bad_tcp_flags", -1)
    assert eng.flow_count == 0


def test_inspect_rule_and_ports_outside_rule(engine_cls: Any) -> None:
    eng = engine_cls(lab_policy())
    assert decide(eng, tcp("198.19.40.25", "198.18.20.25", 50000, 25, "S")) == (INSPECT, "rule", 5)
    assert decide(eng, tcp("198.18.20.25", "198.19.40.25", 25, 50000, "SA")) == (INSPECT, "flow", 5)
    # another internet host to the mail server: default deny
    assert decide(eng, tcp("198.19.40.100", "198.18.20.25", 50000, 25, "S")) == (DROP, "rule", -1)
    # screen transfer only to the named server and port
    assert decide(eng, tcp("198.18.20.10", "198.19.40.80", 50000, 3389, "S")) == (ACCEPT, "rule", 4)
    assert decide(eng, tcp("198.18.20.10", "198.19.40.80", 50001, 3390, "S")) == (DROP, "rule", -1)
    assert decide(eng, tcp("198.18.20.11", "198.19.40.80", 50000, 3389, "S")) == (DROP, "rule", -1)


def test_port_ranges_and_explicit_deny(engine_cls: Any) -> None:
    eng = engine_cls(lab_policy())
    u = lambda s, d, sp, dp: raw(IP(src=s, dst=d) / UDP(sport=sp, dport=dp))  # noqa: E731
    assert decide(eng, u("198.18.20.10", "198.18.30.50", 1234, 5005)) == (ACCEPT, "rule", 6)
    assert decide(eng, u("198.18.20.10", "198.18.30.50", 1234, 5011)) == (DROP, "rule", -1)
    assert decide(eng, u("198.18.30.50", "198.18.20.10", 5005, 1234)) == (ACCEPT, "flow", 6)  # reply
    assert decide(eng, u("198.18.30.50", "198.18.20.10", 999, 1234)) == (DROP, "rule", 7)  # explicit deny


def test_icmp_echo_flow_and_related_errors(engine_cls: Any) -> None:
    eng = engine_cls(lab_policy())
    req = raw(IP(src="198.18.20.10", dst="198.18.30.40") / ICMP(type=8, id=77, seq=1))
    rep = raw(IP(src="198.18.30.40", dst="198.18.20.10") / ICMP(type=0, id=77, seq=1))
    assert decide(eng, req) == (ACCEPT, "rule", 2)
    assert decide(eng, rep) == (ACCEPT, "flow", 2)
    # an unsolicited echo reply (other id) is a new flow from its sender: wan->lgwan allows only type 8
    assert decide(eng, raw(IP(src="198.18.30.40", dst="198.18.20.10") / ICMP(type=0, id=78)))[0] == DROP
    # ICMP error quoting an allowed TCP flow passes as related; one quoting nothing is dropped
    decide(eng, tcp("198.18.10.10", "198.18.30.40", 40000, 443, "S"))
    err = IP(src="198.18.30.40", dst="198.18.10.10") / ICMP(type=3, code=3)
    quoted = IPerror(src="198.18.10.10", dst="198.18.30.40") / TCPerror(sport=40000, dport=443)
    assert decide(eng, raw(err / quoted)) == (ACCEPT, "related", 0)
    other = IPerror(src="198.18.10.10", dst="198.18.30.40") / TCPerror(sport=40001, dport=443)
    assert decide(eng, raw(err / other)) == (DROP, "icmp_no_flow", -1)


def test_zones_by_interface_and_spoofing(engine_cls: Any) -> None:
    eng = engine_cls(lab_policy())
    # from the internet interface with an LGWAN source address: spoofed
    pkt = tcp("198.18.20.10", "198.18.30.40", 40000, 25, "S")
    assert decide(eng, pkt, in_if="eth-inet") == (DROP, "zone_mismatch", -1)
    assert decide(eng, pkt, in_if="eth-lgwan") == (ACCEPT, "rule", 1)
    # an address in no zone arriving on a zone interface takes the interface's zone
    assert decide(eng, tcp("198.18.99.9", "198.18.20.25", 40000, 25, "S"), in_if="eth-inet")[0] == DROP
    assert decide(eng, tcp("198.18.99.9", "198.18.20.25", 40000, 25, "S")) == (DROP, "unknown_zone", -1)
    assert [e.kind for e in eng.pop_events()] == [EV_ANOMALY, EV_FLOW, EV_FLOW, EV_DROP]


def test_intra_zone_defaults(engine_cls: Any) -> None:
    eng = engine_cls(lab_policy())
    assert decide(eng, raw(IP(src="198.18.20.10", dst="198.18.20.30") / UDP()))[0] == ACCEPT
    assert decide(eng, raw(IP(src="198.18.10.10", dst="198.18.10.20") / UDP()))[0] == DROP
    v6 = raw(IPv6(src="2001:db8:20::1", dst="2001:db8:20::2") / UDP())
    assert decide(eng, v6)[0] == ACCEPT


def test_malformed_and_ipv6_specials_never_raise(engine_cls: Any) -> None:
    eng = engine_cls(lab_policy())
    good = tcp("198.18.10.10", "198.18.30.40", 40000, 443, "S")
    for cut in range(len(good)):
        d = eng.decide(good[:cut], S)
        assert d.verdict == DROP and REASONS[d.reason] == "malformed"
    assert decide(eng, b"") == (DROP, "malformed", -1)
    assert decide(eng, b"\x70" + b"\x00" * 39) == (DROP, "malformed", -1)  # IP version 7
    rh0 = raw(IPv6(src="2001:db8:20::1", dst="2001:db8:20::2") / IPv6ExtHdrRouting(type=0) / UDP())
    assert decide(eng, rh0) == (DROP, "ipv6_rh0", -1)
    frag = raw(IPv6(src="2001:db8:20::1", dst="2001:db8:20::2") / IPv6ExtHdrFragment(offset=8, m=0) / (b"x" * 8))
    assert decide(eng, frag)[0] == FRAGMENT
    atomic = raw(IPv6(src="2001:db8:20::1", dst="2001:db8:20::2") / IPv6ExtHdrFragment(offset=0, m=0) / UDP())
    assert decide(eng, atomic) == (ACCEPT, "rule", -1)
    v4frag = raw(IP(src="198.18.20.10", dst="198.18.30.40", flags="MF") / UDP(dport=53))
    assert decide(eng, v4frag)[0] == FRAGMENT


def test_malformed_accept_policy(engine_cls: Any) -> None:
    pol = lab_policy()
    pol = CompiledPolicy(pol.zones, pol.prefixes, pol.interfaces, pol.rules, malformed_accept=True)
    eng = engine_cls(pol)
    assert decide(eng, b"\x45\x00") == (ACCEPT, "malformed", -1)
    assert eng.counters()["malformed_accepted"] == 1


def test_idle_timeout_and_eviction(engine_cls: Any) -> None:
    limits = Limits(max_flows=3, udp_timeout_us=10 * S)
    eng = engine_cls(lab_policy(), limits)

    def u(sport: int) -> bytes:
        return raw(IP(src="198.18.20.10", dst="198.18.30.50") / UDP(sport=sport, dport=53))

    def back(sport: int) -> bytes:
        return raw(IP(src="198.18.30.50", dst="198.18.20.10") / UDP(sport=53, dport=sport))

    for sport in (1, 2, 3):
        decide(eng, u(sport), ts=S)
    decide(eng, back(1), ts=2 * S)  # touch flow 1: flow 2 is now least recently seen
    decide(eng, u(4), ts=3 * S)  # evicts flow 2
    assert eng.counters()["flows_evicted"] == 1
    assert decide(eng, back(1), ts=4 * S) == (ACCEPT, "flow", 6)
    # the evicted flow's reply is now a new wan->lgwan UDP flow: explicitly denied
    assert decide(eng, back(2), ts=4 * S) == (DROP, "rule", 7)
    # idle past the UDP timeout: the reply no longer belongs to a flow
    assert decide(eng, back(1), ts=20 * S) == (DROP, "rule", 7)
    assert eng.counters()["flows_expired"] >= 1
    remaining = eng.flow_count
    assert eng.expire(100 * S) == remaining
    assert eng.flow_count == 0


def test_reload_redecides_established_flows(engine_cls: Any) -> None:
    eng = engine_cls(lab_policy())
    assert decide(eng, tcp("198.18.20.10", "198.19.40.80", 50000, 3389, "S")) == (ACCEPT, "rule", 4)
    assert decide(eng, tcp("198.19.40.80", "198.18.20.10", 3389, 50000, "SA")) == (ACCEPT, "flow", 4)
    eng.pop_events()
    eng.set_policy(lab_policy(generation=2, rdp_action=ACT_DENY))
    # the next packet, even a reply, re-decides the flow from its initiator's side: cut
    assert decide(eng, tcp("198.19.40.80", "198.18.20.10", 3389, 50000, "A")) == (DROP, "rule", 4)
    assert decide(eng, tcp("198.18.20.10", "198.19.40.80", 50000, 3389, "A")) == (DROP, "flow", 4)
    ev = eng.pop_events()
    assert len(ev) == 1 and ev[0].kind == EV_FLOW and ev[0].verdict == DROP
    rendered = format_event(ev[0], lab_policy(generation=2))
    assert rendered["src_ip"] == "198.18.20.10" and rendered["dest_port"] == 3389
    assert eng.counters()["flows_redecided"] == 1


def test_port_reuse_after_close_starts_new_flow(engine_cls: Any) -> None:
    eng = engine_cls(lab_policy())
    c, s = "198.18.10.10", "198.18.30.40"
    decide(eng, tcp(c, s, 40000, 443, "S"))
    decide(eng, tcp(s, c, 443, 40000, "SA"))
    decide(eng, tcp(c, s, 40000, 443, "R"))
    assert decide(eng, tcp(c, s, 40000, 443, "S", seq=99), ts=2 * S) == (ACCEPT, "rule", 0)
    assert eng.counters()["flows_created"] == 2


def test_decide_frames_gives_one_verdict_per_frame(engine_cls: Any) -> None:
    frames = [
        raw(Ether() / IP(src="198.18.10.10", dst="198.18.30.40") / TCP(sport=1, dport=443, flags="S")),
        raw(Ether() / ARP()),
        raw(Ether(type=0x8100) / b"\x00\x05\x08\x00" / IP(src="198.18.20.10", dst="198.18.30.40") / ICMP()),
        b"\x00" * 10,
        raw(Ether() / IP(src="198.18.10.10", dst="198.19.40.100") / TCP(sport=1, dport=443, flags="S")),
    ]
    buf = b"".join(frames)
    offsets, lengths, ts = array("q"), array("q"), array("q")
    pos = 0
    for f in frames:
        offsets.append(pos)
        lengths.append(len(f))
        ts.append(S)
        pos += len(f)
    out = bytearray(len(frames))
    eng = engine_cls(lab_policy())
    eng.decide_frames(buf, offsets, lengths, ts, LINKTYPE_ETHERNET, out)
    assert list(out) == [ACCEPT, DROP, ACCEPT, DROP, DROP]
    c = eng.counters()
    assert c["packets"] == 5 and c["drop_non_ip"] == 1 and c["drop_malformed"] == 1
    assert c["accepted"] + c["dropped"] + c["inspected"] + c["fragments"] == c["packets"]


def test_closed_flow_stays_closed_after_late_fin(engine_cls: Any) -> None:
    limits = Limits(tcp_closed_timeout_us=10 * S, tcp_closing_timeout_us=120 * S)
    eng = engine_cls(lab_policy(), limits)
    c, s = "198.18.10.10", "198.18.30.40"
    decide(eng, tcp(c, s, 40000, 443, "S"))
    decide(eng, tcp(s, c, 443, 40000, "SA"))
    decide(eng, tcp(c, s, 40000, 443, "R"))
    assert decide(eng, tcp(s, c, 443, 40000, "FA"), ts=2 * S) == (ACCEPT, "flow", 0)
    # still on the short closed timeout: a late FIN did not reopen the flow into "closing"
    assert decide(eng, tcp(s, c, 443, 40000, "A"), ts=13 * S) == (DROP, "no_flow", -1)


def test_icmp_type_lists_match_only_real_icmp(engine_cls: Any) -> None:
    base = lab_policy()
    v6echo = RuleSpec("v6-type0", LGWAN, WAN, ACT_ALLOW, 58, icmp_types=(0,))
    eng = engine_cls(CompiledPolicy(base.zones, base.prefixes, base.interfaces, (v6echo,)))
    # protocol 58 inside IPv4 is not parsed as ICMPv6: it has no type, so "type 0" cannot match it
    odd = raw(IP(src="198.18.20.10", dst="198.18.30.40", proto=58) / b"\x80\x00\x00\x00\x00\x01\x00\x01")
    assert decide(eng, odd) == (DROP, "rule", -1)


def test_limits_refuse_an_empty_flow_table() -> None:
    import pytest

    with pytest.raises(ValueError):
        Limits(max_flows=0)
