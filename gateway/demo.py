"""`lgwan-gateway demo`: the built-in lab's traffic through the gateway, explained per case.

This is the offline way to see the gateway (no root, no namespaces); scripts/demo.sh runs the live
lab and uses `live_summary` below (`python -m gateway.demo live-summary EVENTS`) for its last table.

1. synthesize a capture of every traffic case between the lab's zones (gateway/synth.py),
2. replay it through the engine with the lab policy (gateway/replay.py), writing the forwarded
   packets and the event log,
3. map forwarded packets and events back to the cases and print, per zone pair and case, what
   passed, what was blocked and which rule decided, next to what the lab policy says should happen.

Exit status 0 when every case matches its expectation, 1 otherwise, 2 for a bad config.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway import synth

DEFAULT_OUT_DIR = Path("out/demo")


@dataclass
class CaseResult:
    case: synth.Case
    packets: int = 0  # frames of the case in the input capture
    passed: int = 0  # frames of the case in the output capture
    action: str = ""  # from the case's first event: accept / drop / inspect ("" = no event)
    rule_id: str = ""
    reason: str = ""

    @property
    def blocked(self) -> int:
        return self.packets - self.passed

    @property
    def ok(self) -> bool:
        exp = self.case.expect
        if exp == "accept":
            return self.passed == self.packets and self.action in ("accept", "")
        if exp == "drop":
            return self.passed == 0 and self.action in ("drop", "")
        # inspect: the engine must hand the flow to inspection; what passes is the inspector's call
        return self.action == "inspect"


@dataclass
class DemoReport:
    config: Path
    capture: Path
    output: Path
    events: Path
    implementation: str
    results: list[CaseResult] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


def default_config() -> Path:
    """configs/lab.toml of the working directory, else of the source tree this module is in."""
    here = Path("configs/lab.toml")
    if here.is_file():
        return here
    return Path(__file__).resolve().parents[1] / "configs" / "lab.toml"


def run_demo(config: str | Path | None = None, out_dir: str | Path = DEFAULT_OUT_DIR, seed: int = 1) -> DemoReport:
    """Synthesize, replay, and attribute; raises ConfigError for a bad policy file."""
    from gateway.policy import load_policy
    from gateway.replay import replay

    cfg = Path(config) if config is not None else default_config()
    loaded = load_policy(cfg)  # first: a bad config should fail before any work
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    capture, output, events = out / "lab-traffic.pcap", out / "forwarded.pcap", out / "events.jsonl"
    syn = synth.demo_capture(capture, seed)
    summary = replay(capture, loaded, output, events)
    report = DemoReport(cfg, capture, output, events, summary.implementation, summary=summary.to_dict())
    results = [CaseResult(c) for c in syn.cases]
    for f in syn.flows:
        results[f.case].packets += f.packets
    for key in _ip_keys(output):
        ci = syn.labels.get(key)
        if ci is not None:
            results[ci].passed += 1
    _attribute_events(events, syn, results)
    report.results = results
    return report


def _ip_keys(path: Path) -> list[tuple[str, str, int]]:
    """(src, dst, IP id) of every IPv4 frame of an Ethernet classic-pcap file."""
    data = path.read_bytes()
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        rec = struct.Struct("<IIII")
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        rec = struct.Struct(">IIII")
    else:
        raise ValueError(f"{path}: not a classic pcap file")
    keys = []
    pos = 24
    while pos + 16 <= len(data):
        _, _, incl, _ = rec.unpack_from(data, pos)
        frame = data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        if len(frame) >= 34 and frame[12:14] == b"\x08\x00":
            src = ".".join(map(str, frame[26:30]))
            dst = ".".join(map(str, frame[30:34]))
            keys.append((src, dst, int.from_bytes(frame[18:20], "big")))
    return keys


_PROTO = {"TCP": 6, "UDP": 17, "ICMP": 1}


def _ts_us(text: str) -> int:
    t = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z")
    return int(t.timestamp()) * 1_000_000 + t.microsecond


def _attribute_events(path: Path, syn: synth.SynthResult, results: list[CaseResult]) -> None:
    """Give each case the first event about it: flows by 5-tuple (ICMP by address pair), and when
    several flows share a key, the one that started last before the event."""
    by_key: dict[tuple[object, ...], list[synth.FlowInfo]] = {}
    for f in syn.flows:
        by_key.setdefault((f.src, f.dst, f.proto, f.sport, f.dport), []).append(f)
        by_key.setdefault((f.src, f.dst, f.proto), []).append(f)
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            ev = json.loads(line)
            if "src_ip" not in ev:
                continue
            proto = _PROTO.get(str(ev.get("proto")), -1)
            cands = by_key.get((ev["src_ip"], ev["dest_ip"], proto, ev.get("src_port"), ev.get("dest_port")))
            cands = cands or by_key.get((ev["src_ip"], ev["dest_ip"], proto), [])
            ts = _ts_us(ev["timestamp"])
            started = [f for f in cands if f.start_us <= ts]
            if not started:
                continue
            r = results[max(started, key=lambda f: f.start_us).case]
            if not r.action:
                r.action = str(ev.get("action", ""))
                r.rule_id = str(ev.get("rule_id") or "")
                r.reason = str(ev.get("reason", ""))


def _traffic(c: synth.Case) -> str:
    if c.proto in ("tcp", "udp") and c.kind != "frag":
        return f"{c.proto}/{c.dport}"
    if c.kind == "frag":
        return f"{c.proto} frags"
    return c.proto


def format_report(rep: DemoReport) -> str:
    lines = [
        "Lab traffic through the gateway, one row per traffic case (a flow or a group of odd packets).",
        "expect: what the lab policy says; verdict/rule: the engine's first event for the case;",
        "pkts/pass/block: frames in the capture / forwarded / not forwarded.",
    ]
    head = (
        f"  {'case':38} {'traffic':11} {'from -> to':36} {'expect':8} {'verdict':8} "
        f"{'pkts':>5} {'pass':>5} {'block':>5}  rule (reason)"
    )
    groups: dict[tuple[str, str], list[CaseResult]] = {}
    for r in rep.results:
        groups.setdefault((r.case.src_zone, r.case.dst_zone), []).append(r)
    order = {z: i for i, z in enumerate(synth.ZONES)}
    for (sz, dz), rs in sorted(groups.items(), key=lambda kv: (order[kv[0][0]], order[kv[0][1]])):
        title = f"{sz} -> {dz}" if sz != dz else f"{sz} (link layer)"
        lines += ["", title, head]
        for r in rs:
            c = r.case
            rule = f"{r.rule_id or '-'} ({r.reason})" if r.action else "(no event)"
            mark = "ok" if r.ok else "MISMATCH"
            ends = f"{c.src} -> {c.dst}" if c.src != c.dst else c.src
            lines.append(
                f"  {c.name:38} {_traffic(c):11} {ends:36} {c.expect:8} {r.action or '-':8} "
                f"{r.packets:5} {r.passed:5} {r.blocked:5}  {rule}  {mark}"
            )
    s = rep.summary
    bad = [r.case.name for r in rep.results if not r.ok]
    lines += [
        "",
        f"engine: {rep.implementation}   policy: {rep.config}",
        f"packets: {s.get('packets')}  forwarded: {s.get('forwarded')}  dropped: {s.get('dropped')}  "
        f"inspected: {s.get('inspected')}"
        + (f" (not forwarded: no inspector in replay yet: {held})" if (held := s.get("inspect_unavailable")) else "")
        + f"  flows: {s.get('flows')}  events: {s.get('events')}",
        f"input capture:    {rep.capture}",
        f"forwarded pcap:   {rep.output}",
        f"event log:        {rep.events}",
        f"result: {len(rep.results) - len(bad)}/{len(rep.results)} cases as the lab policy expects"
        + (f"; MISMATCH: {', '.join(bad)}" if bad else ""),
    ]
    return "\n".join(lines)


def demo_command(args: argparse.Namespace) -> int:
    from gateway.policy import ConfigError

    try:
        rep = run_demo(args.config, args.out_dir, args.seed)
    except ConfigError as exc:
        for issue in exc.errors:
            print(issue, file=sys.stderr)
        return 2
    print(format_report(rep))
    if args.json:
        doc = {
            "ok": rep.ok,
            "implementation": rep.implementation,
            "capture": str(rep.capture),
            "output": str(rep.output),
            "events": str(rep.events),
            "cases": [
                {
                    "case": r.case.name,
                    "src": r.case.src,
                    "dst": r.case.dst,
                    "expect": r.case.expect,
                    "action": r.action,
                    "rule_id": r.rule_id,
                    "reason": r.reason,
                    "packets": r.packets,
                    "passed": r.passed,
                    "ok": r.ok,
                }
                for r in rep.results
            ],
            "summary": rep.summary,
        }
        Path(args.json).write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return 0 if rep.ok else 1


# --- the live lab (scripts/demo.sh) ------------------------------------------------------------


def live_summary(events: Path) -> str:
    """Per zone pair: flows the live daemon accepted / dropped / inspected, and the deciding rules.

    Reads the daemon's event log (one `flow` event per new flow), so it shows what the gateway
    itself decided, next to the probe table that shows what the hosts saw.
    """
    pairs: dict[tuple[str, str], dict[str, int]] = {}
    rules: dict[tuple[str, str], set[str]] = {}
    other = 0
    with events.open(encoding="utf-8") as fh:
        for line in fh:
            ev = json.loads(line)
            if ev.get("event_type") != "flow":
                other += 1
                continue
            key = (str(ev.get("src_zone")), str(ev.get("dest_zone")))
            counts = pairs.setdefault(key, {"accept": 0, "drop": 0, "inspect": 0})
            counts[str(ev["action"])] = counts.get(str(ev["action"]), 0) + 1
            rules.setdefault(key, set()).add(str(ev.get("rule_id") or "-"))
    order = {z: i for i, z in enumerate(synth.ZONES)}
    lines = [f"{'from zone -> to zone':<26} {'accepted':>8} {'dropped':>8} {'inspect':>8}  deciding rules"]
    for (sz, dz), c in sorted(pairs.items(), key=lambda kv: (order.get(kv[0][0], 99), order.get(kv[0][1], 99))):
        names = ", ".join(sorted(rules[(sz, dz)]))
        lines.append(f"{sz + ' -> ' + dz:<26} {c['accept']:>8} {c['drop']:>8} {c['inspect']:>8}  {names}")
    total = sum(sum(c.values()) for c in pairs.values())
    lines.append(f"{total} flow events, {other} drop/anomaly events in {events}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.demo")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("live-summary", help="flows per zone pair from a live daemon's event log")
    p.add_argument("events", type=Path)
    args = parser.parse_args(argv)
    print(live_summary(args.events))
    return 0


if __name__ == "__main__":
    sys.exit(main())
