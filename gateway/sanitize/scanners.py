"""Optional content scanners, off by default: YARA rules and ClamAV (clamd over its unix socket).

Fail closed: when a profile enables a scanner that cannot run (module missing, rules that do not
compile, clamd not answering), every part scanned gets a "limit" finding, so nothing passes
unscanned. A match is a "malware" finding. clamd unpacks archives itself, so it gets the whole
part once; YARA rules run on the part and on every object found inside it.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from gateway.sanitize.base import Finding

CLAMD_CHUNK = 256 * 1024


class Yara:
    def __init__(self, rules_path: str, timeout: float) -> None:
        self.timeout = max(1, int(timeout))
        self.rules: Any = None
        self.error = ""
        try:
            import yara  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            self.error = "yara-python is not installed"
            return
        try:
            try:
                self.rules = yara.load(rules_path)  # compiled rules
            except yara.Error:
                self.rules = yara.compile(filepath=rules_path)
        except (yara.Error, OSError) as exc:
            self.error = f"YARA rules {rules_path!r} unusable: {exc}"

    def scan(self, data: bytes, where: str) -> list[Finding]:
        if self.rules is None:
            return [Finding("limit", f"YARA scan not possible ({self.error}) for {where}")]
        try:
            matches = self.rules.match(data=data, timeout=self.timeout)
        except Exception as exc:  # yara.TimeoutError, yara.Error: fail closed either way
            return [Finding("limit", f"YARA scan failed for {where}: {exc}")]
        return [Finding("malware", f"YARA rule {m.rule} matched {where}") for m in matches]


class Clamd:
    def __init__(self, socket_path: str, timeout: float) -> None:
        self.path = socket_path
        self.timeout = timeout

    def instream(self, data: bytes) -> str:
        """clamd's INSTREAM reply for `data`, e.g. "stream: OK" or "stream: Eicar FOUND"."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            s.connect(self.path)
            s.sendall(b"zINSTREAM\0")
            view = memoryview(data)
            for i in range(0, len(data), CLAMD_CHUNK):
                chunk = view[i : i + CLAMD_CHUNK]
                s.sendall(struct.pack(">I", len(chunk)))
                s.sendall(chunk)
            s.sendall(struct.pack(">I", 0))
            reply = bytearray()
            while not reply.endswith(b"\0"):
                got = s.recv(4096)
                if not got:
                    break
                reply += got
                if len(reply) > 65536:
                    break
        return reply.rstrip(b"\0").decode("utf-8", "replace").strip()

    def scan(self, data: bytes, where: str) -> list[Finding]:
        try:
            reply = self.instream(data)
        except OSError as exc:
            return [Finding("limit", f"clamd at {self.path} unavailable for {where}: {exc}")]
        if reply.endswith("FOUND"):
            signature = reply.removeprefix("stream:").removesuffix("FOUND").strip()
            return [Finding("malware", f"ClamAV: {signature} in {where}")]
        if reply.endswith(": OK") or reply == "OK":
            return []
        return [Finding("limit", f"clamd could not scan {where}: {reply or 'no reply'}")]
