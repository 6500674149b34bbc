"""Test corpus for the MIME parser: messages built with Python's email package and raw
hand-written messages in the style of Japanese mail clients (Outlook, Becky!, Thunderbird).

Everything is built here from text, so the exact bytes are visible and reproducible; the .eml
files next to this module are the same raw messages written out for manual inspection
(regenerate with `python tests/mime_vectors/__init__.py`).
"""

from __future__ import annotations

import base64
import itertools
from email.message import EmailMessage
from pathlib import Path

CRLF = b"\r\n"

# Names with the characters that break naive ISO-2022-JP decoders: NEC special (①, ㈱),
# NEC-selected IBM extension (髙), half-width katakana.
JP_NAME = "①㈱ｱｲｳ髙橋様_令和6年度報告書.pdf"
JP_XLSX = "予算要求資料（第２版）.xlsx"
RLO_NAME = "請求書\u202efdp.exe"  # shows as 請求書exe.pdf


def to_jis(text: str) -> bytes:
    """ISO-2022-JP as CP50221 writes it: JIS X 0208 (with CP932 extensions) and ESC ( I kana."""
    out = bytearray()
    mode = "ascii"
    for ch in text:
        b = ch.encode("cp932")
        if len(b) == 1 and b[0] < 0x80:
            want, data = "ascii", b
        elif len(b) == 1:
            want, data = "kana", bytes((b[0] - 0x80,))
        else:
            s1, s2 = b
            s1 -= 0x40 if s1 >= 0xE0 else 0
            j1 = (s1 - 0x81) * 2 + 0x21
            if s2 >= 0x9F:
                j1, j2 = j1 + 1, s2 - 0x7E
            else:
                j2 = s2 - 0x1F - (1 if s2 >= 0x80 else 0)
            want, data = "jis", bytes((j1, j2))
        if want != mode:
            out += {"ascii": b"\x1b(B", "kana": b"\x1b(I", "jis": b"\x1b$B"}[want]
            mode = want
        out += data
    if mode != "ascii":
        out += b"\x1b(B"
    return bytes(out)


def to_jis_so_si(text: str) -> bytes:
    """CP50222 style: half-width katakana as SO ... SI instead of ESC ( I."""
    out = bytearray()
    for i, chunk in enumerate(to_jis(text).split(b"\x1b(I")):
        if i == 0:
            out += chunk
            continue
        # chunk starts with kana bytes up to the next ESC
        esc = chunk.find(b"\x1b")
        kana, rest = (chunk, b"") if esc < 0 else (chunk[:esc], chunk[esc:])
        out += b"\x1b(J\x0e" + kana + b"\x0f" + rest
    return bytes(out)


def to_euc(text: str) -> bytes:
    """eucJP-ms: JIS X 0208 pairs | 0x80, half-width kana as SS2."""
    out = bytearray()
    i = 0
    jis = to_jis(text)
    mode = "ascii"
    while i < len(jis):
        if jis[i] == 0x1B:
            mode = {b"(B": "ascii", b"(I": "kana", b"$B": "jis"}[jis[i + 1 : i + 3]]
            i += 3
        elif mode == "jis":
            out += bytes((jis[i] | 0x80, jis[i + 1] | 0x80))
            i += 2
        elif mode == "kana":
            out += bytes((0x8E, jis[i] | 0x80))
            i += 1
        else:
            out.append(jis[i])
            i += 1
    return bytes(out)


def pct(data: bytes) -> bytes:
    """RFC 2231 percent-encoding of everything outside a safe ASCII set."""
    safe = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-_"
    return b"".join(bytes((c,)) if c in safe else b"%%%02X" % c for c in data)


def b_words(data: bytes, cuts: list[int], charset: bytes = b"ISO-2022-JP") -> list[bytes]:
    """RFC 2047 B words of `data` split at byte positions `cuts` (mid-character on purpose)."""
    bounds = [0, *cuts, len(data)]
    return [
        b"=?" + charset + b"?B?" + base64.b64encode(data[a:b]) + b"?=" for a, b in itertools.pairwise(bounds) if b > a
    ]


def b64_body(data: bytes, width: int = 76) -> bytes:
    enc = base64.b64encode(data)
    return CRLF.join(enc[i : i + width] for i in range(0, len(enc), width)) + CRLF


PDF = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + bytes(range(256)) * 4
XLSX = b"PK\x03\x04\x14\x00\x06\x00" + bytes(200)


def outlook_message() -> bytes:
    """Outlook 2016 style: ISO-2022-JP, RFC 2047 inside name/filename, split mid-character."""
    b1 = b"----=_NextPart_000_0001_01DA1234.56789ABC"
    b2 = b"----=_NextPart_001_0002_01DA1234.56789ABC"
    name_words = b_words(to_jis(JP_NAME), [5, 12, 13, 30])
    fname = (CRLF + b" ").join(name_words)
    body_text = to_jis("お世話になっております。\r\n資料を送付します。①②③\r\n")
    lines = [
        b"From: =?iso-2022-jp?B?GyRCOzNFRBsoQiAbJEJCQE86GyhC?= <yamada@example.lg.jp>",
        b"To: <soumu@city.example.lg.jp>",
        b"Subject: =?iso-2022-jp?B?" + base64.b64encode(to_jis("令和6年度 報告書の送付")) + b"?=",
        b"Date: Mon, 1 Apr 2024 10:00:00 +0900",
        b"Message-ID: <000001da1234$56789abc$def01234@example.lg.jp>",
        b"MIME-Version: 1.0",
        b"Content-Type: multipart/mixed;",
        b'\tboundary="' + b1 + b'"',
        b"X-Mailer: Microsoft Outlook 16.0",
        b"Content-Language: ja",
        b"",
        b"This is a multipart message in MIME format.",
        b"",
        b"--" + b1,
        b"Content-Type: multipart/alternative;",
        b'\tboundary="' + b2 + b'"',
        b"",
        b"",
        b"--" + b2,
        b"Content-Type: text/plain;",
        b'\tcharset="iso-2022-jp"',
        b"Content-Transfer-Encoding: 7bit",
        b"",
        body_text,
        b"--" + b2,
        b"Content-Type: text/html;",
        b'\tcharset="iso-2022-jp"',
        b"Content-Transfer-Encoding: quoted-printable",
        b"",
        b'<html><body><p>=1B$B$*@$OC$K$J$C$F$*$j$^$9!#=1B(B <a href=3D"http://example.c=',
        b'om/">link</a></p></body></html>',
        b"",
        b"--" + b2 + b"--",
        b"",
        b"--" + b1,
        b"Content-Type: application/pdf;",
        b'\tname="' + fname + b'"',
        b"Content-Transfer-Encoding: base64",
        b"Content-Disposition: attachment;",
        b'\tfilename="' + fname + b'"',
        b"",
        b64_body(PDF).rstrip(CRLF),
        b"",
        b"--" + b1 + b"--",
        b"",
    ]
    return CRLF.join(lines)


def becky_message() -> bytes:
    """Becky! style: RFC 2231 continuations in ISO-2022-JP, with a language tag; unquoted."""
    b = b"Boundary_(ID_becky0123456789)"
    enc = pct(to_jis(JP_XLSX))
    sec = [enc[i : i + 30] for i in range(0, len(enc), 30)]
    # keep every %XX intact inside one section
    fixed: list[bytes] = []
    carry = b""
    for s in sec:
        s = carry + s
        cut = len(s)
        if b"%" in s[-2:]:
            cut = s.rindex(b"%")
        fixed.append(s[:cut])
        carry = s[cut:]
    if carry:
        fixed.append(carry)
    params = [b"filename*0*=ISO-2022-JP'ja'" + fixed[0]] + [
        b"filename*%d*=" % (i + 1) + s for i, s in enumerate(fixed[1:])
    ]
    lines = [
        b"From: Suzuki <suzuki@town.example.lg.jp>",
        b"To: kikaku@pref.example.lg.jp",
        b"Subject: =?ISO-2022-JP?B?" + base64.b64encode(to_jis("予算資料")) + b"?=",
        b"MIME-Version: 1.0",
        b"X-Mailer: Becky! ver. 2.81.04 [ja]",
        b'Content-Type: multipart/mixed; boundary="' + b + b'"',
        b"Content-Transfer-Encoding: 7bit",
        b"",
        b"--" + b,
        b"Content-Type: text/plain; charset=ISO-2022-JP",
        b"Content-Transfer-Encoding: 7bit",
        b"",
        to_jis("よろしくお願いします。"),
        b"",
        b"--" + b,
        b"Content-Type: application/vnd.openxmlformats-officedocument.spreadsheetml.sheet;",
        b" name*0*=ISO-2022-JP'ja'" + fixed[0] + b";",
        *[b" name*%d*=" % (i + 1) + s + (b";" if i + 2 < len(fixed) else b"") for i, s in enumerate(fixed[1:])],
        b"Content-Transfer-Encoding: base64",
        b"Content-Disposition: attachment;",
        *[b" " + p + (b";" if i + 1 < len(params) else b"") for i, p in enumerate(params)],
        b"",
        b64_body(XLSX).rstrip(CRLF),
        b"",
        b"--" + b + b"--",
        b"",
    ]
    return CRLF.join(lines)


def thunderbird_message() -> bytes:
    """Thunderbird style: UTF-8, RFC 2231 continuation for filename, RFC 2047 for name,
    a message/rfc822 attachment holding the RLO-named executable, and no final CRLF."""
    utf = pct(JP_NAME.encode("utf-8"))
    half = utf.index(b"%", len(utf) // 2)
    inner_b = b"------------inner0123456789"
    rlo = pct(RLO_NAME.encode("utf-8"))
    inner = CRLF.join(
        [
            b"From: attacker@example.com",
            b"Subject: invoice",
            b"MIME-Version: 1.0",
            b'Content-Type: multipart/mixed; boundary="' + inner_b + b'"',
            b"",
            b"--" + inner_b,
            b"Content-Type: application/octet-stream",
            b"Content-Transfer-Encoding: base64",
            b"Content-Disposition: attachment; filename*=UTF-8''" + rlo,
            b"",
            b64_body(EXE).rstrip(CRLF),
            b"--" + inner_b + b"--",
            b"",
        ]
    )
    outer_b = b"------------SaGgRcLw0Gc1Ldn5iB1N4Y9N"
    lines = [
        b"Message-ID: <1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901@example.jp>",
        b"Date: Tue, 2 Apr 2024 09:30:00 +0900",
        b"MIME-Version: 1.0",
        b"User-Agent: Mozilla Thunderbird",
        b"Content-Language: ja",
        b"To: jinji@city.example.lg.jp",
        b"From: Tanaka <tanaka@example.jp>",
        b"Subject: =?UTF-8?B?" + base64.b64encode("転送: 請求書".encode()) + b"?=",
        b'Content-Type: multipart/mixed; boundary="' + outer_b + b'"',
        b"",
        b"This is a multi-part message in MIME format.",
        b"--" + outer_b,
        b"Content-Type: text/plain; charset=UTF-8; format=flowed",
        b"Content-Transfer-Encoding: 8bit",
        b"",
        "転送します。\r\n-- \r\n田中".encode(),
        b"--" + outer_b,
        b'Content-Type: application/pdf; name="=?UTF-8?B?' + base64.b64encode(JP_NAME.encode()) + b'?="',
        b"Content-Disposition: attachment;",
        b" filename*0*=UTF-8''" + utf[:half] + b";",
        b" filename*1*=" + utf[half:],
        b"Content-Transfer-Encoding: base64",
        b"",
        b64_body(PDF).rstrip(CRLF),
        b"--" + outer_b,
        b"Content-Type: message/rfc822",
        b"Content-Disposition: attachment; filename=fwd.eml",
        b"",
        inner,
        b"--" + outer_b + b"--",
    ]
    return CRLF.join(lines)


def sjis_raw_message() -> bytes:
    """Old Japanese webmail style: raw Shift_JIS bytes in the header, no charset declared,
    a part without any filename, and an EUC-JP RFC 2231 name."""
    b = b"=_sjis_boundary_="
    lines = [
        b"From: sato@example.co.jp",
        b"To: somu@example.lg.jp",
        b"Subject: " + "見積書".encode("cp932"),
        b"MIME-Version: 1.0",
        b"Content-Type: multipart/mixed; boundary=" + b,
        b"",
        b"--" + b,
        b"Content-Type: text/plain; charset=Shift_JIS",
        b"Content-Transfer-Encoding: 8bit",
        b"",
        "見積書を添付します。".encode("cp932"),
        b"--" + b,
        b'Content-Type: application/octet-stream; name="' + JP_NAME.encode("cp932") + b'"',
        b'Content-Disposition: attachment; filename="' + JP_NAME.encode("cp932") + b'"',
        b"Content-Transfer-Encoding: base64",
        b"",
        b64_body(PDF).rstrip(CRLF),
        b"--" + b,
        b"Content-Type: application/octet-stream",
        b"Content-Transfer-Encoding: base64",
        b"",
        b64_body(EXE).rstrip(CRLF),
        b"--" + b,
        b"Content-Type: application/pdf",
        b"Content-Disposition: attachment; filename*=EUC-JP''" + pct(to_euc(JP_NAME)),
        b"Content-Transfer-Encoding: quoted-printable",
        b"",
        b"%PDF-1.4=0D=0A=E2=E3=CF=D3 soft=",
        b"break",
        b"--" + b + b"--",
        b"",
    ]
    return CRLF.join(lines)


def email_package_messages() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    m = EmailMessage()
    m["From"] = "a@example.jp"
    m["To"] = "b@example.lg.jp"
    m["Subject"] = "令和6年度 資料"
    m.set_content("本文です。\n-- \n署名\n")
    m.add_alternative("<p>本文です。<a href='http://example.com'>x</a></p>\n", subtype="html")
    m.add_attachment(PDF, maintype="application", subtype="pdf", filename=JP_NAME)
    m.add_attachment(EXE, maintype="application", subtype="octet-stream")  # no filename
    inner = EmailMessage()
    inner["Subject"] = "inner"
    inner.set_content("inner body\n")
    inner.add_attachment(EXE, maintype="application", subtype="x-msdownload", filename="invoice.pdf.exe")
    m.add_attachment(inner)
    out["email_mixed_alt_rfc822"] = m.as_bytes().replace(b"\n", CRLF)

    q = EmailMessage()
    q["Subject"] = "qp"
    q.set_content("é" * 100 + "\n" + "x" * 200 + "\n", cte="quoted-printable")
    out["email_qp"] = q.as_bytes().replace(b"\n", CRLF)

    s = EmailMessage()
    s["Subject"] = "single"
    s.set_content(EXE, maintype="application", subtype="octet-stream", filename="a.bin")
    out["email_single_base64_lf"] = s.as_bytes()  # bare LF line endings
    return out


def hand_written() -> dict[str, bytes]:
    return {
        "outlook_iso2022jp": outlook_message(),
        "becky_rfc2231": becky_message(),
        "thunderbird_utf8_rfc822": thunderbird_message(),
        "sjis_raw": sjis_raw_message(),
    }


def corpus() -> dict[str, bytes]:
    return {**hand_written(), **email_package_messages()}


if __name__ == "__main__":
    here = Path(__file__).parent
    for name, data in hand_written().items():
        (here / f"{name}.eml").write_bytes(data)
