"""Inline TCP reassembly for inspected flows (sans-I/O).

The gateway sits inline and *holds* segments: a byte reaches the receiver only after the
inspector has parsed it and released it, possibly rewritten (same length, so no sequence number
ever changes). One `Reassembler` per TCP connection handles both directions.

    r = Reassembler(limits, account)
    out = r.segment(segment_id, direction, seq, ack, flags, payload)
    # out: Hold / Forward / Drop / Reset / Anomaly for the packet layer,
    #      StreamData / StreamEnd for the inspector
    out += r.release(direction, up_to, rewrites=[(offset, new_bytes)])

Offsets are absolute stream offsets per direction: byte 0 is the byte after the SYN (ISN+1).
Sequence numbers are unwrapped modulo 2**32 against the contiguous edge, so streams longer than
4 GiB and ISNs near 2**32 work.

Guarantees (tested):
- every segment id gets exactly one final command, `Forward` or `Drop` (`Hold` may come first);
- a `Forward` carries, for every byte, exactly the byte that was released (after rewrites): a
  retransmission or overlap of released bytes is rewritten to match, so an original byte never
  slips past a rewrite. Bytes the receiver already acknowledged (and we freed) are sent as zeros:
  the receiver discards them (they are below its rcv_nxt), and zeros cannot leak anything;
- conflicting overlaps (different bytes for an offset not yet released) raise `Anomaly` and,
  by `OverlapPolicy`, either keep the first bytes (the later segment is rewritten to them: the
  receiver only ever sees the bytes we inspected, so there is no target-OS ambiguity to exploit)
  or drop the later segment;
- memory is bounded per flow and globally (`MemoryAccount`); a flow over a cap is `Reset` (or
  the segment dropped, by `LimitPolicy`), never passed uninspected.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NoReturn

SEQ_MOD = 1 << 32
_HALF = 1 << 31

# TCP flag bits as in the header.
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10


class Direction(enum.IntEnum):
    CLIENT_TO_SERVER = 0  # the initiator's (SYN sender's) stream
    SERVER_TO_CLIENT = 1


C2S = Direction.CLIENT_TO_SERVER
S2C = Direction.SERVER_TO_CLIENT


class OutOfOrderPolicy(enum.Enum):
    HOLD = "hold"  # keep within the window (needed for replay: a capture cannot retransmit)
    DROP = "drop"  # drop, the sender retransmits (live only; saves memory)


class OverlapPolicy(enum.Enum):
    FIRST = "first"  # first bytes win, later segment rewritten to them (normalization)
    DROP = "drop"  # a segment that conflicts with held bytes is dropped


class LimitPolicy(enum.Enum):
    RESET = "reset"  # reset the flow (refuse): default, fail closed
    DROP = "drop"  # drop the segment; the sender retransmits once memory frees (live only)


class FlowState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"  # RST seen: held data dropped, further data dropped
    RESET = "reset"  # we reset the flow (cap exceeded)
    ERROR = "error"  # the caller misused the API; every call raises


# Flow state transitions, h11 style: (state, event) -> state. Anything else stays as it is.
_TRANSITIONS: dict[tuple[FlowState, str], FlowState] = {
    (FlowState.OPEN, "peer_rst"): FlowState.CLOSED,
    (FlowState.OPEN, "limit"): FlowState.RESET,
    (FlowState.OPEN, "abort"): FlowState.CLOSED,
    (FlowState.OPEN, "misuse"): FlowState.ERROR,
    (FlowState.CLOSED, "misuse"): FlowState.ERROR,
    (FlowState.RESET, "misuse"): FlowState.ERROR,
}


class ReassemblyError(Exception):
    """Base of the errors this module raises."""


class LocalProtocolError(ReassemblyError):
    """The caller (inspector/adapter) misused the API. The reassembler is now in ERROR."""


@dataclass(frozen=True, slots=True)
class ReassemblyLimits:
    window: int = 1 << 20  # how far past the contiguous edge a held segment may reach
    max_flow_bytes: int = 8 << 20  # bytes buffered per flow (unreleased + released-unacked)
    max_flow_segments: int = 8192  # segments held per flow
    out_of_order: OutOfOrderPolicy = OutOfOrderPolicy.HOLD
    overlap: OverlapPolicy = OverlapPolicy.FIRST
    on_limit: LimitPolicy = LimitPolicy.RESET


class MemoryAccount:
    """Global byte budget shared by all reassemblers (single-threaded, like the engine)."""

    __slots__ = ("limit", "peak", "used")

    def __init__(self, limit: int = 256 << 20) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0

    def reserve(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        self.peak = max(self.peak, self.used)
        return True

    def free(self, n: int) -> None:
        self.used -= n


# --- outputs ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Hold:
    """The segment is kept; a final Forward or Drop for it follows later."""

    segment_id: int


@dataclass(frozen=True, slots=True)
class Forward:
    """Send the segment with this payload (same length as received; `rewritten` if it differs)."""

    segment_id: int
    payload: bytes
    rewritten: bool


@dataclass(frozen=True, slots=True)
class Drop:
    segment_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Reset:
    """Reset the connection (the adapter injects RSTs to both ends).

    `next_seq[d]` is the sequence number the receiver of direction d expects next (its rcv_nxt:
    everything before it was released), so an RST with that seq is in its window; None if
    direction d never saw a SYN.
    """

    reason: str
    next_seq: tuple[int | None, int | None]


@dataclass(frozen=True, slots=True)
class Anomaly:
    kind: str
    direction: Direction
    detail: str


@dataclass(frozen=True, slots=True)
class StreamData:
    """Contiguous new stream bytes for the inspector, each delivered exactly once, in order."""

    direction: Direction
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """No more bytes in this direction: `reason` is fin (at `offset`), rst or reset."""

    direction: Direction
    offset: int
    reason: str


Output = Hold | Forward | Drop | Reset | Anomaly | StreamData | StreamEnd


@dataclass(slots=True)
class _Held:
    segment_id: int
    start: int
    end: int  # payload end; a FIN-only segment has start == end == fin offset
    differs: bool  # its payload already differs from the canonical bytes (conflict, old rewrite)


class _Half:
    """One direction's stream: buf holds [buf_base, delivered); ooo holds chunks past delivered."""

    __slots__ = (
        "acked",
        "buf",
        "buf_base",
        "delivered",
        "ended",
        "fin",
        "held",
        "isn",
        "ooo",
        "released",
        "rewritten",
    )

    def __init__(self) -> None:
        self.isn: int | None = None
        self.buf = bytearray()
        self.buf_base = 0  # = acked: everything below was acknowledged and freed
        self.acked = 0
        self.released = 0
        self.delivered = 0
        self.ooo: list[tuple[int, bytes]] = []  # sorted, disjoint, all starting > delivered
        self.fin: int | None = None
        self.ended = False
        self.held: list[_Held] = []
        self.rewritten: list[tuple[int, int]] = []  # ranges changed by release(); for Forward.rewritten

    def touched(self, start: int, end: int) -> bool:
        """Was anything in [start, end) rewritten, or freed (it would be sent as zeros)?"""
        return start < self.buf_base or any(a < end and start < b for a, b in self.rewritten)

    def unwrap(self, seq: int) -> int:
        """Absolute offset of `seq`: the candidate nearest to the contiguous edge."""
        assert self.isn is not None
        edge_seq = (self.isn + 1 + self.delivered) % SEQ_MOD
        diff = (seq - edge_seq) % SEQ_MOD
        if diff >= _HALF:
            diff -= SEQ_MOD
        return self.delivered + diff

    def seq_of(self, offset: int) -> int:
        assert self.isn is not None
        return (self.isn + 1 + offset) % SEQ_MOD

    def memory(self) -> int:
        return len(self.buf) + sum(len(c) for _, c in self.ooo)

    def canonical(self, start: int, end: int) -> bytes:
        """Released bytes of [start, end) (end <= released); zeros below the freed base."""
        lo = max(start, self.buf_base)
        zeros = max(0, min(end, self.buf_base) - start)
        if lo >= end:
            return bytes(end - start)
        return bytes(zeros) + bytes(self.buf[lo - self.buf_base : end - self.buf_base])


class Reassembler:
    """Both directions of one inspected TCP connection."""

    def __init__(self, limits: ReassemblyLimits | None = None, account: MemoryAccount | None = None) -> None:
        self.limits = limits if limits is not None else ReassemblyLimits()
        self.account = account if account is not None else MemoryAccount()
        self.state = FlowState.OPEN
        self._halves = (_Half(), _Half())
        self._ids: set[int] = set()  # segment ids held (not yet final)
        self._reserved = 0  # bytes reserved from the account

    # --- public API -------------------------------------------------------------------------
    def segment(
        self,
        segment_id: int,
        direction: Direction,
        seq: int,
        ack: int,
        flags: int,
        payload: bytes,
    ) -> list[Output]:
        """One TCP segment of this connection, as received. Returns commands and stream data."""
        self._check_usable()
        if segment_id in self._ids:
            self._fail(f"segment id {segment_id} is still held")
        out: list[Output] = []
        direction = Direction(direction)
        half = self._halves[direction]

        if self.state is not FlowState.OPEN:
            if flags & RST:  # harmless, ends the connection at the endpoint too
                out.append(Forward(segment_id, payload, False))
            else:
                out.append(Drop(segment_id, f"flow_{self.state.value}"))
            return out

        if flags & SYN:
            if half.isn is None:
                half.isn = seq
            elif half.isn != seq:
                out.append(Anomaly("syn_isn_changed", direction, f"isn {half.isn} then {seq}"))
                out.append(Drop(segment_id, "syn_isn_changed"))
                return out
        if half.isn is None:
            out.append(Anomaly("no_syn", direction, "segment before the SYN of its direction"))
            out.append(Drop(segment_id, "no_syn"))
            return out

        if flags & ACK:
            self._on_ack(direction, ack, out)

        start = half.unwrap((seq + 1) % SEQ_MOD if flags & SYN else seq)
        end = start + len(payload)

        if flags & RST:
            self._on_rst(segment_id, direction, start, payload, out)
            return out

        fin = bool(flags & FIN)
        # After its FIN the sender's next sequence number is the FIN's + 1: a segment there with
        # no data and no FIN (the ACK of the peer's FIN, a window update) is not data after the
        # FIN; it carries nothing to hold.
        after_fin = half.fin is not None and start == end == half.fin + 1 and not fin
        # A FIN must not contradict bytes we already have: it would strand held data forever.
        have = half.ooo[-1][0] + len(half.ooo[-1][1]) if half.ooo else half.delivered
        if (half.fin is not None and not after_fin and (end > half.fin or (fin and end != half.fin))) or (
            fin and half.fin is None and end < have
        ):
            out.append(Anomaly("data_after_fin", direction, f"[{start}, {end}) fin={half.fin}"))
            out.append(Drop(segment_id, "data_after_fin"))
            return out

        if not payload and not fin:  # SYN, pure ACK, zero-length probe or keepalive
            out.append(Forward(segment_id, payload, False))
            return out

        if end > half.delivered + self.limits.window:
            out.append(Drop(segment_id, "out_of_window"))
            return out
        if start > half.delivered and self.limits.out_of_order is OutOfOrderPolicy.DROP:
            out.append(Drop(segment_id, "out_of_order"))
            return out

        differs = False
        if start < half.released:  # the already released part must carry the released bytes
            cut = min(end, half.released)
            differs = half.canonical(start, cut) != payload[: cut - start]
        if end > half.released:
            stored = self._store(segment_id, direction, start, payload, out)
            if stored is None:
                return out  # dropped or the flow was reset; the command is in `out`
            differs = differs or stored
        if fin:
            half.fin = end

        if end <= half.released:
            # Entirely released already (retransmission, keepalive, FIN): forward the released bytes.
            out.append(Forward(segment_id, half.canonical(start, end), differs))
        else:
            half.held.append(_Held(segment_id, start, end, differs))
            self._ids.add(segment_id)
            out.append(Hold(segment_id))
        self._deliver(direction, out)
        return out

    def release(
        self,
        direction: Direction,
        up_to: int,
        rewrites: Iterable[tuple[int, bytes]] = (),
    ) -> list[Output]:
        """The inspector is done with bytes before `up_to`; apply same-length `rewrites` first.

        Rewrites must lie within [released, up_to). Held segments that now lie entirely below
        `up_to` are forwarded with the released (rewritten) bytes.
        """
        self._check_usable()
        out: list[Output] = []
        half = self._halves[Direction(direction)]
        if self.state is not FlowState.OPEN:
            return out  # everything held was already dropped
        if not half.released <= up_to <= half.delivered:
            self._fail(f"release up_to {up_to} outside [{half.released}, {half.delivered}]")
        for offset, data in rewrites:
            if not (half.released <= offset and offset + len(data) <= up_to):
                self._fail(f"rewrite [{offset}, {offset + len(data)}) outside [{half.released}, {up_to})")
            i = offset - half.buf_base
            if half.buf[i : i + len(data)] != data:
                half.buf[i : i + len(data)] = data
                half.rewritten.append((offset, offset + len(data)))
        half.released = up_to
        self._forward_released(Direction(direction), out)
        return out

    def abort(self, reason: str = "abort") -> list[Output]:
        """Give up on the flow (expiry, shutdown): drop every held segment, no reset injected."""
        self._check_usable()
        out: list[Output] = []
        if self.state is FlowState.OPEN:
            self._drop_all(reason, out)
            self.state = _TRANSITIONS[(self.state, "abort")]
        return out

    # --- introspection ----------------------------------------------------------------------
    def released(self, direction: Direction) -> int:
        return self._halves[direction].released

    def delivered(self, direction: Direction) -> int:
        return self._halves[direction].delivered

    def held_ids(self) -> frozenset[int]:
        return frozenset(self._ids)

    def out_of_order(self, direction: Direction) -> list[tuple[int, int]]:
        """[start, end) offsets of the bytes held past a gap (sorted, disjoint)."""
        return [(a, a + len(b)) for a, b in self._halves[direction].ooo]

    @property
    def memory(self) -> int:
        return self._reserved

    # --- internals --------------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self.state is FlowState.ERROR:
            raise LocalProtocolError("reassembler is in ERROR state")

    def _fail(self, msg: str) -> NoReturn:
        self.state = _TRANSITIONS[(self.state, "misuse")]
        self._set_memory(0)
        raise LocalProtocolError(msg)

    def _set_memory(self, total: int) -> bool:
        """Adjust the reservation to `total` bytes; False (nothing changed) if over a cap."""
        delta = total - self._reserved
        if delta > 0:
            if total > self.limits.max_flow_bytes or not self.account.reserve(delta):
                return False
        elif delta < 0:
            self.account.free(-delta)
        self._reserved = total
        return True

    def _on_ack(self, direction: Direction, ack: int, out: list[Output]) -> None:
        other = self._halves[1 - direction]
        if other.isn is None:
            return
        acked = other.unwrap(ack)
        limit = other.released + (1 if other.fin is not None and other.released >= other.fin else 0)
        if acked > limit:
            out.append(Anomaly("ack_unreleased", Direction(1 - direction), f"ack {acked} > released {limit}"))
        acked = min(max(acked, other.acked), other.released)
        if acked > other.acked:
            other.acked = acked
            del other.buf[: acked - other.buf_base]
            other.buf_base = acked
            other.rewritten = [(a, b) for a, b in other.rewritten if b > acked]
            self._set_memory(self._total_memory())

    def _total_memory(self) -> int:
        return self._halves[0].memory() + self._halves[1].memory()

    def _on_rst(self, segment_id: int, direction: Direction, start: int, payload: bytes, out: list[Output]) -> None:
        half = self._halves[direction]
        # RFC 5961: the receiver only honours an RST inside its window; far-off ones are forged or
        # stale, and dropping held data for them would stall a healthy connection.
        if not half.released - self.limits.window <= start <= half.delivered + self.limits.window:
            out.append(Anomaly("rst_out_of_window", direction, f"rst at {start}"))
            out.append(Drop(segment_id, "rst_out_of_window"))
            return
        self._drop_all("peer_reset", out)
        self.state = _TRANSITIONS[(self.state, "peer_rst")]
        out.append(Forward(segment_id, payload, False))

    def _drop_all(self, reason: str, out: list[Output]) -> None:
        for d, half in enumerate(self._halves):
            for h in half.held:
                out.append(Drop(h.segment_id, reason))
            half.held.clear()
            if half.isn is not None and not half.ended:
                half.ended = True
                out.append(StreamEnd(Direction(d), half.delivered, "rst" if reason == "peer_reset" else "reset"))
            half.buf.clear()
            half.ooo.clear()
        self._ids.clear()
        self._set_memory(0)

    def _limit_hit(self, segment_id: int, reason: str, out: list[Output]) -> None:
        if self.limits.on_limit is LimitPolicy.DROP:
            out.append(Drop(segment_id, reason))
            return
        next_seq = tuple(h.seq_of(h.released) if h.isn is not None else None for h in self._halves)
        out.append(Drop(segment_id, reason))
        self._drop_all("reset", out)
        out.append(Reset(reason, (next_seq[0], next_seq[1])))
        self.state = _TRANSITIONS[(self.state, "limit")]

    def _store(
        self, segment_id: int, direction: Direction, start: int, payload: bytes, out: list[Output]
    ) -> bool | None:
        """Check the unreleased part of the segment against what we hold and store new bytes.

        Returns None if the segment was dropped (a Drop/Reset is in `out`), else whether it
        conflicted with held bytes (it will be forwarded with the first bytes instead).
        """
        half = self._halves[direction]
        end = start + len(payload)
        if len(self._ids) >= self.limits.max_flow_segments:
            self._limit_hit(segment_id, "segment_limit", out)
            return None
        conflicts: list[tuple[int, int]] = []
        # Delivered but unreleased bytes: still the originals, compare.
        lo, hi = max(start, half.released), min(end, half.delivered)
        if lo < hi:
            mine = payload[lo - start : hi - start]
            held = half.buf[lo - half.buf_base : hi - half.buf_base]
            if mine != held:
                conflicts.append((lo, hi))
        # Past the contiguous edge: compare with out-of-order chunks, collect the gaps.
        new: list[tuple[int, bytes]] = []
        pos = max(start, half.delivered)
        if pos < end:
            keys = [c[0] for c in half.ooo]
            i = max(0, bisect.bisect_right(keys, pos) - 1)
            while pos < end:
                if i < len(half.ooo) and half.ooo[i][0] + len(half.ooo[i][1]) <= pos:
                    i += 1
                    continue
                if i < len(half.ooo) and half.ooo[i][0] <= pos:
                    c_off, c_data = half.ooo[i]
                    stop = min(end, c_off + len(c_data))
                    if payload[pos - start : stop - start] != c_data[pos - c_off : stop - c_off]:
                        conflicts.append((pos, stop))
                    pos = stop
                    i += 1
                else:
                    stop = end if i >= len(half.ooo) else min(end, half.ooo[i][0])
                    new.append((pos, payload[pos - start : stop - start]))
                    pos = stop
        if conflicts:
            detail = ", ".join(f"[{a}, {b})" for a, b in conflicts)
            out.append(Anomaly("overlap_conflict", direction, f"segment [{start}, {end}) differs at {detail}"))
            if self.limits.overlap is OverlapPolicy.DROP:
                out.append(Drop(segment_id, "overlap_conflict"))
                return None
        if new:
            added = sum(len(d) for _, d in new)
            if not self._set_memory(self._reserved + added):
                self._limit_hit(segment_id, "memory_limit", out)
                return None
            for chunk in new:
                bisect.insort(half.ooo, chunk, key=lambda c: c[0])
        return bool(conflicts)

    def _deliver(self, direction: Direction, out: list[Output]) -> None:
        """Move out-of-order chunks that became contiguous into buf; hand them to the inspector."""
        half = self._halves[direction]
        while half.ooo and half.ooo[0][0] == half.delivered:
            off, data = half.ooo.pop(0)
            half.buf += data
            half.delivered += len(data)
            out.append(StreamData(direction, off, data))
        if half.fin is not None and half.delivered == half.fin and not half.ended:
            half.ended = True
            out.append(StreamEnd(direction, half.fin, "fin"))

    def _forward_released(self, direction: Direction, out: list[Output]) -> None:
        half = self._halves[direction]
        keep: list[_Held] = []
        for h in half.held:
            if h.end <= half.released:
                rewritten = h.differs or half.touched(h.start, h.end)
                out.append(Forward(h.segment_id, half.canonical(h.start, h.end), rewritten))
                self._ids.discard(h.segment_id)
            else:
                keep.append(h)
        half.held = keep


def forwarded_stream(forwards: Sequence[tuple[int, bytes]]) -> bytes:
    """Test/debug helper: reassemble (offset, payload) pairs that must agree wherever they overlap."""
    size = max((o + len(p) for o, p in forwards), default=0)
    buf = bytearray(size)
    seen = bytearray(size)
    for off, data in forwards:
        for i, b in enumerate(data):
            if seen[off + i] and buf[off + i] != b:
                raise AssertionError(f"forwarded bytes disagree at offset {off + i}")
            buf[off + i] = b
            seen[off + i] = 1
    if not all(seen):
        raise AssertionError("forwarded bytes leave a gap")
    return bytes(buf)
