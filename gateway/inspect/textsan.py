"""Body 無害化 beyond raw 7bit text: base64-encoded text parts and ISO-2022-JP.

Both wrap `gateway.inspect.rewrite.TextSanitizer` (HTML markup blanked, `http` -> `hxxp`), which
is length-preserving byte for byte, and keep the same interface (`feed(raw) -> settled raw
bytes`, `final()`, `blanked`, `defanged`), so the inspector streams them the same way:

- `Iso2022Guard`: only bytes in ASCII mode reach the inner sanitizer (JIS X 0208 two-byte
  text, half-width kana and escape sequences pass untouched: `ht` + `tp` as the bytes of two
  kanji is not a link). The mode returns to ASCII at every line break (RFC 1468 lines end in
  ASCII mode; a client that resets there shows as ASCII what we treat as ASCII).
- `Base64TextSanitizer`: decodes the part quantum by quantum (4 characters -> up to 3 bytes,
  across line breaks), runs the inner sanitizer on the decoded bytes, and re-encodes each
  quantum at the positions of its own characters: the line structure, the padding and the
  length stay exactly as they were, whatever the line lengths. It holds only the raw bytes of
  an incomplete quantum and of the quanta whose decoded bytes the inner sanitizer still holds
  (a split `http`: at most 3 bytes, 2 quanta).

Irregular base64 (a character outside the alphabet other than CR, LF, space or tab; a `=`
that is not padding at a quantum's end; data after padding) is decoded differently by
different clients, so the text a reader sees cannot be known: from the first irregularity on,
every quantum is rewritten to decode to spaces (`ICAg`, padding kept) and `blanked` is set
(CHG_TEXT). What came before it is sanitized normally. A final incomplete quantum of 2 or 3
characters is decoded as lenient decoders do (1 or 2 bytes) and re-encoded in as many.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import deque
from typing import Protocol

from gateway.inspect.rewrite import TextSanitizer

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_ALPHABET_PAD = _ALPHABET + b"="
_B64 = frozenset(_ALPHABET)
_NON_WS = re.compile(rb"[^\r\n \t]+")
# quoted-printable tokens: a literal run, `=XX` runs, a soft line break (`=`, blanks and CRs, a
# line break: what lenient decoders such as Python's quopri skip), a stray `=`
_QP = re.compile(rb"[^=]+|((?:=[0-9A-Fa-f]{2})+)|=([ \t\r]*(?:\n|\r))|=[ \t]*")
_SPECIAL = re.compile(rb"[\x1b\x0e\x0f\r\n]")  # bytes that change (or reset) the ISO-2022-JP mode
_PAD = 0x3D  # '='
_BLANK = b"ICAg"  # base64 of three spaces


class TextRewriter(Protocol):
    """What the inspector streams a passing text part through (same length out as in)."""

    @property
    def blanked(self) -> bool: ...
    @property
    def defanged(self) -> bool: ...
    def feed(self, data: bytes) -> bytes: ...
    def final(self) -> bytes: ...


def is_iso2022(charset: str | None) -> bool:
    """iso-2022-jp, -jp-1/-2/-3, -jp-ms, csISO2022JP ... (the charset parameter, any case)."""
    cs = (charset or "").strip().strip('"').lower()
    return cs.startswith("iso-2022-jp") or cs.startswith("iso2022jp") or cs == "csiso2022jp"


def is_wide(charset: str | None) -> bool:
    """UTF-16/32: bytes are not characters; no byte-wise sanitizing is possible."""
    cs = (charset or "").strip().strip('"').lower().replace("_", "-")
    return cs.startswith(("utf-16", "utf-32", "ucs-2", "ucs-4", "utf16", "utf32"))


def scatter(raw: bytearray, base: int, runs: deque[tuple[int, int]], data: bytes) -> None:
    """Write data over the first len(data) bytes of runs ((stream offset, length), in order;
    raw[0] is at stream offset base), consuming them."""
    k = 0
    while k < len(data):
        off, ln = runs[0]
        take = min(ln, len(data) - k)
        i = off - base
        raw[i : i + take] = data[k : k + take]
        k += take
        if take == ln:
            runs.popleft()
        else:
            runs[0] = (off + take, ln - take)


class _Pending:
    """A TextRewriter around `inner`: raw bytes are held until their rewrite is settled;
    subclasses implement _run(data, final)."""

    def __init__(self, inner: TextRewriter) -> None:
        self.inner = inner
        self._raw = bytearray()  # raw bytes not yet returned; _raw[0] is at stream offset _base
        self._base = 0

    @property
    def blanked(self) -> bool:
        return self.inner.blanked

    @property
    def defanged(self) -> bool:
        return self.inner.defanged

    def _run(self, data: bytes, final: bool) -> bytes:
        raise NotImplementedError

    def _cut(self, edge: int) -> bytes:
        """Return the raw bytes before stream offset `edge` (settled) and forget them."""
        cut = edge - self._base
        done = bytes(self._raw[:cut])
        del self._raw[:cut]
        self._base = edge
        return done

    def feed(self, data: bytes) -> bytes:
        return self._run(data, False)

    def final(self) -> bytes:
        return self._run(b"", True)


class Iso2022Guard(_Pending):
    """TextSanitizer over the ASCII-mode bytes of ISO-2022-JP text only."""

    def __init__(self, inner: TextSanitizer) -> None:
        self._ascii = True  # G0 is ASCII / JIS-Roman
        self._so = False  # shifted out (SO/SI kana of CP50221)
        self._esc: bytearray | None = None  # an escape sequence being read
        self._single = False  # ESC N: the next byte is a G2 character
        super().__init__(inner)
        self._runs: deque[tuple[int, int]] = deque()  # (offset, length): ASCII-mode bytes not settled

    def _mode(self, b: int) -> bool:
        """Advance the mode over byte b; True if b is an ASCII-mode text byte."""
        if self._esc is not None:
            self._esc.append(b)
            if 0x20 <= b <= 0x2F and len(self._esc) < 4:
                return False  # intermediate bytes
            seq = bytes(self._esc)
            self._esc = None
            if seq in (b"(B", b"(J"):
                self._ascii = True
            elif seq == b"N":
                self._single = True
            elif not seq.startswith(b"."):  # ESC . A designates G2 only
                self._ascii = False  # $@ $B $(D (I and anything unknown: not ASCII
            return False
        if b == 0x1B:
            self._esc = bytearray()
            return False
        if b in (0x0D, 0x0A):
            self._ascii, self._so, self._single = True, False, False
            return True
        if b == 0x0E or b == 0x0F:
            self._so = b == 0x0E
            return False
        if self._single:
            self._single = False
            return False
        return self._ascii and not self._so

    def _pick(self, off: int, data: bytes, picked: bytearray) -> None:
        runs = self._runs
        if runs and runs[-1][0] + runs[-1][1] == off:
            runs[-1] = (runs[-1][0], runs[-1][1] + len(data))
        else:
            runs.append((off, len(data)))
        picked += data

    def _run(self, data: bytes, final: bool) -> bytes:
        start = self._base + len(self._raw)
        self._raw += data
        picked = bytearray()
        i, n = 0, len(data)
        while i < n:  # text runs between mode-relevant bytes in one step, those bytes one by one
            if self._esc is None and not self._single:
                m = _SPECIAL.search(data, i)
                j = m.start() if m is not None else n
                if j > i and self._ascii and not self._so:
                    self._pick(start + i, data[i:j], picked)
                i = j
                if i == n:
                    break
            if self._mode(data[i]):
                self._pick(start + i, data[i : i + 1], picked)
            i += 1
        out = self.inner.feed(bytes(picked))
        if final:
            out += self.inner.final()
        scatter(self._raw, self._base, self._runs, out)  # settled ASCII bytes, in order
        edge = self._runs[0][0] if self._runs else self._base + len(self._raw)
        return self._cut(edge)


class Base64TextSanitizer(_Pending):
    """A text sanitizer over the decoded content of a base64 body, same length raw out.

    Bulk work per chunk (one a2b/b64encode per call, one slice assignment per line), so a
    multi-megabyte text attachment costs little more than its decoding."""

    def __init__(self, inner: TextRewriter) -> None:
        super().__init__(inner)
        self._runs: deque[tuple[int, int]] = deque()  # (stream offset, length) of the pending characters
        self._chars = bytearray()  # pending characters (not yet re-encoded), in order
        self._fed = 0  # of them, decoded and fed to the inner sanitizer (whole quanta)
        self._last_n = 3  # decoded bytes of the last fed quantum (< 3: it was padded, the data ended)
        self._dec = bytearray()  # sanitized decoded bytes not yet re-encoded
        self.irregular = False  # from here on every quantum decodes to spaces
        self._k = 0  # position in the blank pattern (irregular mode)
        self._flushed = False  # inner.final() was called
        self._padded = False  # a padded quantum was decoded: the data should have ended

    @property
    def blanked(self) -> bool:
        return self.inner.blanked or self.irregular

    def _feed_quanta(self, chars: bytes) -> None:
        if not chars:
            return
        decoded = binascii.a2b_base64(chars)
        self._fed += len(chars)
        pads = len(chars) - len(chars.rstrip(b"="))
        self._last_n = 3 - pads
        self._padded = self._padded or pads > 0
        self._dec += self.inner.feed(decoded)

    def _scatter(self, enc: bytes) -> None:
        """Write enc over the first len(enc) pending characters, where they stand in _raw."""
        scatter(self._raw, self._base, self._runs, enc)
        del self._chars[: len(enc)]

    def _encode_ready(self) -> None:
        q = self._fed // 4
        if not q:
            return
        total = 3 * q - (3 - self._last_n)
        if len(self._dec) >= total:
            m, nbytes = q, total
        else:
            m = min(len(self._dec) // 3, q if self._last_n == 3 else q - 1)
            nbytes = 3 * m
        if not m:
            return
        self._scatter(base64.b64encode(bytes(self._dec[:nbytes])))
        del self._dec[:nbytes]
        self._fed -= 4 * m
        if not self._fed:
            self._last_n = 3

    def _blank_pending(self) -> None:
        """Irregular from the first pending, unfed character on: flush what came before, blank the rest."""
        self.irregular = True
        self._flushed = True
        self._k = 0  # the pending characters start at a quantum boundary
        self._dec += self.inner.final()
        self._encode_ready()
        assert not self._fed and not self._dec
        rest = bytes(self._chars)
        self._scatter(self._blank(rest))

    def _blank(self, chars: bytes) -> bytes:
        out = bytearray(chars)
        for i, c in enumerate(chars):
            if c in _B64:
                out[i] = _BLANK[self._k % 4]
                self._k += 1
            elif c == _PAD:
                self._k += 1
        return bytes(out)

    def _take(self, data: bytes, start: int) -> None:
        """Queue the characters of `data` (at stream offset start), blanking in irregular mode."""
        for m in _NON_WS.finditer(data):
            a, b = m.span()
            if self.irregular:
                i = start + a - self._base
                self._raw[i : i + b - a] = self._blank(data[a:b])
                continue
            self._runs.append((start + a, b - a))
            self._chars += data[a:b]

    def _decode_whole_quanta(self, final: bool) -> None:
        """Decode and feed the pending whole quanta; on an irregularity, blank from there on."""
        pend = bytes(self._chars[self._fed :])
        if not pend:
            return
        if self._padded:  # data after padding: decoders disagree on what follows
            self._blank_pending()
            return
        stray = pend.translate(None, _ALPHABET_PAD)
        bad = pend.index(stray[:1]) if stray else len(pend)
        eq = pend.find(b"=", 0, bad)
        if eq >= 0:
            q0 = eq // 4 * 4
            quantum = pend[q0 : q0 + 4]
            if len(quantum) == 4:
                body = quantum.rstrip(b"=")
                if len(body) >= 2 and b"=" not in body:  # 1 or 2 padding characters at its end
                    self._feed_quanta(pend[: q0 + 4])
                    if len(pend) > q0 + 4:
                        self._blank_pending()
                    return
            elif not final:
                self._feed_quanta(pend[:q0])  # the padded quantum is not complete yet
                return
            bad = q0  # '=' inside a quantum, or truncated padding at the end
        whole = min(bad, len(pend)) // 4 * 4
        self._feed_quanta(pend[:whole])
        rest = pend[whole:]
        if bad < len(pend):
            self._blank_pending()
        elif final and len(rest) in (2, 3):
            # a final incomplete quantum without padding: lenient decoders decode 1 or 2 bytes
            self._dec += self.inner.feed(binascii.a2b_base64(rest + b"=" * (4 - len(rest))))
            self._dec += self.inner.final()
            self._flushed = True
            enc = base64.b64encode(bytes(self._dec))
            self._dec.clear()
            self._fed = 0
            self._scatter(enc[: len(self._chars)])
        elif final and rest:
            self._blank_pending()  # a single stray character

    def _run(self, data: bytes, final: bool) -> bytes:
        start = self._base + len(self._raw)
        self._raw += data
        self._take(data, start)
        if not self.irregular:
            self._decode_whole_quanta(final)
        if final and not self._flushed:
            self._flushed = True
            self._dec += self.inner.final()
        self._encode_ready()
        if final:
            assert not self._chars and not self._dec, "base64 rewrite left characters behind"
        edge = self._runs[0][0] if self._runs else self._base + len(self._raw)
        return self._cut(edge)


class QuotedPrintableTextSanitizer(_Pending):
    """A text sanitizer over the decoded content of a quoted-printable body, same length raw out.

    Decoded as clients do (`=XX` one byte, `=` + optional blanks + line break a soft line break,
    any other `=` a literal): an `http` split by a soft line break, a tag written `=3C`, ISO-2022-JP
    escapes written `=1B` are seen. Each changed byte is written back in its own form: a literal
    as a literal (the sanitizer only writes spaces and `x`), an `=XX` as `=XX` (3 bytes). Held:
    an incomplete `=` sequence and the spans of the bytes the inner sanitizer holds."""

    def __init__(self, inner: TextRewriter) -> None:
        super().__init__(inner)
        self._scan = 0  # stream offset up to which the raw bytes were decoded
        # decoded bytes not yet settled: (stream offset, count, hex) runs; hex: one `=XX` byte
        self._spans: deque[tuple[int, int, bool]] = deque()

    def _decode(self, final: bool) -> bytes:
        out = bytearray()
        buf = bytes(self._raw[self._scan - self._base :])
        pos = 0
        for m in _QP.finditer(buf):
            a, b = m.span()
            tok = m.group()
            if tok[0] != 0x3D:  # '=': a literal run
                self._span(self._scan + a, b - a, False)
                out += tok
            elif m.group(1) is not None:  # a run of `=XX`: one decoded byte each
                self._spans.append((self._scan + a, (b - a) // 3, True))
                out += bytes.fromhex(tok.replace(b"=", b"").decode("ascii"))
            elif not final and (len(buf) - a < 3 or b == len(buf)):
                break  # maybe cut short (`=4`, `=\r`, `=  `): wait for the next bytes
            elif m.group(2) is not None:
                pass  # soft line break: decodes to nothing
            else:
                self._span(self._scan + a, 1, False)  # a stray '=' is a literal
                out += b"="
            pos = b
        self._scan += pos
        return bytes(out)

    def _span(self, off: int, n: int, hexed: bool) -> None:
        sp = self._spans
        if sp and not hexed and not sp[-1][2] and sp[-1][0] + sp[-1][1] == off:
            sp[-1] = (sp[-1][0], sp[-1][1] + n, False)
        else:
            sp.append((off, n, hexed))

    def _settle(self, data: bytes) -> None:
        """Write the settled decoded bytes back over their spans, each in its own form."""
        k = 0
        while k < len(data):
            off, n, hexed = self._spans[0]
            i = off - self._base
            take = min(n, len(data) - k)
            new = data[k : k + take]
            if not hexed:
                self._raw[i : i + take] = new
            elif bytes.fromhex(self._raw[i : i + 3 * take].replace(b"=", b"").decode("ascii")) != new:
                self._raw[i : i + 3 * take] = b"".join(b"=%02X" % c for c in new)  # only where it changed
            k += take
            if take == n:
                self._spans.popleft()
            else:
                self._spans[0] = (off + (3 * take if hexed else take), n - take, hexed)

    def _run(self, data: bytes, final: bool) -> bytes:
        self._raw += data
        decoded = self._decode(final)
        out = self.inner.feed(decoded)
        if final:
            out += self.inner.final()
        self._settle(out)
        edge = self._spans[0][0] if self._spans else self._scan  # (a partly settled span: its rest)
        if final:
            edge = self._base + len(self._raw)
        return self._cut(edge)


def text_rewriter(html: bool, links: bool, transfer_encoding: str, charset: str | None) -> TextRewriter | None:
    """The same-length rewriter for a passing text part, or None when it cannot be rewritten
    byte-wise (UTF-16/32 text; an unknown transfer encoding: x-uuencode ...)."""
    if not (html or links) or is_wide(charset):
        return None
    inner: TextRewriter = TextSanitizer(html, links)
    if is_iso2022(charset):
        inner = Iso2022Guard(TextSanitizer(html, links))
    if transfer_encoding in ("7bit", "8bit", "binary"):
        return inner
    if transfer_encoding == "quoted-printable":
        return QuotedPrintableTextSanitizer(inner)
    if transfer_encoding == "base64":
        return Base64TextSanitizer(inner)
    return None
