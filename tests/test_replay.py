"""Replay end to end: lab policy on a small scapy capture; forwarded set, events, chunking."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet, raw
from scapy.utils import EDecimal, PcapNgWriter, PcapWriter, rdpcap

from gateway.cli import main
from gateway.io.eventlog import read_events
from gateway.replay import OutFrame, ReplaySummary, replay

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "configs" / "lab.toml"
T0 = 1_700_000_000_000_000

MYNUMBER_TERM = "198.18.10.10"
LGWAN_TERM = "198.18.20.10"
LGWAN_MAIL = "198.18.20.25"
CHUKAN = "198.18.30.40"
ASP = "198.18.30.50"
RELAY = "198.19.40.25"
BROWSER = "198.19.40.80"
INET_HOST = "198.19.40.100"


def lab() -> Any:
    from gateway.policy import load_policy

    return load_policy(LAB)


def tcp_flow(a: str, b: str, sport: int, dport: int) -> list[Packet]:
    return [
        IP(src=a, dst=b) / TCP(sport=sport, dport=dport, flags="S", seq=100),
        IP(src=b, dst=a) / TCP(sport=dport, dport=sport, flags="SA", seq=500, ack=101),
        IP(src=a, dst=b) / TCP(sport=sport, dport=dport, flags="A", seq=101, ack=501),
        IP(src=a, dst=b) / TCP(sport=sport, dport=dport, flags="PA", seq=101, ack=501) / b"hello",
        IP(src=b, dst=a) / TCP(sport=dport, dport=sport, flags="A", seq=501, ack=106),
    ]


def lab_traffic() -> list[tuple[Packet, bool]]:
    """(IP packet or frame, forwarded?) in capture order."""
    out: list[tuple[Packet, bool]] = []
    out += [(p, True) for p in tcp_flow(MYNUMBER_TERM, CHUKAN, 40001, 443)]  # 中間サーバー linkage
    out += [(p, False) for p in tcp_flow(LGWAN_TERM, CHUKAN, 40002, 443)]  # only mynumber may
    out += [(p, True) for p in tcp_flow(LGWAN_TERM, ASP, 40003, 443)]
    out += [(p, False) for p in tcp_flow(MYNUMBER_TERM, INET_HOST, 40004, 80)]  # never
    out += [(p, False) for p in tcp_flow(RELAY, LGWAN_MAIL, 40005, 25)]  # inspect: no inspector yet
    out += [(p, True) for p in tcp_flow(LGWAN_TERM, BROWSER, 40006, 3389)]  # 画面転送
    out += [(IP(src=LGWAN_TERM, dst=ASP) / ICMP(type=8, id=1, seq=1), True)]
    out += [(IP(src=ASP, dst=LGWAN_TERM) / ICMP(type=0, id=1, seq=1), True)]
    out += [
        (Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=LGWAN_TERM, pdst="198.18.20.254"), False)
    ]
    # a fragmented echo request, decided when complete; its small unfragmented reply follows
    # at once: it must see the flow the reassembled request created
    big = IP(src=LGWAN_TERM, dst=CHUKAN, id=4242) / ICMP(type=8, id=2, seq=1) / (b"P" * 2500)
    out += [(f, True) for f in fragment(big, fragsize=1000)]
    out += [(IP(src=CHUKAN, dst=LGWAN_TERM) / ICMP(type=0, id=2, seq=1) / b"pong", True)]
    # fragments of a denied datagram (mynumber -> internet), last fragment first
    bad = IP(src=MYNUMBER_TERM, dst=INET_HOST, id=77) / UDP(sport=5, dport=53) / (b"Q" * 2000)
    out += [(f, False) for f in reversed(fragment(bad, fragsize=800))]
    # overlapping fragments (exact duplicate) of an otherwise allowed echo: whole datagram dropped
    ov = fragment(IP(src=LGWAN_TERM, dst=ASP, id=99) / ICMP(type=8, id=3) / (b"O" * 1800), fragsize=800)
    out += [(ov[0], False), (ov[0], False), *[(f, False) for f in ov[1:]]]
    # a fragment that never completes (dropped at the end)
    out += [(fragment(IP(src=LGWAN_TERM, dst=ASP, id=5) / ICMP(type=8, id=4) / (b"L" * 1800), 800)[0], False)]
    return out


def to_frame(p: Packet) -> Packet:
    if isinstance(p, Ether):
        return p
    return Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b") / Dot1Q(vlan=20) / p


def write_capture(path: Path, items: list[tuple[Packet, bool]], pcapng: bool = False) -> list[tuple[bytes, bool]]:
    w: Any = PcapNgWriter(str(path)) if pcapng else PcapWriter(str(path), linktype=1, sync=True)
    frames = []
    for i, (p, fwd) in enumerate(items):
        f = to_frame(p)
        data = raw(f)
        pkt = Ether(data)
        pkt.time = EDecimal(T0 + i * 1000) / 1_000_000
        w.write(pkt)
        frames.append((data, fwd))
    w.close()
    return frames


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[bytes, bool]]]:
    path = tmp_path_factory.mktemp("replay") / "lab.pcap"
    return path, write_capture(path, lab_traffic())


def run(path: Path, tmp: Path, chunk: int = 4 << 20) -> tuple[ReplaySummary, list[bytes], list[dict[str, Any]]]:
    out = tmp / f"out-{chunk}.pcap"
    ev = tmp / f"events-{chunk}.json"
    s = replay(path, lab(), out, ev, chunk_size=chunk)
    return s, [raw(p) for p in rdpcap(str(out))], read_events(ev)


def test_forwarded_set_matches_policy(capture: tuple[Path, list[tuple[bytes, bool]]], tmp_path: Path) -> None:
    path, frames = capture
    s, written, events = run(path, tmp_path)
    want = [f for f, fwd in frames if fwd]
    assert written == want  # same frames, same order (fragments when their datagram completes)
    assert s.packets == len(frames)
    assert s.packets == s.accepted + s.dropped + s.inspected  # one final verdict per frame
    assert s.accepted == s.forwarded == len(want)
    assert s.inspected == s.inspect_unavailable == 5
    assert s.non_ip == 1 and s.dropped_by_reason["non_ip"] == 1
    assert s.dropped_by_reason["fragment_overlap"] == 4
    assert s.dropped_by_reason["fragment_limit"] == 1
    assert s.fragments == 3 + 3 + 4 + 1
    assert s.datagrams_reassembled == 2
    assert sum(s.dropped_by_reason.values()) == s.dropped
    # one flow event per flow, each with its own id
    flow_events = [e for e in events if e["event_type"] == "flow"]
    keys = {(e["src_ip"], e["dest_ip"], e.get("src_port"), e.get("dest_port"), e["proto"]) for e in flow_events}
    assert len(flow_events) == len(keys) == s.flows
    assert len({e["flow_id"] for e in flow_events}) == len(flow_events)
    by = {(e["src_ip"], e["dest_ip"]): e for e in flow_events if e["proto"] != "ICMP"}
    assert by[(MYNUMBER_TERM, CHUKAN)]["action"] == "accept"
    assert by[(MYNUMBER_TERM, CHUKAN)]["rule_id"] == "mynumber-to-chukan-https"
    assert by[(LGWAN_TERM, CHUKAN)]["action"] == "drop"
    assert by[(MYNUMBER_TERM, INET_HOST)]["src_tier"] == "mynumber"
    assert by[(RELAY, LGWAN_MAIL)]["action"] == "inspect" and by[(RELAY, LGWAN_MAIL)]["profile"] == "mail"
    anomalies = [e for e in events if e["event_type"] == "anomaly"]
    assert sorted(e["reason"] for e in anomalies) == ["fragment_limit", "fragment_overlap"]
    # event timestamps never go backwards except the end-of-capture timeout, stamped at expiry
    assert all(e["timestamp"].endswith("+0000") for e in events)


@pytest.mark.parametrize("chunk", [64, 97, 300, 1500])
def test_chunking_does_not_change_results(
    capture: tuple[Path, list[tuple[bytes, bool]]], tmp_path: Path, chunk: int
) -> None:
    path, _ = capture
    s0, w0, e0 = run(path, tmp_path)
    s1, w1, e1 = run(path, tmp_path, chunk)
    assert w1 == w0
    assert e1 == e0
    d0, d1 = s0.to_dict(), s1.to_dict()
    for d in (d0, d1):
        for k in ("seconds", "packets_per_second"):
            d.pop(k)
    assert d1 == d0


def test_pcapng_input_same_result(capture: tuple[Path, list[tuple[bytes, bool]]], tmp_path: Path) -> None:
    path, _ = capture
    ng = tmp_path / "lab.pcapng"
    write_capture(ng, lab_traffic(), pcapng=True)
    s0, w0, e0 = run(path, tmp_path)
    s1, w1, e1 = run(ng, tmp_path, 200)
    assert w1 == w0 and e1 == e0 and s1.format == "pcapng"
    assert (s1.accepted, s1.dropped_by_reason, s1.flows) == (s0.accepted, s0.dropped_by_reason, s0.flows)


class EchoInspector:
    """Forwards every inspect frame unchanged: proves the hook is wired."""

    def __init__(self) -> None:
        self.seen = 0

    def packet(self, frame: OutFrame, linktype: int) -> list[OutFrame]:
        self.seen += 1
        return [frame]

    def finish(self) -> list[OutFrame]:
        return []

    def pop_events(self) -> list[dict[str, object]]:
        return [{"event_type": "inspect_done", "frames": self.seen}]


def test_inspector_hook(capture: tuple[Path, list[tuple[bytes, bool]]], tmp_path: Path) -> None:
    path, _ = capture
    insp = EchoInspector()
    s = replay(path, lab(), tmp_path / "o.pcap", tmp_path / "e.json", inspector=insp)
    assert insp.seen == 5 and s.inspect_unavailable == 0
    assert s.forwarded == s.accepted + 5
    assert read_events(tmp_path / "e.json")[-1] == {"event_type": "inspect_done", "frames": 5}


def test_cli(
    capture: tuple[Path, list[tuple[bytes, bool]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, frames = capture
    js = tmp_path / "s.json"
    rc = main(["replay", str(path), "--config", str(LAB), "--out", str(tmp_path / "o.pcap"), "--json-summary", str(js)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "accepted" in text and "inspect" in text
    summary = json.loads(js.read_text())
    assert summary["packets"] == len(frames) and summary["implementation"] in ("python", "cython")
    # events to stdout, summary moves to stderr
    rc = main(["replay", str(path), "--config", str(LAB), "--events", "-"])
    captured = capsys.readouterr()
    assert rc == 0
    lines = [json.loads(x) for x in captured.out.splitlines()]
    assert lines and all("event_type" in x for x in lines)
    assert "packets" in captured.err


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad_cfg = tmp_path / "bad.toml"
    bad_cfg.write_text("[gateway\n")
    cap = tmp_path / "c.pcap"
    write_capture(cap, lab_traffic()[:2])
    assert main(["replay", str(cap), "--config", str(bad_cfg), "--quiet"]) == 2
    assert "bad.toml" in capsys.readouterr().err
    garbage = tmp_path / "g.pcap"
    garbage.write_bytes(b"not a capture at all")
    assert main(["replay", str(garbage), "--config", str(LAB), "--quiet"]) == 1
    assert "not a pcap" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "missing.pcap"), "--config", str(LAB), "--quiet"]) == 1
    # truncated capture: a warning, not a failure
    data = cap.read_bytes()
    (tmp_path / "t.pcap").write_bytes(data[:-5])
    js = tmp_path / "t.json"
    assert main(["replay", str(tmp_path / "t.pcap"), "--config", str(LAB), "--quiet", "--json-summary", str(js)]) == 0
    s = json.loads(js.read_text())
    assert s["truncated"] and s["packets"] == 1 and s["warnings"]


def test_empty_capture_gives_valid_empty_output(tmp_path: Path) -> None:
    cap = tmp_path / "empty.pcap"
    PcapWriter(str(cap), linktype=1, sync=True).close()
    if cap.stat().st_size == 0:  # scapy writes the header lazily
        import struct

        cap.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    s = replay(cap, lab(), tmp_path / "o.pcap")
    assert s.packets == 0
    assert rdpcap(str(tmp_path / "o.pcap")) is not None
    assert (tmp_path / "o.pcap").stat().st_size == 24


def test_pcapng_mixed_link_types(tmp_path: Path) -> None:
    from test_pcap import NgBuilder

    eth = [raw(to_frame(p)) for p in tcp_flow(LGWAN_TERM, ASP, 40010, 443)]
    raw_ip = [raw(p) for p in tcp_flow(LGWAN_TERM, ASP, 40011, 443)]
    b = NgBuilder().shb().idb(1).idb(101).idb(147)  # 147: LINKTYPE_USER0, not supported
    for i, f in enumerate(eth):
        b.epb(0, T0 + i, f)
    for i, f in enumerate(raw_ip):
        b.epb(1, T0 + 100 + i, f)
    b.epb(2, T0 + 200, b"\x01\x02\x03")
    cap = tmp_path / "mixed.pcapng"
    cap.write_bytes(bytes(b.out))
    s = replay(cap, lab(), tmp_path / "o.pcap")
    assert s.packets == 11 and s.accepted == 10 and s.dropped == 1
    assert s.dropped_by_reason == {"unsupported_linktype": 1}
    # the output is Ethernet (the first link type seen): raw-IP frames cannot go in it
    assert [raw(p) for p in rdpcap(str(tmp_path / "o.pcap"))] == eth and s.forwarded == 5
    assert any("link type 101" in w for w in s.warnings) and any("147" in w for w in s.warnings)
