"""The quarantine id is known when the inspector decides: it is in the neutralized part's notice
(first, so that a truncated notice still carries it), in the 554 of a refused message, in the
events, and the store keeps the original under exactly that id."""

from __future__ import annotations

import base64
import quopri
import re
from pathlib import Path
from typing import Any

import pytest
from inspect_helpers import MemoryStore, Original, data_content, drive, parse, received, session
from scapy.layers.inet import IP, TCP

from gateway.inspect.mail import with_quarantine_id
from gateway.io.quarantine import (
    ID_RE,
    QuarantineError,
    QuarantineIdInUse,
    QuarantineMeta,
    QuarantineStore,
    new_id,
)
from gateway.mailevents import FlowInfo

EXE = b"MZ\x90\x00" + bytes(range(256)) * 12
DOCM = b"PK\x03\x04" + b"word/vbaProject.bin" + b"\x00" * 3000
QID = re.compile(rb"\d{8}T\d{6}Z-[0-9a-f]{12}")


def one_part(body: bytes, cte: str, name: str = "x.exe") -> bytes:
    return (
        b"From: a@example.com\r\nTo: b@lg.example.jp\r\nSubject: t\r\nMessage-ID: <q@x>\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="BB"\r\n\r\n'
        b"--BB\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        b'--BB\r\nContent-Type: application/octet-stream; name="' + name.encode() + b'"\r\n'
        b"Content-Transfer-Encoding: " + cte.encode() + b"\r\n"
        b'Content-Disposition: attachment; filename="' + name.encode() + b'"\r\n\r\n' + body + b"\r\n--BB--\r\n"
    )


def _b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n").rstrip(b"\r\n")


def _qp(data: bytes) -> bytes:
    return quopri.encodestring(data).replace(b"\n", b"\r\n").rstrip(b"\r\n")


@pytest.mark.parametrize(
    "cte,body",
    [
        ("base64", _b64(EXE)),
        ("quoted-printable", _qp(EXE.translate(None, b"\r\n."))),
        ("8bit", b"MZ" + b"A" * 600 + b"\r\n" + b"B" * 300),
    ],
)
@pytest.mark.parametrize("mss", [1460, 37])
def test_notice_names_the_stored_id(cte: str, body: bytes, mss: int) -> None:
    msg = one_part(body, cte)
    run = drive(session(msg), mss=mss)
    content = data_content(received(run, "c"))
    assert len(content) == len(msg)
    att = list(parse(content).iter_attachments())[-1]
    notice = att.get_payload(decode=True)
    ((qid, (orig, _)),) = run.store.items.items()
    assert notice.startswith(f"{qid}: lgwan-gateway removed".encode()), notice[:80]
    assert b"removed" in notice
    ev = next(e for e in run.events if e["event_type"] == "file" and e["fileinfo"]["verdict"] == "neutralized")
    assert ev["fileinfo"]["quarantine_id"] == qid
    smtp = next(e for e in run.events if e["event_type"] == "smtp")
    assert smtp["email"]["quarantine_ids"] == [qid]
    assert orig.startswith(b"MZ")


@pytest.mark.parametrize("n", [8, 24, 40, 44, 80])
def test_short_part_carries_the_id_first(n: int) -> None:
    """A part shorter than the notice: the truncated notice starts with (as much as fits of) the id."""
    body = _b64(b"MZ" + bytes(n * 3 // 4 - 2))
    assert len(body.replace(b"\r\n", b"")) == n
    run = drive(session(one_part(body, "base64")), mss=50)
    content = data_content(received(run, "c"))
    notice = list(parse(content).iter_attachments())[-1].get_payload(decode=True)
    ((qid, _),) = run.store.items.items()
    full = f"{qid}: ".encode()
    assert notice == full[: len(notice)] or notice.startswith(full)
    if n >= 40:  # 30 decoded bytes: the whole id fits
        assert notice.startswith(qid.encode())


def test_refusal_names_the_id_in_554_and_event() -> None:
    run = drive(session(one_part(_b64(DOCM), "base64", "r.docm")), mss=100)
    ((qid, (_, meta)),) = run.store.items.items()
    assert meta.kind == "message"
    reply = bytes(IP(next(i for i in run.injected if i.toward == "client").packet)[TCP].payload)
    assert reply.startswith(b"554 5.7.1 ") and f"(quarantine id {qid})".encode() in reply and len(reply) <= 512
    smtp = next(e for e in run.events if e["event_type"] == "smtp")
    assert smtp["email"]["verdict"] == "refused" and smtp["email"]["quarantine_ids"] == [qid]
    assert qid not in smtp["email"]["reason"]  # the reason stays comparable between runs


def test_long_reason_is_cut_so_the_id_fits() -> None:
    qid = new_id(1.8e9)
    text = with_quarantine_id("x" * 1000, qid)
    assert len(text) == 400 and text.endswith(f"(quarantine id {qid})")
    assert with_quarantine_id("macro", None) == "macro"


class FailingStore(MemoryStore):
    def put(self, original: Original, meta: Any, qid: str | None = None, sha256: str | None = None) -> str:
        raise QuarantineIdInUse("disk says no")


def test_store_failure_refuses_and_554_names_no_id() -> None:
    run = drive(session(one_part(_b64(EXE), "base64")), mss=200, store=FailingStore())
    reply = bytes(IP(next(i for i in run.injected if i.toward == "client").packet)[TCP].payload)
    assert reply.startswith(b"554 5.7.1 ") and b"quarantine id" not in reply
    got = received(run, "c")
    assert b"\r\n.\r\n" not in got[got.index(b"DATA\r\n") :]
    smtp = next(e for e in run.events if e["event_type"] == "smtp")
    assert smtp["email"]["verdict"] == "refused" and smtp["email"]["quarantine_ids"] == []
    assert all("quarantine_id" not in e["fileinfo"] for e in run.events if e["event_type"] == "file")


class RenamingStore(MemoryStore):
    def put(self, original: Original, meta: Any, qid: str | None = None, sha256: str | None = None) -> str:
        return super().put(original, meta, None, sha256)  # ignores the id it was given


def test_store_that_ignores_the_id_is_a_failure() -> None:
    run = drive(session(one_part(_b64(EXE), "base64")), mss=200, store=RenamingStore())
    assert run.injected  # the notice would name an id that does not exist: refused instead


def _meta() -> QuarantineMeta:
    flow = FlowInfo(1, "198.19.40.25", 40000, "198.18.20.25", 25)
    return QuarantineMeta(kind="part", flow=flow, reason="executable", action="neutralized")


def test_store_keeps_a_given_id_and_never_replaces(tmp_path: Path) -> None:
    store = QuarantineStore(tmp_path)
    qid = new_id(1.8e9)
    assert ID_RE.match(qid) and qid.startswith("20270115T")
    assert store.put(b"first", _meta(), qid=qid) == qid
    with pytest.raises(QuarantineIdInUse):
        store.put(b"second", _meta(), qid=qid)
    assert store.read_original(qid) == b"first"
    assert store.verify().ok
    assert not list(tmp_path.rglob(".tmp-*"))
    with pytest.raises(QuarantineError):
        store.put(b"x", _meta(), qid="../../etc/passwd")


def test_inspector_with_a_real_store(tmp_path: Path) -> None:
    store = QuarantineStore(tmp_path)
    run = drive(session(one_part(_b64(EXE), "base64")), mss=300, store=store)
    content = data_content(received(run, "c"))
    notice = list(parse(content).iter_attachments())[-1].get_payload(decode=True)
    (entry,) = store.list()
    assert QID.search(notice).group().decode() == entry.id  # type: ignore[union-attr]
    assert store.read_original(entry.id) == EXE


def test_ids_are_unique() -> None:
    assert len({new_id(1.8e9) for _ in range(2000)}) == 2000


def test_names_carry_the_id_where_they_fit() -> None:
    from gateway.inspect.rewrite import neutralize_headers

    qid = new_id(1.8e9)
    block = (
        b'Content-Type: application/octet-stream;\r\n name="=?ISO-2022-JP?B?GyRCQEE1YT1xGyhC?=.exe"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment;\r\n filename="=?ISO-2022-JP?B?GyRCQEE1YT1xGyhC?=.exe"\r\n'
    )
    new = neutralize_headers(block, False, qid)
    assert new is not None and len(new) == len(block)
    m = parse(new + b"\r\nQUJD\r\n")
    assert m.get_filename() in (f"removed-{qid}.txt", f"{qid}.txt")
    assert m.get_param("name") in (f"removed-{qid}.txt", f"{qid}.txt")
    short = b"Content-Type: application/x-msdownload\r\nContent-Transfer-Encoding: base64\r\n"
    new = neutralize_headers(short, False, qid)
    assert new is not None and parse(new + b"\r\nQUJD\r\n").get_content_type() == "text/plain"  # no room: no name


def test_tiny_part_names_the_id_in_its_filename() -> None:
    """A part whose body cannot hold the id (8 base64 characters) still names it."""
    run = drive(session(one_part(_b64(b"MZ" + bytes(4)), "base64", "請求書のご送付について.exe")), mss=50)
    content = data_content(received(run, "c"))
    ((qid, _),) = run.store.items.items()
    att = list(parse(content).iter_attachments())[-1]
    assert qid in (att.get_filename() or "")
    assert not att.get_payload(decode=True).startswith(qid.encode())  # the body alone could not
