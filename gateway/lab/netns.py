"""Network namespace primitives: `ip` commands, and sockets opened inside a namespace.

`ip` (iproute2) rather than pyroute2: the lab needs a dozen netlink operations done once, the
commands are the ones in lab-facts.md and can be pasted into a shell when debugging, and
`ip netns exec` already does the setns + /etc/netns bind mounts for the processes we start.
Sockets for probes are made with setns(2) on the calling thread only, so a test can talk from
any host without a subprocess per connection.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

NETNS_DIR = Path("/run/netns")  # where `ip netns add` bind-mounts named namespaces
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
# setns changes the namespace of the calling thread; one switch at a time per thread is enough,
# the flag catches a nested enter, which would switch "home" to the wrong namespace.
_local = threading.local()


class LabError(RuntimeError):
    """A lab operation failed; the message says what and how to clean up."""


def ip(*args: str, namespace: str | None = None, stdin: str | None = None, check: bool = True) -> str:
    """Run `ip [-n NS] ARGS`; raise LabError with its stderr on failure."""
    argv = ["ip"]
    if namespace:
        argv += ["-n", namespace]
    argv += list(args)
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed: {proc.stderr.strip()}")
    return proc.stdout


def ip_batch(commands: Sequence[str], namespace: str | None = None) -> None:
    """Run many `ip` commands in one process (`ip -batch -` stops at the first error)."""
    if commands:
        ip("-batch", "-", namespace=namespace, stdin="\n".join(commands) + "\n")


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def list_namespaces() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def add(name: str) -> None:
    ip("netns", "add", name)


def delete(name: str) -> None:
    """Delete a named namespace if it exists (idempotent)."""
    if exists(name):
        ip("netns", "del", name)


def pids(name: str) -> list[int]:
    """Processes living in the namespace."""
    if not exists(name):
        return []
    return [int(p) for p in ip("netns", "pids", name, check=False).split()]


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the block with the calling thread inside namespace `name`; always switch back.

    Sockets created inside stay in that namespace after the block, so they can be used anywhere.
    /proc/sys/net opened inside the block also refers to that namespace.
    """
    if getattr(_local, "inside", False):
        raise LabError("nested netns.entered() on one thread")
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(NETNS_DIR / name, os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        _local.inside = True
        try:
            yield
        finally:
            _setns(home)  # if this fails the thread is unusable: let the error propagate
            _local.inside = False
    finally:
        os.close(home)


def socket_in(name: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM, proto: int = 0) -> socket.socket:
    """A socket that lives in namespace `name` (its traffic starts from that host)."""
    with entered(name):
        return socket.socket(family, kind, proto)


def sysctl(name: str, values: dict[str, str]) -> None:
    """Write sysctls (dotted names) inside the namespace; a missing key raises FileNotFoundError."""
    with entered(name):
        for key, value in values.items():
            Path("/proc/sys", *key.split(".")).write_text(value + "\n")


def exec_argv(name: str, argv: Sequence[str]) -> list[str]:
    """The argv that runs `argv` inside the namespace (ip execs it: the PID is the command's)."""
    return ["ip", "netns", "exec", name, *argv]
