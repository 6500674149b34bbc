"""End to end: SIGKILL the daemon in the middle of a message (issue 5, item 6).

"Killing the daemon mid-message loses nothing that was already quarantined and delivers nothing
uninspected", proven with the real daemon in the namespace lab: smtplib in `internet-relay` ->
`lgwan-gateway run` in the gateway namespace (configs/lab.toml, profile `mail`: every attachment
neutralized, the original quarantined) -> the lab's aiosmtpd on `lgwan-mail`:25 writing a Maildir.

The client sends one message (a text part and three 2 MB attachments) up to the middle of the
second attachment's header block and stops there. Two observable facts then pin the moment of the
kill, no sleep: the quarantine holds the first attachment (verified: content against its SHA-256,
metadata against its audit record), and the kernel's queue holds packets without a verdict (the
second attachment's unfinished header block, which the inspector withholds: it may still have to
rewrite it). Then SIGKILL. A store write that the kill cuts short is played by a real process
SIGKILLed between the metadata and the audit record; the restarted daemon must recover it.

The mechanism under test (gateway/inspect/mail.py, gateway/inspect/live.py): the
segment carrying the end of DATA is released only after every part is decided and every
Quarantine command has returned from the store (`put` is durable: fsync'd, linked, audited),
and the queue has no bypass, so a dead daemon passes nothing (docs/mail-inspection.md, "Crash
safety").

Checked after the kill: the client's transaction never gets its 250 (it keeps sending the rest and
the end of DATA, which go nowhere); no file the server wrote holds any byte of the message; the
quarantine item is complete and verifies, and no temp or partial file exists; a new SMTP
connection gets nowhere. Then the daemon is restarted (same config, `Lab.restart_daemon()`): the
old connection stays dead (its retransmissions are dropped as `no_flow`, never delivered), and the
client's resend arrives sanitized: text part byte-identical, each attachment a text/plain notice
naming its quarantine id, the three originals in the quarantine with their SHA-256, and the item
stored before the kill still there and valid.
"""

from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import hashlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_e2e_live import _can_run, _events, _lab

from gateway.lab import GATEWAY, Lab, netns, smtp_client

if (_skip := _can_run()) and os.environ.get("CI"):
    raise RuntimeError(f"mail kill end-to-end test cannot run in CI: {_skip}")
pytestmark = [pytest.mark.root, pytest.mark.slow, *([pytest.mark.skip(reason=_skip)] if _skip else [])]

PREFIX = "lgwkm-"
MAIL_FROM, RCPT_TO = "tanaka@relay.example.jp", "soumu@city.example.lg.jp"
BOUNDARY = "==lgwk-kill-7f3a=="
ATTACHMENT_BYTES = 2 * 1024 * 1024
TEXT = (
    "お世話になっております。総務課の田中です。\r\n"
    "会議資料を三点お送りします。ご確認ください。\r\n"
    "This line is plain ASCII and has no link in it.\r\n"
).encode()
# A store write cut by the kill between the metadata and the audit record, by a real process that
# dies there (SIGKILL; the moment cannot be hit reliably by killing the daemon from outside)
CRASH_IN_PUT = """
import os, signal, sys
from pathlib import Path
from gateway.io.quarantine import QuarantineMeta, QuarantineStore
from gateway.mailevents import FlowInfo

store = QuarantineStore(Path(sys.argv[1]))
store._audit_put = lambda d, recovered: os.kill(os.getpid(), signal.SIGKILL)
flow = FlowInfo(1, "198.19.40.25", 40000, "198.18.20.25", 25)
store.put(b"cut before its audit record", QuarantineMeta(kind="part", flow=flow, reason="test", action="neutralized"))
"""
WAIT_S = 10.0  # upper bound of every wait on an observable condition (never reached when it works)


@dataclass(frozen=True)
class Message:
    wire: bytes  # DATA content, CRLF line ends, no line starting with "." (no dot-stuffing needed)
    text_part: bytes  # the text part as sent (headers + body): must arrive byte-identical
    attachments: list[bytes]  # decoded originals
    cut: int  # offset in wire: the kill comes after wire[:cut] is sent and before the rest


def _b64_lines(data: bytes) -> bytes:
    enc = base64.b64encode(data)
    return b"".join(enc[i : i + 76] + b"\r\n" for i in range(0, len(enc), 76))


def _message() -> Message:
    rng = random.Random(5)  # deterministic content; random bytes: no line of them occurs by chance elsewhere
    attachments = [rng.randbytes(ATTACHMENT_BYTES) for _ in range(3)]
    head = (
        f"From: {MAIL_FROM}\r\nTo: {RCPT_TO}\r\nSubject: kill test\r\n"
        "Message-ID: <kill-test@relay.example.jp>\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{BOUNDARY}"\r\n\r\n'
    ).encode()
    text_part = b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n' + TEXT
    wire = head + f"--{BOUNDARY}\r\n".encode() + text_part
    cut = 0
    for i, data in enumerate(attachments, 1):
        wire += f'--{BOUNDARY}\r\nContent-Type: application/octet-stream; name="shiryou{i}.bin"\r\n'.encode()
        if i == 2:
            # the kill comes inside the second attachment's header block: the boundary before it
            # ended the first (whose original is then stored), and a header block being read is
            # never released (the inspector may still rewrite it), so those packets are held
            cut = len(wire)
        wire += (
            f'Content-Disposition: attachment; filename="shiryou{i}.bin"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        ).encode() + _b64_lines(data)
    wire += f"--{BOUNDARY}--\r\n".encode()
    assert not re.search(rb"(^|\r\n)\.", wire)
    return Message(wire, text_part, attachments, cut)


# --- observations ----------------------------------------------------------------------------


def _until(what: str, cond: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def _queued(lab: Lab) -> int:
    """Packets sitting in the gateway's NFQUEUE queues without a verdict (held by the inspector)."""
    run = lab.exec(GATEWAY, ["cat", "/proc/net/netfilter/nfnetlink_queue"], capture_output=True, text=True)
    # queue_number peer_portid queue_total copy_mode copy_range queue_dropped user_dropped id_sequence 1
    return sum(int(line.split()[2]) for line in run.stdout.splitlines() if line.strip())


def _store(lab: Lab) -> Any:
    from gateway.io.quarantine import QuarantineStore

    return QuarantineStore(lab.quarantine_dir)


def _quarantine_cli(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "gateway", "quarantine", "--dir", str(lab.quarantine_dir), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def _listed(lab: Lab) -> list[dict[str, Any]]:
    run = _quarantine_cli(lab, "list", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    return [json.loads(line) for line in run.stdout.splitlines() if line.strip()]


def _check_store_files(lab: Lab) -> None:
    """No temp or partial file anywhere, and every entry whole: content and metadata in pairs."""
    files = [p for p in lab.quarantine_dir.rglob("*") if p.is_file()]
    stray = [p for p in files if p.name.startswith(".tmp-") or ".part-" in p.name]
    assert not stray, f"temp/partial files left in the quarantine: {stray}"
    stems = {p.parent / p.stem: p.suffix for p in files if p.suffix in (".orig", ".json") and "audit" not in p.parts}
    for stem in stems:
        assert stem.with_suffix(".orig").is_file() and stem.with_suffix(".json").is_file(), f"half an entry: {stem}"


def _verified(lab: Lab) -> Any:
    res = _store(lab).verify()
    assert res.ok, res.problems
    run = _quarantine_cli(lab, "verify")
    assert run.returncode == 0, run.stdout + run.stderr
    return res


def _original_lines(msg: Message) -> set[bytes]:
    """Every base64 line of every attachment as sent (the form a server would store)."""
    return {line for data in msg.attachments for line in _b64_lines(data).split(b"\r\n") if len(line) == 76}


def _leaks(lab: Lab, msg: Message, *, text: bool = True) -> list[str]:
    """Files the server side wrote (Maildirs, envelopes) holding bytes of the message: any line of
    an attachment (encoded, as sent) or its raw bytes, and (text=True) the text part."""
    lines = _original_lines(msg)
    found = []
    for p in (lab.state_dir / "maildirs").rglob("*"):
        if not p.is_file():
            continue
        body = p.read_bytes()
        if hits := lines.intersection(body.split(b"\r\n")):
            found.append(f"{p}: {len(hits)} lines of an original attachment")
        found += [f"{p}: raw bytes of attachment {i}" for i, d in enumerate(msg.attachments, 1) if d[:64] in body]
        if text and msg.text_part in body:
            found.append(f"{p}: the text part")
    return found


def _delivered(lab: Lab) -> list[Path]:
    return sorted((lab.maildir("lgwan-mail") / "new").iterdir())


# --- the client ------------------------------------------------------------------------------


class Transaction:
    """One SMTP transaction driven by hand: DATA content sent in two steps, the reply awaited in
    a thread (so the test can kill and restart the daemon while the client keeps trying)."""

    def __init__(self, lab: Lab) -> None:
        self.client = smtp_client(lab.prefix, "internet-relay", "lgwan-mail", timeout=5.0)
        self.client.ehlo("relay.example.jp")
        assert self.client.mail(MAIL_FROM)[0] == 250
        assert self.client.rcpt(RCPT_TO)[0] == 250
        self.client.putcmd("data")
        code, text = self.client.getreply()
        assert code == 354, (code, text)
        assert self.client.sock is not None
        self.sock: socket.socket = self.client.sock
        self.port = self.sock.getsockname()[1]
        self.outcome: str | None = None
        self._thread: threading.Thread | None = None

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def finish_in_background(self, rest: bytes, timeout: float) -> None:
        """Send the rest and the end of DATA, then read the reply; the outcome is what happened."""

        def run() -> None:
            try:
                self.sock.settimeout(timeout)
                self.sock.sendall(rest + b".\r\n")
                code, text = self.client.getreply()
                self.outcome = f"reply {code} {text!r}"
            except OSError as exc:  # smtplib's errors are OSErrors too
                self.outcome = f"failed: {type(exc).__name__}: {exc}"

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def abort(self) -> str:
        """Stop trying (the socket is shut down and closed) and return the outcome."""
        assert self._thread is not None
        waiting = self._thread.is_alive()
        if waiting:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=WAIT_S)
        assert not self._thread.is_alive()
        self.client.close()
        if self.outcome is not None and (self.outcome.startswith("reply") or not waiting):
            return self.outcome  # a reply counts even if it came in while we shut the socket
        return "still sending or waiting for a reply"


# --- the test --------------------------------------------------------------------------------


@pytest.fixture
def lab() -> Iterator[Lab]:
    with _lab(PREFIX) as lab:  # the lab up with the daemon on configs/lab.toml; always torn down
        yield lab


def test_killing_the_daemon_mid_message_loses_nothing_and_delivers_nothing(lab: Lab) -> None:
    msg = _message()
    first_sha = hashlib.sha256(msg.attachments[0]).hexdigest()
    assert _delivered(lab) == [] and _queued(lab) == 0

    # --- 1. into the second attachment's headers, then SIGKILL -----------------------------------
    t0 = time.monotonic()
    txn = Transaction(lab)
    txn.send(msg.wire[: msg.cut])
    # the first attachment's original is stored (its end was seen when the second began)...
    res = _until("the first attachment in the quarantine", lambda: (r := _store(lab).verify()).ok and r.entries and r)
    assert res.entries == 1
    # ...and the second's header block, unfinished, is held in the kernel's queue
    held = _until("held packets in the queue", lambda: _queued(lab))
    pid = lab.status()["daemon"]["pid"]
    os.kill(pid, signal.SIGKILL)
    _until("the daemon and its workers gone", lambda: not netns.pids(lab.namespace(GATEWAY)))
    assert _queued(lab) == 0  # the held packets died with the queue's listener
    sent_at_kill = time.monotonic() - t0

    # the client keeps going: the rest of the message and the end of DATA, then waits for a reply
    txn.finish_in_background(msg.wire[msg.cut :], timeout=WAIT_S)

    # nothing the server wrote holds anything of this message
    time.sleep(0.3)  # let a wrongly passed end of DATA reach the server before looking
    assert _delivered(lab) == [] and _leaks(lab, msg) == []
    # the quarantined item is complete and verifies; nothing half-written anywhere in the store
    _check_store_files(lab)
    assert _verified(lab).entries == 1
    [entry] = _listed(lab)
    assert entry["sha256"] == first_sha and entry["size"] == ATTACHMENT_BYTES
    assert entry["filename"] == "shiryou1.bin" and entry["action"] == "neutralized"
    assert entry["message_id"] == "<kill-test@relay.example.jp>" and entry["rcpt_to"] == [RCPT_TO]
    assert _store(lab).read_original(entry["id"]) == msg.attachments[0]
    show = _quarantine_cli(lab, "show", entry["id"])
    assert show.returncode == 0 and json.loads(show.stdout)["sha256"] == first_sha, show.stdout + show.stderr

    # a put the kill cut short after its metadata: listed, but not yet in the audit log
    crash = subprocess.run([sys.executable, "-c", CRASH_IN_PUT, str(lab.quarantine_dir)], timeout=30)
    assert crash.returncode == -signal.SIGKILL
    unaudited = {e["id"] for e in _listed(lab)} - {entry["id"]}
    assert len(unaudited) == 1 and any("no put record" in p for p in _store(lab).verify().problems)

    # fail closed: a new connection gets nowhere while no daemon runs
    with pytest.raises(OSError):
        smtp_client(lab.prefix, "internet-relay", "lgwan-mail", timeout=1.0).close()

    # --- 2. restart; the old connection stays dead, the resend arrives sanitized ----------------
    new_pid = lab.restart_daemon()
    assert new_pid != pid and lab.status()["daemon"]["running"]
    # the new daemon recovered the store before starting its workers: the cut put is audited
    assert _verified(lab).entries == 2
    puts = [r for r in _store(lab).audit.records() if r.get("op") == "quarantine.put"]
    assert [r["id"] for r in puts if r.get("recovered")] == sorted(unaudited)
    # the old connection's retransmissions reach the new daemon, which does not know the flow
    _until(
        "the old connection's packets dropped by the new daemon",
        lambda: [
            e
            for e in _events(lab.events_path)
            if e.get("reason") == "no_flow" and txn.port in (e.get("src_port"), e.get("dest_port"))
        ],
    )
    outcome = txn.abort()
    assert not outcome.startswith("reply 250"), outcome  # the transaction never completed
    assert _delivered(lab) == [] and _leaks(lab, msg) == []
    # nothing of the killed transaction reached the server, so it logged no message either
    envelopes = lab.state_dir / "maildirs" / "lgwan-mail.jsonl"
    assert not envelopes.exists() or envelopes.read_text().strip() == ""

    with smtp_client(lab.prefix, "internet-relay", "lgwan-mail", timeout=10.0) as c:
        refused = c.sendmail(MAIL_FROM, [RCPT_TO], msg.wire)
    assert refused == {}
    [stored] = _until("the resent message in the Maildir", lambda: _delivered(lab))
    elapsed = time.monotonic() - t0
    raw = stored.read_bytes()
    _check_sanitized(lab, msg, raw, stored_before=2)
    print(
        f"killed {sent_at_kill:.2f} s into the transaction ({msg.cut} of {len(msg.wire)} bytes sent, "
        f"{held} packets held); client outcome: {outcome}; resent and delivered sanitized, {elapsed:.1f} s total"
    )


def _check_sanitized(lab: Lab, msg: Message, raw: bytes, stored_before: int) -> None:
    assert len(raw) == len(msg.wire)  # neutralizing is length-preserving
    assert msg.text_part in raw  # the text part arrives byte-identical
    assert _leaks(lab, msg, text=False) == []  # not one line of an original attachment
    parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
    parts = [p for p in parsed.walk() if not p.is_multipart()]
    assert len(parts) == 4
    assert parts[0].get_payload(decode=True) + b"\r\n" == TEXT  # the CRLF before a boundary is the boundary's

    entries = {e["id"]: e for e in _listed(lab)}
    res = _verified(lab)
    _check_store_files(lab)
    assert res.entries == stored_before + 3  # nothing lost: what was there before, and the resend's three
    by_sha: dict[str, list[dict[str, Any]]] = {}
    for e in entries.values():
        by_sha.setdefault(e["sha256"], []).append(e)
    qids = []
    for i, (part, data) in enumerate(zip(parts[1:], msg.attachments, strict=True), 1):
        assert part.get_content_type() == "text/plain"
        assert (part.get_filename() or "").endswith(".txt")
        notice = (part.get_payload(decode=True) or b"").decode("utf-8", "replace")
        qid = re.search(r"\d{8}T\d{6}Z-[0-9a-f]{12}", notice)
        assert qid is not None, f"attachment {i}: no quarantine id in the notice {notice[:200]!r}"
        qids.append(qid.group())
        entry = entries[qid.group()]
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["filename"] == f"shiryou{i}.bin"
        assert _store(lab).read_original(entry["id"]) == data
    # the first attachment twice: stored before the kill, and again for the resend
    assert len(by_sha[hashlib.sha256(msg.attachments[0]).hexdigest()]) == 2
    smtp = [e for e in _events(lab.events_path) if e["event_type"] == "smtp"]
    # one smtp event: the resend's (the killed daemon never logged the transaction it died in)
    assert [e["email"]["verdict"] for e in smtp] == ["sanitized"], smtp
    assert sorted(smtp[0]["email"]["quarantine_ids"]) == sorted(qids)
