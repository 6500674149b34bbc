"""End to end: mail sanitization (無害化) by the real daemon in the namespace lab.

A real SMTP client (smtplib, its socket opened in the `internet-relay` namespace) sends a corpus
built here (tests/corpus.py samples in hand-written MIME: clean PDF, EXE renamed .pdf, docm, PPAP
zip, zip holding an exe, nested zip bomb, PDF with JavaScript, Japanese filenames as ISO-2022-JP
encoded words, RFC 2231 with continuations and as raw Shift_JIS, RLO names, HTML mail) to the
lab's aiosmtpd server on `lgwan-mail`:25 through `lgwan-gateway run` with the real sanitizers,
one SMTP session per message, under two profiles:

- `remove`: configs/lab.toml as it is (`attachments = "remove"`: every attachment neutralized,
  the message text kept);
- `inspect`: the same policy with an allowlist profile (`attachments = "inspect"`) that refuses
  encrypted parts (`actions = { encrypted = "refuse" }`), written to a temporary file, and with
  two daemon workers: the sessions of the one relay->server pair spread over both (flow
  balancing by a hash of the ports too), and everything below holds with them.

Every message is sent twice: over the clean path, and through the impairment shim
(gateway/lab/impair.py in the relay's namespace: MSS 536, reordering, duplication, loss). For
each the Maildir copy is parsed and checked: dangerous content absent, clean parts byte-identical
to what was sent, neutralized parts a text/plain `.txt` notice naming the reason, refused messages
answered `554 5.7.1` and absent from the Maildir, every removed part / refused message in the
quarantine with matching SHA-256, `smtp` and `file` events as expected. The shim run must
complete every session and deliver the same messages as the clean run (quarantine ids aside),
which it does: the inspector answers a segment held past a gap with a SACK from the server side,
so the client resends the gap at once. Were a sender still to stall inside a part held undecided,
the inspector would let the part stream and decide it late: such a message may only be refused
(`554 5.7.1 ... decided after the part was released`), never delivered unsanitized
(docs/mail-inspection.md, "Stalled senders"); before the SACK hints that was the PPAP message. Two ~80 KB
zips (clean, and with an exe) go over the clean path only: larger than a sender's initial window,
the allowlist profile's whole-part hold stalls the sender even without loss, the zip streams and
is decided at its end: the clean one delivered unchanged, the other refused as decided late.

Both runs are captured with tcpdump in the gateway namespace (inbound on each zone bridge: where
the daemon sees them) and replayed offline with `lgwan-gateway replay`: the same events (clock
fields, flow ids and store-assigned quarantine ids masked, as in tests/test_e2e_live.py) and the
same delivered message bytes (the replay output's client streams reassembled).

Two labs (one per profile, prefix `lgwm-`), ~8 s each; the whole file ~16 s here.
"""

from __future__ import annotations

import base64
import collections
import email
import email.policy
import hashlib
import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import corpus
import pytest

from gateway.lab import Lab, running_lab, smtp_client
from gateway.lab.core import DEFAULT_CONFIG, daemon_available
from gateway.lab.impair import Impairments, impaired

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _can_run() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables)"
    missing = [t for t in ("ip", "iptables", "tcpdump") if not shutil.which(t)]
    if missing:
        return f"needs {', '.join(missing)} (scripts/setup.sh installs them)"
    if not daemon_available():
        return "the daemon (`lgwan-gateway run`) is not in this tree"
    try:
        import gateway._nfq  # noqa: F401  (the shim uses the project's NFQUEUE binding)
    except ImportError:
        return "gateway._nfq is not built"
    return None


_skip = _can_run()
if _skip and os.environ.get("CI"):
    raise RuntimeError(f"mail end-to-end tests cannot run in CI: {_skip}")
if _skip:
    pytestmark.append(pytest.mark.skip(reason=_skip))
else:  # helpers shared with the live = replay test (same capture, merge and masking rules)
    from test_e2e_live import CLOCK_FIELDS, _end, _events, _key, _merge, _settled, _start_capture

PREFIX = "lgwm-"
MAIL_FROM, RCPT_TO = "tanaka@relay.example.jp", "soumu@city.example.lg.jp"
SHIM = Impairments(seed=5, reorder=0.10, duplicate=0.15, drop=0.05, mss=536)
PROFILES = ("remove", "inspect")
INSPECT_PROFILE = """[profiles.mail]
kind = "smtp"
description = "allowlist: clean documents pass, encrypted parts refuse the message"
attachments = "inspect"
actions = { encrypted = "refuse" }
"""

# --- the corpus: hand-written MIME, so every filename encoding is exactly as named -------------

PASS, NEUTRALIZED, REFUSED = "pass", "neutralized", "refused"
# refused because its verdict came after the part was released: the sender could not send the
# whole part while it was held (its congestion window), so the inspector let it stream
LATE_REFUSED = "refused-late"
BODY = "お世話になっております。\r\n添付の資料をご確認ください。\r\n".encode()
BIG_TEXT = "第３回 会議録 本文\r\n".encode() * 2000  # 58 KB, stored (not compressed) in the zips


@dataclass(frozen=True)
class Part:
    """A leaf part: its raw bytes (headers + body) and what each profile must do with it."""

    raw: bytes
    data: bytes  # decoded content (what a user would save; what the quarantine keeps)
    name: str | None  # the decoded filename the file event must show
    expect: dict[str, str]  # profile -> pass | neutralized | refused (the part that refuses)
    sanitized: bool = False  # body 無害化 (HTML to text, links defanged): changed though it passes


@dataclass(frozen=True)
class Mail:
    key: str
    wire: bytes
    parts: dict[str, Part]  # MIME path ("1", "2.1", "" for a single-part message) -> part
    # sent through the shim too: not the large ones, whose allowlist outcome (decided late after a
    # window stall, or in time when the shim's SACK-hinted recovery keeps the sender going) would
    # depend on the path
    shim: bool = True

    @property
    def message_id(self) -> str:
        return f"<{self.key}@relay.example.jp>"

    def outcome(self, profile: str) -> str:
        verdicts = {p.expect[profile] for p in self.parts.values()}
        if verdicts & {REFUSED, LATE_REFUSED}:
            return "refused"
        if NEUTRALIZED in verdicts or any(p.sanitized for p in self.parts.values()):
            return "sanitized"
        return "delivered"


def _b64(data: bytes) -> bytes:
    text = base64.b64encode(data)
    return b"".join(text[i : i + 76] + b"\r\n" for i in range(0, len(text), 76))


def _name_params(name: str, how: str) -> bytes:
    if how == "ascii":
        return f'; filename="{name}"'.encode()
    if how == "rfc2231":  # UTF-8, percent-encoded
        return f"; filename*=UTF-8''{urllib.parse.quote(name, safe='')}".encode()
    if how == "rfc2231-jis":  # ISO-2022-JP in RFC 2231 continuations (Thunderbird-style)
        enc = urllib.parse.quote(name.encode("iso2022_jp"), safe="")
        cut = len(enc) // 2
        cut -= 2 if enc[cut - 1] == "%" else 1 if enc[cut - 2] == "%" else 0  # never split a %XX
        return f"; filename*0*=ISO-2022-JP''{enc[:cut]};\r\n filename*1*={enc[cut:]}".encode()
    if how == "mime-jis":  # an RFC 2047 encoded word in the quoted parameter (Outlook, Becky!)
        word = f"=?ISO-2022-JP?B?{base64.b64encode(name.encode('iso2022_jp')).decode()}?="
        return f'; filename="{word}"'.encode()
    if how == "sjis":  # raw Shift_JIS bytes, no encoding at all (old Japanese MUAs)
        return b'; filename="' + name.encode("cp932") + b'"'
    raise ValueError(how)


def attachment(data: bytes, ctype: str, name: str, how: str, **expect: str) -> Part:
    raw = (
        f"Content-Type: {ctype}\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment".encode()
        + _name_params(name, how)
        + b"\r\n\r\n"
        + _b64(data)
    )
    return Part(raw, data, name, expect)


def text(body: bytes, subtype: str = "plain", sanitized: bool = False) -> Part:
    raw = f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'.encode() + body
    # in a multipart the CRLF before the next delimiter belongs to the delimiter, not the content
    return Part(raw, body.removesuffix(b"\r\n"), None, {"remove": PASS, "inspect": PASS}, sanitized)


def mail(key: str, subject: str, parts: list[Part], shim: bool = True) -> Mail:
    """A multipart/mixed message: the text body, then `parts` (paths "1", "2", ...)."""
    boundary = f"=_lgwm_{key}"
    head = (
        f"From: Tanaka <{MAIL_FROM}>\r\nTo: <{RCPT_TO}>\r\nSubject: {subject}\r\n"
        f"Date: Thu, 26 Nov 2026 09:00:00 +0900\r\nMessage-ID: <{key}@relay.example.jp>\r\nMIME-Version: 1.0\r\n"
    ).encode()
    children = [text(BODY), *parts]
    body = f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'.encode()
    for p in children:
        body += f"--{boundary}\r\n".encode() + p.raw
    body += f"--{boundary}--\r\n".encode()
    return Mail(key, head + body, {str(i + 1): p for i, p in enumerate(children)}, shim)


def html_mail() -> Mail:
    plain = "詳細は http://example.jp/info をご覧ください。\r\n".encode()
    html = (
        '<html><body><p>詳細は<a href="http://example.jp/info">こちら</a></p>'
        "<script>alert(1)</script></body></html>\r\n"
    ).encode()
    a, b = text(plain, sanitized=True), text(html, "html", sanitized=True)
    boundary = "=_lgwm_alt"
    head = (
        f"From: <{MAIL_FROM}>\r\nTo: <{RCPT_TO}>\r\nSubject: html\r\nMessage-ID: <html@relay.example.jp>\r\n"
        f'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'
    ).encode()
    body = b"".join(f"--{boundary}\r\n".encode() + p.raw for p in (a, b)) + f"--{boundary}--\r\n".encode()
    return Mail("html", head + body, {"1": a, "2": b})


def plain_mail() -> Mail:
    p = Part(BODY, BODY, None, {"remove": PASS, "inspect": PASS})
    head = (
        f"From: <{MAIL_FROM}>\r\nTo: <{RCPT_TO}>\r\nSubject: =?ISO-2022-JP?B?GyRCJDQwJztCGyhC?=\r\n"
        "Message-ID: <plain@relay.example.jp>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'
    ).encode()
    return Mail("plain", head + BODY, {"": p})


def build_corpus() -> list[Mail]:
    N = {"remove": NEUTRALIZED, "inspect": NEUTRALIZED}
    KEEP = {"remove": NEUTRALIZED, "inspect": PASS}  # a clean attachment: removed only by `remove`
    big_zip = corpus.zip_of({"議事録.txt": BIG_TEXT}, False)
    big_exe = corpus.zip_of({"議事録.txt": BIG_TEXT, "setup.exe": corpus.pe_exe()}, False)
    pdf = corpus.clean_pdf()
    return [
        plain_mail(),
        mail("clean-pdf", "clean", [attachment(pdf, "application/pdf", "見積書.pdf", "rfc2231", **KEEP)]),
        mail("exe-as-pdf", "exe", [attachment(corpus.pe_exe(), "application/pdf", "請求書.pdf", "mime-jis", **N)]),
        mail("docm", "docm", [attachment(corpus.docm(), "application/octet-stream", "申請書.docm", "rfc2231", **N)]),
        mail(
            "ppap",
            "ppap",
            [
                attachment(
                    corpus.ppap_zip(), "application/zip", "見積書.zip", "mime-jis", remove=NEUTRALIZED, inspect=REFUSED
                )
            ],
        ),
        mail(
            "zip-exe",
            "zip",
            [
                attachment(
                    corpus.zip_of({"invoice.exe": corpus.pe_exe()}), "application/zip", "invoice.zip", "ascii", **N
                )
            ],
        ),
        mail(
            "zip-bomb",
            "bomb",
            [attachment(corpus.nested_zip(6), "application/zip", "deep.zip", "ascii", remove=REFUSED, inspect=REFUSED)],
        ),
        mail("pdf-js", "pdf js", [attachment(corpus.pdf_javascript(), "application/pdf", "a.pdf", "ascii", **N)]),
        mail(
            "japanese-names",
            "names",
            [
                attachment(pdf, "application/pdf", "報告書.pdf", "mime-jis", **KEEP),
                attachment(corpus.TEXT_SJIS, "text/plain", "議事録（第３回）.txt", "rfc2231-jis", **KEEP),
                attachment(corpus.CSV, "text/csv", "名簿.csv", "sjis", **KEEP),
                attachment(corpus.pe_exe(), "application/pdf", "請求書.pdf.exe", "mime-jis", **N),
            ],
        ),
        mail(
            "rlo",
            "rlo",
            [
                attachment(corpus.pe_exe(), "application/octet-stream", "invoice\u202etxt.exe", "rfc2231", **N),
                attachment(pdf, "application/pdf", "report\u202efdp.txt", "rfc2231", **N),
            ],
        ),
        html_mail(),
        # larger than a sender's initial window (~15-30 KB): the allowlist profile needs the whole
        # zip, the sender stalls on what we hold, the zip streams and is decided at its end
        mail("big-zip", "big", [attachment(big_zip, "application/zip", "議事録.zip", "rfc2231", **KEEP)], shim=False),
        mail(
            "big-zip-exe",
            "big exe",
            [attachment(big_exe, "application/zip", "資料.zip", "rfc2231", remove=NEUTRALIZED, inspect=LATE_REFUSED)],
            shim=False,
        ),
    ]


CORPUS = build_corpus()


# --- running the lab ------------------------------------------------------------------------------


@dataclass
class Sent:
    mail: Mail
    reply: tuple[int, bytes] | None  # the refusal the client got (code, text), None = accepted
    delivered: bytes | None = None  # the Maildir copy


@dataclass
class Run:
    name: str  # clean | shim
    sent: dict[str, Sent]
    seconds: float
    events: list[dict[str, Any]] = field(default_factory=list)  # smtp and file events of this run
    shim: dict[str, int] = field(default_factory=dict)


@dataclass
class ProfileRun:
    profile: str
    config: Path
    runs: dict[str, Run]
    events: list[dict[str, Any]]  # the daemon's whole event log
    quarantine: Path
    replayed: list[dict[str, Any]]
    replay_out: Path
    replay_quarantine: Path
    capture_frames: int
    seconds: dict[str, float]
    worker_packets: list[float]  # packets each daemon worker took from its queue


def send(lab: Lab, m: Mail) -> tuple[int, bytes] | None:
    try:
        with smtp_client(lab.prefix, "internet-relay", "lgwan-mail", timeout=10.0) as c:
            c.sendmail(MAIL_FROM, [RCPT_TO], m.wire)
    except smtplib.SMTPDataError as e:
        return e.smtp_code, e.smtp_error
    except (OSError, smtplib.SMTPException) as e:  # a stalled or broken session: a finding, not a crash
        return -1, f"{type(e).__name__}: {e}".encode()
    return None


def _maildir(lab: Lab) -> dict[Path, bytes]:
    new = lab.maildir("lgwan-mail") / "new"
    return {p: p.read_bytes() for p in new.iterdir()}


def _message_id(raw: bytes) -> str | None:
    m = re.search(rb"^Message-ID: *(<[^>\r\n]*>)", raw, re.M | re.I)
    return m.group(1).decode() if m else None


def _send_all(lab: Lab, name: str, mails: list[Mail]) -> Run:
    before = set(_maildir(lab))
    size = lab.events_path.stat().st_size if lab.events_path.exists() else 0
    t0 = time.monotonic()
    sent = {m.key: Sent(m, send(lab, m)) for m in mails}
    seconds = time.monotonic() - t0
    expected = sum(1 for s in sent.values() if s.reply is None)
    deadline = time.monotonic() + 5
    while len(set(_maildir(lab)) - before) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    by_id = {_message_id(raw): raw for p, raw in _maildir(lab).items() if p not in before}
    for s in sent.values():
        s.delivered = by_id.pop(s.mail.message_id, None)
    assert not by_id, f"unexpected deliveries: {list(by_id)}"
    _settled(lab.events_path, quiet_s=0.5)
    with lab.events_path.open("rb") as f:
        f.seek(size)
        events = [json.loads(line) for line in f.read().splitlines() if line.strip()]
    return Run(name, sent, seconds, [e for e in events if e["event_type"] in ("smtp", "file")])


def _config(profile: str, tmp: Path) -> Path:
    if profile == "remove":
        return DEFAULT_CONFIG
    text = DEFAULT_CONFIG.read_text()
    start = text.index("[profiles.mail]")
    # two workers: new connections dealt to them in turn (balance = "connection", the default),
    # so the sessions (one per message) of this one relay->server pair alternate between both
    text, n = re.subn(r"(?m)^workers = 1 ", "workers = 2 ", text[:start])
    assert n == 1, "configs/lab.toml: no [daemon] workers line"
    path = tmp / "lab-inspect.toml"
    path.write_text(text + INSPECT_PROFILE)
    return path


@pytest.fixture(scope="module", params=PROFILES)
def prun(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProfileRun]:
    profile: str = request.param
    tmp = tmp_path_factory.mktemp(f"mail-{profile}")
    config = _config(profile, tmp)
    state = Path(tempfile.gettempdir()) / f"lgwan-gateway-test-lab.{PREFIX}"
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    # fresh: a killed earlier run's leftovers go first, under the lab lock (never another run's lab)
    with running_lab(config=config, daemon=True, state_dir=state, prefix=PREFIX, fresh=True) as lab:
        seconds["lab_up"] = time.monotonic() - t0
        caps = _start_capture(lab, tmp)
        try:
            runs = {"clean": _send_all(lab, "clean", CORPUS)}
            with impaired(lab, "internet-relay", "lgwan-mail", 25, SHIM) as shim:
                runs["shim"] = _send_all(lab, "shim", [m for m in CORPUS if m.shim])
            runs["shim"].shim = shim.counters
            time.sleep(0.5)  # closes and late retransmissions reach the capture
            worker_packets = _worker_packets(lab)
        finally:
            for proc, _ in caps:
                _end(proc, signal.SIGINT)
        events = _events(lab.events_path)
        quarantine = tmp / "quarantine"
        shutil.copytree(lab.quarantine_dir, quarantine)
    merged = tmp / "merged.pcap"
    frames = _merge([p for _, p in caps], merged)
    out, replayed_path = tmp / "forwarded.pcap", tmp / "replayed.jsonl"
    argv = [sys.executable, "-m", "gateway", "replay", str(merged), "--config", str(config)]
    argv += ["--events", str(replayed_path), "--out", str(out), "--quiet"]
    t1 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    seconds["replay"] = time.monotonic() - t1
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seconds["total"] = time.monotonic() - t0
    for name, r in runs.items():
        seconds[name] = r.seconds
    yield ProfileRun(
        profile,
        config,
        runs,
        events,
        quarantine,
        _events(replayed_path),
        out,
        Path(str(out) + ".quarantine"),
        frames,
        seconds,
        worker_packets,
    )


def _worker_packets(lab: Lab) -> list[float]:
    """lgwan_worker_packets_total of each worker, in worker order (after their next report)."""
    from gateway.io.metrics import fetch
    from gateway.lab import netns

    time.sleep(0.7)  # workers report every 0.5 s
    with netns.entered(lab.namespace("gateway")):  # the endpoint listens on the gateway's loopback
        text = fetch()
    found = re.findall(r'^lgwan_worker_packets_total\{queue="\d+",worker="(\d+)"\} (\S+)$', text, re.M)
    return [float(v) for _, v in sorted(found, key=lambda x: int(x[0]))]


# --- checking what arrived -------------------------------------------------------------------------


def _leaves(msg: email.message.Message, path: str = "") -> Iterator[tuple[str, email.message.Message]]:
    if msg.is_multipart():
        for i, child in enumerate(msg.get_payload(), 1):
            assert isinstance(child, email.message.Message)
            yield from _leaves(child, f"{path}.{i}" if path else str(i))
    else:
        yield path, msg


def _parse(raw: bytes) -> email.message.Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def _events_of(run: Run, m: Mail) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    smtp = [e for e in run.events if e["event_type"] == "smtp" and e["email"].get("message_id") == m.message_id]
    assert len(smtp) == 1, f"{m.key}: {len(smtp)} smtp events"
    key = (smtp[0]["flow_id"], smtp[0]["tx_id"])
    files = [e for e in run.events if e["event_type"] == "file" and (e["flow_id"], e["tx_id"]) == key]
    by_path = {e["fileinfo"]["path"]: e for e in files}
    assert len(by_path) == len(files), f"{m.key}: two file events for one part"
    return smtp[0], by_path


def _store(path: Path) -> Any:
    from gateway.io.quarantine import QuarantineStore

    return QuarantineStore(path)


LATE = "decided after the part was released"


def _late(s: Sent) -> bool:
    """Refused because the verdict came after the part was released: the impaired path lost a
    segment inside an undecided part, the sender stalled, and the inspector let the part stream
    (docs/mail-inspection.md, "Stalled senders") rather than hang the session."""
    return s.reply is not None and s.reply[0] == 554 and LATE.encode() in s.reply[1]


def check_run(pr: ProfileRun, run: Run) -> list[str]:
    """Everything one run must show; returns the problems (empty: all good)."""
    problems: list[str] = []
    store = _store(pr.quarantine)
    for s in run.sent.values():
        m, want = s.mail, s.mail.outcome(pr.profile)
        where = f"{pr.profile}/{run.name}/{m.key}"
        smtp, files = _events_of(run, m)
        expect_late = any(p.expect[pr.profile] == LATE_REFUSED for p in m.parts.values())
        unexpected = run.name == "shim" and _late(s) and not expect_late
        if unexpected:
            want = "refused"  # a loss stalled the sender inside an undecided part: refused late
        if (expect_late or unexpected) and (not _late(s) or LATE not in smtp["email"].get("reason", "")):
            problems.append(f"{where}: expected a refusal decided late, got {s.reply!r}")
        if smtp["email"]["verdict"] != want:
            problems.append(f"{where}: smtp verdict {smtp['email']['verdict']}, expected {want}")
        if set(files) != set(m.parts):
            problems.append(f"{where}: file events for parts {sorted(files)}, expected {sorted(m.parts)}")
            continue
        qids = set(smtp["email"]["quarantine_ids"])
        if want == "refused":
            if s.reply is None or s.reply[0] != 554 or not s.reply[1].startswith(b"5.7.1"):
                problems.append(f"{where}: the client got {s.reply!r}, expected 554 5.7.1")
            if s.delivered is not None:
                problems.append(f"{where}: refused but delivered")
            # the whole message is kept: what the client sent as DATA content
            entries = [store.get(q) for q in qids]
            if [e.meta.kind for e in entries] != ["message"]:
                problems.append(f"{where}: quarantine {[e.meta.kind for e in entries]}, expected one message")
            elif (
                store.read_original(entries[0].id) != m.wire or entries[0].sha256 != hashlib.sha256(m.wire).hexdigest()
            ):
                problems.append(f"{where}: quarantined message differs from what was sent")
            for path, p in m.parts.items():
                ev = files[path]["fileinfo"]
                if p.expect[pr.profile] in (REFUSED, LATE_REFUSED) and ev["verdict"] != REFUSED and not unexpected:
                    problems.append(f"{where}: part {path} verdict {ev['verdict']}, expected refused")
            continue
        if s.reply is not None:
            problems.append(f"{where}: refused with {s.reply!r}, expected {want}")
            continue
        if s.delivered is None:
            problems.append(f"{where}: accepted but not in the Maildir")
            continue
        problems += _check_delivered(where, m, s.delivered, files, pr.profile, store, qids)
    return problems


def _check_delivered(
    where: str, m: Mail, got: bytes, files: dict[str, dict[str, Any]], profile: str, store: Any, qids: set[str]
) -> list[str]:
    problems = []
    if len(got) != len(m.wire):
        problems.append(f"{where}: {len(got)} bytes delivered, {len(m.wire)} sent (rewrites keep lengths)")
    want_identical = all(p.expect[profile] == PASS and not p.sanitized for p in m.parts.values())
    if want_identical and got != m.wire:
        problems.append(f"{where}: a clean message was changed")
    head_end = m.wire.index(b"\r\n\r\n")
    if got[:head_end] != m.wire[:head_end]:
        problems.append(f"{where}: top-level header block changed")
    leaves = dict(_leaves(_parse(got)))
    stored: set[str] = set()
    for path, p in m.parts.items():
        ev = files[path]["fileinfo"]
        verdict = p.expect[profile]
        if ev["verdict"] != verdict:
            problems.append(f"{where}: part {path} verdict {ev['verdict']} ({ev.get('reason')}), expected {verdict}")
            continue
        if ev["sha256"] != hashlib.sha256(p.data).hexdigest() or ev["size"] != len(p.data):
            problems.append(f"{where}: part {path} event sha256/size is not the original's")
        if p.name is not None and ev.get("filename") != p.name:
            problems.append(f"{where}: part {path} filename {ev.get('filename')!r}, expected {p.name!r}")
        part = leaves.get(path)
        if part is None:
            problems.append(f"{where}: part {path} missing from the delivered message")
            continue
        decoded = part.get_payload(decode=True)
        assert isinstance(decoded, bytes)
        if verdict == PASS:
            if want_identical or not p.sanitized:
                if p.raw not in got:
                    problems.append(f"{where}: passed part {path} is not byte-identical")
            else:
                problems += _check_sanitized(where, path, p, part, decoded)
            continue
        # neutralized: a text/plain .txt notice naming the reason; the original in the quarantine
        if part.get_content_type() != "text/plain":
            problems.append(f"{where}: neutralized part {path} is {part.get_content_type()}")
        name = part.get_filename()
        if name is not None and not name.endswith(".txt"):
            problems.append(f"{where}: neutralized part {path} is named {name!r}")
        notice = decoded.decode("utf-8", "replace").strip()
        full_notice = len(decoded) > 400  # a short part carries a truncated notice
        if not notice or (full_notice and ev["reason"] not in notice):
            problems.append(f"{where}: part {path} notice {notice[:120]!r} does not name {ev['reason']!r}")
        if p.data[:64] in got or p.data[:64] in decoded or _b64(p.data)[:76] in got:
            problems.append(f"{where}: part {path}: original content still delivered")
        qid = ev.get("quarantine_id")
        if not ev.get("stored") or qid not in qids:
            problems.append(f"{where}: part {path} not quarantined ({qid!r})")
            continue
        stored.add(qid)
        if qid not in notice and full_notice:
            problems.append(f"{where}: part {path} notice does not name its quarantine id {qid}")
        e = store.get(qid)
        if store.read_original(qid) != p.data or e.sha256 != ev["sha256"] or e.meta.kind != "part":
            problems.append(f"{where}: part {path} quarantine entry {qid} is not the original")
    if stored != qids:
        problems.append(f"{where}: quarantine ids {sorted(qids - stored)} not accounted for by a part")
    return problems


def _check_sanitized(where: str, path: str, sent: Part, part: email.message.Message, decoded: bytes) -> list[str]:
    """Body 無害化: links defanged, HTML turned into text/plain with its markup blanked."""
    problems = []
    low = decoded.lower()
    # the plain part keeps its link, defanged; the HTML part had it inside a tag, blanked with it
    if b"http" in low or (b"hxxp://example.jp/info" not in low and b"<a " not in sent.data):
        problems.append(f"{where}: part {path} links not defanged: {decoded[:200]!r}")
    if b"<" in decoded or b"alert(" in decoded or part.get_content_type() != "text/plain":
        problems.append(f"{where}: part {path} markup or script left ({part.get_content_type()}): {decoded[:200]!r}")
    if "詳細".encode() not in decoded:
        problems.append(f"{where}: part {path} lost its text")
    return problems


# --- the tests -----------------------------------------------------------------------------------


def test_corpus_is_what_it_says() -> None:
    """Offline: the hand-written MIME parses back to the parts and names the tests expect."""
    for m in CORPUS:
        leaves = dict(_leaves(_parse(m.wire)))
        assert set(leaves) == set(m.parts), m.key
        for path, p in m.parts.items():
            assert leaves[path].get_payload(decode=True) == p.data, (m.key, path)
            assert p.raw in m.wire
    kinds = {m.key for m in CORPUS}
    assert {"clean-pdf", "exe-as-pdf", "docm", "ppap", "zip-exe", "zip-bomb", "pdf-js", "japanese-names"} <= kinds
    assert {"rlo", "html", "plain"} <= kinds


@pytest.mark.parametrize("run_name", ["clean", "shim"])
def test_delivered_messages_are_sanitized(prun: ProfileRun, run_name: str) -> None:
    run = prun.runs[run_name]
    problems = check_run(prun, run)
    print(f"{prun.profile}/{run_name}: {len(run.sent)} sessions in {run.seconds:.2f} s; shim {run.shim}")
    assert not problems, "\n".join(problems)


QID = re.compile(rb"\d{8}T\d{6}Z-[0-9a-f]{12}|\A\d{8}T[0-9a-fZ-]*")  # a truncated notice starts with a prefix


def _normalized(raw: bytes) -> list[tuple[str, bytes]]:
    """A delivered message with store-assigned quarantine ids masked inside neutralized notices."""
    out = []
    for path, part in _leaves(_parse(raw)):
        body = part.get_payload(decode=True)
        assert isinstance(body, bytes)
        head = bytes(part)[: bytes(part).find(b"\n\n") + 1]  # a neutralized part's name may hold the id
        out.append((path, QID.sub(b"<id>", head) + QID.sub(b"<id>", body)))
    return out


def _reply(r: tuple[int, bytes] | None) -> tuple[int, bytes] | None:
    return None if r is None else (r[0], QID.sub(b"<id>", r[1]))


def _run_qids(run: Run) -> list[str]:
    return [q for e in run.events if e["event_type"] == "smtp" for q in e["email"]["quarantine_ids"]]


def test_sessions_spread_over_the_workers(prun: ProfileRun) -> None:
    # remove: configs/lab.toml's one worker; inspect: two, and one relay->server pair uses both
    want = 2 if prun.profile == "inspect" else 1
    print(f"{prun.profile}: packets per worker {prun.worker_packets}")
    assert len(prun.worker_packets) == want and all(n > 0 for n in prun.worker_packets), prun.worker_packets


def test_impaired_path_delivers_the_same(prun: ProfileRun) -> None:
    """Through the shim every session completes and every message has the clean run's outcome and
    bytes, except where a loss inside an undecided part stalled the sender: that message is
    refused late (checked in test_delivered_messages_are_sanitized), never delivered otherwise."""
    clean, shim = prun.runs["clean"], prun.runs["shim"]
    counters = shim.shim
    assert counters.get("dropped", 0) > 0 and counters.get("reordered", 0) > 0 and counters.get("duplicated", 0) > 0
    late = sorted(k for k, s in shim.sent.items() if _late(s) and not _late(clean.sent[k]))
    print(f"{prun.profile}: refused late through the shim: {late}")
    assert len(late) <= 2, f"more late refusals than the shim's losses in undecided parts explain: {late}"
    assert all(shim.sent[k].reply is None or shim.sent[k].reply[0] == 554 for k in shim.sent)  # none hung
    differ = []
    for key, b in shim.sent.items():
        a = clean.sent[key]
        if key in late:
            continue
        if (_reply(a.reply), a.delivered is None) != (_reply(b.reply), b.delivered is None):
            differ.append(
                f"{key}: clean {a.reply!r}/{a.delivered is not None}, shim {b.reply!r}/{b.delivered is not None}"
            )
        elif a.delivered and b.delivered and _normalized(a.delivered) != _normalized(b.delivered):
            differ.append(f"{key}: delivered messages differ")
    assert not differ, "\n".join(differ)

    def events(run: Run) -> collections.Counter[Any]:
        skip = {
            (e["flow_id"], e["tx_id"])
            for e in run.events
            if e.get("email", {}).get("message_id", "?") in late_ids | unshimmed
        }
        return collections.Counter(
            _key(e, ("timestamp", "flow_id", "src_port")) for e in run.events if (e["flow_id"], e["tx_id"]) not in skip
        )

    late_ids = {shim.sent[k].mail.message_id for k in late}
    unshimmed = {m.message_id for m in CORPUS if not m.shim}
    assert events(clean) == events(shim)


def test_live_events_equal_replay(prun: ProfileRun) -> None:
    """Every event the daemon logged (flows, anomalies, smtp, file) = the replay of the capture."""
    live = collections.Counter(_key(e, CLOCK_FIELDS) for e in prun.events)
    replayed = collections.Counter(_key(e, CLOCK_FIELDS) for e in prun.replayed)
    only_live = [dict(k) for k in (live - replayed).elements()]
    only_replay = [dict(k) for k in (replayed - live).elements()]
    print(
        f"{prun.profile}: {len(prun.events)} live events = {len(prun.replayed)} replayed, {prun.capture_frames} frames"
    )
    assert not only_live and not only_replay, f"live only: {only_live}\nreplay only: {only_replay}"
    assert sum(1 for e in prun.events if e["event_type"] == "smtp") == sum(len(r.sent) for r in prun.runs.values())


def _client_streams(pcap: Path) -> dict[int, bytes]:
    """Client -> server byte streams of the replay output, per client port, as the server's TCP
    assembles them: the first copy of a byte wins (a later duplicate is below its rcv_nxt; the
    gateway sends bytes it has seen acknowledged as zeros), and nothing past a gap."""
    from gateway.inspect.packet import PacketError, parse_tcp
    from gateway.io.pcap import iter_capture

    isn: dict[int, int] = {}
    segs: dict[int, list[tuple[int, bytes]]] = collections.defaultdict(list)
    for batch in iter_capture(pcap):
        for i in range(len(batch)):
            frame = batch.frame(i)
            if frame[12:14] != b"\x08\x00":
                continue
            try:
                t = parse_tcp(frame[14:])
            except PacketError:
                continue
            if t.dport != 25:
                continue
            if t.flags & 0x02:
                isn[t.sport] = t.seq
            elif t.payload:
                segs[t.sport].append((t.seq, t.payload))
    out = {}
    for port, arrived in segs.items():
        data, have = bytearray(), bytearray()
        for seq, payload in arrived:
            off = (seq - isn[port] - 1) % (1 << 32)
            if off + len(payload) > len(data):
                data.extend(bytes(off + len(payload) - len(data)))
                have.extend(bytes(off + len(payload) - len(have)))
            for k, byte in enumerate(payload):
                if not have[off + k]:
                    data[off + k], have[off + k] = byte, 1
        n = have.find(0)
        out[port] = bytes(data if n < 0 else data[:n])
    return out


def _data_content(stream: bytes) -> bytes | None:
    """The DATA content the server commits (unstuffed), or None if the end of DATA never passed."""
    start = stream.find(b"\r\nDATA\r\n") + 8 if b"\r\nDATA\r\n" in stream else stream.upper().find(b"DATA\r\n") + 6
    end = stream.find(b"\r\n.\r\n", start - 2)
    if start < 6 or end < 0:
        return None
    lines = stream[start : end + 2].split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def test_replay_delivers_the_same_bytes(prun: ProfileRun) -> None:
    """The replay output's server-bound streams carry exactly the messages the server stored."""
    replayed: dict[str, list[bytes]] = collections.defaultdict(list)
    for stream in _client_streams(prun.replay_out).values():
        content = _data_content(stream)
        if content is not None:
            replayed[_message_id(content) or "?"].append(content)
    live: dict[str, list[bytes]] = collections.defaultdict(list)
    for run in prun.runs.values():
        for s in run.sent.values():
            if s.delivered is not None:
                live[s.mail.message_id].append(s.delivered)
    assert sorted(replayed) == sorted(live)
    for mid in live:
        got = sorted(_normalized(x) for x in replayed[mid])
        want = sorted(_normalized(x) for x in live[mid])
        assert got == want, mid


def test_replay_quarantines_the_same_originals(prun: ProfileRun) -> None:
    live = sorted((e.sha256, e.meta.kind) for e in _store(prun.quarantine).list())
    replayed = sorted((e.sha256, e.meta.kind) for e in _store(prun.replay_quarantine).list())
    assert live and live == replayed


def test_quarantine_cli_lists_and_exports(prun: ProfileRun, tmp_path: Path) -> None:
    """`lgwan-gateway quarantine list/show/export` on the daemon's store: one entry per removed
    part or refused message of both runs, each exported original matching its SHA-256."""
    base = [sys.executable, "-m", "gateway", "quarantine", "--dir", str(prun.quarantine)]
    listed = subprocess.run([*base, "list", "--json"], capture_output=True, text=True, timeout=30, check=True)
    entries = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    ids = {e["id"] for e in entries}
    assert ids == {q for run in prun.runs.values() for q in _run_qids(run)}
    expected = sum(
        1 if s.reply is not None else sum(p.expect[prun.profile] == NEUTRALIZED for p in s.mail.parts.values())
        for run in prun.runs.values()
        for s in run.sent.values()
    )
    assert len(entries) == expected
    for qid in sorted(ids)[:3]:
        show = subprocess.run([*base, "show", qid], capture_output=True, text=True, timeout=30, check=True)
        meta = json.loads(show.stdout)
        out = tmp_path / f"{qid}.orig"
        argv = [*base, "export", qid, "--out", str(out), "--requested-by", "auditor", "--approved-by", "admin"]
        subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
        assert hashlib.sha256(out.read_bytes()).hexdigest() == (meta.get("sha256") or meta["entry"]["sha256"])
