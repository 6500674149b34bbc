"""Streaming, sans-I/O MIME parser with absolute byte offsets (h11 style).

    p = MimeParser(Limits())
    events = p.feed(chunk)      # any chunking; the events do not depend on it
    events += p.end()           # closes every open entity; last event is MessageEnd

Bytes in, typed events out (gateway.mime.events); no I/O, no clock. Offsets are absolute into the
concatenation of everything fed, so the inspector maps them back to the TCP stream and rewrites in
place. The ranges of PartStart/PartData/Boundary/Preamble/Epilogue tile the input: no byte is
outside them, none is in two, so no part can hide from the classifier.

State is bounded: header blocks (Limits.max_header_size) and lines that could still be a boundary
delimiter are held; everything else streams through as soon as it cannot be part of a delimiter.
The line break before a possible delimiter is held too (RFC 2046: it belongs to the delimiter).

Recognised line breaks: CRLF, bare LF and bare CR, like Python's email package: a bare CR before
"--boundary" ends a part there for some clients, so it must for us (reported as a defect).
Boundary matching follows RFC 2046 and Python: "--" boundary ["--"] [ \\t]* at line start, checked
against every open multipart, innermost first (an outer delimiter closes the inner entities). A line
that starts with a delimiter but has trailing junk is data for us and a delimiter for clients that
match prefixes (Thunderbird): it is reported as `near-delimiter` so the policy can refuse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gateway.bytescan import bare_eol
from gateway.mime.decoders import Decoder, make_decoder
from gateway.mime.events import (
    Boundary,
    ContentType,
    Defect,
    Epilogue,
    Event,
    LimitExceeded,
    Limits,
    MessageEnd,
    MimeUsageError,
    PartData,
    PartEnd,
    PartStart,
    Preamble,
)
from gateway.mime.headers import (
    Header,
    Params,
    count_param,
    get_param,
    header_line_match,
    make_header,
    parse_params,
    token,
)
from gateway.mime.names import extract_names

_EOL = re.compile(rb"\r\n|\r|\n")
# A line break that may start a delimiter line: followed by "-", or at the end of the buffer
# (the next feed decides). Body bytes between such points stream through unexamined.
_CAND = re.compile(rb"(?:\r\n|\r|\n)(?=-)|(?:\r\n|\r|\n)\Z")
_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")

# Frame states
_HEADERS = 0
_BODY = 1  # leaf body
_PREAMBLE = 2
_CHILD = 3  # multipart or message whose child is on top of the stack
_EPILOGUE = 4

_MESSAGE_TYPES = frozenset({"message/rfc822", "message/global", "message/news"})
_ENCODINGS_FOR_MESSAGE = frozenset({"7bit", "8bit", "binary", ""})
_DELIM_WS = b" \t"


@dataclass(eq=False)
class _Frame:
    path: str
    depth: int
    header_start: int
    default_type: tuple[str, str] = ("text", "plain")
    state: int = _HEADERS
    kind: str = "leaf"
    lines: list[bytes] = field(default_factory=list)
    line_offsets: list[int] = field(default_factory=list)
    header_size: int = 0
    boundary: bytes | None = None
    children: int = 0
    decoder: Decoder | None = None
    decoded_size: int = 0
    subtype: str = ""
    body_start: int = 0
    bare_eols: set[bytes] = field(default_factory=set)  # kinds of bare line break reported

    def child_path(self, n: int) -> str:
        return f"{self.path}.{n}" if self.path else str(n)


# Outcome of looking at a line that starts with "-" (line start in a body).
_NEED = 0
_DATA = 1
_DELIM = 2


class MimeParser:
    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._buf = bytearray()
        self._base = 0  # absolute offset of _buf[0]
        self._pos = 0  # index of the first unconsumed byte in _buf
        self._total = 0
        self._stack: list[_Frame] = [_Frame(path="", depth=1, header_start=0)]
        self._parts = 1
        self._line_start = True  # in body states: _buf[_pos] starts a line
        self._held = b""  # a line break held until we know whether a delimiter follows
        self._held_off = 0
        self._line_len = 0  # only maintained when Limits.max_body_line_length is set
        self._out: list[Event] = []
        self._pend: list[bytes] = []  # coalesced body bytes not yet emitted as an event (joined on flush)
        self._pend_len = 0
        self._pend_off = 0
        self._pend_frame: _Frame | None = None
        self._pend_state = _BODY
        self._failed = False
        self._ended = False
        self._defects = 0

    # -- public API ------------------------------------------------------------------------

    @property
    def failed(self) -> bool:
        """A limit was hit; no further events will come."""
        return self._failed

    def feed(self, data: bytes) -> list[Event]:
        if self._ended:
            raise MimeUsageError("feed() after end()")
        if self._failed or not data:
            return []
        room = self.limits.max_total_size - self._total
        over = len(data) > room
        if over:
            data = data[:room]
        self._total += len(data)
        self._buf += data
        self._run(eof=False)
        if over and not self._failed:
            self._fail("max_total_size", self.limits.max_total_size, self.limits.max_total_size)
        self._flush_pending()
        self._compact()
        return self._take()

    def end(self) -> list[Event]:
        if self._ended:
            raise MimeUsageError("end() called twice")
        self._ended = True
        if self._failed:
            return []
        self._run(eof=True)
        if not self._failed:
            end = self._base + len(self._buf)
            top = self._stack[-1]
            if self._held:
                self._emit(top, self._held_off, self._held)
                self._held = b""
            self._close_above(-1, end)
            self._out.append(MessageEnd(size=end, defects=self._defects))
        self._flush_pending()
        self._compact()
        return self._take()

    # -- plumbing --------------------------------------------------------------------------

    def _take(self) -> list[Event]:
        out, self._out = self._out, []
        return out

    def _compact(self) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._base += self._pos
            self._pos = 0

    def _off(self, i: int) -> int:
        return self._base + i

    def _defect(self, path: str, offset: int, kind: str, detail: str = "") -> None:
        self._flush_pending()
        self._defects += 1
        self._out.append(Defect(path, offset, kind, detail))

    def _fail(self, limit: str, value: int, offset: int) -> None:
        self._flush_pending()
        self._failed = True
        self._out.append(LimitExceeded(self._stack[-1].path, offset, limit, value))

    def _emit(self, frame: _Frame, offset: int, data: bytes) -> None:
        """Body bytes of `frame` in its current state (leaf data, preamble or epilogue)."""
        if not data:
            return
        if self._pend_frame is frame and self._pend_state == frame.state and self._pend_off + self._pend_len == offset:
            self._pend.append(data)
            self._pend_len += len(data)
            return
        self._flush_pending()
        self._pend_frame = frame
        self._pend_state = frame.state
        self._pend_off = offset
        self._pend.append(data)
        self._pend_len = len(data)

    def _flush_pending(self) -> None:
        frame = self._pend_frame
        if frame is None:
            return
        raw = b"".join(self._pend)  # a single piece is not copied
        self._pend.clear()
        self._pend_len = 0
        self._pend_frame = None
        if self._pend_state == _BODY:
            assert frame.decoder is not None
            decoded = frame.decoder.decode(raw)
            frame.decoded_size += len(decoded)
            self._out.append(PartData(frame.path, self._pend_off, raw, decoded))
        elif self._pend_state == _PREAMBLE:
            self._out.append(Preamble(frame.path, self._pend_off, raw))
        else:
            self._out.append(Epilogue(frame.path, self._pend_off, raw))

    def _find_line(self, eof: bool) -> tuple[int, int] | None:
        """(end of content, end after the line break) of the line at _pos, or None if incomplete."""
        buf = self._buf
        m = _EOL.search(buf, self._pos)
        if m is None:
            return (len(buf), len(buf)) if eof and self._pos < len(buf) else None
        if m.end() == len(buf) and buf[m.start()] == 0x0D and m.end() - m.start() == 1 and not eof:
            return None  # a final CR may be the first half of CRLF
        return m.start(), m.end()

    # -- the machine -----------------------------------------------------------------------

    def _run(self, eof: bool) -> None:
        while not self._failed:
            top = self._stack[-1]
            progressed = self._step_headers(top, eof) if top.state == _HEADERS else self._step_body(top, eof)
            if not progressed:
                return

    def _step_headers(self, top: _Frame, eof: bool) -> bool:
        lim = self.limits
        found = self._find_line(eof)
        if found is None:
            pending = len(self._buf) - self._pos
            content = pending - (1 if self._buf.endswith(b"\r") else 0)  # a final CR may be the EOL
            if eof:  # input ends inside the header block: the body is empty
                at = self._off(self._pos)
                self._finish_headers(top, at, at)
                return True
            if content > lim.max_line_length:
                self._fail("max_line_length", lim.max_line_length, self._off(self._pos))
            elif top.header_size + pending > lim.max_header_size:
                self._fail("max_header_size", lim.max_header_size, self._off(self._pos))
            return False
        end, after = found
        line = bytes(self._buf[self._pos : end])
        at = self._off(self._pos)
        if end - self._pos > lim.max_line_length:
            self._fail("max_line_length", lim.max_line_length, at)
            return False
        top.header_size += after - self._pos
        if top.header_size > lim.max_header_size:
            self._fail("max_header_size", lim.max_header_size, at)
            return False
        if not line:
            self._pos = after
            self._finish_headers(top, at, self._off(after))
            return True
        if line[0] in _DELIM_WS:
            if not top.lines:
                self._defect(top.path, at, "continuation-first", "folded line before any header")
                top.lines.append(b"")
                top.line_offsets.append(at)
            top.lines[-1] += bytes(self._buf[self._pos : after])
            self._pos = after
            return True
        if line.startswith(b"--") and self._delimiter_of(line) is not None:
            # a delimiter of an enclosing multipart: an empty body, every reader agrees
            self._defect(top.path, at, "headers-end-at-delimiter")
            self._finish_headers(top, at, at)
            return True
        hm = header_line_match(line)
        if hm is None:
            # Not a header: the body starts here (Python's email). Readers that skip the line and
            # read on would see the headers after it (a Content-Type: multipart we would take for
            # text), so the default profile refuses this (refuse_on_defects).
            self._defect(top.path, at, "missing-header-body-separator")
            self._finish_headers(top, at, at)
            return True
        if hm[1]:
            self._defect(top.path, at, "header-name-whitespace", hm[0].decode("ascii"))
        if len(top.lines) >= lim.max_headers:
            self._fail("max_headers", lim.max_headers, at)
            return False
        top.lines.append(bytes(self._buf[self._pos : after]))
        top.line_offsets.append(at)
        self._pos = after
        return True

    def _delimiter_of(self, line: bytes) -> int | None:
        """Stack index of the open multipart whose complete delimiter `line` is, innermost first."""
        for i in range(len(self._stack) - 1, -1, -1):
            f = self._stack[i]
            if f.boundary is not None and f.state != _EPILOGUE and _match(line, f.boundary, True)[0] == _DELIM:
                return i
        return None

    def _finish_headers(self, top: _Frame, header_end: int, body_start: int) -> None:
        headers: list[Header] = []
        for raw, off in zip(top.lines, top.line_offsets, strict=True):
            if header_line_match(raw) is not None:  # not the placeholder of a leading fold
                headers.append(make_header([raw], off))
        top.lines = []
        top.line_offsets = []
        path = top.path
        ctype = self._content_type(top, headers, header_end)
        cte = token(_first(headers, "content-transfer-encoding") or b"")
        disp_raw = _first(headers, "content-disposition")
        disposition: str | None = None
        disp_params: Params = ()
        if disp_raw is not None:
            main, disp_params = parse_params(disp_raw)
            disposition = token(main)
        for name in ("content-type", "content-transfer-encoding", "content-disposition"):
            if sum(1 for h in headers if h.lname == name) > 1:
                self._defect(path, header_end, "duplicate-header", name)
        for params, pname in ((ctype.params, "boundary"), (disp_params, "filename"), (ctype.params, "name")):
            if count_param(params, pname) > 1:
                self._defect(path, header_end, "duplicate-param", pname)
        kind = "leaf"
        boundary: bytes | None = None
        if ctype.maintype == "multipart":
            b = get_param(ctype.params, "boundary")
            if not b:
                self._defect(path, header_end, "multipart-without-boundary")
            elif len(b) > self.limits.max_boundary_length:
                self._fail("max_boundary_length", self.limits.max_boundary_length, header_end)
                return
            else:
                kind = "multipart"
                boundary = b.rstrip(_DELIM_WS)  # trailing space in a boundary cannot be matched
        elif ctype.mime_type in _MESSAGE_TYPES:
            if cte in _ENCODINGS_FOR_MESSAGE:
                kind = "message"
            else:
                self._defect(path, header_end, "encoded-message", cte)  # classified as an opaque leaf
        decoder, known = make_decoder(cte)
        if not known:
            self._defect(path, header_end, "unknown-transfer-encoding", cte)
        if kind != "leaf" and cte not in _ENCODINGS_FOR_MESSAGE:
            self._defect(path, header_end, "encoded-container", cte)  # ignored, like clients do
        names = extract_names(ctype.params, disp_params)
        self._out.append(
            PartStart(
                path=path,
                depth=top.depth,
                header_start=top.header_start,
                header_end=header_end,
                body_start=body_start,
                headers=tuple(headers),
                content_type=ctype,
                transfer_encoding=cte or "7bit",
                disposition=disposition,
                disposition_params=disp_params,
                kind=kind,
                boundary=boundary,
                names=names,
            )
        )
        top.kind = kind
        top.subtype = ctype.subtype
        top.body_start = body_start
        top.boundary = boundary
        self._line_start = True
        self._line_len = 0
        if kind == "leaf":
            top.state = _BODY
            top.decoder = decoder
        elif kind == "multipart":
            top.state = _PREAMBLE
        else:
            top.state = _CHILD
            self._push(top, 1, body_start, ("text", "plain"))

    def _content_type(self, top: _Frame, headers: list[Header], at: int) -> ContentType:
        raw = _first(headers, "content-type")
        if raw is None:
            return ContentType(top.default_type[0], top.default_type[1], (), False)
        main, params = parse_params(raw)
        t = token(main)
        maintype, slash, subtype = t.partition("/")
        maintype, subtype = maintype.strip(), subtype.strip()
        if not slash or not maintype or not subtype:
            self._defect(top.path, at, "invalid-content-type", t)
            # like Python's email: an unparsable type is text/plain (params kept for names)
            return ContentType("text", "plain", params, False)
        return ContentType(maintype, subtype, params, True)

    def _push(self, parent: _Frame, n: int, at: int, default_type: tuple[str, str]) -> None:
        lim = self.limits
        if parent.depth + 1 > lim.max_depth:
            self._fail("max_depth", lim.max_depth, at)
            return
        self._parts += 1
        if self._parts > lim.max_parts:
            self._fail("max_parts", lim.max_parts, at)
            return
        self._stack.append(
            _Frame(path=parent.child_path(n), depth=parent.depth + 1, header_start=at, default_type=default_type)
        )

    def _step_body(self, top: _Frame, eof: bool) -> bool:
        buf = self._buf
        pos = self._pos
        if self._line_start:
            if pos >= len(buf):
                return False
            if buf[pos] != 0x2D:  # "-": only such lines can be delimiters
                self._begin_data_line(top)
                return True
            return self._candidate_line(top, eof)
        if self.limits.max_body_line_length:
            m = _EOL.search(buf, pos)
            found = None if m is None else (m.start(), m.end())
        else:
            found = _find_candidate_eol(buf, pos)
        if found is None:
            self._body_bytes(top, pos, len(buf))
            return False
        e_start, e_end = found
        self._body_bytes(top, pos, e_start)
        if self._failed:
            return False
        eol = bytes(buf[e_start:e_end])
        if eol == b"\r" and e_end == len(buf) and not eof:
            return False  # the CR may be half a CRLF: wait
        if eol != b"\r\n":
            self._bare_eol(top, e_start, eol)
        self._held = eol
        self._held_off = self._off(e_start)
        self._pos = e_end
        self._line_start = True
        self._line_len = 0
        return True

    def _bare_eol(self, top: _Frame, i: int, eol: bytes) -> None:
        # Reported once per entity: clients disagree on bare CR in particular.
        if eol not in top.bare_eols:
            top.bare_eols.add(eol)
            self._defect(top.path, self._off(i), "bare-cr" if eol == b"\r" else "bare-lf")

    def _body_bytes(self, top: _Frame, start: int, end: int) -> None:
        if end <= start:
            return
        lim = self.limits.max_body_line_length
        if lim is not None:
            if self._line_len + end - start > lim:
                # emit exactly up to the limit, so the events do not depend on chunking
                cut = start + lim - self._line_len
                self._emit(top, self._off(start), bytes(self._buf[start:cut]))
                self._fail("max_body_line_length", lim, self._off(cut))
                return
            self._line_len += end - start
        chunk = bytes(memoryview(self._buf)[start:end])  # one copy (a bytearray slice makes two)
        if len(top.bare_eols) < 2 and bare_eol(chunk):
            # Bare CR/LF inside the bytes that stream through unexamined (exact offsets, so
            # the defect does not depend on chunking; the data before it is emitted first).
            for m in _BARE.finditer(self._buf, start, end):
                if m.group() not in top.bare_eols:
                    self._emit(top, self._off(start), bytes(self._buf[start : m.start()]))
                    start = m.start()
                    self._bare_eol(top, start, m.group())
            chunk = bytes(self._buf[start:end])
        self._emit(top, self._off(start), chunk)
        self._pos = end

    def _begin_data_line(self, top: _Frame) -> None:
        if self._held:
            self._emit(top, self._held_off, self._held)
            self._held = b""
        self._line_start = False

    def _candidate_line(self, top: _Frame, eof: bool) -> bool:
        buf = self._buf
        pos = self._pos
        found = self._find_line(eof)
        complete = found is not None
        if found is not None:
            end, after = found
        else:  # incomplete: a final CR is (maybe) the line break, not content
            end = after = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
        line = bytes(buf[pos:end])
        cap = self.limits.max_line_length
        if len(line) > cap:
            # Judge an over-long line by its first cap+1 bytes, as if incomplete: the outcome
            # must not depend on whether the rest of the line has arrived yet.
            line, complete = line[: cap + 1], False
        need = False
        near: str | None = None  # path of the multipart whose delimiter the line resembles
        after_close: str | None = None
        for i in range(len(self._stack) - 1, -1, -1):
            f = self._stack[i]
            if f.boundary is None:
                continue
            r, closing = _match(line, f.boundary, complete)
            if r == _NEED:
                need = True
            elif r == _DELIM:
                if f.state == _EPILOGUE:
                    after_close = f.path
                    continue
                if need:
                    break  # an inner boundary may still match once the line is complete
                self._delimiter(i, closing, pos, end, after)
                return True
            elif r == _DATA and closing and near is None:  # closing doubles as "delimiter + junk"
                near = f.path
        if need:
            if len(line) > cap:
                self._fail("max_line_length", cap, self._off(pos))
            return False
        self._begin_data_line(top)
        if after_close is not None:
            self._defect(top.path, self._off(pos), "delimiter-after-close", after_close)
        if near is not None:
            # detail: the multipart path, not the line (how much of it we saw depends on chunking)
            self._defect(top.path, self._off(pos), "near-delimiter", near)
        return True

    def _delimiter(self, level: int, closing: bool, pos: int, end: int, after: int) -> None:
        target = self._stack[level]
        line_start = self._off(pos)
        start = self._held_off if self._held else line_start
        self._held = b""
        self._close_above(level, start)
        if self._failed:
            return
        self._flush_pending()
        index = target.children if closing else target.children + 1
        self._out.append(Boundary(target.path, start, line_start, self._off(after), closing, index))
        self._pos = after
        self._line_start = True
        self._line_len = 0
        if closing:
            target.state = _EPILOGUE
            if target.children == 0:
                self._defect(target.path, line_start, "multipart-without-parts")
        else:
            target.children += 1
            target.state = _CHILD
            default = ("message", "rfc822") if target.subtype == "digest" else ("text", "plain")
            self._push(target, target.children, self._off(after), default)

    def _close_above(self, level: int, body_end: int) -> None:
        """End every entity above stack index `level` (level -1: all), innermost first."""
        while len(self._stack) - 1 > level:
            f = self._stack.pop()
            if f.state == _HEADERS:
                # input ended (or a delimiter came) inside a header block: finish it, empty body
                self._stack.append(f)
                self._finish_headers(f, body_end, body_end)
                if self._failed:
                    return
                continue
            self._flush_pending()
            if f.kind == "multipart" and f.state != _EPILOGUE:
                self._defect(f.path, body_end, "missing-close-delimiter")
            if f.decoder is not None:
                tail = f.decoder.flush()
                if tail:
                    f.decoded_size += len(tail)
                    self._out.append(PartData(f.path, body_end, b"", tail))
                # Decoding defects come at the part's end, at its body_start: where and when a
                # decoder notices a problem depends on chunking, and events must not.
                for kind in sorted(f.decoder.take_defects()):  # discovery order depends on chunking
                    self._defects += 1
                    self._out.append(Defect(f.path, f.body_start, kind))
            self._out.append(PartEnd(f.path, body_end, f.decoded_size))


def _find_candidate_eol(buf: bytearray, pos: int) -> tuple[int, int] | None:
    """(start, end) of the first line break at or after `pos` that is followed by "-" or ends
    the buffer; None if there is none. Same as the regex `_CAND`, several times faster."""
    best: tuple[int, int] | None = None
    # Both patterns end in "-": search them from just before the first dash after `pos` (one
    # memchr), and not at all in a body without dashes (base64 has none).
    dash = buf.find(b"-", pos + 1)
    if dash >= 0:
        i = buf.find(b"\n-", dash - 1)
        if i >= 0:
            best = (i - 1, i + 1) if i - 1 >= pos and buf[i - 1] == 0x0D else (i, i + 1)
        j = buf.find(b"\r-", dash - 1, best[0] if best else len(buf))
        if j >= 0:
            best = (j, j + 1)
    if best is None:
        n = len(buf)
        if buf.endswith(b"\r\n") and n - 2 >= pos:
            best = (n - 2, n)
        elif n > pos and buf[n - 1] in (0x0A, 0x0D):
            best = (n - 1, n)
    return best


def _first(headers: list[Header], lname: str) -> bytes | None:
    for h in headers:
        if h.lname == lname:
            return h.value
    return None


def _match(line: bytes, boundary: bytes, complete: bool) -> tuple[int, bool]:
    """Does `line` (without its line break) delimit `boundary`?

    Returns (_DELIM, closing), (_NEED, False) when more of the line is needed to know, or
    (_DATA, near) where `near` says the line starts with the delimiter but has trailing junk.
    """
    d_len = len(boundary) + 2
    if len(line) < d_len:
        if not complete and line == (b"--" + boundary)[: len(line)]:
            return _NEED, False
        return _DATA, False
    if line[2:d_len] != boundary or line[:2] != b"--":
        return _DATA, False
    rest = line[d_len:]
    closing = rest.startswith(b"--")
    if closing:
        rest = rest[2:]
    elif not complete and rest == b"-":
        return _NEED, False
    if not rest.strip(_DELIM_WS):
        return (_DELIM, closing) if complete else (_NEED, False)
    return _DATA, True


class HeadCollector:
    """Accumulates the first `n` decoded bytes of every leaf part (for true-type magic).

    The parser streams; deciding how much to keep is the caller's job. This keeps at most `n`
    bytes per part that has not ended yet, and forgets a part when `pop` is called.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._heads: dict[str, bytearray] = {}
        self._ended: set[str] = set()

    def add(self, event: Event) -> str | None:
        """Feed any event; returns the path whose head just became ready (n bytes or part end)."""
        if isinstance(event, PartStart):
            if event.kind == "leaf":
                self._heads[event.path] = bytearray()
                self._ended.discard(event.path)
            return None
        if isinstance(event, PartData):
            h = self._heads.get(event.path)
            if h is None or len(h) >= self.n:
                return None
            h += event.decoded[: self.n - len(h)]
            return event.path if len(h) >= self.n else None
        if isinstance(event, PartEnd) and event.path in self._heads:
            was_ready = len(self._heads[event.path]) >= self.n
            self._ended.add(event.path)
            return None if was_ready else event.path
        return None

    def head(self, path: str) -> bytes:
        return bytes(self._heads.get(path, b""))

    def ready(self, path: str) -> bool:
        return path in self._ended or len(self._heads.get(path, b"")) >= self.n

    def pop(self, path: str) -> bytes:
        self._ended.discard(path)
        return bytes(self._heads.pop(path, b""))
