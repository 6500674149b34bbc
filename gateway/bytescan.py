"""Byte scans on the mail path, in their reference (specification) form.

Each function here has a compiled twin in gateway._fastpath (cython_ext/fastpath.pyx) with the
same results; tests/test_bytescan.py compares the two on generated input. The module-level names
(`bare_eol`, `eol_layout_equal`, `b64_decode_plain`) are the compiled ones unless
LGWAN_GATEWAY_PURE_PYTHON=1 or the extension is not built. They matter for throughput only: a
5 MB base64 attachment is ~110 GSO segments, each scanned a few times.
"""

from __future__ import annotations

import binascii
import os
from collections.abc import Callable
from typing import Any

B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
B64_WS = b" \t\r\n"
# byte class: 0 alphabet, 1 whitespace, 2 anything else ("=" included)
_PLAIN_CLASS = bytes(0 if b in B64_ALPHABET else 1 if b in B64_WS else 2 for b in range(256))
# every byte but CR and LF -> NUL: two same-length strings have their CR and LF at the same places
# exactly when their translations are equal
_EOL_ONLY = bytes(b if b in (0x0D, 0x0A) else 0 for b in range(256))


def bare_eol_py(data: bytes) -> bool:
    """Does `data` hold a CR that does not start a CRLF or an LF that does not end one?"""
    crlf_free = data.replace(b"\r\n", b"")
    return b"\r" in crlf_free or b"\n" in crlf_free


def eol_layout_equal_py(old: bytes, new: bytes) -> bool:
    """Do two same-length strings have their CR and LF bytes at the same places (and no others)?"""
    return len(old) == len(new) and old.translate(_EOL_ONLY) == new.translate(_EOL_ONLY)


def b64_decode_plain_py(carry: bytes, data: bytes) -> tuple[bytes, bytes] | None:
    """(decoded, carry) of base64 text `carry + data` holding only alphabet and whitespace: every
    complete quantum decoded, the < 4 alphabet characters after them the new carry. None when
    `data` holds "=" or any other byte. `carry` is < 4 alphabet characters."""
    if len(carry) > 3 or carry.translate(_PLAIN_CLASS).strip(b"\x00"):
        raise ValueError("carry must be fewer than 4 base64 alphabet characters")
    cls = data.translate(_PLAIN_CLASS)
    if b"\x02" in cls:
        return None
    s = carry + (data.translate(None, B64_WS) if b"\x01" in cls else data)
    n = len(s) - len(s) % 4
    return binascii.a2b_base64(s[:n]), s[n:]


def find_rare_tail(buf: bytes | bytearray, needle: bytes, start: int = 0, probes: int = 8) -> int:
    """`buf.find(needle, start)` (start >= 0), fast where the needle's last byte is rare: a match
    ends on an occurrence of that byte, so memchr finds the candidates; after `probes` misses (text
    full of dots) one `find` from the next candidate on. Content without the byte (base64,
    Japanese text) costs one memchr: bytes.find of a short needle like b"\\r\\n." runs at ~5 GB/s
    here, memchr at ~100."""
    m = len(needle)
    last = needle[-1:]
    j = buf.find(last, start + m - 1)
    for _ in range(probes):
        if j < 0:
            return -1
        if buf.startswith(needle, j - m + 1):
            return j - m + 1
        j = buf.find(last, j + 1)
    return -1 if j < 0 else buf.find(needle, j - m + 1)


def compiled_twin(name: str, reference: Callable[..., Any]) -> Callable[..., Any]:
    """gateway._fastpath.NAME, the compiled twin of `reference`, unless LGWAN_GATEWAY_PURE_PYTHON=1
    or the extension is not built (then `reference`: the same results, only slower)."""
    if os.environ.get("LGWAN_GATEWAY_PURE_PYTHON") == "1":
        return reference
    try:
        from gateway import _fastpath
    except ImportError:
        return reference
    compiled: Callable[..., Any] = getattr(_fastpath, name, reference)
    return compiled


bare_eol: Callable[[bytes], bool] = compiled_twin("bare_eol", bare_eol_py)
eol_layout_equal: Callable[[bytes, bytes], bool] = compiled_twin("eol_layout_equal", eol_layout_equal_py)
b64_decode_plain: Callable[[bytes, bytes], tuple[bytes, bytes] | None] = compiled_twin(
    "b64_decode_plain", b64_decode_plain_py
)
