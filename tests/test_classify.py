"""True-type classification: the corpus, head decisions, profiles, names (tests/corpus.py builds
every sample in code)."""

from __future__ import annotations

import random
import textwrap

import corpus
import pytest
from corpus import SAMPLES, Sample
from pydantic import ValidationError

from gateway.policy import ConfigError, load_policy_text
from gateway.sanitize import CATEGORIES, Classification, Classifier, MailProfile
from gateway.sanitize.profile import DEFAULT_ALLOWED


def profile(**kw: object) -> MailProfile:
    return MailProfile.model_validate({"kind": "smtp", **kw})


CLF = Classifier(profile())
BIG_PNG = corpus.png(64, 64) + b"\0" * 1024  # viewers ignore bytes after IEND; longer than a head


def full(
    data: bytes, name: str = "file.bin", declared: str = "application/octet-stream", clf: Classifier = CLF
) -> Classification:
    return clf.classify_full(data, [name] if name else [], declared)


# -- the corpus ----------------------------------------------------------------------------------


@pytest.mark.parametrize("s", SAMPLES, ids=[s.key for s in SAMPLES])
def test_corpus_sample_classified_by_true_type(s: Sample) -> None:
    c = CLF.classify_full(s.data, [s.filename], s.declared)
    assert (c.category, c.verdict) == (s.category, s.verdict), c
    assert c.category in CATEGORIES
    assert all(f.category in CATEGORIES for f in c.findings)
    assert "inspection failed" not in c.reason  # a reader bug would show here
    if c.verdict == "pass":
        assert c.action == "pass"
    else:
        assert c.action == ("refuse" if c.category == "limit" else "neutralize")
        assert c.reason


@pytest.mark.parametrize("s", SAMPLES, ids=[s.key for s in SAMPLES])
def test_head_verdict_never_differs_from_full_verdict(s: Sample) -> None:
    """classify_head may decide early; when it does, the whole part must get the same verdict."""
    clf = Classifier(profile(head_bytes=512))
    data = s.data
    head = clf.classify_head(data[:512], [s.filename], s.declared)
    whole = clf.classify_full(data, [s.filename], s.declared)
    if head is not None:
        assert head.verdict == whole.verdict, (head, whole)
        if head.verdict == "pass":
            assert head.category == whole.category


def test_head_decides_executables_images_and_names_but_waits_for_containers() -> None:
    clf = Classifier(profile(head_bytes=512))
    exe = corpus.pe_exe() + b"\0" * 4096
    c = clf.classify_head(exe[:512], ["setup.dat"], "application/octet-stream")
    assert c is not None and c.verdict == "remove" and c.category == "executable"
    c = clf.classify_head(BIG_PNG[:512], ["map.png"], "image/png")
    assert c is not None and c.verdict == "pass" and c.category == "image"
    c = clf.classify_head(corpus.clean_pdf().ljust(600, b"\n")[:512], ["a.pdf.exe"], "application/pdf")
    assert c is not None and c.verdict == "remove"  # by name alone
    big_zip = corpus.zip_of({"a.txt": bytes(range(256)) * 64}, compress=False)
    assert clf.classify_head(big_zip[:512], ["a.zip"], "application/zip") is None
    assert clf.classify_head(corpus.clean_pdf().ljust(600, b"\n")[:512], ["a.pdf"], "application/pdf") is None
    # a short part: the head is the whole part, so the full verdict comes at once
    c = clf.classify_head(corpus.docm(), ["a.docm"], "application/octet-stream")
    assert c is not None and c.category == "macro_office"


def test_head_waits_for_text_that_may_continue() -> None:
    clf = Classifier(profile(head_bytes=512))
    text = b"hello world\n" * 100
    assert clf.classify_head(text[:512], ["a.txt"], "text/plain") is None
    assert full(text, "a.txt", "text/plain", clf).verdict == "pass"


def test_scanners_disable_head_passes() -> None:
    clf = Classifier(profile(head_bytes=512, clamd_socket="/nonexistent/clamd.sock"))
    assert clf.classify_head(BIG_PNG[:512], ["map.png"], "image/png") is None


def test_reasons_name_the_member_path_and_description() -> None:
    c = full(corpus.zip_of({"setup.exe": corpus.pe_exe()}), "invoice.zip")
    assert c.verdict == "remove"
    assert any(f.category == "executable" and "invoice.zip/setup.exe" in f.reason for f in c.findings)
    assert c.true_type == "application/zip"
    assert c.description.startswith("Zip archive")


def test_true_type_never_taken_from_name_or_declared_type() -> None:
    c = full(corpus.pe_exe(), "report.pdf", "application/pdf")
    assert c.category == "executable"
    assert c.true_type in ("application/vnd.microsoft.portable-executable", "application/x-dosexec")
    c = full(corpus.clean_pdf(), "setup.pdf", "application/x-msdownload")
    assert c.verdict == "remove"  # a client may act on the declared type
    assert any("declared as application/x-msdownload" in f.reason for f in c.findings)


def test_declared_type_mismatch_is_a_name_trick() -> None:
    c = full(corpus.clean_pdf(), "photo", "image/jpeg")
    assert c.category == "name_trick"
    assert "declared image/jpeg" in c.reason
    assert full(corpus.png(), "photo", "image/jpeg").verdict == "pass"  # image as another image: harmless


def test_declared_html_is_removed_even_when_bytes_look_plain() -> None:
    c = full(b"just some words <b>bold</b>\n", "", "text/html")
    assert c.category == "html"


# -- names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "category"),
    [
        ("請求書.pdf\u3000\u3000\u3000.exe", "executable"),
        ("invoice\u202etxt.exe", "executable"),
        ("report\u202efdp.txt", "name_trick"),
        ("report\u200b.txt", "name_trick"),
        ("a" * 256 + ".txt", "name_trick"),
        ("readme.txt.", "name_trick"),
        ("..\\..\\startup.txt", "name_trick"),
        ("run.ps1", "script"),
        ("page.hta", "script"),
        ("disk.iso", "disk_image"),
        ("book.xlsm", "macro_office"),
        ("note.svg", "html"),
        ("注意事項.txt", None),
        ("ＲＥＡＤＭＥ.txt", None),
    ],
)
def test_name_tricks_on_plain_text(name: str, category: str | None) -> None:
    c = full(b"hello\r\n", name, "text/plain")
    if category is None:
        assert c.verdict == "pass", c
    else:
        assert c.verdict == "remove" and c.category == category, c
        assert "\u202e" not in c.reason and "\u200b" not in c.reason  # spelled out, never applied


def test_max_name_bytes_follows_the_profile() -> None:
    name = "資料" * 30 + ".txt"  # 184 UTF-8 bytes
    assert full(b"x\n", name, "text/plain").verdict == "pass"
    assert full(b"x\n", name, "text/plain", Classifier(profile(max_name_bytes=100))).category == "name_trick"


def test_every_decoded_name_is_checked() -> None:
    c = CLF.classify_full(b"hello\n", ["readme.txt", "readme.txt.exe"], "text/plain")
    assert c.category == "executable"


def test_extension_mixups_within_a_family_are_tolerated_across_families_not() -> None:
    assert full(corpus.png(), "photo.jpg", "image/jpeg").verdict == "pass"
    assert full(corpus.docx(), "old.doc").verdict == "pass"
    assert full(b"plain\n", "README", "text/plain").verdict == "pass"  # no extension: nothing opens it
    assert full(corpus.clean_pdf(), "report.txt").category == "name_trick"
    assert full(corpus.png(), "photo.pdf").category == "name_trick"


# -- Japanese names inside archives ---------------------------------------------------------------


def test_cp932_member_names_without_utf8_flag_are_decoded() -> None:
    c = full(corpus.zip_cp932({"見積書.pdf.exe": corpus.clean_pdf()}), "見積.zip")
    assert c.verdict == "remove"
    assert any("見積書.pdf.exe" in f.reason for f in c.findings)
    assert any(f.category == "executable" and "dangerous extension .exe" in f.reason for f in c.findings)
    c = full(corpus.zip_cp932({"資料/議事録①.txt": b"ok\n"}), "資料.zip")
    assert c.verdict == "pass", c


def test_utf8_flagged_and_unicode_path_extra_names_are_all_checked() -> None:
    c = full(corpus.zip_utf8({"報告書\u202etxt.exe": b"x"}), "a.zip")
    assert c.verdict == "remove" and "<U+202E>" in c.reason
    # Info-ZIP Unicode Path extra field: an extractor shows this name instead of the raw one
    import zlib

    raw = b"report.txt"
    alt = b"report.txt.exe"
    extra = b"\x75\x70" + (5 + len(alt)).to_bytes(2, "little") + b"\x01" + zlib.crc32(raw).to_bytes(4, "little") + alt
    data = corpus.raw_zip([corpus.ZipEntry(raw, b"hello\n", extra=extra)])
    c = full(data, "a.zip")
    assert c.verdict == "remove" and c.category == "executable"


# -- profiles ---------------------------------------------------------------------------------------


def test_defaults_follow_the_domain_table() -> None:
    p = profile()
    assert tuple(p.allowed_types) == DEFAULT_ALLOWED
    assert (p.action, p.archive_max_depth, p.archive_max_ratio, p.head_bytes) == ("neutralize", 3, 100, 4096)
    assert p.action_for("limit") == "refuse" and p.action_for("executable") == "neutralize"


def test_allowlist_by_mime_type_admits_the_clean_type_only() -> None:
    clf = Classifier(profile(allowed_types=["application/pdf", "image/*"]))
    assert full(corpus.clean_pdf(), "a.pdf", clf=clf).verdict == "pass"
    assert full(corpus.png(), "a.png", clf=clf).verdict == "pass"
    assert full(corpus.pdf_javascript(), "a.pdf", clf=clf).category == "pdf_active"
    assert full(corpus.SVG_SCRIPT, "a.svg", clf=clf).category == "html"  # image/* is no way in for SVG
    c = full(corpus.docx(), "a.docx", clf=clf)
    assert c.verdict == "remove" and c.category == "office"
    c = full(corpus.zip_of({"a.pdf": corpus.clean_pdf()}), "a.zip", clf=clf)
    assert c.verdict == "remove" and c.category == "archive"  # the archive itself is not allowed


def test_archive_members_must_be_allowed_too() -> None:
    clf = Classifier(profile(allowed_types=["archive", "pdf"]))
    assert full(corpus.zip_of({"a.pdf": corpus.clean_pdf()}), "a.zip", clf=clf).verdict == "pass"
    c = full(corpus.zip_of({"a.pdf": corpus.clean_pdf(), "b.png": corpus.png()}), "a.zip", clf=clf)
    assert c.verdict == "remove" and c.category == "image" and "a.zip/b.png" in c.reason


def test_allowing_an_active_category_is_the_operators_choice() -> None:
    clf = Classifier(profile(allowed_types=[*DEFAULT_ALLOWED, "html"]))
    c = full(corpus.HTML, "page.html", "text/html", clf)
    assert c.verdict == "pass" and c.category == "html"


def test_actions_per_category_and_limit_refuses_by_default() -> None:
    clf = Classifier(profile(action="refuse", actions={"encrypted": "neutralize"}))
    assert full(corpus.pe_exe(), "a.exe", clf=clf).action == "refuse"
    assert full(corpus.ppap_zip(), "a.zip", clf=clf).action == "neutralize"
    assert full(corpus.nested_zip(6), "a.zip").action == "refuse"
    clf = Classifier(profile(actions={"limit": "neutralize"}))
    assert full(corpus.nested_zip(6), "a.zip", clf=clf).action == "neutralize"
    # the strictest action wins when several categories are removed
    clf = Classifier(profile(actions={"executable": "refuse"}))
    data = corpus.zip_of({"a.exe": corpus.pe_exe(), "b.zip": corpus.ppap_zip()})
    assert full(data, "a.zip", clf=clf).action == "refuse"


def test_attachments_remove_removes_everything() -> None:
    clf = Classifier(profile(attachments="remove"))
    c = full(corpus.png(), "a.png", clf=clf)
    assert c.verdict == "remove" and c.category == "image" and "attachments" in c.reason


def test_attachments_remove_keeps_the_message_text_but_still_checks_its_true_type() -> None:
    clf = Classifier(profile(attachments="remove"))
    text = "本文です。\r\n".encode()
    assert clf.classify_full(text, [], "text/plain", body=True).verdict == "pass"
    assert clf.classify_full(text, [], "text/plain").verdict == "remove"  # the same bytes as an attachment
    assert clf.classify_full(corpus.pe_exe(), [], "text/plain", body=True).verdict == "remove"
    # a short body is classified whole by classify_head (shorter than head_bytes): same answer
    assert clf.classify_head(text, [], "text/plain", body=True) == clf.classify_full(text, [], "text/plain", body=True)
    assert clf.classify_head(text, [], "text/plain").verdict == "remove"


def test_an_html_message_text_is_kept_for_conversion_not_removed() -> None:
    html = b"<html><body><p>hello <a href='http://x'>x</a></p><script>alert(1)</script></body></html>\r\n"
    for attachments in ("remove", "inspect"):
        clf = Classifier(profile(attachments=attachments))
        assert clf.classify_full(html, [], "text/html", body=True).verdict == "pass"  # html_to_text converts it
        assert clf.classify_full(html, [], "text/html").verdict == "remove"  # as an attachment it goes
        assert clf.classify_full(corpus.pe_exe(), [], "text/html", body=True).verdict == "remove"
    clf = Classifier(profile(html_to_text=False))
    assert clf.classify_full(html, [], "text/html", body=True).verdict == "remove"  # nothing would convert it


def test_too_large_part() -> None:
    clf = Classifier(profile(max_part_bytes=1000))
    c = full(b"x" * 1001, "a.txt", "text/plain", clf)
    assert (c.category, c.verdict, c.action) == ("too_large", "remove", "refuse")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"allowed_types": ["limit"]}, "can never be allowed"),
        ({"allowed_types": ["executables"]}, "neither a category"),
        ({"allowed_types": ["Image/PNG"]}, "neither a category"),
        ({"actions": {"exe": "refuse"}}, "unknown category"),
        ({"action": "drop"}, "literal_error"),
        ({"archive_max_ratio": 0}, "greater_than_equal"),
        ({"max_message_bytes": "25M"}, "int_type"),
        ({"html": "strip"}, "html must be one of"),
        ({"html": "to_text", "html_to_text": False}, "not both"),
        ({"max_message_mb": 0}, "max_message_mb"),
        ({"attachmnets": "remove"}, "extra_forbidden"),
    ],
)
def test_profile_validation(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        profile(**settings)
    text = str(exc.value) + " ".join(e["type"] for e in exc.value.errors())
    assert message in text


def test_example_config_short_forms() -> None:
    p = profile(attachments="remove", html="to_text", links="keep", max_message_mb=30, original_retention_days=14)
    assert (p.html_to_text, p.defang_links, p.max_message_bytes) == (True, False, 30 << 20)
    assert p.settings["attachments"] == "remove" and "kind" not in p.settings
    assert MailProfile.model_validate({"kind": "smtp", **p.settings}) == p  # the snapshot round-trips


POLICY = """\
[gateway]
name = "t"

[[zones]]
name = "lgwan"
tier = "lgwan"
networks = ["198.18.20.0/24"]

[[zones]]
name = "internet"
tier = "internet"
networks = ["198.19.40.0/24"]

[[rules]]
id = "mail-in"
from = "internet"
to = "lgwan"
proto = "tcp"
dst_ports = [25]
action = "inspect"
profile = "mail"

[profiles.mail]
kind = "smtp"
allowed_types = ["pdf", "executables"]
archive_max_depth = "3"
"""


def test_profile_errors_point_at_file_and_line() -> None:
    with pytest.raises(ConfigError) as exc:
        load_policy_text(POLICY, "t.toml")
    issues = exc.value.errors
    lines = POLICY.splitlines()
    by_line = {i.line: i.message for i in issues}
    assert lines.index('allowed_types = ["pdf", "executables"]') + 1 in by_line
    assert lines.index('archive_max_depth = "3"') + 1 in by_line
    assert all(i.file == "t.toml" for i in issues)


def test_valid_profile_loads_into_the_policy() -> None:
    text = POLICY.replace('allowed_types = ["pdf", "executables"]\narchive_max_depth = "3"\n', "")
    text += textwrap.dedent("""\
        allowed_types = ["pdf", "image/png"]
        actions = { encrypted = "refuse" }
    """)
    loaded = load_policy_text(text, "t.toml")
    settings = loaded.compiled.extra["profiles"]["mail"]  # type: ignore[index]
    assert settings["allowed_types"] == ["pdf", "image/png"]
    assert settings["actions"] == {"encrypted": "refuse"}


def test_names_may_be_the_mime_parsers_decoded_names() -> None:
    from gateway.mime import DecodedName

    name = DecodedName("filename*", b"UTF-8''%E8%AB%8B%E6%B1%82%E6%9B%B8.pdf.exe", "請求書.pdf.exe", "utf-8")
    c = CLF.classify_full(corpus.clean_pdf(), [name], "application/pdf")
    assert c.category == "executable" and "請求書.pdf.exe" in c.reason
    assert CLF.classify_head(corpus.clean_pdf(), [name], "application/pdf") == c


def test_attachments_remove_decides_an_attachment_at_its_head() -> None:
    """A clean type that would otherwise need the whole part (PDF, archive, or an image the
    profile does not let pass at the head) is removed from its head: the inspector neutralizes
    it as it streams instead of holding it and refusing the message as decided too late."""
    clf = Classifier(profile(attachments="remove"))
    png = corpus.png(64, 64) + b"\0" * 8192
    for data, name in ((png, "a.png"), (corpus.zip_of({"a.bin": random.Random(1).randbytes(9000)}), "a.zip")):
        assert len(data) > 4096
        c = clf.classify_head(data[:4096], [name], "application/octet-stream")
        assert c is not None and (c.verdict, c.action) == ("remove", "neutralize"), c
    # the message text is not an attachment: still decided the usual way
    assert clf.classify_head(b"text " * 2000, [], "text/plain", body=True) is None
    # a profile that refuses some category needs the whole part to know which action applies
    strict = Classifier(profile(attachments="remove", actions={"macro_office": "refuse"}))
    assert strict.classify_head(png[:4096], ["a.png"], "image/png") is None
