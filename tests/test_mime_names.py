"""Filename extraction/decoding (domain.md "Japanese mail in practice") and the name-trick checks."""

from __future__ import annotations

import base64
import unicodedata

import pytest
from mime_vectors import JP_NAME, JP_XLSX, RLO_NAME, b_words, pct, to_euc, to_jis, to_jis_so_si

from gateway.mime import check_name, extension_matches, extract_names
from gateway.mime.charsets import decode_iso2022jp, decode_text, guess_decode
from gateway.mime.headers import parse_params

SPECIALS = "①②⑩㈱㈲№℡ｱｲｳｶﾞﾊﾟ髙﨑"  # NEC row 13, NEC-selected IBM ext, half-width kana


def names(disposition: bytes, ctype: bytes = b"application/octet-stream") -> list[tuple[str, str]]:
    _, dp = parse_params(disposition)
    _, tp = parse_params(ctype)
    return [(n.source, n.decoded) for n in extract_names(tp, dp)]


def only(disposition: bytes) -> str:
    (found,) = names(disposition)
    return found[1]


# -- charsets --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [SPECIALS, JP_NAME, JP_XLSX, "ascii only.txt", "ｶﾀｶﾅだけ"])
def test_iso2022jp_cp5022x_superset_round_trip(text: str) -> None:
    assert decode_iso2022jp(to_jis(text)) == (text, True)
    assert decode_iso2022jp(to_jis_so_si(text)) == (text, True)


def test_python_iso2022jp_codecs_lose_these_characters() -> None:
    # why we have our own decoder: the stdlib codecs reject NEC/IBM rows and ESC ( I
    with pytest.raises(UnicodeDecodeError):
        to_jis("①㈱髙").decode("iso2022_jp_ext")


def test_eucjp_ms_with_nec_specials() -> None:
    text, used, ok = decode_text(to_euc(SPECIALS), "EUC-JP")
    assert (text, used, ok) == (SPECIALS, "euc-jp", True)


@pytest.mark.parametrize(
    ("data", "charset"),
    [
        (JP_NAME.encode("utf-8"), "utf-8"),
        (JP_NAME.encode("cp932"), "cp932"),
        ("令和六年度予算要求資料について".encode("euc_jp"), "euc-jp"),
        (to_jis(JP_NAME), "iso-2022-jp"),
        (b"plain.txt", "us-ascii"),
    ],
)
def test_guess_raw_bytes(data: bytes, charset: str) -> None:
    text, used, ok = guess_decode(data)
    assert ok and used == charset
    assert text in (JP_NAME, "令和六年度予算要求資料について", "plain.txt")


def test_mislabelled_charset_falls_back_to_guess() -> None:
    text, used, ok = decode_text(JP_NAME.encode("cp932"), "utf-8")
    assert text == JP_NAME and ok and "guessed" in used


# -- RFC 2047 in parameters (Outlook) --------------------------------------------------------


@pytest.mark.parametrize("cut", range(1, len(to_jis(JP_NAME))))
def test_rfc2047_split_mid_character_joined_before_decoding(cut: int) -> None:
    words = b_words(to_jis(JP_NAME), [cut])
    assert only(b'attachment; filename="' + b" ".join(words) + b'"') == JP_NAME
    assert only(b"attachment; filename=" + b"".join(words)) == JP_NAME  # unquoted, adjacent
    assert only(b'attachment; filename="' + b"\t".join(words) + b'"') == JP_NAME  # unfolded tab


@pytest.mark.parametrize("cut", range(1, 16))
def test_rfc2047_base64_text_split_mid_quantum(cut: int) -> None:
    enc = base64.b64encode(to_jis(JP_NAME))
    words = [b"=?ISO-2022-JP?B?" + enc[:cut] + b"?=", b"=?ISO-2022-JP?B?" + enc[cut:] + b"?="]
    assert only(b'attachment; filename="' + b" ".join(words) + b'"') == JP_NAME


def test_rfc2047_q_encoding_and_utf8_split_and_mixed_charsets() -> None:
    utf = JP_NAME.encode("utf-8")
    q = b"".join(b"=%02X" % c for c in utf[:7])
    value = b"=?utf-8?Q?" + q + b"?= =?UTF-8?B?" + base64.b64encode(utf[7:]) + b"?="
    assert only(b'attachment; filename="' + value + b'"') == JP_NAME
    mixed = (
        b"=?iso-2022-jp?B?" + base64.b64encode(to_jis("報告")) + b"?= =?utf-8?B?" + base64.b64encode(b".pdf") + b"?="
    )
    assert only(b"attachment; filename=" + mixed) == "報告.pdf"
    assert only(b'attachment; filename="=?utf-8?Q?a_b=2Epdf?="') == "a b.pdf"


def test_rfc2047_with_literal_text_around() -> None:
    value = b'"copy of =?ISO-2022-JP?B?' + base64.b64encode(to_jis("資料")) + b'?= (2).pdf"'
    assert only(b"attachment; filename=" + value) == "copy of 資料 (2).pdf"


# -- RFC 2231 --------------------------------------------------------------------------------


def test_rfc2231_single_iso2022jp() -> None:
    assert only(b"attachment; filename*=ISO-2022-JP''" + pct(to_jis(SPECIALS + ".pdf"))) == SPECIALS + ".pdf"


def test_rfc2231_continuations_iso2022jp_with_language() -> None:
    enc = pct(to_jis(JP_NAME))
    cut = enc.index(b"%", 40)
    value = b"attachment; filename*0*=iso-2022-jp'ja'" + enc[:cut] + b"; filename*1*=" + enc[cut:]
    assert only(value) == JP_NAME


def test_rfc2231_continuations_utf8_mixed_encoded_and_plain_out_of_order() -> None:
    enc = pct("報告書".encode())
    value = b'attachment; filename*2="_final.pdf"; filename*1*=' + enc + b"; filename*0*=UTF-8''%E2%91%A0"
    (found,) = extract_names((), parse_params(value)[1])
    assert found.decoded == "①報告書_final.pdf"
    assert found.source == "filename*" and found.charset == "utf-8"


def test_rfc2231_missing_section_is_reported() -> None:
    (found,) = extract_names((), parse_params(b"a; filename*0*=UTF-8''a; filename*2*=b")[1])
    assert found.decoded == "ab" and "rfc2231-missing-section" in found.defects


def test_rfc2231_and_plain_both_returned_most_authoritative_first() -> None:
    got = names(
        b"attachment; filename=\"fallback.pdf\"; filename*=UTF-8''" + pct("本物.exe".encode()),
        b'application/pdf; name="=?UTF-8?B?' + base64.b64encode("名前.pdf".encode()) + b'?="',
    )
    assert got == [("filename*", "本物.exe"), ("filename", "fallback.pdf"), ("name", "名前.pdf")]


# -- raw 8-bit -------------------------------------------------------------------------------


def test_raw_sjis_and_raw_utf8_and_raw_euc_names() -> None:
    assert only(b'attachment; filename="' + JP_NAME.encode("cp932") + b'"') == JP_NAME
    assert only(b"attachment; filename=" + JP_NAME.encode("utf-8")) == JP_NAME
    assert only(b'attachment; filename="' + "会議資料.docx".encode("euc_jp") + b'"') == "会議資料.docx"


def test_raw_and_decoded_kept_and_nfc() -> None:
    nfd = unicodedata.normalize("NFD", "ガイド.pdf").encode()
    _, dp = parse_params(b"attachment; filename*=UTF-8''" + pct(nfd))
    (found,) = extract_names((), dp)
    assert found.decoded == "ガイド.pdf" and len(found.decoded) == 7  # composed
    assert found.raw == b"UTF-8''" + pct(nfd)


# -- checks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "flags"),
    [
        ("invoice.pdf.exe", {"double-extension", "dangerous-extension"}),
        ("report.pdf\u3000.exe", {"double-extension", "dangerous-extension"}),
        ("report.pdf" + "\u3000" * 30 + ".exe", {"double-extension", "dangerous-extension", "whitespace-padding"}),
        ("請求書．pdf.scr", {"double-extension", "dangerous-extension"}),  # full-width dot
        ("invoice.pdf.exe. . .", {"double-extension", "dangerous-extension", "trailing-dot-or-space"}),
        ("notes.txt.", {"trailing-dot-or-space"}),
        (RLO_NAME, {"bidi-control", "dangerous-extension"}),
        ("a\u200ebc.pdf", {"bidi-control"}),
        ("a\u2066b\u2069.pdf", {"bidi-control"}),
        ("a\u200bb.pdf", {"invisible-char"}),
        ("a\x07b.pdf", {"control-char"}),
        ("a" * 252 + ".pdf", {"too-long"}),
        ("あ" * 84 + ".pdf", {"too-long"}),  # 256 bytes of UTF-8, 88 characters
        ("..\\..\\evil.pdf", {"path-separator"}),
        ("CON.txt", {"windows-reserved"}),
        ("run.js", {"dangerous-extension"}),
        ("予算.xlsm", {"dangerous-extension"}),
        ("archive.tar.gz", set()),
        ("setup.v2.pdf", set()),
        (JP_NAME, set()),
        ("", {"empty"}),
        ("a\ufffdb.pdf", {"undecodable"}),
    ],
)
def test_check_name(name: str, flags: set[str]) -> None:
    assert set(check_name(name)) == flags


def test_check_name_max_bytes_configurable() -> None:
    assert "too-long" in check_name("abc.pdf", max_bytes=5)
    assert "too-long" not in check_name("a" * 300 + ".pdf", max_bytes=1000)


@pytest.mark.parametrize(
    ("name", "true_type", "expected"),
    [
        ("report.pdf", "application/pdf", True),
        ("report.pdf", "application/x-dosexec", False),
        ("REPORT.PDF", "application/pdf", True),
        ("book.xlsx", "application/zip", True),
        ("book.xlsx", _ := "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", True),
        ("photo.jpg", "image/png", False),
        ("data.csv", "text/plain", True),
        ("run.js", "text/plain", False),
        ("一太郎.jtd", "application/x-ole-storage", True),
        ("tool", "application/x-executable", True),
        ("x.bin", "application/octet-stream", None),
    ],
)
def test_extension_matches(name: str, true_type: str, expected: bool | None) -> None:
    assert extension_matches(name, true_type) is expected


def test_check_name_type_mismatch() -> None:
    assert "type-mismatch" in check_name("見積書.pdf", true_type="application/x-dosexec")
    assert "type-mismatch" not in check_name("見積書.pdf", true_type="application/pdf")
    assert "type-mismatch" not in check_name("見積書.pdf", true_type="application/octet-stream")
