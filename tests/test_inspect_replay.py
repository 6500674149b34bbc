"""Replay end to end: a capture of SMTP sessions through the lab's inspect rule -> replay --out
-> the output reassembled with scapy -> the message the server would commit is checked."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from inspect_helpers import FakeClassifier, FakeProfile, MemoryStore, data_content, parse, session
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from scapy.utils import PcapWriter, rdpcap
from test_inspect import DOCM, EXE, mail

from gateway.inspect.replay import ReplayMailInspector
from gateway.io.eventlog import read_events
from gateway.replay import replay

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "configs" / "lab.toml"
CLIENT = ("198.19.40.25", 40123)
SERVER = ("198.18.20.25", 25)
MAC = {"c": ("02:00:00:00:00:0a", "02:00:00:00:00:0b"), "s": ("02:00:00:00:00:0c", "02:00:00:00:00:0d")}


def session_packets(turns: list[tuple[str, bytes]], mss: int, sport: int, reorder: bool = False) -> list[Packet]:
    rnd = random.Random(sport)
    isn = {"c": rnd.randrange(1 << 32), "s": rnd.randrange(1 << 32)}
    pos = {"c": 0, "s": 0}
    out: list[Packet] = []

    def pkt(d: str, off: int, payload: bytes, flags: str) -> Packet:
        o = "s" if d == "c" else "c"
        (src, spt), (dst, dpt) = ((CLIENT[0], sport), SERVER) if d == "c" else (SERVER, (CLIENT[0], sport))
        seq = (isn[d] + (0 if "S" in flags else 1 + off)) % (1 << 32)
        ack = (isn[o] + 1 + pos[o]) % (1 << 32) if "A" in flags else 0
        return (
            Ether(src=MAC[d][0], dst=MAC[d][1])
            / IP(src=src, dst=dst)
            / TCP(sport=spt, dport=dpt, seq=seq, ack=ack, flags=flags)
            / payload
        )

    out += [pkt("c", 0, b"", "S"), pkt("s", 0, b"", "SA"), pkt("c", 0, b"", "A")]
    for d, data in turns:
        segs = [pkt(d, pos[d] + i, data[i : i + mss], "PA") for i in range(0, len(data), mss)]
        if reorder and len(segs) > 2:
            segs[0], segs[1] = segs[1], segs[0]
        out += segs
        pos[d] += len(data)
        o = "s" if d == "c" else "c"
        out.append(pkt(o, pos[o], b"", "A"))
    out += [pkt("c", pos["c"], b"", "FA")]
    pos["c"] += 1
    out += [pkt("s", pos["s"], b"", "FA")]
    pos["s"] += 1
    out += [pkt("c", pos["c"], b"", "A")]
    return out


def write(path: Path, packets: list[Packet]) -> None:
    w = PcapWriter(str(path), linktype=1, sync=True)
    for i, p in enumerate(packets):
        p.time = 1_800_000_000 + i / 1000
        w.write(p)
    w.close()


def stream(frames: list[Packet], src: tuple[str, int], dport: int | None = None) -> bytes:
    """Reassemble one direction of the output by sequence number (scapy)."""
    segs: dict[int, bytes] = {}
    isn = None
    for f in frames:
        if TCP not in f or f[IP].src != src[0] or f[TCP].sport != src[1]:
            continue
        if dport is not None and f[TCP].dport != dport:
            continue
        if f[TCP].flags & 0x02:
            isn = f[TCP].seq
            continue
        data = bytes(f[TCP].payload)
        if data:
            segs[f[TCP].seq] = data
    assert isn is not None
    out = bytearray()
    for seq in sorted(segs, key=lambda s: (s - isn - 1) % (1 << 32)):
        off = (seq - isn - 1) % (1 << 32)
        data = segs[seq]
        assert off <= len(out), "gap"
        out[off : off + len(data)] = data
    return bytes(out)


def run(tmp_path: Path, packets: list[Packet]) -> tuple[Any, list[Packet], list[dict[str, Any]], MemoryStore]:
    from gateway.policy import load_policy

    cap, out, events = tmp_path / "in.pcap", tmp_path / "out.pcap", tmp_path / "ev.json"
    write(cap, packets)
    loaded = load_policy(LAB)
    store = MemoryStore()
    insp = ReplayMailInspector(loaded.compiled, store, {"mail": FakeProfile()}, FakeClassifier)
    summary = replay(cap, loaded, out, events, inspector=insp)
    return summary, list(rdpcap(str(out))), read_events(events), store


def test_replay_clean_and_exe_sessions(tmp_path: Path) -> None:
    clean = mail(text="hello\n")
    with_exe = mail((EXE, "a.exe"))
    packets = session_packets(session(clean), 100, 40001) + session_packets(session(with_exe), 64, 40002, True)
    summary, frames, events, store = run(tmp_path, packets)
    assert summary.inspected == len(packets)
    assert summary.forwarded == len(packets)  # nothing refused: every frame goes out once
    got1 = stream(frames, (CLIENT[0], 40001))
    assert data_content(got1) == clean
    got2 = data_content(stream(frames, (CLIENT[0], 40002)))
    assert len(got2) == len(with_exe) and b"TVqQ" not in got2
    att = next(parse(got2).iter_attachments())
    assert att.get_content_type() == "text/plain" and b"removed" in att.get_payload(decode=True)
    assert b"XXXXXXXA" in stream(frames, SERVER, 40002)  # EHLO STARTTLS masked on the way back
    smtp = [e for e in events if e["event_type"] == "smtp"]
    assert sorted(e["email"]["verdict"] for e in smtp) == ["delivered", "sanitized"]
    assert all(e["rule_id"] == "internet-relay-to-lgwan-mail" and e["profile"] == "mail" for e in smtp)
    assert [m.kind for _, m in store.items.values()] == ["part"]


def test_replay_refusal_writes_554_and_rst(tmp_path: Path) -> None:
    packets = session_packets(session(mail((DOCM, "m.docm"))), 200, 40003)
    summary, frames, events, store = run(tmp_path, packets)
    assert summary.forwarded < len(packets)
    to_client = [f for f in frames if f[IP].dst == CLIENT[0] and bytes(f[TCP].payload).startswith(b"554 5.7.1")]
    assert len(to_client) == 1 and to_client[0][Ether].dst == MAC["s"][1]
    assert any(f[IP].dst == SERVER[0] and f[TCP].flags & 0x04 for f in frames)
    c2s = stream(frames, (CLIENT[0], 40003))
    assert b"\r\n.\r\n" not in c2s[c2s.index(b"DATA\r\n") :]
    assert next(e for e in events if e["event_type"] == "smtp")["email"]["verdict"] == "refused"
    assert [m.kind for _, m in store.items.values()] == ["message"]
