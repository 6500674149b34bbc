"""Japanese charsets as mail clients actually use them.

ISO-2022-JP is decoded as its CP5022x superset (what Outlook and Windows clients write): JIS X 0208
rows are mapped through Shift_JIS onto CP932, so NEC special characters (①, ㈱, row 13) and the
NEC-selected IBM extensions (髙, rows 89-92) survive, and half-width katakana is accepted both as
ESC ( I (CP50221) and as SO/SI (CP50222). Python's iso2022_jp codecs reject all of these.
EUC-JP is decoded the same way (eucJP-ms / CP51932 style). Raw 8-bit bytes without a declared
charset are guessed: ISO-2022-JP if they contain ESC, UTF-8 if they are valid UTF-8 (which random
CP932 text almost never is), else CP932 or EUC-JP, whichever decodes to more plausible Japanese.
"""

from __future__ import annotations

import codecs

REPLACEMENT = "\ufffd"

_ISO2022 = frozenset(
    {
        "iso-2022-jp",
        "iso2022-jp",
        "iso2022jp",
        "iso-2022-jp-1",
        "iso-2022-jp-2",
        "iso-2022-jp-3",
        "iso-2022-jp-2004",
        "iso-2022-jp-ms",
        "iso-2022-jp-ext",
        "cp50220",
        "cp50221",
        "cp50222",
        "csiso2022jp",
        "csiso2022jp2",
        "jis",
        "x-iso-2022-jp",
        "iso_2022_jp",
        "iso2022_jp",
    }
)
_SJIS = frozenset(
    {
        "shift_jis",
        "shift-jis",
        "sjis",
        "x-sjis",
        "s-jis",
        "ms_kanji",
        "csshiftjis",
        "windows-31j",
        "cswindows31j",
        "cp932",
        "ms932",
        "x-ms-cp932",
        "ibm-943",
        "shift_jisx0213",
        "shift_jis-2004",
    }
)
_EUC = frozenset(
    {
        "euc-jp",
        "eucjp",
        "euc_jp",
        "x-euc-jp",
        "x-euc",
        "cseucpkdfmtjapanese",
        "eucjp-ms",
        "euc-jp-ms",
        "cp51932",
        "ujis",
    }
)
_UTF8 = frozenset({"utf-8", "utf8", "x-utf-8", "unicode-1-1-utf-8"})
_ASCII = frozenset({"us-ascii", "ascii", "ansi_x3.4-1968", "iso646-us", "us"})


def normalize_charset(name: str) -> str:
    return name.strip().strip('"').split("*", 1)[0].strip().lower()  # RFC 2231 "charset*lang"


def _jis_pair_to_sjis(j1: int, j2: int) -> bytes:
    s1 = ((j1 + 1) >> 1) + (0x70 if j1 < 0x5F else 0xB0)
    if j1 & 1:
        s2 = j2 + 0x1F
        if s2 >= 0x7F:
            s2 += 1
    else:
        s2 = j2 + 0x7E
    return bytes((s1, s2))


def _cp932(sjis: bytearray, out: list[str]) -> bool:
    if not sjis:
        return True
    try:
        out.append(sjis.decode("cp932"))
        ok = True
    except UnicodeDecodeError:
        out.append(sjis.decode("cp932", "replace"))
        ok = False
    sjis.clear()
    return ok


def decode_iso2022jp(data: bytes) -> tuple[str, bool]:
    """CP5022x-superset ISO-2022-JP decoder; (text, False) if anything was replaced."""
    out: list[str] = []
    sjis = bytearray()  # pending run of JIS X 0208 characters, mapped to Shift_JIS
    mode = "ascii"  # ascii | roman | kana | jis0208 | jis0212 | other
    shifted = False  # SO: half-width katakana (CP50222)
    ok = True
    i = 0
    n = len(data)
    while i < n:
        b = data[i]
        if b == 0x1B:
            ok &= _cp932(sjis, out)
            esc = data[i + 1 : i + 4]
            if esc[:2] in (b"(B", b"(J", b"(H"):
                mode, step = ("ascii" if esc[:2] == b"(B" else "roman"), 3
            elif esc[:2] == b"(I":
                mode, step = "kana", 3
            elif esc[:2] in (b"$B", b"$@"):
                mode, step = "jis0208", 3
            elif esc == b"$(D":
                mode, step = "jis0212", 4
            elif esc[:2] == b"&@":
                step = 3  # JIS X 0208-1990 announcer, followed by ESC $ B
            else:
                # GB2312, KS C 5601, G2 sets of ISO-2022-JP-2, JIS X 0213: rare in Japanese mail;
                # let Python's codecs try the whole string.
                for codec in ("iso2022_jp_2", "iso2022_jp_2004"):
                    try:
                        return data.decode(codec), True
                    except UnicodeDecodeError:
                        continue
                mode, step, ok = "other", 1, False
            i += step
            continue
        if b == 0x0E:
            shifted = True
            i += 1
            continue
        if b == 0x0F:
            shifted = False
            i += 1
            continue
        if b in (0x0A, 0x0D):  # RFC 1468: a line ends in ASCII
            ok &= _cp932(sjis, out)
            mode, shifted = "ascii", False
            out.append(chr(b))
            i += 1
            continue
        if b >= 0x80:
            ok &= _cp932(sjis, out)
            out.append(REPLACEMENT)
            ok = False
            i += 1
            continue
        if shifted or mode == "kana":
            ok &= _cp932(sjis, out)
            if 0x21 <= b <= 0x5F:
                out.append(chr(0xFF61 + b - 0x21))
            elif b < 0x21:
                out.append(chr(b))
            else:
                out.append(REPLACEMENT)
                ok = False
            i += 1
            continue
        if mode in ("jis0208", "jis0212"):
            if b < 0x21 or b == 0x7F or i + 1 >= n or not 0x21 <= data[i + 1] <= 0x7E:
                ok &= _cp932(sjis, out)
                if b < 0x21:
                    out.append(chr(b))
                else:
                    out.append(REPLACEMENT)
                    ok = False
                i += 1
                continue
            if mode == "jis0208":
                sjis += _jis_pair_to_sjis(b, data[i + 1])
            else:
                ok &= _cp932(sjis, out)
                try:
                    out.append(bytes((0x8F, b | 0x80, data[i + 1] | 0x80)).decode("euc_jp"))
                except UnicodeDecodeError:
                    out.append(REPLACEMENT)
                    ok = False
            i += 2
            continue
        if mode == "other":
            out.append(REPLACEMENT)
            i += 1
            continue
        ok &= _cp932(sjis, out)
        out.append(chr(b))
        i += 1
    ok &= _cp932(sjis, out)
    return "".join(out), ok


def decode_eucjp(data: bytes) -> tuple[str, bool]:
    """EUC-JP as eucJP-ms/CP51932: two-byte codes through CP932, so ① and ㈱ decode."""
    out: list[str] = []
    sjis = bytearray()
    ok = True
    i = 0
    n = len(data)
    while i < n:
        b = data[i]
        if b < 0x80:
            ok &= _cp932(sjis, out)
            out.append(chr(b))
            i += 1
        elif b == 0x8E and i + 1 < n and 0xA1 <= data[i + 1] <= 0xDF:
            ok &= _cp932(sjis, out)
            out.append(chr(0xFF61 + data[i + 1] - 0xA1))
            i += 2
        elif b == 0x8F and i + 2 < n and data[i + 1] >= 0xA1 and data[i + 2] >= 0xA1:
            ok &= _cp932(sjis, out)
            try:
                out.append(data[i : i + 3].decode("euc_jp"))
            except UnicodeDecodeError:
                out.append(REPLACEMENT)
                ok = False
            i += 3
        elif 0xA1 <= b <= 0xFE and i + 1 < n and 0xA1 <= data[i + 1] <= 0xFE:
            sjis += _jis_pair_to_sjis(b - 0x80, data[i + 1] - 0x80)
            i += 2
        else:
            ok &= _cp932(sjis, out)
            out.append(REPLACEMENT)
            ok = False
            i += 1
    ok &= _cp932(sjis, out)
    return "".join(out), ok


def _decode_sjis(data: bytes) -> tuple[str, bool]:
    try:
        return data.decode("cp932"), True
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("shift_jis_2004"), True  # JIS X 0213 characters (Mac, some Linux MUAs)
    except UnicodeDecodeError:
        return data.decode("cp932", "replace"), False


def _oddness(s: str) -> int:
    """How implausible `s` is as Japanese text (lower is better); for CP932 vs EUC-JP guessing."""
    score = 0
    for ch in s:
        o = ord(ch)
        if o < 0x80 or 0x3000 <= o <= 0x30FF or 0x4E00 <= o <= 0x9FFF or 0xFF01 <= o <= 0xFF60:
            continue
        score += 3 if 0xE000 <= o <= 0xF8FF else 1  # half-width kana, PUA, rare symbols
    return score


def guess_decode(data: bytes) -> tuple[str, str, bool]:
    """(text, charset used, ok) for bytes with no (usable) declared charset."""
    if data.isascii():
        if b"\x1b" in data:
            text, ok = decode_iso2022jp(data)
            return text, "iso-2022-jp", ok
        return data.decode("ascii"), "us-ascii", True
    try:
        return data.decode("utf-8"), "utf-8", True
    except UnicodeDecodeError:
        pass
    s_text, s_ok = _decode_sjis(data)
    e_text, e_ok = decode_eucjp(data)
    if e_ok and (not s_ok or _oddness(e_text) < _oddness(s_text)):
        return e_text, "euc-jp", True
    return s_text, "cp932", s_ok


def decode_text(data: bytes, charset: str | None) -> tuple[str, str, bool]:
    """Decode `data` in the declared `charset` (None/empty/unknown: guess). (text, used, ok)."""
    cs = normalize_charset(charset or "")
    if cs in _ISO2022:
        text, ok = decode_iso2022jp(data)
        return text, "iso-2022-jp", ok
    if cs in _SJIS:
        text, ok = _decode_sjis(data)
        return text, "cp932", ok
    if cs in _EUC:
        text, ok = decode_eucjp(data)
        return text, "euc-jp", ok
    if cs in _UTF8:
        try:
            return data.decode("utf-8"), "utf-8", True
        except UnicodeDecodeError:
            # mislabelled raw bytes are common; a valid guess beats replacement characters
            text, used, ok = guess_decode(data)
            return text, used + " (guessed)", ok
    if cs in _ASCII and data.isascii():
        return data.decode("ascii"), "us-ascii", True
    if cs and cs not in _ASCII:
        try:
            codecs.lookup(cs)
            return data.decode(cs), cs, True
        except (LookupError, UnicodeDecodeError):
            pass
    text, used, ok = guess_decode(data)
    return text, used + " (guessed)" if cs else used, ok
