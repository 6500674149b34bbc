"""gateway.bytescan: the compiled byte scans of the mail path against their Python references.

The references (`*_py`) are the specification; gateway._fastpath has the twins the mail path uses.
Both are run on generated input built to hit the edges: CR/LF at the ends and next to each other,
base64 with every carry length, "=" and junk anywhere. The base64 fast path is also checked
against the decoder's general path (the one that handles "=" and junk), in random chunks.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import gateway._fastpath as compiled  # setup.sh builds it; a missing build must fail, not skip
from gateway import bytescan
from gateway.mime import decoders
from gateway.mime.decoders import Base64Decoder

EOLISH = st.binary(max_size=64).map(lambda b: bytes(x if x % 4 else (0x0D, 0x0A, 0x2E, 0x41)[x % 16 // 4] for x in b))
B64ISH = st.lists(
    st.sampled_from([b"QUJD", b"ZA", b"+/", b"\r\n", b" ", b"\t", b"=", b"==", b"!", b"\x00", b"\xff", b"-"]),
    max_size=40,
).map(b"".join)
CARRY = st.sampled_from([b"", b"Q", b"QU", b"QUJ", b"+/9"])
FUZZ = settings(max_examples=600, deadline=None, database=None)


@FUZZ
@given(EOLISH)
@example(b"\r")
@example(b"\n")
@example(b"\r\n")
@example(b"\r\r\n")
@example(b"\r\n\n")
@example(b"x\r\ny\r")
@example(b"\ra\r\n")  # the ends, which the compiled loop leaves to checks of their own
@example(b"a\r\nb\n")
@example(b"a\r\nb\r\n")
@example(b"\r\n" * 3000 + b"\r")  # past the compiled loop's 4096-byte block
@example(b"\r\n" * 3000 + b"x\ny")
def test_bare_eol_matches_reference(data: bytes) -> None:
    assert compiled.bare_eol(data) == bytescan.bare_eol_py(data)


@FUZZ
@given(EOLISH, st.data())
def test_eol_layout_equal_matches_reference(old: bytes, draw: st.DataObject) -> None:
    new = draw.draw(st.one_of(st.just(old), EOLISH.filter(lambda b: len(b) == len(old)), EOLISH))
    assert compiled.eol_layout_equal(old, new) == bytescan.eol_layout_equal_py(old, new)


def test_eol_scans_on_long_inputs() -> None:
    # past the compiled loops' 4096-byte blocks, a difference in every place class
    base = base64.encodebytes(bytes(range(256)) * 60).replace(b"\n", b"\r\n")
    assert len(base) > 3 * 4096
    for pos in (0, 4095, 4096, 4097, 9000, len(base) - 1):
        for byte in (b"\r", b"\n", b"A"):
            new = base[:pos] + byte + base[pos + 1 :]
            assert compiled.eol_layout_equal(base, new) == bytescan.eol_layout_equal_py(base, new)
            assert compiled.bare_eol(new) == bytescan.bare_eol_py(new)


@FUZZ
@given(CARRY, B64ISH)
@example(b"QUJ", b"D\r\n")
@example(b"", b"")
def test_b64_decode_plain_matches_reference(carry: bytes, data: bytes) -> None:
    assert compiled.b64_decode_plain(carry, data) == bytescan.b64_decode_plain_py(carry, data)


def test_b64_decode_plain_on_real_base64() -> None:
    raw = base64.encodebytes(bytes(range(256)) * 300).replace(b"\n", b"\r\n")
    for cut in range(0, 9):
        for carry in (b"", b"Q", b"QU", b"QUJ"):
            got = compiled.b64_decode_plain(carry, raw[cut:])
            assert got == bytescan.b64_decode_plain_py(carry, raw[cut:])
    decoded, rest = compiled.b64_decode_plain(b"", raw)  # type: ignore[misc]
    assert rest == b"" and decoded == bytes(range(256)) * 300


@pytest.mark.parametrize("impl", [compiled.b64_decode_plain, bytescan.b64_decode_plain_py], ids=["cython", "python"])
def test_b64_decode_plain_refuses_a_bad_carry(impl: object) -> None:
    for carry in (b"QUJD", b"=", b"\r"):
        with pytest.raises(ValueError):
            impl(carry, b"QUJD")  # type: ignore[operator]


@FUZZ
@given(B64ISH, st.lists(st.integers(min_value=1, max_value=9), max_size=12))
def test_base64_decoder_fast_path_equals_general_path(data: bytes, cuts: list[int]) -> None:
    """The decoder with its fast path (the compiled b64_decode_plain) gives what its general
    path alone gives, output and defects, however the input is chunked."""

    def run(monkeypatched: bool) -> tuple[bytes, list[str]]:
        old = decoders.b64_decode_plain
        if monkeypatched:
            decoders.b64_decode_plain = lambda carry, raw: None  # type: ignore[assignment]
        try:
            d = Base64Decoder()
            out, pos = [], 0
            for n in [*cuts, len(data)]:
                out.append(d.decode(data[pos : pos + n]))
                pos += n
            out.append(d.flush())
            return b"".join(out), d.take_defects()
        finally:
            decoders.b64_decode_plain = old

    assert run(False) == run(True)


@FUZZ
@given(EOLISH, st.sampled_from([b"\r\n.", b"\n.", b".", b"\r\n--", b"A\r"]), st.integers(0, 70))
@example(b"\r\n.", b"\r\n.", 0)
@example(b"\r\n.", b"\r\n.", 1)  # a start inside the match: it is not found
@example(b"..\r\n.", b"\r\n.", 0)  # a rare byte before the first match
def test_find_rare_tail_is_bytes_find(data: bytes, needle: bytes, start: int) -> None:
    want = data.find(needle, start)
    for probes in (0, 1, 8):  # straight to the fallback find, after one miss, the default
        assert bytescan.find_rare_tail(data, needle, start, probes) == want
    assert bytescan.find_rare_tail(bytearray(data), needle, start) == want


def test_modules_use_the_compiled_scans() -> None:
    """Unless LGWAN_GATEWAY_PURE_PYTHON=1, the mail path runs the compiled twins."""
    import os

    if os.environ.get("LGWAN_GATEWAY_PURE_PYTHON") == "1":
        pytest.skip("pure-Python run: the references are selected on purpose")
    assert bytescan.bare_eol is compiled.bare_eol
    assert bytescan.b64_decode_plain is compiled.b64_decode_plain
    assert decoders.b64_decode_plain is compiled.b64_decode_plain
