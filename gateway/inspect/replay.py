"""Replay adapter: `gateway.replay.Inspector` implemented with the MailInspector.

Frames of inspect flows arrive in capture order; what the inspector forwards (possibly later,
possibly rewritten) is written to --out, and the crafted refusal packets too (with the link
header of a frame that travelled the same way), so the output shows what the peers would have
received. A recorded client cannot retransmit, so reassembly holds out-of-order segments.
Quarantine commands are executed at once with the store given (`--quarantine DIR`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.fastpath.common import ACT_INSPECT, PROTO_TCP, TIER_NAMES, CompiledPolicy
from gateway.inspect.commands import Command, Drop, Forward, Inject, Log, Quarantine, Store, store_original
from gateway.inspect.mail import (
    ClassifierFactory,
    FlowContext,
    InspectConfig,
    MailInspector,
    default_classifier,
)
from gateway.inspect.packet import PacketError, parse_tcp
from gateway.io.pcap import ip_offset
from gateway.replay import OutFrame


def _addr(packed: bytes) -> int:
    if len(packed) == 4:
        return int(ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + packed))
    return int.from_bytes(packed, "big")


def _in_nets(addr: int, nets: tuple[tuple[int, int], ...]) -> bool:
    return any(addr >> (128 - plen) == net >> (128 - plen) for net, plen in nets)


def _in_ranges(port: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(lo <= port <= hi for lo, hi in ranges)


class RuleIndex:
    """Which inspect rule (and profile) a connection's SYN matches: the engine's first-match
    order by zone, protocol, nets and ports (replay has no interfaces: zones by address)."""

    def __init__(self, policy: CompiledPolicy) -> None:
        self.policy = policy

    def zone_of(self, addr: int) -> int:
        for net, plen, zone in self.policy.prefixes:
            if addr >> (128 - plen) == net >> (128 - plen):
                return zone
        return -1

    def context(self, src: bytes, dst: bytes, sport: int, dport: int) -> FlowContext:
        a, b = _addr(src), _addr(dst)
        sz, dz = self.zone_of(a), self.zone_of(b)
        for r in self.policy.rules:
            if r.from_zone != sz or r.to_zone != dz or (r.proto and r.proto != PROTO_TCP):
                continue
            if (r.src_nets and not _in_nets(a, r.src_nets)) or (r.dst_nets and not _in_nets(b, r.dst_nets)):
                continue
            if (r.src_ports and not _in_ranges(sport, r.src_ports)) or (
                r.dst_ports and not _in_ranges(dport, r.dst_ports)
            ):
                continue
            if r.action != ACT_INSPECT:
                break
            zones = self.policy.zones
            return FlowContext(
                profile=r.profile or None,
                rule_id=r.rule_id,
                src_zone=zones[sz].name if sz >= 0 else None,
                dest_zone=zones[dz].name if dz >= 0 else None,
                src_tier=TIER_NAMES[zones[sz].tier] if sz >= 0 else None,
                dest_tier=TIER_NAMES[zones[dz].tier] if dz >= 0 else None,
                policy_generation=self.policy.generation,
            )
        return FlowContext(policy_generation=self.policy.generation)


def mail_profiles(policy: CompiledPolicy) -> dict[str, Any]:
    """The config's `kind = "smtp"` profiles as gateway.sanitize MailProfile objects."""
    import importlib

    mp = importlib.import_module("gateway.sanitize.profile").MailProfile
    raw = policy.extra.get("profiles", {})
    out: dict[str, Any] = {}
    if isinstance(raw, Mapping):
        for name, settings in raw.items():
            if isinstance(settings, Mapping) and settings.get("kind") == "smtp":
                build: Callable[[Any], Any] = getattr(mp, "from_settings", None) or mp.model_validate
                out[name] = build(dict(settings))
    return out


class ReplayMailInspector:
    """gateway.replay.Inspector backed by MailInspector."""

    def __init__(
        self,
        policy: CompiledPolicy,
        store: Store,
        profiles: Mapping[str, Any] | None = None,
        classifier_factory: ClassifierFactory = default_classifier,
        config: InspectConfig | None = None,
    ) -> None:
        self.rules = RuleIndex(policy)
        self.store = store
        self.insp = MailInspector(
            profiles if profiles is not None else mail_profiles(policy), classifier_factory, config
        )
        self._frames: dict[int, tuple[OutFrame, int, int]] = {}  # id -> (frame, linktype, ip offset)
        self._links: dict[tuple[bytes, bytes], tuple[bytes, int]] = {}  # (src, dst) -> link header
        self._next_id = 1
        self._now = 0
        self._events: list[dict[str, object]] = []
        self.counters: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def packet(self, frame: OutFrame, linktype: int) -> Sequence[OutFrame]:
        self._now = max(self._now, frame.ts_us)
        off = ip_offset(linktype, frame.frame)
        if off is None:
            self._count("drop_not_ip")
            return []
        pid = self._next_id
        self._next_id += 1
        self._frames[pid] = (frame, linktype, off)
        ip = frame.frame[off:]
        ctx = None
        try:
            t = parse_tcp(ip)
            self._links[(t.src, t.dst)] = (frame.frame[:off], linktype)
            if t.flags & 0x12 == 0x02:  # a SYN: the rule decides the connection's profile
                ctx = self.rules.context(t.src, t.dst, t.sport, t.dport)
        except PacketError:
            pass
        return self._run(self.insp.packet(pid, ip, frame.ts_us, ctx))

    def _run(self, cmds: list[Command]) -> list[OutFrame]:
        out: list[OutFrame] = []
        work = list(cmds)
        while work:
            c = work.pop(0)
            if isinstance(c, Forward):
                fr, _, off = self._frames.pop(c.packet_id)
                data = fr.frame if c.packet is None else fr.frame[:off] + c.packet
                out.append(OutFrame(self._now, data, fr.orig_len))
                self._count("forwarded_rewritten" if c.packet is not None else "forwarded")
            elif isinstance(c, Drop):
                self._frames.pop(c.packet_id, None)
                self._count(f"drop_{c.reason.split(':', 1)[0]}")
            elif isinstance(c, Inject):
                t = parse_tcp(c.packet)
                link = self._links.get((t.src, t.dst))
                if link is not None:
                    out.append(OutFrame(self._now, link[0] + c.packet, len(link[0]) + len(c.packet)))
                self._count(f"injected_{c.toward}")
            elif isinstance(c, Log):
                self._events.append(c.event)
            elif isinstance(c, Quarantine):
                work = self.insp.quarantined(c.key, *store_original(self.store, c)) + work
        return out

    def finish(self) -> Sequence[OutFrame]:
        return self._run(self.insp.finish())

    def pop_events(self) -> list[dict[str, object]]:
        ev, self._events = self._events, []
        return ev
