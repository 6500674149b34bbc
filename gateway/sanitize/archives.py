"""Archives, read with bounded memory and work: zip, gzip, bzip2, xz, tar.

Every decompression asks for at most the bytes the budget still allows (never `read()` without a
size, never a one-shot `decompress`), so a bomb costs at most `archive_max_total_bytes` of memory
and time before it becomes a "limit" finding. Formats without such a reader in pure Python (7z,
RAR, LZH, CAB, ...) are not opened: they cannot be inspected, so they are removed (category
"encrypted": contents not inspectable).
"""

from __future__ import annotations

import bz2
import io
import itertools
import lzma
import re
import struct
import tarfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.mime.charsets import guess_decode
from gateway.sanitize.base import Budget, Finding, LimitHit, Uninspectable, Walker, check_ratio, show

CHUNK = 64 * 1024

_LHA_METHODS = frozenset(
    {b"h0", b"h1", b"h2", b"h3", b"h4", b"h5", b"h6", b"h7", b"hd", b"zs", b"z4", b"z5", b"h8", b"hx"}
)
# Containers there is no bounded pure-Python reader for: (test, description).
UNINSPECTABLE_SIGNATURES: tuple[tuple[Callable[[bytes], bool], str], ...] = (
    (lambda d: d.startswith(b"7z\xbc\xaf\x27\x1c"), "7z archive"),
    (lambda d: d.startswith(b"Rar!\x1a\x07"), "RAR archive"),
    (lambda d: len(d) > 7 and d[2:4] == b"-l" and d[6:7] == b"-" and d[4:6] in _LHA_METHODS, "LZH archive"),
    (lambda d: d.startswith(b"MSCF\0\0\0\0"), "CAB archive"),
    (lambda d: d.startswith(b"\x60\xea"), "ARJ archive"),
    (lambda d: d[7:14] == b"**ACE**", "ACE archive"),
    (lambda d: d.startswith(b"\x28\xb5\x2f\xfd"), "zstd data"),
    (lambda d: d.startswith(b"LZIP"), "lzip data"),
    (lambda d: d.startswith(b"\x1f\x9d"), "compress (.Z) data"),
    (lambda d: d.startswith(b"xar!"), "xar archive"),
    (lambda d: d.startswith(b"!<arch>\n"), "ar archive"),
    (lambda d: d.startswith((b"070707", b"070701", b"070702", b"\xc7\x71", b"\x71\xc7")), "cpio archive"),
    (lambda d: d.startswith(b"\xed\xab\xee\xdb"), "RPM package"),
    (lambda d: d.startswith(b"SIT!") or d[:8] == b"StuffIt ", "StuffIt archive"),
    (lambda d: d.startswith(b"ZOO "), "zoo archive"),
)
UNINSPECTABLE_MIME = frozenset(
    {
        "application/x-7z-compressed",
        "application/x-rar",
        "application/vnd.rar",
        "application/x-rar-compressed",
        "application/x-lzh-compressed",
        "application/x-lha",
        "application/x-lharc",
        "application/vnd.ms-cab-compressed",
        "application/x-arj",
        "application/x-ace-compressed",
        "application/zstd",
        "application/x-lzip",
        "application/x-compress",
        "application/x-xar",
        "application/x-archive",
        "application/x-cpio",
        "application/x-rpm",
        "application/x-stuffit",
        "application/x-zoo",
        "application/vnd.debian.binary-package",
    }
)


def uninspectable_kind(data: bytes, true_type: str) -> str | None:
    for test, what in UNINSPECTABLE_SIGNATURES:
        if test(data):
            return what
    if true_type in UNINSPECTABLE_MIME:
        return true_type
    return None


# -- zip ---------------------------------------------------------------------------------------

ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08PK\x03\x04")


@dataclass
class ZipMember:
    info: zipfile.ZipInfo
    path: str  # as displayed (decoded, NFC)
    names: list[str]  # every decoding a client may show (raw-decoded, Info-ZIP Unicode Path)
    encrypted: bool
    method: int


def _extra_fields(extra: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos + 4 <= len(extra):
        hid, size = struct.unpack_from("<HH", extra, pos)
        yield hid, extra[pos + 4 : pos + 4 + size]
        pos += 4 + size


def _member_names(info: zipfile.ZipInfo) -> list[str]:
    if info.flag_bits & 0x800:
        primary = info.orig_filename  # zipfile decoded it as UTF-8
    else:
        # No UTF-8 flag: Japanese Windows writes CP932 here, zipfile decoded it as CP437
        raw = info.orig_filename.encode("cp437", "replace")
        primary = guess_decode(raw)[0] if any(b >= 0x80 for b in raw) else raw.decode("ascii")
    names = [unicodedata.normalize("NFC", primary)]
    for hid, body in _extra_fields(info.extra):
        if hid == 0x7075 and len(body) > 5 and body[0] == 1:  # Info-ZIP Unicode Path
            alt = unicodedata.normalize("NFC", body[5:].decode("utf-8", "replace"))
            if alt not in names:
                names.append(alt)
    return names


class ZipReader:
    """A zip opened for bounded reading, its members decoded and checked for overlaps."""

    def __init__(self, data: bytes, where: str, budget: Budget) -> None:
        self.data = data
        self.where = where
        self.budget = budget
        try:
            self.zf = zipfile.ZipFile(io.BytesIO(data))
            infos = self.zf.infolist()
        except (zipfile.BadZipFile, ValueError, struct.error, OSError, EOFError, NotImplementedError) as exc:
            raise Uninspectable(f"corrupt zip ({exc})") from None
        self.members: list[ZipMember] = []
        for info in infos:
            aes = any(hid == 0x9901 for hid, _ in _extra_fields(info.extra))
            names = _member_names(info)
            self.members.append(
                ZipMember(
                    info,
                    names[0],
                    names,
                    bool(info.flag_bits & 1) or aes or info.compress_type == 99,
                    info.compress_type,
                )
            )
        self._check_layout()

    def _check_layout(self) -> None:
        """Overlapping entries (the Fifield zip bomb) and local files the central directory does
        not list (extractors that scan local headers would see files we did not)."""
        spans: list[tuple[int, int]] = []
        for m in self.members:
            off = m.info.header_offset
            # zipfile has already applied any prefix ("concat") offset to header_offset
            if off < 0 or off + 30 > len(self.data) or self.data[off : off + 4] != b"PK\x03\x04":
                raise Uninspectable(f"corrupt zip (no local header for {m.path!r})")
            nlen, elen = struct.unpack_from("<HH", self.data, off + 26)
            spans.append((off, off + 30 + nlen + elen + m.info.compress_size))
        spans.sort()
        for (_, end), (nxt, _) in itertools.pairwise(spans):
            if nxt < end:
                raise LimitHit("overlapping zip entries (zip bomb)")
        starts = {s for s, _ in spans}
        pos = self.data.find(b"PK\x03\x04")
        limit = self.zf.start_dir if 0 < self.zf.start_dir <= len(self.data) else len(self.data)
        while 0 <= pos < limit:
            inside = any(s < pos < e for s, e in spans)
            if pos not in starts and not inside:
                raise Uninspectable("zip holds a local file the central directory does not list")
            pos = self.data.find(b"PK\x03\x04", pos + 4)

    def names_lower(self) -> set[str]:
        return {m.info.filename.lower() for m in self.members}

    def find(self, name: str) -> ZipMember | None:
        for m in self.members:
            if m.info.filename == name:
                return m
        return None

    def read(self, m: ZipMember, where: str, limit: int | None = None) -> bytes:
        """The member's bytes (at most `limit`), charged to the budget."""
        if m.encrypted:
            raise Uninspectable(f"encrypted member {where}")
        if m.method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise Uninspectable(f"zip compression method {m.method} not inspected ({where})")
        want = m.info.file_size if limit is None else min(limit, m.info.file_size)
        if limit is None and m.info.file_size > self.budget.bytes_left:
            raise LimitHit(f"member larger than the remaining archive_max_total_bytes ({where})")
        out = bytearray()
        try:
            with self.zf.open(m.info) as f:
                while len(out) < want:
                    chunk = f.read(min(CHUNK, want - len(out)))
                    if not chunk:
                        break
                    out += chunk
                    self.budget.take_bytes(len(chunk), where)
                    check_ratio(len(out), m.info.compress_size, self.budget, where)
        except (LimitHit, Uninspectable):
            raise
        except (
            zipfile.BadZipFile,
            zlib.error,
            ValueError,
            struct.error,
            OSError,
            EOFError,
            NotImplementedError,
            RuntimeError,
        ) as exc:
            raise Uninspectable(f"corrupt zip member {where} ({exc})") from None
        return bytes(out)


_TRAVERSAL = re.compile(r"(^|[\\/])\.\.([\\/]|$)|^[\\/]|^[A-Za-z]:")


def walk_zip(reader: ZipReader, walker: Walker, where: str, depth: int) -> None:
    """A plain archive: every member is an attachment of its own (names, type, allowlist)."""
    walker.budget.enter(depth, where)
    seen: set[str] = set()
    compressed = 0
    produced = 0
    for m in reader.members:
        path = f"{where}/{show(m.path)}"
        walker.budget.take_member(path)
        key = m.path.lower()
        if key in seen:
            walker.add(Finding("name_trick", f"duplicate member name {show(m.path)!r} in {where}"))
        seen.add(key)
        if any(_TRAVERSAL.search(n) for n in m.names):
            walker.add(Finding("name_trick", f"path traversal in member name {path}"))
        if m.info.is_dir():
            continue
        mode = (m.info.external_attr >> 16) & 0o170000
        if mode == 0o120000:
            walker.add(Finding("name_trick", f"symbolic link member {path}"))
            continue
        if m.encrypted:
            kind = "AES" if m.method == 99 or any(h == 0x9901 for h, _ in _extra_fields(m.info.extra)) else "ZipCrypto"
            walker.add(Finding("encrypted", f"password-protected ({kind}) member {path}"))
            continue
        data = reader.read(m, path)
        compressed += m.info.compress_size
        produced += len(data)
        check_ratio(produced, compressed, walker.budget, where)
        walker.member(data, [n.replace("\\", "/").rsplit("/", 1)[-1] for n in m.names], path, depth)


# -- single-stream compressors ----------------------------------------------------------------


def _decompressor(kind: str) -> Any:  # zlib's decompressobj type is not public
    if kind == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if kind == "zlib":
        return zlib.decompressobj()
    if kind == "deflate":
        return zlib.decompressobj(-zlib.MAX_WBITS)
    if kind == "bzip2":
        return bz2.BZ2Decompressor()
    return lzma.LZMADecompressor()


def decompress(kind: str, data: bytes, budget: Budget, where: str, *, lenient: bool = False) -> bytes:
    """A gzip, bzip2 or xz blob (every concatenated member), or one zlib/deflate stream, within
    the budget: output is requested in bounded steps, never all at once. `lenient`: a truncated
    stream yields what it decoded (PDF readers do that) instead of being uninspectable."""
    out = bytearray()
    rest = data
    streams = 0
    while rest:
        streams += 1
        if streams > 64:
            raise LimitHit(f"more than 64 concatenated {kind} streams (at {where})")
        d = _decompressor(kind)
        buf = rest
        try:
            while True:
                room = min(budget.bytes_left + 1, CHUNK * 16)
                chunk = d.decompress(buf, room)
                if hasattr(d, "unconsumed_tail"):  # zlib: unread input is handed back
                    buf = d.unconsumed_tail
                    starved = not chunk and not buf
                else:
                    buf = b""
                    starved = not chunk and d.needs_input
                out += chunk
                budget.take_bytes(len(chunk), where)
                check_ratio(len(out), len(data), budget, where)
                if d.eof:
                    break
                if starved:
                    if lenient:
                        return bytes(out)
                    raise Uninspectable(f"truncated {kind} data ({where})")
        except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError) as exc:
            if lenient and out:
                return bytes(out)
            raise Uninspectable(f"corrupt {kind} data ({where}: {exc})") from None
        if kind in ("zlib", "deflate"):
            break  # trailing bytes after the stream are ignored, as readers do
        rest = d.unused_data
        if kind == "gzip":
            rest = rest.lstrip(b"\0")  # some writers pad with zeros after the last member
    return bytes(out)


def gzip_name(data: bytes) -> str:
    """The original file name stored in a gzip header (FNAME), "" if none."""
    if len(data) < 10 or data[:2] != b"\x1f\x8b" or not data[3] & 0x08:
        return ""
    pos = 10
    if data[3] & 0x04:  # FEXTRA
        if len(data) < 12:
            return ""
        pos += 2 + struct.unpack_from("<H", data, 10)[0]
    end = data.find(b"\0", pos, pos + 1024)
    if end < 0:
        return ""
    return unicodedata.normalize("NFC", guess_decode(data[pos:end])[0])


def is_tar(data: bytes) -> bool:
    if len(data) < 512:
        return False
    if data[257:262] == b"ustar":
        return True
    # v7 tar: the header checksum is the only signature
    try:
        chk = int(data[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    return chk == sum(data[:148]) + 256 + sum(data[156:512])


def walk_tar(data: bytes, walker: Walker, where: str, depth: int) -> None:
    walker.budget.enter(depth, where)
    try:
        tf = tarfile.open(fileobj=io.BytesIO(data), mode="r:")  # noqa: SIM115 - in memory, nothing to close
    except (tarfile.TarError, OSError, ValueError, EOFError) as exc:
        raise Uninspectable(f"corrupt tar ({exc})") from None
    seen: set[str] = set()
    try:
        while True:
            info = tf.next()  # one header at a time: a huge member list is stopped by the budget
            if info is None:
                break
            raw_name = info.name
            name = unicodedata.normalize("NFC", raw_name)
            path = f"{where}/{show(name)}"
            walker.budget.take_member(path)
            if name.lower() in seen:
                walker.add(Finding("name_trick", f"duplicate member name {show(name)!r} in {where}"))
            seen.add(name.lower())
            if _TRAVERSAL.search(name):
                walker.add(Finding("name_trick", f"path traversal in member name {path}"))
            if info.issym() or info.islnk():
                walker.add(Finding("name_trick", f"link member {path} -> {info.linkname}"))
                continue
            if info.isdir():
                continue
            if not info.isreg():
                walker.add(Finding("name_trick", f"device or special member {path}"))
                continue
            if info.size > walker.budget.bytes_left:
                raise LimitHit(f"member larger than the remaining archive_max_total_bytes ({path})")
            f = tf.extractfile(info)
            if f is None:
                continue
            body = f.read(info.size)
            walker.budget.take_bytes(len(body), path)
            walker.member(body, [name.rsplit("/", 1)[-1]], path, depth)
    except (LimitHit, Uninspectable):
        raise
    except (tarfile.TarError, OSError, ValueError, EOFError, UnicodeError) as exc:
        raise Uninspectable(f"corrupt tar ({exc})") from None


def strip_suffix(name: str, suffixes: Sequence[str]) -> str:
    low = name.lower()
    for s in suffixes:
        if low.endswith(s) and len(name) > len(s):
            return name[: -len(s)]
    return ""
