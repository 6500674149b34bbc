"""Crash safety and concurrency of the quarantine store, with real processes.

SIGKILL cannot show that fsync reached the disk (that needs power loss), but it does show the
ordering: whatever the moment of death, nothing half-written is ever listed, every id a put
returned is there and verifies, and recover() leaves a store that verify() accepts.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gateway.io.quarantine import QuarantineStore

WRITER = textwrap.dedent(
    """
    import os, sys, random
    from pathlib import Path
    from gateway.io.quarantine import QuarantineMeta, QuarantineStore
    from gateway.mailevents import FlowInfo

    root, tag, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    store = QuarantineStore(root, usage_ttl=0.5)
    flow = FlowInfo(1, "198.19.40.25", 40000 + os.getpid() % 1000, "198.18.20.25", 25)
    rnd = random.Random(os.getpid())
    i = 0
    while count < 0 or i < count:
        size = rnd.choice((0, 1, 100, 4096, 70_000, 300_000))
        chunks = [bytes([i % 251]) * min(size - o, 8192) for o in range(0, size, 8192)]
        meta = QuarantineMeta(kind="part", flow=flow, reason="executable", action="neutralized",
                              mail_from=f"{tag}@example.co.jp", rcpt_to=("b@city.example.lg.jp",),
                              filename=f"添付{i}.exe")
        qid = store.put(iter(chunks), meta)
        print(qid, flush=True)
        i += 1
    """
)


def _spawn(root: Path, tag: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), tag, str(count)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )


def _assert_store_sound(store: QuarantineStore, returned: set[str]) -> None:
    listed = {e.id for e in store.list()}
    assert returned <= listed, returned - listed  # put returned -> it is there
    for qid in listed:  # everything listed is whole and matches its hash
        e = store.get(qid)
        assert len(store.read_original(qid)) == e.size


@pytest.mark.slow
def test_kill9_mid_writes_loses_nothing_returned_and_lists_nothing_partial(tmp_path: Path) -> None:
    root = tmp_path / "q"
    rnd = random.Random(5)
    returned: set[str] = set()
    for _ in range(6):
        p = _spawn(root, "crash", -1)
        assert p.stdout is not None
        # let it get going, then kill at a random moment inside the write loop
        first = p.stdout.readline().strip()
        assert first
        returned.add(first)
        time.sleep(rnd.uniform(0.05, 0.4))
        os.kill(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        returned.update(line.strip() for line in out.splitlines() if line.strip())
        assert p.returncode == -signal.SIGKILL

        store = QuarantineStore(root)
        _assert_store_sound(store, returned)

    store = QuarantineStore(root)
    leftovers = [p for p in root.rglob(".tmp-*")]
    res = store.recover(temp_grace=0)
    assert not list(root.rglob(".tmp-*"))
    assert all(".tmp-" in r or r.endswith(".orig") for r in res["removed"])
    assert len(res["removed"]) >= len(leftovers)
    # every content file now has its metadata, every entry its put record
    for orig in root.glob("*/*/*/*.orig"):
        assert orig.with_suffix(".json").exists()
    v = store.verify()
    assert v.ok, v.problems
    assert v.entries == len(store.list()) >= len(returned)
    _assert_store_sound(store, returned)


def test_recover_audits_an_entry_whose_put_record_was_lost(tmp_path: Path) -> None:
    from test_quarantine import meta

    store = QuarantineStore(tmp_path / "q")
    qid = store.put(b"data", meta())
    (audit_file,) = store.audit.files()
    audit_file.write_text("")  # as if the crash came between metadata and audit record
    v = store.verify()
    assert not v.ok and any("no put record" in p for p in v.problems)
    assert store.recover(temp_grace=0)["audited"] == [qid]
    assert store.verify().ok
    assert [r.get("recovered") for r in store.audit.records()] == [True]


def test_recover_keeps_young_temp_files(tmp_path: Path) -> None:
    store = QuarantineStore(tmp_path / "q")
    d = tmp_path / "q" / "2026" / "11" / "26"
    d.mkdir(parents=True)
    young = d / ".tmp-20261126T165659Z-3f2a9c0d41b7.orig-abcd"
    young.write_bytes(b"in progress elsewhere")
    orphan = d / "20261126T165659Z-3f2a9c0d41b7.orig"
    orphan.write_bytes(b"content, metadata never written")
    assert store.list() == []  # neither is an entry
    assert store.recover()["removed"] == []  # both may belong to a put in progress
    assert young.exists() and orphan.exists()
    removed = store.recover(temp_grace=0)["removed"]
    assert sorted(removed) == sorted(str(p.relative_to(tmp_path / "q")) for p in (young, orphan))
    assert store.verify().ok


@pytest.mark.slow
def test_two_processes_write_concurrently(tmp_path: Path) -> None:
    root = tmp_path / "q"
    QuarantineStore(root)  # create the tree before both race for it
    procs = [_spawn(root, tag, 40) for tag in ("alpha", "beta")]
    ids: list[str] = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        ids += out.split()
    assert len(ids) == 80 and len(set(ids)) == 80
    store = QuarantineStore(root)
    assert {e.id for e in store.list()} == set(ids)
    assert len(store.list(sender="alpha@")) == 40 and len(store.list(sender="beta@")) == 40
    v = store.verify()
    assert v.ok, v.problems
    records = list(store.audit.records())
    assert [r["seq"] for r in records] == list(range(1, 81))  # one chain, no lost or forked appends
    assert {r["id"] for r in records} == set(ids)
