"""Incremental Content-Transfer-Encoding decoders with bounded state.

Each decoder takes raw body bytes in arbitrary chunks and returns what they decode to; the
concatenation of all outputs (plus `flush()`) is independent of how the input was chunked. Real
mail breaks the rules (base64 with odd line lengths, spaces, missing padding; QP with bad
escapes), so decoding is lenient and every recovery is reported as a defect kind.
"""

from __future__ import annotations

import binascii
import re
from typing import Protocol

from gateway.bytescan import B64_ALPHABET, B64_WS, b64_decode_plain

_B64_KEEP = B64_ALPHABET + b"="
_B64_DELETE = bytes(b for b in range(256) if b not in _B64_KEEP)
_B64_JUNK = bytes(b for b in _B64_DELETE if b not in B64_WS)
# byte class: 0 alphabet or "=", 1 whitespace, 2 junk (one table lookup per byte, then memchr;
# a translate that deletes 190 byte values costs several times more)
_B64_CLASS = bytes(0 if b in _B64_KEEP else 1 if b in B64_WS else 2 for b in range(256))
_QP_MAX_HOLD = 1024  # trailing whitespace held back longer than this is passed on as data


class Decoder(Protocol):
    def decode(self, raw: bytes) -> bytes: ...

    def flush(self) -> bytes: ...

    def take_defects(self) -> list[str]: ...


class _Base:
    def __init__(self) -> None:
        self._defects: list[str] = []
        self._reported: set[str] = set()

    def _defect(self, kind: str) -> None:
        if kind not in self._reported:  # once per part: a broken part would flood otherwise
            self._reported.add(kind)
            self._defects.append(kind)

    def take_defects(self) -> list[str]:
        d, self._defects = self._defects, []
        return d


class IdentityDecoder(_Base):
    """7bit, 8bit, binary, and unknown encodings (decoded = raw; the parser reports unknown ones)."""

    def decode(self, raw: bytes) -> bytes:
        return raw

    def flush(self) -> bytes:
        return b""


class Base64Decoder(_Base):
    """Lenient base64: ignores whitespace and junk, decodes on past padding, pads a short tail.

    Data after "=" padding is decoded too (and reported): some clients concatenate base64 blocks,
    and what any client might decode must be visible to the classifier.
    """

    def __init__(self) -> None:
        super().__init__()
        self._carry = b""  # < 4 alphabet chars of an incomplete quantum
        self._padded = False

    def decode(self, raw: bytes) -> bytes:
        if not self._padded and type(raw) is bytes:
            plain = b64_decode_plain(self._carry, raw)
            if plain is not None:  # alphabet and whitespace only: what the general path below does
                decoded, self._carry = plain
                return decoded
        cls = raw.translate(_B64_CLASS)
        if b"\x02" in cls:
            s = raw.translate(None, _B64_DELETE)
            self._defect("base64-invalid-char")
        elif b"\x01" in cls:
            s = raw.translate(None, B64_WS)  # the same as deleting _B64_DELETE: no junk here
        else:
            s = raw
        if self._carry:
            s = self._carry + s
        self._carry = b""
        out: list[bytes] = []
        while s:
            eq = s.find(b"=")
            if eq < 0:
                if self._padded:
                    self._defect("base64-data-after-padding")
                    self._padded = False
                n = len(s) - len(s) % 4
                out.append(binascii.a2b_base64(s[:n]))
                self._carry = s[n:]
                break
            head = s[:eq]
            if head and self._padded:
                self._defect("base64-data-after-padding")
            if head:
                out.append(self._decode_tail(head))
            # any "=" ends the data for strict decoders, whether or not a quantum precedes it in
            # this chunk (the state must not depend on chunking)
            self._padded = True
            # skip the run of "=" (padding, or stray "=" which carries no data)
            j = eq
            while j < len(s) and s[j] == 0x3D:
                j += 1
            s = s[j:]
        return b"".join(out)  # one piece (the usual case) is returned as it is

    def _decode_tail(self, chars: bytes) -> bytes:
        n = len(chars) - len(chars) % 4
        out = binascii.a2b_base64(chars[:n]) if n else b""
        rest = chars[n:]
        if len(rest) == 1:
            self._defect("base64-truncated")  # 6 bits cannot make a byte
        elif rest:
            out += binascii.a2b_base64(rest + b"=" * (4 - len(rest)))
        return out

    def flush(self) -> bytes:
        if not self._carry:
            return b""
        if len(self._carry) > 1:
            self._defect("base64-missing-padding")
        out = self._decode_tail(self._carry)
        self._carry = b""
        return out


_QP_ESC = re.compile(rb"=([0-9A-Fa-f]{2})|=")
_EOL = re.compile(rb"\r\n|\r|\n")


class QuotedPrintableDecoder(_Base):
    def __init__(self) -> None:
        super().__init__()
        self._carry = b""  # tail that may still change meaning: "=", "=X", "= ", trailing WSP, "\r"

    def _unescape(self, s: bytes) -> bytes:
        if b"=" not in s:
            return s

        def sub(m: re.Match[bytes]) -> bytes:
            h = m.group(1)
            if h is None:
                self._defect("qp-invalid-escape")  # "=" not followed by hex: kept literally
                return b"="
            return bytes((int(h, 16),))

        return _QP_ESC.sub(sub, s)

    def _line(self, content: bytes, eol: bytes) -> bytes:
        content = content.rstrip(b" \t")  # RFC 2045 rule 3: transport-added trailing WSP
        if content.endswith(b"="):
            return self._unescape(content[:-1])  # soft line break
        return self._unescape(content) + eol

    def decode(self, raw: bytes) -> bytes:
        s = self._carry + raw
        self._carry = b""
        out = bytearray()
        pos = 0
        for m in _EOL.finditer(s):
            if m.group() == b"\r" and m.end() == len(s):
                break  # may be the first half of CRLF
            out += self._line(s[pos : m.start()], m.group())
            pos = m.end()
        tail = s[pos:]
        # Hold back what the rest of the line may change: trailing whitespace and a final escape.
        keep = len(tail) - len(tail.rstrip(b" \t\r"))
        eq = tail.rfind(b"=", 0, len(tail) - keep) if keep else tail.rfind(b"=")
        if eq >= 0 and len(tail) - eq <= 3 + keep:
            keep = len(tail) - eq
        if keep > _QP_MAX_HOLD:
            keep = 0
        cut = len(tail) - keep
        out += self._unescape(tail[:cut])
        self._carry = tail[cut:]
        return bytes(out)

    def flush(self) -> bytes:
        tail, self._carry = self._carry, b""
        if not tail:
            return b""
        if tail.endswith(b"\r"):
            return self._line(tail[:-1], b"\r")
        return self._line(tail, b"")


IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary", ""})


def make_decoder(cte: str) -> tuple[Decoder, bool]:
    """(decoder, known) for a Content-Transfer-Encoding token."""
    if cte == "base64":
        return Base64Decoder(), True
    if cte == "quoted-printable":
        return QuotedPrintableDecoder(), True
    return IdentityDecoder(), cte in IDENTITY_ENCODINGS
