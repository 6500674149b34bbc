"""Inline TCP reassembly: playbooks plus hypothesis properties (segmentation, reordering,
duplication, overlaps, rewrites) and a bounded fuzz that only declared errors escape."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.stream.reassembly import (
    ACK,
    C2S,
    FIN,
    RST,
    S2C,
    SEQ_MOD,
    SYN,
    Anomaly,
    Direction,
    Drop,
    Forward,
    Hold,
    LimitPolicy,
    LocalProtocolError,
    MemoryAccount,
    OutOfOrderPolicy,
    Output,
    OverlapPolicy,
    Reassembler,
    ReassemblyLimits,
    Reset,
    StreamData,
    StreamEnd,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Harness:
    """Drives a Reassembler like the inspector would, recording everything."""

    r: Reassembler
    isn: tuple[int, int] = (1000, 5000)
    auto_release: bool = True
    rewrites: list[tuple[int, bytes]] = field(default_factory=list)  # C2S plan, applied when delivered
    outputs: list[Output] = field(default_factory=list)
    stream: dict[Direction, bytearray] = field(default_factory=lambda: {C2S: bytearray(), S2C: bytearray()})
    next_id: int = 0
    sent: dict[int, tuple[Direction, int, bytes]] = field(default_factory=dict)  # id -> (dir, offset, payload)

    def handshake(self) -> None:
        self.send(C2S, -1, b"", SYN)
        self.send(S2C, -1, b"", SYN | ACK)
        self.send(C2S, 0, b"", ACK)

    def send(self, d: Direction, offset: int, payload: bytes, flags: int = ACK, ack: int | None = None) -> int:
        sid = self.next_id
        self.next_id += 1
        self.sent[sid] = (d, offset, payload)
        seq = (self.isn[d] + 1 + offset) % SEQ_MOD
        ack_seq = (self.isn[1 - d] + 1 + (ack or 0)) % SEQ_MOD
        self.feed(self.r.segment(sid, d, seq, ack_seq, flags, payload))
        return sid

    def feed(self, out: list[Output]) -> None:
        self.outputs.extend(out)
        for o in out:
            if isinstance(o, StreamData):
                assert o.offset == len(self.stream[o.direction])
                self.stream[o.direction] += o.data
        if self.auto_release:
            for d in (C2S, S2C):
                self.release_all(d)

    def release_all(self, d: Direction) -> None:
        released, delivered = self.r.released(d), self.r.delivered(d)
        if released == delivered:
            return
        up_to = delivered
        rw: list[tuple[int, bytes]] = []
        if d is C2S:
            for off, data in self.rewrites:
                if off < released or off >= up_to:
                    continue
                if off + len(data) > delivered:
                    up_to = min(up_to, off)  # wait until the whole rewrite is parsed
            rw = [(o, b) for o, b in self.rewrites if released <= o and o + len(b) <= up_to]
        if up_to > released:
            self.feed_no_release(self.r.release(d, up_to, rw))

    def feed_no_release(self, out: list[Output]) -> None:
        saved, self.auto_release = self.auto_release, False
        try:
            self.feed(out)
        finally:
            self.auto_release = saved
        if saved:
            for d in (C2S, S2C):
                self.release_all(d)

    def finals(self) -> dict[int, Output]:
        res: dict[int, Output] = {}
        for o in self.outputs:
            if isinstance(o, Forward | Drop):
                assert o.segment_id not in res, f"two final commands for {o.segment_id}"
                res[o.segment_id] = o
        return res

    def check_invariants(self) -> None:
        finals = self.finals()
        held: set[int] = set()
        seen_final: set[int] = set()
        for o in self.outputs:
            if isinstance(o, Hold):
                assert o.segment_id not in held and o.segment_id not in seen_final
                held.add(o.segment_id)
            elif isinstance(o, Forward | Drop):
                seen_final.add(o.segment_id)
        assert set(finals) == set(self.sent), "every segment gets exactly one final command"
        for sid, f in finals.items():
            if isinstance(f, Forward):
                assert len(f.payload) == len(self.sent[sid][2]), "same length, always"


def forwards(h: Harness) -> dict[int, Forward]:
    return {k: v for k, v in h.finals().items() if isinstance(v, Forward)}


# --- playbooks ---------------------------------------------------------------------------------
def test_in_order_held_until_released() -> None:
    h = Harness(Reassembler(), auto_release=False)
    h.handshake()
    a = h.send(C2S, 0, b"HELO x\r\n")
    assert h.outputs[-2:] == [Hold(a), StreamData(C2S, 0, b"HELO x\r\n")]
    assert a not in h.finals()
    out = h.r.release(C2S, 4)
    assert out == []  # the segment straddles the release point: still held
    out = h.r.release(C2S, 8)
    assert out == [Forward(a, b"HELO x\r\n", False)]


def test_out_of_order_within_window_is_held_and_delivered_in_order() -> None:
    h = Harness(Reassembler())
    h.handshake()
    b = h.send(C2S, 5, b"world")
    assert Hold(b) in h.outputs and not any(isinstance(o, StreamData) for o in h.outputs)
    a = h.send(C2S, 0, b"hello")
    data = [o for o in h.outputs if isinstance(o, StreamData)]
    assert data == [StreamData(C2S, 0, b"hello"), StreamData(C2S, 5, b"world")]
    f = forwards(h)
    assert f[a].payload == b"hello" and f[b].payload == b"world"
    h.check_invariants()


def test_out_of_window_and_ooo_drop_policy() -> None:
    h = Harness(Reassembler(ReassemblyLimits(window=100)))
    h.handshake()
    s = h.send(C2S, 200, b"x")
    assert h.finals()[s] == Drop(s, "out_of_window")
    h2 = Harness(Reassembler(ReassemblyLimits(out_of_order=OutOfOrderPolicy.DROP)))
    h2.handshake()
    s = h2.send(C2S, 3, b"x")
    assert h2.finals()[s] == Drop(s, "out_of_order")


def test_duplicate_and_consistent_overlap() -> None:
    h = Harness(Reassembler(), auto_release=False)
    h.handshake()
    a = h.send(C2S, 0, b"abcdef")
    b = h.send(C2S, 0, b"abcdef")  # duplicate while held
    c = h.send(C2S, 3, b"defgh")  # consistent overlap, extends
    assert not any(isinstance(o, Anomaly) for o in h.outputs)
    assert [o for o in h.outputs if isinstance(o, StreamData)] == [
        StreamData(C2S, 0, b"abcdef"),
        StreamData(C2S, 6, b"gh"),
    ]
    h.feed(h.r.release(C2S, 8))
    f = forwards(h)
    assert (f[a].payload, f[b].payload, f[c].payload) == (b"abcdef", b"abcdef", b"defgh")
    assert not any(x.rewritten for x in f.values())


def test_conflicting_overlap_first_wins_and_anomaly() -> None:
    h = Harness(Reassembler(), auto_release=False)
    h.handshake()
    a = h.send(C2S, 4, b"EFGH")  # out of order first
    b = h.send(C2S, 2, b"cdXXGHij")  # conflicts at [4, 6)
    anomalies = [o for o in h.outputs if isinstance(o, Anomaly)]
    assert [x.kind for x in anomalies] == ["overlap_conflict"]
    h.send(C2S, 0, b"ab")
    assert bytes(h.stream[C2S]) == b"abcdEFGHij"
    h.feed(h.r.release(C2S, 10))
    f = forwards(h)
    assert f[a].payload == b"EFGH" and not f[a].rewritten
    assert f[b].payload == b"cdEFGHij" and f[b].rewritten  # the later segment carries the first bytes


def test_conflicting_overlap_drop_policy() -> None:
    h = Harness(Reassembler(ReassemblyLimits(overlap=OverlapPolicy.DROP)), auto_release=False)
    h.handshake()
    h.send(C2S, 0, b"abcd")
    b = h.send(C2S, 2, b"XY")
    assert h.finals()[b] == Drop(b, "overlap_conflict")
    assert any(isinstance(o, Anomaly) and o.kind == "overlap_conflict" for o in h.outputs)


def test_retransmission_after_rewrite_carries_rewritten_bytes() -> None:
    h = Harness(Reassembler(), auto_release=False)
    h.handshake()
    a = h.send(C2S, 0, b"attach: EVIL.EXE\r\n")
    h.feed(h.r.release(C2S, 18, [(8, b"XXXX.TXT")]))
    assert forwards(h)[a] == Forward(a, b"attach: XXXX.TXT\r\n", True)
    r1 = h.send(C2S, 0, b"attach: EVIL.EXE\r\n")  # full retransmission
    r2 = h.send(C2S, 10, b"IL.EXE\r\nnext")  # overlaps the released range and goes beyond
    f = forwards(h)
    assert f[r1] == Forward(r1, b"attach: XXXX.TXT\r\n", True)
    assert r2 not in f
    h.feed(h.r.release(C2S, 22))
    assert h.finals()[r2] == Forward(r2, b"XX.TXT\r\nnext", True)
    # a rewrite is not an overlap conflict
    assert not any(isinstance(o, Anomaly) for o in h.outputs)


def test_keepalive_and_zero_window_probe() -> None:
    h = Harness(Reassembler())
    h.handshake()
    h.send(C2S, 0, b"abc")
    k0 = h.send(C2S, 2, b"")  # keepalive, no data
    k1 = h.send(C2S, 2, b"Z")  # keepalive with one garbage byte (before snd_nxt): released byte
    f = forwards(h)
    assert f[k0] == Forward(k0, b"", False)
    assert f[k1] == Forward(k1, b"c", True)
    # the server acknowledges everything: the freed byte goes out as zero, never the original
    h.send(S2C, 0, b"", ACK, ack=3)
    k2 = h.send(C2S, 2, b"Z")
    assert forwards(h)[k2] == Forward(k2, b"\x00", True)
    assert h.r.memory == 0
    p = h.send(C2S, 3, b"d")  # zero-window probe: the next byte of data, inspected like any other
    assert StreamData(C2S, 3, b"d") in h.outputs and forwards(h)[p].payload == b"d"


def test_fin_held_until_data_released_and_stream_end() -> None:
    h = Harness(Reassembler(), auto_release=False)
    h.handshake()
    fin = h.send(C2S, 3, b"", FIN | ACK)  # FIN before the data (reordered)
    assert Hold(fin) in h.outputs
    a = h.send(C2S, 0, b"abc")
    assert StreamEnd(C2S, 3, "fin") in h.outputs
    h.feed(h.r.release(C2S, 3))
    f = forwards(h)
    assert set(f) >= {a, fin}
    late = h.send(C2S, 3, b"zz")
    assert h.finals()[late] == Drop(late, "data_after_fin")


def test_ack_of_the_peers_fin_after_our_fin_is_forwarded() -> None:
    """Closing: the client's FIN takes sequence number 3, so its ACK of the server's FIN comes
    with seq = FIN + 1 and no data. That is the normal end of a connection, not data after the
    FIN: forwarded, no anomaly. Data or another FIN there still is."""
    h = Harness(Reassembler())
    h.handshake()
    h.send(C2S, 0, b"abc")
    fin = h.send(C2S, 3, b"", FIN | ACK)
    h.send(S2C, 0, b"221 bye\r\n", ACK, ack=4)
    sfin = h.send(S2C, 9, b"", FIN | ACK, ack=4)
    last_ack = h.send(C2S, 4, b"", ACK, ack=10)
    f = h.finals()
    assert f[fin] == Forward(fin, b"", False) and f[sfin] == Forward(sfin, b"", False)
    assert f[last_ack] == Forward(last_ack, b"", False)
    assert not [o for o in h.outputs if isinstance(o, Anomaly)]
    assert StreamEnd(C2S, 3, "fin") in h.outputs and StreamEnd(S2C, 9, "fin") in h.outputs
    late = h.send(C2S, 4, b"x")
    again = h.send(C2S, 4, b"", FIN | ACK)
    assert h.finals()[late] == Drop(late, "data_after_fin")
    assert h.finals()[again] == Drop(again, "data_after_fin")


def test_fin_before_held_data_is_refused() -> None:
    h = Harness(Reassembler(), auto_release=False)
    h.handshake()
    h.send(C2S, 10, b"later")
    f = h.send(C2S, 5, b"", FIN | ACK)
    assert h.finals()[f] == Drop(f, "data_after_fin")


def test_rst_drops_held_and_forwards_rst() -> None:
    h = Harness(Reassembler(), auto_release=False)
    h.handshake()
    a = h.send(C2S, 0, b"abc")
    r = h.send(C2S, 3, b"", RST | ACK)
    assert h.finals()[a] == Drop(a, "peer_reset")
    assert h.finals()[r] == Forward(r, b"", False)
    assert StreamEnd(C2S, 3, "rst") in h.outputs
    later = h.send(S2C, 0, b"x")
    assert isinstance(h.finals()[later], Drop)
    far = Harness(Reassembler(ReassemblyLimits(window=1000)))
    far.handshake()
    x = far.send(C2S, 10**6, b"", RST)
    assert far.finals()[x] == Drop(x, "rst_out_of_window")
    assert far.r.state.value == "open"


def test_segment_before_syn_is_dropped() -> None:
    h = Harness(Reassembler())
    s = h.send(C2S, 0, b"abc")
    assert h.finals()[s] == Drop(s, "no_syn")


def test_sequence_wraparound() -> None:
    h = Harness(Reassembler(), isn=(SEQ_MOD - 4, SEQ_MOD - 1))
    h.handshake()
    h.send(C2S, 5, b"FGHIJ")  # crosses 2**32 out of order
    h.send(C2S, 0, b"ABCDE")
    h.send(S2C, 0, b"server")
    assert bytes(h.stream[C2S]) == b"ABCDEFGHIJ" and bytes(h.stream[S2C]) == b"server"
    h.check_invariants()


def test_long_stream_unwraps_past_4gib() -> None:
    r = Reassembler(ReassemblyLimits(window=1 << 16))
    isn = 7
    r.segment(0, C2S, isn, 0, SYN, b"")
    r.segment(1, S2C, 9, 0, SYN | ACK, b"")
    # walk the contiguous edge forward past 2**32 with released, acked chunks
    off, sid, chunk = 0, 2, bytes(1 << 15)
    half = r._halves[C2S]
    half.delivered = half.released = half.acked = half.buf_base = SEQ_MOD - 10  # jump (test shortcut)
    off = half.delivered
    for _ in range(3):
        out = r.segment(sid, C2S, (isn + 1 + off) % SEQ_MOD, 0, ACK, chunk)
        assert StreamData(C2S, off, chunk) in out
        r.release(C2S, off + len(chunk))
        off += len(chunk)
        sid += 1
    assert off > SEQ_MOD


def test_memory_cap_resets_flow() -> None:
    h = Harness(Reassembler(ReassemblyLimits(max_flow_bytes=10)), auto_release=False)
    h.handshake()
    a = h.send(C2S, 0, b"12345678")
    b = h.send(C2S, 8, b"9abc")
    assert h.finals()[a] == Drop(a, "reset")
    assert h.finals()[b] == Drop(b, "memory_limit")
    resets = [o for o in h.outputs if isinstance(o, Reset)]
    assert resets == [Reset("memory_limit", (1001, 5001))]
    assert StreamEnd(C2S, 8, "reset") in h.outputs
    c = h.send(C2S, 12, b"d")
    assert h.finals()[c] == Drop(c, "flow_reset")
    assert h.r.memory == 0


def test_memory_cap_drop_policy_and_global_account() -> None:
    acct = MemoryAccount(limit=12)
    lim = ReassemblyLimits(on_limit=LimitPolicy.DROP)
    h1 = Harness(Reassembler(lim, acct), auto_release=False)
    h2 = Harness(Reassembler(lim, acct), auto_release=False)
    h1.handshake()
    h2.handshake()
    h1.send(C2S, 0, b"12345678")
    x = h2.send(C2S, 0, b"abcdefgh")  # the global budget is shared
    assert h2.finals()[x] == Drop(x, "memory_limit")
    assert acct.used == 8
    h1.feed(h1.r.release(C2S, 8))
    h1.send(S2C, 0, b"", ACK, ack=8)  # acknowledged: freed
    assert acct.used == 0
    y = h2.send(C2S, 0, b"abcdefgh")  # retransmission now fits
    assert Hold(y) in h2.outputs


def test_segment_count_cap() -> None:
    h = Harness(Reassembler(ReassemblyLimits(max_flow_segments=2)), auto_release=False)
    h.handshake()
    h.send(C2S, 0, b"a")
    h.send(C2S, 1, b"b")
    c = h.send(C2S, 2, b"c")
    assert h.finals()[c] == Drop(c, "segment_limit")
    assert any(isinstance(o, Reset) for o in h.outputs)


def test_misuse_raises_and_enters_error() -> None:
    r = Reassembler()
    r.segment(0, C2S, 0, 0, SYN, b"")
    r.segment(1, C2S, 1, 0, ACK, b"abc")
    with pytest.raises(LocalProtocolError):
        r.release(C2S, 10)  # beyond delivered
    with pytest.raises(LocalProtocolError):
        r.segment(2, C2S, 4, 0, ACK, b"d")  # ERROR is sticky
    r2 = Reassembler()
    r2.segment(0, C2S, 0, 0, SYN, b"")
    r2.segment(1, C2S, 1, 0, ACK, b"abc")
    with pytest.raises(LocalProtocolError):
        r2.segment(1, C2S, 1, 0, ACK, b"abc")  # id still held
    r3 = Reassembler()
    r3.segment(0, C2S, 0, 0, SYN, b"")
    r3.segment(1, C2S, 1, 0, ACK, b"abcdef")
    r3.release(C2S, 3)
    with pytest.raises(LocalProtocolError):
        r3.release(C2S, 6, [(1, b"x")])  # rewrite into released bytes


def test_abort_drops_everything_held() -> None:
    h = Harness(Reassembler(), auto_release=False)
    h.handshake()
    a = h.send(C2S, 0, b"abc")
    h.feed(h.r.abort("expired"))
    assert h.finals()[a] == Drop(a, "expired")
    h.check_invariants()


# --- properties --------------------------------------------------------------------------------
@st.composite
def scenarios(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, int]], list[tuple[int, bytes]], int]:
    """(stream, segments as (offset, length) in arrival order, rewrite plan, isn)."""
    data = draw(st.binary(min_size=1, max_size=200))
    n = len(data)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, n - 1)), max_size=12))))
    bounds = [0, *[c for c in cuts if 0 < c < n], n]
    segs = [(a, b - a) for a, b in itertools.pairwise(bounds)]
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 40)), max_size=6))
    segs += [(o, min(ln, n - o)) for o, ln in extra]  # duplicates and overlaps (retransmissions)
    order = draw(st.permutations(segs))
    plan: list[tuple[int, bytes]] = []
    pos = 0
    for _ in range(draw(st.integers(0, 4))):
        if pos >= n:
            break
        off = draw(st.integers(pos, n - 1))
        ln = draw(st.integers(1, min(16, n - off)))
        new = bytes((b ^ 0xFF) for b in data[off : off + ln])  # differs from the original at every byte
        plan.append((off, new))
        pos = off + ln
    isn = draw(st.sampled_from([0, 12345, SEQ_MOD - 1, SEQ_MOD - 7, SEQ_MOD - 150]))
    return data, order, plan, isn


@FAST
@given(scenarios(), st.booleans())
def test_property_forwarded_equals_rewritten_stream(
    sc: tuple[bytes, list[tuple[int, int]], list[tuple[int, bytes]], int], retransmit_all: bool
) -> None:
    data, order, plan, isn = sc
    h = Harness(Reassembler(), isn=(isn, isn ^ 0x5A5A), rewrites=plan)
    h.handshake()
    for off, ln in order:
        h.send(C2S, off, data[off : off + ln])
    if retransmit_all:  # everything again after the rewrites were released
        for off, ln in order:
            h.send(C2S, off, data[off : off + ln])
    h.send(C2S, len(data), b"", FIN | ACK)
    rewritten = bytearray(data)
    for off, new in plan:
        rewritten[off : off + len(new)] = new
    assert bytes(h.stream[C2S]) == data  # the inspector saw the original stream, once, in order
    h.check_invariants()
    f = forwards(h)
    assert len(f) == len(h.sent), "nothing dropped in this scenario"
    for sid, fw in f.items():
        d, off, payload = h.sent[sid]
        if d is C2S and payload:
            assert fw.payload == bytes(rewritten[off : off + len(payload)])
            assert fw.rewritten == (fw.payload != payload)
    for off, new in plan:  # no original byte of a rewritten range ever appears in a Forward
        for sid, fw in f.items():
            d, s_off, _ = h.sent[sid]
            for i in range(max(off, s_off), min(off + len(new), s_off + len(fw.payload))):
                assert fw.payload[i - s_off] != data[i]


@FAST
@given(scenarios(), st.lists(st.booleans(), min_size=1))
def test_property_with_acks_freed_bytes_go_out_as_zeros(
    sc: tuple[bytes, list[tuple[int, int]], list[tuple[int, bytes]], int], acks: list[bool]
) -> None:
    """The receiver acknowledges released bytes at random moments; retransmissions of freed
    bytes carry zeros, everything else the rewritten bytes; memory returns to zero."""
    data, order, plan, isn = sc
    h = Harness(Reassembler(), isn=(isn, 77), rewrites=plan)
    h.handshake()
    acked = 0
    for k, (off, ln) in enumerate(order + order):  # everything twice: late retransmissions
        if acks[k % len(acks)]:
            acked = h.r.released(C2S)
            h.send(S2C, 0, b"", ACK, ack=acked)
        h.send(C2S, off, data[off : off + ln])
    rewritten = bytearray(data)
    for off, new in plan:
        rewritten[off : off + len(new)] = new
    h.check_invariants()
    for sid, fw in forwards(h).items():
        d, off, payload = h.sent[sid]
        if d is not C2S or not payload:
            continue
        for i, b in enumerate(fw.payload):
            if b != rewritten[off + i]:
                # A held copy may go out after another copy was acknowledged: zeros, harmless.
                assert b == 0 and off + i < acked, "only acknowledged (freed) bytes may differ, as zeros"
    h.send(S2C, 0, b"", ACK, ack=h.r.released(C2S))
    assert h.r.memory == 0 and h.r.account.used == 0


@FAST
@given(scenarios())
def test_property_chunking_never_changes_stream_data(
    sc: tuple[bytes, list[tuple[int, int]], list[tuple[int, bytes]], int],
) -> None:
    data, order, _, isn = sc
    h = Harness(Reassembler(), isn=(isn, 1))
    h.handshake()
    for off, ln in order:
        h.send(C2S, off, data[off : off + ln])
    assert bytes(h.stream[C2S]) == data


_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("seg"),
            st.sampled_from([C2S, S2C]),
            st.integers(-70000, 70000) | st.integers(0, SEQ_MOD - 1),
            st.integers(0, SEQ_MOD - 1),
            st.integers(0, 0x3F),
            st.binary(max_size=40),
        ),
        st.tuples(st.just("rel"), st.sampled_from([C2S, S2C]), st.integers(0, 400), st.integers(0, 0xFFFF)),
        st.tuples(st.just("abort")),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ops, st.integers(1, 400), st.integers(0, 2))
def test_fuzz_only_declared_errors(ops: Sequence[tuple[object, ...]], cap: int, pol: int) -> None:
    lim = ReassemblyLimits(
        window=300,
        max_flow_bytes=cap,
        max_flow_segments=8,
        out_of_order=OutOfOrderPolicy.HOLD if pol else OutOfOrderPolicy.DROP,
        overlap=OverlapPolicy.FIRST if pol < 2 else OverlapPolicy.DROP,
    )
    acct = MemoryAccount(limit=cap * 2)
    r = Reassembler(lim, acct)
    r.segment(-1, C2S, 100, 0, SYN, b"")
    r.segment(-2, S2C, 900, 101, SYN | ACK, b"")
    ids: set[int] = set()
    finals: dict[int, Output] = {}
    outs: list[Output] = []
    for i, op in enumerate(ops):
        try:
            if op[0] == "seg":
                _, d, seq, ack, flags, payload = op
                assert isinstance(seq, int) and isinstance(ack, int) and isinstance(flags, int)
                assert isinstance(payload, bytes) and isinstance(d, Direction)
                ids.add(i)
                s = seq if seq >= 0 else (101 + seq) % SEQ_MOD
                outs += r.segment(i, d, s % SEQ_MOD, ack, flags, payload)
            elif op[0] == "rel":
                _, d, k, salt = op
                assert isinstance(d, Direction) and isinstance(k, int) and isinstance(salt, int)
                lo, hi = r.released(d), r.delivered(d)
                up = lo + (k % (hi - lo + 1))
                rw = [(lo, bytes([salt & 0xFF]) * min(2, up - lo))] if up > lo else []
                outs += r.release(d, up, rw)
            else:
                outs += r.abort()
        except LocalProtocolError:
            raise AssertionError("valid calls must not raise") from None
        assert 0 <= acct.used <= acct.limit
        assert r.memory <= cap
    outs += r.abort("end")
    for o in outs:
        if isinstance(o, Forward | Drop) and o.segment_id >= 0:
            assert o.segment_id not in finals
            finals[o.segment_id] = o
    assert set(finals) == ids
    assert acct.used == 0
