"""Fuzzing (hypothesis, bounded): for ANY input and any chunking, the MIME parser raises nothing,
gives the same events, and the event ranges tile the input, so every byte of every leaf body is
in exactly one PartData range: no part can hide from the classifier."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mime_helpers import check_invariants, feed, normalize
from mime_vectors import corpus

from gateway.mime import Limits, check_name, extract_names
from gateway.mime.headers import parse_params

CORPUS = list(corpus().values())

TOKENS = [
    b"--b",
    b"--b--",
    b"--c",
    b"--c--",
    b"\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n\r\n",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b'Content-Type: multipart/alternative; boundary="c"\r\n',
    b"Content-Type: multipart/digest; boundary=b\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"Content-Disposition: attachment; filename*0*=UTF-8''%E2%91; filename*1*=%A0.exe\r\n",
    b'Content-Disposition: attachment; filename="=?ISO-2022-JP?B?GyRCLSE=?="\r\n',
    b" folded",
    b"=",
    b"=4",
    b"QUJD",
    b"=\r\n",
    b" ",
    b"\t",
    b"x",
    b":",
    b"-",
    b"\x1b$B",
    b"\x87\x40",
]

SMALL = Limits(max_header_size=300, max_line_length=40, max_depth=4, max_parts=12, max_total_size=3000)
LIMIT_SETS = st.sampled_from([Limits(), SMALL, Limits(max_body_line_length=50)])


def check(data: bytes, cuts: list[int], limits: Limits) -> None:
    whole = feed(data, limits=limits)
    check_invariants(data, whole)
    chunked = feed(data, cuts, limits)
    check_invariants(data, chunked)
    assert normalize(whole) == normalize(chunked)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=6)), max_size=80),
    cuts=st.lists(st.integers(min_value=1, max_value=600), max_size=30),
    limits=LIMIT_SETS,
)
def test_token_soup(parts: list[bytes], cuts: list[int], limits: Limits) -> None:
    check(b"".join(parts), cuts, limits)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(min_value=0, max_value=len(CORPUS) - 1),
    edits=st.lists(
        st.tuples(st.floats(min_value=0, max_value=1), st.integers(0, 3), st.sampled_from([*TOKENS, b""])),
        max_size=8,
    ),
    cuts=st.lists(st.integers(min_value=1, max_value=20000), max_size=20),
    limits=LIMIT_SETS,
)
def test_mutated_corpus(which: int, edits: list[tuple[float, int, bytes]], cuts: list[int], limits: Limits) -> None:
    data = bytearray(CORPUS[which])
    for where, dele, insert in edits:
        i = int(where * len(data))
        data[i : i + dele] = insert
    check(bytes(data), cuts, limits)


@settings(max_examples=300, deadline=None)
@given(value=st.binary(max_size=200))
def test_names_never_raise(value: bytes) -> None:
    _, params = parse_params(b"attachment; " + value)
    for n in extract_names(params, params):
        check_name(n.decoded)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(
        st.sampled_from(
            [
                b"filename",
                b"filename*",
                b"filename*0*",
                b"filename*1",
                b"=",
                b";",
                b"'",
                b"''",
                b"%",
                b"%1B",
                b"%24B",
                b'"',
                b"=?",
                b"?=",
                b"?B?",
                b"?Q?",
                b"ISO-2022-JP",
                b"utf-8",
                b"GyRC",
                b"\x1b$B",
                b"\x87",
                b" ",
            ]
        ),
        max_size=30,
    )
)
def test_name_token_soup(parts: list[bytes]) -> None:
    _, params = parse_params(b"attachment; " + b"".join(parts))
    for n in extract_names(params, params):
        assert isinstance(check_name(n.decoded), list)


@settings(max_examples=200, deadline=None)
@given(name=st.text(max_size=80))
def test_check_name_total(name: str) -> None:
    assert isinstance(check_name(name), list)


@settings(max_examples=1000, deadline=None)
@given(buf=st.lists(st.sampled_from([b"\r", b"\n", b"-", b"x", b"\r\n"]), max_size=12), pos=st.integers(0, 12))
def test_fast_candidate_search_matches_the_regex(buf: list[bytes], pos: int) -> None:
    from gateway.mime.parser import _CAND, _find_candidate_eol

    b = bytearray(b"".join(buf))
    pos = min(pos, len(b))
    if pos and b[pos - 1 : pos + 1] == b"\r\n":
        return  # the parser never stands between CR and LF
    m = _CAND.search(b, pos)
    assert _find_candidate_eol(b, pos) == (None if m is None else (m.start(), m.end()))
