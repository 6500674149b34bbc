"""Test helpers for the mail inspector: a scapy-built SMTP session, a fake classifier with the
gateway.sanitize API shape, an in-memory quarantine, and a driver that checks one final verdict
per packet and rebuilds what each receiver got."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from scapy.layers.inet import IP, TCP

from gateway.inspect import Drop, FlowContext, Forward, Inject, InspectConfig, Log, MailInspector, Quarantine
from gateway.inspect.commands import Original, store_original

CLIENT = ("198.19.40.25", 40005)
SERVER = ("198.18.22.25", 25)


@dataclass(frozen=True)
class FakeClassification:
    true_type: str
    description: str
    category: str
    findings: tuple[str, ...]
    verdict: str
    action: str
    reason: str


class FakeClassifier:
    """MZ -> executable (neutralize); PK with 'vbaProject' -> macro (needs the whole part, refuse)."""

    def __init__(self, profile: Any) -> None:
        self.profile = profile

    def _c(self, t: str, cat: str, verdict: str, action: str, reason: str) -> FakeClassification:
        return FakeClassification(t, t, cat, (), verdict, action, reason)

    def classify_head(
        self, head: bytes, names: Any, declared_type: str, body: bool = False
    ) -> FakeClassification | None:
        if head.startswith(b"MZ"):
            return self._c("application/x-dosexec", "executable", "remove", "neutralize", "executable (PE)")
        if head.startswith(b"PK"):
            return None
        if head.startswith(b"<html") or declared_type == "text/html":
            return self._c("text/html", "text", "pass", "pass", "")
        return self._c("text/plain", "text", "pass", "pass", "")

    def classify_full(self, data: bytes, names: Any, declared_type: str, body: bool = False) -> FakeClassification:
        if b"vbaProject" in data:
            return self._c("application/vnd.ms-word.document.macroEnabled.12", "macro", "remove", "refuse", "macro")
        return self._c("application/zip", "archive", "pass", "pass", "")


@dataclass
class FakeProfile:
    head_bytes: int = 16
    max_message_bytes: int = 10 << 20
    max_part_bytes: int = 10 << 20
    html_to_text: bool = True
    defang_links: bool = True
    refuse_on_defects: tuple[str, ...] = ("near-delimiter",)


class MemoryStore:
    def __init__(self) -> None:
        self.items: dict[str, tuple[bytes, Any]] = {}

    def put(self, original: Original, meta: Any, qid: str | None = None, sha256: str | None = None) -> str:
        original = original if isinstance(original, bytes) else b"".join(original)
        qid = qid or f"20261126T000000Z-{len(self.items):012x}"
        assert qid not in self.items, "quarantine id reused"
        # a digest the inspector hands over must be that of exactly these bytes (the store trusts it)
        assert sha256 is None or hashlib.sha256(original).hexdigest() == sha256
        self.items[qid] = (original, meta)
        return qid


@dataclass
class Run:
    insp: MailInspector
    store: Any  # MemoryStore or a QuarantineStore
    sent: dict[int, tuple[str, int, bytes, bytes]] = field(default_factory=dict)  # id -> (dir, off, payload, pkt)
    finals: dict[int, Any] = field(default_factory=dict)
    injected: list[Inject] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    forwarded: list[tuple[str, bytes]] = field(default_factory=list)  # (dir, packet) in wire order
    # > 0: a Quarantine is answered that many packets later (as the daemon's writer thread does),
    # at the latest before the server's next packet (a server answers only what reached it)
    defer_quarantine: int = 0
    deferred: list[list[Any]] = field(default_factory=list)
    order: list[tuple[str, int]] = field(default_factory=list)  # ("forward", packet id) / ("stored", key)

    def execute(self, cmds: list[Any]) -> None:
        work = list(cmds)
        while work:
            c = work.pop(0)
            if isinstance(c, Forward | Drop):
                assert c.packet_id not in self.finals, f"second verdict for {c.packet_id}"
                self.finals[c.packet_id] = c
                if isinstance(c, Forward):
                    self.order.append(("forward", c.packet_id))
                    d, _, _, pkt = self.sent[c.packet_id]
                    self.forwarded.append((d, c.packet if c.packet is not None else pkt))
            elif isinstance(c, Inject):
                self.injected.append(c)
            elif isinstance(c, Log):
                self.events.append(c.event)
            elif isinstance(c, Quarantine):
                if self.defer_quarantine:
                    self.deferred.append([self.defer_quarantine, c])  # answered by tick()
                    continue
                work = self.answer(c) + work

    def answer(self, c: Quarantine) -> list[Any]:
        self.order.append(("stored", c.key))
        return self.insp.quarantined(c.key, *store_original(self.store, c))  # as the adapters do

    def tick(self, *, all_due: bool = False) -> None:
        """A packet went by: answer the deferred puts whose turn it is (all, when `all_due`)."""
        for d in self.deferred:
            d[0] -= 1
        due = [d for d in self.deferred if all_due or d[0] <= 0]
        self.deferred = [d for d in self.deferred if not any(d is x for x in due)]
        for _, c in due:
            self.execute(self.answer(c))


def session(
    message: bytes, ehlo: bytes = b"250-mx.lg.example.jp\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
) -> list[tuple[str, bytes]]:
    return [
        ("s", b"220 mx.lg.example.jp ESMTP\r\n"),
        ("c", b"EHLO relay.example.com\r\n"),
        ("s", ehlo),
        ("c", b"MAIL FROM:<a@example.com>\r\n"),
        ("s", b"250 2.1.0 Ok\r\n"),
        ("c", b"RCPT TO:<b@lg.example.jp>\r\n"),
        ("s", b"250 2.1.5 Ok\r\n"),
        ("c", b"DATA\r\n"),
        ("s", b"354 go\r\n"),
        ("c", message + b".\r\n"),
        ("s", b"250 2.0.0 Ok: queued\r\n"),
        ("c", b"QUIT\r\n"),
        ("s", b"221 2.0.0 Bye\r\n"),
    ]


def drive(
    turns: list[tuple[str, bytes]],
    *,
    mss: int = 1460,
    seed: int = 0,
    shuffle: bool = False,
    dup: float = 0.0,
    profile: FakeProfile | None = None,
    stop_after_refusal: bool = True,
    retransmit: bool = False,
    store: Any = None,
    classifier: Any = FakeClassifier,
    defer_quarantine: int = 0,
    new_qid: Any = None,
    config: InspectConfig | None = None,
) -> Run:
    rnd = random.Random(seed)
    extra = {"new_qid": new_qid} if new_qid is not None else {}
    insp = MailInspector({"mail": profile or FakeProfile()}, classifier, config, **extra)
    run = Run(insp, store if store is not None else MemoryStore(), defer_quarantine=defer_quarantine)
    isn = {"c": rnd.randrange(1 << 32), "s": rnd.randrange(1 << 32)}
    pos = {"c": 0, "s": 0}
    pid = 0
    ts = 1_800_000_000_000_000
    ctx = FlowContext(profile="mail", rule_id="internet-relay-to-mail-inspect")

    def pkt(d: str, off: int, payload: bytes, flags: str = "PA") -> None:
        nonlocal pid, ts
        other = "s" if d == "c" else "c"
        src, dst = (CLIENT, SERVER) if d == "c" else (SERVER, CLIENT)
        seq = (isn[d] + (0 if "S" in flags else 1 + off)) % (1 << 32)
        ack = (isn[other] + 1 + pos[other]) % (1 << 32) if "A" in flags else 0
        raw = bytes(
            IP(src=src[0], dst=dst[0]) / TCP(sport=src[1], dport=dst[1], seq=seq, ack=ack, flags=flags) / payload
        )
        pid += 1
        ts += 1000
        if d == "s":
            run.tick(all_due=True)
        run.sent[pid] = (d, off, payload, raw)
        run.execute(insp.packet(pid, raw, ts, ctx))
        run.tick()

    pkt("c", 0, b"", "S")
    pkt("s", 0, b"", "SA")
    pkt("c", 0, b"", "A")
    for d, data in turns:
        pieces = [(pos[d] + i, data[i : i + mss]) for i in range(0, len(data), mss)]
        pieces += [p for p in pieces if rnd.random() < dup]
        if shuffle:
            rnd.shuffle(pieces)
        for off, p in pieces:
            pkt(d, off, p)
        pos[d] += len(data)
        if retransmit:  # every segment once more, after the turn (the receiver may have lost it)
            for off, p in pieces:
                pkt(d, off, p)
        if run.injected and stop_after_refusal:
            break
    run.tick(all_due=True)
    run.execute(insp.finish())
    # everything the inspector held was given back to its memory budget (no leak, whatever the
    # session did: finished, refused, aborted at the end of the capture)
    assert insp.account.used == 0, f"{insp.account.used} bytes still charged after the session"
    return run


def received(run: Run, d: str) -> bytes:
    """The byte stream the receiver of direction d got (checks overlapping forwards agree)."""
    got: dict[int, int] = {}
    for pid, (dd, off, payload, _) in run.sent.items():
        f = run.finals.get(pid)
        if dd != d or not isinstance(f, Forward) or not payload:
            continue
        data = payload if f.packet is None else bytes(IP(f.packet)[TCP].payload)
        assert len(data) == len(payload)
        for i, b in enumerate(data):
            assert got.setdefault(off + i, b) == b, f"forwarded bytes disagree at {off + i}"
    n = max(got, default=-1) + 1
    out = bytes(got.get(i, 0) for i in range(n))
    assert len(got) == n, "gap in the forwarded stream"
    return out


def data_content(client_stream: bytes) -> bytes:
    """The DATA content a server would commit (unstuffed), from a delivered client stream."""
    start = client_stream.index(b"DATA\r\n") + 6
    end = client_stream.index(b"\r\n.\r\n", start) + 2
    lines = client_stream[start:end].split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def parse(content: bytes) -> EmailMessage:
    msg = message_from_bytes(content, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg
