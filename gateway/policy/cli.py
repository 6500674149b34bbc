"""`lgwan-gateway check-config FILE`: validate a policy and print a one-screen summary."""

from __future__ import annotations

import sys
from typing import TextIO

from gateway.fastpath.common import ACT_ALLOW, ACT_INSPECT, TIER_NAMES
from gateway.policy.errors import ConfigError
from gateway.policy.loader import LoadedPolicy, load_policy
from gateway.policy.model import DaemonSection

EXIT_OK = 0
EXIT_INVALID = 2


def check_config_command(path: str, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Exit 0 and print `OK` plus a summary, or print every error to stderr and exit 2."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        loaded = load_policy(path)
    except ConfigError as exc:
        for issue in exc.errors:
            print(issue, file=err)
        return EXIT_INVALID
    print(f"OK {path}", file=out)
    print(summary(loaded), file=out)
    return EXIT_OK


def _cell(loaded: LoadedPolicy, f: int, t: int) -> str:
    zones = loaded.compiled.zones
    tiers = {TIER_NAMES[zones[f].tier], TIER_NAMES[zones[t].tier]}
    if tiers == {"mynumber", "internet"}:
        return "NEVER"
    allow = sum(1 for r in loaded.compiled.rules if (r.from_zone, r.to_zone) == (f, t) and r.action == ACT_ALLOW)
    inspect = sum(1 for r in loaded.compiled.rules if (r.from_zone, r.to_zone) == (f, t) and r.action == ACT_INSPECT)
    parts = [f"allow({allow})"] * bool(allow) + [f"inspect({inspect})"] * bool(inspect)
    if f == t:
        # the zone default applies to what no rule matches
        parts.insert(0, "intra" if zones[f].intra_zone_allow else "intra:deny")
    return "+".join(parts) or "deny"


def daemon_summary(d: DaemonSection) -> str:
    """One line: how `lgwan-gateway run` would run with this file (before command-line overrides)."""
    queues = f"queue {d.queue}" if d.workers == 1 else f"queues {d.queue}..{d.queue + d.workers - 1}"
    host = f"[{d.metrics_address}]" if ":" in d.metrics_address else d.metrics_address
    metrics = f"{host}:{d.metrics_port}" if d.metrics_port else "off"
    return (
        f"daemon: {d.workers} worker(s) on {queues}, offload {'on' if d.offload else 'off'}, metrics {metrics}, "
        f"events {d.events or 'off'}, rules check every {d.rules_check_interval:g} s"
    )


def summary(loaded: LoadedPolicy) -> str:
    cfg, pol = loaded.config, loaded.compiled
    lines = [f"gateway {cfg.gateway.name}: fail_mode={cfg.gateway.fail_mode} malformed={cfg.gateway.malformed}"]
    lines += [daemon_summary(cfg.daemon), ""]
    lines.append("zones:")
    name_w = max(len(z.name) for z in cfg.zones)
    for z in cfg.zones:
        where = [str(n) for n in z.networks] + [f"if:{i}" for i in z.interfaces]
        lines.append(f"  {z.name:<{name_w}}  {z.tier:<8}  {' '.join(where)}")
    lines += ["", "zone pairs (row: from, column: to; no matching rule = deny):"]
    names = [z.name for z in pol.zones]
    cells = [[_cell(loaded, f, t) for t in range(len(names))] for f in range(len(names))]
    widths = [max(len(names[t]), *(len(row[t]) for row in cells)) for t in range(len(names))]
    header = "  ".join(f"{n:<{w}}" for n, w in zip(names, widths, strict=True))
    lines.append(("  " + " " * name_w + "  " + header).rstrip())
    for name, row in zip(names, cells, strict=True):
        lines.append(
            f"  {name:<{name_w}}  " + "  ".join(f"{c:<{w}}" for c, w in zip(row, widths, strict=True)).rstrip()
        )
    lines += ["", f"rules: {len(cfg.rules)} ({len(pol.rules)} compiled), profiles: {', '.join(cfg.profiles) or 'none'}"]
    if loaded.notes:
        lines += ["", "notes:"] + [f"  {n}" for n in loaded.notes]
    return "\n".join(lines)
