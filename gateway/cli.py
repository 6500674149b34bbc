"""Command line: `lgwan-gateway SUBCOMMAND ...` (also `python -m gateway`).

Each subcommand lives with the code it drives; this module only wires argparse to them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway.io.iptables import BALANCE, FIREWALLS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lgwan-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check-config", help="validate a policy file and print a summary")
    p.add_argument("config", help="TOML policy file")
    p.set_defaults(func=_check_config)

    p = sub.add_parser("replay", help="run a capture through the engine offline")
    p.add_argument("pcap", help="input capture (pcap or pcapng)")
    p.add_argument("--config", required=True, help="TOML policy file")
    p.add_argument("--out", help="write the packets the gateway would forward here (pcap)")
    p.add_argument("--events", help="write the JSON-lines event log here ('-' for stdout)")
    p.add_argument("--json-summary", help="also write the summary as JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    p.add_argument(
        "--quarantine", help="store the originals of removed parts here (default: OUT.quarantine, or a temp dir)"
    )
    p.set_defaults(func=_replay)

    p = sub.add_parser("demo", help="synthesize lab traffic, replay it with the lab policy, explain every case")
    p.add_argument("--config", help="policy file (default: configs/lab.toml)")
    p.add_argument("--out-dir", default="out/demo", help="where the captures and the event log go")
    p.add_argument("--seed", type=int, default=1, help="traffic synthesizer seed")
    p.add_argument("--json", help="also write the per-case results as JSON here")
    p.set_defaults(func=_demo)

    # `lab` parses its own sub-actions (up/down/status/exec) in gateway/lab/cli.py
    p = sub.add_parser("lab", help="namespace lab: up | down | status [--json] | exec HOST -- CMD", add_help=False)
    p.add_argument("lab_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_lab)

    # live daemon (gateway/daemon.py). Each option overrides the config's [daemon] key of the same
    # name (gateway.daemon.settings_for); the defaults are the file's, then the daemon's.
    p = sub.add_parser("run", help="run the live gateway: NFQUEUE daemon with its iptables rules (root)")
    p.add_argument("--config", required=True, help="TOML policy file")
    p.add_argument("--queue", type=int, help="first NFQUEUE number ([daemon] queue, default 0)")
    p.add_argument("--workers", type=int, help="worker processes, one queue each ([daemon] workers, default 1)")
    p.add_argument("--balance", choices=BALANCE, help="spreading over workers ([daemon] balance, default connection)")
    p.add_argument("--events", help="append the JSON-lines event log here, '-' for stdout ([daemon] events)")
    p.add_argument("--metrics-port", type=int, help="Prometheus port, 0 = off ([daemon] metrics_port, default 9687)")
    p.add_argument("--metrics-address", help="metrics address ([daemon] metrics_address, default 127.0.0.1)")
    p.add_argument(
        "--offload",
        action=argparse.BooleanOptionalAction,
        help="kernel offload of allowed flows; --no-offload: every packet through the engine ([daemon] offload)",
    )
    p.add_argument(
        "--rules-check-interval", type=float, help="seconds between checks of the iptables rules ([daemon], 5)"
    )
    p.add_argument(
        "--firewall",
        choices=FIREWALLS,
        help="rules backend ([daemon] firewall, default iptables; nft where the kernel can queue from nftables)",
    )
    p.set_defaults(func=_run)

    p = sub.add_parser("rules", help="print the rules `run` installs (iptables-restore or nft input), or --remove them")
    p.add_argument("--config", help="TOML policy file")
    p.add_argument("--queue", type=int, help="first NFQUEUE number ([daemon] queue, default 0)")
    p.add_argument("--workers", type=int, help="worker processes / queues ([daemon] workers, default 1)")
    p.add_argument("--balance", choices=BALANCE, help="the rules of `run --balance`")
    p.add_argument("--offload", action=argparse.BooleanOptionalAction, help="the rules of `run --[no-]offload`")
    p.add_argument("--fresh", action="store_true", help="print for a host without lgwan-gateway rules")
    p.add_argument("--remove", action="store_true", help="remove the chains: forwarded traffic is then UNFILTERED")
    p.add_argument("--firewall", choices=FIREWALLS, help="print for this backend ([daemon] firewall)")
    p.set_defaults(func=_rules)

    # `quarantine` sub-actions are defined beside their code (stdlib-only import; the store loads lazily)
    from gateway.io.quarantine_cli import add_parser as add_quarantine_parser

    add_quarantine_parser(sub).set_defaults(func=_quarantine)

    p = sub.add_parser("stats", help="print the running daemon's Prometheus metrics as a table")
    p.add_argument("--port", type=int, default=9687, help="metrics port (default 9687)")
    p.add_argument("--address", default="127.0.0.1", help="metrics address (default 127.0.0.1)")
    p.set_defaults(func=_stats)
    return parser


def _check_config(args: argparse.Namespace) -> int:
    from gateway.policy.cli import check_config_command

    return check_config_command(args.config)


def _replay(args: argparse.Namespace) -> int:
    from gateway.replay import replay_command

    return replay_command(args)


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import demo_command

    return demo_command(args)


def _lab(args: argparse.Namespace) -> int:
    from gateway.lab.cli import lab_command

    return lab_command(args.lab_args)


def _run(args: argparse.Namespace) -> int:
    from gateway.daemon import run_command

    return run_command(args)


def _rules(args: argparse.Namespace) -> int:
    from gateway.daemon import rules_command

    return rules_command(args)


def _quarantine(args: argparse.Namespace) -> int:
    from gateway.io.quarantine_cli import quarantine_command

    return quarantine_command(args)


def _stats(args: argparse.Namespace) -> int:
    from gateway.daemon import stats_command

    return stats_command(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
