"""Fuzzing the classifier (hypothesis, bounded to a few seconds): random and mutated corpus samples
never make it raise, every answer is well formed, a reader never fails internally, and a dangerous
sample stays removed when only its name or trailing bytes change."""

from __future__ import annotations

import corpus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.sanitize import CATEGORIES, Classification, Classifier, MailProfile

CLF = Classifier(MailProfile(kind="smtp", head_bytes=512, archive_max_total_bytes=8 << 20))
SEEDS = [s for s in corpus.SAMPLES if s.key not in ("ratio_bomb", "iso", "iso_as_zip")]  # keep examples small
DATA = {s.key: s.data for s in SEEDS}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


def check(c: Classification | None) -> None:
    if c is None:
        return
    assert c.category in CATEGORIES
    assert c.verdict in ("pass", "remove")
    assert (c.verdict == "pass") == (c.action == "pass")
    assert all(f.category in CATEGORIES for f in c.findings)
    assert not any(f.reason.startswith("inspection failed") for f in c.findings), c.reason


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(DATA[draw(st.sampled_from(sorted(DATA)))])
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "splice", "zero"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "zero":
            data[pos : pos + draw(st.integers(1, 64))] = b"\0" * 8
        else:
            other = DATA[draw(st.sampled_from(sorted(DATA)))]
            data[pos:] = other[draw(st.integers(0, max(0, len(other) - 1))) :]
    return bytes(data)


NAMES = st.one_of(
    st.just(""),
    st.sampled_from(["a.pdf", "資料.zip", "x.exe", "報告\u202etxt.exe", "book.xlsm", "a.txt", "図面.jww"]),
    st.text(max_size=40),
)
DECLARED = st.sampled_from(["", "application/octet-stream", "application/pdf", "text/html", "image/png", "text/plain"])


@FUZZ
@given(data=mutated(), name=NAMES, declared=DECLARED)
def test_mutated_samples_never_raise(data: bytes, name: str, declared: str) -> None:
    names = [name] if name else []
    check(CLF.classify_full(data, names, declared))
    check(CLF.classify_head(data[:512], names, declared))


@FUZZ
@given(data=st.binary(max_size=4096), name=NAMES)
def test_random_bytes_never_raise(data: bytes, name: str) -> None:
    check(CLF.classify_full(data, [name] if name else [], "application/octet-stream"))
    check(CLF.classify_head(data, [name] if name else [], "application/octet-stream"))


DANGEROUS = [  # dangerous by content, not by name
    s
    for s in SEEDS
    if s.category in ("executable", "macro_office", "pdf_active")
    and CLF.classify_full(s.data, [], "").verdict == "remove"
]


@settings(max_examples=100, deadline=None, database=None)
@given(
    key=st.sampled_from([s.key for s in DANGEROUS]),
    name=st.sampled_from(["a.pdf", "a.txt", "photo.jpg", "資料.docx", ""]),
    tail=st.binary(max_size=64),
)
def test_dangerous_samples_stay_removed_under_any_name(key: str, name: str, tail: bytes) -> None:
    sample = corpus.SAMPLES_BY_KEY[key]
    data = DATA[key]
    if sample.category != "pdf_active":
        data += tail  # trailing junk: most readers ignore it, so must we
    c = CLF.classify_full(data, [name] if name else [], "application/octet-stream")
    assert c.verdict == "remove", (key, name, c)
