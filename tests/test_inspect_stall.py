"""Playbooks: a sender stalled by what the inspector holds.

The inspector holds an undecided part (its header block onwards) until the classifier decides.
A TCP sender can only send so far past what the receiver acknowledged (congestion window), and
after a loss inside the held bytes it resends only its first unacknowledged segment, which we
already hold: without help the session deadlocks (found in the lab by tests/test_e2e_mail.py's
impairment shim, and with any allowlist-profile attachment larger than the initial window).
The inspector breaks the stall when that segment comes a second time (not as an exact copy):
the part is released and decided at its end (a "remove" then refuses the message).
"""

from __future__ import annotations

from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from inspect_helpers import CLIENT, SERVER, FakeClassifier, FakeProfile, MemoryStore, Run, session
from scapy.layers.inet import IP, TCP

from gateway.inspect import FlowContext, Forward, MailInspector

ISN_C, ISN_S = 1000, 50000
MSS = 200


def _message(data: bytes) -> bytes:
    m = MIMEMultipart()
    m["Subject"] = "x"
    m.attach(MIMEText("hello\n", "plain", "us-ascii"))
    a = MIMEApplication(data, Name="a.zip")
    a["Content-Disposition"] = 'attachment; filename="a.zip"'
    m.attach(a)
    return m.as_bytes().replace(b"\n", b"\r\n")


class Stalled:
    """One session; the client's DATA content goes out in MSS segments except `lose` (indexes)."""

    def __init__(self) -> None:
        self.run = Run(MailInspector({"mail": FakeProfile()}, FakeClassifier), MemoryStore())
        self.ctx = FlowContext(profile="mail", rule_id="r")
        self.pid = 0
        self.ts = 1_800_000_000_000_000
        self.pos = {"c": 0, "s": 0}
        self.ipid = 1

    def pkt(self, d: str, off: int, payload: bytes, flags: str = "PA", ack: int | None = None) -> None:
        src, dst = (CLIENT, SERVER) if d == "c" else (SERVER, CLIENT)
        isn, other = (ISN_C, ISN_S) if d == "c" else (ISN_S, ISN_C)
        seq = isn if "S" in flags else isn + 1 + off
        a = (other + 1 + (self.pos["s" if d == "c" else "c"] if ack is None else ack)) if "A" in flags else 0
        self.ipid += 1  # a resend differs from the original (IP id), as a real one does
        raw = bytes(
            IP(src=src[0], dst=dst[0], id=self.ipid)
            / TCP(sport=src[1], dport=dst[1], seq=seq, ack=a, flags=flags)
            / payload
        )
        self.pid += 1
        self.ts += 1000
        self.run.sent[self.pid] = (d, off, payload, raw)
        self.run.execute(self.run.insp.packet(self.pid, raw, self.ts, self.ctx))

    def delivered(self) -> int:
        """Contiguous client bytes the server got (what its ACKs say)."""
        got: set[int] = set()
        for pid, (d, off, payload, _) in self.run.sent.items():
            if d == "c" and isinstance(self.run.finals.get(pid), Forward):
                got.update(range(off, off + len(payload)))
        n = 0
        while n in got:
            n += 1
        return n

    def server_acks(self) -> None:
        self.pkt("s", self.pos["s"], b"", "A", ack=self.delivered())

    def until_data(self, message: bytes) -> tuple[int, bytes]:
        self.pkt("c", 0, b"", "S")
        self.pkt("s", 0, b"", "SA")
        self.pkt("c", 0, b"", "A")
        turns = session(message)
        for d, data in turns[:9]:  # up to and including the 354
            self.pkt(d, self.pos[d], data)
            self.pos[d] += len(data)
        return self.pos["c"], turns[9][1]  # DATA content offset, content + ".\r\n"


class Session:
    """A message sent in MSS segments with one lost inside the attachment; the sender then resends
    only its first unacknowledged segment (RTO) until the server's ACK reaches the hole."""

    def __init__(self, data: bytes, lose_in_header: bool = False) -> None:
        self.s = Stalled()
        self.start, content = self.s.until_data(_message(data))
        self.end = self.start + len(content)
        self.segs = [(self.start + i, content[i : i + MSS]) for i in range(0, len(content), MSS)]
        self.lost = len(self.segs) // 2
        if lose_in_header:  # the segment after the attachment's header block starts: it stays incomplete
            at = self.start + content.index(b"Content-Type: application")
            self.lost = next(k for k, (o, d) in enumerate(self.segs) if o <= at < o + len(d)) + 1
        for k, (off, data_) in enumerate(self.segs):
            if k != self.lost:
                self.s.pkt("c", off, data_)
        self.s.server_acks()

    def resend(self, exact: bool = False) -> None:
        acked = self.s.delivered()
        off, data = next((o, d) for o, d in self.segs if o <= acked < o + len(d))
        if exact:  # a network duplicate: the very packet again
            pid = next(p for p, v in self.s.run.sent.items() if v[0] == "c" and v[1] == off)
            self.s.pid += 1
            self.s.run.sent[self.s.pid] = self.s.run.sent[pid]
            self.s.run.execute(self.s.run.insp.packet(self.s.pid, self.s.run.sent[pid][3], self.s.ts, self.s.ctx))
        else:
            self.s.pkt("c", off, data)
        self.s.server_acks()

    def stuck(self) -> bool:
        return self.s.delivered() <= self.segs[self.lost][0] - self.start + self.start - 1

    def finish(self) -> list[dict[str, object]]:
        assert self.s.delivered() >= self.segs[self.lost][0], "the sender never learns of the hole"
        self.s.pkt("c", *self.segs[self.lost])
        self.s.server_acks()
        self.s.run.execute(self.s.run.insp.finish())
        return [e for e in self.s.run.events if e["event_type"] == "smtp"]


CLEAN_ZIP = b"PK\x03\x04" + bytes(range(256)) * 8
MACRO_ZIP = b"PK\x03\x04word/vbaProject.bin" + bytes(range(256)) * 8
EXE = b"MZ\x90\x00" + bytes(range(256)) * 8


def test_one_resend_of_the_edge_keeps_holding() -> None:
    t = Session(CLEAN_ZIP)
    t.resend()
    assert t.stuck()  # a single resend may be a tail-loss probe crossing a late original


def test_the_second_resend_of_the_edge_releases_a_clean_part() -> None:
    t = Session(CLEAN_ZIP)
    t.resend()
    t.resend()
    assert not t.stuck()
    smtp = t.finish()
    assert [e["email"]["verdict"] for e in smtp] == ["delivered"], smtp
    assert not t.s.run.injected


def test_a_late_remove_after_the_stall_refuses_the_message() -> None:
    t = Session(MACRO_ZIP)
    t.resend()
    t.resend()
    smtp = t.finish()
    assert [e["email"]["verdict"] for e in smtp] == ["refused"]
    assert "decided after the part was released" in str(smtp[0]["email"])
    assert any(i.toward == "client" and b"554 5.7.1" in i.packet for i in t.s.run.injected)


def test_exact_copies_of_the_edge_segment_are_duplicates_not_a_stall() -> None:
    t = Session(MACRO_ZIP)
    for _ in range(3):
        t.resend(exact=True)
    assert t.stuck()
    t.resend()
    t.resend()
    assert not t.stuck()


def test_a_stall_inside_a_header_block_releases_it_and_decides_the_part_late() -> None:
    t = Session(MACRO_ZIP, lose_in_header=True)
    t.resend()
    t.resend()
    assert not t.stuck()
    smtp = t.finish()
    assert [e["email"]["verdict"] for e in smtp] == ["refused"]  # could not be neutralized any more
    assert "decided after the part was released" in str(smtp[0]["email"])


def test_a_stall_inside_a_header_block_delivers_a_clean_part_unchanged() -> None:
    t = Session(CLEAN_ZIP, lose_in_header=True)
    t.resend()
    t.resend()
    smtp = t.finish()
    assert [e["email"]["verdict"] for e in smtp] == ["delivered"]


def _sack_session(offer: bool) -> tuple[Stalled, int]:
    """Handshake with SACK permitted and timestamps (as Linux offers), then DATA content with one
    segment missing; returns the session and the content start offset."""
    s = Stalled()
    opts = [("SAckOK", b""), ("Timestamp", (1000, 0))] if offer else []
    for d, flags in (("c", "S"), ("s", "SA")):
        src, dst = (CLIENT, SERVER) if d == "c" else (SERVER, CLIENT)
        seq, ack = (ISN_C, 0) if d == "c" else (ISN_S, ISN_C + 1)
        raw = bytes(
            IP(src=src[0], dst=dst[0]) / TCP(sport=src[1], dport=dst[1], seq=seq, ack=ack, flags=flags, options=opts)
        )
        s.pid += 1
        s.run.sent[s.pid] = (d, 0, b"", raw)
        s.run.execute(s.run.insp.packet(s.pid, raw, s.ts, s.ctx))
    s.pkt("c", 0, b"", "A")
    turns = session(_message(CLEAN_ZIP))
    for d, data in turns[:9]:
        s.pkt(d, s.pos[d], data)
        s.pos[d] += len(data)
    return s, s.pos["c"]


def test_a_segment_past_a_gap_gets_the_client_a_sack_from_the_server_side() -> None:
    s, start = _sack_session(offer=True)
    content = session(_message(CLEAN_ZIP))[9][1]
    s.pkt("c", start, content[:MSS])
    s.pkt("c", start + 2 * MSS, content[2 * MSS : 3 * MSS])  # [MSS, 2*MSS) is missing
    hints = [i for i in s.run.injected if i.reason == "sack"]
    assert len(hints) == 1 and hints[0].toward == "client"
    t = IP(hints[0].packet)[TCP]
    assert (t.sport, t.dport, t.flags) == (SERVER[1], CLIENT[1], "A") and not bytes(t.payload)
    assert t.ack <= ISN_C + 1 + start + MSS  # never acknowledges what the server has not
    sack = dict(t.options)["SAck"]
    assert sack == (ISN_C + 1 + start + 2 * MSS, ISN_C + 1 + start + 3 * MSS)
    assert "Timestamp" in dict(t.options)  # PAWS: the server's timestamp, the client's echoed
    s.pkt("c", start + MSS, content[MSS : 2 * MSS])  # the gap filled: no more hints
    assert len([i for i in s.run.injected if i.reason == "sack"]) == 1


def test_no_sack_hint_when_the_handshake_did_not_offer_sack() -> None:
    s, start = _sack_session(offer=False)
    content = session(_message(CLEAN_ZIP))[9][1]
    s.pkt("c", start + 2 * MSS, content[2 * MSS : 3 * MSS])
    assert not s.run.injected


def test_a_segment_ending_in_crlf_inside_a_neutralized_part_is_not_held() -> None:
    """The MIME parser keeps a chunk's closing CRLF until it knows whether a delimiter follows;
    CR and LF are never rewritten (the DATA framing), so they are released with the rest and a
    segment that ends in one goes out when it comes. Held whole, it stalled a sender whose send
    window that segment filled until its retransmission timeout (found with smtp-source in
    bench/bench_mail.py: a 31744-byte segment held 260 ms, then the RTO)."""
    s = Stalled()
    start, content = s.until_data(_message(EXE))
    body = content.index(b"\r\n\r\nTVqQ") + 4  # the attachment's base64 (b64 of "MZ\x90\x00")
    body_end = content.index(b"\r\n--", body)
    cuts = [i + 2 for i in range(body, body_end) if content[i : i + 2] == b"\r\n"]
    assert len(cuts) > 10
    pos = 0
    for k, cut in enumerate([*cuts, len(content)]):
        s.pkt("c", start + pos, content[pos:cut])
        pos = cut
        if k >= 1 and cut < len(content):  # past the first line: the head (16 bytes) decided it
            assert isinstance(s.run.finals.get(s.pid), Forward), f"segment ending at {cut} held"
    s.server_acks()
    s.run.execute(s.run.insp.finish())
    smtp = [e for e in s.run.events if e["event_type"] == "smtp"]
    assert smtp and smtp[0]["email"]["verdict"] == "sanitized", smtp
