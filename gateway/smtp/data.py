"""DATA content: exact CRLF.CRLF end, dot-unstuffing with a content->stream offset map, and
detection of the lax end-of-data look-alikes used for SMTP smuggling.

Only `<CRLF>.<CRLF>` ends DATA (RFC 5321 4.1.1.4). `<LF>.<LF>`, `<LF>.<CRLF>`, `<CR>.<CR>`,
`<CRLF>.<CR>`, `<CRLF>.<LF>`, NUL-padded variants... do not: their bytes stay in the message,
and they are reported (a downstream server with a laxer parser might end the message there and
run the rest as commands, delivering an uninspected message).
"""

from __future__ import annotations

import bisect
import enum
import itertools
import re
from dataclasses import dataclass
from typing import NoReturn

from gateway.bytescan import eol_layout_equal, find_rare_tail
from gateway.smtp.events import RewriteError

# A '.' alone on a "line" under any lax line-ending interpretation, NULs tolerated around it.
_LOOKALIKE = re.compile(rb"(?:\r\n|\r|\n)\x00{0,2}\.\x00{0,2}(?:\r\n|\r|\n)")
_LOOKALIKE_MAX = 9
_EXACT_END = b"\r\n.\r\n"


class _S(enum.Enum):
    BOL = 0  # at the beginning of a line (after CRLF or at the start of DATA)
    MID = 1
    CR = 2  # the last byte consumed was CR


@dataclass(frozen=True, slots=True)
class ScanResult:
    consumed: int  # raw bytes decided (the rest, at most ".\r", waits for more input)
    data: bytes  # unstuffed content from the consumed bytes (before the terminator)
    removed: tuple[int, ...]  # content offsets of removed stuffing dots
    dot: int | None  # index (in the input) of the terminating '.', if the end was found
    lookalikes: tuple[tuple[int, bytes], ...]  # (stream offset, bytes) of smuggling look-alikes


class DataScanner:
    """Streaming DATA decoder. Feed it the raw client bytes not yet consumed, from `offset`."""

    def __init__(self, start_offset: int) -> None:
        self._state = _S.BOL
        self.content_size = 0
        self._tail = b"\r\n"  # virtual CRLF before DATA content: '.\n' first is a look-alike too
        self._tail_offset = start_offset - 2
        self._search_from = start_offset - 2

    def scan(self, buf: bytes, offset: int) -> ScanResult:
        n = len(buf)
        i = 0
        s = self._state
        pieces: list[bytes] = []
        removed: list[int] = []
        seg = 0  # start of the current raw piece
        plen = 0  # content bytes in the finished pieces
        dot: int | None = None
        consumed = n
        while i < n:
            if s is _S.CR:
                s = _S.BOL if buf[i] == 0x0A else _S.MID
                if s is _S.BOL:
                    i += 1
                continue
            if s is _S.BOL:
                if buf[i] != 0x2E:  # '.'
                    s = _S.MID
                    continue
                if i + 1 >= n or (buf[i + 1] == 0x0D and i + 2 >= n):
                    consumed = i  # '.' or '.\r' at the end: undecided
                    break
                if buf[i + 1] == 0x0D and buf[i + 2] == 0x0A:
                    dot = i
                    consumed = i + 3
                    break
                # A line starting with '.': the dot is stuffing, remove it.
                pieces.append(buf[seg:i])
                plen += i - seg
                removed.append(self.content_size + plen)
                i += 1
                seg = i
                s = _S.MID
                continue
            j = find_rare_tail(buf, b"\r\n.", i)
            if j >= 0:
                i = j + 2
                s = _S.BOL
                continue
            mid_start, i = i, n
            if n - mid_start >= 2 and buf.endswith(b"\r\n"):
                s = _S.BOL
            elif buf[-1] == 0x0D:
                s = _S.CR
            else:
                s = _S.MID
        content_end = dot if dot is not None else consumed
        pieces.append(buf[seg:content_end])
        data = b"".join(pieces)
        self._state = s if dot is None else _S.BOL
        self.content_size += len(data)
        looks = self._lookalikes(buf[:consumed], offset)
        return ScanResult(consumed, data, tuple(removed), dot, looks)

    def _lookalikes(self, raw: bytes, offset: int) -> tuple[tuple[int, bytes], ...]:
        if not raw:
            return ()
        base = self._tail_offset
        # Search on from the end of the last match, like one finditer over the whole content
        # would: the result does not depend on how the input was chunked.
        pos = max(0, self._search_from - base)
        found: list[tuple[int, bytes]] = []
        # A match is line break, NULs (<= 2), one dot, NULs (<= 2), line break: it starts 1 to 4
        # bytes before its dot and ends at most 5 bytes after it, and a '.' cannot be in front
        # of its own dot. So the matches are exactly those starting before a dot (at or after
        # `pos`) found in [dot - 4, dot + 5); one starting later belongs to a later dot (and may
        # be cut short by that end: skip it). Content without dots (base64) costs one memchr and
        # no copy of the window.
        if b"." in raw or self._tail.find(b".", pos) >= 0:
            window = self._tail + raw
            dot = window.find(b".", pos)
            while dot >= 0:
                m = _LOOKALIKE.search(window, max(pos, dot - 4), dot + 5)
                if m is None or m.start() >= dot:
                    dot = window.find(b".", dot + 1)
                    continue
                text = m.group()
                if m.end() == len(window) and text.endswith(b"\r"):
                    break  # may still become CRLF: decide when the next byte is known
                if text != _EXACT_END:
                    found.append((base + m.start(), text))
                pos = m.end()
                dot = window.find(b".", pos)
        self._search_from = base + pos
        keep = (self._tail + raw[-_LOOKALIKE_MAX - 1 :])[-_LOOKALIKE_MAX - 1 :]  # the window's end
        self._tail = keep
        self._tail_offset = offset + len(raw) - len(keep)
        return tuple(found)


def _framing_kept(old: bytes, new: bytes) -> bool:
    """Does the same-length rewrite old -> new keep CR/LF in place and put no new '.' at a line start?"""
    if not eol_layout_equal(bytes(old), bytes(new)):  # bytes(x) of a bytes object is x itself
        return False
    # Line starts are the same in both (the LFs are): check new's dots there against old's bytes.
    if new[:1] == b"." and old[:1] != b".":
        return False
    j = find_rare_tail(new, b"\n.")
    while j >= 0:
        if old[j + 1] != 0x2E:
            return False
        j = find_rare_tail(new, b"\n.", j + 2)
    return True


def _framing_error(content_offset: int, old: bytes, new: bytes) -> NoReturn:
    """Raise the RewriteError for the first offending byte (the slow path, only on refusal)."""
    for p, (a, b) in enumerate(zip(old, new, strict=True)):
        if (a in (0x0D, 0x0A) or b in (0x0D, 0x0A)) and a != b:
            raise RewriteError(f"rewrite changes a line ending at content offset {content_offset + p}")
        if b == 0x2E and a != 0x2E and (p == 0 or old[p - 1] == 0x0A):
            raise RewriteError(f"rewrite puts a '.' at a line start at content offset {content_offset + p}")
    raise AssertionError("_framing_kept and _framing_error disagree")


class OffsetMap:
    """Maps unstuffed content offsets of one message to client stream offsets."""

    def __init__(self, data_start: int) -> None:
        self.data_start = data_start
        self.removed: list[int] = []  # sorted content offsets where a stuffing dot was removed

    def add(self, removed: tuple[int, ...]) -> None:
        self.removed.extend(removed)

    def to_stream(self, content_offset: int) -> int:
        """Stream offset of the raw byte carrying content byte `content_offset`."""
        return self.data_start + content_offset + bisect.bisect_right(self.removed, content_offset)

    def map_rewrite(self, content_offset: int, old: bytes, new: bytes) -> list[tuple[int, bytes]]:
        """Turn a same-length rewrite of unstuffed content into raw stream rewrites.

        Stuffing dots stay in place (the raw pieces skip them). The rewrite must keep the DATA
        framing: CR and LF at the same places, and no '.' newly placed at a line start (it would
        need stuffing, changing the length, or could forge an end of DATA).
        """
        if len(old) != len(new):
            raise RewriteError("rewrite must keep the length")
        if not _framing_kept(old, new):
            _framing_error(content_offset, old, new)
        out: list[tuple[int, bytes]] = []
        lo = bisect.bisect_right(self.removed, content_offset)
        hi = bisect.bisect_left(self.removed, content_offset + len(new))
        cuts = [content_offset, *self.removed[lo:hi], content_offset + len(new)]
        for a, b in itertools.pairwise(cuts):
            if a < b:
                out.append((self.to_stream(a), new[a - content_offset : b - content_offset]))
        return out
