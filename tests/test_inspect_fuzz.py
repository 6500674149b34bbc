"""Fuzzing the whole mail inspector (hypothesis, bounded: ~60 sessions, a few seconds).

Random MIME messages built from the attachment corpus (tests/corpus.py) with dangerous parts
among clean ones (renamed or not, RFC 2231 Japanese names, no name, forwarded inside
message/rfc822, text bodies in base64 UTF-8, ISO-2022-JP and HTML), optionally mutated byte-wise,
go through the MailInspector with the real classifier (gateway.sanitize) in random TCP chunking
(MSS, reordering, duplication). Whatever the input:

- nothing but the declared behaviour happens: no exception escapes, every packet gets exactly
  one verdict (inspect_helpers.Run asserts it);
- a delivered message never carries a removed part: every original the inspector quarantined
  as neutralized is absent from what the server received (raw, and decoded by Python's own MIME
  parser), and, for unmutated messages, every attachment the corpus says is dangerous was either
  neutralized (its bytes are in no delivered part) or the message was refused (554, the end of
  DATA never reached the server).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections import Counter
from email import message_from_bytes, policy
from email.message import Message
from email.mime.application import MIMEApplication
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

import corpus
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from inspect_helpers import Run, data_content, drive, received, session

from gateway.sanitize import Classifier, MailProfile

PROFILE = MailProfile(kind="smtp", head_bytes=512)
SMALL = [s for s in corpus.SAMPLES if len(s.data) <= 16384 and s.key not in ("overlap_bomb",)]
DANGEROUS = [s for s in SMALL if s.verdict == "remove"]
CLEAN = [s for s in SMALL if s.verdict == "pass"]
DATA = {s.key: s.data for s in SMALL}
FUZZ = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no "explain": its tracing is slow here
)
QID = re.compile(rb"^\d{8}T\d{6}Z-[0-9a-f]{12}")


def classifier(profile: Any) -> Classifier:
    return Classifier(profile)


@st.composite
def attachment(draw: st.DrawFn) -> tuple[corpus.Sample, str | None]:
    s = draw(st.sampled_from(DANGEROUS) if draw(st.booleans()) else st.sampled_from(CLEAN))
    name = draw(st.sampled_from([s.filename, s.filename, "資料.pdf", "report.txt", None]))
    return s, name


def _part(s: corpus.Sample, name: str | None, n: int) -> Message:
    maintype, _, subtype = (s.declared or "application/octet-stream").partition("/")
    a = MIMEApplication(DATA[s.key], _subtype=subtype) if maintype == "application" else MIMEApplication(DATA[s.key])
    if maintype != "application":
        a.replace_header("Content-Type", s.declared)
    if name is not None:
        a.add_header("Content-Disposition", "attachment", filename=("utf-8", "", name))
    else:
        a.add_header("Content-Disposition", "attachment")
    a["X-Fuzz-Id"] = str(n)
    return a


@st.composite
def message(draw: st.DrawFn) -> tuple[bytes, list[tuple[corpus.Sample, str | None]], bool]:
    atts = draw(st.lists(attachment(), min_size=1, max_size=3))
    m = MIMEMultipart(boundary=f"=_b{draw(st.integers(0, 9999))}_=")
    m["From"] = "tanaka@example.co.jp"
    m["To"] = "soumu@city.example.lg.jp"
    m["Subject"] = "=?ISO-2022-JP?B?GyRCQEE1YT1xGyhC?="
    m["Message-ID"] = "<fuzz@example.co.jp>"
    body = draw(st.sampled_from(["utf8", "jis", "html"]))
    if body == "utf8":
        m.attach(MIMEText("本文です。詳細は http://evil.example/ を参照。\n" * 3, "plain", "utf-8"))
    elif body == "jis":
        t = MIMEText("", "plain")
        t.set_payload("こんにちは http://a.example/\n".encode("iso2022_jp").decode("ascii"))
        t.replace_header("Content-Type", 'text/plain; charset="ISO-2022-JP"')
        m.attach(t)
    else:
        m.attach(MIMEText("<p>見てね <a href='http://x.example/'>ここ</a></p>\n", "html", "utf-8"))
    forward = draw(st.booleans()) and len(atts) > 1
    for n, (s, name) in enumerate(atts):
        part = _part(s, name, n)
        if forward and n == len(atts) - 1:
            inner = MIMEMultipart(boundary="=_inner_=")
            inner["Subject"] = "Fwd"
            inner.attach(MIMEText("forwarded\n", "plain", "us-ascii"))
            inner.attach(part)
            m.attach(MIMEMessage(inner))
        else:
            m.attach(part)
    raw = m.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    mutated = False
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
        pos = draw(st.integers(0, len(raw) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete", "dup_line"]))
        if op == "flip":
            raw = raw[:pos] + bytes([raw[pos] ^ (1 << draw(st.integers(0, 6)))]) + raw[pos + 1 :]
        elif op == "insert":
            raw = raw[:pos] + draw(st.sampled_from([b"\r\n", b"--", b"=", b"\n", b"\r", b"=?", b";"])) + raw[pos:]
        elif op == "delete":
            raw = raw[:pos] + raw[pos + draw(st.integers(1, 40)) :]
        else:
            a = raw.rfind(b"\r\n", 0, pos) + 2
            b = raw.find(b"\r\n", pos)
            if b > 0:
                raw = raw[:b] + b"\r\n" + raw[a:b] + raw[b:]
        mutated = True
    if not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    return raw, atts, mutated


def stuffed(raw: bytes) -> bytes:
    """The DATA stream: dot-stuffed as an SMTP client sends it."""
    return re.sub(rb"(^|\r\n)\.", rb"\1..", raw)


def leaves(content: bytes) -> list[Message]:
    msg = message_from_bytes(content, policy=policy.compat32)
    return [p for p in msg.walk() if not p.is_multipart() and p.get_content_type() != "message/rfc822"]


def decoded(p: Message) -> bytes:
    payload = p.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def delivered(run: Run) -> bytes | None:
    """The DATA content the server committed, or None when it did not get the end of DATA."""
    got = received(run, "c")
    start = got.find(b"DATA\r\n")
    if start < 0 or got.find(b"\r\n.\r\n", start) < 0:
        return None
    return data_content(got)


@FUZZ
@given(
    msg=message(),
    mss=st.sampled_from([23, 200, 536, 1460]),
    shuffle=st.booleans(),
    dup=st.sampled_from([0.0, 0.2]),
    seed=st.integers(0, 1 << 16),
)
def test_no_removed_part_is_delivered(
    msg: tuple[bytes, list[tuple[corpus.Sample, str | None]], bool], mss: int, shuffle: bool, dup: float, seed: int
) -> None:
    raw, atts, mutated = msg
    run = drive(session(stuffed(raw)), mss=mss, shuffle=shuffle, dup=dup, seed=seed, profile=PROFILE,
                classifier=classifier)  # fmt: skip
    missing = set(run.sent) - set(run.finals)
    assert not missing, f"packets without a verdict: {sorted(missing)}"
    content = delivered(run)
    refused = any(i.toward == "client" for i in run.injected)
    if content is None:
        return  # refused (or the mutation broke the session): nothing was committed
    assert not refused, "the server got the end of DATA of a refused message"
    if not mutated:
        assert len(content) == len(raw)
    parts = leaves(content)
    bodies = [decoded(p) for p in parts]
    passed = {
        e["fileinfo"]["sha256"] for e in run.events if e["event_type"] == "file" and e["fileinfo"]["verdict"] == "pass"
    }
    removed = Counter(o for o, m in run.store.items.values() if m.kind == "part")
    sent_bodies = [decoded(p) for p in leaves(raw)]
    for orig, n in removed.items():
        if len(orig) < 32 or hashlib.sha256(orig).hexdigest() in passed:
            continue  # (the same bytes under a harmless name may pass: a name trick is in the name)
        # raw (7bit) and base64 forms: each removed part took one occurrence out of the stream
        # (a mutated header can make another part's raw text equal to a removed one)
        for form in (orig, base64.encodebytes(orig).replace(b"\n", b"\r\n")):
            assert content.count(form) <= max(0, raw.count(form) - n), "a removed part was delivered"
        # decoded as a mail client does: as many fewer copies (another part may hold the same bytes)
        before = sum(b.count(orig) for b in sent_bodies)
        assert sum(b.count(orig) for b in bodies) <= max(0, before - n), "a removed part was delivered (decoded)"
    if mutated:
        return
    # the corpus' ground truth: a dangerous attachment under its own name is never delivered
    uses = Counter(DATA[s.key] for s, _ in atts)  # the same bytes under another name may pass
    for n, (s, name) in enumerate(atts):
        if s.verdict != "remove" or name != s.filename:
            continue
        for p, b in zip(parts, bodies, strict=True):
            assert p.get("X-Fuzz-Id") != str(n) or b != DATA[s.key], f"{s.key} delivered as {name!r}"
            if uses[DATA[s.key]] == 1:
                assert DATA[s.key] not in b, f"{s.key} delivered"
    notices = [b for p, b in zip(parts, bodies, strict=True) if p.get_content_type() == "text/plain" and QID.match(b)]
    neutralized = [e for e in run.events if e["event_type"] == "file" and e["fileinfo"]["verdict"] == "neutralized"]
    assert len(notices) == len(neutralized)
    ids = {e["fileinfo"]["quarantine_id"] for e in neutralized}
    assert {QID.match(b).group().decode() for b in notices} == ids  # type: ignore[union-attr]
