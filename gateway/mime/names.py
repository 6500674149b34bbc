"""Attachment filenames: extraction, decoding, and the name-trick checks.

Names come from `Content-Disposition: ...; filename=` and `Content-Type: ...; name=`, in every form
Japanese mail uses: RFC 2231 (`filename*=ISO-2022-JP''%1B%24B...`, continuations `filename*0*=`,
`filename*1*=`, mixed encoded/plain sections, a language tag), RFC 2047 encoded words inside
parameter values (not standard, but what Outlook sends; quoted or not; a character split across
two words is decoded after joining the words' bytes), and raw 8-bit bytes. Every form present is
returned, not only the one a given client would pick: clients disagree on precedence, so the
inspector checks all of them. Decoded names are NFC-normalized; the raw bytes are kept for logs.
"""

from __future__ import annotations

import binascii
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.mime.charsets import REPLACEMENT, decode_text, guess_decode, normalize_charset
from gateway.mime.headers import Params


@dataclass(frozen=True)
class DecodedName:
    source: str  # "filename*", "filename", "name*" or "name" (the parameter it came from)
    raw: bytes  # as written: RFC 2231 sections concatenated, encoded words still encoded
    decoded: str  # NFC
    charset: str | None  # the charset used, "(guessed)" appended when not declared
    defects: tuple[str, ...] = ()


# -- RFC 2231 ------------------------------------------------------------------------------

_SECTION = re.compile(r"^(?P<base>[^*]+)\*(?:(?P<num>[0-9]{1,3})(?P<enc>\*)?)?$")
_PCT = re.compile(rb"%([0-9A-Fa-f]{2})")


def _pct_decode(v: bytes) -> bytes:
    return _PCT.sub(lambda m: bytes((int(m.group(1), 16),)), v)


def _rfc2231(params: Params, base: str) -> DecodedName | None:
    single: bytes | None = None
    sections: dict[int, tuple[bytes, bool]] = {}
    defects: list[str] = []
    for p in params:
        m = _SECTION.match(p.name)
        if m is None or m.group("base") != base:
            continue
        if m.group("num") is None:
            if single is None:
                single = p.value
            continue
        num = int(m.group("num"))
        if num in sections:
            defects.append("rfc2231-duplicate-section")
            continue
        sections[num] = (p.value, m.group("enc") is not None)
    if single is None and not sections:
        return None
    parts: list[tuple[bytes, bool]]
    if single is not None:
        if sections:
            defects.append("rfc2231-single-and-sections")
        parts = [(single, True)]
    else:
        order = sorted(sections)
        if order != list(range(len(order))):
            defects.append("rfc2231-missing-section")
        parts = [sections[k] for k in order]
    raw = b"".join(v for v, _ in parts)
    charset: str | None = None
    data = bytearray()
    for i, (value, encoded) in enumerate(parts):
        if encoded:
            if i == 0:
                pieces = value.split(b"'", 2)
                if len(pieces) == 3:
                    charset = pieces[0].decode("ascii", "replace") or None
                    value = pieces[2]
                else:
                    defects.append("rfc2231-no-charset")
            data += _pct_decode(value)
        else:
            data += value
    text, used, ok = decode_text(bytes(data), charset)
    if not ok:
        defects.append("undecodable")
    return DecodedName(base + "*", raw, _nfc(text), used, tuple(defects))


# -- RFC 2047 ------------------------------------------------------------------------------

_WORD = re.compile(rb"=\?([^?\s]+)\?([BbQq])\?([^?]*)\?=")
_B64_CLEAN = re.compile(rb"[^A-Za-z0-9+/]")


_QP_HEX = re.compile(rb"=([0-9A-Fa-f]{2})")


def _q_decode(text: bytes) -> bytes:
    return _QP_HEX.sub(lambda m: bytes((int(m.group(1), 16),)), text.replace(b"_", b" "))


def _b64(chars: bytes) -> bytes:
    n = len(chars) - len(chars) % 4
    out = binascii.a2b_base64(chars[:n]) if n else b""
    rest = chars[n:]
    if len(rest) >= 2:
        out += binascii.a2b_base64(rest + b"=" * (4 - len(rest)))
    return out


def _decode_word_run(words: list[tuple[bytes, bytes]]) -> bytes:
    """Bytes of adjacent encoded words of one charset, joined BEFORE charset decoding.

    Base64 words that are not a whole number of quanta are joined as text first: some encoders
    split the base64 text itself, not just the bytes.
    """
    out = bytearray()
    carry = b""
    for enc, text in words:
        if enc in (b"b", b"B"):
            padded = b"=" in text
            chars = carry + _B64_CLEAN.sub(b"", text)
            carry = b""
            if padded:
                out += _b64(chars)
            else:
                n = len(chars) - len(chars) % 4
                out += _b64(chars[:n])
                carry = chars[n:]
        else:
            out += _b64(carry)
            carry = b""
            out += _q_decode(text)
    out += _b64(carry)
    return bytes(out)


def decode_encoded_words(value: bytes) -> tuple[str, str | None, bool]:
    """RFC 2047 decoding of a parameter value or unstructured header; (text, charset, ok)."""
    pieces: list[str] = []
    charsets: list[str] = []
    ok = True
    pos = 0
    run: list[tuple[bytes, bytes]] = []
    run_cs = ""

    def flush_run() -> None:
        nonlocal ok, run_cs
        if run:
            text, used, good = decode_text(_decode_word_run(run), run_cs)
            pieces.append(text)
            charsets.append(used)
            ok = ok and good
            run.clear()

    prev_word = False
    for m in _WORD.finditer(value):
        between = value[pos : m.start()]
        ws_only = not between.strip(b" \t\r\n")
        cs = normalize_charset(m.group(1).decode("ascii", "replace"))
        if not (run and ws_only and cs == run_cs):
            flush_run()
            # RFC 2047 6.2: whitespace between adjacent encoded words is not displayed
            if between and not (ws_only and prev_word):
                text, _, good = guess_decode(between)
                pieces.append(text)
                ok = ok and good
        run_cs = cs
        run.append((m.group(2), m.group(3)))
        pos = m.end()
        prev_word = True
    flush_run()
    tail = value[pos:]
    if tail:
        text, _, good = guess_decode(tail)
        pieces.append(text)
        ok = ok and good
    return "".join(pieces), (charsets[0] if charsets else None), ok


def _plain(params: Params, name: str) -> DecodedName | None:
    for p in params:
        if p.name != name:
            continue
        defects: list[str] = []
        if b"=?" in p.value and _WORD.search(p.value):
            text, cs, ok = decode_encoded_words(p.value)
            defects.append("rfc2047-in-parameter")  # what Outlook does; noted, not an error
        else:
            text, used, ok = guess_decode(p.value)
            cs = used
            if not p.value.isascii():
                defects.append("raw-8bit")
        if not ok:
            defects.append("undecodable")
        return DecodedName(name, p.value, _nfc(text), cs, tuple(defects))
    return None


def _nfc(s: str) -> str:
    return unicodedata.normalize("NFC", s)


def extract_names(type_params: Params, disposition_params: Params) -> tuple[DecodedName, ...]:
    """Every filename given for a part, most authoritative first.

    Order: Content-Disposition filename (RFC 2231 form, then plain), then Content-Type name.
    """
    out: list[DecodedName] = []
    for params, base in ((disposition_params, "filename"), (type_params, "name")):
        for found in (_rfc2231(params, base), _plain(params, base)):
            if found is not None:
                out.append(found)
    return tuple(out)


# -- checks ----------------------------------------------------------------------------------


def _exts(s: str) -> frozenset[str]:
    return frozenset(s.split())


BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Run or open when double-clicked, or hold such things: removed by name alone, because scripts are
# plain text to a magic-based classifier (true type text/plain) and Windows decides by extension.
DANGEROUS_EXTENSIONS = _exts("""
    exe com scr pif dll sys ocx drv cpl efi msi msix msixbundle msp mst appx appxbundle application gadget
    bat cmd ps1 psm1 psd1 ps1xml psc1 vb vbs vbe js jse wsf wsh wsc sct hta chm hlp jar jnlp apk reg
    xll xla xlam lnk url scf inf iqy slk settingcontent-ms library-ms search-ms
    iso img vhd vhdx udf one onepkg
    docm dotm xlsm xltm xlsb pptm potm ppsm ppam sldm
    html htm xhtml shtml mht mhtml svg svgz xbap
""")
_INNER_KNOWN = _exts("""
    pdf doc docx xls xlsx ppt pptx txt csv rtf jpg jpeg png gif bmp tif tiff zip lzh rar 7z
    jtd jtdc jww dxf dwg odt ods odp xml mp3 mp4 wav avi mov eml msg html htm
""")
_WIN_RESERVED_CHARS = frozenset('<>:"|?*')
_WIN_DEVICES = frozenset(
    ["con", "prn", "aux", "nul"] + [f"com{i}" for i in range(1, 10)] + [f"lpt{i}" for i in range(1, 10)]
)
_SPACES = " \t\u3000\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f"


def effective_name(name: str) -> str:
    """The name Windows saves: trailing dots and spaces are dropped."""
    return name.rstrip(". " + _SPACES)


def extension(name: str) -> str:
    """Lower-case extension of the effective name, "" if none."""
    eff = effective_name(name)
    base = eff.replace("\\", "/").rsplit("/", 1)[-1]
    dot = base.rfind(".")
    return base[dot + 1 :].lower() if dot > 0 or (dot == 0 and len(base) > 1) else ""


def check_name(
    decoded: str,
    *,
    max_bytes: int = 255,
    true_type: str | None = None,
    table: Mapping[str, frozenset[str]] | None = None,
) -> list[str]:
    """Name tricks in a decoded (NFC) filename; [] if none. Flags are stable strings."""
    flags: list[str] = []
    if any(ch in BIDI_CONTROLS for ch in decoded):
        flags.append("bidi-control")
    cats = [unicodedata.category(ch) for ch in decoded]
    if "Cc" in cats:
        flags.append("control-char")
    if any(c == "Cf" and ch not in BIDI_CONTROLS for c, ch in zip(cats, decoded, strict=True)):
        flags.append("invisible-char")  # zero-width space/joiner, BOM, soft hyphen...
    if REPLACEMENT in decoded:
        flags.append("undecodable")
    if len(decoded.encode("utf-8", "surrogatepass")) > max_bytes:
        flags.append("too-long")
    eff = effective_name(decoded)
    if not eff.strip(_SPACES):
        flags.append("empty")
        return flags
    if eff != decoded:
        flags.append("trailing-dot-or-space")
    if "/" in decoded or "\\" in decoded:
        flags.append("path-separator")
    if any(ch in _WIN_RESERVED_CHARS for ch in decoded) or eff.split(".")[0].strip().lower() in _WIN_DEVICES:
        flags.append("windows-reserved")
    ext = extension(decoded)
    # Look-alikes count as separators for the deceptive inner extension (NFKC: "．" -> "."), and
    # whitespace padding is ignored ("report.pdf　.exe" shows as report.pdf in narrow columns).
    visible = unicodedata.normalize("NFKC", eff)
    segments = [s.strip(_SPACES + "_") for s in visible.split(".")]
    if ext in DANGEROUS_EXTENSIONS and len(segments) >= 3 and segments[-2].lower() in _INNER_KNOWN:
        flags.append("double-extension")
    if re.search(f"[{_SPACES}]{{3,}}", eff):
        flags.append("whitespace-padding")
    if ext in DANGEROUS_EXTENSIONS:
        flags.append("dangerous-extension")
    if true_type is not None and extension_matches(decoded, true_type, table) is False:
        flags.append("type-mismatch")
    return flags


_OOXML = "application/vnd.openxmlformats-officedocument."
_OLE = _exts("doc dot xls xlt xla ppt pps pot msg msi msp mst jtd jtt jtdc jaw jbw juw jfw jvw jsw vsd pub one")
_ZIP_BASED = _exts(
    "zip docx docm dotx dotm xlsx xlsm xltx xltm xlsb pptx pptm ppsx ppsm potx potm odt ods odp odg "
    "epub xps oxps jar apk appx msix kmz vsdx 3mf"
)
# True type (libmagic MIME type, as python-magic reports it) -> extensions that may carry it.
# "" stands for a name without extension.
TRUE_TYPE_EXTENSIONS: Mapping[str, frozenset[str]] = {
    "application/pdf": _exts("pdf"),
    "application/zip": _ZIP_BASED,
    "application/x-zip-compressed": _ZIP_BASED,
    _OOXML + "wordprocessingml.document": _exts("docx docm dotx dotm"),
    _OOXML + "spreadsheetml.sheet": _exts("xlsx xlsm xltx xltm"),
    _OOXML + "presentationml.presentation": _exts("pptx pptm ppsx ppsm potx potm"),
    "application/vnd.ms-word.document.macroenabled.12": _exts("docm dotm"),
    "application/vnd.ms-excel.sheet.macroenabled.12": _exts("xlsm xltm"),
    "application/vnd.ms-powerpoint.presentation.macroenabled.12": _exts("pptm ppsm potm"),
    "application/msword": _OLE,
    "application/vnd.ms-excel": _OLE,
    "application/vnd.ms-powerpoint": _OLE,
    "application/vnd.ms-outlook": _OLE,
    "application/x-ole-storage": _OLE,
    "application/cdfv2": _OLE,
    "application/vnd.oasis.opendocument.text": _exts("odt ott"),
    "application/vnd.oasis.opendocument.spreadsheet": _exts("ods ots"),
    "application/vnd.oasis.opendocument.presentation": _exts("odp otp"),
    "application/x-dosexec": _exts("exe dll scr sys com cpl ocx drv efi mui ax"),
    "application/vnd.microsoft.portable-executable": _exts("exe dll scr sys com cpl ocx drv efi mui ax"),
    "application/x-msi": _exts("msi msp mst"),
    "application/x-executable": _exts("bin elf run so out") | {""},
    "application/x-pie-executable": _exts("bin elf run so out") | {""},
    "application/x-sharedlib": _exts("so bin") | {""},
    "application/x-mach-binary": _exts("dylib bundle bin") | {""},
    "application/java-archive": _exts("jar"),
    "application/vnd.android.package-archive": _exts("apk"),
    "application/x-ms-shortcut": _exts("lnk"),
    "application/vnd.ms-htmlhelp": _exts("chm"),
    "application/vnd.ms-cab-compressed": _exts("cab"),
    "application/x-iso9660-image": _exts("iso img udf"),
    "application/x-7z-compressed": _exts("7z"),
    "application/x-rar": _exts("rar"),
    "application/vnd.rar": _exts("rar"),
    "application/gzip": _exts("gz tgz"),
    "application/x-gzip": _exts("gz tgz"),
    "application/x-tar": _exts("tar"),
    "application/x-bzip2": _exts("bz2 tbz tbz2"),
    "application/x-xz": _exts("xz txz"),
    "application/x-lzh-compressed": _exts("lzh lha"),
    "application/x-lha": _exts("lzh lha"),
    "application/rtf": _exts("rtf doc"),
    "text/rtf": _exts("rtf doc"),
    "text/plain": _exts("txt text csv tsv log md ini cfg conf json xml yaml yml dxf eml"),
    "text/csv": _exts("csv txt"),
    "text/html": _exts("html htm xhtml shtml"),
    "text/xml": _exts("xml kml gml xsl"),
    "application/xml": _exts("xml kml gml xsl"),
    "image/svg+xml": _exts("svg svgz"),
    "image/jpeg": _exts("jpg jpeg jpe jfif"),
    "image/png": _exts("png"),
    "image/gif": _exts("gif"),
    "image/bmp": _exts("bmp dib"),
    "image/x-ms-bmp": _exts("bmp dib"),
    "image/tiff": _exts("tif tiff"),
    "image/webp": _exts("webp"),
    "image/heic": _exts("heic heif"),
    "image/vnd.dxf": _exts("dxf"),
    "image/vnd.dwg": _exts("dwg"),
    "message/rfc822": _exts("eml msg"),
    "audio/mpeg": _exts("mp3"),
    "audio/x-wav": _exts("wav"),
    "video/mp4": _exts("mp4 m4v m4a"),
    "video/quicktime": _exts("mov qt"),
}


def extension_matches(name: str, true_type: str, table: Mapping[str, frozenset[str]] | None = None) -> bool | None:
    """Whether `name`'s extension may carry `true_type`; None if the type is not in the table.

    None means "no opinion" (unknown or generic types such as application/octet-stream): the
    caller decides, typically by the true-type allowlist alone.
    """
    exts = (TRUE_TYPE_EXTENSIONS if table is None else table).get(true_type.strip().lower())
    if exts is None:
        return None
    return extension(name) in exts
