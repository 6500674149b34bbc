"""Body 無害化 of base64 text parts and ISO-2022-JP text (gateway.inspect.textsan): same length,
line structure kept, the decoded result equals the plain TextSanitizer's on the decoded text,
whatever the chunking; irregular base64 is blanked from the irregularity on."""

from __future__ import annotations

import base64
import binascii
import itertools
import quopri
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.inspect.rewrite import TextSanitizer
from gateway.inspect.textsan import (
    Base64TextSanitizer,
    Iso2022Guard,
    QuotedPrintableTextSanitizer,
    TextRewriter,
    is_iso2022,
    text_rewriter,
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference(decoded: bytes, html: bool = True, links: bool = True) -> bytes:
    s = TextSanitizer(html, links)
    return s.feed(decoded) + s.final()


def encode(data: bytes, line: int = 76, eol: bytes = b"\r\n") -> bytes:
    enc = base64.b64encode(data)
    return eol.join(enc[i : i + line] for i in range(0, len(enc), line)) + eol


def run(san: TextRewriter, raw: bytes, cuts: list[int]) -> bytes:
    """Feed raw cut at the given positions, then final()."""
    edges = [0, *sorted(c for c in set(cuts) if 0 < c < len(raw)), len(raw)]
    return b"".join(san.feed(raw[a:b]) for a, b in itertools.pairwise(edges)) + san.final()


def eols(b: bytes) -> list[int]:
    return [i for i, c in enumerate(b) if c in b"\r\n"]


TEXT = st.lists(
    st.sampled_from(
        [b"http://evil.example/x ", b"HTTP", b"ht", b"tp", b"<a href='x'>", b"</a>", b"<script>x</script>",
         "本文です、".encode(), b"\r\n", b"plain ", b"<", b">", b"h", b"Http", b"=", b"\xff"]
    ),
    max_size=40,
).map(b"".join)  # fmt: skip


@FUZZ
@given(TEXT, st.sampled_from([76, 64, 4, 5, 13, 1]), st.sampled_from([b"\r\n", b"\n"]), st.lists(st.integers(0, 800)))
def test_base64_same_as_decoded_sanitizing(text: bytes, line: int, eol: bytes, cuts: list[int]) -> None:
    raw = encode(text, line, eol)
    san = Base64TextSanitizer(TextSanitizer(True, True))
    out = run(san, raw, cuts)
    assert len(out) == len(raw) and eols(out) == eols(raw)
    assert not san.irregular
    assert base64.b64decode(out.replace(b"\r", b"").replace(b"\n", b"")) == reference(text)
    if b"hxxp" in reference(text).lower():
        assert san.defanged


@pytest.mark.parametrize("n", range(0, 9))
def test_padding_kept(n: int) -> None:
    text = b"http"[: n % 5] + b"x" * (n // 5)
    raw = encode(text, 76)
    out = run(Base64TextSanitizer(TextSanitizer(False, True)), raw, [])
    assert len(out) == len(raw) and out.count(b"=") == raw.count(b"=")
    assert base64.b64decode(out) == reference(text, html=False)


def test_only_an_incomplete_quantum_is_held() -> None:
    raw = encode(b"plain text without links, " * 10, 76)
    san = Base64TextSanitizer(TextSanitizer(False, True))
    out = san.feed(raw[:10])
    assert out == raw[:8]  # two whole quanta settled (nothing that could start `http` in them)
    out += san.feed(raw[10:]) + san.final()
    assert out == raw


def test_split_http_across_quanta_and_lines() -> None:
    text = b"see: http://a.example/ and more text to fill the lines"
    raw = encode(text, 4)  # one quantum per line: "http" spans two lines
    out = run(Base64TextSanitizer(TextSanitizer(False, True)), raw, list(range(len(raw))))
    assert base64.b64decode(out) == text.replace(b"http", b"hxxp")


def test_final_incomplete_quantum_is_decoded_like_lenient_decoders() -> None:
    for tail, dec in ((b"aHR", b"ht"), (b"aH", b"h")):  # no padding: lenient decoders give 2 / 1 bytes
        raw = base64.b64encode(b"xx http: ") + b"\r\n" + tail
        san = Base64TextSanitizer(TextSanitizer(False, True))
        out = run(san, raw, [3, 9])
        assert len(out) == len(raw) and eols(out) == eols(raw) and not san.irregular
        assert base64.b64decode(out[:12]) == b"xx hxxp: "
        assert binascii.a2b_base64(out[14:] + b"=" * (4 - len(tail))) == dec  # (re-encoded canonically)


def test_final_split_http_in_incomplete_quantum() -> None:
    raw = base64.b64encode(b"xx ") + b"\r\n" + b"aHR0cA"  # "http" with its last quantum incomplete
    out = run(Base64TextSanitizer(TextSanitizer(False, True)), raw, [5])
    assert len(out) == len(raw)
    assert binascii.a2b_base64(out[6:] + b"==") == b"hxxp"


@pytest.mark.parametrize(
    "raw,regular",
    [
        (base64.b64encode(b"ok text: ") + b"\r\n" + base64.b64encode(b"x") + base64.b64encode(b"http://evil/"), 4),
        (base64.b64encode(b"ok text: ") + b"\r\n!" + base64.b64encode(b"http://evil/"), 0),  # stray character
        (base64.b64encode(b"ok text: ") + b"\r\naH=0cDovL2V2aWwv", 0),  # '=' inside a quantum
        (base64.b64encode(b"ok text ") + b"\r\n" + base64.b64encode(b"http://evil/"), 0),  # data after padding
    ],
)
def test_irregular_base64_is_blanked_from_the_irregularity(raw: bytes, regular: int) -> None:
    san = Base64TextSanitizer(TextSanitizer(False, True))
    out = run(san, raw + b"\r\n", [5, 13, 17])
    assert len(out) == len(raw) + 2 and eols(out) == eols(raw + b"\r\n") and san.irregular and san.blanked
    head, _, rest = out.partition(b"\r\n")
    assert base64.b64decode(head).startswith(b"ok text")
    chars = re.sub(rb"[^A-Za-z0-9+/=]", b"", rest)[regular:]
    # decoders differ on what follows an irregularity: aligned ones see spaces, ones that skip
    # '=' see other blanks and control bytes; none sees a letter, so no link or word survives
    for decoded in (_decode(chars), _decode(chars.replace(b"=", b""))):
        assert not re.search(rb"[A-Za-z0-9]", decoded), decoded


def _decode(chars: bytes) -> bytes:
    try:
        return binascii.a2b_base64(chars + b"=" * (-len(chars) % 4))
    except binascii.Error:
        return b""  # this decoder gives up: shows nothing


# --- ISO-2022-JP --------------------------------------------------------------------------------
def jis(s: str) -> bytes:
    return s.encode("iso2022_jp")


def kanji_with_http_bytes() -> str:
    """Two kanji whose JIS X 0208 bytes spell `http` (any case): 0x6874 0x5450 = b"htTP"."""
    return b"\x1b$BhtTP\x1b(B".decode("iso2022_jp")


def test_iso2022_kanji_bytes_are_not_links() -> None:
    k = kanji_with_http_bytes()
    text = jis(f"件名{k}と http://evil.example/ <b>太字</b>{k}\r\n")
    assert text.lower().count(b"http") == 3
    san = Iso2022Guard(TextSanitizer(True, True))
    out = run(san, text, list(range(0, len(text), 3)))
    assert len(out) == len(text)
    assert out.decode("iso2022_jp") == f"件名{k}と hxxp://evil.example/    太字    {k}\r\n"


def test_iso2022_mode_resets_at_line_breaks() -> None:
    """A line left in JIS mode (not RFC 1468): a client that resets at the line break shows ASCII."""
    raw = b"\x1b$B$3$s\r\nhttp://x\r\n"
    out = run(Iso2022Guard(TextSanitizer(False, True)), raw, [4, 12])
    assert out == b"\x1b$B$3$s\r\nhxxp://x\r\n"


def test_iso2022_inside_base64() -> None:
    k = kanji_with_http_bytes()
    text = jis(f"こんにちは{k} http://a.example/\r\n") * 5
    san = text_rewriter(False, True, "base64", "ISO-2022-JP")
    assert isinstance(san, Base64TextSanitizer) and isinstance(san.inner, Iso2022Guard)
    raw = encode(text, 72)
    out = run(san, raw, [7, 100, 101, 203])
    assert len(out) == len(raw) and eols(out) == eols(raw)
    assert base64.b64decode(out).decode("iso2022_jp") == f"こんにちは{k} hxxp://a.example/\r\n" * 5


def test_rewriter_choice() -> None:
    assert is_iso2022('"iso-2022-jp"') and is_iso2022("ISO-2022-JP-2") and not is_iso2022("utf-8")
    assert text_rewriter(True, True, "base64", "utf-16") is None
    assert text_rewriter(False, False, "base64", None) is None
    assert text_rewriter(True, False, "x-uuencode", None) is None
    assert isinstance(text_rewriter(True, True, "7bit", "iso-2022-jp"), Iso2022Guard)
    assert isinstance(text_rewriter(True, True, "quoted-printable", "utf-8"), QuotedPrintableTextSanitizer)
    assert isinstance(text_rewriter(True, True, "8bit", "utf-8"), TextSanitizer)


# --- through the inspector ------------------------------------------------------------------------
def _mail_b64_text() -> tuple[bytes, str, str]:
    k = kanji_with_http_bytes()
    plain = "本文です。詳細は http://evil.example/login を参照。\r\n" * 30
    html = (
        f"<html><body><p>{k}さま</p><a href='https://x.example/'>こちら</a><script>alert(1)</script></body></html>\r\n"
    )
    b64_plain = encode(plain.encode("utf-8"), 76)
    b64_html = encode(html.encode("iso2022_jp"), 64)  # another line length
    msg = (
        b"From: a@example.com\r\nTo: b@lg.example.jp\r\nSubject: t\r\nMessage-ID: <b@x>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/alternative; boundary="AB"\r\n\r\n'
        b"--AB\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + b64_plain
        + b"--AB\r\nContent-Type: text/html; charset=ISO-2022-JP\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + b64_html
        + b"--AB--\r\n"
    )
    return msg, plain, html


@pytest.mark.parametrize("mss", [1460, 61, 7])
def test_inspector_sanitizes_base64_text_parts(mss: int) -> None:
    from inspect_helpers import data_content, drive, parse, received, session

    msg, plain, html = _mail_b64_text()
    r = drive(session(msg), mss=mss)
    assert not r.injected
    content = data_content(received(r, "c"))
    assert len(content) == len(msg) and eols(content) == eols(msg)
    parts = list(parse(content).iter_parts())
    text = parts[0].get_payload(decode=True).decode("utf-8")
    assert text == plain.replace("http://", "hxxp://")
    assert parts[1].get_content_type() == "text/plain"  # was text/html
    h = parts[1].get_payload(decode=True).decode("iso2022_jp")
    k = kanji_with_http_bytes()
    assert k in h and "こちら" in h and "alert" not in h and "<" not in h and "さま" in h
    expected = run(Iso2022Guard(TextSanitizer(True, True)), html.encode("iso2022_jp"), [])
    assert parts[1].get_payload(decode=True) == expected
    smtp = next(e for e in r.events if e["event_type"] == "smtp")
    assert smtp["email"]["verdict"] == "sanitized"
    assert "CHG_TEXT" in smtp["email"]["reason"] and "REP_LINK" in smtp["email"]["reason"]


JIS_TEXT = st.lists(
    st.sampled_from(
        [
            "本文",
            "ｶﾀｶﾅ",
            "ｼｽﾃﾑ>",
            "漢字",
            kanji_with_http_bytes(),
            " http://a.example/ ",
            "<b>",
            "</b>",
            "\r\n",
            "x",
            "HTTP",
        ]
    ),
    max_size=30,
).map("".join)


@FUZZ
@given(JIS_TEXT, st.lists(st.integers(0, 400)), st.booleans())
def test_iso2022_only_ascii_changes_any_chunking(text: str, cuts: list[int], html: bool) -> None:
    raw = text.encode("iso2022_jp_ext")  # half-width kana as ESC ( I
    out = run(Iso2022Guard(TextSanitizer(html, True)), raw, cuts)
    assert len(out) == len(raw)
    got = out.decode("iso2022_jp_ext")
    # every non-ASCII character is where it was; ASCII text equals the plain sanitizer's on it
    assert [c for c in got if ord(c) > 0x7F] == [c for c in text if ord(c) > 0x7F]
    assert "http" not in got.lower().replace(kanji_with_http_bytes().lower(), "")
    ascii_only = "".join(c for c in text if ord(c) < 0x80).encode()
    assert "".join(c for c in got if ord(c) < 0x80).encode() == reference(ascii_only, html=html)


def test_a_failing_rewriter_refuses_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from inspect_helpers import drive, received, session

    def boom(self: Base64TextSanitizer, data: bytes) -> bytes:
        raise RuntimeError("bug")

    monkeypatch.setattr(Base64TextSanitizer, "feed", boom)
    msg, _, _ = _mail_b64_text()
    r = drive(session(msg), mss=200)
    assert any(i.toward == "client" for i in r.injected)
    got = received(r, "c")
    assert b"\r\n.\r\n" not in got[got.index(b"DATA\r\n") :]
    smtp = next(e for e in r.events if e["event_type"] == "smtp")
    assert smtp["email"]["verdict"] == "refused" and "text rewrite" in smtp["email"]["reason"]


# --- quoted-printable ---------------------------------------------------------------------------
def qp(data: bytes, line: int = 76) -> bytes:
    return quopri.encodestring(data).replace(b"\n", b"\r\n") if line == 76 else _qp_short(data, line)


def _qp_short(data: bytes, line: int) -> bytes:
    """Quoted-printable with soft line breaks every `line` characters (splits `http` often)."""
    enc = b"".join(bytes([c]) if 0x21 <= c <= 0x7E and c != 0x3D else b"=%02X" % c for c in data)
    out, cur = [], b""
    for tok in re.findall(rb"=[0-9A-F]{2}|.", enc, re.S):
        if len(cur) + len(tok) > line - 1:
            out.append(cur + b"=")
            cur = b""
        cur += tok
    return b"\r\n".join([*out, cur])


@FUZZ
@given(TEXT, st.sampled_from([76, 9, 5, 4]), st.lists(st.integers(0, 900)), st.booleans())
def test_quoted_printable_same_as_decoded_sanitizing(text: bytes, line: int, cuts: list[int], html: bool) -> None:
    raw = qp(text, line)
    san = text_rewriter(html, True, "quoted-printable", "utf-8")
    assert isinstance(san, QuotedPrintableTextSanitizer)
    out = run(san, raw, cuts)
    assert len(out) == len(raw) and eols(out) == eols(raw)
    assert quopri.decodestring(out) == reference(quopri.decodestring(raw), html=html)


def test_quoted_printable_split_link_and_encoded_markup() -> None:
    raw = b"see h=\r\nttp://a.example/ =3Cb=3Ebold=3C/b=3E and =E6=9C=AC\r\n"
    out = run(QuotedPrintableTextSanitizer(TextSanitizer(True, True)), raw, [3, 5, 6, 30])
    assert len(out) == len(raw)
    assert quopri.decodestring(out) == b"see hxxp://a.example/    bold     and \xe6\x9c\xac\r\n"


def test_quoted_printable_iso2022() -> None:
    k = kanji_with_http_bytes()
    text = jis(f"{k} http://a.example/ {k}")
    raw = quopri.encodestring(text)
    assert b"=1B" in raw
    out = run(text_rewriter(False, True, "quoted-printable", "iso-2022-jp"), raw, [4, 8])  # type: ignore[arg-type]
    assert quopri.decodestring(out).decode("iso2022_jp") == f"{k} hxxp://a.example/ {k}"
