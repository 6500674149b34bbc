"""Validated config -> `CompiledPolicy`, the immutable snapshot both engines run on."""

from __future__ import annotations

from gateway.fastpath.common import (
    ACT_ALLOW,
    ACT_DENY,
    ACT_INSPECT,
    TIER_NAMES,
    CompiledPolicy,
    Limits,
    RuleSpec,
    ZoneSpec,
    net_to_prefix,
)
from gateway.policy.checks import Match
from gateway.policy.model import IPNetwork, LimitsSection, PolicyConfig

ACTIONS = {"deny": ACT_DENY, "allow": ACT_ALLOW, "inspect": ACT_INSPECT}


def _prefixes(nets: tuple[IPNetwork, ...] | None) -> tuple[tuple[int, int], ...]:
    return tuple(net_to_prefix(str(n)) for n in nets) if nets else ()


def compile_rule(m: Match) -> RuleSpec:
    r = m.rule
    return RuleSpec(
        rule_id=r.id,
        from_zone=m.from_zone,
        to_zone=m.to_zone,
        action=ACTIONS[r.action],
        proto=m.proto,
        src_nets=_prefixes(m.src),
        dst_nets=_prefixes(m.dst),
        src_ports=m.src_ports or (),
        dst_ports=m.dst_ports or (),
        icmp_types=m.icmp_types or (),
        profile=r.profile or "",
        log=r.log,
        kind=r.exception or "",
    )


def compile_limits(section: LimitsSection) -> Limits:
    base = Limits()
    t = section.timeouts

    def us(seconds: float | None, default: int) -> int:
        return default if seconds is None else round(seconds * 1_000_000)

    return Limits(
        max_flows=section.max_flows or base.max_flows,
        tcp_syn_timeout_us=us(t.tcp_syn, base.tcp_syn_timeout_us),
        tcp_established_timeout_us=us(t.tcp_established, base.tcp_established_timeout_us),
        tcp_closing_timeout_us=us(t.tcp_closing, base.tcp_closing_timeout_us),
        tcp_closed_timeout_us=us(t.tcp_closed, base.tcp_closed_timeout_us),
        udp_timeout_us=us(t.udp, base.udp_timeout_us),
        icmp_timeout_us=us(t.icmp, base.icmp_timeout_us),
        other_timeout_us=us(t.other, base.other_timeout_us),
        max_ipv6_ext_headers=section.max_ipv6_ext_headers or base.max_ipv6_ext_headers,
    )


def compile_policy(config: PolicyConfig, matches: list[Match], source: str, generation: int) -> CompiledPolicy:
    """`matches` are the rules expanded per zone pair, in rule order (from `Checker`)."""
    zones = tuple(ZoneSpec(z.name, TIER_NAMES.index(z.tier), z.intra_zone == "allow") for z in config.zones)
    prefixes = [(*net_to_prefix(str(n)), i) for i, z in enumerate(config.zones) for n in z.networks]
    # longest prefix first; ties ordered by address so the table is deterministic
    prefixes.sort(key=lambda p: (-p[1], p[0], p[2]))
    interfaces = {name: i for i, z in enumerate(config.zones) for name in z.interfaces}
    rules = tuple(compile_rule(m) for m in sorted(matches, key=lambda m: m.pos))
    return CompiledPolicy(
        zones=zones,
        prefixes=tuple(prefixes),
        interfaces=interfaces,
        rules=rules,
        malformed_accept=config.gateway.malformed == "accept",
        generation=generation,
        source=source,
        extra={
            "gateway_name": config.gateway.name,
            "fail_mode": config.gateway.fail_mode,
            # inspect profiles travel with the snapshot so a reload swaps them together with rules
            "profiles": {name: {"kind": p.kind, **p.settings} for name, p in config.profiles.items()},
        },
    )
