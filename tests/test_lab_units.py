"""Lab pieces that need no root: the addressing plan and the lab host servers (on loopback)."""

from __future__ import annotations

import ipaddress
import json
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.lab.topology import GATEWAY, HOST_NAMES, HOSTS, HOSTS_BY_NAME, ZONES, address_of

REPO = Path(__file__).resolve().parents[1]

# ../shared/lab-facts.md, "The built-in lab addressing plan"
LAB_FACTS = {
    "mynumber-terminal": ("mynumber", "198.18.10.10"),
    "mynumber-server": ("mynumber", "198.18.10.20"),
    "lgwan-terminal": ("lgwan", "198.18.20.10"),
    "lgwan-mail": ("lgwan", "198.18.20.25"),
    "lgwan-file": ("lgwan", "198.18.20.30"),
    "chukan": ("lgwan-wan", "198.18.30.40"),
    "lgwan-asp": ("lgwan-wan", "198.18.30.50"),
    "internet-relay": ("internet", "198.19.40.25"),
    "internet-browser": ("internet", "198.19.40.80"),
    "internet-host": ("internet", "198.19.40.100"),
}


def test_addressing_plan_is_lab_facts() -> None:
    assert {h.name: (h.zone.name, h.address) for h in HOSTS} == LAB_FACTS
    assert set(HOST_NAMES) == {*LAB_FACTS, GATEWAY}
    lab_net = ipaddress.ip_network("198.18.0.0/15")
    for z in ZONES:
        assert ipaddress.ip_network(z.network).subnet_of(lab_net)  # type: ignore[arg-type]
        assert z.gateway_address.endswith(".254")
    assert address_of(GATEWAY) == "198.18.10.254"


def test_interface_names_fit_ifnamsiz() -> None:
    names = [z.name for z in ZONES] + [h.bridge_port for h in HOSTS]
    assert all(len(n) <= 15 for n in names)
    assert len(set(names)) == len(names)


def test_every_host_listens_on_allowed_and_denied_ports() -> None:
    for h in HOSTS:
        assert {22, 25, 443, 445, 3389} <= set(h.tcp) | set(h.smtp)
        assert {7, 53} <= set(h.udp)
    assert {"lgwan-mail", "internet-relay"} <= {h.name for h in HOSTS if h.smtp}


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[dict[str, int], Path]]:
    ports = {"tcp": _free_port(socket.SOCK_STREAM), "smtp": _free_port(socket.SOCK_STREAM)}
    ports["udp"] = _free_port(socket.SOCK_DGRAM)
    ready, maildir = tmp_path / "ready", tmp_path / "maildir"
    argv = [sys.executable, "-m", "gateway.labhosts", "--name", "unit", "--bind", "127.0.0.1"]
    argv += ["--tcp", str(ports["tcp"]), "--udp", str(ports["udp"]), "--smtp", str(ports["smtp"])]
    argv += ["--maildir", str(maildir), "--ready-file", str(ready)]
    proc = subprocess.Popen(argv, cwd=REPO)
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        yield ports, maildir
    finally:
        proc.terminate()
        assert proc.wait(5) == 0  # SIGTERM is a clean stop


def test_lab_host_server(server: tuple[dict[str, int], Path]) -> None:
    ports, maildir = server
    with socket.create_connection(("127.0.0.1", ports["tcp"]), timeout=2) as c:
        assert c.recv(100) == f"lgw-lab unit tcp/{ports['tcp']}\r\n".encode()
        c.sendall(b"echo me")
        assert c.recv(100) == b"echo me"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(2)
        u.sendto(b"hi", ("127.0.0.1", ports["udp"]))
        assert u.recv(100) == f"lgw-lab unit udp/{ports['udp']} hi".encode()
    body = b"Subject: x\r\n\r\n..leading dot\r\nbare\nlf\r\n"
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=2) as s:
        s.sendmail("a@example.jp", ["b@example.jp", "c@example.jp"], body)
    (stored,) = (maildir / "new").iterdir()
    assert stored.read_bytes() == body  # byte-exact: dot-stuffing undone, the bare LF kept
    record = json.loads(maildir.with_name("maildir.jsonl").read_text())
    assert record["rcpt_tos"] == ["b@example.jp", "c@example.jp"] and record["path"] == str(stored)


def test_hosts_by_name() -> None:
    assert HOSTS_BY_NAME["chukan"].bridge_port == "lgwan-wan-40"


# --- the impairment shim's decisions (gateway/lab/impair.py), no NFQUEUE needed ------------------


def _session_packets(sport: int, isn: int, data: bytes, mss: int = 100) -> list[bytes]:
    from scapy.layers.inet import IP, TCP

    def pkt(seq: int, flags: str, payload: bytes = b"") -> bytes:
        return bytes(
            IP(src="198.19.40.25", dst="198.18.20.25") / TCP(sport=sport, dport=25, seq=seq, flags=flags) / payload
        )

    out = [pkt(isn, "S")]
    out += [pkt(isn + 1 + i, "PA", data[i : i + mss]) for i in range(0, len(data), mss)]
    return [*out, pkt(isn + 1 + len(data), "FA")]


def _decide(packets_by_session: list[list[bytes]]) -> tuple[list[list[str]], dict[str, int]]:
    from gateway.lab.impair import Accept, Drop, Impairer, Impairments, Send

    imp = Impairer(Impairments(seed=3, reorder=0.2, duplicate=0.2, drop=0.2))
    pid, result = 0, []
    for packets in packets_by_session:
        verdicts: dict[int, str] = {}
        copies = 0
        for raw in packets:
            pid += 1
            for op in imp.packet(pid, raw, float(pid), outgoing=True):
                if isinstance(op, Send):
                    copies += 1
                else:
                    assert op.packet_id not in verdicts, "two verdicts for one packet"
                    verdicts[op.packet_id] = "accept" if isinstance(op, Accept) else "drop"
        for op in imp.close():
            if isinstance(op, Accept | Drop):
                verdicts[op.packet_id] = "accept" if isinstance(op, Accept) else "drop"
        assert len(verdicts) == len(packets), "a packet without a verdict"
        result.append([verdicts[k] for k in sorted(verdicts)] + [f"copies={copies}"])
    return result, imp.counters


def test_impairer_decides_every_packet_once_and_the_same_way_each_time() -> None:
    data = bytes(range(256)) * 20
    first, counters = _decide([_session_packets(40001, 1000, data), _session_packets(40002, 9000, data)])
    again, _ = _decide([_session_packets(50001, 77, data), _session_packets(50002, 123456, data)])
    assert first == again  # other ports and ISNs, same sessions in the same order: same impairments
    assert first[0] != first[1]  # but two sessions are not impaired alike
    assert counters["dropped"] and counters["reordered"] and counters["duplicated"]
    assert all(v == "accept" for v in (first[0][0], first[0][-2]))  # SYN and FIN-only pass untouched
