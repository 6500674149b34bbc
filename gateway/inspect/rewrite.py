"""Same-length rewrites of MIME content: neutralized parts, HTML to text, defanged links.

Everything here works on dot-unstuffed DATA content and keeps three things that the DATA
framing and the TCP sequence numbers depend on: the length, every CR and LF at its place, and
no '.' newly put where a line could start (OffsetMap.map_rewrite refuses those; we never
generate a '.' at all in raw text, and base64 has none).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence

from gateway.bytescan import bare_eol, eol_layout_equal

_EOL = re.compile(rb"\r\n|\r|\n")
_EOL_RUNS = re.compile(rb"([\r\n]+)")
_WSP = b" \t"
REMOVED_NAME = "removed.txt"
SHORT_NAME = "rm.txt"  # when the header spans are too short for the long one


# --- header block --------------------------------------------------------------------------------
def _lines(block: bytes) -> list[tuple[bytes, bytes]]:
    """Physical lines as (content, eol)."""
    out: list[tuple[bytes, bytes]] = []
    pos = 0
    for m in _EOL.finditer(block):
        out.append((block[pos : m.start()], m.group()))
        pos = m.end()
    if pos < len(block):
        out.append((block[pos:], b""))
    return out


class _Field:
    """One header field: its physical lines (content without EOL, eol)."""

    __slots__ = ("lines", "name")

    def __init__(self, name: str, first: tuple[bytes, bytes]) -> None:
        self.name = name
        self.lines = [first]


def _fields(block: bytes) -> list[_Field | tuple[bytes, bytes]]:
    """Fields, or raw lines that belong to no field (kept as they are)."""
    out: list[_Field | tuple[bytes, bytes]] = []
    for content, eol in _lines(block):
        if content[:1] in (b" ", b"\t") and out and isinstance(out[-1], _Field):
            out[-1].lines.append((content, eol))
            continue
        colon = content.find(b":")
        if colon > 0:
            out.append(_Field(content[:colon].strip(_WSP).decode("ascii", "replace").lower(), (content, eol)))
        else:
            out.append((content, eol))
    return out


def _fit(atoms: Sequence[bytes], lengths: Sequence[int]) -> list[bytes] | None:
    """Lay a structured field out on lines of exactly these content lengths.

    atoms[0] is "Name:"; line 0 takes atoms joined by spaces; continuation lines start with a
    space. Leftover continuation lines get `;x=x...` padding parameters (a whitespace-only line
    inside a header block could end it for some parsers). None if it does not fit.
    """
    lines: list[bytearray] = [bytearray() for _ in lengths]
    i = 0
    for n, line in enumerate(lines):
        room = lengths[n]
        if n > 0:
            if room < 1:
                return None
            line += b" "
        while i < len(atoms):
            sep = b" " if line.strip() else b""
            need = len(sep) + len(atoms[i])
            if len(line) + need > room:
                break
            line += sep + atoms[i]
            i += 1
        if n == 0 and i == 0:
            return None  # the field name itself does not fit
    if i < len(atoms):
        return None
    for n, line in enumerate(lines):
        room = lengths[n] - len(line)
        if n > 0 and not line.strip():
            # the separator comes first: the last atom (`name=removed.txt`) has no `;` of its
            # own, and `name=removed.txt<fold> x=xxx;` reads as the name "removed.txt x=xxx"
            line += b";x=" + b"x" * (room - 3) if room >= 3 else b";" + b"x" * max(0, room - 1) if room else b""
        else:
            line += b" " * room
    return [bytes(x) for x in lines]


def _filler(lengths: Sequence[int], first: bytes) -> list[bytes]:
    """An unstructured padding field over these lines (`X-Removed: xxxx`)."""
    out: list[bytes] = []
    for n, room in enumerate(lengths):
        if n == 0:
            name = first if room >= len(first) else b"X:"
            out.append((name + b" " + b"x" * room)[:room] if room > len(name) else name[:room])
        else:
            out.append((b" " + b"x" * room)[:room])
    return out


def neutralize_headers(block: bytes, message_level: bool, qid: str | None = None) -> bytes | None:
    """Rewrite a part's header block into a text/plain `.txt` part, same length, same line ends.

    Content-Transfer-Encoding stays (the body is rewritten in the same encoding). The other
    Content-* fields (and, for a part inside a multipart, every other field) are reused for
    `Content-Type: text/plain; name=removed.txt` and `Content-Disposition: attachment;
    filename=removed.txt`; what is left becomes `X-Removed:` padding. A message-level entity
    (the message itself, or one inside message/rfc822) keeps its From/To/Subject. None when the
    new Content-Type cannot be laid out (the caller then refuses the message instead).
    With `qid` (the quarantine id), the names are `removed-QID.txt` or `QID.txt` where they fit:
    the id then reaches the reader even when the body is too short for the notice.
    """
    items = _fields(block)
    usable = [
        f
        for f in items
        if isinstance(f, _Field)
        and f.name != "content-transfer-encoding"
        and (f.name.startswith("content-") or not message_level)
    ]
    had_ct = any(isinstance(f, _Field) and f.name == "content-type" for f in items)
    choices = ([f"removed-{qid}.txt", f"{qid}.txt"] if qid else []) + [REMOVED_NAME, SHORT_NAME]
    names = [f"name={n}".encode() for n in choices]
    fnames = [f"filename={n}".encode() for n in choices]
    wanted: list[list[list[bytes]]] = [
        [
            [b"Content-Type:", b"text/plain;", b"charset=us-ascii;", names[0]],
            *([b"Content-Type:", b"text/plain;", n] for n in names),
            [b"Content-Type:", b"text/plain"],
            [b"Content-Type:text/plain"],
        ],
        [
            *([b"Content-Disposition:", b"attachment;", n] for n in fnames),
            [b"Content-Disposition:attachment;", fnames[-1]],
            [b"Content-Disposition:", b"attachment"],
        ],
    ]
    new: dict[int, list[bytes]] = {}
    free = list(range(len(usable)))
    placed_ct = False
    for k, variants in enumerate(wanted):
        done = False
        for atoms in variants:
            for idx in free:
                laid = _fit(atoms, [len(c) for c, _ in usable[idx].lines])
                if laid is not None:
                    new[idx] = laid
                    free.remove(idx)
                    done = True
                    break
            if done:
                break
        if k == 0:
            placed_ct = done
    if had_ct and not placed_ct:
        return None
    for idx in free:
        new[idx] = _filler([len(c) for c, _ in usable[idx].lines], b"X-Removed:")
    out = bytearray()
    u = 0
    for item in items:
        if isinstance(item, _Field):
            if u < len(usable) and usable[u] is item:
                for (_, eol), text in zip(item.lines, new[u], strict=True):
                    out += text + eol
                u += 1
            else:
                for c, eol in item.lines:
                    out += c + eol
        else:
            out += item[0] + item[1]
    assert len(out) == len(block)
    return bytes(out)


_HTML = re.compile(rb"text/html", re.IGNORECASE)


def html_to_text_headers(block: bytes) -> bytes | None:
    """`Content-Type: text/html...` -> `text/plain`, one byte longer: a space in the same line
    goes (after the colon, or around a ';'). None if there is no room on that line."""
    out = bytearray()
    changed = False
    in_ct = False
    for content, eol in _lines(block):
        if content[:1] not in (b" ", b"\t"):
            in_ct = content.split(b":", 1)[0].strip(_WSP).lower() == b"content-type"
        m = _HTML.search(content) if in_ct and not changed else None
        if m is not None:
            line = content[: m.start()] + b"text/plain" + content[m.end() :]
            for pat in (b": ", b":\t", b"; ", b" ;", b"  "):
                j = line.find(pat)
                if j >= 0:
                    cut = j + 1 if pat[0:1] in (b":", b";") else j
                    line = line[:cut] + line[cut + 1 :]
                    break
            else:
                if line.endswith((b" ", b"\t")):
                    line = line[:-1]
            if len(line) != len(content):
                return None
            content = line
            changed = True
        out += content + eol
    return bytes(out) if changed else None


# --- neutralized body ----------------------------------------------------------------------------
def _ascii_notice(text: str, forbidden: bytes) -> bytes:
    """Printable ASCII; '.' (it could land at a line start) and `forbidden` become '_'."""
    out = bytearray()
    for ch in text:
        o = ord(ch)
        b = o if 0x20 <= o < 0x7F else 0x3F
        out.append(0x5F if b == 0x2E or b in forbidden else b)
    return bytes(out)


class BodyFiller:
    """Streams the replacement body of a neutralized part in its own transfer encoding.

    Position-based, so it needs no lookahead: the k-th non-line-break byte of the body becomes
    the k-th byte of the filler stream, and line breaks stay. base64: the notice encoded, then
    `ICAg` (three spaces) forever; quoted-printable and everything else: the notice, then spaces.
    The body decodes to the notice followed by blanks, whatever its length (a body shorter than
    the notice carries a truncated notice).
    """

    def __init__(self, transfer_encoding: str, notice: str) -> None:
        self.encoding = transfer_encoding
        if transfer_encoding == "base64":
            raw = notice.encode("utf-8")
            raw += b" " * (-len(raw) % 3)
            self._head = base64.b64encode(raw)
            self._pad = b"ICAg"
        else:
            self._head = _ascii_notice(notice, b"=" if transfer_encoding == "quoted-printable" else b"")
            self._pad = b" "
        self.k = 0  # non-line-break bytes produced so far

    def _stream(self, n: int) -> bytes:
        out = bytearray()
        k = self.k
        if k < len(self._head):
            out += self._head[k : k + n]
        rest = n - len(out)
        if rest:
            start = (k + len(out) - len(self._head)) % len(self._pad)
            reps = (start + rest) // len(self._pad) + 1
            out += (self._pad * reps)[start : start + rest]
        self.k += n
        return bytes(out)

    def _fill_uniform(self, raw: bytes) -> bytes | None:
        """fill() of CRLF-only `raw` whose inner lines (all but the first and last piece) have
        one length L and lie past the notice, where the stream repeats the pad: when L is a
        multiple of the pad's length, every inner line gets the same bytes, so the inner part
        is one line repeated. None when that does not hold (the caller cuts line by line).
        Found with three searches and one compiled CR/LF layout compare against a template:
        no list of lines is built."""
        first = raw.find(b"\r\n")
        second = raw.find(b"\r\n", first + 2) if first >= 0 else -1
        if second < 0:
            return None
        size = second - first - 2
        last_break = raw.rfind(b"\r\n")
        inner = raw[first + 2 : last_break + 2]  # the inner lines, each with its CRLF
        count = len(inner) // (size + 2)
        if (
            count < 2
            or self.k + first < len(self._head)
            or size % len(self._pad)
            or len(inner) != count * (size + 2)
            # a CRLF after every `size` bytes and no other line break ("QUJD\r\n=\r\n=\r\n" has
            # them at every 6th byte and between): every inner line is that long
            or not eol_layout_equal(inner, (bytes(size) + b"\r\n") * count)
        ):
            return None
        head = self._stream(first)
        line = self._stream(size)
        self.k += size * (count - 1)
        return head + b"\r\n" + (line + b"\r\n") * count + self._stream(len(raw) - last_break - 2)

    def fill(self, raw: bytes) -> bytes:
        """Replacement for the next `raw` bytes of the body (same length, CR/LF kept).

        One stream slice for all the non-line-break bytes, then cut along the line breaks: no
        work per byte, a slice per line, or none (_fill_uniform) for the lines of equal length
        an encoder writes."""
        if not bare_eol(raw):  # CRLF only (the usual case)
            fast = self._fill_uniform(raw)
            if fast is not None:
                return fast
            lines = raw.split(b"\r\n")
            stream = self._stream(len(raw) - 2 * (len(lines) - 1))
            pos = 0
            for i, line in enumerate(lines):
                n = len(line)
                lines[i] = stream[pos : pos + n]
                pos += n
            return b"\r\n".join(lines)
        pieces = _EOL_RUNS.split(raw)  # text, breaks, text, ... (bare CR or LF, a CRLF cut in two)
        stream = self._stream(len(raw) - sum(len(p) for p in pieces[1::2]))
        pos = 0
        for i in range(0, len(pieces), 2):
            n = len(pieces[i])
            pieces[i] = stream[pos : pos + n]
            pos += n
        return b"".join(pieces)


# --- body 無害化: HTML to text, defanged links ----------------------------------------------------
_SCHEMES = ((b"http", b"hxxp"), (b"HTTP", b"HXXP"), (b"Http", b"Hxxp"), (b"HTTp", b"HXXp"))


class TextSanitizer:
    """Streaming same-length transform of decoded (or 7bit/8bit/QP raw) text.

    html: markup is blanked to spaces (tags, comments, and the contents of <script>/<style>),
    line breaks stay, text stays. links: `http` -> `hxxp` (any case), also in plain text. It
    holds back the last 3 bytes (a split `http`) until more text or `final()` comes.
    """

    HOLD = 3

    def __init__(self, html: bool, links: bool) -> None:
        self.html = html
        self.links = links
        self._tail = bytearray()
        self._in_tag = False
        self._tag = bytearray()  # name of the tag being read (lower case, up to 16 bytes)
        self._raw_until: bytes | None = None  # inside <script>/<style>: blank up to its end tag
        self.blanked = False  # markup was blanked
        self.defanged = False  # a link was defanged

    def _markup(self, data: bytearray) -> None:
        for i, b in enumerate(data):
            if b in (0x0D, 0x0A):
                continue
            if self._in_tag:
                if b == 0x3E:  # '>'
                    self._in_tag = False
                    name = bytes(self._tag).split(b" ", 1)[0]
                    if self._raw_until is not None and name == self._raw_until:
                        self._raw_until = None
                    elif self._raw_until is None and name in (b"script", b"style"):
                        self._raw_until = b"/" + name
                elif len(self._tag) < 16:
                    self._tag.append(b | 0x20 if 0x41 <= b <= 0x5A else b)
                data[i] = 0x20
            elif b == 0x3C:  # '<'
                self._in_tag = True
                self._tag.clear()
                data[i] = 0x20
                self.blanked = True
            elif self._raw_until is not None:
                data[i] = 0x20
                self.blanked = True

    def _defang(self, data: bytearray, final: bool) -> int:
        """Defang in place; returns how many bytes are settled (the rest may start an `http`)."""
        for old, new in _SCHEMES:
            j = data.find(old)
            while j >= 0:
                data[j : j + 4] = new
                self.defanged = True
                j = data.find(old, j + 4)
        low = bytes(data).lower()
        j = low.find(b"http")
        while j >= 0:  # mixed case not in _SCHEMES
            data[j + 1 : j + 3] = b"xx" if data[j + 1] == 0x74 else b"XX"
            self.defanged = True
            j = low.find(b"http", j + 4)
        if final:
            return len(data)
        keep = 0
        for n in (3, 2, 1):
            if len(data) >= n and b"http".startswith(bytes(data[-n:]).lower()):
                keep = n
                break
        return len(data) - keep

    def feed(self, data: bytes, final: bool = False) -> bytes:
        buf = self._tail + data
        if self.html and data:
            part = bytearray(data)
            self._markup(part)
            buf = self._tail + part
        if not self.links:
            self._tail = bytearray()
            return bytes(buf)
        settled = self._defang(buf, final)
        self._tail = buf[settled:]
        return bytes(buf[:settled])

    def final(self) -> bytes:
        return self.feed(b"", final=True)
