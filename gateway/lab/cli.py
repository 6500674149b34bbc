"""`lgwan-gateway lab up|down|status|exec`: the argument parsing and printing around gateway.lab.core."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.lab.core import DEFAULT_CONFIG, DEFAULT_PREFIX, DEFAULT_STATE_DIR, Lab
from gateway.lab.netns import LabError
from gateway.lab.topology import GATEWAY


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        default=str(DEFAULT_STATE_DIR),
        help="PIDs, logs, event log, Maildirs, quarantine (default %(default)s; env LGWAN_LAB_STATE_DIR)",
    )
    common.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help="namespace name prefix (default %(default)s; env LGWAN_LAB_PREFIX); tests use their own",
    )
    parser = argparse.ArgumentParser(
        prog="lgwan-gateway lab", description="The namespace lab of docs/lab.md (needs root)."
    )
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("up", parents=[common], help="build the lab and start its servers and the daemon")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="policy for the daemon (default %(default)s)")
    p.add_argument("--no-daemon", action="store_true", help="no daemon: the gateway forwards everything")
    p.add_argument("--daemon-arg", action="append", default=[], help="extra argument for `run` (repeatable)")
    p.add_argument(
        "--isolate-zones",
        action="store_true",
        help="private-VLAN bridges: same-zone traffic is routed through the gateway too (intra_zone policy)",
    )
    p.add_argument("--keep-on-failure", action="store_true", help="leave a failed lab in place for debugging")
    sub.add_parser("down", parents=[common], help="stop everything the lab started, delete its namespaces")
    p = sub.add_parser("status", parents=[common], help="hosts, daemon, paths")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p = sub.add_parser(
        "probe", parents=[common], help="real traffic across every zone pair: what passed, what was blocked"
    )
    p.add_argument("--timeout", type=float, default=1.0, help="seconds before a probe counts as blocked")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    p = sub.add_parser("exec", parents=[common], help="run a command in a host's namespace: exec HOST -- CMD")
    p.add_argument("host")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command (after --)")
    return parser


def _print_status(st: dict[str, Any]) -> None:
    isolated = ", zones isolated (same-zone traffic routed by the gateway)" if st["isolate_zones"] else ""
    print(f"lab: {'up' if st['up'] else 'down'}  (state dir {st['state_dir']}{isolated})")
    for name, h in st["hosts"].items():
        addr = ", ".join(f"{a} ({z})" for z, a in h["addresses"].items()) if name == GATEWAY else h["address"]
        print(f"  {name:<18} {h['namespace']:<22} {addr}{'' if h['present'] else '  (missing)'}")
    d = st["daemon"]
    if d["pid"] is None:
        print("daemon: not started")
    else:
        print(f"daemon: {'running' if d['running'] else 'NOT running'}, pid {d['pid']}, log {d['log']}")
    dead = [n for n, s in st["servers"].items() if not s["running"]]
    if dead:
        print(f"servers not running: {', '.join(dead)}")
    paths = st["paths"]
    print(f"events:     {paths['events']}")
    print(f"quarantine: {paths['quarantine']}")
    for host, path in paths["maildirs"].items():
        print(f"maildir:    {path}  ({host})")
    print(f"logs:       {paths['logs']}")


def _probe(lab: Lab, timeout: float, as_json: bool) -> int:
    from gateway.lab.matrix import cases_for, matrix_json, print_report, run_matrix, send_test_mail

    st = lab.status()
    if not st["up"]:
        raise LabError("the lab is not up: `lgwan-gateway lab up` first")
    if st["daemon"]["pid"] is None and not as_json:
        print("note: no daemon in this lab (--no-daemon): the gateway forwards everything\n")
    cases = cases_for(st["isolate_zones"])
    results = run_matrix(lab, cases, timeout=timeout)
    mail = send_test_mail(lab)
    if as_json:
        print(matrix_json(results, cases, mail))
        return 0 if all(r.passed == c.passes for r, c in zip(results, cases, strict=True)) else 1
    ok = print_report(lab, results, cases, mail)
    if not st["isolate_zones"]:
        print("(same-zone rows left out: `lab up --isolate-zones` routes them through the gateway)")
    return 0 if ok else 1


def lab_command(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    if os.geteuid() != 0:
        print("lgwan-gateway lab: needs root (network namespaces, veths, iptables)", file=sys.stderr)
        return 2
    lab = Lab(args.state_dir, prefix=args.prefix, config=getattr(args, "config", DEFAULT_CONFIG))
    try:
        if args.action == "up":
            lab.daemon_args = args.daemon_arg
            lab.isolate_zones = args.isolate_zones
            with lab.locked():
                try:
                    lab.up(daemon=not args.no_daemon)
                except BaseException:
                    if lab.touched and not args.keep_on_failure:
                        lab.down()
                    raise
            _print_status(lab.status())
            print("run commands with `lgwan-gateway lab exec HOST -- CMD`; stop with `lgwan-gateway lab down`")
            return 0
        if args.action == "down":
            with lab.locked():
                for warning in lab.down():
                    print(f"warning: {warning}", file=sys.stderr)
            return 0
        if args.action == "status":
            st = lab.status()
            if args.json:
                print(json.dumps(st, indent=1))
            else:
                _print_status(st)
            return 0
        if args.action == "probe":
            return _probe(lab, args.timeout, args.json)
        cmd = list(args.cmd)
        if cmd and cmd[0] == "--":
            cmd = cmd[1:]
        if not cmd:
            print("lgwan-gateway lab exec: no command (exec HOST -- CMD ...)", file=sys.stderr)
            return 2
        return lab.exec(args.host, cmd).returncode
    except LabError as e:
        print(f"lgwan-gateway lab {args.action}: {e}", file=sys.stderr)
        if args.action == "up" and lab.touched:
            hint = "left in place (--keep-on-failure)" if args.keep_on_failure else "torn down"
            print(f"the partial lab was {hint}; logs in {Path(args.state_dir) / 'logs'}", file=sys.stderr)
        return 1
