"""Checks across fields, rules and zones, including the 三層の対策 invariants.

The invariants are not options: a policy that breaks one is refused at load, so no file, reload
or typo can open mynumber <-> internet or widen a mynumber exception to a whole network.

Each check appends a `ConfigIssue` pointing at the key that caused it and carries on, so the
operator sees every problem of a file in one run. The checker works on whatever validated: a
zone or rule that failed schema validation is skipped (its own errors are already reported), and
names of broken zones/profiles are remembered so they do not cause follow-on "unknown" errors.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gateway.fastpath.common import PROTO_ANY, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP
from gateway.policy.errors import ConfigIssue
from gateway.policy.locate import Locator, Path
from gateway.policy.model import (
    ANY_ZONE,
    ICMP_ERROR_TYPES,
    ICMP_TYPES,
    ICMPV6_ERROR_TYPES,
    ICMPV6_TYPES,
    GatewaySection,
    IPNetwork,
    Profile,
    Rule,
    Zone,
    parse_zone_ref,
)

# "Named hosts": the widest entry accepted where the guideline asks for specific servers
# (mynumber egress/ingress, screen transfer). 16 addresses leaves room for a small cluster or
# VIP pair without letting a whole subnet through.
MAX_HOST_PREFIX_V4 = 28
MAX_HOST_PREFIX_V6 = 124
# "Explicit ports": at most this many ports in total for the same rules.
MAX_NAMED_PORTS = 16

PROTO_NUMBERS = {"any": PROTO_ANY, "tcp": PROTO_TCP, "udp": PROTO_UDP, "icmp": PROTO_ICMP, "icmpv6": PROTO_ICMPV6}
NEVER_TIERS = frozenset({"mynumber", "internet"})
EXCEPTION_TIERS = frozenset({"lgwan", "internet"})

PortRanges = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Match:
    """One (from zone, to zone) pair of a rule with its resolved match fields; None = any."""

    pos: int  # the rule's index in the config's rules list
    rule: Rule
    from_zone: int
    to_zone: int
    proto: int
    src: tuple[IPNetwork, ...] | None
    dst: tuple[IPNetwork, ...] | None
    src_ports: PortRanges | None
    dst_ports: PortRanges | None
    icmp_types: tuple[int, ...] | None
    # what the rule can really see: the declared nets, or the zone's networks when the zone is
    # defined by networks alone (an interface can bring addresses from outside them)
    src_eff: tuple[IPNetwork, ...] | None
    dst_eff: tuple[IPNetwork, ...] | None


@dataclass
class Analysis:
    issues: list[ConfigIssue] = field(default_factory=list)
    notes: list[ConfigIssue] = field(default_factory=list)
    matches: list[Match] = field(default_factory=list)


def _fmt_nets(nets: Iterable[IPNetwork]) -> str:
    return ", ".join(str(n) for n in nets)


def _fmt_ports(ranges: Iterable[tuple[int, int]]) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def _host_sized(net: IPNetwork) -> bool:
    return net.prefixlen >= (MAX_HOST_PREFIX_V4 if net.version == 4 else MAX_HOST_PREFIX_V6)


def _port_count(ranges: Iterable[tuple[int, int]]) -> int:
    return sum(hi - lo + 1 for lo, hi in ranges)


def _merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _ports_cover(outer: PortRanges | None, inner: PortRanges | None) -> bool:
    if outer is None:
        return True
    merged = _merge_ranges(outer)
    wanted = [(0, 65535)] if inner is None else list(inner)
    return all(any(a <= lo and hi <= b for a, b in merged) for lo, hi in wanted)


def _nets_cover(outer: tuple[IPNetwork, ...] | None, inner: tuple[IPNetwork, ...] | None) -> bool:
    if outer is None:
        return True
    if inner is None:
        return False
    v4 = list(ipaddress.collapse_addresses(n for n in outer if isinstance(n, ipaddress.IPv4Network)))
    v6 = list(ipaddress.collapse_addresses(n for n in outer if isinstance(n, ipaddress.IPv6Network)))
    for net in inner:
        if isinstance(net, ipaddress.IPv4Network):
            if not any(net.subnet_of(o) for o in v4):
                return False
        elif not any(net.subnet_of(o) for o in v6):
            return False
    return True


def covers(earlier: Match, later: Match) -> bool:
    """True if every packet `later` matches is matched by `earlier` (so `later` never decides)."""
    if (earlier.from_zone, earlier.to_zone) != (later.from_zone, later.to_zone):
        return False
    if earlier.proto != PROTO_ANY and earlier.proto != later.proto:
        return False
    if earlier.icmp_types is not None and (
        later.icmp_types is None or not set(later.icmp_types) <= set(earlier.icmp_types)
    ):
        return False
    return (
        _nets_cover(earlier.src, later.src_eff)
        and _nets_cover(earlier.dst, later.dst_eff)
        and _ports_cover(earlier.src_ports, later.src_ports)
        and _ports_cover(earlier.dst_ports, later.dst_ports)
    )


class Checker:
    def __init__(
        self,
        file: str,
        locator: Locator,
        gateway: GatewaySection | None,
        zones: Sequence[tuple[int, Zone]],
        rules: Sequence[tuple[int, Rule]],
        profiles: dict[str, Profile],
        broken_zones: set[str],
        broken_profiles: set[str],
        broken_rule_ids: set[str],
    ) -> None:
        self.file = file
        self.loc = locator
        self.gateway = gateway
        self.zones = list(zones)
        self.rules = list(rules)
        self.profiles = profiles
        self.broken_zones = broken_zones
        self.broken_profiles = broken_profiles
        self.broken_rule_ids = broken_rule_ids
        self.out = Analysis()
        self._seen: set[tuple[int, str]] = set()
        self.zone_by_name: dict[str, tuple[int, Zone]] = {}
        self.zones_known = True  # False when the zones list itself is broken: no "unknown zone" findings
        # rules that validated only after dropping unknown keys: checked, but kept out of the
        # shadowing analysis (what the unknown key meant is not known)
        self.salvaged_rules: set[int] = set()
        # (rule index, rule id, "from"/"to", raw value) of rules that failed validation: their zone
        # references are still checked so a typo'd zone name shows up in the same run
        self.broken_refs: list[tuple[int, str, str, object]] = []

    # -- reporting --------------------------------------------------------------------------
    def error(self, path: Path, message: str) -> None:
        line = self.loc.line(path)
        if (line, message) not in self._seen:  # broad rules would repeat per zone pair
            self._seen.add((line, message))
            self.out.issues.append(ConfigIssue(self.file, line, message))

    def note(self, path: Path, message: str) -> None:
        self.out.notes.append(ConfigIssue(self.file, self.loc.line(path), message))

    # -- entry point ------------------------------------------------------------------------
    def run(self) -> Analysis:
        self.check_zones()
        self.check_gateway()
        self.check_rules()
        self.check_shadowing()
        self.check_unused_profiles()
        return self.out

    def check_gateway(self) -> None:
        gw = self.gateway
        if gw is None:
            return
        if gw.fail_mode == "open":
            tiers = {z.tier for _, z in self.zones}
            if tiers >= NEVER_TIERS:
                self.error(
                    ("gateway", "fail_mode"),
                    'fail_mode = "open" with both mynumber and internet zones: when the daemon stops, traffic '
                    'would pass unfiltered between them, which no configuration may allow; use "closed"',
                )
            else:
                self.note(
                    ("gateway", "fail_mode"),
                    'warning: fail_mode = "open": while the daemon is down, traffic passes UNFILTERED '
                    "(iptables --queue-bypass)",
                )
        if gw.malformed == "accept":
            self.note(
                ("gateway", "malformed"),
                'warning: malformed = "accept": packets that cannot be parsed are forwarded without a rule check',
            )

    def check_zones(self) -> None:
        iface_owner: dict[str, str] = {}
        nets: list[tuple[IPNetwork, str, Path]] = []
        for pos, z in self.zones:
            base: Path = ("zones", pos)
            if z.name in self.zone_by_name or z.name in self.broken_zones:
                self.error((*base, "name"), f'duplicate zone name "{z.name}"')
            else:
                self.zone_by_name[z.name] = (pos, z)
            if not z.networks and not z.interfaces:
                self.error(base, f'zone "{z.name}": needs networks, interfaces or both (to know what is in it)')
            for j, ifname in enumerate(z.interfaces):
                owner = iface_owner.get(ifname)
                if owner is not None:
                    where = "twice in this zone" if owner == z.name else f'already in zone "{owner}"'
                    self.error((*base, "interfaces", j), f'zone "{z.name}": interface "{ifname}" is {where}')
                else:
                    iface_owner[ifname] = z.name
            for j, net in enumerate(z.networks):
                for other, owner, _ in nets:
                    if net.version == other.version and net.overlaps(other):
                        where = "another network of this zone" if owner == z.name else f'zone "{owner}"'
                        self.error(
                            (*base, "networks", j),
                            f'zone "{z.name}": network {net} overlaps {other} of {where}: a packet must '
                            "belong to exactly one zone",
                        )
                nets.append((net, z.name, (*base, "networks", j)))

    # -- rules --------------------------------------------------------------------------------
    def _zones_of(self, ref: tuple[str, ...], path: Path, rid: str) -> list[int] | None:
        """Zone indexes a from/to reference names; None when it cannot be resolved."""
        if not self.zones_known:
            return None
        if ref == (ANY_ZONE,):
            if self.broken_zones:
                return None
            return [pos for pos, _ in self.zones]
        out: list[int] = []
        ok = True
        for name in ref:
            if name in self.zone_by_name:
                out.append(self.zone_by_name[name][0])
            elif name in self.broken_zones:
                ok = False  # already reported where the zone is defined
            else:
                known = ", ".join(self.zone_by_name) or "none"
                self.error(path, f'rule "{rid}": unknown zone "{name}" (zones: {known})')
                ok = False
        return out if ok else None

    def _zone(self, idx: int) -> Zone:
        for pos, z in self.zones:
            if pos == idx:
                return z
        raise KeyError(idx)

    def check_rules(self) -> None:
        for pos, rid, key, value in self.broken_refs:
            try:
                ref = parse_zone_ref(value)
            except ValueError:
                continue  # reported by the schema validation
            if ref != (ANY_ZONE,):
                self._zones_of(ref, ("rules", pos, key), rid)
        ids: dict[str, int] = {}
        for pos, r in self.rules:
            base: Path = ("rules", pos)
            if r.id in ids or r.id in self.broken_rule_ids:
                first = f" (first at line {self.loc.line(('rules', ids[r.id]))})" if r.id in ids else ""
                self.error((*base, "id"), f'duplicate rule id "{r.id}"{first}: ids must be unique and stable')
            else:
                ids[r.id] = pos
            before = len(self.out.issues)
            matches = self._check_rule(pos, r)
            if matches is not None and len(self.out.issues) == before:
                self.out.matches.extend(matches)

    def _check_rule(self, pos: int, r: Rule) -> list[Match] | None:
        base: Path = ("rules", pos)
        rid = r.id
        proto = PROTO_NUMBERS[r.proto]

        # protocol coherence
        if (r.src_ports or r.dst_ports) and r.proto not in ("tcp", "udp"):
            key = "dst_ports" if r.dst_ports else "src_ports"
            self.error((*base, key), f'rule "{rid}": ports need proto = "tcp" or "udp" (proto is "{r.proto}")')
        icmp_types: tuple[int, ...] | None = None
        if r.icmp_types:
            if r.proto not in ("icmp", "icmpv6"):
                self.error(
                    (*base, "icmp_types"),
                    f'rule "{rid}": icmp_types need proto = "icmp" or "icmpv6" (proto is "{r.proto}")',
                )
            else:
                icmp_types = self._resolve_icmp(pos, r)
        for key, nets in (("src", r.src), ("dst", r.dst)):
            for j, net in enumerate(nets or ()):
                if (r.proto == "icmp" and net.version == 6) or (r.proto == "icmpv6" and net.version == 4):
                    self.error(
                        (*base, key, j),
                        f'rule "{rid}": {key} {net} is IPv{net.version} but proto "{r.proto}" is '
                        f"IPv{4 if r.proto == 'icmp' else 6} only: this entry can never match",
                    )
        if r.src and r.dst and not ({n.version for n in r.src} & {n.version for n in r.dst}):
            self.error((*base, "dst"), f'rule "{rid}": src and dst are of different IP versions: it can never match')

        # action / profile / exception
        if r.action == "inspect":
            if r.profile is None:
                self.error((*base, "action"), f'rule "{rid}": action "inspect" needs a profile ([profiles.NAME])')
            elif r.profile not in self.profiles:
                if r.profile not in self.broken_profiles:
                    known = ", ".join(self.profiles) or "none defined"
                    self.error((*base, "profile"), f'rule "{rid}": unknown profile "{r.profile}" (profiles: {known})')
            elif self.profiles[r.profile].kind == "smtp" and r.proto != "tcp":
                self.error((*base, "proto"), f'rule "{rid}": profile "{r.profile}" inspects SMTP: needs proto = "tcp"')
        elif r.profile is not None:
            self.error((*base, "profile"), f'rule "{rid}": profile needs action "inspect" (action is "{r.action}")')
        if r.exception is not None and r.action != "allow":
            self.error((*base, "exception"), f'rule "{rid}": exception "{r.exception}" applies to action "allow" only')

        from_zones = self._zones_of(r.from_, (*base, "from"), rid)
        to_zones = self._zones_of(r.to, (*base, "to"), rid)
        if from_zones is None or to_zones is None:
            return None

        for key, nets, zone_ids in (("src", r.src, from_zones), ("dst", r.dst, to_zones)):
            for zid in zone_ids:
                z = self._zone(zid)
                if not z.networks:
                    continue  # interface-only zone: any address may arrive through it
                for j, net in enumerate(nets or ()):
                    if not any(net.version == zn.version and net.subnet_of(zn) for zn in z.networks):  # type: ignore[arg-type]
                        self.error(
                            (*base, key, j),
                            f'rule "{rid}": {key} {net} is not inside zone "{z.name}" ({_fmt_nets(z.networks)})',
                        )

        matches: list[Match] = []
        for fz in from_zones:
            for tz in to_zones:
                self._check_tiers(pos, r, fz, tz)
                matches.append(self._match(pos, r, fz, tz, proto, icmp_types))
        if r.exception == "screen_transfer":
            pairs = {frozenset((self._zone(f).tier, self._zone(t).tier)) for f in from_zones for t in to_zones}
            if pairs != {EXCEPTION_TIERS}:
                self.error(
                    (*base, "exception"),
                    f'rule "{rid}": the screen_transfer exception is only for traffic between lgwan and internet zones',
                )
        return matches

    def _resolve_icmp(self, pos: int, r: Rule) -> tuple[int, ...]:
        names = ICMP_TYPES if r.proto == "icmp" else ICMPV6_TYPES
        errors = ICMP_ERROR_TYPES if r.proto == "icmp" else ICMPV6_ERROR_TYPES
        out: list[int] = []
        for j, t in enumerate(r.icmp_types or ()):
            path: Path = ("rules", pos, "icmp_types", j)
            if isinstance(t, str):
                if t not in names:
                    self.error(path, f'rule "{r.id}": "{t}" is not an {r.proto} type name')
                    continue
                t = names[t]
            if t in errors:
                self.error(
                    path,
                    f'rule "{r.id}": {r.proto} type {t} is an error message: the gateway passes it only as '
                    "related to a flow it quotes, never by a rule",
                )
            out.append(t)
        return tuple(sorted(set(out)))

    def _check_tiers(self, pos: int, r: Rule, fz_idx: int, tz_idx: int) -> None:
        if r.action == "deny":
            return
        base: Path = ("rules", pos)
        fz, tz = self._zone(fz_idx), self._zone(tz_idx)
        rid, verb = r.id, r.action
        pair = f'{fz.tier} zone "{fz.name}" -> {tz.tier} zone "{tz.name}"'
        tiers = frozenset((fz.tier, tz.tier))

        if tiers == NEVER_TIERS:
            self.error(
                (*base, "to" if fz.tier == "mynumber" else "from"),
                f'rule "{rid}": {verb} {pair}: mynumber <-> internet can never be opened (三層の対策)',
            )
            return
        if fz_idx != tz_idx and "mynumber" in (fz.tier, tz.tier):
            direction = "leaving" if fz.tier == "mynumber" else "entering"
            zname = fz.name if fz.tier == "mynumber" else tz.name
            why = f'rule "{rid}": traffic {direction} mynumber zone "{zname}"'
            if fz.tier != "mynumber":  # 令和2年: taken in only from fixed sources to fixed servers
                self._require_hosts(pos, "src", r.src, f"{why} must name its source hosts")
            self._require_hosts(pos, "dst", r.dst, f"{why} must name its destination hosts")
            self._require_ports(pos, r, f"{why} must name its destination ports")
        if tiers == EXCEPTION_TIERS and r.action == "allow":
            if r.exception != "screen_transfer":
                self.error(
                    (*base, "action"),
                    f'rule "{rid}": allow {pair}: lgwan <-> internet carries only sanitized traffic (無害化通信): '
                    'use action "inspect" with a profile, or for screen transfer set exception = "screen_transfer"',
                )
                return
            why = f'rule "{rid}": screen_transfer exception'
            if r.proto != "tcp":
                self.error((*base, "proto"), f'{why} needs proto = "tcp"')
            self._require_hosts(pos, "dst", r.dst, f"{why} must name its destination servers")
            self._require_ports(pos, r, f"{why} must name its destination ports")
            if r.dst and r.dst_ports and r.proto == "tcp":
                src = _fmt_nets(r.src or fz.networks) or "any"
                self.note(
                    (*base, "exception"),
                    f'note: rule "{rid}": screen-transfer exception (画面転送) {pair}: {src} -> {_fmt_nets(r.dst)} '
                    f"tcp/{_fmt_ports(r.dst_ports)}; clipboard, drive and printer redirection must be off",
                )

    def _require_hosts(self, pos: int, key: str, nets: list[IPNetwork] | None, why: str) -> None:
        limit = f"/{MAX_HOST_PREFIX_V4} or longer for IPv4, /{MAX_HOST_PREFIX_V6} for IPv6"
        if not nets:
            self.error(("rules", pos, key), f"{why}: set {key} to the hosts ({limit})")
            return
        for j, net in enumerate(nets):
            if not _host_sized(net):
                self.error(("rules", pos, key, j), f"{why}: {key} {net} is a network, not named hosts ({limit})")

    def _require_ports(self, pos: int, r: Rule, why: str) -> None:
        if not r.dst_ports:
            self.error(("rules", pos, "dst_ports"), f"{why}: set dst_ports")
        elif _port_count(r.dst_ports) > MAX_NAMED_PORTS:
            self.error(
                ("rules", pos, "dst_ports"),
                f"{why}: dst_ports {_fmt_ports(r.dst_ports)} covers {_port_count(r.dst_ports)} ports "
                f"(at most {MAX_NAMED_PORTS})",
            )

    def _match(self, pos: int, r: Rule, fz: int, tz: int, proto: int, icmp: tuple[int, ...] | None) -> Match:
        def eff(nets: list[IPNetwork] | None, zone: Zone) -> tuple[IPNetwork, ...] | None:
            if nets:
                return tuple(nets)
            if zone.networks and not zone.interfaces:
                return tuple(zone.networks)
            return None

        return Match(
            pos=pos,
            rule=r,
            from_zone=fz,
            to_zone=tz,
            proto=proto,
            src=tuple(r.src) if r.src else None,
            dst=tuple(r.dst) if r.dst else None,
            src_ports=tuple(r.src_ports) if r.src_ports else None,
            dst_ports=tuple(r.dst_ports) if r.dst_ports else None,
            icmp_types=icmp,
            src_eff=eff(r.src, self._zone(fz)),
            dst_eff=eff(r.dst, self._zone(tz)),
        )

    # -- across rules ---------------------------------------------------------------------------
    def check_shadowing(self) -> None:
        by_rule: dict[int, list[Match]] = {}
        for m in self.out.matches:
            if m.pos not in self.salvaged_rules:
                by_rule.setdefault(m.pos, []).append(m)
        earlier: list[Match] = []
        for pos in sorted(by_rule):
            mine = by_rule[pos]
            shadows: list[Match] = []
            for m in mine:
                hit = next((e for e in earlier if covers(e, m)), None)
                if hit is None:
                    break
                shadows.append(hit)
            else:
                self._report_shadow(mine[0].rule, pos, shadows, mine)
            earlier.extend(mine)

    def _report_shadow(self, r: Rule, pos: int, shadows: list[Match], mine: list[Match]) -> None:
        first = shadows[0]
        line = self.loc.line(("rules", first.pos))
        identical = all(covers(m, e) for m, e in zip(mine, shadows, strict=True))
        if identical and all(e.rule.action != r.action for e in shadows):
            self.error(
                ("rules", pos),
                f'rule "{r.id}": contradicts rule "{first.rule.id}" (line {line}): same match, '
                f'but action "{r.action}" vs "{first.rule.action}"; the earlier rule always wins',
            )
        else:
            self.error(
                ("rules", pos),
                f'rule "{r.id}": shadowed by rule "{first.rule.id}" (line {line}), which matches all of its '
                "traffic first: it can never match (remove it, or move it before the broader rule)",
            )

    def check_unused_profiles(self) -> None:
        used = {r.profile for _, r in self.rules}
        for name in self.profiles:
            if name not in used:
                self.note(("profiles", name), f'note: profile "{name}" is not used by any rule')
