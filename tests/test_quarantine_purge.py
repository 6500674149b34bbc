"""Retention: `purge --older-than DAYS` / `--config` (the profiles' original_retention_days) /
`--dry-run`: never an entry younger than its limit, never one in its review hold, each removal
atomic and audited, concurrent purges never remove (or audit) an entry twice."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

from test_quarantine import DAY, FLOW, T0, Clock, meta
from test_quarantine_cli import cli

from gateway.io.quarantine import QuarantineStore, new_id


def _store(root: Path, clock: Clock, hold_days: float = 14) -> QuarantineStore:
    return QuarantineStore(root, clock=clock, hold_days=hold_days)


def test_older_than_keeps_younger_and_held(tmp_path: Path) -> None:
    clock = Clock()
    s = _store(tmp_path / "q", clock, hold_days=10)
    a = s.put(b"a" * 10, meta())  # T0
    clock.t += 5 * DAY
    b = s.put(b"b" * 20, meta())  # T0 + 5
    clock.t += 5 * DAY
    c = s.put(b"c", meta())  # T0 + 10
    now = T0 + 12 * DAY
    # ages 12, 7, 2 days; a limit of 6 days: a and b are old enough, b is still in its 10-day hold
    dry = s.purge_report(now, older_than_days=6, dry_run=True)
    assert (dry.purged, dry.bytes, dry.kept_young, dry.kept_held) == ([a], 10, 1, 1)
    assert [e.id for e in s.list()] == [a, b, c]  # the dry run changed nothing
    ops = [r["op"] for r in s.audit.records()]
    assert "quarantine.purge" not in ops and "quarantine.purge_run" not in ops
    rep = s.purge_report(now, older_than_days=6)
    assert rep.purged == [a] and not rep.dry_run
    assert [e.id for e in s.list()] == [b, c]
    recs = list(s.audit.records())
    purge = next(r for r in recs if r["op"] == "quarantine.purge")
    assert purge["id"] == a and purge["reason"] == "older_than" and purge["older_than_days"] == 6
    run = recs[-1]
    assert run["op"] == "quarantine.purge_run" and (run["purged"], run["bytes"], run["kept_held"]) == (1, 10, 1)
    # younger than the limit: never, whatever its expiry
    assert s.purge_report(T0 + 400 * DAY, older_than_days=1000).purged == []
    assert s.verify().ok


def test_limit_per_profile(tmp_path: Path) -> None:
    clock = Clock()
    s = _store(tmp_path / "q", clock, hold_days=1)
    other = dataclasses.replace(FLOW, profile="other")
    a = s.put(b"a", meta())  # profile "mail"
    b = s.put(b"b", meta(flow=other))
    limits = {"mail": 3.0}
    # "other" has no limit: the default rule (expires, 30 days) applies to it
    rep = s.purge_report(T0 + 4 * DAY, limit_for=lambda e: limits.get(e.meta.flow.profile or ""))
    assert rep.purged == [a] and rep.kept_young == 1
    assert s.purge_report(T0 + 31 * DAY).purged == [b]


def test_concurrent_purges_remove_once(tmp_path: Path) -> None:
    clock = Clock()
    root = tmp_path / "q"
    s = _store(root, clock, hold_days=0)
    ids = [s.put(bytes([i]) * 100, meta(), qid=new_id(T0 + i)) for i in range(40)]
    results: list[list[str]] = []

    def go() -> None:
        results.append(_store(root, clock, hold_days=0).purge_report(T0 + 2 * DAY, older_than_days=1).purged)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(q for r in results for q in r) == sorted(ids)
    purges = [r["id"] for r in s.audit.records() if r["op"] == "quarantine.purge"]
    assert sorted(purges) == sorted(ids)
    assert s.list() == [] and s.verify().ok
    assert not [p for p in root.rglob("*") if p.is_file() and "audit" not in p.parts and p.name != ".purge.lock"]


def test_cli_older_than_dry_run_and_config(tmp_path: Path) -> None:
    root = tmp_path / "q"
    clock = Clock(T0 - 40 * DAY)  # stored 40 days before T0: old enough, past its 14-day hold
    s = _store(root, clock)
    old = s.put(b"old", meta())
    clock.t = T0
    young = s.put(b"young", meta())
    when = "2026-11-27T00:00:00Z"
    r = cli("--dir", str(root), "purge", "--older-than", "20", "--dry-run", "--now", when)
    assert r.returncode == 0 and r.stdout.split() == ["would-purge", old], r.stderr
    assert "1 entries would be purged" in r.stderr and "1 younger" in r.stderr
    assert len(s.list()) == 2
    cfg = tmp_path / "gw.toml"
    text = (Path(__file__).resolve().parent.parent / "configs" / "lab.toml").read_text()
    cfg.write_text(text)
    # the lab config sets no original_retention_days: the download window (30 days) decides
    r = cli("--dir", str(root), "purge", "--config", str(cfg), "--dry-run", "--now", when)
    assert r.returncode == 0 and r.stdout.split() == ["would-purge", old], r.stderr
    r = cli("--dir", str(root), "purge", "--older-than", "20", "--now", when)
    assert r.returncode == 0 and r.stdout.split() == ["purged", old]
    assert [e.id for e in s.list()] == [young]
    assert cli("--dir", str(root), "purge", "--older-than", "-1").returncode == 2
    assert cli("--dir", str(root), "purge", "--older-than", "nan").returncode == 2
    assert cli("--dir", str(root), "verify").returncode == 0


def test_cli_config_uses_the_profiles_retention(tmp_path: Path) -> None:
    root = tmp_path / "q"
    clock = Clock(T0 - 20 * DAY)  # 20 days old: past a 14-day hold, inside the 30-day window
    s = _store(root, clock)
    mail = s.put(b"mail profile", meta())  # FLOW.profile == "mail"
    other = s.put(b"other profile", meta(flow=dataclasses.replace(FLOW, profile="other")))
    text = (Path(__file__).resolve().parent.parent / "configs" / "lab.toml").read_text()
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        text.replace(
            '[profiles.mail]\nkind = "smtp"\n', '[profiles.mail]\nkind = "smtp"\noriginal_retention_days = 15\n'
        )
    )
    r = cli("--dir", str(root), "purge", "--config", str(cfg), "--now", "2026-11-26T17:00:00Z")
    assert r.returncode == 0 and r.stdout.split() == ["purged", mail], r.stderr
    assert [e.id for e in s.list()] == [other]  # no retention for "other": its download window decides
    bad = tmp_path / "bad.toml"
    bad.write_text(
        text.replace(
            '[profiles.mail]\nkind = "smtp"\n', '[profiles.mail]\nkind = "smtp"\noriginal_retention_days = 0\n'
        )
    )
    r = cli("--dir", str(root), "purge", "--config", str(bad))
    assert r.returncode == 2 and "original_retention_days" in r.stderr
    assert [e.id for e in s.list()] == [other]


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    """Not even the lock file: a read-only operator account can run it."""
    clock = Clock(T0 - 40 * DAY)
    root = tmp_path / "q"
    s = _store(root, clock)
    qid = s.put(b"old", meta())
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert s.purge_report(T0, older_than_days=1, dry_run=True).purged == [qid]
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
