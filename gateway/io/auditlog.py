"""Tamper-evident audit log: append-only JSON lines chained by SHA-256.

Each line is one record. `prev_hash` is the previous line's `hash`; `hash` is the SHA-256 of the
record's canonical JSON (sorted keys, no spaces, UTF-8) without the `hash` key. Editing, inserting,
deleting or reordering any line breaks the chain at that line, which `verify()` reports.

What a hash chain cannot show on its own: the tail cut off (the last N lines removed) or the whole
log rewritten. `head()` returns the latest (seq, hash); shipping it elsewhere (syslog, SIEM, the
event log) anchors the chain. See docs/quarantine.md.

Files are monthly (`YYYY-MM.jsonl`, UTC) so that retention can drop whole old months; the chain
runs on across files, and after the oldest files are purged the first remaining line's `prev_hash`
is the anchor. Appends are serialized across processes with flock on `.lock` and fsync'd before
`append` returns.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
RETENTION_DAYS = 365  # default: one year (docs/quarantine.md)
_RESERVED = frozenset({"seq", "ts", "op", "prev_hash", "hash"})


def canonical(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def iso_utc(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class VerifyResult:
    ok: bool
    records: int
    head: str
    # First break only: after it every later line is suspect anyway.
    broken_file: str | None = None
    broken_line: int | None = None  # 1-based line number within broken_file
    first_seq: int = 0  # > 1 when older files were purged by retention (or cut off: compare anchors)
    error: str | None = None
    files: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.ok:
            return f"audit chain ok: {self.records} records in {len(self.files)} file(s), head {self.head[:16]}"
        return f"audit chain BROKEN at {self.broken_file}:{self.broken_line}: {self.error}"


class AuditLog:
    """Append-only, hash-chained JSON lines in `directory` (created if missing)."""

    def __init__(self, directory: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.dir = Path(directory)
        self._clock = clock
        self.dir.mkdir(parents=True, exist_ok=True)

    # -- files -------------------------------------------------------------------------------
    def files(self) -> list[Path]:
        return sorted(p for p in self.dir.glob("*.jsonl") if not p.name.startswith("."))

    def _file_for(self, ts: float) -> Path:
        return self.dir / (_dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m") + ".jsonl")

    # -- append ------------------------------------------------------------------------------
    def append(self, op: str, **fields: Any) -> dict[str, Any]:
        """Append one record and fsync it; returns the record as written (with seq and hash)."""
        bad = _RESERVED & fields.keys()
        if bad:
            raise ValueError(f"reserved audit field(s): {sorted(bad)}")
        lock_fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            now = self._clock()
            last = self._last_record_locked()
            seq, prev = (last["seq"] + 1, last["hash"]) if last else (1, GENESIS)
            record: dict[str, Any] = {"seq": seq, "ts": iso_utc(now), "op": op, **fields, "prev_hash": prev}
            record["hash"] = record_hash(record)
            path = self._file_for(now)
            files = self.files()
            if files and path < files[-1]:
                path = files[-1]  # clock stepped back: keep appending to the newest file
            created = not path.exists()
            line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                fsync_dir(self.dir)
            return record
        finally:
            os.close(lock_fd)  # releases the flock

    def _last_record_locked(self) -> dict[str, Any] | None:
        """The last complete record; a torn last line (crash mid-append) is cut off and noted."""
        torn_at: tuple[Path, int] | None = None
        for path in reversed(self.files()):
            if path.stat().st_size == 0:
                continue
            tail, torn = _read_tail(path)
            if torn:
                # The append that tore never returned, so nothing depended on it. Cut it so the
                # chain continues from the last whole line, and say so in the log itself.
                with open(path, "r+b") as f:
                    f.truncate(path.stat().st_size - torn)
                    os.fsync(f.fileno())
                torn_at = torn_at or (path, torn)
            if tail is None:
                continue
            rec: dict[str, Any] = json.loads(tail)
            if torn_at:
                rec = self._append_note_locked(rec, *torn_at)
            return rec
        return None

    def _append_note_locked(self, last: dict[str, Any], path: Path, torn: int) -> dict[str, Any]:
        record: dict[str, Any] = {
            "seq": last["seq"] + 1,
            "ts": iso_utc(self._clock()),
            "op": "audit.torn_tail_removed",
            "file": path.name,
            "bytes": torn,
            "prev_hash": last["hash"],
        }
        record["hash"] = record_hash(record)
        with open(path, "ab") as f:
            f.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        return record

    # -- read / verify -----------------------------------------------------------------------
    def records(self) -> Iterator[dict[str, Any]]:
        """Every record, oldest first (unverified; use verify() for integrity)."""
        for path in self.files():
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.endswith("\n"):
                        yield json.loads(line)

    def head(self) -> tuple[int, str]:
        last: dict[str, Any] | None = None
        for last in self.records():  # noqa: B007 - want the final one
            pass
        return (last["seq"], last["hash"]) if last else (0, GENESIS)

    def verify(self, *, anchor: str | None = None) -> VerifyResult:
        """Walk the chain; report the first line whose JSON, hash, prev_hash or seq is wrong.

        `anchor` is the expected prev_hash of the first line; default GENESIS unless the oldest
        remaining file was not the first (retention purged older months), then the first line's
        own prev_hash is taken as given.
        """
        files = self.files()
        res = VerifyResult(ok=True, records=0, head=GENESIS, files=[p.name for p in files])
        prev: str | None = anchor
        seq: int | None = None
        for path in files:
            with open(path, "rb") as f:
                for lineno, raw in enumerate(f, 1):

                    def broken(msg: str, path: Path = path, lineno: int = lineno) -> VerifyResult:
                        res.ok, res.broken_file, res.broken_line, res.error = False, path.name, lineno, msg
                        return res

                    if not raw.endswith(b"\n"):
                        return broken("incomplete last line (torn write)")
                    try:
                        rec = json.loads(raw)
                    except ValueError as e:
                        return broken(f"not JSON: {e}")
                    if not isinstance(rec, dict) or not rec.keys() >= _RESERVED:
                        return broken("missing seq/ts/op/prev_hash/hash")
                    if record_hash(rec) != rec["hash"]:
                        return broken("hash does not match the record (line edited)")
                    if not res.first_seq:
                        res.first_seq = rec["seq"]
                    if prev is None:
                        prev = rec["prev_hash"] if rec["seq"] != 1 else GENESIS
                    if rec["prev_hash"] != prev:
                        return broken("prev_hash does not match the previous line (line removed, inserted or moved)")
                    if seq is not None and rec["seq"] != seq + 1:
                        return broken(f"seq {rec['seq']} after {seq}")
                    prev, seq = rec["hash"], rec["seq"]
                    res.records += 1
        res.head = prev or GENESIS
        return res

    # -- retention ---------------------------------------------------------------------------
    def purge(self, now: float | None = None, retention_days: int = RETENTION_DAYS) -> list[str]:
        """Delete monthly files whose every record is older than the retention period."""
        now = self._clock() if now is None else now
        cutoff = _dt.datetime.fromtimestamp(now, _dt.UTC) - _dt.timedelta(days=retention_days)
        removed = []
        files = self.files()
        for path in files[:-1]:  # never the newest file: it carries the head
            y, m = (int(x) for x in path.stem.split("-"))
            month_end = _dt.datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=_dt.UTC)
            if month_end <= cutoff:
                path.unlink()
                removed.append(path.name)
        if removed:
            fsync_dir(self.dir)
            self.append("audit.retention_purge", files=removed, retention_days=retention_days)
        return removed


def _read_tail(path: Path) -> tuple[str | None, int]:
    """(last complete line, length of a torn trailing fragment) without reading the whole file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        block = 8192
        buf = b""
        pos = size
        while pos > 0:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf
            # need the newline ending the last complete line plus the one before it (or file start)
            end = buf.rfind(b"\n")
            if end >= 0 and (buf.rfind(b"\n", 0, end) >= 0 or pos == 0):
                torn = len(buf) - end - 1
                start = buf.rfind(b"\n", 0, end) + 1
                return buf[start:end].decode(), torn
            block *= 2
        # no newline at all: the whole file is one torn line
        return None, size
