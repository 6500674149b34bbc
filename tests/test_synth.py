"""The lab traffic synthesizer: parseable, valid, deterministic, covering every zone pair."""

from __future__ import annotations

import ipaddress
from collections import Counter
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.utils import rdpcap

from gateway import synth

LAB = ipaddress.ip_network("198.18.0.0/15")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> synth.SynthResult:
    return synth.demo_capture(tmp_path_factory.mktemp("synth") / "demo.pcap")


def _checksums_valid(frame: bytes) -> bool:
    pkt = Ether(frame)
    ip = pkt[IP]
    fields: list[tuple[type, int]] = [(IP, ip.chksum)]
    if not (ip.flags.MF or ip.frag):  # an L4 checksum is only checkable on a whole datagram
        fields += [(layer, pkt[layer].chksum) for layer in (TCP, UDP, ICMP) if layer in pkt]
    for layer, _ in fields:
        del pkt[layer].chksum
    again = Ether(bytes(pkt))
    return all(again[layer].chksum == value for layer, value in fields)


def test_demo_capture_parses_with_valid_checksums_and_lab_addresses(demo: synth.SynthResult) -> None:
    pkts = rdpcap(str(demo.path))
    assert len(pkts) == demo.packets == sum(f.packets for f in demo.flows)
    for p in pkts:
        if ARP in p:
            continue
        assert ipaddress.ip_address(p[IP].src) in LAB and ipaddress.ip_address(p[IP].dst) in LAB
        assert _checksums_valid(bytes(p)), p.summary()
    timestamps = [float(p.time) for p in pkts]
    assert timestamps == sorted(timestamps)


def test_covers_every_zone_pair_and_every_expectation(demo: synth.SynthResult) -> None:
    pairs = {(c.src_zone, c.dst_zone) for c in synth.CASES}
    assert set(synth.zone_pairs()) <= pairs
    assert len(synth.zone_pairs()) == 12
    assert {c.expect for c in synth.CASES} == {"accept", "drop", "inspect"}
    assert {f.case for f in demo.flows} == set(range(len(synth.CASES)))


def test_required_cases_present() -> None:
    by = {(c.src, c.dst, c.proto, c.dport): c.expect for c in synth.CASES if c.kind == "tcp"}
    assert by[("mynumber-terminal", "chukan", "tcp", 443)] == "accept"
    assert by[("lgwan-mail", "chukan", "tcp", 25)] == "accept"
    assert by[("lgwan-terminal", "lgwan-asp", "tcp", 443)] == "accept"
    assert by[("lgwan-terminal", "internet-browser", "tcp", 3389)] == "accept"
    assert by[("internet-relay", "lgwan-mail", "tcp", 25)] == "inspect"
    assert by[("lgwan-mail", "internet-relay", "tcp", 25)] == "inspect"
    assert by[("mynumber-terminal", "internet-host", "tcp", 443)] == "drop"
    kinds = {c.kind for c in synth.CASES}
    assert {"orphan", "frag", "overlap", "udp", "icmp"} <= kinds


def test_flow_shapes(demo: synth.SynthResult) -> None:
    pkts = rdpcap(str(demo.path))
    cases = {c.name: i for i, c in enumerate(synth.CASES)}

    def flags_of(name: str) -> list[str]:
        f = next(f for f in demo.flows if f.case == cases[name])
        return [
            str(p[TCP].flags)
            for p in pkts
            if TCP in p
            and {p[TCP].sport, p[TCP].dport} == {f.sport, f.dport}
            and {p[IP].src, p[IP].dst} == {f.src, f.dst}
        ]

    allowed = flags_of("mynumber-to-chukan-https")
    assert allowed[:3] == ["S", "SA", "A"]  # 3-way handshake
    assert "FA" in allowed and allowed[-1] == "A"  # FIN teardown
    assert flags_of("mynumber-to-internet-https") == ["S", "S", "S"]  # denied: SYN retransmits only
    frags = [p for p in pkts if IP in p and (p[IP].flags.MF or p[IP].frag)]
    assert len(frags) >= 6


def test_deterministic(tmp_path: Path) -> None:
    a = synth.demo_capture(tmp_path / "a.pcap", seed=7)
    b = synth.demo_capture(tmp_path / "b.pcap", seed=7)
    c = synth.demo_capture(tmp_path / "c.pcap", seed=8)
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.path.read_bytes() != c.path.read_bytes()
    x = synth.bench_capture(tmp_path / "x.pcap", packets=5000, flows=100, seed=3)
    y = synth.bench_capture(tmp_path / "y.pcap", packets=5000, flows=100, seed=3)
    assert x.path.read_bytes() == y.path.read_bytes()


def test_bench_capture_sizes_and_mix(tmp_path: Path) -> None:
    r = synth.bench_capture(tmp_path / "bench.pcap", packets=20_000, flows=300, seed=1)
    assert r.packets >= 20_000 and len(r.flows) >= 300
    assert r.packets == sum(f.packets for f in r.flows)
    seen = Counter(synth.CASES[f.case].name for f in r.flows)
    assert set(seen) == {c.name for c in synth.CASES}  # every case, so every zone pair
    # 5-tuples are unique across flows (a reused tuple would merge two flows in the engine)
    tuples = Counter(
        (f.src, f.dst, f.proto, f.sport, f.dport) for f in r.flows if synth.CASES[f.case].kind in ("tcp", "udp")
    )
    assert max(tuples.values()) == 1
    pkts = rdpcap(str(r.path), count=3000)
    assert all(_checksums_valid(bytes(p)) for p in pkts if IP in p)
