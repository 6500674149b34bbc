"""sd_notify by hand: datagrams to NOTIFY_SOCKET (path and abstract namespace)."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

from gateway.io.sdnotify import Notifier, monotonic_usec


def _listener(addr: str | bytes) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(addr)
    s.settimeout(2)
    return s


def _recv(s: socket.socket) -> list[str]:
    return s.recv(4096).decode().split("\n")


def test_sequence_on_path_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with _listener(path) as s:
        n = Notifier({"NOTIFY_SOCKET": path})
        assert n.enabled
        before = monotonic_usec()
        assert n.ready("generation 1")
        assert n.reloading()
        assert n.ready()
        assert n.watchdog()
        assert n.stopping()
        assert _recv(s) == ["READY=1", "STATUS=generation 1"]
        reloading = _recv(s)
        assert reloading[0] == "RELOADING=1"
        key, _, value = reloading[1].partition("=")
        assert key == "MONOTONIC_USEC" and before <= int(value) <= monotonic_usec()
        assert _recv(s) == ["READY=1"]
        assert _recv(s) == ["WATCHDOG=1"]
        assert _recv(s) == ["STOPPING=1"]
        n.close()


def test_abstract_namespace() -> None:
    name = f"lgw-t-notify-{uuid.uuid4().hex}"
    with _listener(b"\0" + name.encode()) as s:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert _recv(s) == ["READY=1"]


def test_disabled_without_socket_and_watchdog_env() -> None:
    n = Notifier({})
    assert not n.enabled and not n.ready() and n.sent == []
    assert Notifier({"WATCHDOG_USEC": "10000000"}).watchdog_usec == 10_000_000
    assert Notifier({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_usec == 10_000_000
    assert Notifier({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}).watchdog_usec == 0  # not ours


def test_send_failure_is_not_fatal(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert n.enabled and not n.ready()
