"""Quarantine store and audit log: put/get/list, verification, release (two-person rule), purge,
limits, tamper detection. Crash and concurrency tests are in test_quarantine_crash.py, the CLI in
test_quarantine_cli.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.io.auditlog import GENESIS, AuditLog
from gateway.io.quarantine import (
    ID_RE,
    QuarantineError,
    QuarantineFull,
    QuarantineMeta,
    QuarantineNotFound,
    QuarantineStore,
    QuarantineTampered,
    ReleaseRefused,
    parse_iso,
)
from gateway.mailevents import FlowInfo

T0 = 1_795_712_219.0  # 2026-11-26T16:56:59Z
DAY = 86400.0

FLOW = FlowInfo(1956488384291730, "198.19.40.25", 40005, "198.18.20.25", 25, "internet", "lgwan", "internet", "lgwan",
                "internet-relay-to-lgwan-mail", "mail", 1)  # fmt: skip


def meta(**kw: Any) -> QuarantineMeta:
    args: dict[str, Any] = dict(
        kind="part",
        flow=FLOW,
        reason="executable",
        action="neutralized",
        mail_from="tanaka@example.co.jp",
        rcpt_to=("soumu@city.example.lg.jp", "kikaku@city.example.lg.jp"),
        message_id="<1@example.co.jp>",
        subject="【至急】請求書",
        part_path="2",
        filename_raw="=?ISO-2022-JP?B?GyRCQEE1YT1xGyhC?=.pdf.exe",
        filename="請求書.pdf.exe",
        declared_type="application/pdf",
        detected_type="application/x-dosexec",
        category="executable",
    )
    args.update(kw)
    return QuarantineMeta(**args)


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> QuarantineStore:
    return QuarantineStore(tmp_path / "q", clock=clock)


def test_put_get_roundtrip(store: QuarantineStore) -> None:
    data = b"MZ\x90\x00" + bytes(range(256)) * 100
    qid = store.put(data, meta())
    assert ID_RE.match(qid) and qid.startswith("20261126T165659Z-")
    e = store.get(qid)
    assert e.size == len(data) and e.sha256 == hashlib.sha256(data).hexdigest()
    assert e.meta == meta()
    assert e.created.startswith("2026-11-26T16:56:59")
    assert parse_iso(e.hold_until) == pytest.approx(T0 + 14 * DAY)
    assert parse_iso(e.expires) == pytest.approx(T0 + 30 * DAY)
    assert store.read_original(qid) == data
    with store.open_original(qid) as f:
        assert f.read() == data
    # sharded by date, metadata readable by humans (UTF-8, not escaped)
    meta_file = store.root / "2026" / "11" / "26" / f"{qid}.json"
    assert "請求書.pdf.exe" in meta_file.read_text(encoding="utf-8")
    assert (store.root / "2026" / "11" / "26" / f"{qid}.orig").read_bytes() == data


def test_put_streams_chunks_and_ids_are_unique_and_sortable(store: QuarantineStore, clock: Clock) -> None:
    ids = []
    for i in range(20):
        clock.t = T0 + i * 0.4
        ids.append(store.put(iter([b"a" * 1000, b"b" * i, b""]), meta(kind="message", action="refused")))
    assert len(set(ids)) == 20
    seconds = [i.split("-")[0] for i in ids]
    assert seconds == sorted(seconds)
    assert store.get(ids[5]).size == 1005
    listed = [e.id for e in store.list()]
    assert sorted(listed) == sorted(ids)
    assert [e.created for e in store.list()] == sorted(e.created for e in store.list())


def test_empty_original_and_message_kind(store: QuarantineStore) -> None:
    qid = store.put(b"", meta(kind="message", action="refused", part_path=None, filename=None, filename_raw=None))
    assert store.read_original(qid) == b""
    assert store.get(qid).sha256 == hashlib.sha256(b"").hexdigest()


def test_put_with_the_callers_digest(store: QuarantineStore) -> None:
    data = b"decoded attachment" * 100
    digest = hashlib.sha256(data).hexdigest()
    qid = store.put(data, meta(), sha256=digest)  # recorded as given, not computed again
    assert store.get(qid).sha256 == digest and store.read_original(qid) == data
    assert store.verify().ok
    # a wrong digest is not hidden: reading and verify() rehash what is stored
    wrong = store.put(data, meta(), sha256="0" * 64)
    with pytest.raises(QuarantineTampered, match="SHA-256"):
        store.read_original(wrong)
    v = store.verify()
    assert not v.ok and any(wrong in p for p in v.problems)
    with pytest.raises(QuarantineError, match="SHA-256"):
        store.put(data, meta(), sha256="not-hex")


def test_list_filters(store: QuarantineStore, clock: Clock) -> None:
    a = store.put(b"a", meta())
    clock.t += DAY
    b = store.put(b"b", meta(reason="macro", mail_from="Suzuki@Example.NET", rcpt_to=("x@pref.example.lg.jp",)))
    clock.t += DAY
    c = store.put(b"c", meta(kind="message", action="refused", reason="encrypted"))
    assert [e.id for e in store.list(since=T0 + DAY / 2)] == [b, c]
    assert [e.id for e in store.list(until=T0 + DAY / 2)] == [a]
    assert [e.id for e in store.list(reason="macro")] == [b]
    assert [e.id for e in store.list(sender="suzuki@example")] == [b]
    assert [e.id for e in store.list(recipient="PREF.example")] == [b]
    assert [e.id for e in store.list(kind="message")] == [c]
    assert [e.id for e in store.list(action="neutralized")] == [a, b]


def test_bad_ids_never_reach_the_filesystem(store: QuarantineStore) -> None:
    for bad in ("../../etc/passwd", "20261126T165659Z-zzzzzzzzzzzz", "", "20261126T165659Z-3f2a9c0d41b7/../x"):
        with pytest.raises(QuarantineNotFound):
            store.get(bad)
    with pytest.raises(QuarantineNotFound):
        store.get("20261126T165659Z-3f2a9c0d41b7")  # well-formed, absent


def test_configurable_retention(tmp_path: Path, clock: Clock) -> None:
    s = QuarantineStore(tmp_path / "q", hold_days=7, expire_days=90, clock=clock)
    e = s.get(s.put(b"x", meta()))
    assert parse_iso(e.hold_until) == pytest.approx(T0 + 7 * DAY)
    assert parse_iso(e.expires) == pytest.approx(T0 + 90 * DAY)
    with pytest.raises(ValueError):
        QuarantineStore(tmp_path / "r", hold_days=30, expire_days=14)


# -- audit log -------------------------------------------------------------------------------


def test_every_operation_is_audited(store: QuarantineStore, clock: Clock, tmp_path: Path) -> None:
    qid = store.put(b"evil", meta())
    store.release(qid, requested_by="yamada", approved_by="sato", out=tmp_path / "out.bin", note="ticket 42")
    clock.t += 31 * DAY
    assert store.purge() == [qid]
    ops = [(r["op"], r.get("id")) for r in store.audit.records()]
    assert ops[:3] == [("quarantine.put", qid), ("quarantine.release", qid), ("quarantine.purge", qid)]
    assert ops[3:] == [("quarantine.purge_run", None)]
    put = next(store.audit.records())
    assert put["sha256"] == hashlib.sha256(b"evil").hexdigest() and put["prev_hash"] == GENESIS
    assert store.audit.verify().ok
    assert store.verify().ok  # purged entries are not "missing"


def test_audit_chain_detects_edit_insert_delete_reorder(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a")
    for i in range(6):
        log.append("reload", outcome="ok" if i % 2 else "failed", generation=i + 1, note="設定の再読み込み")
    v = log.verify()
    assert v.ok and v.records == 6 and v.head == log.head()[1] and log.head()[0] == 6
    (path,) = log.files()
    original = path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert "設定" in original[0]  # UTF-8, not escaped

    def check(lines: list[str], line: int) -> None:
        path.write_text("".join(lines), encoding="utf-8")
        r = log.verify()
        assert not r.ok and r.broken_line == line and r.broken_file == path.name, r
        assert f":{line}:" in r.describe()

    edited = list(original)
    edited[3] = edited[3].replace('"outcome":"ok"', '"outcome":"OK"')
    check(edited, 4)
    rehashed = json.loads(edited[3])  # recompute the edited line's own hash: the next line breaks
    from gateway.io.auditlog import record_hash

    rehashed["hash"] = record_hash(rehashed)
    edited[3] = json.dumps(rehashed, ensure_ascii=False, separators=(",", ":")) + "\n"
    check(edited, 5)
    check(original[:2] + original[3:], 3)  # deleted line 3
    check([*original[:2], original[4], original[3], *original[5:]], 3)  # swapped
    check([*original[:2], "not json\n", *original[2:]], 3)
    check([*original[:5], original[5].rstrip("\n")], 6)  # torn last line
    path.write_text("".join(original), encoding="utf-8")
    assert log.verify().ok


def test_torn_tail_is_cut_and_noted_on_next_append(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a")
    log.append("x", n=1)
    log.append("x", n=2)
    (path,) = log.files()
    with open(path, "ab") as f:
        f.write(b'{"seq":3,"ts":"2026-')  # crash in the middle of an append
    assert not log.verify().ok
    rec = log.append("x", n=3)
    v = log.verify()
    assert v.ok and v.records == 4, v
    ops = [r["op"] for r in log.records()]
    assert ops == ["x", "x", "audit.torn_tail_removed", "x"] and rec["seq"] == 4


def test_audit_reserved_fields(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        AuditLog(tmp_path / "a").append("x", hash="0")


def test_audit_monthly_files_and_retention(tmp_path: Path) -> None:
    clock = Clock(T0 - 400 * DAY)  # 2025-10
    log = AuditLog(tmp_path / "a", clock=clock)
    for _ in range(14):
        log.append("tick")
        clock.t += 31 * DAY
    assert len(log.files()) >= 13
    assert log.verify().ok
    removed = log.purge(clock.t, retention_days=365)
    assert removed and all(n < "2025-12" for n in removed), removed
    v = log.verify()
    assert v.ok and v.first_seq > 1, v  # the chain still verifies from the first kept line
    assert [r["op"] for r in log.records()][-1] == "audit.retention_purge"


# -- tamper detection ------------------------------------------------------------------------


def test_flipped_content_byte_is_detected_everywhere(store: QuarantineStore, tmp_path: Path) -> None:
    good = store.put(b"clean-but-kept", meta())
    qid = store.put(b"A" * 5000, meta())
    orig = store.root / "2026" / "11" / "26" / f"{qid}.orig"
    data = bytearray(orig.read_bytes())
    data[1234] ^= 0x01
    orig.write_bytes(bytes(data))
    with pytest.raises(QuarantineTampered, match="SHA-256"):
        store.read_original(qid)
    with pytest.raises(QuarantineTampered):
        store.open_original(qid)
    out = tmp_path / "released.bin"
    with pytest.raises(QuarantineTampered):
        store.release(qid, requested_by="a", approved_by="b", out=out)
    assert not out.exists() and not list(tmp_path.glob(".released.bin*"))  # nothing half-exported
    v = store.verify()
    assert not v.ok and len(v.problems) == 1 and qid in v.problems[0] and v.audit.ok
    assert store.read_original(good) == b"clean-but-kept"


def test_consistent_rewrite_of_content_and_metadata_is_detected(store: QuarantineStore) -> None:
    qid = store.put(b"original evil", meta())
    d = store.root / "2026" / "11" / "26"
    (d / f"{qid}.orig").write_bytes(b"innocent")
    m = json.loads((d / f"{qid}.json").read_text(encoding="utf-8"))
    m["sha256"], m["size"] = hashlib.sha256(b"innocent").hexdigest(), 8
    (d / f"{qid}.json").write_text(json.dumps(m, ensure_ascii=False), encoding="utf-8")
    assert store.read_original(qid) == b"innocent"  # self-consistent on its own...
    v = store.verify()
    assert not v.ok and any("metadata differs" in p for p in v.problems)  # ...but not with the chain


def test_deleted_entry_is_detected(store: QuarantineStore) -> None:
    qid = store.put(b"x", meta())
    for p in (store.root / "2026" / "11" / "26").glob(f"{qid}.*"):
        p.unlink()
    v = store.verify()
    assert not v.ok and any("missing" in p for p in v.problems)


def test_missing_content_is_tampering(store: QuarantineStore) -> None:
    qid = store.put(b"x", meta())
    (store.root / "2026" / "11" / "26" / f"{qid}.orig").unlink()
    with pytest.raises(QuarantineTampered, match="missing"):
        store.read_original(qid)
    assert not store.verify().ok


# -- release ---------------------------------------------------------------------------------


def test_release_two_person_rule(store: QuarantineStore, tmp_path: Path) -> None:
    qid = store.put(b"payload", meta())
    with pytest.raises(ReleaseRefused, match="two-person"):
        store.release(qid, requested_by="yamada", approved_by="yamada", out=tmp_path / "o1")
    with pytest.raises(ReleaseRefused):
        store.release(qid, requested_by="yamada", approved_by="  ", out=tmp_path / "o1")
    assert not (tmp_path / "o1").exists() and store.releases(qid) == []
    rec = store.release(qid, requested_by="yamada", approved_by="sato", out=tmp_path / "o1", note="#42")
    assert (tmp_path / "o1").read_bytes() == b"payload"
    assert rec["requested_by"] == "yamada" and rec["approved_by"] == "sato" and rec["single_person"] is False
    assert rec["sha256"] == hashlib.sha256(b"payload").hexdigest() and rec["note"] == "#42" and rec["operator"]
    rec2 = store.release(qid, requested_by="yamada", approved_by="yamada", out=tmp_path / "o2", force_single=True)
    assert rec2["single_person"] is True
    assert [r["out"] for r in store.releases(qid)] == [str(tmp_path / "o1"), str(tmp_path / "o2")]


def test_release_never_overwrites_and_ends_with_the_window(
    store: QuarantineStore, clock: Clock, tmp_path: Path
) -> None:
    qid = store.put(b"payload", meta())
    (tmp_path / "exists").write_bytes(b"keep me")
    with pytest.raises(ReleaseRefused, match="exists"):
        store.release(qid, requested_by="a", approved_by="b", out=tmp_path / "exists")
    assert (tmp_path / "exists").read_bytes() == b"keep me"
    clock.t += 30 * DAY
    with pytest.raises(ReleaseRefused, match="window"):
        store.release(qid, requested_by="a", approved_by="b", out=tmp_path / "late")
    with pytest.raises(QuarantineNotFound):
        store.release("20261126T165659Z-000000000000", requested_by="a", approved_by="b", out=tmp_path / "n")


# -- purge -----------------------------------------------------------------------------------


def test_purge_removes_only_expired(store: QuarantineStore, clock: Clock) -> None:
    old = store.put(b"old", meta())
    clock.t += 20 * DAY
    new = store.put(b"new", meta())
    assert store.purge(T0 + 29 * DAY) == []
    assert store.purge(T0 + 30 * DAY) == [old]
    assert [e.id for e in store.list()] == [new]
    with pytest.raises(QuarantineNotFound):
        store.get(old)
    assert store.usage(fresh=True) == (1, 3)
    assert store.purge(T0 + 51 * DAY) == [new]
    assert not list((store.root).glob("2026/*"))  # empty shard directories go too
    assert store.verify().ok


# -- limits ----------------------------------------------------------------------------------


def _leftovers(store: QuarantineStore) -> list[Path]:
    return [p for p in store.root.rglob("*") if p.is_file() and "audit" not in p.parts]


def test_count_limit(tmp_path: Path, clock: Clock) -> None:
    s = QuarantineStore(tmp_path / "q", max_count=2, clock=clock)
    s.put(b"1", meta())
    s.put(b"2", meta())
    with pytest.raises(QuarantineFull, match="full"):
        s.put(b"3", meta())
    assert len(s.list()) == 2 and len(_leftovers(s)) == 4


def test_byte_limit_whole_and_streamed(tmp_path: Path, clock: Clock) -> None:
    s = QuarantineStore(tmp_path / "q", max_bytes=100, clock=clock)
    s.put(b"x" * 60, meta())
    with pytest.raises(QuarantineFull):
        s.put(b"y" * 41, meta())

    def stream() -> Any:
        yield b"z" * 30
        yield b"z" * 30  # over the remaining 40 bytes: abort mid-stream

    with pytest.raises(QuarantineFull):
        s.put(stream(), meta())
    assert len(s.list()) == 1 and len(_leftovers(s)) == 2  # no temp files, no orphan content
    s.put(b"w" * 40, meta())  # exactly at the limit
    with pytest.raises(QuarantineFull):
        s.put(b"", meta())
    assert QuarantineStore(tmp_path / "q", max_bytes=100).usage() == (2, 100)
    assert s.verify().ok


def test_quarantine_full_is_a_quarantine_error() -> None:
    from gateway.io.quarantine import QuarantineError

    assert issubclass(QuarantineFull, QuarantineError)
