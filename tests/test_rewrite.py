"""gateway.inspect.rewrite: the bulk implementations against their per-byte references.

The fast paths (BodyFiller.fill cutting one stream slice along the line breaks) must give the
same bytes as the straightforward definitions they replaced, for any chunking and any mix of
CRLF, bare CR and bare LF (a chunk may also end between the CR and the LF of a CRLF)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.inspect.rewrite import BodyFiller

_NOT_EOL = re.compile(rb"[^\r\n]+")


def reference_fill(f: BodyFiller, raw: bytes) -> bytes:
    """The first implementation: every run of non-line-break bytes takes the next stream bytes."""
    out = bytearray(raw)
    for m in _NOT_EOL.finditer(raw):
        a, b = m.span()
        out[a:b] = f._stream(b - a)
    return bytes(out)


_BODY = st.lists(st.sampled_from([b"QUJD", b"x", b"\r\n", b"\r", b"\n", b"=\r\n", b"A" * 76 + b"\r\n"]), max_size=60)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["base64", "quoted-printable", "7bit"]),
    _BODY.map(b"".join),
    st.lists(st.integers(1, 40), max_size=20),
)
def test_fill_matches_the_per_run_reference(encoding: str, body: bytes, cuts: list[int]) -> None:
    notice = "[lgwan-gateway] removed 請求書.exe. Ask your administrator.\r\n"
    fast, ref = BodyFiller(encoding, notice), BodyFiller(encoding, notice)
    pos = 0
    for n in [*cuts, len(body)]:
        chunk = body[pos : pos + n]
        pos += len(chunk)
        got = fast.fill(chunk)
        assert got == reference_fill(ref, chunk)
        assert len(got) == len(chunk)
    assert fast.k == ref.k


def test_fill_keeps_every_line_break_in_place() -> None:
    f = BodyFiller("base64", "notice")
    raw = b"AAAA\r\nBB\rCC\nDD\r\n\r\nEE\r"
    got = f.fill(raw)
    assert [i for i, b in enumerate(got) if b in b"\r\n"] == [i for i, b in enumerate(raw) if b in b"\r\n"]
