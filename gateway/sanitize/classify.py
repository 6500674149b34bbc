"""Classification of a MIME part by its TRUE type (docs/sanitize.md).

The true type comes from libmagic (python-magic) and from signatures checked here, never from the
name or the declared Content-Type alone; names and the declared type only ADD findings (name
tricks, dangerous extensions, a declared type that a client would act on). Containers are opened
and their members classified with the same rules, recursively, within the profile's limits
(base.Budget). A part is removed when any finding's category, or its own clean category, is not
allowed by the profile; anything that could not be inspected is removed.

    clf = Classifier(profile)
    c = clf.classify_head(first_bytes, names, declared)   # None: needs the whole part
    c = clf.classify_full(data, names, declared)
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import magic

from gateway.mime.names import TRUE_TYPE_EXTENSIONS, DecodedName, check_name, extension
from gateway.sanitize import archives, office, pdf, uuencode
from gateway.sanitize.base import Budget, Finding, LimitHit, Uninspectable, show
from gateway.sanitize.profile import CATEGORIES, MailProfile
from gateway.sanitize.scanners import Clamd, Yara

__all__ = ["CATEGORIES", "Classification", "Classifier", "Finding", "category_of_type"]

MAGIC_BYTES = 1 << 20  # what libmagic gets (it reads no further by default either)
MAX_FINDINGS = 200  # beyond this, only findings of a category not seen yet are kept

# worst first: the worst finding names the classification
SEVERITY: tuple[str, ...] = (
    "malware",
    "executable",
    "script",
    "disk_image",
    "macro_office",
    "pdf_active",
    "html",
    "encrypted",
    "name_trick",
    "limit",
    "too_large",
    "other",
    "archive",
    "office",
    "pdf",
    "cad",
    "image",
    "text",
)
_RANK = {c: i for i, c in enumerate(SEVERITY)}
# categories that describe a harmless type: allowed by category name or by MIME type
CLEAN = frozenset({"archive", "office", "pdf", "cad", "image", "text", "other"})

# -- true type -> category -------------------------------------------------------------------

EXECUTABLE_TYPES = frozenset(
    {
        "application/x-dosexec",
        "application/vnd.microsoft.portable-executable",
        "application/x-msdownload",
        "application/x-ms-ne-executable",
        "application/x-executable",
        "application/x-pie-executable",
        "application/x-sharedlib",
        "application/x-object",
        "application/x-elf",
        "application/x-mach-binary",
        "application/x-mach-o-executable",
        "application/x-ms-shortcut",
        "application/vnd.ms-htmlhelp",
        "application/java-archive",
        "application/x-java-archive",
        "application/x-java-applet",
        "application/java-vm",
        "application/x-java-jnlp-file",
        "application/vnd.android.package-archive",
        "application/x-msi",
        "application/x-ms-installer",
        "application/x-bytecode.python",
        "application/wasm",
    }
)
SCRIPT_TYPES = frozenset(
    {
        "text/x-shellscript",
        "application/x-sh",
        "application/x-shellscript",
        "text/x-msdos-batch",
        "text/x-python",
        "text/x-script.python",
        "text/x-perl",
        "text/x-ruby",
        "text/x-php",
        "application/x-php",
        "text/x-tcl",
        "text/x-lua",
        "text/x-awk",
        "text/javascript",
        "application/javascript",
        "application/x-javascript",
        "text/vbscript",
        "text/x-vbscript",
        "application/x-powershell",
        "text/x-powershell",
    }
)
DISK_TYPES = frozenset(
    {
        "application/x-iso9660-image",
        "application/x-virtualbox-vhd",
        "application/x-virtualbox-vhdx",
        "application/x-virtualbox-vdi",
        "application/x-virtualbox-vmdk",
        "application/x-vmdk",
        "application/x-qemu-disk",
        "application/x-apple-diskimage",
        "application/x-raw-disk-image",
        "application/onenote",
        "application/msonenote",
    }
)
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml", "image/svg+xml", "image/svg"})
ARCHIVE_TYPES = frozenset(
    {
        "application/zip",
        "application/x-zip-compressed",
        "application/gzip",
        "application/x-gzip",
        "application/x-bzip2",
        "application/x-xz",
        "application/x-lzma",
        "application/x-tar",
        "application/x-gtar",
        "application/x-ustar",
    }
)
CAD_TYPES = frozenset({"image/vnd.dxf", "image/vnd.dwg", "application/acad", "application/dxf", "image/x-dwg"})
OFFICE_TYPES = frozenset(
    {
        "application/msword",
        "application/vnd.ms-excel",
        "application/vnd.ms-powerpoint",
        "application/vnd.ms-outlook",
        "application/vnd.visio",
        "application/x-ole-storage",
        "application/cdfv2",
        "application/rtf",
        "text/rtf",
        "application/vnd.ms-xpsdocument",
        "application/oxps",
    }
)
TEXT_TYPES = frozenset(
    {"application/json", "application/xml", "application/csv", "application/x-empty", "inode/x-empty"}
)
_ZIP_TYPES = frozenset({"application/zip", "application/x-zip-compressed"}) | {
    t for t in TRUE_TYPE_EXTENSIONS if t.startswith("application/vnd.openxmlformats") or "macroenabled" in t
}


def category_of_type(true_type: str) -> str:
    """The category a libmagic MIME type stands for (before looking inside)."""
    t = true_type.lower()
    if t in EXECUTABLE_TYPES:
        return "executable"
    if t in SCRIPT_TYPES:
        return "script"
    if t in DISK_TYPES:
        return "disk_image"
    if t in HTML_TYPES:
        return "html"
    if t in archives.UNINSPECTABLE_MIME or t == "application/encrypted":
        return "encrypted"
    if t in ARCHIVE_TYPES:
        return "archive"
    if t == "application/pdf":
        return "pdf"
    if t in CAD_TYPES:
        return "cad"
    if t.startswith("image/"):
        return "image"
    if (
        t in OFFICE_TYPES
        or t.startswith(("application/vnd.openxmlformats-officedocument.", "application/vnd.oasis.opendocument."))
        or t.startswith(("application/vnd.ms-word", "application/vnd.ms-excel", "application/vnd.ms-powerpoint"))
    ):
        return "office"
    if t.startswith("text/") or t in TEXT_TYPES:
        return "text"
    return "other"


_LNK = b"\x4c\0\0\0\x01\x14\x02\0\0\0\0\0\xc0\0\0\0\0\0\0\x46"
_ONENOTE = bytes.fromhex("e4525c7b8cd8a74daeb15378d02996d3")
_HTML_MARKERS = (b"<html", b"<!doctype html", b"<svg", b"<script", b"<hta:application", b"<iframe", b"<body", b"<head")


def _signature(data: bytes, window: int) -> tuple[str, str] | None:
    """(category, what) for formats recognized here: libmagic misses or mislabels some of them
    (OneNote, VHDX, registry scripts, JWW), and a few must never depend on its version."""
    if data[:2] == b"MZ" and len(data) >= 0x40:
        pe = int.from_bytes(data[0x3C:0x40], "little")
        if data[pe : pe + 4] == b"PE\0\0":
            return "executable", "PE executable"
    if data[:4] == b"\x7fELF":
        return "executable", "ELF executable"
    if data[:4] in (b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe"):
        return "executable", "Mach-O executable"
    if data[:4] == b"\xca\xfe\xba\xbe":
        return "executable", "Mach-O universal binary or Java class"
    if data[:4] == b"dex\n":
        return "executable", "Android DEX bytecode"
    if data[:20] == _LNK:
        return "executable", "Windows shortcut (LNK)"
    if data[:4] == b"ITSF":
        return "executable", "compiled HTML help (CHM)"
    if data[:16] == _ONENOTE:
        return "disk_image", "OneNote section"
    if data[:8] == b"vhdxfile":
        return "disk_image", "VHDX disk image"
    if data[:8] == b"conectix" or (len(data) >= 512 and data[-512:-504] in (b"conectix", b"\0conecti")):
        return "disk_image", "VHD disk image"
    if data[:8] == b"MSWIM\0\0\0":
        return "disk_image", "Windows imaging (WIM) image"
    if data[:4] in (b"KDMV", b"QFI\xfb") or data[:40].startswith(b"<<< Oracle VM VirtualBox Disk Image"):
        return "disk_image", "virtual machine disk image"
    for off in (0x8001, 0x8801, 0x9001):
        if data[off : off + 5] in (b"CD001", b"BEA01", b"NSR02", b"NSR03"):
            return "disk_image", "ISO 9660/UDF disk image"
    if len(data) >= 512 and data[-512:-508] == b"koly":
        return "disk_image", "Apple disk image (DMG)"
    text = data[:64].lstrip(b"\xef\xbb\xbf")
    if text.startswith((b"REGEDIT4", b"Windows Registry Editor")) or data[:64].replace(b"\0", b"").lstrip(
        b"\xff\xfe"
    ).startswith(b"Windows Registry Editor"):
        return "script", "Windows registry script"
    if text.startswith(b"#!") and text[2:].lstrip(b" \t").startswith(b"/"):
        # an interpreter line: libmagic names the interpreters it knows (text/x-shellscript, ...)
        # and calls the rest text/plain (#!/usr/sbin/nft -f, #!/usr/bin/env node)
        return "script", "script with an #! interpreter line"
    if data[:8] == b"JwwData.":
        return "cad", "Jw_cad drawing (JWW)"
    head = data[:window].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<") and any(m in head for m in _HTML_MARKERS):
        return "html", "HTML/SVG markup"
    return None


# -- names -------------------------------------------------------------------------------------

_EXT_CATEGORY: dict[str, str] = {}
for _cat, _exts in (
    ("script", "bat cmd ps1 psm1 psd1 ps1xml psc1 vb vbs vbe js jse wsf wsh wsc sct hta reg"),
    ("disk_image", "iso img vhd vhdx udf one onepkg"),
    ("macro_office", "docm dotm xlsm xltm xlsb pptm potm ppsm ppam sldm xla xlam slk iqy"),
    ("html", "html htm xhtml shtml mht mhtml svg svgz"),
):
    for _e in _exts.split():
        _EXT_CATEGORY[_e] = _cat
# extension -> categories of the true types it may carry (to tolerate harmless mix-ups)
_EXT_FAMILY: dict[str, set[str]] = {}
for _t, _es in TRUE_TYPE_EXTENSIONS.items():
    for _e in _es:
        _EXT_FAMILY.setdefault(_e, set()).add(category_of_type(_t))
_TOLERATED_FAMILIES = frozenset({"image", "text", "office", "cad"})


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Classification:
    true_type: str  # libmagic MIME type, e.g. "application/x-dosexec"
    description: str  # libmagic text
    category: str  # the worst finding's category, or the clean category
    findings: tuple[Finding, ...]
    verdict: Literal["pass", "remove"]
    action: Literal["pass", "neutralize", "refuse"]
    reason: str


@dataclass(frozen=True)
class _Node:
    true_type: str
    description: str
    category: str


class _Walk:
    """One part's classification: findings and budget shared by everything nested in it."""

    def __init__(self, clf: Classifier) -> None:
        self.clf = clf
        self.budget = Budget(clf.profile)
        self.findings: dict[Finding, None] = {}
        self.seen_categories: set[str] = set()

    def add(self, finding: Finding) -> None:
        if len(self.findings) >= MAX_FINDINGS and finding.category in self.seen_categories:
            return
        self.findings[finding] = None
        self.seen_categories.add(finding.category)

    def names(self, names: Sequence[str], node: _Node, where: str) -> None:
        for name in dict.fromkeys(names):
            for f in self.clf.name_findings(name, node, where):
                self.add(f)

    def member(self, data: bytes, names: Sequence[str], where: str, depth: int, *, allowlist: bool = True) -> None:
        node = self.analyze(data, names, where, depth)
        if allowlist and node.category in CLEAN and not self.clf.allows(node.category, node.true_type):
            self.add(Finding(node.category, f"{node.description} at {where}: type not allowed"))

    def analyze(self, data: bytes, names: Sequence[str], where: str, depth: int) -> _Node:
        clf = self.clf
        tt, desc = clf.magic(data)
        sig = _signature(data, clf.profile.head_bytes)
        category, what = sig if sig else (category_of_type(tt), desc)
        if category in CLEAN or category == "encrypted":
            before = sum(1 for f in self.findings if f.category == "encrypted")
            category = self.look_inside(data, tt, category, names, where, depth)
            if category == "encrypted" and before == sum(1 for f in self.findings if f.category == "encrypted"):
                self.add(Finding("encrypted", f"{what} at {where}: cannot be inspected"))
        elif category not in CLEAN:
            self.add(Finding(category, f"{what} at {where}"))
        node = _Node(tt, desc, category)
        self.names(names, node, where)
        if clf.yara is not None:
            for f in clf.yara.scan(data, where):
                self.add(f)
        return node

    def look_inside(self, data: bytes, tt: str, category: str, names: Sequence[str], where: str, depth: int) -> str:
        """Open containers and documents; returns the refined category."""
        try:
            kind = archives.uninspectable_kind(data, tt)
            if kind is not None:
                self.add(Finding("encrypted", f"{kind} cannot be inspected (contents unknown) at {where}"))
                return "encrypted"
            if data[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08") or tt in _ZIP_TYPES:
                reader = archives.ZipReader(data, where, self.budget)
                zkind = office.zip_kind(reader)
                if zkind in ("jar", "apk", "appx"):
                    self.add(Finding("executable", f"{zkind.upper()} package at {where}"))
                    return "executable"
                if zkind in ("ooxml", "odf"):
                    office.walk_office_zip(reader, zkind, self, where, depth + 1)
                    return "office"
                archives.walk_zip(reader, self, where, depth + 1)
                return "archive"
            if data[:8] == office.OLE_MAGIC:
                return office.analyze_ole(data, self, where, depth + 1)
            if b"%PDF-" in data[:1024]:
                pdf.scan_pdf(data, self, where)
                return "pdf"
            if data.lstrip()[:4] == b"{\\rt":
                office.rtf_findings(data, self, where)
                return "office"
            comp = _compressor(data)
            if comp is not None:
                self.decompressed(comp, data, names, where, depth)
                return "archive"
            if archives.is_tar(data):
                archives.walk_tar(data, self, where, depth + 1)
                return "archive"
            if category in ("text", "other") and b"begin" in data:
                # uuencoded files in a text: mail clients offer them as attachments
                for name, decoded in uuencode.blocks(data, self.budget, where):
                    self.budget.enter(depth + 1, where)
                    self.member(decoded, [name], f"{where}/{show(name)} (uuencoded)", depth + 1)
        except Uninspectable as exc:
            self.add(Finding("encrypted", f"{exc} at {where}: cannot be inspected"))
            return "encrypted"
        return category

    def decompressed(self, kind: str, data: bytes, names: Sequence[str], where: str, depth: int) -> None:
        self.budget.enter(depth + 1, where)
        inner = archives.decompress(kind, data, self.budget, where)
        inner_name = archives.gzip_name(data) if kind == "gzip" else ""
        if not inner_name and names:
            inner_name = archives.strip_suffix(names[0], (".gz", ".tgz", ".bz2", ".tbz", ".xz", ".txz", ".lzma"))
        if archives.is_tar(inner):
            # a tar inside gzip/bzip2/xz is one archive (.tar.gz), not two nesting levels
            archives.walk_tar(inner, self, f"{where}", depth + 1)
            return
        self.budget.take_member(where)
        self.member(inner, [inner_name] if inner_name else [], f"{where}/{inner_name or '(decompressed)'}", depth + 1)


def _texts(names: Sequence[str | DecodedName]) -> list[str]:
    """Names as text: plain strings, or the MIME parser's DecodedName (its decoded form)."""
    return [n if isinstance(n, str) else n.decoded for n in names]


def _compressor(data: bytes) -> str | None:
    if data[:2] == b"\x1f\x8b":
        return "gzip"
    if data[:3] == b"BZh" and data[3:4].isdigit():
        return "bzip2"
    if data[:6] == b"\xfd7zXZ\0" or data[:3] == b"\x5d\0\0":
        return "xz"  # xz, or a raw .lzma stream (the decompressor detects the format)
    return None


_DECLARED: dict[str, str] = {}
for _t in HTML_TYPES:
    _DECLARED[_t] = "html"
_DECLARED_EXECUTABLE = """application/x-msdownload application/x-msdos-program application/x-dosexec
    application/x-executable application/vnd.microsoft.portable-executable application/x-ms-shortcut
    application/x-msi application/java-archive application/vnd.android.package-archive application/hta"""
_DECLARED_SCRIPT = """application/javascript text/javascript application/x-javascript text/vbscript
    application/x-sh application/x-bat application/x-powershell"""
for _t in _DECLARED_EXECUTABLE.split():
    _DECLARED[_t] = "executable"
for _t in _DECLARED_SCRIPT.split():
    _DECLARED[_t] = "script"


class Classifier:
    """Classifies parts for one profile. Not thread-safe beyond libmagic calls (serialized):
    use one per worker."""

    def __init__(self, profile: MailProfile) -> None:
        self.profile = profile
        self._cats = frozenset(t for t in profile.allowed_types if "/" not in t)
        self._mimes = frozenset(t for t in profile.allowed_types if "/" in t and not t.endswith("/*"))
        self._mime_prefixes = tuple(t[:-1] for t in profile.allowed_types if t.endswith("/*"))
        self._magic_lock = threading.Lock()
        self._mime = magic.Magic(mime=True)
        self._text = magic.Magic()
        # For a part libmagic calls text/plain no soft-magic entry carrying a MIME type matched, so
        # its description comes from the text checks alone: asking without the soft magic gives it
        # in ~5 us instead of ~500 (the soft-magic pass over text is libmagic's slowest path, and
        # every mail has a text part). What is lost is a name a type-less entry would add
        # ("Netscape cookie, ASCII text"), cosmetic only: the category comes from the MIME type
        # and _signature, never from the description.
        self._text_plain = magic.Magic()
        magic.magic_setflags(self._text_plain.cookie, magic.MAGIC_NO_CHECK_SOFT)
        self.yara = Yara(profile.yara_rules, profile.scan_timeout) if profile.yara_rules else None
        self.clamd = Clamd(profile.clamd_socket, profile.scan_timeout) if profile.clamd_socket else None
        # attachments = "remove": the head settles an attachment's fate when no category the whole
        # part could still reveal would refuse the message instead of neutralizing the part
        # (limit and too_large aside: a part removed unseen need not be inspected to its end, and
        # the inspector refuses a part too large to quarantine whole by itself); with a scanner
        # configured the whole part is still scanned, so its findings reach the event
        self._removal_settled = (
            all(profile.action_for(c) == "neutralize" for c in CATEGORIES if c not in ("limit", "too_large"))
            and self.yara is None
            and self.clamd is None
        )

    # -- helpers used by the walk ----------------------------------------------------------

    def magic(self, data: bytes) -> tuple[str, str]:
        buf = data[:MAGIC_BYTES]
        try:
            with self._magic_lock:
                mime = self._mime.from_buffer(buf)
                describe = self._text_plain if mime.strip().lower() == "text/plain" else self._text
                text = describe.from_buffer(buf)
        except magic.MagicException as exc:
            return "application/octet-stream", f"unknown (libmagic: {exc})"
        return mime.strip().lower(), text.strip()

    def allows(self, category: str, true_type: str) -> bool:
        if category in self._cats:
            return True
        if category not in CLEAN:
            return False
        return true_type in self._mimes or true_type.startswith(self._mime_prefixes)

    def name_findings(self, name: str, node: _Node, where: str, *, mismatch: bool = True) -> list[Finding]:
        out: list[Finding] = []
        flags = check_name(name, max_bytes=self.profile.max_name_bytes, true_type=node.true_type)
        for flag in flags:
            if flag == "empty":
                continue
            if flag == "dangerous-extension":
                ext = extension(name)
                cat = _EXT_CATEGORY.get(ext, "executable")
                out.append(Finding(cat, f"dangerous extension .{ext} in name {show(name)!r} at {where}"))
            elif flag == "type-mismatch":
                if not mismatch:
                    continue
                ext = extension(name)
                if not ext and node.category in CLEAN:
                    continue  # no extension: Windows opens nothing by double-click
                if node.category in _TOLERATED_FAMILIES and node.category in _EXT_FAMILY.get(ext, set()):
                    continue  # a PNG named .jpg, a .docx saved as .doc: same kind of thing
                out.append(Finding("name_trick", f"name {show(name)!r} does not match its true type {node.true_type}"))
            else:
                out.append(Finding("name_trick", f"{flag} in name {show(name)!r} at {where}"))
        return out

    def _declared(self, declared: str, node: _Node, where: str) -> list[Finding]:
        d = declared.split(";", 1)[0].strip().lower()
        out = []
        cat = _DECLARED.get(d)
        if cat is not None:
            # a client may act on the declared type (render HTML, run a script) whatever the bytes are
            out.append(Finding(cat, f"declared as {d} at {where}"))
        mismatch = (d.startswith("image/") and d not in HTML_TYPES and node.category not in ("image", "cad")) or (
            d == "application/pdf" and node.category != "pdf"
        )
        if mismatch and node.category in CLEAN:
            out.append(Finding("name_trick", f"declared {d} but the true type is {node.true_type} at {where}"))
        return out

    # -- API -------------------------------------------------------------------------------------

    def classify_head(
        self, head: bytes, names: Sequence[str | DecodedName], declared: str, body: bool = False
    ) -> Classification | None:
        """Decide from the first `head_bytes` decoded bytes when the rest cannot change the verdict:
        removal by name or by a type recognized at the start (executables, scripts, HTML, disk and
        uninspectable archive formats), or an allowed image. None: the whole part is needed."""
        names = _texts(names)
        p = self.profile
        if len(head) < p.head_bytes:
            return self.classify_full(head, names, declared, body)  # the head is the whole part
        head = head[: p.head_bytes]
        walk = _Walk(self)
        where = show(names[0]) if names else "(unnamed part)"
        tt, desc = self.magic(head)
        sig = _signature(head, p.head_bytes)
        category, what = sig if sig else (category_of_type(tt), desc)
        if category == "encrypted" or archives.uninspectable_kind(head, tt):
            kind = archives.uninspectable_kind(head, tt) or what
            walk.add(Finding("encrypted", f"{kind} cannot be inspected (contents unknown) at {where}"))
            category = "encrypted"
        elif category not in CLEAN:
            walk.add(Finding(category, f"{what} at {where}"))
        node = _Node(tt, desc, category)
        decisive_type = category not in CLEAN or category == "image"
        for name in dict.fromkeys(names):
            # a type mismatch judged from the head is final only for types recognized at the start
            for f in self.name_findings(name, node, where, mismatch=decisive_type):
                walk.add(f)
        for f in self._declared(declared, node, where):
            if decisive_type or f.category != "name_trick":
                walk.add(f)
        findings = list(walk.findings)
        if any(f.category not in self._cats for f in findings):
            return self._decide(node, findings, body)
        if (
            category == "image"
            and not findings
            and self.yara is None
            and self.clamd is None
            and p.attachments == "inspect"
            and self.allows(category, tt)
        ):
            return self._decide(node, findings, body)
        if p.attachments == "remove" and not body and self._removal_settled:
            # every attachment goes whatever the rest holds: decide now, so the part is neutralized
            # as it streams instead of held whole and then refused as decided late
            return self._decide(node, findings, body)
        return None

    def classify_full(
        self, data: bytes, names: Sequence[str | DecodedName], declared: str, body: bool = False
    ) -> Classification:
        names = _texts(names)
        where = show(names[0]) if names else "(unnamed part)"
        walk = _Walk(self)
        if len(data) > self.profile.max_part_bytes:
            tt, desc = self.magic(data)
            node = _Node(tt, desc, "too_large")
            walk.add(Finding("too_large", f"{len(data)} bytes, more than max_part_bytes={self.profile.max_part_bytes}"))
            return self._decide(node, list(walk.findings), body)
        try:
            node = walk.analyze(data, names, where, 0)
        except LimitHit as exc:
            tt, desc = self.magic(data)
            node = _Node(tt, desc, "limit")
            walk.add(Finding("limit", str(exc)))
        except Exception as exc:  # fail closed: a reader bug must not pass a part
            tt, desc = self.magic(data)
            node = _Node(tt, desc, "limit")
            walk.add(Finding("limit", f"inspection failed at {where}: {type(exc).__name__}: {exc}"))
        for f in self._declared(declared, node, where):
            walk.add(f)
        if node.category in CLEAN and not self.allows(node.category, node.true_type):
            walk.add(Finding(node.category, f"{node.description} ({node.true_type}) at {where}: type not allowed"))
        if self.clamd is not None:
            for f in self.clamd.scan(data, where):
                walk.add(f)
        return self._decide(node, list(walk.findings), body)

    def _decide(self, node: _Node, findings: list[Finding], body: bool = False) -> Classification:
        """`body`: the part is the message text (not an attachment), which attachments = "remove"
        keeps; its true type is still checked like any part's."""
        p = self.profile
        removal = [f for f in findings if f.category not in self._cats]
        if body and p.html_to_text:
            # an HTML message text is converted to text in place by the inspector (body 無害化),
            # not removed: the recipient keeps the message, without markup, scripts or live links
            removal = [f for f in removal if f.category != "html"]
        if not removal and p.attachments == "remove" and not body:
            removal = [Finding(node.category, 'the profile removes every attachment (attachments = "remove")')]
        if removal:
            worst = min(removal, key=lambda f: _RANK.get(f.category, 0))
            action: Literal["neutralize", "refuse"] = (
                "refuse" if any(p.action_for(f.category) == "refuse" for f in removal) else "neutralize"
            )
            reason = worst.reason + (f" (+{len(removal) - 1} more)" if len(removal) > 1 else "")
            return Classification(
                node.true_type, node.description, worst.category, tuple(findings), "remove", action, reason
            )
        category = min(findings, key=lambda f: _RANK.get(f.category, 0)).category if findings else node.category
        return Classification(
            node.true_type,
            node.description,
            category,
            tuple(findings),
            "pass",
            "pass",
            f"allowed: {category} ({node.true_type})",
        )
