"""SMTP inspection machine, h11 style: every conversation fed whole, byte by byte and in random
chunks gives the same events; smuggling vectors; pipelining; multiline replies; EHLO masking;
dot-unstuffing offset maps; limits; a bounded fuzz where only declared errors escape."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.smtp import (
    Anomaly,
    AuthResponse,
    ClientState,
    Command,
    DataChunk,
    DataEnd,
    DataStart,
    Event,
    LimitExceeded,
    OffsetMap,
    Recipient,
    Refuse,
    RemoteProtocolError,
    Reply,
    Rewrite,
    RewriteError,
    SessionEnd,
    Side,
    SMTPConnection,
    SMTPError,
    SMTPLimits,
    SMTPPolicy,
    TransactionEnd,
    TransactionStart,
    refusal_reply,
)

C, S = Side.CLIENT, Side.SERVER
Turn = tuple[Side, bytes]

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

EHLO_REPLY = (
    b"250-mx.lg.example.jp Hello\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 52428800\r\n"
    b"250-starttls\r\n"
    b"250-CHUNKING\r\n"
    b"250-8BITMIME\r\n"
    b"250 BINARYMIME\r\n"
)

MESSAGE = (
    b"From: a@example.com\r\n"
    b"Subject: test\r\n"
    b"\r\n"
    b"line one\r\n"
    b"..leading dot\r\n"  # stuffed: content has ".leading dot"
    b".\x00not an end\r\n"  # stuffed differently: a dot removed
    b"last line\r\n"
)


def session(message: bytes = MESSAGE, *, pipelined: bool = True) -> list[Turn]:
    turns: list[Turn] = [
        (S, b"220 mx.lg.example.jp ESMTP\r\n"),
        (C, b"EHLO relay.example.com\r\n"),
        (S, EHLO_REPLY),
    ]
    if pipelined:
        turns += [
            (C, b"MAIL FROM:<a@example.com> SIZE=100\r\nRCPT TO:<b@lg.jp>\r\nRCPT TO:<nobody@lg.jp>\r\nDATA\r\n"),
            (S, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 unknown\r\n354 End data with <CR><LF>.<CR><LF>\r\n"),
        ]
    else:
        turns += [
            (C, b"MAIL FROM:<a@example.com>\r\n"),
            (S, b"250 2.1.0 Ok\r\n"),
            (C, b"RCPT TO:<b@lg.jp>\r\n"),
            (S, b"250 2.1.5 Ok\r\n"),
            (C, b"DATA\r\n"),
            (S, b"354 go ahead\r\n"),
        ]
    turns += [
        (C, message + b".\r\n"),
        (S, b"250 2.0.0 Ok: queued as 4Xyz\r\n"),
        (C, b"QUIT\r\n"),
        (S, b"221 2.0.0 Bye\r\n"),
    ]
    return turns


def feed(turns: Sequence[Turn], chunks: Sequence[Sequence[int]] | None = None, **kw: object) -> list[Event]:
    """Feed the turns; `chunks[i]` are cut points inside turn i (None: whole)."""
    m = SMTPConnection(**kw)  # type: ignore[arg-type]
    events: list[Event] = []
    for i, (side, data) in enumerate(turns):
        cuts = sorted(set(chunks[i])) if chunks is not None else []
        bounds = [0, *[c for c in cuts if 0 < c < len(data)], len(data)]
        for a, b in itertools.pairwise(bounds):
            piece = data[a:b]
            events += m.receive_client(piece) if side is C else m.receive_server(piece)
    return events


def normalize(events: Sequence[Event]) -> list[Event]:
    """Merge adjacent DataChunks (their boundaries follow the input chunking, nothing else may)
    and put the smuggling anomalies found inside a run of DATA after it (they carry offsets)."""
    out: list[Event] = []
    run: list[DataChunk] = []
    looks: list[Event] = []

    def flush() -> None:
        if run:
            out.append(
                DataChunk(
                    run[0].offset,
                    run[-1].end_offset,
                    b"".join(c.data for c in run),
                    run[0].content_offset,
                    tuple(r for c in run for r in c.removed_dots),
                )
            )
        out.extend(looks)
        run.clear()
        looks.clear()

    for e in events:
        if isinstance(e, DataChunk):
            run.append(e)
        elif isinstance(e, Anomaly) and e.kind == "smuggling":
            looks.append(e)
        else:
            flush()
            out.append(e)
    flush()
    return out


def content(events: Sequence[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataChunk))


def stream(turns: Sequence[Turn], side: Side) -> bytes:
    return b"".join(d for s, d in turns if s is side)


def bytewise(turns: Sequence[Turn], **kw: object) -> list[Event]:
    return feed(turns, [list(range(len(d))) for _, d in turns], **kw)


# --- playbooks ---------------------------------------------------------------------------------
def test_pipelined_session_events() -> None:
    turns = session()
    ev = feed(turns)
    kinds = [type(e).__name__ for e in ev]
    assert kinds.count("Command") == 6  # EHLO MAIL RCPT RCPT DATA QUIT
    assert [e.command for e in ev if isinstance(e, Reply)] == [
        None,
        "EHLO",
        "MAIL",
        "RCPT",
        "RCPT",
        "DATA",
        ".",
        "QUIT",
    ]
    assert TransactionStart("a@example.com", len(b"EHLO relay.example.com\r\n")) in ev
    assert [e for e in ev if isinstance(e, Recipient)] == [
        Recipient("b@lg.jp", True, 250),
        Recipient("nobody@lg.jp", False, 550),
    ]
    assert content(ev) == MESSAGE.replace(b"..leading", b".leading").replace(b".\x00not", b"\x00not")
    end = next(e for e in ev if isinstance(e, DataEnd))
    cstream = stream(turns, C)
    assert cstream[end.dot_offset : end.end_offset] == b".\r\n"
    te = [e for e in ev if isinstance(e, TransactionEnd)]
    assert len(te) == 1 and te[0].accepted and te[0].reason == "data"
    assert ev[-1] == SessionEnd("quit")
    assert not any(isinstance(e, Anomaly | Refuse) for e in ev)


def test_chunking_never_changes_events() -> None:
    for turns in (session(), session(pipelined=False)):
        whole = normalize(feed(turns))
        assert normalize(bytewise(turns)) == whole


@FAST
@given(st.data())
def test_random_chunking_same_events(data: st.DataObject) -> None:
    vector = data.draw(st.sampled_from([b"", *SMUGGLING_VECTORS]))
    msg = MESSAGE + b"x" + vector + b"MAIL FROM:<evil@x>\r\n" if vector else MESSAGE
    turns = session(msg, pipelined=data.draw(st.booleans()))
    cuts = [data.draw(st.lists(st.integers(0, len(d)), max_size=8)) for _, d in turns]
    assert normalize(feed(turns, cuts)) == normalize(feed(turns))


def test_offsets_point_at_the_stream() -> None:
    turns = session()
    ev = feed(turns)
    cs, ss = stream(turns, C), stream(turns, S)
    for e in ev:
        if isinstance(e, Command):
            assert cs[e.offset : e.offset + len(e.line)] == e.line
        elif isinstance(e, Reply):
            assert ss[e.offset : e.end_offset].startswith(str(e.code).encode())
    chunks = [e for e in ev if isinstance(e, DataChunk)]
    start = next(e for e in ev if isinstance(e, DataStart)).offset
    omap = OffsetMap(start)
    for ch in chunks:
        omap.add(ch.removed_dots)
    body = content(ev)
    for i in range(len(body)):  # every content byte maps to the raw byte that carries it
        assert cs[omap.to_stream(i)] == body[i]


def test_ehlo_masking_in_place_same_length() -> None:
    turns = session()
    ev = feed(turns)
    rewrites = [e for e in ev if isinstance(e, Rewrite)]
    assert {r.data for r in rewrites} == {b"XXXXXXXA", b"XXXXXXXXXA"}
    ss = bytearray(stream(turns, S))
    before = len(ss)
    for r in rewrites:
        assert r.side is S
        ss[r.offset : r.offset + len(r.data)] = r.data
    assert len(ss) == before
    text = bytes(ss)
    assert b"250-XXXXXXXA\r\n" in text and b"250 XXXXXXXXXA\r\n" in text
    assert b"STARTTLS" not in text.upper() and b"CHUNKING" not in text and b"PIPELINING" in text
    reply = next(e for e in ev if isinstance(e, Reply) and e.command == "EHLO")
    assert "PIPELINING" in reply.lines and "XXXXXXXA" in reply.lines


def test_multiline_reply_to_other_commands() -> None:
    turns: list[Turn] = [
        (S, b"220-first\r\n220-second\r\n220 ready\r\n"),
        (C, b"HELP\r\nNOOP\r\nVRFY postmaster\r\n"),
        (S, b"214-Commands:\r\n214-HELO EHLO MAIL\r\n214 End\r\n250 OK\r\n252 2.0.0 postmaster\r\n"),
    ]
    ev = feed(turns)
    replies = [e for e in ev if isinstance(e, Reply)]
    assert [(r.code, r.command, len(r.lines)) for r in replies] == [
        (220, None, 3),
        (214, "HELP", 3),
        (250, "NOOP", 1),
        (252, "VRFY", 1),
    ]
    assert normalize(bytewise(turns)) == normalize(ev)


SMUGGLING_VECTORS = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r\n.\n",
    b"\r.\r",
    b"\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n",
    b"\n\x00.\x00\n",
]


@pytest.mark.parametrize("vector", SMUGGLING_VECTORS, ids=lambda v: repr(v))
@pytest.mark.parametrize("refuse", [True, False])
def test_smuggling_vectors_do_not_end_data(vector: bytes, refuse: bool) -> None:
    smuggled = b"MAIL FROM:<evil@attacker>\r\nRCPT TO:<victim@lg.jp>\r\nDATA\r\nSubject: smuggled\r\n\r\nEVIL\r\n"
    msg = b"Subject: hi\r\n\r\nbody" + vector + smuggled
    turns = session(msg)
    for ev in (feed(turns, policy=SMTPPolicy(refuse_smuggling=refuse)),):
        starts = [i for i, e in enumerate(ev) if isinstance(e, DataStart)]
        ends = [e for e in ev if isinstance(e, DataEnd)]
        assert len(starts) == 1 and len(ends) == 1
        # the real end, not the look-alike
        assert ends[0].end_offset == len(stream(turns[:5], C)) + len(msg) + 3
        body = content(ev)
        assert b"EVIL" in body and b"MAIL FROM:<evil@attacker>" in body
        # no command parsed from inside the message
        verbs_during = [e.verb for e in ev[starts[0] :] if isinstance(e, Command)]
        assert verbs_during == ["QUIT"] or (refuse and verbs_during == [])
        assert any(isinstance(e, Anomaly) and e.kind == "smuggling" for e in ev)
        refusals = [e for e in ev if isinstance(e, Refuse)]
        if refuse:
            assert len(refusals) == 1 and refusals[0].offset == ends[0].dot_offset
            assert TransactionEnd(False, None, "refused") in ev
        else:
            assert not refusals
            assert any(isinstance(e, TransactionEnd) and e.accepted for e in ev)


def test_no_false_smuggling_alarm_on_clean_dots() -> None:
    msg = b"a\r\n..\r\n...\r\n. x\r\n\r\n.\x00x\r\n"  # stuffed dots, none a line of its own
    ev = feed(session(msg))
    assert not any(isinstance(e, Anomaly | Refuse) for e in ev)
    assert content(ev) == b"a\r\n.\r\n..\r\n x\r\n\r\n\x00x\r\n"


def test_empty_message_and_dot_first() -> None:
    ev = feed(session(b""))
    end = next(e for e in ev if isinstance(e, DataEnd))
    assert end.size == 0 and content(ev) == b""
    ev = feed(session(b".\n"))  # '.' LF right after DATA is a look-alike too
    assert any(isinstance(e, Anomaly) and e.kind == "smuggling" for e in ev)


def test_starttls_and_bdat_refused() -> None:
    for verb in (b"STARTTLS", b"BDAT 100 LAST"):
        turns: list[Turn] = [
            (S, b"220 mx\r\n"),
            (C, b"EHLO x\r\n"),
            (S, b"250-mx\r\n250 STARTTLS\r\n"),
            (C, b"NOOP\r\n" + verb + b"\r\nMAIL FROM:<a@b>\r\n"),
            (S, b"250 ok\r\n220 ready for TLS\r\n"),
        ]
        m = SMTPConnection()
        ev: list[Event] = []
        for side, data in turns:
            ev += m.receive_client(data) if side is C else m.receive_server(data)
        refusals = [e for e in ev if isinstance(e, Refuse)]
        off = len(b"EHLO x\r\nNOOP\r\n")
        assert refusals == [Refuse(refusals[0].reason, off, verb.split()[0].decode())]
        assert m.client_consumed == off  # the refused line is never released
        assert m.client_state is ClientState.REFUSED
        assert not any(isinstance(e, Command) and e.verb == "MAIL" for e in ev)
    assert refusal_reply("STARTTLS\r\nis not allowed") == b"554 5.7.1 STARTTLS??is not allowed\r\n"


def test_refusal_cannot_be_dodged() -> None:
    base: list[Turn] = [(S, b"220 mx\r\n"), (C, b"EHLO x\r\n"), (S, b"250-mx\r\n250 STARTTLS\r\n")]
    for line in (b"STARTTLS\t\r\n", b"starttls\r\n", b"  STARTTLS\r\n", b"StartTLS \n", b"\x16\x03\x01\x02\x00"):
        ev = feed([*base, (C, line)])
        assert [e.offset for e in ev if isinstance(e, Refuse)] == [len(b"EHLO x\r\n")], line


def test_auth_initial_response_not_in_events() -> None:
    ev = feed([(S, b"220 mx\r\n"), (C, b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"), (S, b"235 ok\r\n")])
    cmd = next(e for e in ev if isinstance(e, Command))
    assert cmd.verb == "AUTH" and cmd.arg == "PLAIN"


def test_data_rejected_keeps_reading_commands() -> None:
    turns: list[Turn] = [
        (S, b"220 mx\r\n"),
        (C, b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nRSET\r\n"),  # client did not wait
        (S, b"250 hi\r\n250 ok\r\n550 no\r\n554 no valid recipients\r\n250 reset\r\n"),
    ]
    ev = feed(turns)
    assert not any(isinstance(e, DataStart) for e in ev)
    assert [e.verb for e in ev if isinstance(e, Command)] == ["HELO", "MAIL", "RCPT", "DATA", "RSET"]
    last = ev[-1]
    assert isinstance(last, TransactionEnd) and not last.accepted and last.reason == "rset"
    assert last.reply is not None and last.reply.code == 250
    assert normalize(bytewise(turns)) == normalize(ev)


def test_content_sent_before_354_is_read_after_it() -> None:
    msg = b"Subject: x\r\n\r\nhi\r\n"
    turns: list[Turn] = [
        (S, b"220 mx\r\n"),
        (C, b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n" + msg + b".\r\nQUIT\r\n"),
        (S, b"250 hi\r\n250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n221 bye\r\n"),
    ]
    ev = feed(turns)
    assert content(ev) == msg
    assert [e.verb for e in ev if isinstance(e, Command)] == ["HELO", "MAIL", "RCPT", "DATA", "QUIT"]
    assert any(isinstance(e, TransactionEnd) and e.accepted for e in ev)
    assert normalize(bytewise(turns)) == normalize(ev)


def test_auth_login_exchange() -> None:
    turns: list[Turn] = [
        (S, b"220 mx\r\n"),
        (C, b"EHLO x\r\n"),
        (S, b"250-mx\r\n250 AUTH LOGIN PLAIN\r\n"),
        (C, b"AUTH LOGIN\r\n"),
        (S, b"334 VXNlcm5hbWU6\r\n"),
        (C, b"dXNlcg==\r\n"),
        (S, b"334 UGFzc3dvcmQ6\r\n"),
        (C, b"MAIL FROM:<looks@like.a.command>\r\n"),  # a password is not a command
        (S, b"235 2.7.0 ok\r\n"),
        (C, b"MAIL FROM:<a@b>\r\n"),
        (S, b"250 ok\r\n"),
    ]
    ev = feed(turns)
    assert [e.verb for e in ev if isinstance(e, Command)] == ["EHLO", "AUTH", "MAIL"]
    assert sum(isinstance(e, AuthResponse) for e in ev) == 2
    mail_at = len(b"EHLO x\r\nAUTH LOGIN\r\ndXNlcg==\r\nMAIL FROM:<looks@like.a.command>\r\n")
    assert ev[-1] == TransactionStart("a@b", mail_at)
    assert normalize(bytewise(turns)) == normalize(ev)


def test_rset_and_helo_end_a_transaction() -> None:
    turns: list[Turn] = [
        (S, b"220 mx\r\n"),
        (C, b"HELO x\r\nMAIL FROM:<a@b>\r\nRSET\r\nMAIL FROM:<c@d>\r\nEHLO y\r\n"),
        (S, b"250 hi\r\n250 ok\r\n250 reset\r\n250 ok\r\n250 y\r\n"),
    ]
    ev = feed(turns)
    assert [e.reason for e in ev if isinstance(e, TransactionEnd)] == ["rset", "helo"]


def test_unsolicited_421_ends_session() -> None:
    ev = feed([(S, b"220 mx\r\n"), (C, b"HELO x\r\n"), (S, b"250 hi\r\n421 4.3.2 shutting down\r\n")])
    assert ev[-1] == SessionEnd("421")


def test_limits_discard_but_keep_parsing() -> None:
    big = b"Subject: big\r\n\r\n" + b"0123456789" * 50 + b"\r\n..dot\r\n"
    ev = feed(session(big), limits=SMTPLimits(max_message_size=100))
    assert len(content(ev)) == 100
    end = next(e for e in ev if isinstance(e, DataEnd))
    assert end.truncated and end.size == len(big) - 1
    assert [e.kind for e in ev if isinstance(e, LimitExceeded)] == ["message_size"]
    assert any(isinstance(e, Refuse) and "size" in e.reason for e in ev)
    ev = feed(session(big), limits=SMTPLimits(max_message_size=100), policy=SMTPPolicy(refuse_on_limit=False))
    assert ev[-1] == SessionEnd("quit")  # parsed to the real end and beyond

    turns: list[Turn] = [
        (S, b"220 mx\r\n"),
        (C, b"NOOP " + b"x" * 300 + b"\r\nNOOP\r\n"),
        (S, b"500 line too long\r\n250 ok\r\n"),
    ]
    ev = feed(turns, limits=SMTPLimits(max_command_line=64))
    assert any(isinstance(e, LimitExceeded) and e.kind == "command_line" for e in ev)
    assert [(e.code, e.command) for e in ev if isinstance(e, Reply)] == [(220, None), (500, ""), (250, "NOOP")]
    lim = SMTPLimits(max_command_line=64)
    assert normalize(bytewise(turns, limits=lim)) == normalize(feed(turns, limits=lim))

    ev = feed([(S, b"220 mx\r\n"), (C, b"NOOP\r\n" * 5)], limits=SMTPLimits(max_commands=3))
    assert any(isinstance(e, Refuse) for e in ev)
    assert sum(isinstance(e, Command) for e in ev) == 4


def test_malformed_reply_is_a_remote_error_and_sticky() -> None:
    m = SMTPConnection()
    with pytest.raises(RemoteProtocolError):
        m.receive_server(b"hello there\r\n")
    with pytest.raises(SMTPError):
        m.receive_client(b"HELO x\r\n")


def test_map_rewrite_skips_stuffed_dots_and_keeps_framing() -> None:
    raw_msg = b"abc\r\n..def\r\nghi\r\n"
    turns = session(raw_msg)
    ev = feed(turns)
    start = next(e for e in ev if isinstance(e, DataStart)).offset
    omap = OffsetMap(start)
    for e in ev:
        if isinstance(e, DataChunk):
            omap.add(e.removed_dots)
    body = content(ev)
    assert body == b"abc\r\n.def\r\nghi\r\n"
    old = body[2:10]  # "c\r\n.def\r"
    new = b"X\r\n.XYZ\r"
    pieces = omap.map_rewrite(2, old, new)
    cs = bytearray(stream(turns, C))
    for off, data in pieces:
        cs[off : off + len(data)] = data
    assert cs[start : start + len(raw_msg)] == b"abX\r\n..XYZ\r\nghi\r\n"  # the stuffing dot stays
    with pytest.raises(RewriteError):
        omap.map_rewrite(0, b"abc\r", b"abcX")  # moves a line ending
    with pytest.raises(RewriteError):
        omap.map_rewrite(11, b"ghi", b".hi")  # a new dot at a line start
    with pytest.raises(RewriteError):
        omap.map_rewrite(0, b"ab", b"abc")


def _framing_reference(old: bytes, new: bytes) -> str | None:
    """The per-byte rule map_rewrite enforces (its first implementation), as the oracle."""
    for p, (a, b) in enumerate(zip(old, new, strict=True)):
        if (a in (0x0D, 0x0A) or b in (0x0D, 0x0A)) and a != b:
            return f"rewrite changes a line ending at content offset {10 + p}"
        if b == 0x2E and a != 0x2E and (p == 0 or old[p - 1] == 0x0A):
            return f"rewrite puts a '.' at a line start at content offset {10 + p}"
    return None


_FRAMING_BYTES = st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\n."])


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(_FRAMING_BYTES, _FRAMING_BYTES, st.integers(0, 3)), max_size=30), st.integers(0, 3))
@example([(b"a", b"a", 1), (b"\n", b"\n", 1), (b"a", b".", 0)], 0)  # a new dot after an LF
@example([(b"a", b".", 0), (b"\r\n", b"\r\n", 1)], 0)  # a new dot at the start
@example([(b"a", b"a", 1), (b"\r", b"\n", 0)], 0)  # a moved line ending
def test_map_rewrite_framing_check_matches_the_per_byte_rule(tokens: list[tuple[bytes, bytes, int]], cut: int) -> None:
    """The bulk check (translate + find) accepts and refuses exactly what the per-byte loop did,
    with the same message (the offset of the first offending byte). Most tokens stay as they
    are (a rewrite changes a few places), so every kind of violation gets to be the first one."""
    old = b"".join(a for a, _, _ in tokens)
    new = b"".join(b[: len(a)].ljust(len(a), b"x") if change == 0 else a for a, b, change in tokens)
    old, new = old[cut:], new[cut:]
    want = _framing_reference(old, new)
    if want is None:
        pieces = OffsetMap(100).map_rewrite(10, old, new)
        assert b"".join(d for _, d in pieces) == new
    else:
        with pytest.raises(RewriteError) as exc:
            OffsetMap(100).map_rewrite(10, old, new)
        assert str(exc.value) == want


# --- fuzz ----------------------------------------------------------------------------------------
_TOKENS = [
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"\x00",
    b"250 ok",
    b"250-",
    b"354 go",
    b"334 x",
    b"220 hi",
    b"HELO x",
    b"EHLO x",
    b"MAIL FROM:<a@b>",
    b"RCPT TO:<c@d>",
    b"DATA",
    b"AUTH LOGIN",
    b"RSET",
    b"QUIT",
    b"STARTTLS",
    b"BDAT 3",
    b"421 bye",
    b"550 no",
    b"x",
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from([C, S]), st.lists(st.sampled_from(_TOKENS) | st.binary(max_size=6), max_size=10)),
        max_size=20,
    )
)
def test_fuzz_only_declared_errors(script: list[tuple[Side, list[bytes]]]) -> None:
    m = SMTPConnection(limits=SMTPLimits(max_command_line=80, max_reply_line=80, max_message_size=50, max_pending=200))
    cfed = 0
    try:
        for side, toks in script:
            data = b"".join(toks)
            if side is C:
                ev = m.receive_client(data)
                cfed += len(data)
            else:
                ev = m.receive_server(data)
            assert m.client_consumed <= cfed
            for e in ev:
                if isinstance(e, Rewrite):
                    assert e.data.startswith(b"X")
    except SMTPError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_sessions(data: st.DataObject) -> None:
    turns = session()
    i = data.draw(st.integers(0, len(turns) - 1))
    side, payload = turns[i]
    pos = data.draw(st.integers(0, len(payload)))
    ins = data.draw(st.sampled_from(_TOKENS) | st.binary(max_size=4))
    turns[i] = (side, payload[:pos] + ins + payload[pos:])
    try:
        whole = normalize(feed(turns))
    except SMTPError:
        with pytest.raises(SMTPError):
            bytewise(turns)
        return
    assert normalize(bytewise(turns)) == whole
