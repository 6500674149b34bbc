"""Format readers of the classifier: archive limits (bombs), zip/tar tricks, PDF lexing traps,
Office macros/encryption/embedding variants."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
import zlib

import corpus
import pytest

from gateway.sanitize import Classification, Classifier, MailProfile
from gateway.sanitize import pdf as pdfmod


def classify(data: bytes, name: str = "file.bin", **settings: object) -> Classification:
    clf = Classifier(MailProfile.model_validate({"kind": "smtp", **settings}))
    return clf.classify_full(data, [name], "application/octet-stream")


def reasons(c: Classification) -> str:
    return " | ".join(f"{f.category}: {f.reason}" for f in c.findings)


# -- archive limits -----------------------------------------------------------------------------


def test_depth_limit() -> None:
    assert classify(corpus.nested_zip(3), "a.zip").verdict == "pass"
    c = classify(corpus.nested_zip(4), "a.zip")
    assert (c.category, c.action) == ("limit", "refuse") and "archive_max_depth=3" in c.reason
    assert classify(corpus.nested_zip(1), "a.zip", archive_max_depth=1).verdict == "pass"
    assert classify(corpus.nested_zip(2), "a.zip", archive_max_depth=1).category == "limit"
    assert classify(corpus.nested_zip(1), "a.zip", archive_max_depth=0).category == "limit"


def test_ratio_limit() -> None:
    c = classify(corpus.ratio_bomb(), "bomb.zip")
    assert c.category == "limit" and "archive_max_ratio" in c.reason
    c = classify(corpus.ratio_bomb(), "bomb.zip", archive_max_ratio=5000)
    assert c.category != "limit"  # within the ratio it is just data (not an allowed type)


def test_small_compressible_members_are_not_bombs() -> None:
    data = corpus.zip_of({"log.txt": b"same line again\n" * 20000})  # 320 KB at ~300:1
    assert classify(data, "logs.zip").verdict == "pass"


def test_total_bytes_limit() -> None:
    noise = bytes((i * 7919 + 13) % 251 for i in range(800))
    data = corpus.zip_of({"a.txt": noise.hex().encode()[:800], "b.txt": noise.hex().encode()[800:1600]})
    assert classify(data, "a.zip", archive_max_total_bytes=2000).verdict == "pass"
    c = classify(data, "a.zip", archive_max_total_bytes=1000)
    assert c.category == "limit" and "archive_max_total_bytes" in c.reason


def test_declared_size_over_budget_stops_before_reading() -> None:
    c = classify(corpus.ratio_bomb(), "bomb.zip", archive_max_total_bytes=1 << 20, archive_max_ratio=100000)
    assert c.category == "limit" and "archive_max_total_bytes" in c.reason


def test_member_count_limit() -> None:
    data = corpus.zip_of({f"{i}.txt": b"x\n" for i in range(11)})
    assert classify(data, "a.zip", archive_max_members=11).verdict == "pass"
    c = classify(data, "a.zip", archive_max_members=10)
    assert c.category == "limit" and "archive_max_members" in c.reason


def test_overlapping_entries_bomb() -> None:
    c = classify(corpus.overlap_bomb(), "bomb.zip")
    assert c.category == "limit" and "overlapping" in c.reason


def test_local_file_hidden_from_the_central_directory() -> None:
    hidden = corpus.raw_zip([corpus.ZipEntry(b"evil.exe", corpus.pe_exe())])
    local_only = hidden[: hidden.index(b"PK\x01\x02")]
    c = classify(local_only + corpus.zip_of({"a.txt": b"hi\n"}), "a.zip")
    assert c.verdict == "remove" and "central directory does not list" in reasons(c)


@pytest.mark.parametrize(
    ("builder", "kind"),
    [
        (lambda d: corpus.gzip_of(d, "zeros.bin"), "gzip"),
        (corpus.bzip2_of, "bzip2"),
        (corpus.xz_of, "xz"),
    ],
)
def test_single_stream_bombs(builder: object, kind: str) -> None:
    data = builder(b"\0" * (32 << 20))  # type: ignore[operator]
    assert len(data) < 100_000
    c = classify(data, f"zeros.{kind}")
    assert c.category == "limit", c


def test_gzip_multi_member_and_name() -> None:
    data = corpus.gzip_of(b"hello ", "a.txt") + corpus.gzip_of(b"world\n", "a.txt")
    assert classify(data, "a.txt.gz").verdict == "pass"
    c = classify(corpus.gzip_of(corpus.pe_exe(), "setup.exe"), "archive.gz")
    assert c.category == "executable" and "archive.gz/setup.exe" in reasons(c)


def test_truncated_and_corrupt_archives_cannot_be_inspected() -> None:
    for data, name in (
        (corpus.gzip_of(b"hello\n" * 1000)[:-30], "a.gz"),
        (corpus.zip_of({"a.txt": b"hello\n" * 1000})[:-40], "a.zip"),
        (corpus.ppap_zip()[:100], "a.zip"),
    ):
        c = classify(data, name)
        assert c.verdict == "remove" and c.category in ("encrypted", "other"), (name, c)


def test_tar_gz_is_one_layer() -> None:
    data = corpus.tar_of({"a.txt": b"x\n"}, "gz")
    assert classify(data, "a.tar.gz", archive_max_depth=1).verdict == "pass"


def test_tar_links_traversal_and_huge_members() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        link = tarfile.TarInfo("startup.lnk")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        t.addfile(link)
        evil = tarfile.TarInfo("../../home/user/.bashrc")
        evil.size = 3
        t.addfile(evil, io.BytesIO(b"x\n\n"))
    c = classify(buf.getvalue(), "a.tar")
    assert "link member" in reasons(c) and "path traversal" in reasons(c)
    big = corpus.tar_of({"big.txt": b"a" * 5000})
    c = classify(big, "a.tar", archive_max_total_bytes=4000)
    assert c.category == "limit"


def test_zip_symlink_duplicates_and_traversal() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16) | 0
        z.writestr(info, "/etc/passwd")
        z.writestr("../x.txt", "x")
        z.writestr("dup.txt", "1")
    data = buf.getvalue()
    dup = corpus.raw_zip([corpus.ZipEntry(b"dup.txt", b"1"), corpus.ZipEntry(b"DUP.txt", b"2")])
    c = classify(data, "a.zip")
    assert "symbolic link" in reasons(c) and "path traversal" in reasons(c)
    assert "duplicate member name" in reasons(classify(dup, "a.zip"))


def test_zip_methods_without_a_bounded_reader_are_uninspectable() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_BZIP2) as z:
        z.writestr("a.txt", "hello\n")
    c = classify(buf.getvalue(), "a.zip")
    assert c.category == "encrypted" and "method 12" in c.reason


def test_ppap_reasons_say_zipcrypto_or_aes() -> None:
    assert "ZipCrypto" in classify(corpus.ppap_zip(), "a.zip").reason
    assert "AES" in classify(corpus.aes_zip({"a.txt": b"x"}), "a.zip").reason
    hand = corpus.raw_zip([corpus.ZipEntry(b"a.txt", b"x", aes=True)])  # headers only, as some tools write
    assert classify(hand, "a.zip").category == "encrypted"


def test_lzh_rar_7z_are_removed_even_when_renamed() -> None:
    for data in (corpus.lzh(), corpus.rar(), corpus.seven_zip()):
        c = classify(data, "資料.zip")
        assert c.category == "encrypted" and "cannot be inspected" in c.reason


# -- PDF -----------------------------------------------------------------------------------------


def _objstm(body: bytes, filters: bytes, encoded: bytes) -> bytes:
    first = body.index(b"<<")
    return corpus.pdf_with(
        b"/OpenAction [3 0 R /Fit]",
        corpus._stream(b"/Type /ObjStm /N 1 /First %d /Filter %s" % (first, filters), encoded),
    )


JS_OBJ = b"7 0 << /S /JavaScript /JS (app.alert(1)) >>"


def test_pdf_object_stream_filter_chains() -> None:
    hexed = zlib.compress(JS_OBJ).hex().encode() + b">"
    c = classify(_objstm(JS_OBJ, b"[/AHx /Fl]", hexed), "a.pdf")
    assert c.category == "pdf_active"
    import base64

    a85 = base64.a85encode(JS_OBJ) + b"~>"
    assert classify(_objstm(JS_OBJ, b"/ASCII85Decode", a85), "a.pdf").category == "pdf_active"
    assert classify(_objstm(JS_OBJ, b"/LZWDecode", _lzw_encode(JS_OBJ)), "a.pdf").category == "pdf_active"
    rl = bytes((len(JS_OBJ) - 1,)) + JS_OBJ + b"\x80"
    assert classify(_objstm(JS_OBJ, b"/RunLengthDecode", rl), "a.pdf").category == "pdf_active"
    raw_deflate = zlib.compress(JS_OBJ)[2:-4]
    assert classify(_objstm(JS_OBJ, b"/FlateDecode", raw_deflate), "a.pdf").category == "pdf_active"
    assert classify(_objstm(JS_OBJ, b"/Fl#61teDecode", zlib.compress(JS_OBJ)), "a.pdf").category == "pdf_active"


def _lzw_encode(data: bytes) -> bytes:
    table = {bytes((i,)): i for i in range(256)}
    codes, width, w = [256], 9, b""
    out_bits: list[tuple[int, int]] = [(256, 9)]
    for byte in data:
        wc = w + bytes((byte,))
        if wc in table:
            w = wc
            continue
        codes.append(table[w])
        out_bits.append((table[w], width))
        table[wc] = len(table) + 2
        if len(table) + 2 >= (1 << width) - 1 and width < 12:
            width += 1
        w = bytes((byte,))
    out_bits += [(table[w], width), (257, width)]
    acc, nbits, out = 0, 0, bytearray()
    for code, bits in out_bits:
        acc = (acc << bits) | code
        nbits += bits
        while nbits >= 8:
            nbits -= 8
            out.append((acc >> nbits) & 0xFF)
    if nbits:
        out.append((acc << (8 - nbits)) & 0xFF)
    return bytes(out)


def test_pdf_object_streams_that_cannot_be_decoded_are_uninspectable() -> None:
    c = classify(_objstm(JS_OBJ, b"/DCTDecode", b"\xff\xd8junk"), "a.pdf")
    assert c.category == "encrypted" and "cannot be inspected" in c.reason
    pred = corpus.pdf_with(
        b"", corpus._stream(b"/Type /ObjStm /Filter /FlateDecode /DecodeParms << /Predictor 12 >>", b"x")
    )
    assert classify(pred, "a.pdf").category == "encrypted"


def test_pdf_lexer_traps() -> None:
    # "stream" inside a string must not make the scanner skip the names after it
    trap = corpus.pdf_with(b"/Info 5 0 R", b"<< /Title (>> stream\n) /S /JavaScript /JS (x) >>")
    assert classify(trap, "a.pdf").category == "pdf_active"
    # ...nor inside a comment
    trap = corpus.pdf_with(b"/Info 5 0 R", b"<< /Title (t) >>\n%>> stream\n<< /S /JavaScript /JS (x) >>")
    assert classify(trap, "a.pdf").category == "pdf_active"
    # names in comments, strings and content streams are not names a reader acts on
    quiet = corpus.pdf_with(b"% /JavaScript /OpenAction\n", b"<< /Title (/JS /Launch) >>")
    assert classify(quiet, "a.pdf").verdict == "pass"
    content = corpus.pdf_with(b"", corpus._stream(b"", b"q /JS Do Q /AA gs"))
    assert classify(content, "a.pdf").verdict == "pass"
    # a wrong /Length: the stream ends at endstream
    wrong = corpus.clean_pdf().replace(b"/Length 36", b"/Length 3")
    assert classify(wrong, "a.pdf").verdict == "pass"
    # junk before the header is accepted by readers, so it is scanned as a PDF
    assert classify(b"\x00" * 100 + corpus.pdf_javascript(), "a.pdf").category == "pdf_active"
    # nested parentheses and escapes in strings
    strings = corpus.pdf_with(b"/Info 5 0 R", b"<< /Title (a (b) \\) c) /AA << >> >>")
    assert classify(strings, "a.pdf").category == "pdf_active"


def test_pdf_openaction_destination_vs_action() -> None:
    assert classify(corpus.pdf_openaction_dest(), "a.pdf").verdict == "pass"
    goto = corpus.pdf_with(b"/OpenAction << /S /GoTo /D [3 0 R /Fit] >>")
    assert classify(goto, "a.pdf").category == "pdf_active"  # an action dictionary: removed (domain rule)


def test_pdf_token_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pdfmod, "MAX_TOKENS", 20)
    c = classify(corpus.clean_pdf(), "a.pdf")
    assert c.category == "limit" and "tokens" in c.reason


def test_pdf_large_clean_file_is_fast() -> None:
    import time

    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"]
    objs += [
        b"<< /Type /Annot /Subtype /Link /Rect [0 0 1 1] /A << /S /URI /URI (http://x/%d) >> >>" % i
        for i in range(20000)
    ]
    objs += [corpus._stream(b"/Filter /FlateDecode", bytes(range(256)) * 4096)]
    data = corpus.pdf(objs)
    t = time.perf_counter()
    assert classify(data, "big.pdf").verdict == "pass"
    assert time.perf_counter() - t < 5


# -- Office --------------------------------------------------------------------------------------


def test_corpus_vba_project_is_real_vba_for_oletools() -> None:
    """The docm's vbaProject.bin is a genuine MS-OVBA project: olevba decompresses its module."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from oletools.olevba import VBA_Parser  # type: ignore[import-untyped]

    for name, data in (("a.docm", corpus.docm()), ("a.doc", corpus.doc(macros=True))):
        vp = VBA_Parser(name, data=data)
        assert vp.detect_vba_macros()
        code = "".join(c for _, _, _, c in vp.extract_macros())
        assert "Sub AutoOpen()" in code and "Shell" in code
        vp.close()


def test_ppt_vba_and_encryption() -> None:
    vba = b"\x0f\x00\xff\x03" + struct.pack("<I", 20) + b"\x02\x00\x00\x04\x0c\x00\x00\x00" + b"\0" * 12
    ppt = corpus.cfb({"PowerPoint Document": b"\0" * 64 + vba + b"\0" * 64, "Current User": b"\0" * 32})
    c = classify(ppt, "a.ppt")
    assert c.category == "macro_office" and "PowerPoint" in c.reason
    enc = corpus.cfb({"PowerPoint Document": b"\0" * 64, "EncryptedSummary": b"\0" * 64})
    assert classify(enc, "a.ppt").category == "encrypted"
    assert classify(corpus.cfb({"PowerPoint Document": b"\0" * 64}), "a.ppt").verdict == "pass"


def test_excel_filepass_is_encrypted() -> None:
    bof = struct.pack("<HH", 0x0809, 16) + b"\0" * 16
    filepass = struct.pack("<HH", 0x002F, 4) + b"\1\0\1\0"
    wb = bof + filepass + struct.pack("<HH", 0x000A, 0)
    c = classify(corpus.cfb({"Workbook": wb.ljust(4096, b"\0")}), "a.xls")
    assert c.category == "encrypted" and "FILEPASS" in c.reason


def test_outlook_msg_attachments_are_classified() -> None:
    att = "__attach_version1.0_#00000000/"
    msg = corpus.cfb(
        {
            "__substg1.0_0037001F": "件名".encode("utf-16-le"),
            att + "__substg1.0_37010102": corpus.pe_exe(),
            att + "__substg1.0_3707001F": "請求書.pdf.exe".encode("utf-16-le"),
        }
    )
    c = classify(msg, "mail.msg")
    assert c.category == "executable" and "mail.msg/請求書.pdf.exe" in reasons(c)
    ok = corpus.cfb(
        {att + "__substg1.0_37010102": corpus.clean_pdf(), att + "__substg1.0_3707001F": "a.pdf".encode("utf-16-le")}
    )
    assert classify(ok, "mail.msg").verdict == "pass"


def test_ooxml_active_parts() -> None:
    activex = corpus.docx({"word/activeX/activeX1.bin": corpus.cfb({"contents": b"\0" * 64})})
    assert "ActiveX" in classify(activex, "a.docx").reason
    dde = corpus.docx(
        {
            "word/document.xml": b'<w:document><w:r><w:instrText xml:space="preserve"> DDEAUTO c:\\\\cmd.exe '
            b"</w:instrText>"
        }
    )
    assert "DDE" in classify(dde, "a.docx").reason
    inner = corpus.docx({"word/embeddings/Microsoft_Word_Macro-Enabled_Document.docm": corpus.docm()})
    assert classify(inner, "a.docx").category == "macro_office"
    renamed = corpus.docx({"word/media/image1.bin": corpus.vba_project_bin()})
    assert classify(renamed, "a.docx").category == "macro_office"  # any OLE part is looked at
    eq = corpus.docx({"word/embeddings/oleObject1.bin": corpus.cfb({"Equation Native": b"\0" * 64})})
    assert "Equation Editor" in classify(eq, "a.docx").reason
    ole_link = corpus.docx(
        {
            "word/_rels/document.xml.rels": b'<Relationships><Relationship Id="rId9" Type="http://schemas.'
            b'openxmlformats.org/officeDocument/2006/relationships/oleObject" Target="mhtml:http://x/!x-usc:'
            b'http://x" TargetMode="External"/></Relationships>'
        }
    )
    assert "external oleobject" in classify(ole_link, "a.docx").reason


def test_xlsb_content_type_alone_is_not_a_macro() -> None:
    ct = "application/vnd.ms-excel.sheet.binary.macroEnabled.main"
    xlsb = corpus.zip_of(
        {
            "[Content_Types].xml": corpus._content_types(ct, "xl/workbook.bin"),
            "_rels/.rels": corpus._RELS % b"xl/workbook.bin",
            "xl/workbook.bin": b"\x83\x01\x00",
        }
    )
    assert classify(xlsb, "a.xlsx").verdict == "pass"  # (.xlsb itself is a dangerous extension by name)


def test_zip_packaged_executables() -> None:
    apk = corpus.zip_of({"AndroidManifest.xml": b"\x03\x00\x08\x00", "classes.dex": b"dex\n035\0" + b"\0" * 64})
    assert classify(apk, "app.zip").category == "executable"
    appx = corpus.zip_of({"AppxManifest.xml": b"<Package/>", "[Content_Types].xml": b"<Types/>"})
    assert classify(appx, "app.zip").category == "executable"
    nupkg = corpus.zip_of({"[Content_Types].xml": b"<Types/>", "lib/net48/a.dll": corpus.pe_exe(dll=True)})
    assert classify(nupkg, "a.zip").category == "executable"  # not OOXML: members are attachments


def test_corrupt_ole_is_uninspectable() -> None:
    c = classify(
        corpus.OLE_MAGIC if hasattr(corpus, "OLE_MAGIC") else b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\xff" * 2000
    )
    assert c.verdict == "remove"


def test_registry_and_html_signatures() -> None:
    assert classify(b"Windows Registry Editor Version 5.00\r\n[HKEY_CURRENT_USER]\r\n", "a.txt").category == "script"
    reg16 = "\ufeffWindows Registry Editor Version 5.00\r\n".encode("utf-16-le")
    assert classify(reg16, "a.txt").category == "script"
    assert classify(b"  <svg onload=alert(1)>", "a.txt").category == "html"
