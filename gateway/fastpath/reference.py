"""Pure-Python reference of the per-packet engine: the specification the Cython fast path matches.

Sans-I/O: bytes and integer microsecond timestamps in, `Decision`s and `RawEvent`s out. The
semantics are described in docs/design.md ("Engine semantics"); tests run the compiled engine
against this one on generated, truncated and corrupted packets and require identical results.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from struct import unpack_from

from gateway.fastpath.common import (
    ACCEPT,
    ACT_ALLOW,
    ACT_INSPECT,
    DROP,
    EV_ANOMALY,
    EV_DROP,
    EV_FLOW,
    FRAGMENT,
    INSPECT,
    IPV4_MAPPED_PREFIX,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    R_BAD_TCP_FLAGS,
    R_FLOW,
    R_FRAGMENT,
    R_ICMP_NO_FLOW,
    R_IPV6_RH0,
    R_MALFORMED,
    R_NO_FLOW,
    R_NON_IP,
    R_RELATED,
    R_RULE,
    R_UNKNOWN_ZONE,
    R_ZONE_MISMATCH,
    REASONS,
    SUPPORTED_LINKTYPES,
    TCP_CLOSED,
    TCP_CLOSING,
    TCP_ESTABLISHED,
    TCP_SYN_SENT,
    CompiledPolicy,
    Decision,
    Limits,
    RawEvent,
    flow_id_for,
    flow_tag,
)

Buffer = bytes | bytearray | memoryview

TH_FIN = 0x01
TH_SYN = 0x02
TH_RST = 0x04
TH_ACK = 0x10

# ICMP types that are errors quoting the packet that caused them (checked against flows), and the
# echo pair that forms a flow of its own.
ICMP4_ERRORS = frozenset({3, 4, 5, 11, 12})
ICMP6_ERRORS = frozenset({1, 2, 3, 4})
ICMP4_ECHO = frozenset({0, 8})
ICMP6_ECHO = frozenset({128, 129})

IPV6_EXT_PLAIN = frozenset({0, 43, 60, 135})  # hop-by-hop, routing, destination options, mobility
IPV6_EXT_FRAGMENT = 44
IPV6_EXT_AH = 51

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
VLAN_TPIDS = frozenset({0x8100, 0x88A8, 0x9100})
BSD_AF_INET6 = frozenset({10, 24, 28, 30})  # Linux, NetBSD/OpenBSD, FreeBSD, macOS

# parse status codes (internal)
P_OK = 0
P_MALFORMED = 1
P_FRAGMENT = 2
P_RH0 = 3


class Parsed:
    """Header fields of one IP packet. A plain object: this is the reference, clarity first."""

    __slots__ = (
        "dport",
        "dst",
        "family",
        "flags",
        "icmp_id",
        "inner_end",
        "inner_off",
        "l4",
        "l4_end",
        "proto",
        "sport",
        "src",
        "type",
    )

    def __init__(self) -> None:
        self.family = 0
        self.src = 0
        self.dst = 0
        self.proto = 0
        self.sport = 0  # ICMP: type
        self.dport = 0  # ICMP: code
        self.flags = 0  # TCP flags (low 6 bits)
        self.icmp_id = 0
        self.type = 0  # 0 plain, 1 ICMP echo, 2 ICMP error
        self.inner_off = 0  # ICMP error: where the quoted packet starts and ends
        self.inner_end = 0
        self.l4 = 0  # transport header start and end (the first packet's flow_tag reads there)
        self.l4_end = 0


class Flow:
    __slots__ = (
        "a_is_initiator",
        "dst_zone",
        "fin_mask",
        "first_code",
        "first_type",
        "flow_id",
        "generation",
        "last_us",
        "rule",
        "src_zone",
        "state",
        "verdict",
    )

    def __init__(self) -> None:
        self.verdict = DROP
        self.rule = -1
        self.src_zone = -1  # initiator's zone
        self.dst_zone = -1
        self.flow_id = 0
        self.a_is_initiator = True
        self.state = TCP_SYN_SENT
        self.fin_mask = 0  # 1: initiator sent FIN, 2: responder sent FIN
        self.last_us = 0
        self.generation = 0
        self.first_type = 0  # ICMP type/code of the first packet, for events and re-decisions
        self.first_code = 0


FlowKey = tuple[int, int, int, int, int]


def _parse_ip(buf: Buffer, off: int, end: int, max_ext: int, p: Parsed, quoted: bool = False) -> int:
    """Parse the IP packet in buf[off:end] into p. `quoted` parses the packet inside an ICMP error,
    which is cut short by design: lengths are not checked against the data, only the first 8
    bytes of the transport header are needed."""
    data = memoryview(buf)
    avail = end - off
    if avail < 1:
        return P_MALFORMED
    version = data[off] >> 4
    if version == 4:
        if avail < 20:
            return P_MALFORMED
        ihl = (data[off] & 0x0F) * 4
        total = (data[off + 2] << 8) | data[off + 3]
        if ihl < 20:
            return P_MALFORMED
        if quoted:
            l4_end = end
        else:
            if total < ihl or total > avail:
                return P_MALFORMED
            l4_end = off + total
        p.family = 4
        p.src = IPV4_MAPPED_PREFIX | int.from_bytes(data[off + 12 : off + 16], "big")
        p.dst = IPV4_MAPPED_PREFIX | int.from_bytes(data[off + 16 : off + 20], "big")
        frag = (data[off + 6] << 8) | data[off + 7]
        if frag & 0x3FFF:  # MF or a fragment offset
            p.proto = data[off + 9]
            return P_FRAGMENT
        p.proto = data[off + 9]
        l4 = off + ihl
        if l4 > l4_end:
            return P_MALFORMED
    elif version == 6:
        if avail < 40:
            return P_MALFORMED
        plen = (data[off + 4] << 8) | data[off + 5]
        if quoted:
            l4_end = end
        else:
            if 40 + plen > avail:
                return P_MALFORMED
            l4_end = off + 40 + plen
        p.family = 6
        p.src = int.from_bytes(data[off + 8 : off + 24], "big")
        p.dst = int.from_bytes(data[off + 24 : off + 40], "big")
        nh = data[off + 6]
        pos = off + 40
        count = 0
        while True:
            if nh in IPV6_EXT_PLAIN:
                count += 1
                if count > max_ext or pos + 8 > l4_end:
                    return P_MALFORMED
                if nh == 43 and data[pos + 2] == 0:
                    p.proto = 43
                    return P_RH0
                nxt = data[pos]
                pos += (data[pos + 1] + 1) * 8
                nh = nxt
                if pos > l4_end:
                    return P_MALFORMED
            elif nh == IPV6_EXT_FRAGMENT:
                count += 1
                if count > max_ext or pos + 8 > l4_end:
                    return P_MALFORMED
                fo = (data[pos + 2] << 8) | data[pos + 3]
                if fo & 0xFFF9:  # offset (upper 13 bits) or M flag: a real fragment
                    p.proto = data[pos]
                    return P_FRAGMENT
                nh = data[pos]
                pos += 8
            elif nh == IPV6_EXT_AH:
                count += 1
                if count > max_ext or pos + 8 > l4_end:
                    return P_MALFORMED
                nxt = data[pos]
                pos += (data[pos + 1] + 2) * 4
                nh = nxt
                if pos > l4_end:
                    return P_MALFORMED
            else:
                break
        p.proto = nh
        l4 = pos
    else:
        return P_MALFORMED

    l4len = l4_end - l4
    p.l4 = l4
    p.l4_end = l4_end
    proto = p.proto
    if proto == PROTO_TCP:
        if quoted:
            if l4len < 4:
                return P_MALFORMED
        else:
            if l4len < 20:
                return P_MALFORMED
            doff = (data[l4 + 12] >> 4) * 4
            if doff < 20 or doff > l4len:
                return P_MALFORMED
            p.flags = data[l4 + 13] & 0x3F
        p.sport = (data[l4] << 8) | data[l4 + 1]
        p.dport = (data[l4 + 2] << 8) | data[l4 + 3]
    elif proto == PROTO_UDP:
        if l4len < (4 if quoted else 8):
            return P_MALFORMED
        p.sport = (data[l4] << 8) | data[l4 + 1]
        p.dport = (data[l4 + 2] << 8) | data[l4 + 3]
    elif (proto == PROTO_ICMP and p.family == 4) or (proto == PROTO_ICMPV6 and p.family == 6):
        if l4len < 4:
            return P_MALFORMED
        itype = data[l4]
        p.sport = itype
        p.dport = data[l4 + 1]
        echo = ICMP4_ECHO if p.family == 4 else ICMP6_ECHO
        errors = ICMP4_ERRORS if p.family == 4 else ICMP6_ERRORS
        if itype in echo:
            if l4len < 8:
                return P_MALFORMED
            p.type = 1
            p.icmp_id = (data[l4 + 4] << 8) | data[l4 + 5]
        elif itype in errors and not quoted:
            if l4len < 8:
                return P_MALFORMED
            p.type = 2
            # the quoted packet follows the 8-byte ICMP header; the caller parses it
            p.inner_off = l4 + 8
            p.inner_end = l4_end
    return P_OK


def _flow_key(p: Parsed) -> tuple[FlowKey, bool]:
    """Canonical key (both directions map to one key) and whether p's source is side A."""
    if p.proto == PROTO_TCP or p.proto == PROTO_UDP:
        sp, dp = p.sport, p.dport
    elif p.type == 1:
        sp = dp = p.icmp_id
    else:
        sp = dp = 0
    if (p.src, sp) <= (p.dst, dp):
        return (p.src, p.dst, sp, dp, p.proto), True
    return (p.dst, p.src, dp, sp, p.proto), False


class Engine:
    """The per-packet decision engine (reference implementation)."""

    def __init__(self, policy: CompiledPolicy, limits: Limits | None = None) -> None:
        self._limits = limits or Limits()
        self._flows: OrderedDict[FlowKey, Flow] = OrderedDict()
        self._events: list[RawEvent] = []
        self._counters: dict[str, int] = dict.fromkeys(_COUNTER_NAMES, 0)
        self._generation = 0
        self._policy = policy
        self.set_policy(policy)

    # --- public API -----------------------------------------------------------------------
    def set_policy(self, policy: CompiledPolicy) -> None:
        """Swap the policy. Existing flows keep their state; each is decided again (with the new
        rules) on its next packet, so a flow the new policy denies is cut."""
        self._policy = policy
        self._generation += 1
        self._prefixes = [(net >> (128 - plen), 128 - plen, zone) for net, plen, zone in policy.prefixes]

    @property
    def policy(self) -> CompiledPolicy:
        return self._policy

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def flow_count(self) -> int:
        return len(self._flows)

    def counters(self) -> dict[str, int]:
        out = dict(self._counters)
        out["flows"] = len(self._flows)
        return out

    def pop_events(self) -> list[RawEvent]:
        events, self._events = self._events, []
        return events

    def expire(self, now_us: int) -> int:
        dead = [k for k, f in self._flows.items() if self._expired(k[4], f, now_us)]
        for k in dead:
            del self._flows[k]
        self._counters["flows_expired"] += len(dead)
        return len(dead)

    def decide(self, packet: Buffer, ts_us: int, in_if: str | None = None, out_if: str | None = None) -> Decision:
        data = memoryview(packet)
        return self._decide_ip(data, 0, len(data), ts_us, in_if, out_if)

    def decide_frames(
        self,
        buf: Buffer,
        offsets: array[int],
        lengths: array[int],
        ts_us: array[int],
        linktype: int,
        out: bytearray,
        start: int = 0,
    ) -> int:
        """Decide frames start.. of a batch; out[i] = verdict of frame i. Returns the index after
        the last frame decided: all of them, or stops right after a FRAGMENT so the caller can
        reassemble and decide that datagram before any later frame (the order conntrack gives
        live)."""
        if linktype not in SUPPORTED_LINKTYPES:
            raise ValueError(f"unsupported link type {linktype}")
        data = memoryview(buf)
        n = len(offsets)
        if len(lengths) < n or len(ts_us) < n or len(out) < n:
            raise ValueError("decide_frames: lengths, ts_us and out must cover every offset")
        for i in range(n):
            if offsets[i] < 0 or lengths[i] < 0 or offsets[i] + lengths[i] > len(data):
                raise ValueError(f"decide_frames: frame {i} lies outside the buffer")
        for i in range(start, n):
            begin = offsets[i]
            end = begin + lengths[i]
            ts = ts_us[i]
            ip = _ip_offset(data, begin, end, linktype)
            if ip == -2:
                self._count_packet(DROP, R_NON_IP)
                out[i] = DROP
            elif ip < 0:
                out[i] = self._malformed(ts).verdict
            else:
                verdict = self._decide_ip(data, ip, end, ts, None, None).verdict
                out[i] = verdict
                if verdict == FRAGMENT:
                    return i + 1
        return n

    # --- internals ------------------------------------------------------------------------
    def _zone_of(self, addr: int) -> int:
        for net, shift, zone in self._prefixes:
            if addr >> shift == net:
                return zone
        return -1

    def _timeout(self, proto: int, flow: Flow) -> int:
        lim = self._limits
        if proto == PROTO_TCP:
            state = flow.state
            if state == TCP_SYN_SENT:
                return lim.tcp_syn_timeout_us
            if state == TCP_ESTABLISHED:
                return lim.tcp_established_timeout_us
            if state == TCP_CLOSING:
                return lim.tcp_closing_timeout_us
            return lim.tcp_closed_timeout_us
        if proto == PROTO_UDP:
            return lim.udp_timeout_us
        if proto in (PROTO_ICMP, PROTO_ICMPV6):
            return lim.icmp_timeout_us
        return lim.other_timeout_us

    def _expired(self, proto: int, flow: Flow, now_us: int) -> bool:
        return now_us - flow.last_us > self._timeout(proto, flow)

    def _lookup(self, key: FlowKey, now_us: int) -> Flow | None:
        flow = self._flows.get(key)
        if flow is not None and self._expired(key[4], flow, now_us):
            del self._flows[key]
            self._counters["flows_expired"] += 1
            return None
        return flow

    def _count_packet(self, verdict: int, reason: int) -> None:
        c = self._counters
        c["packets"] += 1
        if verdict == DROP:
            c["dropped"] += 1
            c[_DROP_COUNTER[reason]] += 1
        elif verdict == ACCEPT:
            c["accepted"] += 1
        elif verdict == INSPECT:
            c["inspected"] += 1
        else:
            c["fragments"] += 1

    def _malformed(self, ts_us: int) -> Decision:
        verdict = ACCEPT if self._policy.malformed_accept else DROP
        self._count_packet(verdict, R_MALFORMED)
        if verdict == ACCEPT:
            self._counters["malformed_accepted"] += 1
        self._events.append(RawEvent(EV_ANOMALY, ts_us, 0, 0, 0, 0, 0, 0, 0, -1, -1, verdict, -1, R_MALFORMED))
        return Decision(verdict, R_MALFORMED, -1, -1, -1, 0)

    def _packet_event(self, kind: int, ts_us: int, p: Parsed, sz: int, dz: int, verdict: int, reason: int) -> None:
        self._events.append(
            RawEvent(kind, ts_us, 0, p.family, p.src, p.dst, p.sport, p.dport, p.proto, sz, dz, verdict, -1, reason)
        )

    def _drop(self, kind: int, ts_us: int, p: Parsed, sz: int, dz: int, reason: int) -> Decision:
        self._count_packet(DROP, reason)
        self._packet_event(kind, ts_us, p, sz, dz, DROP, reason)
        return Decision(DROP, reason, -1, sz, dz, 0)

    def _decide_ip(
        self, data: memoryview, off: int, end: int, ts_us: int, in_if: str | None, out_if: str | None
    ) -> Decision:
        policy = self._policy
        p = Parsed()
        status = _parse_ip(data, off, end, self._limits.max_ipv6_ext_headers, p)
        if status == P_MALFORMED:
            return self._malformed(ts_us)
        if status == P_FRAGMENT:
            self._count_packet(FRAGMENT, R_FRAGMENT)
            return Decision(FRAGMENT, R_FRAGMENT, -1, -1, -1, 0)
        if status == P_RH0:
            return self._drop(EV_ANOMALY, ts_us, p, -1, -1, R_IPV6_RH0)

        # zones: the input interface is authoritative when known; the source prefix must agree
        src_zone = -1
        if in_if is not None:
            src_zone = policy.interfaces.get(in_if, -1)
        prefix_zone = self._zone_of(p.src)
        dst_zone = self._zone_of(p.dst)
        if dst_zone < 0 and out_if is not None:
            dst_zone = policy.interfaces.get(out_if, -1)
        if src_zone >= 0:
            if prefix_zone >= 0 and prefix_zone != src_zone:
                return self._drop(EV_ANOMALY, ts_us, p, src_zone, dst_zone, R_ZONE_MISMATCH)
        else:
            src_zone = prefix_zone
        if src_zone < 0 or dst_zone < 0:
            return self._drop(EV_DROP, ts_us, p, src_zone, dst_zone, R_UNKNOWN_ZONE)

        proto = p.proto
        if proto == PROTO_TCP:
            fl = p.flags
            if (
                (fl & (TH_SYN | TH_FIN)) == (TH_SYN | TH_FIN)
                or (fl & (TH_SYN | TH_RST)) == (TH_SYN | TH_RST)
                or (fl & 0x3F) == 0
                or (fl & (TH_FIN | TH_ACK)) == TH_FIN
            ):
                return self._drop(EV_ANOMALY, ts_us, p, src_zone, dst_zone, R_BAD_TCP_FLAGS)

        if p.type == 2:
            return self._related(data, p, ts_us, src_zone, dst_zone)

        key, src_is_a = _flow_key(p)
        flow = self._lookup(key, ts_us)
        if flow is not None:
            from_initiator = src_is_a == flow.a_is_initiator or (key[0] == key[1] and key[2] == key[3])
            if proto == PROTO_TCP:
                fl = p.flags
                if fl & TH_SYN and not fl & TH_ACK and from_initiator and flow.state >= TCP_CLOSING:
                    # port reuse after close: a new connection replaces the old flow
                    del self._flows[key]
                    flow = None
            if flow is not None:
                self._flows.move_to_end(key)
                if ts_us > flow.last_us:
                    flow.last_us = ts_us
                if proto == PROTO_TCP:
                    _tcp_track(flow, p.flags, from_initiator)
                if flow.generation != self._generation:
                    self._redecide(flow, key, p, ts_us, src_zone, dst_zone, from_initiator)
                    self._count_packet(flow.verdict, R_RULE)
                    return Decision(flow.verdict, R_RULE, flow.rule, src_zone, dst_zone, flow.flow_id)
                self._count_packet(flow.verdict, R_FLOW)
                return Decision(flow.verdict, R_FLOW, flow.rule, src_zone, dst_zone, flow.flow_id)

        if proto == PROTO_TCP and (p.flags & (TH_SYN | TH_ACK)) != TH_SYN:
            return self._drop(EV_DROP, ts_us, p, src_zone, dst_zone, R_NO_FLOW)

        rule, verdict = self._match(p.src, p.dst, p.sport, p.dport, proto, p.family, src_zone, dst_zone)
        flow = Flow()
        flow.verdict = verdict
        flow.rule = rule
        flow.src_zone = src_zone
        flow.dst_zone = dst_zone
        flow.a_is_initiator = src_is_a
        flow.last_us = ts_us
        flow.generation = self._generation
        if p.proto in (PROTO_ICMP, PROTO_ICMPV6):
            flow.first_type, flow.first_code = p.sport, p.dport
        tag = flow_tag(data, p.l4, p.l4_end, proto, p.family)  # from the packet's bytes, not the clock
        flow.flow_id = flow_id_for(key[0], key[1], key[2], key[3], key[4], tag)
        if len(self._flows) >= self._limits.max_flows:
            self._flows.popitem(last=False)
            self._counters["flows_evicted"] += 1
        self._flows[key] = flow
        self._counters["flows_created"] += 1
        self._count_packet(verdict, R_RULE)
        self._events.append(
            RawEvent(EV_FLOW, ts_us, flow.flow_id, p.family, p.src, p.dst, p.sport, p.dport, proto,
                     src_zone, dst_zone, verdict, rule, R_RULE)
        )  # fmt: skip
        return Decision(verdict, R_RULE, rule, src_zone, dst_zone, flow.flow_id)

    def _match(
        self, src: int, dst: int, sport: int, dport: int, proto: int, family: int, src_zone: int, dst_zone: int
    ) -> tuple[int, int]:
        """First matching rule -> (rule index, verdict); zone defaults give rule index -1."""
        ports = proto in (PROTO_TCP, PROTO_UDP)
        # ICMPv6 inside IPv4 (or ICMP inside IPv6) is not parsed as ICMP: it has no type to match
        icmp = (proto == PROTO_ICMP and family == 4) or (proto == PROTO_ICMPV6 and family == 6)
        for index, r in enumerate(self._policy.rules):
            if r.from_zone != src_zone or r.to_zone != dst_zone:
                continue
            if r.proto and r.proto != proto:
                continue
            if r.src_nets and not _in_nets(src, r.src_nets):
                continue
            if r.dst_nets and not _in_nets(dst, r.dst_nets):
                continue
            if r.src_ports and not (ports and _in_ranges(sport, r.src_ports)):
                continue
            if r.dst_ports and not (ports and _in_ranges(dport, r.dst_ports)):
                continue
            if r.icmp_types and not (icmp and sport in r.icmp_types):
                continue
            verdict = ACCEPT if r.action == ACT_ALLOW else INSPECT if r.action == ACT_INSPECT else DROP
            return index, verdict
        if src_zone == dst_zone and self._policy.zones[src_zone].intra_zone_allow:
            return -1, ACCEPT
        return -1, DROP

    def _redecide(
        self, flow: Flow, key: FlowKey, p: Parsed, ts_us: int, src_zone: int, dst_zone: int, from_initiator: bool
    ) -> None:
        """Decide an existing flow again after a reload, from its initiator's side."""
        if flow.a_is_initiator:
            isrc, idst, isport, idport = key[0], key[1], key[2], key[3]
        else:
            isrc, idst, isport, idport = key[1], key[0], key[3], key[2]
        if not from_initiator:
            src_zone, dst_zone = dst_zone, src_zone
        proto = key[4]
        if proto in (PROTO_ICMP, PROTO_ICMPV6):
            isport, idport = flow.first_type, flow.first_code
        flow.rule, flow.verdict = self._match(isrc, idst, isport, idport, proto, p.family, src_zone, dst_zone)
        flow.src_zone, flow.dst_zone = src_zone, dst_zone
        flow.generation = self._generation
        self._counters["flows_redecided"] += 1
        self._events.append(
            RawEvent(EV_FLOW, ts_us, flow.flow_id, p.family, isrc, idst, isport, idport, proto,
                     src_zone, dst_zone, flow.verdict, flow.rule, R_RULE)
        )  # fmt: skip

    def _related(self, data: memoryview, p: Parsed, ts_us: int, src_zone: int, dst_zone: int) -> Decision:
        """ICMP error: pass it only if it quotes a packet of a known, not denied flow."""
        q = Parsed()
        status = _parse_ip(data, p.inner_off, p.inner_end, self._limits.max_ipv6_ext_headers, q, quoted=True)
        if status == P_OK and q.family == p.family:
            key, _ = _flow_key(q)
            flow = self._lookup(key, ts_us)
            if flow is not None and flow.verdict != DROP:
                self._count_packet(ACCEPT, R_RELATED)
                return Decision(ACCEPT, R_RELATED, flow.rule, src_zone, dst_zone, flow.flow_id)
        return self._drop(EV_DROP, ts_us, p, src_zone, dst_zone, R_ICMP_NO_FLOW)


def _tcp_track(flow: Flow, fl: int, from_initiator: bool) -> None:
    if fl & TH_RST:
        flow.state = TCP_CLOSED
        return
    if flow.state == TCP_CLOSED:  # closed stays closed (a late FIN must not reopen it)
        return
    if fl & TH_SYN and fl & TH_ACK and not from_initiator and flow.state == TCP_SYN_SENT:
        flow.state = TCP_ESTABLISHED
    if fl & TH_FIN:
        flow.fin_mask |= 1 if from_initiator else 2
        flow.state = TCP_CLOSED if flow.fin_mask == 3 else TCP_CLOSING


def _in_nets(addr: int, nets: tuple[tuple[int, int], ...]) -> bool:
    for net, plen in nets:
        shift = 128 - plen
        if addr >> shift == net >> shift:
            return True
    return False


def _in_ranges(port: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(lo <= port <= hi for lo, hi in ranges)


def _ip_offset(data: memoryview, start: int, end: int, linktype: int) -> int:
    """Offset of the IP header in a link-layer frame; -1 malformed, -2 not IP."""
    n = end - start
    if linktype == LINKTYPE_ETHERNET:
        if n < 14:
            return -1
        pos = start + 12
        etype = (data[pos] << 8) | data[pos + 1]
        while etype in VLAN_TPIDS:
            pos += 4
            if pos + 2 > end:
                return -1
            etype = (data[pos] << 8) | data[pos + 1]
        if etype in (ETHERTYPE_IPV4, ETHERTYPE_IPV6):
            return pos + 2
        return -2
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return start
    if linktype == LINKTYPE_LINUX_SLL:
        if n < 16:
            return -1
        etype = (data[start + 14] << 8) | data[start + 15]
        return start + 16 if etype in (ETHERTYPE_IPV4, ETHERTYPE_IPV6) else -2
    if linktype == LINKTYPE_LINUX_SLL2:
        if n < 20:
            return -1
        etype = (data[start] << 8) | data[start + 1]
        return start + 20 if etype in (ETHERTYPE_IPV4, ETHERTYPE_IPV6) else -2
    if linktype == LINKTYPE_NULL:
        if n < 4:
            return -1
        family = int.from_bytes(data[start : start + 4], "little")
        if family > 0xFFFF:  # written by a big-endian host
            family = int.from_bytes(data[start : start + 4], "big")
        if family == 2 or family in BSD_AF_INET6:
            return start + 4
        return -2
    return -1


def scan_pcap_records(
    buf: Buffer,
    start: int,
    nanosecond: bool,
    swapped: bool,
    offsets: array[int],
    lengths: array[int],
    ts_us: array[int],
    orig_lengths: array[int],
) -> int:
    """Index the complete classic-pcap records in buf[start:]; return where the first incomplete
    one starts. `swapped` means a big-endian file. Record sizes are not checked here: the reader
    bounds them, since a corrupt length simply never completes."""
    fmt = ">IIII" if swapped else "<IIII"
    data = memoryview(buf)
    n = len(data)
    pos = start
    while pos + 16 <= n:
        sec, frac, incl, orig = unpack_from(fmt, data, pos)
        if pos + 16 + incl > n:
            break
        offsets.append(pos + 16)
        lengths.append(incl)
        ts_us.append(sec * 1_000_000 + (frac // 1000 if nanosecond else frac))
        orig_lengths.append(orig)
        pos += 16 + incl
    return pos


_DROP_COUNTER = tuple(f"drop_{name}" for name in REASONS)
_COUNTER_NAMES = (
    "packets",
    "accepted",
    "dropped",
    "inspected",
    "fragments",
    "malformed_accepted",
    "flows_created",
    "flows_expired",
    "flows_evicted",
    "flows_redecided",
    *_DROP_COUNTER,
)
