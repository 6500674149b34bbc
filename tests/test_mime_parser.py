"""Streaming MIME parser: h11-style tests (whole, byte by byte, random chunks give the same events),
offsets checked by slicing the input, structure cross-checked against Python's email package."""

from __future__ import annotations

import base64
import email
import email.policy
from email.message import Message

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mime_helpers import bytewise, check_invariants, feed, leaves, normalize
from mime_vectors import EXE, JP_NAME, PDF, RLO_NAME, b64_body, corpus

from gateway.mime import (
    Boundary,
    Defect,
    Epilogue,
    HeadCollector,
    LimitExceeded,
    Limits,
    MessageEnd,
    MimeParser,
    MimeUsageError,
    PartData,
    PartEnd,
    PartStart,
    Preamble,
)

CORPUS = corpus()


def parse_all_ways(data: bytes, limits: Limits | None = None) -> list:
    whole = normalize(feed(data, limits=limits))
    one = normalize(bytewise(data, limits))
    assert whole == one
    thirds = normalize(feed(data, [len(data) // 3, 2 * len(data) // 3], limits))
    assert whole == thirds
    check_invariants(data, feed(data, limits=limits))
    return whole


def kinds(events: list, cls: type) -> list:
    return [e for e in events if isinstance(e, cls)]


# -- the corpus ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_same_events_whole_bytewise_chunked(name: str) -> None:
    events = parse_all_ways(CORPUS[name])
    assert isinstance(events[-1], MessageEnd)
    assert not kinds(events, LimitExceeded)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_matches_python_email(name: str) -> None:
    data = CORPUS[name]
    events = normalize(feed(data))
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    ours = [e.content_type.mime_type for e in kinds(events, PartStart)]
    theirs = [part.get_content_type() for part in msg.walk()]
    assert ours == theirs
    parts: list[Message] = [p for p in msg.walk() if not p.is_multipart() and p.get_content_type() != "message/rfc822"]
    ls = [v for v in leaves(events).values()]
    assert len(ls) == len(parts)
    for (start, _raw, decoded), part in zip(ls, parts, strict=True):
        expected = part.get_payload(decode=True)
        assert isinstance(expected, bytes)
        # Python strips a trailing line break of the last part when the closing delimiter is
        # missing and normalizes nothing else; compare modulo trailing line breaks.
        assert decoded.rstrip(b"\r\n") == expected.rstrip(b"\r\n"), start.path


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(CORPUS)), cuts=st.lists(st.integers(min_value=1, max_value=20000), max_size=40))
def test_corpus_random_chunks(name: str, cuts: list[int]) -> None:
    data = CORPUS[name]
    assert normalize(feed(data, cuts)) == normalize(feed(data))


def test_outlook_structure_and_offsets() -> None:
    data = CORPUS["outlook_iso2022jp"]
    events = parse_all_ways(data)
    starts = {e.path: e for e in kinds(events, PartStart)}
    assert list(starts) == ["", "1", "1.1", "1.2", "2"]
    assert starts[""].kind == "multipart" and starts["1"].kind == "multipart"
    att = starts["2"]
    assert att.filename is not None and att.filename.decoded == JP_NAME
    assert [n.source for n in att.names] == ["filename", "name"]
    assert leaves(events)["2"][2] == PDF
    pre = kinds(events, Preamble)
    assert pre and b"multipart message" in pre[0].raw
    # the boundary events slice to real delimiter lines
    for b in kinds(events, Boundary):
        line = data[b.line_start : b.end].rstrip(b"\r\n")
        assert line.startswith(b"--") and (line.endswith(b"--") == b.closing)
    # QP decoding of the HTML part: soft line break joined, =3D decoded
    html = leaves(events)["1.2"][2]
    assert b'href="http://example.com/"' in html


def test_thunderbird_rfc822_inside_and_rlo() -> None:
    events = parse_all_ways(CORPUS["thunderbird_utf8_rfc822"])
    starts = {e.path: e for e in kinds(events, PartStart)}
    assert starts["3"].kind == "message"
    assert starts["3.1"].kind == "multipart"
    inner = starts["3.1.1"]
    assert inner.filename is not None and inner.filename.decoded == RLO_NAME
    assert leaves(events)["3.1.1"][2] == EXE
    assert starts["2"].filename is not None and starts["2"].filename.decoded == JP_NAME
    # no final CRLF: the closing delimiter ends at the end of input
    last_boundary = kinds(events, Boundary)[-1]
    assert last_boundary.closing and last_boundary.end == len(CORPUS["thunderbird_utf8_rfc822"])


def test_sjis_raw_part_without_filename_is_a_part() -> None:
    events = parse_all_ways(CORPUS["sjis_raw"])
    ls = leaves(events)
    nameless = ls["3"]
    assert nameless[0].names == () and nameless[0].filename is None
    assert nameless[2] == EXE
    assert ls["2"][0].filename is not None and ls["2"][0].filename.decoded == JP_NAME
    assert ls["4"][0].filename is not None and ls["4"][0].filename.charset == "euc-jp"
    assert ls["4"][2] == b"%PDF-1.4\r\n\xe2\xe3\xcf\xd3 softbreak"


# -- hand-made structure cases ---------------------------------------------------------------


def mp(body: bytes, boundary: bytes = b"b", extra: bytes = b"") -> bytes:
    return b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n' + extra + b"\r\n" + body


def test_preamble_epilogue_and_offsets() -> None:
    data = mp(b"pre\r\n--b\r\n\r\nbody\r\n--b--\r\nepi\r\nlogue\r\n")
    events = parse_all_ways(data)
    (pre,) = kinds(events, Preamble)
    (epi,) = kinds(events, Epilogue)
    assert pre.raw == b"pre"  # the CRLF before the delimiter belongs to the delimiter
    assert epi.raw == b"epi\r\nlogue\r\n"
    b1, b2 = kinds(events, Boundary)
    assert data[b1.offset : b1.end] == b"\r\n--b\r\n" and not b1.closing and b1.index == 1
    assert data[b2.offset : b2.end] == b"\r\n--b--\r\n" and b2.closing
    (end,) = [e for e in kinds(events, PartEnd) if e.path == "1"]
    assert data[: end.body_end].endswith(b"body")


def test_missing_final_boundary() -> None:
    data = mp(b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n")
    events = parse_all_ways(data)
    assert any(d.kind == "missing-close-delimiter" for d in kinds(events, Defect))
    assert leaves(events)["1"][1] == b"hello\r\n"
    assert [e.path for e in kinds(events, PartEnd)] == ["1", ""]


def test_outer_boundary_closes_inner_multipart() -> None:
    inner = b"--inner\r\n\r\nA\r\n--inner\r\n\r\nB\r\n"  # inner never closed
    data = mp(b"--outer\r\n" + mp(inner, b"inner") + b"--outer\r\n\r\nC\r\n--outer--\r\n", b"outer")
    events = parse_all_ways(data)
    ls = leaves(events)
    assert {p: v[1] for p, v in ls.items()} == {"1.1": b"A", "1.2": b"B", "2": b"C"}
    assert any(d.kind == "missing-close-delimiter" and d.path == "1" for d in kinds(events, Defect))


def test_boundary_lookalikes_are_data_and_reported() -> None:
    body = b"--b\r\n\r\nline\r\n--bX\r\n-- \r\n--b--junk\r\n--\r\n--b--\r\n"
    events = parse_all_ways(mp(body))
    assert leaves(events)["1"][1] == b"line\r\n--bX\r\n-- \r\n--b--junk\r\n--"
    near = [d for d in kinds(events, Defect) if d.kind == "near-delimiter"]
    assert len(near) == 2


def test_transport_padding_after_delimiter() -> None:
    events = parse_all_ways(mp(b"--b \t\r\n\r\nx\r\n--b-- \r\n"))
    assert leaves(events)["1"][1] == b"x"
    assert kinds(events, Boundary)[-1].closing


def test_bare_lf_and_bare_cr_line_breaks() -> None:
    data = b'Content-Type: multipart/mixed; boundary="b"\n\n--b\n\nx\n--b\r\rbare cr\r--b--\n'
    events = parse_all_ways(data)
    ls = leaves(events)
    assert ls["1"][1] == b"x" and ls["2"][1] == b"bare cr"
    assert {d.kind for d in kinds(events, Defect)} >= {"bare-lf", "bare-cr"}


def test_no_blank_line_after_headers_and_delimiter_in_headers() -> None:
    data = mp(b"--b\r\nContent-Type: text/plain\r\n--b\r\nnot a header\r\n--b--\r\n")
    events = parse_all_ways(data)
    ls = leaves(events)
    assert ls["1"][1] == b"" and ls["2"][1] == b"not a header"
    assert [d.kind for d in kinds(events, Defect)].count("headers-end-at-delimiter") == 1
    assert [d.kind for d in kinds(events, Defect)].count("missing-header-body-separator") == 1


def test_folded_and_8bit_headers() -> None:
    data = (
        b"Subject: =?ISO-2022-JP?B?GyRCJUYlOSVIGyhC?=\r\n\t=?ISO-2022-JP?B?GyRCJUYlOSVIGyhC?=\r\n"
        b"X-Raw: " + "生の８ビット".encode("cp932") + b"\r\nContent-Type: text/plain;\r\n charset=utf-8\r\n\r\nbody"
    )
    events = parse_all_ways(data)
    (start,) = kinds(events, PartStart)
    assert start.headers[0].value == b"=?ISO-2022-JP?B?GyRCJUYlOSVIGyhC?=\t=?ISO-2022-JP?B?GyRCJUYlOSVIGyhC?="
    assert start.headers[1].value == "生の８ビット".encode("cp932")
    assert start.content_type.mime_type == "text/plain"
    assert start.content_type.params[0].value == b"utf-8"


def test_header_name_with_space_before_colon_is_still_a_header() -> None:
    data = b"Content-Type : multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n"
    events = parse_all_ways(data)
    assert kinds(events, PartStart)[0].kind == "multipart"
    assert any(d.kind == "header-name-whitespace" for d in kinds(events, Defect))


def test_message_without_headers_and_empty_input() -> None:
    assert [type(e) for e in normalize(feed(b""))] == [PartStart, PartEnd, MessageEnd]
    events = parse_all_ways(b"\r\njust a body")
    assert leaves(events)[""][1] == b"just a body"


def test_multipart_without_boundary_is_a_leaf() -> None:
    events = parse_all_ways(b"Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\ny\r\n")
    assert kinds(events, PartStart)[0].kind == "leaf"
    assert any(d.kind == "multipart-without-boundary" for d in kinds(events, Defect))


def test_digest_children_default_to_message_rfc822() -> None:
    data = b'Content-Type: multipart/digest; boundary="d"\r\n\r\n--d\r\n\r\nSubject: inner\r\n\r\nhi\r\n--d--\r\n'
    events = parse_all_ways(data)
    starts = {e.path: e for e in kinds(events, PartStart)}
    assert starts["1"].kind == "message" and starts["1.1"].headers[0].name == "Subject"
    assert leaves(events)["1.1"][1] == b"hi"


def test_encoded_message_rfc822_is_an_opaque_leaf() -> None:
    inner = base64.b64encode(b"Subject: x\r\n\r\nhidden")
    data = mp(
        b"--b\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n" + inner + b"\r\n--b--"
    )
    events = parse_all_ways(data)
    assert leaves(events)["1"][2] == b"Subject: x\r\n\r\nhidden"
    assert any(d.kind == "encoded-message" for d in kinds(events, Defect))


# -- transfer encodings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "decoded", "defect"),
    [
        (b64_body(PDF, 76), PDF, None),
        (b64_body(PDF, 13), PDF, None),  # odd line lengths
        (base64.b64encode(PDF).replace(b"A", b"A \t"), PDF, None),  # whitespace inside
        (base64.b64encode(b"ab").rstrip(b"="), b"ab", "base64-missing-padding"),
        (base64.b64encode(b"abcd").rstrip(b"=") + b"\r\n", b"abcd", "base64-missing-padding"),
        (base64.b64encode(b"abc") + b"*!\r\n", b"abc", "base64-invalid-char"),
        (base64.b64encode(b"a") + base64.b64encode(b"MZ"), b"aMZ", "base64-data-after-padding"),
        (b"QUJD\r\nR", b"ABC", "base64-truncated"),
    ],
)
def test_base64_variants(body: bytes, decoded: bytes, defect: str | None) -> None:
    data = b"Content-Transfer-Encoding: base64\r\n\r\n" + body
    events = parse_all_ways(data)
    assert leaves(events)[""][2] == decoded
    found = {d.kind for d in kinds(events, Defect)}
    assert (defect in found) if defect else not found


@pytest.mark.parametrize(
    ("body", "decoded"),
    [
        (b"caf=C3=A9 =3D x", "café = x".encode()),
        (b"soft=\r\nbreak\r\nhard  \r\nend", b"softbreak\r\nhard\r\nend"),
        (b"lower =c3=a9", "lower é".encode()),
        (b"bad =ZZ and =\r\n", b"bad =ZZ and "),
        (b"soft with space= \t\r\nnext", b"soft with spacenext"),
        (b"trailing=", b"trailing"),
    ],
)
def test_quoted_printable(body: bytes, decoded: bytes) -> None:
    events = parse_all_ways(b"Content-Transfer-Encoding: Quoted-Printable\r\n\r\n" + body)
    assert leaves(events)[""][2] == decoded


def test_unknown_transfer_encoding_is_identity_and_reported() -> None:
    events = parse_all_ways(b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 a.exe\r\n")
    assert leaves(events)[""][2] == b"begin 644 a.exe\r\n"
    assert any(d.kind == "unknown-transfer-encoding" for d in kinds(events, Defect))


def test_binary_part_without_line_breaks_streams() -> None:
    blob = bytes(range(256)).replace(b"\r", b"").replace(b"\n", b"") * 1000
    data = mp(b"--b\r\nContent-Transfer-Encoding: binary\r\n\r\n" + blob + b"\r\n--b--\r\n")
    p = MimeParser(Limits(max_line_length=100))
    out = p.feed(data[:-200])
    assert sum(len(e.raw) for e in out if isinstance(e, PartData)) > len(blob) - 300  # not held back
    out += p.feed(data[-200:]) + p.end()
    assert leaves(out)["1"][2] == blob


# -- limits ----------------------------------------------------------------------------------


def nested(depth: int) -> bytes:
    data = b"x\r\n"
    for i in range(depth):
        b = b"n%d" % i
        data = mp(b"--" + b + b"\r\n" + data + b"\r\n--" + b + b"--\r\n", b)
    return data


@pytest.mark.parametrize(
    ("data", "limits", "limit"),
    [
        (nested(30), Limits(), "max_depth"),
        (nested(5), Limits(max_depth=4), "max_depth"),
        (mp(b"--b\r\n\r\n" * 20), Limits(max_parts=10), "max_parts"),
        (b"X: " + b"a" * 10000 + b"\r\n\r\n", Limits(), "max_line_length"),
        ((b"X: " + b"a" * 1000 + b"\r\n") * 100 + b"\r\n", Limits(), "max_header_size"),
        (b"X: a\r\n" * 100 + b"\r\n", Limits(max_headers=50), "max_headers"),
        (b"\r\n" + b"x" * 5000, Limits(max_total_size=4096), "max_total_size"),
        (b"\r\n" + b"x" * 5000, Limits(max_body_line_length=1000), "max_body_line_length"),
        (mp(b"--" + b"b" * 300 + b"--\r\n", b"b" * 300), Limits(), "max_boundary_length"),
        (mp(b"--b" + b" " * 10000 + b"\r\n", b"b"), Limits(), "max_line_length"),
    ],
)
def test_limits(data: bytes, limits: Limits, limit: str) -> None:
    for events in (feed(data, limits=limits), bytewise(data, limits)):
        hit = kinds(events, LimitExceeded)
        assert [h.limit for h in hit] == [limit]
        assert events[-1] is hit[0]  # nothing after the limit, not even MessageEnd
        check_invariants(data, events)
    assert normalize(feed(data, limits=limits)) == normalize(bytewise(data, limits))


def test_after_limit_feed_is_ignored_and_end_is_empty() -> None:
    p = MimeParser(Limits(max_total_size=10))
    assert isinstance(p.feed(b"\r\n" + b"x" * 20)[-1], LimitExceeded)
    assert p.failed
    assert p.feed(b"more") == []
    assert p.end() == []


def test_usage_errors() -> None:
    p = MimeParser()
    p.end()
    with pytest.raises(MimeUsageError):
        p.feed(b"x")
    with pytest.raises(MimeUsageError):
        p.end()


# -- helper ----------------------------------------------------------------------------------


def test_head_collector() -> None:
    data = CORPUS["email_mixed_alt_rfc822"]
    hc = HeadCollector(16)
    ready: list[str] = []
    p = MimeParser()
    for i in range(0, len(data), 7):
        for e in p.feed(data[i : i + 7]):
            r = hc.add(e)
            if r:
                ready.append(r)
    for e in p.end():
        r = hc.add(e)
        if r:
            ready.append(r)
    assert hc.head("2") == PDF[:16]
    assert hc.head("3") == EXE[:16]
    assert hc.head("4.1.2") == EXE[:16]
    assert hc.head("1.1") == "本文です。\r\n".encode()[:16]
    assert sorted(ready) == sorted(set(ready))  # each path reported once
    assert set(ready) == {"1.1", "1.2", "2", "3", "4.1.1", "4.1.2"}
    assert hc.pop("2") == PDF[:16] and hc.head("2") == b""


def test_event_order_is_by_offset() -> None:
    for data in CORPUS.values():
        offs = []
        for e in normalize(feed(data)):
            if isinstance(e, PartStart):
                offs.append(e.header_start)
            elif isinstance(e, PartData | Boundary | Preamble | Epilogue) and (not isinstance(e, PartData) or e.raw):
                offs.append(e.offset)
        assert offs == sorted(offs)
