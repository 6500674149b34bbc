"""Quarantine store: the originals of removed parts and refused messages, kept whole.

I/O adapter: the sans-I/O inspector emits `Quarantine` commands; the daemon or replay executes
them with `QuarantineStore.put`. Layout (docs/quarantine.md):

    ROOT/YYYY/MM/DD/<id>.orig    original bytes, exactly as decoded/received
    ROOT/YYYY/MM/DD/<id>.json    metadata (QuarantineEntry), written after the content
    ROOT/audit/YYYY-MM.jsonl     hash-chained audit log: put, release, purge (gateway.io.auditlog)

Durability: each file is written to a dot-temp file in the same directory, fsync'd, linked into
place, and the directory fsync'd. Content first, metadata second, audit record last: an entry is
listed only when its metadata exists, which implies its content exists. A crash leaves at most
temp files or a content file without metadata (both invisible; `recover()` removes them) or an
entry without its audit record (`recover()` audits it, marked recovered).
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as _dt
import errno
import fcntl
import getpass
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from gateway.io.auditlog import AuditLog, VerifyResult, fsync_dir, iso_utc
from gateway.mailevents import FlowInfo

DEFAULT_DIR = Path("/var/lib/lgwan-gateway/quarantine")
ENV_DIR = "LGWAN_GATEWAY_QUARANTINE_DIR"
HOLD_DAYS = 14  # review hold: the original is kept at least this long
EXPIRE_DAYS = 30  # download window: releases possible until then, purged after
DEFAULT_MAX_BYTES = 20 * 1024**3
DEFAULT_MAX_COUNT = 200_000
TEMP_GRACE_S = 3600.0  # temp files younger than this may belong to a put in progress elsewhere

ID_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})T(\d{6})Z-([0-9a-f]{12})$")
_CHUNK = 1 << 20

Kind = Literal["part", "message"]
Action = Literal["neutralized", "refused"]


class QuarantineError(Exception):
    """Base of the store's errors."""


class QuarantineNotFound(QuarantineError):
    pass


class QuarantineTampered(QuarantineError):
    """Content or metadata does not match what was recorded when it was stored."""


class QuarantineFull(QuarantineError):
    """The store is at its limit (count, bytes or disk). The inspector must refuse the message
    rather than deliver it: a part we cannot keep is a part we must not remove silently."""


class QuarantineIdInUse(QuarantineError):
    """put(qid=...) with an id that already names an entry (or a put in progress)."""


class ReleaseRefused(QuarantineError):
    """Release not allowed: two-person rule, missing names, or past the download window."""


@dataclass(frozen=True, slots=True)
class QuarantineMeta:
    """What the inspector knows about the original it hands over."""

    kind: Kind
    flow: FlowInfo
    reason: str
    action: Action
    mail_from: str | None = None
    rcpt_to: tuple[str, ...] = ()
    message_id: str | None = None
    subject: str | None = None  # decoded
    part_path: str | None = None  # MIME part path, for kind == "part"
    filename_raw: str | None = None
    filename: str | None = None  # decoded, NFC
    declared_type: str | None = None
    detected_type: str | None = None  # true type
    category: str | None = None
    # the deciding policy rule and inspect profile are the flow's: flow.rule_id, flow.profile


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """Stored metadata: the inspector's plus what the store computed."""

    id: str
    meta: QuarantineMeta
    size: int
    sha256: str
    created: str  # ISO UTC
    hold_until: str
    expires: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        m = asdict(self.meta)
        m["rcpt_to"] = list(self.meta.rcpt_to)
        d: dict[str, Any] = {
            "id": self.id,
            "size": self.size,
            "sha256": self.sha256,
            "created": self.created,
            "hold_until": self.hold_until,
            "expires": self.expires,
            **m,
        }
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuarantineEntry:
        meta_fields = QuarantineMeta.__dataclass_fields__
        kw: dict[str, Any] = {k: d[k] for k in meta_fields if k in d}
        kw["flow"] = FlowInfo.from_dict(d["flow"])
        kw["rcpt_to"] = tuple(d.get("rcpt_to", ()))
        own = {"id", "size", "sha256", "created", "hold_until", "expires"}
        extra = {k: v for k, v in d.items() if k not in own and k not in meta_fields}
        return cls(
            id=d["id"],
            meta=QuarantineMeta(**kw),
            size=d["size"],
            sha256=d["sha256"],
            created=d["created"],
            hold_until=d["hold_until"],
            expires=d["expires"],
            extra=extra,
        )


@dataclass
class PurgeReport:
    dry_run: bool = False
    purged: list[str] = field(default_factory=list)  # ids removed (dry run: that would be)
    bytes: int = 0  # their content size
    kept_young: int = 0  # younger than the limit (or not yet expired)
    kept_held: int = 0  # old enough but still in their review hold (hold_until)


@dataclass
class StoreVerifyResult:
    ok: bool
    entries: int
    problems: list[str]
    audit: VerifyResult


def parse_iso(s: str) -> float:
    return _dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def meta_hash(d: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


def new_id(now: float) -> str:
    """A fresh quarantine id for something quarantined at `now` (seconds since the epoch):
    `YYYYMMDDTHHMMSSZ-` + 48 random bits. Pure (no store needed): the inspector derives the id
    when it decides to neutralize or refuse, writes it into the notice or the 554 reply, and
    the store accepts it (`put(..., qid=)`), refusing one already in use."""
    t = _dt.datetime.fromtimestamp(now, _dt.UTC)
    return t.strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(6)


def default_dir() -> Path:
    return Path(os.environ.get(ENV_DIR) or DEFAULT_DIR)


class QuarantineStore:
    def __init__(
        self,
        root: Path,
        *,
        hold_days: float = HOLD_DAYS,
        expire_days: float = EXPIRE_DAYS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_count: int = DEFAULT_MAX_COUNT,
        usage_ttl: float = 10.0,
        clock: Callable[[], float] = time.time,
        audit: AuditLog | None = None,
    ) -> None:
        if expire_days < hold_days:
            raise ValueError("expire_days must be >= hold_days (the original outlives its review hold)")
        self.root = Path(root)
        self.hold_s = hold_days * 86400
        self.expire_s = expire_days * 86400
        self.max_bytes = max_bytes
        self.max_count = max_count
        self._usage_ttl = usage_ttl
        self._clock = clock
        self.root.mkdir(parents=True, exist_ok=True)
        self.audit = audit or AuditLog(self.root / "audit", clock=clock)
        self._usage: tuple[float, int, int] | None = None  # (scanned at, count, bytes)

    # -- paths -------------------------------------------------------------------------------
    def _dir_of(self, qid: str) -> Path:
        m = ID_RE.match(qid)
        if not m:
            # ids come from the command line: never let one name a path outside the store
            raise QuarantineNotFound(f"not a quarantine id: {qid!r}")
        return self.root / m.group(1) / m.group(2) / m.group(3)

    def _paths(self, qid: str) -> tuple[Path, Path]:
        d = self._dir_of(qid)
        return d / f"{qid}.orig", d / f"{qid}.json"

    def _new_id(self, now: float) -> str:
        return new_id(now)

    # -- limits ------------------------------------------------------------------------------
    def usage(self, *, fresh: bool = False) -> tuple[int, int]:
        """(entries, content bytes). Rescanned at most every usage_ttl seconds: other processes
        write too, so the bound can be overshot by what they stored since the last scan."""
        now = time.monotonic()
        if fresh or self._usage is None or now - self._usage[0] > self._usage_ttl:
            count = total = 0
            for meta_path in self._meta_files():
                orig = meta_path.with_suffix(".orig")
                with contextlib.suppress(FileNotFoundError):  # purged meanwhile
                    total += orig.stat().st_size
                    count += 1
            self._usage = (now, count, total)
        return self._usage[1], self._usage[2]

    def _account(self, count: int, nbytes: int) -> None:
        if self._usage is not None:
            t, c, b = self._usage
            self._usage = (t, c + count, b + nbytes)

    # -- put ---------------------------------------------------------------------------------
    def put(
        self,
        original: bytes | Iterable[bytes],
        meta: QuarantineMeta,
        qid: str | None = None,
        sha256: str | None = None,
    ) -> str:
        """Store the original and its metadata durably; returns the id. Raises QuarantineFull.

        `qid`: an id derived beforehand (`new_id`; the inspector names it in the notice): it is
        used as given, and an id already in use raises QuarantineIdInUse (nothing is replaced:
        the files are linked into place, never renamed over an existing one).
        `sha256`: the caller's SHA-256 (hex) of exactly these bytes, recorded instead of hashing
        them again (the inspector hashed a removed part as it decoded it; 3 ms per 5 MiB here).
        `verify()` rehashes the stored file, so a wrong digest is found, not hidden."""
        if sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise QuarantineError(f"not a SHA-256 hex digest: {sha256!r}")
        if qid is not None and not ID_RE.match(qid):
            raise QuarantineError(f"not a quarantine id: {qid!r}")
        count, used = self.usage()
        if count >= self.max_count:
            raise QuarantineFull(f"quarantine full: {count} entries (max {self.max_count})")
        budget = self.max_bytes - used
        if budget <= 0:
            raise QuarantineFull(f"quarantine full: {used} bytes (max {self.max_bytes})")
        now = self._clock()
        qid = self._new_id(now) if qid is None else qid
        orig_path, meta_path = self._paths(qid)
        orig_path.parent.mkdir(parents=True, exist_ok=True)
        chunks: Iterable[bytes] = (original,) if isinstance(original, bytes) else original

        h = hashlib.sha256()
        size = 0

        def write_content(f: IO[bytes]) -> None:
            nonlocal size
            for chunk in chunks:
                size += len(chunk)
                if size > budget:
                    raise QuarantineFull(f"quarantine full: entry would exceed max_bytes ({self.max_bytes})")
                if sha256 is None:
                    h.update(chunk)
                f.write(chunk)

        self._atomic_write(orig_path, write_content, drop_cache=True)
        try:
            entry = QuarantineEntry(
                id=qid,
                meta=meta,
                size=size,
                sha256=h.hexdigest() if sha256 is None else sha256,
                created=iso_utc(now),
                hold_until=iso_utc(now + self.hold_s),
                expires=iso_utc(now + self.expire_s),
            )
            d = entry.to_dict()
            body = json.dumps(d, ensure_ascii=False, indent=1).encode() + b"\n"
            self._atomic_write(meta_path, lambda f: f.write(body))
        except BaseException:
            with contextlib.suppress(OSError):
                orig_path.unlink()
            raise
        self._account(1, size)
        self._audit_put(d, recovered=False)
        return qid

    def _audit_put(self, d: dict[str, Any], *, recovered: bool) -> None:
        fields: dict[str, Any] = {
            "id": d["id"],
            "kind": d["kind"],
            "action": d["action"],
            "reason": d["reason"],
            "size": d["size"],
            "sha256": d["sha256"],
            "meta_sha256": meta_hash(d),
        }
        if recovered:
            fields["recovered"] = True
        self.audit.append("quarantine.put", **fields)

    def _atomic_write(self, path: Path, fill: Callable[[IO[bytes]], object], *, drop_cache: bool = False) -> None:
        """Temp file, fsync, then link (not rename) into place: an existing file is never
        replaced (QuarantineIdInUse), then the directory fsync'd.

        `drop_cache`: once durable, the file's pages leave the page cache. A quarantined original
        is written once and seldom read: cached, it would push out what the host does use, and
        every put would need fresh pages (measured here: a 5 MiB write took 13 ms into new
        page-cache pages, 0.7 ms into pages just released)."""
        tmp = path.with_name(f".tmp-{path.name}-{secrets.token_hex(4)}")
        try:
            with open(tmp, "xb") as f:
                fill(f)
                f.flush()
                os.fsync(f.fileno())
                if drop_cache:
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise QuarantineIdInUse(f"quarantine id in use: {path.name}") from None
            tmp.unlink()
            fsync_dir(path.parent)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise QuarantineFull(f"quarantine full: disk: {e}") from e
            raise
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    # -- read --------------------------------------------------------------------------------
    def _meta_files(self) -> Iterator[Path]:
        # YYYY/MM/DD/<id>.json; dot-files are temp files of writes in progress
        for p in self.root.glob("[0-9][0-9][0-9][0-9]/[0-9][0-9]/[0-9][0-9]/*.json"):
            if not p.name.startswith(".") and ID_RE.match(p.stem):
                yield p

    def get(self, qid: str) -> QuarantineEntry:
        _, meta_path = self._paths(qid)
        try:
            raw = meta_path.read_bytes()
        except FileNotFoundError:
            raise QuarantineNotFound(f"no quarantine entry {qid}") from None
        try:
            entry = QuarantineEntry.from_dict(json.loads(raw))
        except (ValueError, KeyError, TypeError) as e:
            raise QuarantineTampered(f"{qid}: metadata unreadable: {e}") from e
        if entry.id != qid:
            raise QuarantineTampered(f"{qid}: metadata names id {entry.id}")
        return entry

    def list(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        reason: str | None = None,
        sender: str | None = None,
        recipient: str | None = None,
        kind: str | None = None,
        action: str | None = None,
    ) -> list[QuarantineEntry]:
        """Entries oldest first. Sender/recipient match case-insensitively as substrings."""
        out = []
        for p in self._meta_files():
            try:
                e = self.get(p.stem)
            except QuarantineError:
                continue  # purged meanwhile or unreadable: `verify` reports the latter
            t = parse_iso(e.created)
            m = e.meta
            if since is not None and t < since:
                continue
            if until is not None and t >= until:
                continue
            if reason is not None and m.reason != reason:
                continue
            if kind is not None and m.kind != kind:
                continue
            if action is not None and m.action != action:
                continue
            if sender is not None and sender.lower() not in (m.mail_from or "").lower():
                continue
            if recipient is not None and not any(recipient.lower() in r.lower() for r in m.rcpt_to):
                continue
            out.append(e)
        out.sort(key=lambda e: (e.created, e.id))
        return out

    def _check_content(self, qid: str, entry: QuarantineEntry, dest: IO[bytes] | None = None) -> None:
        orig_path, _ = self._paths(qid)
        h = hashlib.sha256()
        size = 0
        try:
            with open(orig_path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    if dest is not None:
                        dest.write(chunk)
        except FileNotFoundError:
            raise QuarantineTampered(f"{qid}: original missing") from None
        if size != entry.size or h.hexdigest() != entry.sha256:
            raise QuarantineTampered(
                f"{qid}: original does not match its recorded SHA-256 (tampered or corrupted): "
                f"expected {entry.sha256} ({entry.size} bytes), found {h.hexdigest()} ({size} bytes)"
            )

    def read_original(self, qid: str) -> bytes:
        """The verified original (whole in memory; use export for large ones)."""
        entry = self.get(qid)
        orig_path, _ = self._paths(qid)
        try:
            data = orig_path.read_bytes()
        except FileNotFoundError:
            raise QuarantineTampered(f"{qid}: original missing") from None
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise QuarantineTampered(f"{qid}: original does not match its recorded SHA-256 (tampered or corrupted)")
        return data

    def open_original(self, qid: str) -> IO[bytes]:
        """A file object on the original, verified (sha256 and size) before it is returned."""
        entry = self.get(qid)
        self._check_content(qid, entry)
        orig_path, _ = self._paths(qid)
        return open(orig_path, "rb")

    # -- release -----------------------------------------------------------------------------
    def releases(self, qid: str) -> builtins.list[dict[str, Any]]:
        return [r for r in self.audit.records() if r.get("op") == "quarantine.release" and r.get("id") == qid]

    def release(
        self,
        qid: str,
        *,
        requested_by: str,
        approved_by: str,
        out: Path,
        note: str = "",
        force_single: bool = False,
    ) -> dict[str, Any]:
        """Export the original to `out` (verified on the way) and record the release.

        Two-person rule: the requester and the approver must differ unless `force_single` (small
        offices with one administrator; the audit record says so). `out` is written atomically
        and never overwritten; nothing is written if the content does not verify.
        """
        requested_by, approved_by = requested_by.strip(), approved_by.strip()
        if not requested_by or not approved_by:
            raise ReleaseRefused("release needs --requested-by and --approved-by")
        if requested_by == approved_by and not force_single:
            raise ReleaseRefused(
                f"two-person rule: requester and approver are both {requested_by!r} (use --force-single to override)"
            )
        entry = self.get(qid)
        now = self._clock()
        if now >= parse_iso(entry.expires):
            raise ReleaseRefused(f"{qid}: download window ended {entry.expires}")
        out = Path(out)
        if out.exists():
            raise ReleaseRefused(f"{out} exists; not overwriting")
        tmp = out.with_name(f".{out.name}.part-{secrets.token_hex(4)}")
        try:
            with open(tmp, "xb") as f:
                self._check_content(qid, entry, dest=f)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, out)  # fails if `out` appeared meanwhile: never clobber
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        fsync_dir(out.parent.resolve())
        record = self.audit.append(
            "quarantine.release",
            id=qid,
            sha256=entry.sha256,
            requested_by=requested_by,
            approved_by=approved_by,
            single_person=requested_by == approved_by,
            operator=_operator(),
            out=str(out.resolve()),
            note=note,
        )
        return record

    # -- retention ---------------------------------------------------------------------------
    def purge(self, now: float | None = None, *, audit_retention_days: int | None = None) -> builtins.list[str]:
        """Remove entries past `expires` (never before `hold_until`), each logged; clean temp
        files; apply the audit log's own retention. Returns the removed ids."""
        return self.purge_report(now, audit_retention_days=audit_retention_days).purged

    def purge_report(
        self,
        now: float | None = None,
        *,
        older_than_days: float | None = None,
        limit_for: Callable[[QuarantineEntry], float | None] | None = None,
        dry_run: bool = False,
        audit_retention_days: int | None = None,
    ) -> PurgeReport:
        """Remove what retention allows; returns what was (dry_run: would be) removed and kept.

        Which entries: with `older_than_days` (or `limit_for(entry)`, days, e.g. the entry's
        profile's `original_retention_days`; None = no age limit for it) those at least that old;
        without, those past `expires`. Never an entry younger than its limit, never one before
        its `hold_until` (review hold). Each removal is atomic: the metadata is renamed to a temp
        name (the entry leaves every listing at once; a concurrent purge loses the race and skips
        it), the content unlinked, the directory fsync'd, one `quarantine.purge` audit record
        written; then one `quarantine.purge_run` record with the counts. Runs are serialized by a
        lock file. dry_run changes nothing and writes no record.
        """
        now = self._clock() if now is None else now
        rep = PurgeReport(dry_run=dry_run)
        with contextlib.nullcontext() if dry_run else self._purge_lock():  # a dry run only reads
            for e in self.list():
                age_days = (now - parse_iso(e.created)) / 86400
                limit = older_than_days if older_than_days is not None else (limit_for(e) if limit_for else None)
                if (limit is not None and age_days < limit) or (limit is None and now < parse_iso(e.expires)):
                    rep.kept_young += 1
                    continue
                if now < parse_iso(e.hold_until):
                    rep.kept_held += 1
                    continue
                if not dry_run and not self._remove_entry(e, "expired" if limit is None else "older_than", limit):
                    continue
                rep.purged.append(e.id)
                rep.bytes += e.size
            if dry_run:
                return rep
            self.recover(temp_grace=TEMP_GRACE_S)  # real time: a simulated `now` must not eat live temp files
            self._remove_empty_dirs()
            if audit_retention_days is not None:
                self.audit.purge(now, audit_retention_days)
            else:
                self.audit.purge(now)
            self.audit.append(
                "quarantine.purge_run",
                purged=len(rep.purged),
                bytes=rep.bytes,
                kept_young=rep.kept_young,
                kept_held=rep.kept_held,
                older_than_days=older_than_days,
            )
        return rep

    def _remove_entry(self, e: QuarantineEntry, reason: str, limit: float | None) -> bool:
        orig_path, meta_path = self._paths(e.id)
        gone = meta_path.with_name(f".tmp-purge-{e.id}-{secrets.token_hex(4)}")
        try:
            os.rename(meta_path, gone)  # atomic: listed before, not after
        except FileNotFoundError:
            return False  # another purge took it
        orig_path.unlink(missing_ok=True)
        gone.unlink(missing_ok=True)
        fsync_dir(meta_path.parent)
        fields: dict[str, Any] = {"id": e.id, "sha256": e.sha256, "size": e.size, "reason": reason}
        if limit is not None:
            fields["older_than_days"] = limit
        self.audit.append("quarantine.purge", **fields)
        self._account(-1, -e.size)
        return True

    @contextlib.contextmanager
    def _purge_lock(self) -> Iterator[None]:
        fd = os.open(self.root / ".purge.lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _remove_empty_dirs(self) -> None:
        for d in sorted(self.root.glob("[0-9][0-9][0-9][0-9]/[0-9][0-9]/[0-9][0-9]"), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()  # only succeeds when empty
                d.parent.rmdir()
                d.parent.parent.rmdir()

    def recover(self, *, temp_grace: float = TEMP_GRACE_S, now: float | None = None) -> dict[str, builtins.list[str]]:
        """After a crash: remove stale temp files and content without metadata; audit entries
        whose put record is missing (crash between metadata and audit). Run at daemon start."""
        now = time.time() if now is None else now
        removed: builtins.list[str] = []
        for d in self.root.glob("[0-9][0-9][0-9][0-9]/[0-9][0-9]/[0-9][0-9]"):
            for p in d.iterdir():
                try:
                    age = now - p.stat().st_mtime
                except FileNotFoundError:
                    continue
                stale = age >= temp_grace
                orphan = p.suffix == ".orig" and not p.with_suffix(".json").exists()
                if stale and (p.name.startswith(".tmp-") or orphan):
                    p.unlink(missing_ok=True)
                    removed.append(str(p.relative_to(self.root)))
        audited = {r["id"] for r in self.audit.records() if r.get("op") == "quarantine.put"}
        recovered = []
        for p in self._meta_files():
            if p.stem not in audited:
                try:
                    d = json.loads(p.read_bytes())
                except (OSError, ValueError):
                    continue  # verify reports it
                self._audit_put(d, recovered=True)
                recovered.append(p.stem)
        if removed:
            self.audit.append("quarantine.recover", removed=removed)
        self._usage = None
        return {"removed": removed, "audited": recovered}

    # -- verify ------------------------------------------------------------------------------
    def verify(self) -> StoreVerifyResult:
        """Check the audit chain, every entry's content against its SHA-256, and every entry's
        metadata against the hash its put record chained in. Read-only."""
        audit = self.audit.verify()
        problems: builtins.list[str] = []
        if not audit.ok:
            problems.append(audit.describe())
        puts: dict[str, dict[str, Any]] = {}
        purged: set[str] = set()
        for r in self.audit.records():
            if r.get("op") == "quarantine.put":
                puts[r["id"]] = r
            elif r.get("op") == "quarantine.purge":
                purged.add(r["id"])
        seen = set()
        n = 0
        for p in self._meta_files():
            qid = p.stem
            seen.add(qid)
            n += 1
            try:
                d = json.loads(p.read_bytes())
                entry = self.get(qid)
                self._check_content(qid, entry)
            except (QuarantineError, ValueError, OSError) as e:
                problems.append(str(e))
                continue
            put = puts.get(qid)
            if put is None:
                problems.append(f"{qid}: no put record in the audit log (run recover after a crash)")
            elif put.get("meta_sha256") != meta_hash(d) or put.get("sha256") != entry.sha256:
                problems.append(f"{qid}: metadata differs from what was recorded when it was stored (tampered)")
        for qid in puts:
            if qid not in seen and qid not in purged:
                problems.append(f"{qid}: recorded as stored but missing, and no purge recorded (deleted?)")
        return StoreVerifyResult(ok=not problems, entries=n, problems=problems, audit=audit)


def _operator() -> str:
    """Who ran the release on this host (the OS account), beside the names they typed."""
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return str(os.getuid())
