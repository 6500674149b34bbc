"""Builders for the mail events `smtp` (one per transaction) and `file` (one per MIME part).

The schema lives in gateway/io/event_schema.json and docs/events.md; these functions are the one
place that shapes the dicts, so the inspector never writes event keys by hand. Pure: no clock, no
I/O (the caller passes the timestamp it uses for every other command of the flow).

Names follow Suricata's eve.json: `smtp.helo`, `smtp.mail_from`, `smtp.rcpt_to` (Suricata's
`smtp` object), `email.message_id`, `email.subject` (Suricata's `email` object), and for parts
the `fileinfo` object (`filename`, `size`, `sha256`, `magic`, `stored`). Our additions: verdicts,
reasons, raw names, declared vs detected type and quarantine ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from gateway.fastpath.common import format_timestamp

SmtpVerdict = Literal["delivered", "sanitized", "refused"]
FileVerdict = Literal["pass", "neutralized", "refused"]
SMTP_VERDICTS: tuple[str, ...] = ("delivered", "sanitized", "refused")
FILE_VERDICTS: tuple[str, ...] = ("pass", "neutralized", "refused")
MAIL_EVENT_TYPES: tuple[str, ...] = ("smtp", "file")


@dataclass(frozen=True, slots=True)
class FlowInfo:
    """The flow a mail transaction travelled on: its 5-tuple and how the policy decided it.

    Shared by the events and the quarantine metadata. The zone/tier/rule fields are what the
    flow's `flow` event said; None when unknown (they are still written, as null, like in every
    other event, so "unknown" is explicit).
    """

    flow_id: int
    src_ip: str
    src_port: int
    dest_ip: str
    dest_port: int
    src_zone: str | None = None
    dest_zone: str | None = None
    src_tier: str | None = None
    dest_tier: str | None = None
    rule_id: str | None = None
    profile: str | None = None
    policy_generation: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FlowInfo:
        kw: dict[str, Any] = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**kw)


def _header(event_type: str, ts_us: int, flow: FlowInfo, tx_id: int) -> dict[str, Any]:
    # Same key order as format_event, so mail events line up with flow events in a log.
    out: dict[str, Any] = {
        "timestamp": format_timestamp(ts_us),
        "event_type": event_type,
        "flow_id": flow.flow_id,
        "src_ip": flow.src_ip,
        "dest_ip": flow.dest_ip,
        "proto": "TCP",
        "src_port": flow.src_port,
        "dest_port": flow.dest_port,
        "src_zone": flow.src_zone,
        "dest_zone": flow.dest_zone,
        "src_tier": flow.src_tier,
        "dest_tier": flow.dest_tier,
        "rule_id": flow.rule_id,
    }
    if flow.profile:
        out["profile"] = flow.profile
    if flow.policy_generation is not None:
        out["policy_generation"] = flow.policy_generation
    out["tx_id"] = tx_id
    return out


def smtp_event(
    ts_us: int,
    flow: FlowInfo,
    tx_id: int,
    *,
    helo: str | None,
    mail_from: str | None,
    rcpt_to: Sequence[str],
    message_id: str | None,
    subject: str | None,
    size: int,
    verdict: SmtpVerdict,
    reason: str | None = None,
    quarantine_ids: Sequence[str] = (),
) -> dict[str, Any]:
    """One SMTP transaction (MAIL FROM .. end of DATA, or its refusal).

    `tx_id` numbers the transactions of the flow from 0 (Suricata's tx_id); the `file` events of
    the transaction's parts carry the same one. `subject` is the decoded Subject (RFC 2047, NFC);
    `size` the DATA content size in bytes after dot-unstuffing; `reason` why it was sanitized or
    refused (None when delivered untouched).
    """
    if verdict not in SMTP_VERDICTS:
        raise ValueError(f"smtp verdict {verdict!r}")
    out = _header("smtp", ts_us, flow, tx_id)
    smtp: dict[str, Any] = {"rcpt_to": list(rcpt_to)}
    if helo is not None:
        smtp["helo"] = helo
    if mail_from is not None:
        smtp["mail_from"] = mail_from
    out["smtp"] = {k: smtp[k] for k in ("helo", "mail_from", "rcpt_to") if k in smtp}
    email: dict[str, Any] = {}
    if message_id is not None:
        email["message_id"] = message_id
    if subject is not None:
        email["subject"] = subject
    email["size"] = size
    email["verdict"] = verdict
    if reason is not None:
        email["reason"] = reason
    email["quarantine_ids"] = list(quarantine_ids)
    out["email"] = email
    return out


def file_event(
    ts_us: int,
    flow: FlowInfo,
    tx_id: int,
    *,
    path: str,
    filename_raw: str | None,
    filename: str | None,
    declared_type: str | None,
    detected_type: str | None,
    size: int,
    sha256: str,
    verdict: FileVerdict,
    category: str | None = None,
    reason: str | None = None,
    quarantine_id: str | None = None,
    magic: str | None = None,
) -> dict[str, Any]:
    """One MIME part (attachments and inline parts alike; parts without a name too).

    `tx_id` is the transaction's (the same as in its `smtp` event).
    `path` is the MIME part path ("1.2" = second child of the first part); `filename_raw` the
    header value as sent (undecoded, bytes shown as latin-1 text if not ASCII), `filename` the
    decoded NFC name; `size` and `sha256` are of the decoded original content (what a user would
    have saved), `detected_type` the MIME type from magic, `magic` the libmagic description.
    """
    if verdict not in FILE_VERDICTS:
        raise ValueError(f"file verdict {verdict!r}")
    if verdict == "pass" and quarantine_id is not None:
        raise ValueError("a passed part has no quarantine id")
    out = _header("file", ts_us, flow, tx_id)
    info: dict[str, Any] = {"path": path}
    for key, value in (
        ("filename", filename),
        ("filename_raw", filename_raw),
        ("declared_type", declared_type),
        ("detected_type", detected_type),
        ("magic", magic),
    ):
        if value is not None:
            info[key] = value
    info["size"] = size
    info["sha256"] = sha256
    info["verdict"] = verdict
    if category is not None:
        info["category"] = category
    if reason is not None:
        info["reason"] = reason
    info["stored"] = quarantine_id is not None  # Suricata's fileinfo.stored: the original was kept
    if quarantine_id is not None:
        info["quarantine_id"] = quarantine_id
    out["fileinfo"] = info
    return out
