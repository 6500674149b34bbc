"""Events, errors and limits of the sans-I/O SMTP inspection machine.

Every event is a small frozen dataclass. Offsets are stream offsets of the direction named
(client->server for commands and DATA, server->client for replies), in the same coordinates
as `gateway.stream.reassembly.StreamData.offset`, so the inspector can release and rewrite
exactly the bytes an event is about.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Side(enum.Enum):
    CLIENT = "client"  # bytes the client sends (commands, DATA content)
    SERVER = "server"  # bytes the server sends (replies)


# --- errors (h11 style: local = our caller's fault, remote = the peer's) ----------------------
class SMTPError(Exception):
    """Base of the errors the SMTP machine raises."""


class LocalProtocolError(SMTPError):
    """The caller misused the machine (e.g. fed it after an error)."""


class RemoteProtocolError(SMTPError):
    """A peer sent something the machine cannot follow; the machine is now in ERROR."""


class RewriteError(SMTPError):
    """A content rewrite cannot be mapped onto the raw DATA stream without changing its framing."""


# --- limits and policy -----------------------------------------------------------------------
DEFAULT_MASK_KEYWORDS = frozenset({"STARTTLS", "CHUNKING", "BINARYMIME"})
DEFAULT_REFUSE_VERBS = frozenset({"STARTTLS", "BDAT"})


@dataclass(frozen=True, slots=True)
class SMTPLimits:
    max_command_line: int = 4096  # RFC 5321 says 512; real clients with long AUTH lines need more
    max_reply_line: int = 4096
    max_reply_lines: int = 512
    max_commands: int = 10_000
    max_message_size: int = 50 << 20  # unstuffed DATA bytes; the guideline requires a size cap
    max_pending: int = 1 << 20  # client bytes buffered while waiting for a DATA/AUTH reply


@dataclass(frozen=True, slots=True)
class SMTPPolicy:
    # EHLO keywords masked in place in the server's reply (same length, so no seq changes).
    mask_keywords: frozenset[str] = DEFAULT_MASK_KEYWORDS
    # Commands that would take the session out of our sight (TLS) or past the DATA parser (BDAT).
    refuse_verbs: frozenset[str] = DEFAULT_REFUSE_VERBS
    refuse_smuggling: bool = True  # refuse a message with a lax end-of-data look-alike in it
    refuse_on_limit: bool = True  # refuse a message whose size limit was exceeded


# --- events ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Command:
    """A client command line. `verb` is upper-case ('' if unparsable), `arg` decoded for logs."""

    verb: str
    arg: str
    offset: int
    line: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """A client line answering a 334 challenge (contents withheld from events on purpose)."""

    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete (possibly multiline) server reply, matched to the command it answers."""

    code: int
    lines: tuple[str, ...]
    offset: int
    end_offset: int
    command: str | None  # verb answered; None for the greeting or an unsolicited reply; "." = end of DATA


@dataclass(frozen=True, slots=True)
class TransactionStart:
    mail_from: str
    offset: int  # of the MAIL command


@dataclass(frozen=True, slots=True)
class Recipient:
    address: str
    accepted: bool
    code: int


@dataclass(frozen=True, slots=True)
class DataStart:
    offset: int  # client stream offset of the first content byte


@dataclass(frozen=True, slots=True)
class DataChunk:
    """Dot-unstuffed content from raw client stream bytes [offset, end_offset).

    `content_offset` is the position of data[0] in the unstuffed message. `removed_dots` are
    the content offsets at which a stuffing dot was removed (the content byte at that offset
    is the one that followed the dot); `OffsetMap` turns them into a content->stream mapping.
    """

    offset: int
    end_offset: int
    data: bytes
    content_offset: int
    removed_dots: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class DataEnd:
    """The exact CRLF.CRLF was seen: '.' at `dot_offset`, content ends at dot_offset, data at end_offset."""

    dot_offset: int
    end_offset: int
    size: int  # unstuffed content length (also beyond the size limit)
    truncated: bool  # the size limit was hit: DataChunks stopped at the limit


@dataclass(frozen=True, slots=True)
class TransactionEnd:
    accepted: bool
    reply: Reply | None
    reason: str  # "data" (reply to end of DATA), "rset", "helo", "refused", "closed"


@dataclass(frozen=True, slots=True)
class Rewrite:
    """The inspector must release these bytes rewritten (same length) at this stream offset."""

    side: Side
    offset: int
    data: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """Policy refuses the session/message. Live: inject `refusal_reply`, reset the server side,
    never release the client bytes from `offset` on. Replay: an event saying what and why."""

    reason: str
    offset: int  # client stream offset of the refused command or of the end-of-DATA dot
    command: str | None


@dataclass(frozen=True, slots=True)
class LimitExceeded:
    kind: str  # command_line, commands, message_size, pending
    side: Side
    offset: int


@dataclass(frozen=True, slots=True)
class Anomaly:
    kind: str  # bare_lf, smuggling, unsolicited_reply, reply_code_mismatch, truncated
    side: Side
    offset: int
    detail: str


@dataclass(frozen=True, slots=True)
class SessionEnd:
    reason: str  # "quit", "421", "client_eof", "server_eof"


Event = (
    Command
    | AuthResponse
    | Reply
    | TransactionStart
    | Recipient
    | DataStart
    | DataChunk
    | DataEnd
    | TransactionEnd
    | Rewrite
    | Refuse
    | LimitExceeded
    | Anomaly
    | SessionEnd
)


def refusal_reply(reason: str) -> bytes:
    """`554 5.7.1 <reason>\\r\\n`, with the reason reduced to one printable ASCII line."""
    text = "".join(ch if 0x20 <= ord(ch) < 0x7F else "?" for ch in reason)[:400].strip() or "rejected by policy"
    return b"554 5.7.1 " + text.encode("ascii") + b"\r\n"
