"""The inspect path's bulk implementations against their per-byte/per-word references.

- BodyFiller.fill cuts one stream slice along the line breaks: the same bytes as the per-run
  definition, for any chunking and any mix of CRLF, bare CR and bare LF (a chunk may also end
  between the CR and the LF of a CRLF);
- the Internet checksum of gateway.inspect.packet (compiled: gateway._fastpath.inet_checksum;
  pure Python: one big-integer remainder) is the RFC 1071 sum of 16-bit words, including the
  all-ones and all-zeros corner cases;
- DataScanner's smuggling look-alike search runs the regex only around dots: the same findings
  as one regex search loop over the whole DATA content, however it is chunked;
- Base64Decoder classifies bytes with one table translate (no deleting translate unless there
  is junk): the same output, carry and defects as before, however it is chunked;
- the inspector keeps the message content as its chunks: any range read from them is the
  slice of the joined content."""

from __future__ import annotations

import binascii
import random
import re
import struct
from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.inspect.mail import _Chunks
from gateway.inspect.packet import _checksum_py, _pseudo, _with_payload_py, build_tcp, parse_tcp, with_payload
from gateway.inspect.rewrite import BodyFiller
from gateway.mime.decoders import _B64_DELETE, _B64_JUNK, Base64Decoder
from gateway.smtp.data import _EXACT_END, _LOOKALIKE, DataScanner

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
@example("quoted-printable", b"A" * 76 + b"\r\nQUJD\r\n=\r\n=\r\n", [])  # breaks at the stride and between
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


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["base64", "quoted-printable", "7bit"]),
    st.sampled_from([76, 72, 64, 75]),
    st.integers(0, 3),
    st.lists(st.integers(1, 3000), min_size=1, max_size=8),
)
@example("base64", 75, 1, [500, 3000])  # lines not a multiple of the pad ("ICAg"): no shortcut
@example("base64", 76, 0, [10, 3000])  # the notice ends inside the repeated lines
def test_fill_of_encoder_lines_matches_the_reference(encoding: str, width: int, odd: int, cuts: list[int]) -> None:
    """Long runs of equal lines (what an encoder writes; the repeated-line shortcut), cut anywhere."""
    body = b"".join(b"A" * width + b"\r\n" for _ in range(150)) + b"B" * odd + b"\r\n" + b"C" * width * 2
    notice = "[lgwan-gateway] The attachment 'a.exe' was removed (executable). " * 4  # spans lines
    fast, ref = BodyFiller(encoding, notice), BodyFiller(encoding, notice)
    pos = 0
    for n in [*cuts, len(body)]:
        chunk = body[pos : pos + n]
        pos += len(chunk)
        assert fast.fill(chunk) == reference_fill(ref, chunk)
    assert fast.k == ref.k


def test_fill_keeps_every_line_break_in_place() -> None:
    f = BodyFiller("base64", "notice")
    raw = b"AAAA\r\nBB\rCC\nDD\r\n\r\nEE\r"
    got = f.fill(raw)
    assert [i for i, b in enumerate(got) if b in b"\r\n"] == [i for i, b in enumerate(raw) if b in b"\r\n"]


def reference_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _compiled_checksum() -> Callable[[bytes], int]:
    try:
        from gateway._fastpath import inet_checksum
    except ImportError:  # pragma: no cover - only on a broken install
        pytest.skip("gateway._fastpath is not built")
    return inet_checksum  # type: ignore[no-any-return]


CHECKSUMS = [pytest.param(lambda: _checksum_py, id="python"), pytest.param(_compiled_checksum, id="cython")]


@pytest.mark.parametrize("impl", CHECKSUMS)
@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.binary(max_size=64), st.binary(min_size=1400, max_size=1500), st.just(b"\xff" * 6)))
def test_checksum_matches_the_rfc1071_word_sum(impl: Callable[[], Callable[[bytes], int]], data: bytes) -> None:
    assert impl()(data) == reference_checksum(data)


@pytest.mark.parametrize("impl", CHECKSUMS)
def test_checksum_corner_cases(impl: Callable[[], Callable[[bytes], int]]) -> None:
    checksum = impl()
    for data in (b"", b"\x00\x00", b"\xff\xff", b"\xff", b"\xff\xfe\x00\x01", b"\x12\x34" * 40000, bytes(65535)):
        assert checksum(data) == reference_checksum(data), data


def test_rewritten_packet_checksums_verify() -> None:
    """A packet with a new payload sums to zero over pseudo header + segment (what a receiver checks)."""
    src, dst = bytes([198, 19, 40, 25]), bytes([198, 18, 20, 25])
    pkt = build_tcp(4, src, dst, 40000, 25, 1, 2, 0x18, b"hello world, odd!")
    tcp = parse_tcp(pkt)
    out = with_payload(pkt, tcp, b"HELLO WORLD, ODD?")
    seg = out[20:]
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(seg))
    assert reference_checksum(pseudo + seg) == 0
    assert reference_checksum(out[:20]) == 0


def _compiled_with_payload() -> Callable[[bytes, int, int, bytes, bytes], bytes]:
    try:
        from gateway._fastpath import tcp_with_payload
    except ImportError:  # pragma: no cover - only on a broken install
        pytest.skip("gateway._fastpath is not built")
    return tcp_with_payload  # type: ignore[no-any-return]


@settings(max_examples=300, deadline=None)
@given(
    family=st.sampled_from([4, 6]),
    old=st.one_of(st.binary(max_size=40), st.binary(min_size=1400, max_size=1500)),
    seed=st.integers(0, 2**32 - 1),
    options=st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(range(8))]),
)
def test_rewritten_packets_equal_the_reference_and_verify(family: int, old: bytes, seed: int, options: bytes) -> None:
    """The compiled rewrite (one copy, native-order sum) gives the reference's bytes exactly, and
    the result sums to zero over pseudo header + segment, as a receiver checks."""
    src, dst = (bytes([198, 19, 40, 25]), bytes([198, 18, 20, 25])) if family == 4 else (b"\x20" * 16, b"\x21" * 16)
    pkt = build_tcp(family, src, dst, 40000, 25, 7, 9, 0x18, old, options=options)
    tcp = parse_tcp(pkt)
    new = random.Random(seed).randbytes(len(old))
    seg_len = len(pkt) - tcp.tcp_offset
    pseudo = _pseudo(family, src, dst, seg_len)
    want = _with_payload_py(pkt, tcp.tcp_offset, tcp.payload_offset, new, pseudo)
    got = _compiled_with_payload()(pkt, tcp.tcp_offset, tcp.payload_offset, new, pseudo)
    assert got == want == with_payload(pkt, tcp, new)
    assert parse_tcp(got).payload == new
    assert reference_checksum(pseudo + got[tcp.tcp_offset :]) == 0


@pytest.mark.parametrize(
    "impl", [pytest.param(lambda: _with_payload_py, id="python"), pytest.param(_compiled_with_payload, id="cython")]
)
def test_rewrite_refuses_a_payload_outside_the_packet(impl: Callable[[], Callable[..., bytes]]) -> None:
    pkt = build_tcp(4, bytes(4), bytes(4), 1, 2, 0, 0, 0x18, b"abcd")
    for tcp_offset, payload_offset, payload, pseudo in (
        (20, 40, b"abcde", bytes(12)),
        (30, 40, b"abcd", bytes(12)),
        (20, 40, b"abcd", bytes(11)),
    ):
        with pytest.raises(ValueError):
            impl()(pkt, tcp_offset, payload_offset, payload, pseudo)


_LOOK_TOKENS = st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"\x00", b"a", b"\r\n.", b".\r\n", b"\n.\n"])


def reference_lookalikes(raw: bytes) -> list[tuple[int, bytes]]:
    """The first implementation: one regex search after the other over the whole content."""
    window = b"\r\n" + raw
    found, pos = [], 0
    while (m := _LOOKALIKE.search(window, pos)) is not None:
        text = m.group()
        if m.end() == len(window) and text.endswith(b"\r"):
            break
        if text != _EXACT_END:
            found.append((m.start() - 2, text))
        pos = m.end()
    return found


@settings(max_examples=500, deadline=None)
@given(st.lists(_LOOK_TOKENS, max_size=40).map(b"".join), st.lists(st.integers(1, 12), max_size=12))
def test_lookalikes_match_the_whole_content_regex_search(raw: bytes, cuts: list[int]) -> None:
    """DataScanner's smuggling look-alike search (regex only around dots, chunk by chunk) finds
    exactly what one regex search loop over the whole content finds."""
    scanner = DataScanner(0)
    got: list[tuple[int, bytes]] = []
    pos = 0
    for n in [*cuts, len(raw)]:
        chunk = raw[pos : pos + n]
        got += scanner._lookalikes(chunk, pos)
        pos += len(chunk)
    assert got == reference_lookalikes(raw)


class ReferenceBase64(Base64Decoder):
    """The first implementation of decode (two deleting translates, a bytearray)."""

    def decode(self, raw: bytes) -> bytes:
        s = raw.translate(None, _B64_DELETE)
        if len(s) != len(raw) and len(raw.translate(None, _B64_JUNK)) != len(raw):
            self._defect("base64-invalid-char")
        s = self._carry + s
        self._carry = b""
        out = bytearray()
        while s:
            eq = s.find(b"=")
            if eq < 0:
                if self._padded:
                    self._defect("base64-data-after-padding")
                    self._padded = False
                n = len(s) - len(s) % 4
                out += binascii.a2b_base64(s[:n])
                self._carry = s[n:]
                break
            head = s[:eq]
            if head and self._padded:
                self._defect("base64-data-after-padding")
            if head:
                out += self._decode_tail(head)
            self._padded = True
            j = eq
            while j < len(s) and s[j] == 0x3D:
                j += 1
            s = s[j:]
        return bytes(out)


_B64_PIECES = st.sampled_from(
    [b"QUJD", b"RA==", b"\r\n", b" ", b"\t", b"=", b"*", b"\x00", b"Zm9v", b"YQ", b"\xe3\x81"]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_B64_PIECES, max_size=50).map(b"".join), st.lists(st.integers(1, 30), max_size=10))
def test_base64_decoder_matches_the_reference(raw: bytes, cuts: list[int]) -> None:
    """Same output, carry and defects as the first implementation, for any chunking."""
    fast, ref = Base64Decoder(), ReferenceBase64()
    got, want = [], []
    pos = 0
    for n in [*cuts, len(raw)]:
        chunk = raw[pos : pos + n]
        pos += len(chunk)
        got.append(fast.decode(chunk))
        want.append(ref.decode(chunk))
        assert fast.take_defects() == ref.take_defects()
    assert got == want
    assert fast.flush() == ref.flush() and fast.take_defects() == ref.take_defects()


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.binary(max_size=9), max_size=8), st.lists(st.tuples(st.integers(-3, 80), st.integers(-3, 80))))
def test_content_chunks_read_like_one_buffer(chunks: list[bytes], ranges: list[tuple[int, int]]) -> None:
    content = _Chunks()
    for c in chunks:
        content.append(c)
    whole = b"".join(chunks)
    assert content.whole() == whole and len(content) == len(whole)
    for a, b in ranges:
        assert content.cut(a, b) == whole[max(a, 0) : max(b, 0)]
