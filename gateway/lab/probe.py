"""Real traffic between lab hosts: one TCP connect, UDP exchange or ICMP echo per probe.

Each probe opens its socket inside the source host's namespace (setns on the calling thread), so
probes run in threads, many at once, without a subprocess each. A probe "passes" only when the
peer's answer arrives (the lab servers name themselves in it), so a drop, a reset or an ICMP error
all count as blocked.
"""

from __future__ import annotations

import os
import select
import smtplib
import socket
import struct
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from gateway.lab import netns
from gateway.lab.topology import HOSTS_BY_NAME, address_of

PROTOS = ("tcp", "udp", "icmp")


@dataclass(frozen=True)
class Probe:
    src: str  # host name
    dst: str  # host name
    proto: str  # tcp | udp | icmp
    port: int = 0  # TCP/UDP destination port; unused for ICMP


@dataclass(frozen=True)
class ProbeResult:
    probe: Probe
    passed: bool
    detail: str  # the peer's first answer, or why it failed (timeout, refused, ...)
    src_port: int  # TCP/UDP source port; ICMP echo identifier
    elapsed_s: float


def _tcp(ns: str, dst: str, port: int, timeout: float) -> tuple[bool, str, int]:
    with netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.bind(("0.0.0.0", 0))
        sport = s.getsockname()[1]
        try:
            s.connect((dst, port))
            data = s.recv(512)
        except TimeoutError:
            return False, "timeout", sport
        except OSError as e:
            return False, e.strerror or type(e).__name__, sport
        return bool(data), data.decode(errors="replace").strip() or "closed without data", sport


def _udp(ns: str, dst: str, port: int, timeout: float) -> tuple[bool, str, int]:
    with netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.bind(("0.0.0.0", 0))
        sport = s.getsockname()[1]
        s.connect((dst, port))  # connected: only the peer's answer (or its ICMP error) comes back
        try:
            s.send(b"probe")
            data = s.recv(512)
        except TimeoutError:
            return False, "timeout", sport
        except OSError as e:
            return False, e.strerror or type(e).__name__, sport
        return True, data.decode(errors="replace").strip(), sport


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def _icmp(ns: str, dst: str, timeout: float) -> tuple[bool, str, int]:
    """One echo request over a raw socket (the lab runs as root; no ping binary needed)."""
    ident = (os.getpid() ^ time.monotonic_ns()) & 0xFFFF
    payload = b"lgw-lab probe"
    header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
    packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, 1) + payload
    with netns.socket_in(ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.sendto(packet, (dst, 0))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([s], [], [], left)[0]:
                break
            data, (addr, _) = s.recvfrom(2048)
            ihl = (data[0] & 0x0F) * 4
            icmp_type, _, _, rid, seq = struct.unpack("!BBHHH", data[ihl : ihl + 8])
            # a raw socket sees every ICMP packet of the host: keep only our echo reply
            if icmp_type == 0 and rid == ident and seq == 1 and addr == dst:
                return True, "echo reply", ident
        return False, "timeout", ident


def run_probe(prefix: str, probe: Probe, timeout: float = 1.0) -> ProbeResult:
    """Send one probe from `probe.src`'s namespace (`prefix + src`) to `probe.dst`'s address."""
    if probe.src not in HOSTS_BY_NAME:
        raise ValueError(f"unknown source host {probe.src!r}")
    ns, dst = prefix + probe.src, address_of(probe.dst)
    start = time.monotonic()
    if probe.proto == "tcp":
        ok, detail, sport = _tcp(ns, dst, probe.port, timeout)
    elif probe.proto == "udp":
        ok, detail, sport = _udp(ns, dst, probe.port, timeout)
    elif probe.proto == "icmp":
        ok, detail, sport = _icmp(ns, dst, timeout)
    else:
        raise ValueError(f"unknown protocol {probe.proto!r} (one of {PROTOS})")
    return ProbeResult(probe, ok, detail, sport, time.monotonic() - start)


def run_probes(prefix: str, probes: Iterable[Probe], timeout: float = 1.0, workers: int = 32) -> list[ProbeResult]:
    """Run probes concurrently (a blocked probe costs `timeout`); results in input order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_probe(prefix, p, timeout), probes))


class _NamespacedSMTP(smtplib.SMTP):
    """smtplib.SMTP whose connection starts from a lab host (smtplib has no public socket hook)."""

    def __init__(self, namespace: str, host: str, port: int, timeout: float) -> None:
        self._lab_namespace = namespace
        super().__init__(host, port, timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        s = netns.socket_in(self._lab_namespace, socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect((host, port))
        except BaseException:
            s.close()
            raise
        return s


def smtp_client(prefix: str, src: str, dst: str, port: int = 25, timeout: float = 5.0) -> smtplib.SMTP:
    """An SMTP client connected from host `src` to host `dst` (use as a context manager)."""
    return _NamespacedSMTP(prefix + src, address_of(dst), port, timeout)
