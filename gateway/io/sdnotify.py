"""systemd's notify protocol, by hand: one datagram per state change to $NOTIFY_SOCKET.

No libsystemd: the protocol is a newline-separated `KEY=VALUE` datagram sent to a unix socket
whose path is in NOTIFY_SOCKET ('@' at the start means the abstract namespace). Without
NOTIFY_SOCKET every call is a no-op, so the daemon runs the same outside systemd.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


def _address(value: str) -> str | bytes:
    if value.startswith("@"):  # abstract namespace: a leading NUL byte
        return b"\0" + value[1:].encode()
    return value


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, what systemd expects in MONOTONIC_USEC."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        self._addr: str | bytes | None = _address(raw) if raw and raw[0] in "/@" else None
        self._sock: socket.socket | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # the watchdog is ours only if WATCHDOG_PID is unset or names this process
        self.watchdog_usec = int(usec) if usec.isdigit() and (not pid or pid == str(os.getpid())) else 0
        self.sent: list[str] = []  # what was sent (for logs and tests)

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def notify(self, *fields: str) -> bool:
        """Send `fields` (each `KEY=VALUE`) as one datagram. False if not under systemd or it failed;
        a lost notification must never stop the gateway."""
        if self._addr is None:
            return False
        msg = "\n".join(fields)
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(msg.encode(), self._addr)
        except OSError:
            return False
        self.sent.append(msg)
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        # systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload); older ignore it
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
