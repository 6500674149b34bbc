"""Optional scanners: YARA (yara-python) and ClamAV (clamd INSTREAM over a unix socket).

Both fail closed: a scanner that is enabled but cannot run turns every part into a "limit"
finding. clamd is tested twice: against a small fake speaking the protocol (always), and against
a real clamd with a custom signature database (EICAR's MD5 in a .hdb file; no download), when
clamav-daemon is installed (scripts/setup.sh installs it; CI refuses to skip).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import corpus
import pytest

from gateway.sanitize import Classifier, MailProfile

RULES = """
rule eicar_test { strings: $a = "EICAR-STANDARD-ANTIVIRUS-TEST-FILE" condition: $a }
"""


def clf(**settings: object) -> Classifier:
    return Classifier(MailProfile.model_validate({"kind": "smtp", **settings}))


# -- YARA ----------------------------------------------------------------------------------------


def test_yara_match_is_malware_also_inside_archives(tmp_path: Path) -> None:
    pytest.importorskip("yara", reason="yara-python is a dev dependency (pip install -e '.[dev]')")
    rules = tmp_path / "rules.yar"
    rules.write_text(RULES)
    c = clf(yara_rules=str(rules))
    r = c.classify_full(corpus.EICAR, ["readme.txt"], "text/plain")
    assert (r.category, r.verdict) == ("malware", "remove") and "eicar_test" in r.reason
    # compressed inside a zip: YARA sees the member after decompression
    r = c.classify_full(corpus.zip_of({"docs/readme.txt": corpus.EICAR}), ["a.zip"], "")
    assert r.category == "malware" and "a.zip/docs/readme.txt" in r.reason
    assert c.classify_full(b"hello\n", ["a.txt"], "text/plain").verdict == "pass"


def test_yara_unusable_fails_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("yara", reason="yara-python is a dev dependency")
    bad = tmp_path / "bad.yar"
    bad.write_text("rule broken { condition: }")
    r = clf(yara_rules=str(bad)).classify_full(b"hello\n", ["a.txt"], "text/plain")
    assert (r.category, r.verdict, r.action) == ("limit", "remove", "refuse") and "YARA" in r.reason
    r = clf(yara_rules=str(tmp_path / "missing.yar")).classify_full(b"hello\n", ["a.txt"], "text/plain")
    assert r.category == "limit"
    monkeypatch.setitem(sys.modules, "yara", None)  # import fails
    r = clf(yara_rules=str(bad)).classify_full(b"hello\n", ["a.txt"], "text/plain")
    assert r.category == "limit" and "not installed" in r.reason


# -- clamd protocol against a fake -------------------------------------------------------------


class FakeClamd:
    """Answers INSTREAM like clamd: FOUND when the stream contains `needle`."""

    def __init__(self, path: str, needle: bytes, reply: bytes | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self.needle = needle
        self.reply = reply
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                f = conn.makefile("rb")
                assert f.read(10) == b"zINSTREAM\0"
                data = bytearray()
                while True:
                    (n,) = struct.unpack(">I", f.read(4))
                    if n == 0:
                        break
                    data += f.read(n)
                self.received.append(bytes(data))
                if self.reply is not None:
                    conn.sendall(self.reply)
                elif self.needle in data:
                    conn.sendall(b"stream: Fake.Signature FOUND\0")
                else:
                    conn.sendall(b"stream: OK\0")

    def close(self) -> None:
        self.sock.close()


def test_clamd_protocol_found_ok_and_errors(tmp_path: Path) -> None:
    path = str(tmp_path / "clamd.sock")
    fake = FakeClamd(path, b"EICAR")
    try:
        c = clf(clamd_socket=path, scan_timeout=5)
        big = b"x" * 700_000 + corpus.EICAR  # several INSTREAM chunks
        r = c.classify_full(big, ["a.txt"], "text/plain")
        assert r.category == "malware" and "Fake.Signature" in r.reason
        assert fake.received[-1] == big
        assert c.classify_full(b"hello\n", ["a.txt"], "text/plain").verdict == "pass"
    finally:
        fake.close()
    path2 = str(tmp_path / "clamd2.sock")
    fake = FakeClamd(path2, b"", reply=b"INSTREAM size limit exceeded. ERROR\0")
    try:
        r = clf(clamd_socket=path2).classify_full(b"hello\n", ["a.txt"], "text/plain")
        assert r.category == "limit" and "size limit" in r.reason
    finally:
        fake.close()


def test_clamd_unavailable_fails_closed(tmp_path: Path) -> None:
    r = clf(clamd_socket=str(tmp_path / "nobody.sock")).classify_full(b"hello\n", ["a.txt"], "text/plain")
    assert (r.category, r.verdict, r.action) == ("limit", "remove", "refuse") and "unavailable" in r.reason
    r = clf(clamd_socket=str(tmp_path / "nobody.sock"), actions={"limit": "neutralize"}).classify_full(
        b"hello\n", ["a.txt"], "text/plain"
    )
    assert r.action == "neutralize"


# -- a real clamd --------------------------------------------------------------------------------

CLAMD = shutil.which("clamd") or ("/usr/sbin/clamd" if os.path.exists("/usr/sbin/clamd") else None)


@pytest.fixture(scope="module")
def clamd_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if CLAMD is None:
        if os.environ.get("CI"):
            pytest.fail("clamd missing in CI: scripts/setup.sh installs clamav-daemon")
        pytest.skip("clamd not installed (apt-get install clamav-daemon, or run scripts/setup.sh)")
    d = tmp_path_factory.mktemp("clamd")
    (d / "db").mkdir()
    # a custom signature: EICAR's MD5 and size (no signature download needed)
    (d / "db" / "test.hdb").write_text("44d88612fea8a8f36de82e1278abb02f:68:LGWAN-Test-EICAR\n")
    sock = d / "clamd.sock"
    conf = d / "clamd.conf"
    lines = ["Foreground yes", f"DatabaseDirectory {d / 'db'}", f"LocalSocket {sock}", f"LogFile {d / 'clamd.log'}"]
    if os.geteuid() == 0:
        lines.append("User root")
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([CLAMD, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(
                    f"clamd exited: {err} {(d / 'clamd.log').read_text() if (d / 'clamd.log').exists() else ''}"
                )
            if time.monotonic() > deadline:
                pytest.fail("clamd did not open its socket within 60 s")
            time.sleep(0.05)
        yield str(sock)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_real_clamd_finds_eicar_with_a_custom_signature(clamd_socket: str) -> None:
    c = clf(clamd_socket=clamd_socket, scan_timeout=30)
    r = c.classify_full(corpus.EICAR, ["readme.txt"], "text/plain")
    assert (r.category, r.verdict) == ("malware", "remove") and "LGWAN-Test-EICAR" in r.reason
    # clamd unpacks the zip itself
    r = c.classify_full(corpus.zip_of({"a/readme.txt": corpus.EICAR}), ["a.zip"], "")
    assert r.category == "malware"
    assert c.classify_full(corpus.clean_pdf(), ["a.pdf"], "application/pdf").verdict == "pass"
