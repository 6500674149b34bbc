"""uuencoded files inside text: found, decoded and handed back to the walker as members.

A uuencoded block (`begin 644 invoice.exe` ... `end`) in a text part, or a part whose transfer
encoding is `x-uuencode` (the MIME parser passes unknown encodings through unchanged), is text to
libmagic ("uuencoded text", text/plain), but Thunderbird and Outlook show it as an attachment the
user can open, and Python's email decodes `x-uuencode` parts. So a text is a container here: each
block is decoded like a client would (lenient: a line's length character decides how much of it
counts, trailing junk ignored, a missing `end` tolerated) and classified as a member under its
own name. `begin-base64` blocks (`uuencode -m`, base64 lines up to `====`) too.

Bounded like the archive readers: every decoded byte is taken from the part's budget, every block
counts as a member, and at most MAX_BLOCKS blocks are looked at.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterator

from gateway.sanitize.base import Budget, LimitHit

MAX_BLOCKS = 64  # more than this in one text: the limit category (refused by default)
# `begin MODE NAME`: mode in octal (1-4 digits), then the name to the end of the line
_BEGIN = re.compile(rb"(?m)^begin(-base64)?[ \t]+([0-7]{1,4})[ \t]+([^\r\n]*?)[ \t]*\r?$")
_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\n|\r|$)")


def _uu_line(line: bytes) -> bytes | None:
    """One uuencoded line's bytes, as lenient decoders read it; None: not a uu line."""
    if not line:
        return b""
    n = (line[0] - 32) & 0x3F
    need = (n * 4 + 2) // 3
    body = line[1 : 1 + need].ljust(need, b" ")  # short lines: missing characters read as zero bits
    try:
        return binascii.a2b_uu(bytes([line[0]]) + body)[:n]
    except binascii.Error:
        return None


def blocks(text: bytes, budget: Budget, where: str) -> Iterator[tuple[str, bytes]]:
    """(name, decoded bytes) of every uuencoded block in `text`, in order."""
    for count, m in enumerate(_BEGIN.finditer(text), 1):
        if count > MAX_BLOCKS:
            raise LimitHit(f"more than {MAX_BLOCKS} uuencoded blocks (at {where})")
        b64 = m.group(1) is not None
        name = m.group(3).decode("utf-8", "surrogateescape")
        label = f"{where}: uuencoded {name!r}"
        budget.take_member(label)
        out = bytearray()
        pos = m.end()
        for lm in _LINE.finditer(text, pos):
            raw = lm.group()
            if not raw:
                break
            line = raw.rstrip(b"\r\n").rstrip(b" \t") if b64 else raw.rstrip(b"\r\n")
            if (line.rstrip() == b"end" and not b64) or (b64 and line == b"===="):
                break
            if b64:
                try:
                    chunk = binascii.a2b_base64(line)
                except binascii.Error:
                    break
            else:
                chunk_or_none = _uu_line(line)
                if chunk_or_none is None:
                    break  # not uuencoded any more: the block ends here for a reader too
                chunk = chunk_or_none
            budget.take_bytes(len(chunk), label)
            out += chunk
        yield name, bytes(out)
