"""uuencoded files inside text parts (gateway/sanitize/uuencode.py): decoded like a mail client
does and classified as members, so a text part cannot carry an executable past the allowlist."""

from __future__ import annotations

import base64
import binascii

import corpus
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from inspect_helpers import data_content, drive, received, session

from gateway.sanitize import Classifier, MailProfile
from gateway.sanitize.base import Budget, LimitHit
from gateway.sanitize.uuencode import MAX_BLOCKS, blocks

PROFILE = MailProfile(kind="smtp")


def budget() -> Budget:
    return Budget(PROFILE)


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=400), st.booleans(), st.sampled_from([b"\r\n", b"\n"]))
def test_blocks_decode_what_was_encoded(data: bytes, base64_form: bool, eol: bytes) -> None:
    text = corpus.uu_text(data, "f.bin", base64_form=base64_form).replace(b"\r\n", eol)
    assert list(blocks(text, budget(), "t")) == [("f.bin", data)]


def test_lenient_like_a_client() -> None:
    exe = corpus.pe_exe()
    text = corpus.uu_text(exe, "a b.exe")
    # no `end` line, trailing blanks and junk after each line's counted characters
    lines = text.replace(b"`\r\nend\r\n", b"").split(b"\r\n")
    junk = [ln + b"  xx" if ln[:1] == b"M" else ln for ln in lines]  # "M": a full 45-byte line
    for variant in (lines, junk):
        (name, data), *_ = blocks(b"\r\n".join(variant), budget(), "t")
        # without `end` the text after the block decodes as more lines; the file's bytes come first
        assert name == "a b.exe" and data.startswith(exe)


def test_two_blocks_and_the_limits() -> None:
    two = corpus.uu_text(b"one", "1.txt") + corpus.uu_text(b"two", "2.txt")
    assert list(blocks(two, budget(), "t")) == [("1.txt", b"one"), ("2.txt", b"two")]
    many = b"".join(corpus.uu_text(b"x", f"{i}.txt") for i in range(MAX_BLOCKS + 1))
    with pytest.raises(LimitHit, match="uuencoded blocks"):
        list(blocks(many, budget(), "t"))
    small = Budget(MailProfile(kind="smtp", archive_max_total_bytes=1000))
    with pytest.raises(LimitHit, match="archive_max_total_bytes"):
        list(blocks(corpus.uu_text(bytes(5000), "big.bin"), small, "t"))


def test_plain_text_that_only_mentions_begin_passes() -> None:
    c = Classifier(PROFILE)
    text = b"We begin at 9.\r\nbegin with the agenda\r\nend\r\n"
    assert c.classify_full(text, ["agenda.txt"], "text/plain").verdict == "pass"


def _message(part: bytes) -> bytes:
    return (
        b"From: a@example.com\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nsee the attachment\r\n" + part + b"--b--\r\n"
    )


@pytest.mark.parametrize("form", ["x-uuencode part", "inline in a text attachment", "inline in the message text"])
def test_inspector_removes_a_uuencoded_exe(form: str) -> None:
    exe = corpus.pe_exe()
    uu = corpus.uu_text(exe, "invoice.exe")
    if form == "x-uuencode part":
        part = b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n" + uu
        msg = _message(part)
    elif form == "inline in a text attachment":
        part = b'--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename="notes.txt"\r\n\r\n' + uu
        msg = _message(part)
    else:
        msg = b"From: a@example.com\r\nSubject: x\r\nContent-Type: text/plain\r\n\r\n" + uu
    run = drive(session(msg), profile=PROFILE, classifier=Classifier)  # type: ignore[arg-type]
    smtp = next(e for e in run.events if e["event_type"] == "smtp")
    assert smtp["email"]["verdict"] in ("sanitized", "refused"), smtp
    delivered = data_content(received(run, "c")) if smtp["email"]["verdict"] == "sanitized" else b""
    first_line = binascii.b2a_uu(exe[:45]).rstrip(b"\n")
    assert first_line not in delivered and base64.b64encode(exe[:30]) not in delivered
    files = [e for e in run.events if e["event_type"] == "file"]
    assert any("invoice.exe" in (f["fileinfo"].get("reason") or "") for f in files), files
