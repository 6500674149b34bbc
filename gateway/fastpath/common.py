"""Constants and data shapes shared by the pure-Python reference and the Cython fast path.

Both engines return the same small integers and emit the same raw event tuples; only
`format_event` (here, in Python) turns them into JSON-ready dicts, so formatting can never
differ between the two implementations.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
from dataclasses import dataclass, field
from typing import NamedTuple

# --- verdicts -------------------------------------------------------------------------------
DROP = 0
ACCEPT = 1
INSPECT = 2
# Not a final verdict: an IP fragment. The replay adapter hands it to the defragmenter; live
# mode never sees one (conntrack reassembles before the queue) and treats it as a drop.
FRAGMENT = 3
VERDICT_NAMES = ("drop", "accept", "inspect", "fragment")

# --- rule actions (compiled) ----------------------------------------------------------------
ACT_DENY = 0
ACT_ALLOW = 1
ACT_INSPECT = 2
ACTION_NAMES = ("deny", "allow", "inspect")

# --- tiers ----------------------------------------------------------------------------------
TIER_MYNUMBER = 0
TIER_LGWAN = 1
TIER_INTERNET = 2
TIER_NAMES = ("mynumber", "lgwan", "internet")

# --- protocols (IANA numbers; 0 in a rule means "any") --------------------------------------
PROTO_ANY = 0
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
PROTO_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "IPv6-ICMP"}

# --- reasons: why a packet got its verdict ---------------------------------------------------
# The index is the code both engines use; the name is what events and counters show.
REASONS = (
    "rule",  # 0 first packet of a flow (or flow-less packet) decided by a rule / zone default
    "flow",  # 1 packet of a known flow, same verdict as the flow
    "related",  # 2 ICMP error about a known allowed flow
    "malformed",  # 3 could not be parsed (truncated, bad lengths, bad version, ...)
    "unknown_zone",  # 4 source or destination address/interface in no zone
    "zone_mismatch",  # 5 source address not in the zone of the input interface (spoofing)
    "no_flow",  # 6 TCP packet without SYN and without a flow (reply-looking, scan, stale)
    "bad_tcp_flags",  # 7 impossible flag combination (SYN+FIN, SYN+RST, no flags, ...)
    "icmp_no_flow",  # 8 ICMP error that refers to no known allowed flow
    "fragment",  # 9 fragment seen where fragments must not appear (live) / fragment policy
    "fragment_overlap",  # 10 overlapping fragments (replay defragmenter): whole datagram dropped
    "fragment_limit",  # 11 defragmenter limit hit or reassembly timed out
    "ipv6_rh0",  # 12 IPv6 type 0 routing header (RFC 5095)
    "non_ip",  # 13 link-layer frame that is not IPv4/IPv6 (replay only; a router does not forward it)
)
R_RULE = 0
R_FLOW = 1
R_RELATED = 2
R_MALFORMED = 3
R_UNKNOWN_ZONE = 4
R_ZONE_MISMATCH = 5
R_NO_FLOW = 6
R_BAD_TCP_FLAGS = 7
R_ICMP_NO_FLOW = 8
R_FRAGMENT = 9
R_FRAGMENT_OVERLAP = 10
R_FRAGMENT_LIMIT = 11
R_IPV6_RH0 = 12
R_NON_IP = 13

# --- TCP flow states --------------------------------------------------------------------------
TCP_SYN_SENT = 0  # initiator's SYN seen
TCP_ESTABLISHED = 1  # responder's SYN+ACK seen
TCP_CLOSING = 2  # a FIN seen
TCP_CLOSED = 3  # RST seen, or FIN from both sides
TCP_STATE_NAMES = ("syn_sent", "established", "closing", "closed")

# --- link types (pcap LINKTYPE_*) ---------------------------------------------------------------
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
SUPPORTED_LINKTYPES = frozenset(
    {
        LINKTYPE_NULL,
        LINKTYPE_ETHERNET,
        LINKTYPE_RAW,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_IPV4,
        LINKTYPE_IPV6,
        LINKTYPE_LINUX_SLL2,
    }
)

# --- events -----------------------------------------------------------------------------------
EV_FLOW = 0  # first verdict of a new flow
EV_DROP = 1  # drop of a packet outside any flow
EV_ANOMALY = 2  # malformed packet, spoofing, fragment attacks, evictions under pressure
EVENT_TYPES = ("flow", "drop", "anomaly")

FLOW_ID_MASK = (1 << 52) - 1  # stays exact in JSON consumers that read numbers as doubles
IPV4_MAPPED_PREFIX = 0xFFFF << 32  # ::ffff:0:0/96, how IPv4 addresses live in the 128-bit space


class RawEvent(NamedTuple):
    """What an engine emits; `format_event` renders it. All plain ints (and zone indexes)."""

    kind: int  # EV_*
    ts_us: int
    flow_id: int  # 0 when the packet is outside any flow
    family: int  # 4 or 6; 0 when the packet could not be parsed that far
    src: int  # 128-bit address (IPv4 mapped into ::ffff:0:0/96)
    dst: int
    sport: int  # TCP/UDP source port; ICMP/ICMPv6: type
    dport: int  # TCP/UDP destination port; ICMP/ICMPv6: code
    proto: int
    src_zone: int  # -1 unknown
    dst_zone: int
    verdict: int  # DROP / ACCEPT / INSPECT
    rule: int  # index into the policy's rules, -1 none (zone default or not decided by a rule)
    reason: int  # R_*


@dataclass(frozen=True)
class Limits:
    """Bounds of the engine. Every one is counted when hit."""

    max_flows: int = 262_144
    # idle timeouts in microseconds, per state (chosen near conntrack's, shorter for established
    # so an idle-table attack costs the attacker traffic)
    tcp_syn_timeout_us: int = 30_000_000
    tcp_established_timeout_us: int = 3_600_000_000
    tcp_closing_timeout_us: int = 120_000_000
    tcp_closed_timeout_us: int = 10_000_000
    udp_timeout_us: int = 60_000_000
    icmp_timeout_us: int = 30_000_000
    other_timeout_us: int = 60_000_000
    max_ipv6_ext_headers: int = 8

    def __post_init__(self) -> None:
        if self.max_flows < 1:
            raise ValueError("max_flows must be at least 1")


@dataclass(frozen=True)
class ZoneSpec:
    name: str
    tier: int  # TIER_*
    intra_zone_allow: bool = True


@dataclass(frozen=True)
class RuleSpec:
    """One compiled rule. Empty tuples mean "any"."""

    rule_id: str
    from_zone: int
    to_zone: int
    action: int  # ACT_*
    proto: int = PROTO_ANY
    src_nets: tuple[tuple[int, int], ...] = ()  # (network as 128-bit int, prefix length 0..128)
    dst_nets: tuple[tuple[int, int], ...] = ()
    src_ports: tuple[tuple[int, int], ...] = ()  # inclusive ranges
    dst_ports: tuple[tuple[int, int], ...] = ()
    icmp_types: tuple[int, ...] = ()  # ICMP/ICMPv6 types; only with proto icmp/icmpv6
    profile: str = ""  # inspect profile name
    log: bool = False
    kind: str = ""  # "" normal, "screen_transfer" for the 画面転送 exception class


@dataclass(frozen=True)
class CompiledPolicy:
    """An immutable snapshot the engines run on; reload swaps the whole object."""

    zones: tuple[ZoneSpec, ...]
    # (network as 128-bit int, prefix length, zone index), longest prefixes first
    prefixes: tuple[tuple[int, int, int], ...]
    interfaces: dict[str, int]  # interface name -> zone index
    rules: tuple[RuleSpec, ...]
    malformed_accept: bool = False  # default: malformed packets are dropped (fail closed)
    generation: int = 1
    source: str = ""  # config path, for logs
    extra: dict[str, object] = field(default_factory=dict)


class Decision(NamedTuple):
    verdict: int
    reason: int
    rule: int  # -1 none
    src_zone: int
    dst_zone: int
    flow_id: int


def addr_to_int(text: str) -> int:
    """Address text -> the engines' 128-bit representation (IPv4 mapped into ::ffff:0:0/96)."""
    ip = ipaddress.ip_address(text)
    if ip.version == 4:
        return IPV4_MAPPED_PREFIX | int(ip)
    return int(ip)


def net_to_prefix(text: str) -> tuple[int, int]:
    """CIDR text -> (network int, prefix length) in the 128-bit space."""
    net = ipaddress.ip_network(text, strict=False)
    if net.version == 4:
        return IPV4_MAPPED_PREFIX | int(net.network_address), 96 + net.prefixlen
    return int(net.network_address), net.prefixlen


def prefix_mask(plen: int) -> int:
    return ((1 << 128) - 1) ^ ((1 << (128 - plen)) - 1)


def int_to_addr(value: int, family: int) -> str:
    if family == 4:
        return str(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    return str(ipaddress.IPv6Address(value))


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


FLOW_TAG_BYTES = 64  # bytes of a non-TCP first packet's transport payload that go into its tag


def flow_tag(data: bytes | memoryview, l4: int, l4_end: int, proto: int, family: int) -> int:
    """What tells a flow apart from earlier flows with the same key: taken from its first packet's
    transport bytes, never from a clock (live and replay of a capture must agree, and the capture's
    clock is not the queue's: docs/operations.md, 'Live events and replay').

    - TCP: the SYN's sequence number (the ISN, random per connection);
    - otherwise FNV-1a 64 over at most FLOW_TAG_BYTES bytes from the transport payload: after the
      8-byte UDP header, after type/code/checksum of ICMP (in its own family: identifier, sequence,
      data), from the transport header for any other protocol.

    Only bytes that forwarding leaves alone: not the IP header (TTL, its checksum) and not the UDP or
    ICMP checksum (a packet with checksum offload may carry a partial one).
    """
    if proto == PROTO_TCP:
        return int.from_bytes(data[l4 + 4 : l4 + 8], "big")
    if proto == PROTO_UDP:
        start = l4 + 8
    elif (proto == PROTO_ICMP and family == 4) or (proto == PROTO_ICMPV6 and family == 6):
        start = l4 + 4
    else:
        start = l4
    return fnv1a64(bytes(data[start : min(l4_end, start + FLOW_TAG_BYTES)]))


def flow_id_for(a: int, b: int, pa: int, pb: int, proto: int, tag: int) -> int:
    """Deterministic flow id from the canonical key and the first packet's `flow_tag`.

    No timestamp goes in: live mode and replay of a capture of it give the same ids.
    """
    data = (
        a.to_bytes(16, "big")
        + b.to_bytes(16, "big")
        + pa.to_bytes(2, "big")
        + pb.to_bytes(2, "big")
        + proto.to_bytes(1, "big")
        + tag.to_bytes(8, "big")
    )
    return fnv1a64(data) & FLOW_ID_MASK


def format_timestamp(ts_us: int) -> str:
    """Suricata's eve.json timestamp form: 2026-11-26T16:56:59.123456+0000 (UTC)."""
    secs, micros = divmod(ts_us, 1_000_000)
    t = _dt.datetime.fromtimestamp(secs, _dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{micros:06d}+0000"


def format_event(ev: RawEvent, policy: CompiledPolicy) -> dict[str, object]:
    """Render a raw event as an eve.json-style dict (see docs/events.md)."""
    zones = policy.zones

    def zone_name(i: int) -> str | None:
        return zones[i].name if 0 <= i < len(zones) else None

    def zone_tier(i: int) -> str | None:
        return TIER_NAMES[zones[i].tier] if 0 <= i < len(zones) else None

    out: dict[str, object] = {
        "timestamp": format_timestamp(ev.ts_us),
        "event_type": EVENT_TYPES[ev.kind],
    }
    if ev.flow_id:
        out["flow_id"] = ev.flow_id
    if ev.family:
        out["src_ip"] = int_to_addr(ev.src, ev.family)
        out["dest_ip"] = int_to_addr(ev.dst, ev.family)
        out["proto"] = PROTO_NAMES.get(ev.proto, str(ev.proto))
        if ev.proto in (PROTO_TCP, PROTO_UDP):
            out["src_port"] = ev.sport
            out["dest_port"] = ev.dport
        elif ev.proto in (PROTO_ICMP, PROTO_ICMPV6):
            out["icmp_type"] = ev.sport
            out["icmp_code"] = ev.dport
    out["src_zone"] = zone_name(ev.src_zone)
    out["dest_zone"] = zone_name(ev.dst_zone)
    out["src_tier"] = zone_tier(ev.src_zone)
    out["dest_tier"] = zone_tier(ev.dst_zone)
    out["action"] = VERDICT_NAMES[ev.verdict]
    rules = policy.rules
    if 0 <= ev.rule < len(rules):
        out["rule_id"] = rules[ev.rule].rule_id
    elif ev.kind == EV_FLOW:  # decided by the zone defaults, not by a rule
        out["rule_id"] = "default-deny" if ev.verdict == DROP else "intra-zone-allow"
    else:
        out["rule_id"] = None
    out["reason"] = REASONS[ev.reason]
    if 0 <= ev.rule < len(rules) and rules[ev.rule].profile:
        out["profile"] = rules[ev.rule].profile
    out["policy_generation"] = policy.generation
    return out
