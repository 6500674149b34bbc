"""Events, limits and errors of the streaming MIME parser (h11 style: small frozen nouns).

Every event that stands for input bytes carries ABSOLUTE offsets into the content fed to the
parser (byte 0 = the first byte fed: for SMTP, the first byte of the dot-unstuffed DATA content).
The ranges of `PartStart` (header block), `PartData`, `Boundary`, `Preamble` and `Epilogue` tile
the input exactly: every byte fed belongs to exactly one of them, in order. That is what lets the
inspector map any decision back onto the TCP stream and rewrite in place, and it is why no part
can hide from the classifier (tested by fuzzing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.mime.headers import Header, Params
    from gateway.mime.names import DecodedName


class MimeError(Exception):
    """Base of the errors the MIME package raises. Input never raises: bad input gives events."""


class MimeUsageError(MimeError):
    """The caller broke the protocol of the parser (e.g. `feed` after `end`)."""


@dataclass(frozen=True)
class Limits:
    """Bounds on everything the parser keeps or counts. Exceeding one gives `LimitExceeded`."""

    max_header_size: int = 64 * 1024  # one entity's header block, bytes
    max_headers: int = 1000  # header fields per entity
    # A line the parser must hold whole: header lines, and body lines that could still be a
    # boundary delimiter ("--boundary" + transport padding). Other body lines stream through at
    # any length, so binary parts without line breaks cost no memory.
    max_line_length: int = 8192
    max_body_line_length: int | None = None  # optional cap on every body line (None: no cap)
    max_depth: int = 20  # nesting of multipart and message/rfc822 entities (root = 1)
    max_parts: int = 1000  # entities (header blocks) in the whole message
    max_total_size: int = 64 * 1024 * 1024  # bytes fed
    max_boundary_length: int = 200  # RFC 2046 allows 70; we tolerate more, not unboundedly


@dataclass(frozen=True)
class ContentType:
    maintype: str  # lower case, e.g. "multipart"
    subtype: str  # lower case, e.g. "mixed"
    params: Params  # raw parameters, in order (see gateway.mime.headers)
    declared: bool  # False: no (parsable) Content-Type header, this is the default

    @property
    def mime_type(self) -> str:
        return f"{self.maintype}/{self.subtype}"


@dataclass(frozen=True)
class PartStart:
    """An entity's header block has been read. Range: [header_start, body_start)."""

    path: str  # "" for the message itself, "1", "1.2", ...; a message/rfc822 part P holds entity "P.1"
    depth: int  # 1 for the root
    header_start: int
    header_end: int  # after the last header line (== start of the blank separator line)
    body_start: int  # after the blank line (== header_end when it is missing)
    headers: tuple[Header, ...]
    content_type: ContentType
    transfer_encoding: str  # lower case; "7bit" when absent
    disposition: str | None  # "attachment" / "inline" / other, lower case; None when absent
    disposition_params: Params
    kind: str  # "leaf", "multipart" or "message" (a message/rfc822 parsed recursively)
    boundary: bytes | None  # for kind "multipart"
    names: tuple[DecodedName, ...]  # every filename/name parameter, decoded (gateway.mime.names)

    @property
    def filename(self) -> DecodedName | None:
        """The name a mail client would most likely show (the first of `names`)."""
        return self.names[0] if self.names else None


@dataclass(frozen=True)
class PartData:
    """Raw body bytes of a leaf part, [offset, offset + len(raw)), and what they decode to.

    `decoded` is the output of the incremental transfer decoder for these bytes; decoders hold a
    few bytes between events (base64 quantum, a split QP escape), so `decoded` lags `raw`
    slightly and the remainder arrives in the last PartData of the part (whose `raw` may be empty).
    """

    path: str
    offset: int
    raw: bytes
    decoded: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.raw)


@dataclass(frozen=True)
class PartEnd:
    path: str
    body_end: int  # end of the body: the line break before the next delimiter belongs to the delimiter
    decoded_size: int  # for leaves: total decoded bytes; for containers: 0


@dataclass(frozen=True)
class Boundary:
    """A delimiter line of the multipart at `path`. Range: [offset, end).

    `offset` is where the delimiter starts including the line break before it (RFC 2046: that line
    break belongs to the delimiter, not to the preceding body); `line_start` is the "--".
    """

    path: str
    offset: int
    line_start: int
    end: int  # after the line's own line break (or end of input)
    closing: bool  # "--boundary--"
    index: int  # number of the part that follows (1-based); for closing: the count of parts


@dataclass(frozen=True)
class Preamble:
    """Bytes of a multipart before its first delimiter (ignored by mail clients)."""

    path: str
    offset: int
    raw: bytes


@dataclass(frozen=True)
class Epilogue:
    """Bytes of a multipart after its closing delimiter (ignored by mail clients)."""

    path: str
    offset: int
    raw: bytes


@dataclass(frozen=True)
class Defect:
    """Something malformed or ambiguous that the parser recovered from.

    Decoding defects (base64/QP) are reported just before the part's PartEnd, with offset =
    body_start, so that events do not depend on how the input was chunked.
    Mail clients recover differently: the inspector may refuse on defects that can make clients
    see a different structure than we did (see docs/mime.md for the list and their risk).
    """

    path: str
    offset: int
    kind: str
    detail: str = ""


@dataclass(frozen=True)
class LimitExceeded:
    """A limit was hit. The parser stops producing events; the message must be refused."""

    path: str
    offset: int
    limit: str  # the field name in Limits
    value: int  # the configured bound


@dataclass(frozen=True)
class MessageEnd:
    """`end()` was called and the structure is closed. Last event of a parse."""

    size: int
    defects: int = field(default=0)


Event = PartStart | PartData | PartEnd | Boundary | Preamble | Epilogue | Defect | LimitExceeded | MessageEnd
