"""The sans-I/O mail inspector: INSPECT packets in, verdicts, injections and events out.

    insp = MailInspector(profiles, classifier_factory)
    cmds = insp.packet(packet_id, ip_packet, ts_us, context)   # every packet of an inspect flow
    cmds += insp.quarantined(key, qid, error)                  # answer to each Quarantine command
    cmds += insp.expire(now_us) / insp.finish()

Per TCP connection: IP/TCP parsing -> Reassembler (holds segments) -> SMTPConnection (both
directions) -> MimeParser over the DATA content -> HeadCollector -> classifier -> actions mapped
back onto the held stream with OffsetMap.map_rewrite -> Reassembler.release -> Forward/Drop.
No sockets, no clock, no threads: live NFQUEUE mode (gateway.inspect.live) and pcap replay
(gateway.inspect.replay) drive this same code. docs/mail-inspection.md explains the policy.

Release policy (hold only what is needed to decide):
- a leaf part is held from its header block on until its head (profile.head_bytes decoded
  bytes) is classified: the header block must still be unreleased to neutralize the part;
- "pass": the rest streams; HTML/links sanitizing holds 3 bytes back (a split `http`);
- "neutralize": the part's headers and body are rewritten in place as they stream;
- undecided after the head (the classifier needs the whole part): held up to
  `InspectConfig.hold_bytes`, then released; a "remove" verdict arriving after release refuses
  the message (the end of DATA is never released before every part is decided);
- "refuse" (or limits, defects, smuggling, a failed rewrite or quarantine): the segment with the
  end of DATA stays held, 554 5.7.1 goes to the client with a FIN, an RST to the server.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.fastpath.common import flow_id_for
from gateway.inspect.commands import Command, Drop, Forward, Inject, Log, Quarantine
from gateway.inspect.packet import PacketError, TcpPacket, build_tcp, parse_tcp, tcp_options, with_payload
from gateway.inspect.rewrite import (
    BodyFiller,
    html_to_text_headers,
    neutralize_headers,
)
from gateway.inspect.textsan import TextRewriter, text_rewriter
from gateway.mailevents import FlowInfo, file_event, smtp_event
from gateway.mime import (
    Boundary,
    Defect,
    Epilogue,
    HeadCollector,
    MimeParser,
    PartData,
    PartEnd,
    PartStart,
    Preamble,
)
from gateway.mime import Event as MimeEvent
from gateway.mime import LimitExceeded as MimeLimit
from gateway.mime import Limits as MimeLimits
from gateway.mime.headers import get_param
from gateway.mime.names import decode_encoded_words
from gateway.smtp import Command as SmtpCommand
from gateway.smtp import (
    DataChunk,
    DataEnd,
    DataStart,
    Recipient,
    Refuse,
    RemoteProtocolError,
    Reply,
    Rewrite,
    RewriteError,
    Side,
    SMTPConnection,
    SMTPError,
    SMTPLimits,
    TransactionEnd,
    TransactionStart,
    refusal_reply,
)
from gateway.smtp import Event as SmtpEvent
from gateway.smtp.data import OffsetMap
from gateway.stream.reassembly import (
    ACK,
    C2S,
    FIN,
    PSH,
    RST,
    S2C,
    SYN,
    Direction,
    MemoryAccount,
    Reassembler,
    ReassemblyError,
    ReassemblyLimits,
    Reset,
    StreamData,
    StreamEnd,
)
from gateway.stream.reassembly import Drop as RDrop
from gateway.stream.reassembly import Forward as RForward
from gateway.stream.reassembly import Output as ROutput

SEQ_MOD = 1 << 32
_EOL_RUN_MAX = 16  # CR/LF bytes _Message.hold looks at past the MIME parser's edge


def _eol_run(data: bytes) -> int:
    """Length of the CR/LF run `data` starts with, counted within its first _EOL_RUN_MAX bytes."""
    head = data[:_EOL_RUN_MAX]
    return len(head) - len(head.lstrip(b"\r\n"))


# --- what the inspector needs of its collaborators (gateway.sanitize, gateway.io.quarantine) ---
class ClassificationLike(Protocol):
    @property
    def true_type(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def category(self) -> str: ...
    @property
    def verdict(self) -> str: ...  # "pass" | "remove"
    @property
    def action(self) -> str: ...  # "pass" | "neutralize" | "refuse"
    @property
    def reason(self) -> str: ...


class ClassifierLike(Protocol):
    def classify_head(
        self, head: bytes, names: Sequence[Any], declared_type: str, body: bool = False
    ) -> ClassificationLike | None: ...
    def classify_full(
        self, data: bytes, names: Sequence[Any], declared_type: str, body: bool = False
    ) -> ClassificationLike: ...


ClassifierFactory = Callable[[Any], ClassifierLike]


def default_classifier(profile: Any) -> ClassifierLike:
    """gateway.sanitize's Classifier (imported late: the inspector's core does not need it)."""
    import importlib

    c: ClassifierLike = importlib.import_module("gateway.sanitize.classify").Classifier(profile)
    return c


def _opt(profile: Any, name: str, default: Any) -> Any:
    value = getattr(profile, name, None)
    return default if value is None else value


@dataclass(frozen=True, slots=True)
class InspectConfig:
    reassembly: ReassemblyLimits = field(default_factory=ReassemblyLimits)
    # bytes of one undecided part (classifier needs the whole part) held before it is released
    # anyway; a later "remove" then refuses the message. Live, held packets sit in the kernel's
    # NFQUEUE (queue_maxlen packets shared by all flows): keep this well below that.
    hold_bytes: int = 1 << 20
    inject: bool = True  # craft the 554 reply and RSTs (replay writes them to --out as well)
    closed_timeout_us: int = 30_000_000  # keep a closed connection for stray retransmissions
    idle_timeout_us: int = 600_000_000
    mime_limits: MimeLimits = field(default_factory=MimeLimits)
    # one budget for everything the inspector holds: reassembly buffers, message contents (kept
    # for a refusal's quarantine and for rewrites), decoded parts kept whole; a flow or message
    # that finds it spent is reset / refused (554), never passed uninspected
    max_memory_bytes: int = 256 << 20


@dataclass(frozen=True, slots=True)
class FlowContext:
    """What the adapter knows about the flow from the policy decision (all optional)."""

    profile: str | None = None
    rule_id: str | None = None
    src_zone: str | None = None
    dest_zone: str | None = None
    src_tier: str | None = None
    dest_tier: str | None = None
    policy_generation: int | None = None


# --- per part / per message state --------------------------------------------------------------
PENDING, PASS, NEUTRALIZE, LATE, REFUSE = "pending", "pass", "neutralize", "late", "refuse"


class _Chunks:
    """Bytes kept as the chunks they came in, charged to the inspector's memory budget: a
    message's content (dot-unstuffed DATA) and a part's decoded bytes while it is kept whole.

    Appending copies nothing: a bytearray grown to megabytes was copied again and again by
    realloc (about eight times the message size in memcpy for a 7 MB message). Reads are of
    recent ranges, mostly inside one chunk."""

    __slots__ = ("account", "charged", "chunks", "ends", "size")

    def __init__(self, account: MemoryAccount | None = None) -> None:
        self.account = account  # charged for what is kept (the inspector's global budget)
        self.charged = 0
        self.chunks: list[bytes] = []
        self.ends: list[int] = []  # content offset just past each chunk
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def append(self, data: bytes) -> bool:
        """Keep `data`; False (nothing kept) when the memory budget has no room for it."""
        if not data:
            return True
        if self.account is not None:
            if not self.account.reserve(len(data)):
                return False
            self.charged += len(data)
        self.chunks.append(data)
        self.size += len(data)
        self.ends.append(self.size)
        return True

    def release(self) -> None:
        """Forget the chunks (the message is done) and give their bytes back to the budget; the
        size stays. Idempotent."""
        if self.account is not None and self.charged:
            self.account.free(self.charged)
        self.charged = 0
        self.chunks, self.ends = [], []

    def cut(self, start: int, end: int) -> bytes:
        """content[start:end] (clamped like a slice)."""
        start, end = max(start, 0), min(end, self.size)
        if start >= end:
            return b""
        i = bisect.bisect_right(self.ends, start)  # the chunk holding `start`
        base = self.ends[i] - len(self.chunks[i])
        if end <= self.ends[i]:
            chunk = self.chunks[i]
            return chunk if start == base and end == self.ends[i] else chunk[start - base : end - base]
        parts = [self.chunks[i][start - base :]]
        i += 1
        while self.ends[i] < end:
            parts.append(self.chunks[i])
            i += 1
        parts.append(self.chunks[i][: end - (self.ends[i] - len(self.chunks[i]))])
        return b"".join(parts)

    def whole(self) -> bytes:
        return b"".join(self.chunks)


@dataclass(eq=False)
class _Part:
    start: PartStart
    state: str = PENDING
    cls: ClassificationLike | None = None
    # the decoded part (joined once, when classified whole or quarantined); None once it is no
    # longer needed or could not be kept whole (`over`)
    decoded: _Chunks | None = None
    over: bool = False  # decoded exceeded max_part_bytes: not kept whole
    size: int = 0
    sha: Any = field(default_factory=hashlib.sha256)
    done_to: int = 0  # content offset up to which the body was rewritten (neutralize)
    filler: BodyFiller | None = None
    san: TextRewriter | None = None
    san_in: int = 0  # content offset of the next byte to feed the sanitizer
    san_out: int = 0  # content offset of the next byte the sanitizer has not settled
    ended: bool = False
    verdict: str = "pass"  # for the file event: pass | neutralized | refused
    reason: str | None = None
    qid: str | None = None  # derived when the part is neutralized (named in its notice)
    stored: bool = False  # the store kept the original under qid


@dataclass(eq=False)
class _Message:
    data_start: int
    omap: OffsetMap
    parser: MimeParser
    heads: HeadCollector
    content: _Chunks = field(default_factory=_Chunks)
    covered: int = 0  # content offset up to which MIME events were seen
    parts: dict[str, _Part] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    current: _Part | None = None
    root: PartStart | None = None
    refuse_reason: str | None = None
    data_end: DataEnd | None = None
    data_end_us: int = 0  # timestamp of the packet that carried the end of DATA
    pending_q: int = 0
    actions: set[str] = field(default_factory=set)  # DEL_ATTACH CHG_TEXT REP_LINK
    finished: bool = False
    qids: list[str] = field(default_factory=list)
    forced: int = 0  # content released by a stall before the MIME parser covered it

    def stalled(self) -> None:
        """The client resends the first byte we hold: it cannot send further (window, or a lost
        segment it will only resend once acknowledged), and only our release brings that ACK.
        Stop holding the undecided part (it is then decided at its end: a "remove" refuses).
        If what is held is the start of a header block the MIME parser has not finished (its
        rest is in the lost segment), release that too when nothing is being rewritten: the
        part it starts can then no longer be neutralized, so it is LATE from its start."""
        p = self.current
        if p is not None and p.state == PENDING:
            p.state = LATE
        if p is None or p.ended or (p.state in (PASS, LATE) and p.san is None):
            self.forced = len(self.content)

    def hold(self) -> int:
        """Content offset before which bytes may be released."""
        h = max(self.covered, self.forced)
        p = self.current
        if p is not None:
            if p.state == PENDING:
                return min(h, p.start.header_start)
            if p.san is not None:
                return min(h, p.san_out)
        # CR and LF bytes just past what the MIME parser covered are final already: every rewrite
        # keeps them in place (the DATA framing, OffsetMap.map_rewrite). The parser holds a
        # chunk's closing CRLF until it knows whether a delimiter follows; released with the
        # rest, a segment that ends in CRLF is not held whole, which stalled a sender whose send
        # window that segment had filled until its retransmission timeout (~200 ms).
        return h + _eol_run(self.content.cut(h, h + _EOL_RUN_MAX))


@dataclass
class _Txn:
    mail_from: str | None = None
    rcpts: list[str] = field(default_factory=list)


class _Conn:
    def __init__(self, insp: MailInspector, tcp: TcpPacket, ts_us: int, ctx: FlowContext, profile: Any) -> None:
        self.insp = insp
        self.family = tcp.family
        self.client = (tcp.src, tcp.sport)
        self.server = (tcp.dst, tcp.dport)
        self.isn: list[int | None] = [None, None]
        self.profile = profile
        self.classifier = insp.classifier_for(ctx.profile, profile)
        a = int.from_bytes(tcp.src if tcp.family == 6 else b"\x00" * 10 + b"\xff\xff" + tcp.src, "big")
        b = int.from_bytes(tcp.dst if tcp.family == 6 else b"\x00" * 10 + b"\xff\xff" + tcp.dst, "big")
        ka, kb = (
            ((a, tcp.sport), (b, tcp.dport)) if (a, tcp.sport) <= (b, tcp.dport) else ((b, tcp.dport), (a, tcp.sport))
        )
        self.flow = FlowInfo(
            flow_id=flow_id_for(ka[0], kb[0], ka[1], kb[1], 6, tcp.seq),  # the SYN: tag = ISN (common.flow_tag)
            src_ip=tcp.src_text,
            src_port=tcp.sport,
            dest_ip=tcp.dst_text,
            dest_port=tcp.dport,
            src_zone=ctx.src_zone,
            dest_zone=ctx.dest_zone,
            src_tier=ctx.src_tier,
            dest_tier=ctx.dest_tier,
            rule_id=ctx.rule_id,
            profile=ctx.profile,
            policy_generation=ctx.policy_generation,
        )
        max_msg = int(_opt(profile, "max_message_bytes", SMTPLimits().max_message_size))
        self.r = Reassembler(insp.config.reassembly, insp.account)
        self.smtp = SMTPConnection(SMTPLimits(max_message_size=max_msg))
        self.pkts: dict[int, tuple[bytes, TcpPacket]] = {}
        self.server_acked = 0  # client stream offset the server acknowledged (its rcv_nxt)
        # for the SACK hints (_sack_hint): both SYNs offered SACK; the server's last window and
        # timestamp, the client's last timestamp
        self.sack_offered = [False, False]
        self.srv_window = 0
        self.srv_ts: bytes | None = None
        self.cli_ts: bytes | None = None
        self.edge = (0, 0)  # (server_acked, client resends of the byte there): stall detection
        self.rewrites: dict[Direction, list[tuple[int, bytes]]] = {C2S: [], S2C: []}
        self.msg: _Message | None = None
        self.txn = _Txn()
        self.tx_id = 0
        self.helo: str | None = None
        self.refused = False
        self.fin_seq = 0  # our seq after the injected FIN (RSTs to a client that goes on talking)
        self.ended = [False, False]
        self.last_us = ts_us
        self.closed_us: int | None = None
        self.ts_us = ts_us
        self.out: list[Command] = []
        self._refusal: tuple[str, int, int, int, int] | None = None  # 554/RST to send (reason, seqs)

    # --- packets ---------------------------------------------------------------------------
    def segment(self, packet_id: int, pkt: bytes, tcp: TcpPacket, d: Direction) -> None:
        if tcp.flags & SYN:
            self.isn[d] = tcp.seq
        if self.refused:
            self._after_refusal(packet_id, tcp, d)
            return
        stall = d is C2S and self._resends_held_edge(pkt, tcp)
        self._track_options(pkt, tcp, d)
        cisn = self.isn[C2S]
        if d is S2C and tcp.flags & ACK and cisn is not None:
            acked = (tcp.ack - cisn - 1) % SEQ_MOD
            if 0 < acked - self.server_acked < 1 << 30:  # newer (streams beyond 1 GiB: approximate)
                self.server_acked = acked
        self.pkts[packet_id] = (pkt, tcp)
        try:
            outs = self.r.segment(packet_id, d, tcp.seq, tcp.ack, tcp.flags, tcp.payload)
        except ReassemblyError as exc:
            self._internal(f"reassembly: {exc}")
            return
        self._handle(outs)
        if stall and self.msg is not None and not self.msg.finished and not self.refused:
            self.msg.stalled()
            self._handle(self._release())
        if d is C2S and tcp.payload and not self.refused:
            self._sack_hint(tcp)

    def _track_options(self, pkt: bytes, tcp: TcpPacket, d: Direction) -> None:
        opts = tcp_options(pkt, tcp) if tcp.payload_offset > tcp.tcp_offset + 20 else {}
        if tcp.flags & SYN:
            self.sack_offered[d] = 4 in opts
        ts = opts.get(8)
        if d is S2C:
            self.srv_window = tcp.window
            if ts is not None and len(ts) == 8:
                self.srv_ts = ts[:4]
        elif ts is not None and len(ts) == 8:
            self.cli_ts = ts[:4]

    def _sack_hint(self, tcp: TcpPacket) -> None:
        """Tell the client what we hold past a gap, as the server would if it saw it.

        Segments past a gap wait here (the inspector parses in order), so the server never sees
        them and sends no duplicate ACKs or SACKs: the client could only find the missing
        segment by a retransmission timeout, and inside a part we hold undecided it would only
        ever resend its first unacknowledged segment (a stall, refused as decided late). A
        duplicate ACK (the server's last ACK, window and timestamp) with SACK blocks for the
        out-of-order bytes we hold makes it resend the gap at once. SACK is advisory: the client
        keeps those bytes until the server acknowledges them. Only when both SYNs offered SACK."""
        ooo = self.r.out_of_order(C2S)
        cisn, sisn = self.isn
        if not ooo or not all(self.sack_offered) or cisn is None or sisn is None or not self.insp.config.inject:
            return
        here = (tcp.seq - cisn - 1) % SEQ_MOD
        ooo.sort(key=lambda r: not (r[0] <= here < r[1]))  # the block with this segment first
        opts = b""
        if self.srv_ts is not None and self.cli_ts is not None:
            opts += b"\x01\x01\x08\x0a" + self.srv_ts + self.cli_ts
        blocks = ooo[: (40 - len(opts) - 4) // 8]
        opts += b"\x01\x01\x05" + bytes((2 + 8 * len(blocks),))
        for a, b in blocks:
            opts += ((cisn + 1 + a) % SEQ_MOD).to_bytes(4, "big") + ((cisn + 1 + b) % SEQ_MOD).to_bytes(4, "big")
        src, dst = self.server, self.client
        seq = (sisn + 1 + self.r.released(S2C)) % SEQ_MOD
        ack = (cisn + 1 + self.server_acked) % SEQ_MOD
        pkt = build_tcp(self.family, src[0], dst[0], src[1], dst[1], seq, ack, ACK, b"", self.srv_window, options=opts)
        self.out.append(Inject(pkt, "client", "sack"))

    def _resends_held_edge(self, pkt: bytes, tcp: TcpPacket) -> bool:
        """A client segment that starts where the server's ACKs stop (the sender's snd_una)
        while we hold bytes there, brings nothing new and is seen for the second time (original
        + 2 retransmissions: not a tail-loss probe crossing a delayed original). A byte-identical
        copy of a held packet is a network duplicate, not a resend. Decided on the packet
        sequence alone, so live and replay agree."""
        isn = self.isn[C2S]
        if isn is None or not tcp.payload or tcp.flags & (SYN | RST):
            return False
        acked, hi = self.server_acked, self.r.delivered(C2S)
        if acked != self.edge[0]:
            self.edge = (acked, 0)  # the server acknowledged more: count afresh
        off = (tcp.seq - isn - 1) % SEQ_MOD
        if off != acked % SEQ_MOD or not self.r.held_ids() or hi - acked < len(tcp.payload):
            return False  # not the first unacknowledged byte, nothing held, or it brings new bytes
        if any(p == pkt for p, _ in self.pkts.values()):
            return False
        self.edge = (acked, self.edge[1] + 1)
        return self.edge[1] >= 2

    def _after_refusal(self, packet_id: int, tcp: TcpPacket, d: Direction) -> None:
        self.out.append(Drop(packet_id, "refused"))
        if self._refusal is not None:
            return  # the 554 waits for the refused message's quarantine: it answers the client then
        if d is C2S and (tcp.payload or tcp.flags & FIN) and not tcp.flags & RST and self.insp.config.inject:
            # The server side is gone: answer as its TCP would, so the client does not hang.
            ack = tcp.seq + len(tcp.payload) + (1 if tcp.flags & FIN else 0)
            self.out.append(Inject(self._craft(S2C, self.fin_seq, ack, RST | ACK), "client", "connection refused"))

    # --- reassembler outputs ---------------------------------------------------------------
    def _handle(self, outs: list[ROutput]) -> None:
        work = list(outs)
        while work:
            o = work.pop(0)
            if isinstance(o, RForward):
                entry = self.pkts.pop(o.segment_id, None)
                if entry is None:  # a refusal decided later in this batch already dropped it
                    continue
                pkt, tcp = entry
                self.out.append(Forward(o.segment_id, with_payload(pkt, tcp, o.payload) if o.rewritten else None))
            elif isinstance(o, RDrop):
                self.pkts.pop(o.segment_id, None)
                self.out.append(Drop(o.segment_id, o.reason))
            elif isinstance(o, Reset):
                self._refuse(f"inspection limit: {o.reason}", reset_done=True)
            elif isinstance(o, StreamData):
                if self.refused:
                    continue
                try:
                    evs = self.smtp.receive_client(o.data) if o.direction is C2S else self.smtp.receive_server(o.data)
                except RemoteProtocolError as exc:
                    self._refuse(f"SMTP protocol error from the server: {exc}")
                    continue
                except SMTPError as exc:
                    self._internal(f"smtp: {exc}")
                    continue
                self._smtp_events(evs)
                if not self.refused:
                    work += self._release()
            elif isinstance(o, StreamEnd):
                self.ended[o.direction] = True
                if o.reason == "fin" and not self.refused:
                    try:
                        self._smtp_events(self.smtp.end_of_stream(Side.CLIENT if o.direction is C2S else Side.SERVER))
                    except SMTPError as exc:
                        self._internal(f"smtp: {exc}")
                if all(self.ended) and self.closed_us is None:
                    self.closed_us = self.ts_us
            # Hold and Anomaly need no command (a Hold's final command comes later)

    def _release(self) -> list[ROutput]:
        out: list[ROutput] = []
        for d in (C2S, S2C):
            lo = self.r.released(d)
            up = min(self.smtp.client_consumed if d is C2S else self.smtp.server_consumed, self.r.delivered(d))
            if d is C2S and self.msg is not None and not self.msg.finished:
                up = min(up, self.msg.omap.to_stream(self.msg.hold()))
            if up <= lo:
                continue
            rws = self._take_rewrites(d, lo, up)
            if rws is None:
                self._internal("a rewrite below the released edge")
                return out
            try:
                out += self.r.release(d, up, rws)
            except ReassemblyError as exc:
                self._internal(f"release: {exc}")
                return out
        return out

    def _take_rewrites(self, d: Direction, lo: int, up: int) -> list[tuple[int, bytes]] | None:
        take: list[tuple[int, bytes]] = []
        keep: list[tuple[int, bytes]] = []
        for off, data in self.rewrites[d]:
            if off < lo:
                return None
            end = off + len(data)
            if end <= up:
                take.append((off, data))
            elif off < up:
                take.append((off, data[: up - off]))
                keep.append((up, data[up - off :]))
            else:
                keep.append((off, data))
        self.rewrites[d] = keep
        return take

    # --- SMTP ------------------------------------------------------------------------------
    def _smtp_events(self, evs: list[SmtpEvent]) -> None:
        for e in evs:
            if self.refused:
                return
            if isinstance(e, Rewrite):
                self.rewrites[C2S if e.side is Side.CLIENT else S2C].append((e.offset, e.data))
            elif isinstance(e, SmtpCommand) and e.verb in ("EHLO", "HELO"):
                self.helo = e.arg
            elif isinstance(e, TransactionStart):
                self.txn = _Txn(mail_from=e.mail_from)
            elif isinstance(e, Recipient) and e.accepted:
                self.txn.rcpts.append(e.address)
            elif isinstance(e, DataStart):
                assert self.smtp.offset_map is not None
                if self.msg is not None:
                    _release(self.msg)  # done with (finished or refused) before the next DATA
                self.msg = _Message(
                    content=_Chunks(self.insp.account),
                    data_start=e.offset,
                    omap=self.smtp.offset_map,
                    parser=MimeParser(self.insp.config.mime_limits),
                    heads=HeadCollector(int(_opt(self.profile, "head_bytes", 4096))),
                )
            elif isinstance(e, DataChunk):
                self._data(e)
            elif isinstance(e, DataEnd):
                self._data_end(e)
            elif isinstance(e, Refuse):
                self._refuse(e.reason)
            elif isinstance(e, TransactionEnd) and e.reason == "data":
                self.txn = _Txn()
            elif isinstance(e, Reply):
                pass

    # --- MIME ------------------------------------------------------------------------------
    def _data(self, e: DataChunk) -> None:
        m = self.msg
        if m is None or m.finished:
            return
        if not m.content.append(e.data):
            # the inspector's memory budget is spent (many large messages at once): refuse now,
            # before anything is released uninspected; the sender keeps the message (554)
            self.insp._count("memory_limit")
            self._refuse("gateway inspection memory limit reached; try again later")
            return
        for ev in m.parser.feed(e.data):
            self._mime(m, ev)
            if self.refused:
                return

    def _data_end(self, e: DataEnd) -> None:
        m = self.msg
        if m is None:
            return
        m.data_end = e
        m.data_end_us = self.ts_us
        for ev in m.parser.end():
            self._mime(m, ev)
            if self.refused:
                return
        self._maybe_finish(m)

    def _mime(self, m: _Message, ev: MimeEvent) -> None:
        if isinstance(ev, PartStart):
            m.covered = ev.body_start
            m.kinds[ev.path] = ev.kind
            if ev.path == "":
                m.root = ev
            if ev.kind == "leaf":
                p = _Part(ev, decoded=_Chunks(self.insp.account), done_to=ev.body_start, san_out=ev.body_start)
                if ev.header_start < m.forced:
                    p.state = LATE  # a stall released part of its headers: it cannot be neutralized
                m.parts[ev.path] = p
                m.current = p
            m.heads.add(ev)
        elif isinstance(ev, PartData):
            m.covered = ev.end
            p = m.parts[ev.path]
            p.size += len(ev.decoded)
            p.sha.update(ev.decoded)
            if p.decoded is not None and (
                len(p.decoded) + len(ev.decoded) > int(_opt(self.profile, "max_part_bytes", 64 << 20))
                or not p.decoded.append(ev.decoded)
            ):
                # too large to keep whole (or no memory left to): a verdict that needs the whole
                # part, or a quarantine of it, refuses the message instead
                _drop_decoded(p)
                p.over = True
            if m.heads.add(ev) is not None and p.state == PENDING:
                self._decide_head(m, p)
            if p.state == NEUTRALIZE:
                self._fill(m, p, ev.end)
            elif p.state == PASS and p.san is not None:
                self._sanitize(m, p, ev.end)
            elif p.state == PENDING and m.covered - p.start.header_start > self.insp.config.hold_bytes:
                p.state = LATE  # stop holding; a later "remove" refuses the message
        elif isinstance(ev, PartEnd):
            p2 = m.parts.get(ev.path)
            if p2 is None:
                return  # a container
            if m.heads.add(ev) is not None and p2.state == PENDING:
                self._decide_head(m, p2)
            if p2.state in (PENDING, LATE):
                self._decide_full(m, p2)
            if p2.state == PASS and p2.san is not None:
                self._sanitize(m, p2, ev.body_end, final=True)
            if p2.state == NEUTRALIZE:
                self._fill(m, p2, ev.body_end)
                self._quarantine_part(m, p2)
            p2.ended = True
            m.heads.pop(ev.path)
            if m.current is p2:
                m.current = None
        elif isinstance(ev, Boundary):
            m.covered = ev.end
        elif isinstance(ev, Preamble | Epilogue):
            m.covered = ev.offset + len(ev.raw)
        elif isinstance(ev, Defect):
            refuse_on = _opt(self.profile, "refuse_on_defects", ())
            if isinstance(refuse_on, bool):
                refuse_on = (
                    ("near-delimiter", "delimiter-after-close", "bare-cr", "encoded-container") if refuse_on else ()
                )
            if ev.kind in refuse_on:
                self._refuse_message(m, f"ambiguous MIME structure ({ev.kind})")
        elif isinstance(ev, MimeLimit):
            self._refuse_message(m, f"MIME limit exceeded: {ev.limit}")

    def _declared(self, p: _Part) -> str:
        return p.start.content_type.mime_type

    def _is_body(self, p: _Part) -> bool:
        """The message text a mail client shows (not an attachment): an unnamed text/plain or
        text/html part that is not marked as an attachment. attachments = "remove" keeps it."""
        s = p.start
        return not s.names and s.disposition != "attachment" and self._declared(p) in ("text/plain", "text/html")

    def _decide_head(self, m: _Message, p: _Part) -> None:
        try:
            cls = self.classifier.classify_head(
                m.heads.head(p.start.path), p.start.names, self._declared(p), body=self._is_body(p)
            )
        except Exception as exc:  # a classifier bug must not pass a part: refuse
            self._refuse_message(m, f"classifier error: {exc!r}")
            return
        if cls is not None:
            self._apply(m, p, cls, late=False)

    def _decide_full(self, m: _Message, p: _Part) -> None:
        late = p.state == LATE
        if p.decoded is None:
            self._refuse_message(m, "part too large to inspect whole")
            p.state = REFUSE
            return
        try:
            cls = self.classifier.classify_full(
                p.decoded.whole(), p.start.names, self._declared(p), body=self._is_body(p)
            )
        except Exception as exc:
            self._refuse_message(m, f"classifier error: {exc!r}")
            return
        self._apply(m, p, cls, late=late)

    def _apply(self, m: _Message, p: _Part, cls: ClassificationLike, late: bool) -> None:
        p.cls = cls
        action = cls.action if cls.verdict == "remove" else "pass"
        if action == "pass":
            p.state = PASS
            _drop_decoded(p)
            if not late:
                self._setup_sanitizer(m, p)
            elif bool(_opt(self.profile, "html_to_text", False)) and "text/html" in (self._declared(p), cls.true_type):
                # the classifier passes HTML text because it is converted in place; released already
                self._refuse_message(m, "HTML text released before it could be converted to text")
            return
        p.reason = cls.reason
        if action == "neutralize" and not late:
            msg_level = p.start.path == "" or m.kinds.get(p.start.path.rpartition(".")[0]) == "message"
            block = m.content.cut(p.start.header_start, p.start.header_end)
            p.qid = self.insp.new_qid(self.ts_us)
            new = neutralize_headers(block, msg_level, p.qid)
            if new is None:
                self._refuse_message(m, f"{cls.reason} (part cannot be neutralized in place)")
                p.state = REFUSE
                return
            if not self._rewrite(m, p.start.header_start, new):
                p.state = REFUSE
                return
            p.state = NEUTRALIZE
            p.verdict = "neutralized"
            p.filler = BodyFiller(p.start.transfer_encoding, self._notice(p, p.qid))
            m.actions.add("DEL_ATTACH")
            self._fill(m, p, m.covered)
            return
        p.state = REFUSE
        p.verdict = "refused"
        why = cls.reason if not late else f"{cls.reason} (decided after the part was released)"
        self._refuse_message(m, why)

    def _notice(self, p: _Part, qid: str) -> str:
        """The quarantine id first: a part shorter than the notice carries a truncated one
        (BodyFiller), and the id is what the recipient needs to ask for the original."""
        name = p.start.filename.decoded if p.start.filename is not None else "(no name)"
        return (
            f"{qid}: lgwan-gateway removed the attachment {name!r} ({p.reason}). The original "
            "is kept under this quarantine id; ask your administrator to release it.\r\n"
        )

    def _fill(self, m: _Message, p: _Part, upto: int) -> None:
        if p.filler is None or upto <= p.done_to:
            return
        a = p.done_to
        old = m.content.cut(a, upto)
        self._rewrite(m, a, p.filler.fill(old), old)
        p.done_to = upto

    def _setup_sanitizer(self, m: _Message, p: _Part) -> None:
        ctype = self._declared(p)
        cls_type = p.cls.true_type if p.cls is not None else ""
        html = bool(_opt(self.profile, "html_to_text", False)) and "text/html" in (ctype, cls_type)
        links = bool(_opt(self.profile, "defang_links", False)) and (ctype.startswith("text/") or html)
        charset = get_param(p.start.content_type.params, "charset")
        san = text_rewriter(html, links, p.start.transfer_encoding, charset.decode("latin-1") if charset else None)
        if san is None:  # UTF-16/32 text, an unknown transfer encoding: not rewritable byte-wise
            if html:  # the classifier passes an HTML message text only because it is converted here
                self._refuse_message(m, "HTML text that cannot be converted to text in place")
            return
        if html:
            new = html_to_text_headers(m.content.cut(p.start.header_start, p.start.header_end))
            if new is not None and self._rewrite(m, p.start.header_start, new):
                m.actions.add("CHG_TEXT")
        p.san = san
        p.san_in = p.san_out = p.start.body_start
        self._sanitize(m, p, m.covered)

    def _sanitize(self, m: _Message, p: _Part, upto: int, final: bool = False) -> None:
        san = p.san
        assert san is not None
        new = b""
        try:
            if upto > p.san_in:
                new = san.feed(m.content.cut(p.san_in, upto))
                p.san_in = upto
            if final:
                new += san.final()
        except Exception as exc:  # a rewriter bug must not pass the text unsanitized: fail closed
            self._internal(f"text rewrite: {exc!r}")
            return
        if new:
            self._rewrite(m, p.san_out, new)
            p.san_out += len(new)
        if san.blanked:
            m.actions.add("CHG_TEXT")
        if san.defanged:
            m.actions.add("REP_LINK")

    def _rewrite(self, m: _Message, content_offset: int, new: bytes, old: bytes | None = None) -> bool:
        """`old`: the content's bytes at content_offset if the caller has them already. A run of
        CR/LF it starts with and keeps is left out: those may have been released before the MIME
        parser covered them (_Message.hold), below the released edge. Only that run: the
        framing check takes a rewrite's first byte for a line start."""
        if old is None:
            old = m.content.cut(content_offset, content_offset + len(new))
        if old == new:
            return True
        eol = _eol_run(old)
        if eol and new[:eol] == old[:eol]:
            content_offset, old, new = content_offset + eol, old[eol:], new[eol:]
        try:
            rws = m.omap.map_rewrite(content_offset, old, new)
        except RewriteError as exc:
            self._refuse_message(m, f"cannot rewrite in place: {exc}")
            return False
        self.rewrites[C2S].extend(rws)
        return True

    # --- quarantine and message end ----------------------------------------------------------
    def _meta(self, m: _Message, kind: str, reason: str, action: str, p: _Part | None) -> Any:
        from gateway.io.quarantine import QuarantineMeta

        fname = p.start.filename if p is not None else None
        return QuarantineMeta(
            kind=kind,  # type: ignore[arg-type]
            flow=self.flow,
            reason=reason,
            action=action,  # type: ignore[arg-type]
            mail_from=self.txn.mail_from,
            rcpt_to=tuple(self.txn.rcpts),
            message_id=self._message_id(m),
            subject=self._subject(m),
            part_path=p.start.path if p is not None else None,
            filename_raw=fname.raw.decode("latin-1") if fname is not None else None,
            filename=fname.decoded if fname is not None else None,
            declared_type=self._declared(p) if p is not None else None,
            detected_type=p.cls.true_type if p is not None and p.cls is not None else None,
            category=p.cls.category if p is not None and p.cls is not None else None,
        )

    def _quarantine_part(self, m: _Message, p: _Part) -> None:
        if p.decoded is None:
            self._refuse_message(m, "removed part too large to keep whole in quarantine")
            return
        assert p.qid is not None
        key = self.insp.new_key(self, m, p, p.qid)
        m.pending_q += 1
        meta = self._meta(m, "part", p.reason or "", "neutralized", p)
        self.out.append(Quarantine(key, tuple(p.decoded.chunks), meta, p.qid, p.sha.hexdigest()))
        _drop_decoded(p)

    def quarantined(self, m: _Message, p: _Part | None, qid: str | None, error: str | None) -> None:
        m.pending_q -= 1
        if p is None:  # the whole message of a refusal
            if qid is not None:
                m.qids.append(qid)
            self._inject_refusal(qid)
            self._log_message(m, "refused", m.refuse_reason)
            return
        if qid is None:
            # A part we cannot keep is a part we must not remove silently: refuse instead.
            self._refuse_message(m, f"quarantine unavailable: {error}")
            if m.data_end is not None:
                self._maybe_finish(m)
            return
        p.stored = True
        m.qids.append(qid)
        if m.data_end is not None:
            self._maybe_finish(m)
            if not self.refused:
                self._handle(self._release())

    def _refuse_message(self, m: _Message, reason: str) -> None:
        if m.refuse_reason is None:
            m.refuse_reason = reason

    def _maybe_finish(self, m: _Message) -> None:
        if m.finished or m.pending_q or m.data_end is None:
            return
        if m.refuse_reason is not None:
            self._refuse(m.refuse_reason)
            return
        m.finished = True
        verdict = "sanitized" if m.actions else "delivered"
        self._log_message(m, verdict, " ".join(sorted(m.actions, key=_ACTION_ORDER.index)) or None)
        _release(m)

    def _log_message(self, m: _Message, verdict: str, reason: str | None) -> None:
        size = m.data_end.size if m.data_end is not None else len(m.content)
        ts = self.ts_us
        self.out.append(
            Log(
                smtp_event(
                    ts,
                    self.flow,
                    self.tx_id,
                    helo=self.helo,
                    mail_from=self.txn.mail_from,
                    rcpt_to=self.txn.rcpts,
                    message_id=self._message_id(m),
                    subject=self._subject(m),
                    size=size,
                    verdict=verdict,  # type: ignore[arg-type]
                    reason=reason,
                    quarantine_ids=m.qids,
                )
            )
        )
        for p in m.parts.values():
            fn = p.start.filename
            fverdict = "refused" if verdict == "refused" else p.verdict
            self.out.append(
                Log(
                    file_event(
                        ts,
                        self.flow,
                        self.tx_id,
                        path=p.start.path,
                        filename_raw=fn.raw.decode("latin-1") if fn is not None else None,
                        filename=fn.decoded if fn is not None else None,
                        declared_type=self._declared(p),
                        detected_type=p.cls.true_type if p.cls is not None else None,
                        size=p.size,
                        sha256=p.sha.hexdigest(),
                        verdict=fverdict,  # type: ignore[arg-type]
                        category=p.cls.category if p.cls is not None else None,
                        reason=None if fverdict == "pass" else p.reason or f"message refused: {reason}",
                        quarantine_id=p.qid if fverdict != "pass" and p.stored else None,
                        magic=p.cls.description if p.cls is not None else None,
                    )
                )
            )
        self.tx_id += 1

    def _header(self, m: _Message, name: str) -> bytes | None:
        if m.root is None:
            return None
        for h in m.root.headers:
            if h.lname == name:
                return h.value
        return None

    def _message_id(self, m: _Message) -> str | None:
        v = self._header(m, "message-id")
        return v.decode("ascii", "replace").strip() if v is not None else None

    def _subject(self, m: _Message) -> str | None:
        v = self._header(m, "subject")
        return decode_encoded_words(v)[0] if v is not None else None

    # --- refusal -----------------------------------------------------------------------------
    def _craft(self, d: Direction, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
        """A segment as if sent by the sender of direction d."""
        src, dst = (self.client, self.server) if d is C2S else (self.server, self.client)
        return build_tcp(self.family, src[0], dst[0], src[1], dst[1], seq, ack, flags, payload)

    def _refuse(self, reason: str, reset_done: bool = False) -> None:
        """Refuse the session from here on: nothing more is released; 554 + FIN to the client,
        RST to the server (live); held segments are dropped."""
        if self.refused:
            return
        m = self.msg if self.msg is not None and not self.msg.finished else None
        if m is not None:
            m.refuse_reason = m.refuse_reason or reason
        cisn, sisn = self.isn
        if self.insp.config.inject and cisn is not None and sisn is not None:
            # sequence numbers as of now (nothing more is released or delivered after this)
            self._refusal = (
                reason,
                (sisn + 1 + self.r.released(S2C)) % SEQ_MOD,
                (cisn + 1 + self.r.delivered(C2S)) % SEQ_MOD,
                (cisn + 1 + self.r.released(C2S)) % SEQ_MOD,
                (sisn + 1 + self.r.delivered(S2C)) % SEQ_MOD,
            )
        if m is None:
            self._inject_refusal(None)
        self.refused = True
        if not reset_done:
            with contextlib.suppress(ReassemblyError):
                self._handle(self.r.abort("refused"))
        for pid in list(self.pkts):  # anything the reassembler no longer tracks
            self.out.append(Drop(pid, "refused"))
        self.pkts.clear()
        if m is not None:
            # the 554 goes out once the original is stored (quarantined), naming its id
            qid = self.insp.new_qid(self.ts_us)
            key = self.insp.new_key(self, m, None, qid)
            m.pending_q += 1
            meta = self._meta(m, "message", reason, "refused", None)
            self.out.append(Quarantine(key, tuple(m.content.chunks), meta, qid))
            _release(m)
        else:
            self.out.append(Log(self._refusal_event(reason)))
        self.closed_us = self.ts_us

    def _inject_refusal(self, qid: str | None) -> None:
        """554 5.7.1 (+ FIN) to the client, naming the quarantine id of the refused message when
        it was stored; RST to the server."""
        if self._refusal is None:
            return
        reason, srv_seq, cli_ack, cli_seq, srv_ack = self._refusal
        self._refusal = None
        reply = refusal_reply(with_quarantine_id(reason, qid))
        self.out.append(Inject(self._craft(S2C, srv_seq, cli_ack, PSH | ACK | FIN, reply), "client", reason))
        self.fin_seq = (srv_seq + len(reply) + 1) % SEQ_MOD
        self.out.append(Inject(self._craft(C2S, cli_seq, srv_ack, RST | ACK), "server", reason))

    def _refusal_event(self, reason: str) -> dict[str, Any]:
        ev = smtp_event(
            self.ts_us,
            self.flow,
            self.tx_id,
            helo=self.helo,
            mail_from=self.txn.mail_from,
            rcpt_to=self.txn.rcpts,
            message_id=None,
            subject=None,
            size=0,
            verdict="refused",
            reason=reason,
        )
        self.tx_id += 1
        return ev

    def _internal(self, what: str) -> None:
        """Our own invariant broke: fail closed (refuse; never forward uninspected)."""
        self._refuse(f"inspection failed ({what})")

    def abort(self, reason: str) -> None:
        if not self.refused:
            with contextlib.suppress(ReassemblyError):
                self._handle(self.r.abort(reason))
        for pid in list(self.pkts):
            self.out.append(Drop(pid, reason))
        self.pkts.clear()
        if self.msg is not None:
            _release(self.msg)


def _drop_decoded(p: _Part) -> None:
    """The part's decoded bytes are no longer needed (decided, quarantined, or too large)."""
    if p.decoded is not None:
        p.decoded.release()
    p.decoded = None


def _release(m: _Message) -> None:
    """The message is done (logged, refused or aborted): its content and any part's decoded
    bytes leave the budget, and memory unless a Quarantine command still holds those chunks
    (until its put is done; the live writer bounds them: max_pending queued, one per thread)."""
    m.content.release()
    for p in m.parts.values():
        _drop_decoded(p)


_ACTION_ORDER = ["DEL_ATTACH", "CHG_TEXT", "REP_LINK"]
REPLY_TEXT_MAX = 400  # refusal_reply keeps this much of the text


def with_quarantine_id(reason: str, qid: str | None) -> str:
    """The 554 text: the reason, shortened so that the quarantine id always fits after it."""
    if qid is None:
        return reason
    tail = f" (quarantine id {qid})"
    return reason[: REPLY_TEXT_MAX - len(tail)] + tail


def default_qid(ts_us: int) -> str:
    """gateway.io.quarantine.new_id at the packet's time (imported late, like the classifier)."""
    import importlib

    qid: str = importlib.import_module("gateway.io.quarantine").new_id(ts_us / 1e6)
    return qid


class MailInspector:
    """All inspected TCP connections of one worker (or one replay). Not thread-safe."""

    def __init__(
        self,
        profiles: Mapping[str, Any],
        classifier_factory: ClassifierFactory = default_classifier,
        config: InspectConfig | None = None,
        default_profile: str | None = None,
        new_qid: Callable[[int], str] = default_qid,
    ) -> None:
        """new_qid(ts_us): a fresh quarantine id (unique across workers and restarts: the
        store's `new_id` uses 48 random bits), derived when a part is neutralized or a message
        refused so that the notice and the 554 can name it."""
        self.new_qid = new_qid
        self.profiles = dict(profiles)
        self.classifier_factory = classifier_factory
        self.config = config or InspectConfig()
        self.default_profile = default_profile or (next(iter(self.profiles)) if len(self.profiles) == 1 else None)
        self.account = MemoryAccount(self.config.max_memory_bytes)
        self._conns: dict[tuple[int, bytes, int, bytes, int], _Conn] = {}
        self._classifiers: dict[str, ClassifierLike] = {}
        self._keys: dict[int, tuple[_Conn, _Message, _Part | None, str, int]] = {}
        self._next_key = 1
        self.counters: dict[str, int] = {}

    def classifier_for(self, name: str | None, profile: Any) -> ClassifierLike:
        k = name or ""
        c = self._classifiers.get(k)
        if c is None:
            c = self._classifiers[k] = self.classifier_factory(profile)
        return c

    def reset_classifiers(self) -> None:
        """After a reload: classifiers are rebuilt from the new profiles on first use."""
        self._classifiers.clear()

    def new_key(self, conn: _Conn, m: _Message, p: _Part | None, qid: str) -> int:
        k = self._next_key
        self._next_key += 1
        self._keys[k] = (conn, m, p, qid, conn.ts_us)
        return k

    @property
    def connections(self) -> int:
        return len(self._conns)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    @staticmethod
    def _key(t: TcpPacket) -> tuple[int, bytes, int, bytes, int]:
        a, b = (t.src, t.sport), (t.dst, t.dport)
        lo, hi = (a, b) if a <= b else (b, a)
        return (t.family, lo[0], lo[1], hi[0], hi[1])

    def packet(self, packet_id: int, pkt: bytes, ts_us: int, context: FlowContext | None = None) -> list[Command]:
        """One packet of an inspect flow. Returns commands (this packet's, or earlier held ones')."""
        try:
            tcp = parse_tcp(pkt)
        except PacketError as exc:
            self._count("not_inspectable")
            return [Drop(packet_id, f"not_inspectable: {exc}")]
        key = self._key(tcp)
        conn = self._conns.get(key)
        if conn is None or (tcp.flags & (SYN | ACK) == SYN and conn.closed_us is not None):
            if tcp.flags & (SYN | ACK | RST | FIN) != SYN:
                self._count("no_connection")
                return [Drop(packet_id, "no_connection")]
            ctx = context or FlowContext()
            name = ctx.profile if ctx.profile in self.profiles else self.default_profile
            if name is None:
                self._count("no_profile")
                return [Drop(packet_id, "no_profile")]
            if ctx.profile != name:
                ctx = FlowContext(
                    name, ctx.rule_id, ctx.src_zone, ctx.dest_zone, ctx.src_tier, ctx.dest_tier, ctx.policy_generation
                )
            if conn is not None:
                conn.abort("connection_reused")
            conn = self._conns[key] = _Conn(self, tcp, ts_us, ctx, self.profiles[name])
            self._count("connections")
        d = C2S if (tcp.src, tcp.sport) == conn.client else S2C
        conn.ts_us = ts_us
        conn.last_us = ts_us
        conn.segment(packet_id, pkt, tcp, d)
        return self._drain(conn)

    def quarantined(self, key: int, qid: str | None, error: str | None = None) -> list[Command]:
        """The adapter stored (qid) or could not store (error) a Quarantine command's original."""
        conn, m, p, want, asked_us = self._keys.pop(key)
        if qid is not None and qid != want:  # the notice names `want`: a store must keep it
            qid, error = None, f"stored as {qid}, not as the id {want} the notice names"
        # What follows (the smtp event, a refusal) is timed as if the store had answered at once,
        # as replay's does: at the packet that asked, or at the end of DATA if that came later.
        # A live store answering from a writer thread answers after later packets; their times
        # must not leak into the events, which are the same live and in replay.
        now_us = conn.ts_us
        conn.ts_us = max(asked_us, m.data_end_us if m.data_end is not None else 0)
        try:
            conn.quarantined(m, p, qid, error)
        finally:
            conn.ts_us = now_us
        return self._drain(conn)

    def _drain(self, conn: _Conn) -> list[Command]:
        out, conn.out = conn.out, []
        return out

    def expire(self, now_us: int) -> list[Command]:
        """Forget closed connections and abort idle ones (their held packets are dropped)."""
        out: list[Command] = []
        for key, c in list(self._conns.items()):
            closed = c.closed_us is not None and now_us - c.closed_us > self.config.closed_timeout_us
            idle = now_us - c.last_us > self.config.idle_timeout_us
            if closed or idle:
                c.abort("expired")
                out += self._drain(c)
                if not any(k[0] is c for k in self._keys.values()):
                    del self._conns[key]
        return out

    def finish(self) -> list[Command]:
        """End of input (replay): every held packet is dropped; pending messages never delivered."""
        out: list[Command] = []
        for c in self._conns.values():
            c.abort("end_of_capture")
            out += self._drain(c)
        return out
