"""Sans-I/O SMTP machine for inline inspection, both directions.

    m = SMTPConnection()
    events = m.receive_client(bytes_from_client)   # commands, DATA content
    events += m.receive_server(bytes_from_server)  # replies, matched to commands in order
    m.client_consumed / m.server_consumed          # stream offsets parsed so far

The gateway never speaks SMTP itself: it watches both streams and follows the *server's*
decisions (a transaction starts when MAIL gets 2xx, content starts when DATA gets 354). Client
bytes after DATA/AUTH are buffered unparsed until the server's reply says how to read them,
exactly as the server will; the inspector must not release bytes past `client_consumed`.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gateway.smtp.data import DataScanner, OffsetMap
from gateway.smtp.events import (
    Anomaly,
    AuthResponse,
    Command,
    DataChunk,
    DataEnd,
    DataStart,
    Event,
    LimitExceeded,
    LocalProtocolError,
    Recipient,
    Refuse,
    RemoteProtocolError,
    Reply,
    Rewrite,
    SessionEnd,
    Side,
    SMTPLimits,
    SMTPPolicy,
    TransactionEnd,
    TransactionStart,
)


class ClientState(enum.Enum):
    COMMAND = "command"  # reading command lines (pipelined or not)
    AWAIT_DATA_REPLY = "await_data_reply"  # DATA sent: 354 -> content, else commands
    DATA = "data"  # message content up to CRLF.CRLF
    AWAIT_AUTH_REPLY = "await_auth_reply"  # AUTH (or a response) sent: 334 -> one more line
    AUTH_LINE = "auth_line"  # the next line answers a 334 challenge
    REFUSED = "refused"  # policy refused: nothing more is parsed or released
    ERROR = "error"


class SessionState(enum.Enum):
    GREETING = "greeting"  # waiting for the server's 220
    READY = "ready"  # no EHLO/HELO accepted yet
    HELLO = "hello"  # EHLO/HELO accepted, no transaction
    MAIL = "mail"  # MAIL accepted
    RCPT = "rcpt"  # at least one RCPT accepted
    DATA = "data"  # 354 seen; content or the final reply pending
    CLOSED = "closed"  # QUIT answered or 421


# Client stream: which state a command line leads to (absent: stay in COMMAND).
_CLIENT_AFTER_COMMAND: dict[str, ClientState] = {
    "DATA": ClientState.AWAIT_DATA_REPLY,
    "AUTH": ClientState.AWAIT_AUTH_REPLY,
}
# Client stream after a reply: (state, reply code) -> state; code 0 = any other code.
_CLIENT_AFTER_REPLY: dict[tuple[ClientState, int], ClientState] = {
    (ClientState.AWAIT_DATA_REPLY, 354): ClientState.DATA,
    (ClientState.AWAIT_DATA_REPLY, 0): ClientState.COMMAND,
    (ClientState.AWAIT_AUTH_REPLY, 334): ClientState.AUTH_LINE,
    (ClientState.AWAIT_AUTH_REPLY, 0): ClientState.COMMAND,
}
# Session after a positive reply to a verb ('.' = end of DATA). Negative replies change nothing,
# except where _SESSION_ON_FAILURE says so.
_SESSION_ON_SUCCESS: dict[str, SessionState] = {
    "EHLO": SessionState.HELLO,
    "HELO": SessionState.HELLO,
    "MAIL": SessionState.MAIL,
    "RCPT": SessionState.RCPT,
    "DATA": SessionState.DATA,
    ".": SessionState.HELLO,
    "RSET": SessionState.HELLO,
    "QUIT": SessionState.CLOSED,
}
_SESSION_ON_FAILURE: dict[str, SessionState] = {
    ".": SessionState.HELLO,  # a rejected message ends the transaction too
}
_IN_TRANSACTION = frozenset({SessionState.MAIL, SessionState.RCPT, SessionState.DATA})

_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -]|$)")
_VERB = re.compile(rb"[A-Za-z][A-Za-z0-9-]{0,31}")
_TLS_RECORD = b"\x16\x03"  # a TLS handshake record: someone is starting TLS behind our back
_PATH = re.compile(r"(?i)^(?:FROM|TO)\s*:\s*(<[^>]*>|\S*)")


@dataclass(slots=True)
class _Pending:
    verb: str
    offset: int
    arg: str  # the address for MAIL/RCPT


def _text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def _path(arg: str) -> str:
    m = _PATH.match(arg)
    if not m:
        return arg
    return m.group(1).strip("<>")


class SMTPConnection:
    """One SMTP session seen from the middle. Not thread-safe; no I/O, no clock."""

    def __init__(
        self,
        limits: SMTPLimits | None = None,
        policy: SMTPPolicy | None = None,
        client_offset: int = 0,
        server_offset: int = 0,
    ) -> None:
        self.limits = limits if limits is not None else SMTPLimits()
        self.policy = policy if policy is not None else SMTPPolicy()
        self.client_state = ClientState.COMMAND
        self.session = SessionState.GREETING
        self._cbuf = bytearray()
        self._cbase = client_offset  # stream offset of _cbuf[0] (= client_consumed)
        self._sbuf = bytearray()
        self._sbase = server_offset
        self._pending: deque[_Pending] = deque()
        self._commands = 0
        self._discarding = False  # inside an over-long command line
        self._discard_start = 0
        # current reply being assembled
        self._reply_lines: list[str] = []
        self._reply_code = 0
        self._reply_offset = 0
        # current message
        self._scanner: DataScanner | None = None
        self.offset_map: OffsetMap | None = None  # of the current (or last) message
        self._truncated = False
        self._lookalike = False
        self.extensions: frozenset[str] = frozenset()  # EHLO keywords as the client sees them (masked removed)

    # --- public API -------------------------------------------------------------------------
    @property
    def client_consumed(self) -> int:
        """Client bytes before this offset are parsed: safe to release (with any Rewrite)."""
        return self._cbase

    @property
    def server_consumed(self) -> int:
        return self._sbase

    @property
    def in_transaction(self) -> bool:
        return self.session in _IN_TRANSACTION

    def receive_client(self, data: bytes) -> list[Event]:
        self._check_usable()
        out: list[Event] = []
        if self.client_state is ClientState.REFUSED:
            return out
        self._cbuf += data
        self._guard(self._run_client, out)
        return out

    def receive_server(self, data: bytes) -> list[Event]:
        self._check_usable()
        out: list[Event] = []
        if self.client_state is ClientState.REFUSED:
            return out
        self._sbuf += data
        self._guard(self._run_server, out)
        return out

    def end_of_stream(self, side: Side) -> list[Event]:
        """A direction ended (FIN/RST). An open transaction ends unaccepted: a message cut off
        before CRLF.CRLF is not delivered by any server, so its held bytes need no release."""
        self._check_usable()
        out: list[Event] = []
        if self.client_state is ClientState.REFUSED or self.session is SessionState.CLOSED:
            return out
        if side is Side.CLIENT and self._cbuf and self.client_state is not ClientState.DATA:
            out.append(Anomaly("truncated", Side.CLIENT, self._cbase, f"{len(self._cbuf)} bytes without a line end"))
        self._close(f"{side.value}_eof", out)
        return out

    # --- internals --------------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self.client_state is ClientState.ERROR:
            raise LocalProtocolError("SMTP machine is in ERROR state")

    def _guard(self, fn: Callable[[list[Event]], None], out: list[Event]) -> None:
        try:
            fn(out)
        except RemoteProtocolError:
            self.client_state = ClientState.ERROR
            raise

    def _refuse(self, reason: str, offset: int, command: str | None, out: list[Event]) -> None:
        out.append(Refuse(reason, offset, command))
        # Nothing from `offset` on may be released: client_consumed says so from now on.
        self._cbase = min(self._cbase, offset)
        if self.in_transaction:
            out.append(TransactionEnd(False, None, "refused"))
        self.client_state = ClientState.REFUSED

    # client side
    def _run_client(self, out: list[Event]) -> None:
        while self.client_state in (ClientState.COMMAND, ClientState.AUTH_LINE, ClientState.DATA):
            before = self._cbase
            if self.client_state is ClientState.DATA:
                self._client_data(out)
            else:
                self._client_line(out)
            if self._cbase == before:
                break  # need more bytes
        waiting = self.client_state in (ClientState.AWAIT_DATA_REPLY, ClientState.AWAIT_AUTH_REPLY)
        if waiting and len(self._cbuf) > self.limits.max_pending:
            out.append(LimitExceeded("pending", Side.CLIENT, self._cbase))
            self._refuse("client does not wait for the server's reply", self._cbase, None, out)

    def _consume_client(self, n: int) -> None:
        del self._cbuf[:n]
        self._cbase += n

    def _client_line(self, out: list[Event]) -> None:
        if self._cbuf.startswith(_TLS_RECORD) and not self._discarding:
            self._refuse("TLS handshake inside the inspected session", self._cbase, None, out)
            return
        nl = self._cbuf.find(b"\n")
        if self._discarding:
            if nl < 0:
                self._consume_client(len(self._cbuf))
                return
            self._consume_client(nl + 1)
            self._discarding = False
            # The server answers the over-long line (500): keep replies in step.
            self._pending.append(_Pending("", self._discard_start, ""))
            return
        if nl < 0:
            if len(self._cbuf) > self.limits.max_command_line:
                out.append(LimitExceeded("command_line", Side.CLIENT, self._cbase))
                self._discarding = True
                self._discard_start = self._cbase
                self._consume_client(len(self._cbuf))
            return
        offset = self._cbase
        raw = bytes(self._cbuf[: nl + 1])
        self._consume_client(nl + 1)
        if len(raw) > self.limits.max_command_line:
            out.append(LimitExceeded("command_line", Side.CLIENT, offset))
            self._pending.append(_Pending("", offset, ""))
            return
        if not raw.endswith(b"\r\n"):
            out.append(Anomaly("bare_lf", Side.CLIENT, offset, "command line ends in a bare LF"))
        line = raw.rstrip(b"\r\n")
        if self.client_state is ClientState.AUTH_LINE:
            out.append(AuthResponse(offset, len(raw)))
            self._pending.append(_Pending("AUTH", offset, ""))
            self.client_state = ClientState.AWAIT_AUTH_REPLY
            return
        self._command(line, raw, offset, out)

    def _command(self, line: bytes, raw: bytes, offset: int, out: list[Event]) -> None:
        # Split on any whitespace, as servers do: "STARTTLS\t" must not slip past as unknown.
        parts = line.split(None, 1)
        verb = ""
        arg = ""
        if parts and _VERB.fullmatch(parts[0]):
            verb = parts[0].decode("ascii").upper()
            arg = _text(parts[1]).strip() if len(parts) > 1 else ""
        if verb == "AUTH":
            arg = arg.split(" ", 1)[0]  # the mechanism; never an initial response (credentials)
        out.append(Command(verb, arg, offset, raw))
        self._commands += 1
        if self._commands > self.limits.max_commands:
            out.append(LimitExceeded("commands", Side.CLIENT, offset))
            self._refuse("too many commands", offset, verb, out)
            return
        if verb in self.policy.refuse_verbs:
            self._refuse(f"{verb} is not allowed through the inspecting gateway", offset, verb, out)
            return
        self._pending.append(_Pending(verb, offset, _path(arg) if verb in ("MAIL", "RCPT") else ""))
        self.client_state = _CLIENT_AFTER_COMMAND.get(verb, ClientState.COMMAND)

    def _client_data(self, out: list[Event]) -> None:
        scanner = self._scanner
        omap = self.offset_map
        assert scanner is not None and omap is not None
        start_content = scanner.content_size
        buf = bytes(self._cbuf)
        res = scanner.scan(buf, self._cbase)
        limit = self.limits.max_message_size
        data = res.data
        removed = res.removed
        if start_content + len(data) > limit:
            if not self._truncated:
                out.append(LimitExceeded("message_size", Side.CLIENT, self._cbase))
                self._truncated = True
            keep = max(0, limit - start_content)
            data = data[:keep]
            removed = tuple(r for r in removed if r < start_content + keep)
        raw_end = self._cbase + (res.dot if res.dot is not None else res.consumed)
        if data or removed:
            omap.add(removed)
            out.append(DataChunk(self._cbase, raw_end, data, start_content, removed))
        for at, text in res.lookalikes:
            self._lookalike = True
            out.append(Anomaly("smuggling", Side.CLIENT, at, f"end-of-data look-alike {text!r}"))
        if res.dot is None:
            self._consume_client(res.consumed)
            return
        dot_offset = self._cbase + res.dot
        self._consume_client(res.consumed)
        out.append(DataEnd(dot_offset, self._cbase, scanner.content_size, self._truncated))
        self._scanner = None
        self._pending.append(_Pending(".", dot_offset, ""))
        self.client_state = ClientState.COMMAND
        if self._lookalike and self.policy.refuse_smuggling:
            self._refuse("SMTP smuggling: end-of-data look-alike in the message", dot_offset, ".", out)
        elif self._truncated and self.policy.refuse_on_limit:
            self._refuse("message exceeds the size limit", dot_offset, ".", out)

    # server side
    def _run_server(self, out: list[Event]) -> None:
        while self.client_state is not ClientState.REFUSED:
            nl = self._sbuf.find(b"\n")
            if nl < 0:
                if len(self._sbuf) > self.limits.max_reply_line:
                    raise RemoteProtocolError("server reply line too long")
                return
            offset = self._sbase
            raw = bytes(self._sbuf[: nl + 1])
            del self._sbuf[: nl + 1]
            self._sbase += nl + 1
            self._reply_line(raw, offset, out)
            if self.client_state in (ClientState.COMMAND, ClientState.AUTH_LINE, ClientState.DATA) and self._cbuf:
                self._run_client(out)  # a reply may have unblocked buffered client bytes

    def _reply_line(self, raw: bytes, offset: int, out: list[Event]) -> None:
        if len(raw) > self.limits.max_reply_line:
            raise RemoteProtocolError("server reply line too long")
        line = raw.rstrip(b"\r\n")
        m = _REPLY_LINE.match(line)
        if not m:
            raise RemoteProtocolError(f"malformed reply line {line[:40]!r}")
        code = int(m.group(1))
        last = m.group(2) != b"-"
        if not self._reply_lines:
            self._reply_code = code
            self._reply_offset = offset
        elif code != self._reply_code:
            out.append(Anomaly("reply_code_mismatch", Side.SERVER, offset, f"{code} inside a {self._reply_code} reply"))
        if len(self._reply_lines) >= self.limits.max_reply_lines:
            raise RemoteProtocolError("server reply has too many lines")
        text = _text(line[4:])
        pend = self._pending[0] if self._pending and self.session is not SessionState.GREETING else None
        if pend is not None and pend.verb == "EHLO" and code == 250 and self._reply_lines:
            text = self._mask_keyword(line, offset, out)
        self._reply_lines.append(text)
        if last:
            reply = Reply(code, tuple(self._reply_lines), self._reply_offset, self._sbase, pend.verb if pend else None)
            self._reply_lines = []
            self._on_reply(reply, out)

    def _mask_keyword(self, line: bytes, offset: int, out: list[Event]) -> str:
        """Mask a forbidden EHLO keyword in place: 'STARTTLS' -> 'XXXXXXXA' (as mail firewalls do)."""
        body = line[4:]
        kw = body.split(b" ", 1)[0]
        if kw.upper().decode("ascii", "replace") in self.policy.mask_keywords and kw:
            masked = b"X" * (len(kw) - 1) + b"A"
            out.append(Rewrite(Side.SERVER, offset + 4, masked, f"mask EHLO keyword {kw.decode('ascii')}"))
            body = masked + body[len(kw) :]
        return _text(body)

    def _on_reply(self, reply: Reply, out: list[Event]) -> None:
        if self.session is SessionState.GREETING:  # even if the client talked first (pregreet)
            out.append(reply)
            self.session = SessionState.READY
            if reply.code == 421:
                self._close("421", out)
            return
        if not self._pending:
            out.append(reply)
            if reply.code == 421:
                self._close("421", out)
            else:
                out.append(Anomaly("unsolicited_reply", Side.SERVER, reply.offset, f"{reply.code} with no command"))
            return
        pend = self._pending.popleft()
        out.append(reply)
        ok = 200 <= reply.code < 400 if pend.verb in ("DATA", "AUTH") else 200 <= reply.code < 300
        verb = pend.verb
        was_in_txn = self.in_transaction
        if verb == "EHLO" and ok:
            self.extensions = frozenset(
                t.split(" ", 1)[0].upper() for t in reply.lines[1:] if t and not t.startswith("XXX")
            )
        if verb in ("EHLO", "HELO", "RSET") and ok and was_in_txn:
            out.append(TransactionEnd(False, reply, "rset" if verb == "RSET" else "helo"))
        elif verb == "MAIL" and ok:
            out.append(TransactionStart(pend.arg, pend.offset))
        elif verb == "RCPT" and self.in_transaction:
            out.append(Recipient(pend.arg, ok, reply.code))
        elif verb == "DATA" and reply.code == 354:
            start = self._cbase  # the client stream stopped right after the DATA line
            self._scanner = DataScanner(start)
            self.offset_map = OffsetMap(start)
            self._truncated = False
            self._lookalike = False
            out.append(DataStart(start))
        elif verb == ".":
            out.append(TransactionEnd(ok, reply, "data"))
        new = (_SESSION_ON_SUCCESS if ok else _SESSION_ON_FAILURE).get(verb)
        if verb == "DATA" and reply.code != 354:
            new = None
        if new is not None:
            self.session = new
        if reply.code == 421:
            self._close("421", out)
        elif verb == "QUIT" and ok:
            self._close("quit", out)
        if not self._pending:  # the reply to the DATA/AUTH the client stream is waiting on
            nxt = _CLIENT_AFTER_REPLY.get((self.client_state, reply.code)) or _CLIENT_AFTER_REPLY.get(
                (self.client_state, 0)
            )
            if nxt is not None:
                self.client_state = nxt

    def _close(self, reason: str, out: list[Event]) -> None:
        if self.in_transaction:
            out.append(TransactionEnd(False, None, "closed"))
        self.session = SessionState.CLOSED
        out.append(SessionEnd(reason))
