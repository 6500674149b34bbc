"""Header fields and structured parameters, kept as bytes.

Headers in Japanese mail carry raw 8-bit bytes (Shift_JIS, EUC-JP, UTF-8) often enough that the
parser never decodes a header to text: names are ASCII, values stay bytes, and decoding of
filenames is done by gateway.mime.names with charset detection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A header line: a field name of printable ASCII without ":" (RFC 5322 ftext), then ":".
# Whitespace before the colon ("Subject :") is obsolete syntax; some clients accept it, so do we
# (with a defect): reading more structure is safer than hiding a Content-Type inside a body.
_HEADER_LINE = re.compile(rb"([\x21-\x39\x3b-\x7e]+)([ \t]*):")
_WSP = b" \t"


@dataclass(frozen=True)
class Header:
    name: str  # as written (ASCII)
    raw: bytes  # the physical lines, folding and line breaks included
    value: bytes  # unfolded, surrounding whitespace stripped, 8-bit bytes kept
    offset: int  # absolute offset of the first byte of `raw`

    @property
    def lname(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Param:
    name: str  # lower case, RFC 2231 section suffix kept ("filename*0*")
    value: bytes  # quotes removed, \" and \\ unescaped
    quoted: bool


Params = tuple[Param, ...]


def header_line_match(line: bytes) -> tuple[bytes, bool] | None:
    """(field name, whitespace-before-colon) if `line` starts a header field, else None."""
    m = _HEADER_LINE.match(line)
    if m is None:
        return None
    return m.group(1), bool(m.group(2))


def unfold(raw: bytes) -> bytes:
    """RFC 5322 unfolding: drop line breaks (a break followed by WSP is folding)."""
    return raw.replace(b"\r\n", b"").replace(b"\n", b"").replace(b"\r", b"")


def make_header(lines: list[bytes], offset: int) -> Header:
    raw = b"".join(lines)
    colon = raw.index(b":")
    name = raw[:colon].rstrip(_WSP).decode("ascii")
    value = unfold(raw[colon + 1 :]).strip(b" \t")
    return Header(name=name, raw=raw, value=value, offset=offset)


def _strip_comments(v: bytes) -> bytes:
    # "(comment)" outside quotes in a token value, e.g. "7bit (plain)"; nesting is rare, keep simple.
    return re.sub(rb"\([^()]*\)", b"", v).strip(b" \t")


def _split_semicolons(v: bytes) -> list[bytes]:
    """Split at ";" outside double quotes (a quote left open runs to the end)."""
    out: list[bytes] = []
    start = 0
    quoted = False
    i = 0
    n = len(v)
    while i < n:
        c = v[i]
        if quoted:
            if c == 0x5C:  # backslash escapes the next byte inside quotes
                i += 1
            elif c == 0x22:
                quoted = False
        elif c == 0x22:
            quoted = True
        elif c == 0x3B:
            out.append(v[start:i])
            start = i + 1
        i += 1
    out.append(v[start:])
    return out


def _unquote(v: bytes) -> tuple[bytes, bool]:
    if not v.startswith(b'"'):
        return v, False
    out = bytearray()
    i = 1
    n = len(v)
    while i < n:
        c = v[i]
        # Only \" and \\ are unescaped (like Python's email): Windows paths in quoted names
        # ("C:\dir\a.exe") keep their backslashes, so the name check sees them.
        if c == 0x5C and i + 1 < n and v[i + 1] in (0x22, 0x5C):
            out.append(v[i + 1])
            i += 2
            continue
        if c == 0x22:
            break
        out.append(c)
        i += 1
    return bytes(out), True


def parse_params(value: bytes) -> tuple[bytes, Params]:
    """Split a structured value into its main token and parameters, leniently.

    Unquoted values run to the next ";" (Outlook writes `name==?ISO-2022-JP?B?...?=` unquoted,
    and some clients write unquoted names with spaces).
    """
    pieces = _split_semicolons(value)
    main = _strip_comments(pieces[0])
    params: list[Param] = []
    for piece in pieces[1:]:
        eq = piece.find(b"=")
        if eq <= 0:
            continue
        name = piece[:eq].strip(b" \t").lower()
        if not name or any(c > 0x7E or c <= 0x20 for c in name):
            continue
        raw = piece[eq + 1 :].strip(b" \t")
        v, quoted = _unquote(raw)
        params.append(Param(name.decode("ascii"), v, quoted))
    return main, tuple(params)


def get_param(params: Params, name: str) -> bytes | None:
    for p in params:
        if p.name == name:
            return p.value
    return None


def count_param(params: Params, name: str) -> int:
    return sum(1 for p in params if p.name == name)


def token(value: bytes) -> str:
    """A lower-case ASCII token (content type, encoding, disposition); junk bytes dropped."""
    return _strip_comments(value).decode("ascii", "ignore").strip().lower()
