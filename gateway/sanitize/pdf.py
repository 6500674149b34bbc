"""PDF active content, found by a bounded tokenizer (no PDF library, no object graph).

The scan reads the file as a PDF reader's lexer would: comments, literal strings (balanced
parentheses, escapes), hex strings and stream data are skipped, so a name counts only where a
reader would see a name. Names are compared after `#xx` decoding (`/J#61vaScript` is
/JavaScript). Object streams (`/Type /ObjStm`, PDF 1.5), where objects can hide from a plain
scan, are decoded (Flate, LZW, ASCIIHex, ASCII85, RunLength; bounded by the part's budget) and
scanned the same way. An object stream that cannot be decoded makes the PDF uninspectable.

`/OpenAction [page /XYZ ...]` (a destination array, as LibreOffice writes it) only opens a page;
any other OpenAction is an action and counts.
"""

from __future__ import annotations

import base64
import binascii
import re

from gateway.sanitize.archives import decompress
from gateway.sanitize.base import Budget, Finding, LimitHit, Uninspectable, Walker

# name -> why it is active
ACTIVE_NAMES: dict[bytes, str] = {
    b"JavaScript": "JavaScript",
    b"JS": "JavaScript",
    b"OpenAction": "OpenAction",
    b"AA": "additional actions (AA)",
    b"Launch": "Launch action",
    b"EmbeddedFile": "embedded file",
    b"EmbeddedFiles": "embedded file",
    b"FileAttachment": "file attachment annotation",
    b"RichMedia": "RichMedia (Flash/3D)",
    b"XFA": "XFA form",
    b"SubmitForm": "SubmitForm action",
    b"ImportData": "ImportData action",
    b"GoToE": "GoToE (embedded go-to) action",
    b"Rendition": "Rendition action",
}
MAX_TOKENS = 4_000_000  # a lexer step per token: bounds the time an adversarial file can cost

_TOKEN = re.compile(rb"<<|>>|[%(</\[]|(?<![A-Za-z0-9_])stream(?=[\r\n])")
_STRING = re.compile(rb"[()\\]")
_NAME = re.compile(rb"[^\x00\t\n\x0c\r ()<>\[\]{}/%]*")
_ESCAPE = re.compile(rb"#([0-9A-Fa-f]{2})")
_EOL = re.compile(rb"[\r\n]")
_LENGTH = re.compile(rb"/Length\s+(\d+)(?!\s+\d+\s+R)")
_OBJSTM = re.compile(rb"/Type\s*/ObjStm(?![^\x00\t\n\x0c\r ()<>\[\]{}/%])")
_FILTER = re.compile(rb"/Filter\s*(\[[^\]]*\]|/[^\x00\t\n\x0c\r ()<>\[\]{}/%]+)")
_FILTER_NAME = re.compile(rb"/([^\x00\t\n\x0c\r ()<>\[\]{}/%]+)")
_PREDICTOR = re.compile(rb"/Predictor\s+(\d+)")


def decode_name(raw: bytes) -> bytes:
    return _ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), raw)


def _normalize_names(text: bytes) -> bytes:
    return re.sub(rb"/" + _NAME.pattern, lambda m: decode_name(m.group()), text)


class _Scan:
    def __init__(self, budget: Budget, where: str) -> None:
        self.budget = budget
        self.where = where
        self.active: dict[str, set[str]] = {}  # reason -> spellings seen
        self.encrypted = False
        self.problems: list[str] = []
        self.tokens = 0

    def name(self, raw: bytes, data: bytes, end: int) -> None:
        name = decode_name(raw) if b"#" in raw else raw
        if name == b"Encrypt":
            self.encrypted = True
            return
        why = ACTIVE_NAMES.get(name)
        if why is None:
            return
        if name == b"OpenAction":
            m = re.compile(rb"\s*").match(data, end)
            nxt = data[m.end() : m.end() + 1] if m else b""
            if nxt == b"[":
                return  # an explicit destination: opens a page, runs nothing
        self.active.setdefault(why, set()).add("/" + raw.decode("latin-1"))

    def run(self, data: bytes, objstm: bool = False) -> None:
        pos = 0
        dict_starts: list[int] = []
        last_dict: tuple[int, int] | None = None
        n = len(data)
        while pos < n:
            m = _TOKEN.search(data, pos)
            if m is None:
                return
            self.tokens += 1
            if self.tokens > MAX_TOKENS:
                raise LimitHit(f"PDF with more than {MAX_TOKENS} tokens ({self.where})")
            tok = m.group()
            pos = m.end()
            if tok == b"/":
                nm = _NAME.match(data, pos)
                assert nm is not None  # the pattern matches the empty string
                self.name(nm.group(), data, nm.end())
                pos = nm.end()
            elif tok == b"<<":
                dict_starts.append(m.start())
            elif tok == b">>":
                if dict_starts:
                    start = dict_starts.pop()
                    if not dict_starts:
                        last_dict = (start, pos)
            elif tok == b"(":
                pos = _skip_string(data, pos)
            elif tok == b"<":
                end = data.find(b">", pos)
                pos = n if end < 0 else end + 1
            elif tok == b"%":
                e = _EOL.search(data, pos)
                pos = n if e is None else e.end()
            elif tok == b"[":
                continue
            else:  # "stream"
                body_start = pos + 2 if data[pos : pos + 2] == b"\r\n" else pos + 1
                header = b""
                if last_dict is not None and not data[last_dict[1] : m.start()].strip():
                    header = _normalize_names(data[last_dict[0] : last_dict[1]])
                end = _stream_end(data, body_start, header)
                if header and not objstm and _OBJSTM.search(header):
                    self.object_stream(data[body_start:end], header)
                nxt = data.find(b"endstream", end)
                pos = n if nxt < 0 else nxt + 9
                last_dict = None

    def object_stream(self, raw: bytes, header: bytes) -> None:
        where = f"{self.where} (object stream)"
        fm = _FILTER.search(header)
        filters = [decode_name(f) for f in _FILTER_NAME.findall(fm.group(1))] if fm else []
        pm = _PREDICTOR.search(header)
        if pm and int(pm.group(1)) > 1:
            self.problems.append("object stream with a predictor")
            return
        if self.encrypted:
            return  # encrypted streams cannot be decoded without the key: reported as encrypted
        data = raw
        for f in filters:
            try:
                data = _apply_filter(f, data, self.budget, where)
            except Uninspectable as exc:
                self.problems.append(str(exc))
                return
        self.run(data, objstm=True)


def _skip_string(data: bytes, pos: int) -> int:
    depth = 1
    n = len(data)
    while depth:
        m = _STRING.search(data, pos)
        if m is None:
            return n
        c = m.group()
        if c == b"\\":
            pos = m.end() + 1
            continue
        depth += 1 if c == b"(" else -1
        pos = m.end()
    return pos


def _stream_end(data: bytes, start: int, header: bytes) -> int:
    """End of stream data: /Length when it lands on `endstream`, else the next `endstream`."""
    lm = _LENGTH.search(header)
    if lm:
        end = start + int(lm.group(1))
        if end <= len(data) and data[end : end + 64].lstrip().startswith(b"endstream"):
            return end
    nxt = data.find(b"endstream", start)
    return len(data) if nxt < 0 else nxt


def _apply_filter(name: bytes, data: bytes, budget: Budget, where: str) -> bytes:
    if name in (b"FlateDecode", b"Fl"):
        try:
            return decompress("zlib", data, budget, where, lenient=True)
        except Uninspectable:
            return decompress("deflate", data, budget, where, lenient=True)  # no zlib header: readers accept it
    if name in (b"ASCIIHexDecode", b"AHx"):
        hexdigits = re.sub(rb"[^0-9A-Fa-f]", b"", data.split(b">", 1)[0])
        if len(hexdigits) % 2:
            hexdigits += b"0"
        return binascii.unhexlify(hexdigits)
    if name in (b"ASCII85Decode", b"A85"):
        body = data.strip()
        body = body[2:] if body.startswith(b"<~") else body
        body = body.split(b"~>", 1)[0]
        try:
            out = base64.a85decode(body)
        except ValueError as exc:
            raise Uninspectable(f"bad ASCII85 data ({exc})") from None
        budget.take_bytes(len(out), where)
        return out
    if name in (b"LZWDecode", b"LZW"):
        return _lzw(data, budget, where)
    if name in (b"RunLengthDecode", b"RL"):
        return _runlength(data, budget, where)
    raise Uninspectable(f"object stream filter /{name.decode('latin-1')} not decoded")


def _lzw(data: bytes, budget: Budget, where: str) -> bytes:
    """LZW with EarlyChange 1 (the PDF default), output charged to the budget."""
    out = bytearray()
    table: list[bytes] = [bytes((i,)) for i in range(256)] + [b"", b""]
    bits, width, buf, prev = 0, 9, 0, b""
    for byte in data:
        buf = (buf << 8) | byte
        bits += 8
        while bits >= width:
            bits -= width
            code = (buf >> bits) & ((1 << width) - 1)
            if code == 256:
                table, width, prev = table[:258], 9, b""
                continue
            if code == 257:
                return bytes(out)
            if code < len(table):
                entry = table[code]
                if prev:
                    table.append(prev + entry[:1])
            elif code == len(table) and prev:
                entry = prev + prev[:1]
                table.append(entry)
            else:
                raise Uninspectable("bad LZW data")
            out += entry
            if len(out) > budget.bytes_left:
                raise LimitHit(f"more than archive_max_total_bytes decompressed (at {where})")
            prev = entry
            if len(table) + 1 >= 1 << width and width < 12:
                width += 1
    budget.take_bytes(len(out), where)
    return bytes(out)


def _runlength(data: bytes, budget: Budget, where: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(data):
        length = data[i]
        if length == 128:
            break
        if length < 128:
            out += data[i + 1 : i + 2 + length]
            i += 2 + length
        else:
            out += data[i + 1 : i + 2] * (257 - length)
            i += 2
        if len(out) > budget.bytes_left:
            raise LimitHit(f"more than archive_max_total_bytes decompressed (at {where})")
    budget.take_bytes(len(out), where)
    return bytes(out)


def scan_pdf(data: bytes, walker: Walker, where: str) -> None:
    scan = _Scan(walker.budget, where)
    scan.run(data)
    if scan.active:
        parts = []
        for why, spellings in sorted(scan.active.items()):
            odd = sorted(s for s in spellings if "#" in s)
            parts.append(why + (f" (written {', '.join(odd)})" if odd else ""))
        walker.add(Finding("pdf_active", f"PDF with {', '.join(parts)} at {where}"))
    if scan.encrypted:
        walker.add(Finding("encrypted", f"encrypted PDF (/Encrypt) at {where}"))
    for p in scan.problems:
        walker.add(Finding("encrypted", f"PDF cannot be inspected: {p} at {where}"))
