"""MailInspector playbooks: scapy-built SMTP sessions (both directions) in, commands out.

Every test checks the invariant "one final verdict per packet" (Run.execute asserts no second
verdict; `all_final` that none is missing) and rebuilds what each receiver got."""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Callable
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

import pytest
from inspect_helpers import FakeProfile, data_content, drive, parse, received, session
from scapy.layers.inet import IP, TCP

from gateway.inspect.rewrite import BodyFiller, TextSanitizer, html_to_text_headers, neutralize_headers

EXE = b"MZ\x90\x00" + bytes(range(256)) * 12
DOCM = b"PK\x03\x04" + b"word/vbaProject.bin" + b"\x00" * 3000


def mail(
    *attachments: tuple[bytes, str], html: str | None = None, text: str = "本文です see http://example.com/x\n"
) -> bytes:
    m = MIMEMultipart()
    m["Subject"] = "=?UTF-8?B?5re75LuY?="
    m["From"] = "a@example.com"
    m["To"] = "b@lg.example.jp"
    m["Message-ID"] = "<1@example.com>"
    m.attach(MIMEText(text, "plain", "utf-8"))
    if html is not None:
        m.attach(MIMEText(html, "html", "us-ascii"))
    for data, name in attachments:
        a = MIMEApplication(data, Name=name)
        a["Content-Disposition"] = f'attachment; filename="{name}"'
        m.attach(a)
    return m.as_bytes().replace(b"\n", b"\r\n")


def all_final(run) -> None:  # type: ignore[no-untyped-def]
    missing = set(run.sent) - set(run.finals)
    assert not missing, f"packets without a verdict: {sorted(missing)}"


CLEAN = mail(text="plain text only, no links\n")


@pytest.mark.parametrize("mss", [1460, 50, 7])
def test_clean_mail_passes_byte_identical(mss: int) -> None:
    turns = session(CLEAN)
    run = drive(turns, mss=mss)
    all_final(run)
    assert not run.injected
    client = b"".join(d for s, d in turns if s == "c")
    assert received(run, "c") == client
    server = received(run, "s")
    assert b"250 XXXXXXXA\r\n" in server and b"STARTTLS" not in server  # EHLO masking
    smtp = [e for e in run.events if e["event_type"] == "smtp"]
    assert [e["email"]["verdict"] for e in smtp] == ["delivered"]
    assert smtp[0]["email"]["subject"] == "添付"
    assert all(e["fileinfo"]["verdict"] == "pass" for e in run.events if e["event_type"] == "file")


@pytest.mark.parametrize(
    "mss,shuffle,dup,seed", [(1460, False, 0.0, 0), (50, False, 0.0, 1), (50, True, 0.3, 2), (13, True, 0.5, 3)]
)
def test_exe_neutralized_same_length(mss: int, shuffle: bool, dup: float, seed: int) -> None:
    msg = mail((EXE, "請求書.exe"))
    run = drive(session(msg), mss=mss, shuffle=shuffle, dup=dup, seed=seed)
    all_final(run)
    assert not run.injected
    content = data_content(received(run, "c"))
    assert len(content) == len(msg)
    assert b"TVqQ" not in content  # base64 of the MZ header
    parsed = parse(content)
    parts = list(parsed.iter_attachments())
    assert len(parts) == 1
    att = parts[0]
    assert att.get_content_type() == "text/plain"
    notice = att.get_payload(decode=True)
    assert b"removed" in notice and b"EXE" not in notice
    assert EXE[:64] not in notice
    # the original is in quarantine, whole, and named in the events
    ((qid, (orig, meta)),) = run.store.items.items()
    assert orig == EXE and meta.kind == "part" and meta.filename == "請求書.exe"
    assert att.get_filename() in (f"removed-{qid}.txt", f"{qid}.txt", "removed.txt", "rm.txt")
    files = [e for e in run.events if e["event_type"] == "file"]
    exe = next(e for e in files if e["fileinfo"].get("filename") == "請求書.exe")
    assert exe["fileinfo"]["verdict"] == "neutralized" and exe["fileinfo"]["quarantine_id"] == qid
    smtp = next(e for e in run.events if e["event_type"] == "smtp")
    assert smtp["email"]["verdict"] == "sanitized" and "DEL_ATTACH" in smtp["email"]["reason"]
    # the text part (UTF-8 in base64) stays readable, its link defanged
    body = next(parsed.iter_parts()).get_content()
    assert "本文です" in body and "hxxp://example.com/x" in body and "http:" not in body
    assert "REP_LINK" in smtp["email"]["reason"]


def test_retransmission_after_rewrite_carries_rewritten_bytes() -> None:
    msg = mail((EXE, "a.exe"))
    run = drive(session(msg), mss=200, retransmit=True)
    all_final(run)
    content = data_content(received(run, "c"))  # asserts every copy of a byte agrees
    assert b"TVqQ" not in content


def test_docm_needs_whole_part_and_is_refused_with_554() -> None:
    msg = mail((DOCM, "report.docm"))
    turns = session(msg)
    run = drive(turns, mss=100)
    all_final(run)
    to_client = [i for i in run.injected if i.toward == "client"]
    to_server = [i for i in run.injected if i.toward == "server"]
    assert len(to_client) == 1 and len(to_server) == 1
    reply = IP(to_client[0].packet)
    assert bytes(reply[TCP].payload).startswith(b"554 5.7.1 ")
    assert reply[TCP].flags & 0x01  # FIN: the session ends here
    assert IP(to_server[0].packet)[TCP].flags & 0x04  # RST
    # the server never saw the end of DATA
    got = received(run, "c")
    assert b"\r\n.\r\n" not in got[got.index(b"DATA\r\n") :]
    # the whole original message is in quarantine
    kinds = [m.kind for _, m in run.store.items.values()]
    assert "message" in kinds
    orig = next(o for o, m in run.store.items.values() if m.kind == "message")
    assert orig == msg
    smtp = next(e for e in run.events if e["event_type"] == "smtp")
    assert smtp["email"]["verdict"] == "refused"


def test_seq_of_injected_reply_continues_the_server_stream() -> None:
    msg = mail((DOCM, "r.docm"))
    turns = session(msg)
    run = drive(turns, mss=1460, seed=5)
    server_bytes = sum(len(d) for s, d in turns[:9] if s == "s")  # up to the 354
    syn_ack = next(IP(p) for d, _, pl, p in run.sent.values() if d == "s" and not pl)
    reply = IP(next(i for i in run.injected if i.toward == "client").packet)
    assert reply[TCP].seq == (syn_ack[TCP].seq + 1 + server_bytes) % (1 << 32)
    assert reply[TCP].sport == 25 and reply[IP].src == "198.18.22.25"


def test_smuggling_refused() -> None:
    msg = b"Subject: hi\r\n\r\nbody\n.\r\nMAIL FROM:<evil@x>\r\n"
    run = drive(session(msg), mss=10)
    all_final(run)
    assert any(bytes(IP(i.packet)[TCP].payload).startswith(b"554") for i in run.injected)
    got = received(run, "c")
    assert b"\r\n.\r\n" not in got[got.index(b"DATA\r\n") :]


def test_html_to_text_and_links() -> None:
    html = (
        '<html><head><script>alert("x")</script></head>'
        '<body><a href="http://evil.example/">click</a> hi</body></html>\n'
    )
    msg = mail(html=html)
    run = drive(session(msg), mss=30)
    all_final(run)
    content = data_content(received(run, "c"))
    assert len(content) == len(msg)
    parsed = parse(content)
    parts = list(parsed.iter_parts())
    assert parts[1].get_content_type() == "text/plain"
    text = parts[1].get_content()
    assert "<" not in text and "alert" not in text and "click" in text and "hi" in text
    smtp = next(e for e in run.events if e["event_type"] == "smtp")
    assert "CHG_TEXT" in smtp["email"]["reason"]


def test_html_text_that_cannot_be_converted_is_refused() -> None:
    """An HTML message text passes the classifier only because it is converted in place; in
    UTF-16 it cannot be rewritten byte-wise, so it must not go out as HTML: refused."""
    m = MIMEMultipart("alternative")
    m["Subject"] = "x"
    m.attach(MIMEText("hi\n", "plain", "us-ascii"))
    m.attach(MIMEText('<html><body><a href="http://evil.example/">click</a></body></html>\n', "html", "utf-16"))
    run = drive(session(m.as_bytes().replace(b"\n", b"\r\n")))
    all_final(run)
    smtp = next(e for e in run.events if e["event_type"] == "smtp")
    assert smtp["email"]["verdict"] == "refused" and "HTML" in smtp["email"]["reason"]


def test_near_delimiter_refused_by_profile() -> None:
    msg = b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\nx\r\n--bX\r\n\r\ny\r\n--b--\r\n'
    run = drive(session(msg), profile=FakeProfile(refuse_on_defects=("near-delimiter",)))
    all_final(run)
    assert run.injected


# --- rewrite units ----------------------------------------------------------------------------
def test_neutralize_headers_keeps_line_ends_and_length() -> None:
    block = (
        b'Content-Type: application/octet-stream;\r\n\tname="invoice.exe"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment;\r\n filename="invoice.exe"\r\n'
    )
    new = neutralize_headers(block, message_level=False)
    assert new is not None and len(new) == len(block)
    assert [i for i, b in enumerate(new) if b in b"\r\n"] == [i for i, b in enumerate(block) if b in b"\r\n"]
    assert b"Content-Transfer-Encoding: base64" in new and b"exe" not in new
    from email import message_from_bytes

    m = message_from_bytes(new + b"\r\n" + b"QUJD\r\n")
    assert m.get_content_type() == "text/plain" and m.get_filename() == "removed.txt"


def test_neutralized_name_stays_removed_txt_over_leftover_continuation_lines() -> None:
    """RFC 2231 continuations leave more lines than the new fields need: the padding parameters
    on them must not run into `name=removed.txt` (found by tests/test_e2e_mail.py: a MUA read
    the name "removed.txt x=xxxx")."""
    block = (
        b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment;"
        b" filename*0*=ISO-2022-JP''%1B%24B%35%44%3B%76%4F%3F%21%4A%42%68%23%33%32%73%21%4B%1B%28%42;\r\n"
        b" filename*1*=.txt\r\n"
    )
    new = neutralize_headers(block, message_level=False)
    assert new is not None and len(new) == len(block)
    from email import message_from_bytes

    m = message_from_bytes(new + b"\r\n" + b"QUJD\r\n")
    assert m.get_content_type() == "text/plain" and m.get_filename() == "removed.txt", new
    assert m.get_param("name") == "removed.txt"


def test_neutralize_headers_message_level_keeps_envelope_headers() -> None:
    block = b"From: a@x\r\nSubject: s\r\nContent-Type: application/x-msdownload\r\n"
    new = neutralize_headers(block, message_level=True)
    assert new is not None and new.startswith(b"From: a@x\r\nSubject: s\r\n")
    assert neutralize_headers(b"Content-Type: a/b\r\n", message_level=True) is None  # no room: refuse


def test_body_filler_base64_decodes_to_notice_any_chunking() -> None:
    raw = base64.encodebytes(EXE).replace(b"\n", b"\r\n")
    f = BodyFiller("base64", "removed: x")
    whole = f.fill(raw)
    g = BodyFiller("base64", "removed: x")
    pieces = b"".join(g.fill(raw[i : i + 7]) for i in range(0, len(raw), 7))
    assert whole == pieces and len(whole) == len(raw)
    assert base64.b64decode(whole.replace(b"\r\n", b"")).startswith(b"removed: x")


def test_text_sanitizer_split_http_and_tags() -> None:
    s = TextSanitizer(html=True, links=True)
    out = s.feed(b"<b>x</b> ht") + s.feed(b"tp://a <i") + s.feed(b">y") + s.final()
    assert out == b"   x     hxxp://a    y"


def test_html_header_to_text() -> None:
    assert (
        html_to_text_headers(b"Content-Type: text/html; charset=utf-8\r\n")
        == b"Content-Type:text/plain; charset=utf-8\r\n"
    )


def test_events_match_the_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from gateway.io.eventlog import load_schema

    schema = load_schema()
    runs = [drive(session(mail((EXE, "a.exe"))), mss=100), drive(session(mail((DOCM, "b.docm"))), mss=100)]
    events = [e for r in runs for e in r.events]
    assert {e["event_type"] for e in events} == {"smtp", "file"}
    for e in events:
        jsonschema.validate(e, schema)


# --- a colon-less line in a header block -----------------------------------------------------------
_EXE_B64 = base64.encodebytes(b"MZ" + b"\0" * 58 + (64).to_bytes(4, "little") + b"PE\0\0" + b"\0" * 200)


def _exe_message(junk_header_line: bytes) -> bytes:
    exe = _EXE_B64
    return (
        b"From: a@example.com\r\nSubject: invoice\r\n" + junk_header_line + b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nplease see the invoice\r\n"
        b'--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="invoice.exe"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + exe.replace(b"\n", b"\r\n") + b"--b--\r\n"
    )


@pytest.mark.parametrize("junk", [b"", b"X-Mailer junk without a colon\r\n"])
def test_non_header_line_in_message_headers_cannot_hide_an_attachment(junk: bytes) -> None:
    """A line without a colon ends the header block for the parser (as for Python's email): the
    multipart Content-Type after it would be body text to us but a structure to a reader that
    skips the line, with an exe in it. The real default profile refuses the message instead."""
    from gateway.sanitize import Classifier, MailProfile

    run = drive(session(_exe_message(junk)), profile=MailProfile(kind="smtp"), classifier=Classifier)  # type: ignore[arg-type]
    all_final(run)
    smtp = next(e for e in run.events if e["event_type"] == "smtp")
    if not junk:
        assert smtp["email"]["verdict"] == "sanitized"  # the exe neutralized in place
        assert _EXE_B64.split(b"\n")[0] not in data_content(received(run, "c"))
    else:
        assert smtp["email"]["verdict"] == "refused"
        assert "missing-header-body-separator" in smtp["email"]["reason"]
        assert run.injected  # the client got the 554, the server a reset
        assert b"\r\n.\r\n" not in received(run, "c")  # the server never saw the end of DATA


# --- quarantine answered late (the daemon's writer thread) -------------------------------------------
@pytest.mark.parametrize("retransmit", [False, True], ids=["once", "retransmitted"])
@pytest.mark.parametrize("defer", [1, 2, 5, 40])
@pytest.mark.parametrize("case", ["exe", "docm_refused", "two_exes", "clean"])
def test_quarantine_answered_late_changes_nothing(case: str, defer: int, retransmit: bool) -> None:
    """The live daemon stores originals on a writer thread, so the inspector hears `quarantined`
    packets later than replay's store answers. Delivered bytes, injected packets and events
    (timestamps included) must be those of the immediate answer; the end of DATA must wait for
    the answer (the server commits nothing before the original is durable)."""
    parts = {
        "exe": [(EXE, "請求書.exe")],
        "docm_refused": [(DOCM, "m.docm")],
        "two_exes": [(EXE, "a.exe"), (EXE, "b.exe")],
        "clean": [],
    }[case]
    msg = mail(*parts, text="see attached\n")

    def counting_qids() -> Callable[[int], str]:  # the same ids in both runs
        n = itertools.count(1)
        return lambda ts_us: time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ts_us / 1e6)) + f"-{next(n):012x}"

    # retransmitted: the client sends every segment again (the held end of DATA too), so the
    # answer comes after later packets of the connection
    now = drive(session(msg), mss=536, retransmit=retransmit, new_qid=counting_qids())
    late = drive(session(msg), mss=536, retransmit=retransmit, defer_quarantine=defer, new_qid=counting_qids())
    all_final(now)
    all_final(late)
    assert received(late, "c") == received(now, "c")
    assert received(late, "s") == received(now, "s")

    # the 554 and the server's RST are the same; the RSTs answering client segments after the 554
    # depend on how many came after it (with a late answer they came before it and were dropped)
    def refusal(run: Any) -> list[bytes]:
        out = []
        for i in run.injected:
            t = IP(i.packet)[TCP]
            if not (i.toward == "client" and t.flags.R and not bytes(t.payload)):
                out.append(i.packet)
        return out

    assert refusal(late) == refusal(now)
    assert late.events == now.events
    if case != "clean":
        end = next(pid for pid, (d, _, p, _) in late.sent.items() if d == "c" and p.endswith(b"\r\n.\r\n"))
        stored = max(i for i, (what, _) in enumerate(late.order) if what == "stored")
        if case == "docm_refused":  # withheld for good: the client got the 554
            assert ("forward", end) not in late.order and late.injected
        else:  # the end of DATA went on only after the last original was stored
            assert late.order.index(("forward", end)) > stored


def test_memory_budget_refuses_and_gives_everything_back() -> None:
    """Message contents and whole parts are charged to the inspector's one memory budget (with
    the reassembly buffers): a message that finds it spent is refused (554, nothing released
    past the budget), a flow whose segments find it spent is reset; drive() checks that every
    byte goes back to the budget. Budgets around twice the MSS times k catch either the
    reassembler's reserve or the message content's first."""
    from gateway.inspect import InspectConfig

    body = ("x" * 76 + "\r\n") * 1300  # ~100 KB of text
    msg = b"From: a@example.com\r\nSubject: big\r\n\r\n" + body.encode()
    ours = 0
    for budget in range(30_000, 42_000, 500):
        run = drive(session(msg), mss=1000, config=InspectConfig(max_memory_bytes=budget))
        got = received(run, "c")
        assert b"\r\n.\r\n" not in got[got.index(b"DATA\r\n") :], budget  # the server commits nothing
        if run.insp.counters.get("memory_limit"):
            ours += 1
            reply = bytes(IP(next(i for i in run.injected if i.toward == "client").packet)[TCP].payload)
            assert reply.startswith(b"554 5.7.1 ") and b"memory limit" in reply, reply
            smtp = next(e for e in run.events if e["event_type"] == "smtp")
            assert smtp["email"]["verdict"] == "refused"
            (kept,) = run.store.items.values()  # what had come is quarantined as the refused message
            assert msg.startswith(kept[0]) and kept[1].kind == "message"
    assert ours, "no budget in the range hit the message content's charge first"
