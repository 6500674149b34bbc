"""Office documents: macros, encryption and embedded objects.

OLE (Word/Excel/PowerPoint 97-2003, 一太郎 .jtd, Outlook .msg, MSI) is read with olefile; the
VBA test is the MS-OVBA structure (a `VBA` storage with a `dir` stream, or `_VBA_PROJECT`),
confirmed by oletools' olevba detector, which also finds orphaned VBA source. olevba is not run
on PowerPoint files: its PPT path decompresses embedded storages without a bound, so PowerPoint
is checked for the VBAInfo record instead. Excel 4.0 (XLM) macro sheets are found in the BIFF
BOUNDSHEET records. Encryption: OOXML saved with a password (EncryptionInfo/EncryptedPackage),
Word's fEncrypted/fObfuscated FIB flags, Excel's FILEPASS record, PowerPoint's EncryptedSummary.
Embedded files (OLE "Package" objects, .msg attachments) are handed back to the walker and
classified like attachments; embedded documents are checked for active content.

OOXML/ODF are zips: the parts that can carry code are looked at (vbaProject.bin, macro sheets,
ActiveX, [Content_Types].xml, external template/OLE relationships, DDE fields, ODF Basic/Scripts,
embeddings and any OLE-typed part); text and media parts are not read.
"""

from __future__ import annotations

import io
import re
import struct
import unicodedata
import warnings

import olefile  # type: ignore[import-untyped]

from gateway.sanitize.archives import ZipMember, ZipReader
from gateway.sanitize.base import Finding, Uninspectable, Walker, show

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_INSTALLER_CLSIDS = {
    "000C1084-0000-0000-C000-000000000046": "Windows Installer package (MSI)",
    "000C1086-0000-0000-C000-000000000046": "Windows Installer patch (MSP)",
    "000C1082-0000-0000-C000-000000000046": "Windows Installer transform (MST)",
}
# PowerPoint: VBAInfoContainer (recType 0x03FF) followed by its VBAInfoAtom (0x0400, length 12)
_PPT_VBA = re.compile(rb"\x0f\x00\xff\x03.{4}\x02\x00\x00\x04\x0c\x00\x00\x00", re.DOTALL)
MAX_XML = 4 << 20  # an XML part larger than this is read only up to here (indicators are near the top)


# -- OLE ---------------------------------------------------------------------------------------


def _stream(ole: olefile.OleFileIO, path: list[str], walker: Walker, where: str) -> bytes:
    data: bytes = ole.openstream(path).read()
    # streams may share sectors (a CFB can point many streams at the same data): charge each read
    walker.budget.take_bytes(len(data), where)
    return data


def _biff_flags(wb: bytes) -> tuple[bool, bool]:
    """(FILEPASS seen, macro sheet seen) in the workbook globals substream."""
    pos, encrypted, xlm = 0, False, False
    for _ in range(100_000):
        if pos + 4 > len(wb):
            break
        rtype, size = struct.unpack_from("<HH", wb, pos)
        body = wb[pos + 4 : pos + 4 + size]
        if rtype == 0x002F:
            encrypted = True
        elif rtype == 0x0085 and len(body) >= 6 and body[5] in (1, 6):
            xlm = True  # dt 1: Excel 4.0 macro sheet, 6: VB module (Excel 5)
        elif rtype == 0x000A:
            break
        pos += 4 + size
    return encrypted, xlm


def _olevba_detects(data: bytes) -> bool:
    try:
        with warnings.catch_warnings():  # olevba's pyparsing grammar warns on import
            warnings.simplefilter("ignore")
            from oletools import olevba  # type: ignore[import-untyped]

        parser = olevba.VBA_Parser("part", data=data, relaxed=True)
        try:
            return bool(parser.detect_vba_macros())
        finally:
            parser.close()
    except Exception:  # olevba raises many types on malformed input; structure check stands
        return False


def _ole_native(body: bytes) -> tuple[list[str], bytes] | None:
    """Names and payload of an Ole10Native stream (an embedded "Package" file)."""
    try:
        size = struct.unpack_from("<I", body, 0)[0]
        pos = 6
        names: list[str] = []
        for _ in range(2):  # label, source path
            end = body.index(b"\0", pos)
            names.append(body[pos:end].decode("cp932", "replace"))
            pos = end + 1
        pos += 8
        end = body.index(b"\0", pos)
        names.append(body[pos:end].decode("cp932", "replace"))  # temp path
        pos = end + 1
        length = struct.unpack_from("<I", body, pos)[0]
        payload = body[pos + 4 : pos + 4 + length]
        del size
    except (struct.error, ValueError):
        return None
    base = [unicodedata.normalize("NFC", n.replace("\\", "/").rsplit("/", 1)[-1]) for n in names if n]
    return list(dict.fromkeys(b for b in base if b)), payload


def _msg_attachments(ole: olefile.OleFileIO, paths: list[list[str]], walker: Walker, where: str, depth: int) -> None:
    for p in paths:
        if not p[-1].lower().startswith("__attach_version1.0_#") or ole.get_type(p) != olefile.STGTY_STORAGE:
            continue
        names: list[str] = []
        for prop in ("3707001F", "3704001F", "3001001F"):
            q = [*p, f"__substg1.0_{prop}"]
            if ole.exists("/".join(q)):
                names.append(_stream(ole, q, walker, where).decode("utf-16-le", "replace").rstrip("\0"))
        data_path = [*p, "__substg1.0_37010102"]
        if not ole.exists("/".join(data_path)):
            continue  # embedded message (its streams are walked as part of this file)
        label = names[0] if names else p[-1]
        sub = f"{where}/{show(label)}"
        walker.budget.take_member(sub)
        shown = [unicodedata.normalize("NFC", n) for n in names]
        walker.member(_stream(ole, data_path, walker, sub), shown, sub, depth)


def analyze_ole(data: bytes, walker: Walker, where: str, depth: int) -> str:
    """Findings of an OLE compound file; returns its clean category."""
    try:
        ole = olefile.OleFileIO(io.BytesIO(data))
    except Exception as exc:  # olefile raises OSError, struct.error, IndexError... on junk
        raise Uninspectable(f"corrupt OLE file ({exc})") from None
    try:
        return _analyze_ole(ole, data, walker, where, depth)
    except (OSError, struct.error, IndexError, ValueError, KeyError) as exc:
        raise Uninspectable(f"corrupt OLE file ({exc})") from None
    finally:
        ole.close()


def _analyze_ole(ole: olefile.OleFileIO, data: bytes, walker: Walker, where: str, depth: int) -> str:
    paths: list[list[str]] = ole.listdir(streams=True, storages=True)
    lower = {"/".join(p).lower() for p in paths}
    clsid = (ole.root.clsid or "").upper()
    if clsid in _INSTALLER_CLSIDS:
        walker.add(Finding("executable", f"{_INSTALLER_CLSIDS[clsid]} at {where}"))
        return "executable"
    if "encryptioninfo" in lower and "encryptedpackage" in lower:
        walker.add(Finding("encrypted", f"password-protected Office document (EncryptedPackage) at {where}"))
        return "encrypted"
    category = "office"
    if "worddocument" in lower:
        fib = _stream(ole, ["WordDocument"], walker, where)[:12]
        if len(fib) >= 12 and struct.unpack_from("<H", fib, 10)[0] & 0x8100:
            walker.add(Finding("encrypted", f"password-protected Word document at {where}"))
    for book in ("workbook", "book"):
        if book in lower:
            encrypted, xlm = _biff_flags(_stream(ole, [book.capitalize()], walker, where))
            if encrypted:
                walker.add(Finding("encrypted", f"password-protected Excel workbook (FILEPASS) at {where}"))
            if xlm:
                walker.add(Finding("macro_office", f"Excel 4.0 (XLM) macro sheet at {where}"))
    is_ppt = "powerpoint document" in lower
    if is_ppt:
        if "encryptedsummary" in lower:
            walker.add(Finding("encrypted", f"password-protected PowerPoint presentation at {where}"))
        if _PPT_VBA.search(_stream(ole, ["PowerPoint Document"], walker, where)):
            walker.add(Finding("macro_office", f"VBA macros (PowerPoint VBAInfo) at {where}"))
    vba = sorted(
        "/".join(p)
        for p in paths
        if (len(p) >= 2 and p[-2].lower() == "vba" and p[-1].lower() == "dir") or p[-1].lower() == "_vba_project"
    )
    if vba:
        walker.add(Finding("macro_office", f"VBA macros ({vba[0].rsplit('/', 1)[0]}) at {where}"))
    elif not is_ppt and _olevba_detects(data):
        walker.add(Finding("macro_office", f"VBA macro code (olevba) at {where}"))
    for p in paths:
        leaf = p[-1]
        if ole.get_type(p) != olefile.STGTY_STREAM:
            continue
        sub = f"{where}/{show('/'.join(p))}"
        if leaf == "\x01Ole10Native":
            native = _ole_native(_stream(ole, p, walker, sub))
            if native is None:
                walker.add(Finding("encrypted", f"embedded package that cannot be read at {sub}"))
                continue
            names, payload = native
            label = names[0] if names else "embedded file"
            walker.budget.take_member(sub)
            walker.budget.enter(depth, sub)
            walker.member(payload, names, f"{where}/{show(label)}", depth)
        elif leaf.lower() == "equation native":
            walker.add(Finding("macro_office", f"Equation Editor object (exploited by CVE-2017-11882) at {sub}"))
        elif leaf in ("Package", "CONTENTS") and len(p) >= 2:
            walker.budget.take_member(sub)
            walker.budget.enter(depth, sub)
            walker.member(_stream(ole, p, walker, sub), [], sub, depth, allowlist=False)
    _msg_attachments(ole, paths, walker, where, depth)
    return category


# -- OOXML / ODF / zip-packaged executables ---------------------------------------------------

_MACRO_CT = re.compile(rb"macroEnabled", re.IGNORECASE)
_XLSB_CT = re.compile(rb"sheet\.binary\.macroEnabled\.main", re.IGNORECASE)
_REL = re.compile(rb"<(?:\w+:)?Relationship\b[^>]*>", re.IGNORECASE)
_ATTR = re.compile(rb"""(\w+)\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_EXTERNAL_TYPES = ("attachedtemplate", "oleobject", "frame", "subdocument")
_DDE = re.compile(rb"(?i)(instrText[^>]*>[^<]*\bDDE(AUTO)?\b|instr\s*=\s*\"[^\"]*\bDDE(AUTO)?\b)")


def zip_kind(reader: ZipReader) -> str | None:
    """What a zip really is: "ooxml", "odf", "jar", "apk", "appx", or None (a plain archive)."""
    names = reader.names_lower()
    if names & {"appxmanifest.xml", "appxbundlemanifest.xml", "appxmetadata/appxbundlemanifest.xml"}:
        return "appx"
    if "androidmanifest.xml" in names and any(n.endswith(".dex") for n in names):
        return "apk"
    if "meta-inf/manifest.mf" in names and any(n.endswith(".class") for n in names):
        return "jar"
    if "[content_types].xml" in names and any(n.startswith(("word/", "xl/", "ppt/", "visio/")) for n in names):
        return "ooxml"
    mt = reader.find("mimetype")
    if mt is not None and not mt.encrypted:
        try:
            head = reader.read(mt, "mimetype", limit=128)
        except Uninspectable:
            return None
        if head.startswith(b"application/vnd.oasis.opendocument") or head.startswith(b"application/vnd.sun.xml"):
            return "odf"
    return None


def _rels(data: bytes, path: str, walker: Walker) -> None:
    for m in _REL.finditer(data):
        attrs = {a.group(1).lower(): (a.group(2) or a.group(3) or b"") for a in _ATTR.finditer(m.group())}
        if attrs.get(b"targetmode", b"").lower() != b"external":
            continue
        rtype = attrs.get(b"type", b"").decode("utf-8", "replace").rsplit("/", 1)[-1].lower()
        if rtype in _EXTERNAL_TYPES:
            target = attrs.get(b"target", b"").decode("utf-8", "replace")[:200]
            why = f"external {rtype} reference to {target!r} (remote template/object) in {path}"
            walker.add(Finding("macro_office", why))


def walk_office_zip(reader: ZipReader, kind: str, walker: Walker, where: str, depth: int) -> None:
    walker.budget.enter(depth, where)
    macro_parts: list[str] = []
    for m in reader.members:
        name = m.info.filename
        low = name.lower()
        path = f"{where}/{show(m.path)}"
        walker.budget.take_member(path)
        if m.info.is_dir():
            continue
        if m.encrypted:
            walker.add(Finding("encrypted", f"encrypted part {path}"))
            continue
        if kind == "ooxml":
            if low.endswith("vbaproject.bin") or low.endswith("vbadata.xml"):
                macro_parts.append(name)
                continue
            if "/macrosheets/" in "/" + low:
                walker.add(Finding("macro_office", f"Excel 4.0 (XLM) macro sheet {name} in {where}"))
                continue
            if "/activex/" in "/" + low and low.endswith(".bin"):
                walker.add(Finding("macro_office", f"ActiveX control {name} in {where}"))
                continue
            if low == "[content_types].xml":
                ct = _read(reader, m, path)
                if _MACRO_CT.search(_XLSB_CT.sub(b"", ct)):
                    walker.add(Finding("macro_office", f"macro-enabled Office document type at {where}"))
                continue
            if low.endswith(".rels"):
                _rels(_read(reader, m, path), path, walker)
                continue
            if low == "word/document.xml":
                if _DDE.search(_read(reader, m, path)):
                    walker.add(Finding("macro_office", f"DDE field (runs a command) in {path}"))
                continue
        else:  # odf
            if low.startswith(("basic/", "scripts/")):
                macro_parts.append(name)
                continue
            if low == "content.xml" and b"vnd.sun.star.script:" in _read(reader, m, path):
                walker.add(Finding("macro_office", f"macro event binding (vnd.sun.star.script) in {path}"))
                continue
        embedded = "/embeddings/" in "/" + low or low.startswith("object ") or "/object " in low
        if embedded or _peek(reader, m, path) == OLE_MAGIC:
            walker.member(reader.read(m, path), [], path, depth, allowlist=False)
    if macro_parts:
        walker.add(Finding("macro_office", f"macros ({', '.join(sorted(macro_parts)[:3])}) in {where}"))


def _read(reader: ZipReader, m: ZipMember, path: str) -> bytes:
    return reader.read(m, path, limit=MAX_XML)


def _peek(reader: ZipReader, m: ZipMember, path: str) -> bytes:
    if m.info.file_size < 512:
        return b""
    return reader.read(m, path, limit=8)


_RTF_OBJECT = re.compile(rb"\\obj(?:data|emb|link|autlink|sub|pub|icemb|html|ocx|update|class|w|h)?")


def rtf_findings(data: bytes, walker: Walker, where: str) -> None:
    if _RTF_OBJECT.search(data):
        walker.add(Finding("macro_office", f"RTF with an embedded OLE object at {where}"))
