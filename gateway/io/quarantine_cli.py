"""`lgwan-gateway quarantine ...`: list, show, export/release, purge, recover, verify.

Exit codes: 0 ok; 1 not found, tampered, release refused or verify found problems; 2 usage.
gateway/cli.py calls `add_parser` (stdlib only at import) and, when the subcommand runs,
`quarantine_command`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the store is imported when a command runs, not when `lgwan-gateway --help` builds parsers
    from gateway.io.quarantine import QuarantineEntry, QuarantineStore

_REL = re.compile(r"^(\d+)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_when(s: str, now: float | None = None) -> float:
    """'7d', '12h', '30m' (ago), or an ISO date/time (UTC unless it says otherwise)."""
    m = _REL.match(s.strip())
    if m:
        return (time.time() if now is None else now) - int(m.group(1)) * _UNIT[m.group(2)]
    try:
        t = _dt.datetime.fromisoformat(s.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {s!r} (use 7d, 12h, 2026-11-20 or 2026-11-20T09:00)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.UTC)
    return t.timestamp()


HELP = "quarantined originals: list | show ID | export/release ID --out F | purge | recover | verify"
_EPILOG = "exit codes: 0 ok, 1 not found / tampered / refused / verify problems, 2 usage"
_DESC = "Originals of removed parts and refused messages (docs/quarantine.md)."


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `quarantine` to the main command's subparsers; returns it (the caller sets func)."""
    p: argparse.ArgumentParser = subparsers.add_parser("quarantine", help=HELP, description=_DESC, epilog=_EPILOG)
    _fill(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    """Standalone parser (python -m gateway.io.quarantine_cli)."""
    p = argparse.ArgumentParser(prog="lgwan-gateway quarantine", description=_DESC, epilog=_EPILOG)
    _fill(p)
    return p


def _fill(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dir",
        type=Path,
        help="store directory (default $LGWAN_GATEWAY_QUARANTINE_DIR, else /var/lib/lgwan-gateway/quarantine)",
    )
    sub = p.add_subparsers(dest="qaction", required=True)

    s = sub.add_parser("list", help="list entries, oldest first")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.add_argument("--since", type=parse_when, help="created at or after (7d, 12h, ISO time)")
    s.add_argument("--until", type=parse_when, help="created before")
    s.add_argument("--reason")
    s.add_argument("--sender", help="envelope sender contains (case-insensitive)")
    s.add_argument("--recipient", help="an envelope recipient contains (case-insensitive)")
    s.add_argument("--kind", choices=("part", "message"))
    s.add_argument("--action", dest="entry_action", choices=("neutralized", "refused"))

    s = sub.add_parser("show", help="metadata and release history of one entry (JSON)")
    s.add_argument("id")

    for name, helptext in (
        ("export", "write the verified original to a file; recorded as a release"),
        ("release", "same as export (the release of an original is its export)"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("id")
        s.add_argument("--out", type=Path, required=True, help="file to create (never overwritten)")
        s.add_argument("--requested-by", required=True, help="who asked for the original")
        s.add_argument("--approved-by", help="who approved (must differ from the requester)")
        s.add_argument("--note", default="", help="ticket number, reason")
        s.add_argument(
            "--force-single",
            action="store_true",
            help="allow requester == approver (one-administrator sites); recorded in the audit log",
        )

    s = sub.add_parser(
        "purge",
        help="remove entries past their retention (default: their download window), old audit files, stale temp files",
    )
    s.add_argument(
        "--older-than",
        type=_days,
        metavar="DAYS",
        help="remove entries at least DAYS old (never younger ones, never one in its review hold)",
    )
    s.add_argument(
        "--config",
        type=Path,
        help="gateway config: each entry's limit is its profile's original_retention_days (when set)",
    )
    s.add_argument("--dry-run", action="store_true", help="list what would be removed; change nothing")
    s.add_argument("--now", type=parse_when, help="pretend it is this time (testing a policy)")

    sub.add_parser("recover", help="after a crash: clean temp files, audit entries the crash left unaudited")

    s = sub.add_parser("verify", help="check every entry's SHA-256 and metadata and the audit hash chain")
    s.add_argument("--json", action="store_true")


def _days(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        v = -1.0
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of days: {s!r}")
    return v


def retention_days(config: Path) -> dict[str, float]:
    """{profile name: original_retention_days} of the config's mail profiles that set it."""
    from gateway.inspect.replay import mail_profiles
    from gateway.policy.loader import load_policy

    out: dict[str, float] = {}
    for name, prof in mail_profiles(load_policy(config).compiled).items():
        days = getattr(prof, "original_retention_days", None)
        if days is not None:
            out[name] = float(days)
    return out


def _purge(store: QuarantineStore, args: argparse.Namespace) -> int:
    limits: dict[str, float] = {}
    if args.config is not None and args.older_than is None:
        from gateway.policy.errors import ConfigError

        try:
            limits = retention_days(args.config)
        except ConfigError as e:
            print(f"quarantine: {e}", file=sys.stderr)
            return 2
    rep = store.purge_report(
        args.now,
        older_than_days=args.older_than,
        limit_for=(lambda e: limits.get(e.meta.flow.profile or "")) if limits else None,
        dry_run=args.dry_run,
    )
    verb = "would-purge" if args.dry_run else "purged"
    for qid in rep.purged:
        print(f"{verb} {qid}")
    print(
        f"{len(rep.purged)} entries {'would be ' if args.dry_run else ''}purged ({rep.bytes} bytes); kept: "
        f"{rep.kept_young} younger than their limit, {rep.kept_held} in their review hold",
        file=sys.stderr,
    )
    return 0


def _row(e: QuarantineEntry) -> str:
    m = e.meta
    name = m.filename or m.filename_raw or m.subject or ""
    return "\t".join(
        (
            e.id,
            e.created[:19] + "Z",
            m.kind,
            m.action,
            m.reason,
            str(e.size),
            m.mail_from or "-",
            name.replace("\t", " "),
        )
    )


def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def main(argv: Sequence[str] | None = None) -> int:
    return quarantine_command(build_parser().parse_args(argv))


def quarantine_command(args: argparse.Namespace) -> int:
    from gateway.io.quarantine import QuarantineError, QuarantineStore, default_dir

    root = args.dir or default_dir()
    if not root.is_dir():  # never create /var/lib/... as a side effect of a read
        print(f"quarantine: no store at {root}", file=sys.stderr)
        return 1
    try:
        store = QuarantineStore(root)
        return _dispatch(store, args)
    except QuarantineError as e:
        print(f"quarantine: {e}", file=sys.stderr)
        return 1
    except PermissionError as e:
        print(f"quarantine: {e}", file=sys.stderr)
        return 1


def _dispatch(store: QuarantineStore, args: argparse.Namespace) -> int:
    if args.qaction == "list":
        entries = store.list(
            since=args.since,
            until=args.until,
            reason=args.reason,
            sender=args.sender,
            recipient=args.recipient,
            kind=args.kind,
            action=args.entry_action,
        )
        for e in entries:
            print(_dump(e.to_dict()) if args.json else _row(e))
        return 0
    if args.qaction == "show":
        e = store.get(args.id)
        d = e.to_dict()
        d["releases"] = store.releases(args.id)
        print(json.dumps(d, ensure_ascii=False, indent=2))
        return 0
    if args.qaction in ("export", "release"):
        approved = args.approved_by
        if approved is None:
            if not args.force_single:
                print("quarantine: --approved-by is required (two-person rule; see --force-single)", file=sys.stderr)
                return 2
            approved = args.requested_by
        rec = store.release(
            args.id,
            requested_by=args.requested_by,
            approved_by=approved,
            out=args.out,
            note=args.note,
            force_single=args.force_single,
        )
        print(f"released {args.id} -> {rec['out']} (sha256 {rec['sha256']}, audit seq {rec['seq']})")
        return 0
    if args.qaction == "purge":
        return _purge(store, args)
    if args.qaction == "recover":
        res = store.recover()
        print(_dump(res))
        return 0
    if args.qaction == "verify":
        v = store.verify()
        if args.json:
            print(
                _dump(
                    {
                        "ok": v.ok,
                        "entries": v.entries,
                        "problems": v.problems,
                        "audit_records": v.audit.records,
                        "audit_head": v.audit.head,
                    }
                )
            )
        else:
            for p in v.problems:
                print(f"PROBLEM {p}")
            print(f"{v.entries} entries checked; {v.audit.describe()}")
        return 0 if v.ok else 1
    raise AssertionError(args.qaction)  # argparse restricts the choices


if __name__ == "__main__":
    sys.exit(main())
