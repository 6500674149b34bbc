"""What the mail inspector asks its adapter to do (mitmproxy style: events in, commands out).

Every packet handed to `MailInspector.packet` ends in exactly one `Forward` or `Drop`, now or
later (a held packet's command comes with the call that releases it). `Inject` and `Quarantine`
are extra work; `Log` carries an event-log dict (gateway.mailevents builders).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol


@dataclass(frozen=True, slots=True)
class Forward:
    """Send the packet; `packet` is the rewritten IP packet (checksums fixed), None = unchanged."""

    packet_id: int
    packet: bytes | None = None


@dataclass(frozen=True, slots=True)
class Drop:
    packet_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Inject:
    """Send this crafted IP packet (the 554 reply + FIN to the client, an RST to the server)."""

    packet: bytes
    toward: Literal["client", "server"]
    reason: str


Original = bytes | tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Quarantine:
    """Store `original` under `qid` (QuarantineStore.put(original, meta, qid=qid)) and report
    back with `MailInspector.quarantined` (key, id or error) before executing the commands that
    follow: the message's end of DATA is released only after its originals are stored, so a
    crash never delivers a neutralized message whose original is lost. The inspector derived
    `qid` when it decided (it is already in the part's notice); a store must use it as given."""

    key: int
    # the original's bytes, or its chunks in order (as decoded or received: a 5 MB part is not
    # joined into one more copy; QuarantineStore.put writes them one after the other)
    original: Original
    meta: Any  # gateway.io.quarantine.QuarantineMeta
    qid: str
    # SHA-256 (hex) of `original` when the inspector hashed exactly these bytes already (a removed
    # part: hashed as it was decoded, for its file event); the store need not hash them again
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class Log:
    event: dict[str, Any]


Command = Forward | Drop | Inject | Quarantine | Log


class Store(Protocol):
    """What a Quarantine command is carried out with (gateway.io.quarantine.QuarantineStore)."""

    def put(self, original: Original, meta: Any, qid: str | None = None, sha256: str | None = None) -> str: ...


def store_original(store: Store, c: Quarantine) -> tuple[str | None, str | None]:
    """Carry out `c`: (quarantine id, None), or (None, the error) when the store could not keep
    the original (QuarantineFull, a disk error): the inspector then refuses the message. The
    adapters (live, the live writer threads, replay) all answer `MailInspector.quarantined` with
    this."""
    try:
        return store.put(c.original, c.meta, qid=c.qid, sha256=c.sha256), None
    except Exception as exc:
        return None, str(exc) or type(exc).__name__
