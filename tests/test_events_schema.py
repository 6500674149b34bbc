"""The event log's JSON Schema: every event the engine, the defragmenter and replay write is valid,
the schema rejects drift, and it stays in step with the constants and docs/events.md."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from gateway.fastpath.common import (
    ACCEPT,
    DROP,
    EV_ANOMALY,
    EV_DROP,
    EV_FLOW,
    EVENT_TYPES,
    INSPECT,
    REASONS,
    TIER_NAMES,
    CompiledPolicy,
    RawEvent,
    RuleSpec,
    ZoneSpec,
    addr_to_int,
    format_event,
)
from gateway.io.eventlog import dumps_event, load_schema
from gateway.mailevents import MAIL_EVENT_TYPES

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parent.parent

POLICY = CompiledPolicy(
    zones=(ZoneSpec("lgwan", 1), ZoneSpec("インターネット", 2)),
    prefixes=(),
    interfaces={},
    rules=(RuleSpec("mail-in", 1, 0, 2, 6, profile="mail"), RuleSpec("plain", 0, 1, 1)),
    generation=3,
)


@pytest.fixture(scope="module")
def validator() -> Any:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def raw_events() -> list[RawEvent]:
    v4a, v4b = addr_to_int("198.18.20.10"), addr_to_int("198.19.40.80")
    v6a, v6b = addr_to_int("2001:db8::1"), addr_to_int("2001:db8::2")
    out = []
    for kind, verdict, reason in itertools.product(
        (EV_FLOW, EV_DROP, EV_ANOMALY), (DROP, ACCEPT, INSPECT), range(len(REASONS))
    ):
        for fam, a, b in ((4, v4a, v4b), (6, v6a, v6b)):
            for proto, sport, dport in ((6, 40000, 25), (17, 53, 53), (1, 8, 0), (58, 128, 0), (47, 0, 0)):
                for rule, zones in ((-1, (-1, -1)), (0, (1, 0)), (1, (0, 1))):
                    out.append(
                        RawEvent(
                            kind,
                            1_700_000_000_123_456,
                            12345,
                            fam,
                            a,
                            b,
                            sport,
                            dport,
                            proto,
                            *zones,
                            verdict,
                            rule,
                            reason,
                        )
                    )
    # malformed: nothing parsed
    out.append(RawEvent(EV_ANOMALY, 0, 0, 0, 0, 0, 0, 0, 0, -1, -1, DROP, -1, 3))
    return out


def test_all_rendered_engine_events_are_valid(validator: Any) -> None:
    for ev in raw_events():
        if ev.kind == EV_FLOW and ev.family == 0:
            continue
        d = format_event(ev, POLICY)
        errors = list(validator.iter_errors(d))
        assert not errors, (ev, d, errors[0].message)


def test_replayed_lab_events_are_valid(validator: Any, tmp_path: Path) -> None:
    from test_replay import lab_traffic, run, write_capture

    cap = tmp_path / "lab.pcap"
    write_capture(cap, lab_traffic())
    _, _, events = run(cap, tmp_path)
    assert {e["event_type"] for e in events} == {"flow", "anomaly"}
    for e in events:
        errors = list(validator.iter_errors(e))
        assert not errors, (e, errors[0].message)


def _good() -> dict[str, Any]:
    ev = RawEvent(
        EV_FLOW,
        1_700_000_000_000_000,
        7,
        4,
        addr_to_int("198.18.20.10"),
        addr_to_int("198.19.40.80"),
        1,
        25,
        6,
        1,
        0,
        INSPECT,
        0,
        0,
    )
    return format_event(ev, POLICY)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("timestamp"),
        lambda d: d.update(timestamp="2023-11-14 22:13:20"),
        lambda d: d.update(event_type="alert"),
        lambda d: d.update(action="reject"),
        lambda d: d.update(reason="because"),
        lambda d: d.update(src_tier="dmz"),
        lambda d: d.update(src_port="25"),
        lambda d: d.update(dest_port=70000),
        lambda d: d.pop("dest_port"),
        lambda d: d.update(icmp_type=8),  # ICMP fields on a TCP event
        lambda d: d.pop("flow_id"),  # flow events always have an id
        lambda d: d.update(flow_id=2**53),
        lambda d: d.update(surprise=1),
        lambda d: d.pop("policy_generation"),
        lambda d: d.pop("rule_id"),
    ],
)
def test_schema_rejects_drift(validator: Any, mutate: Any) -> None:
    d = _good()
    assert not list(validator.iter_errors(d))
    mutate(d)
    assert list(validator.iter_errors(d))


def test_schema_follows_constants() -> None:
    props = load_schema()["properties"]
    assert props["reason"]["enum"] == list(REASONS)
    assert props["event_type"]["enum"] == list(EVENT_TYPES) + list(MAIL_EVENT_TYPES)
    assert [t for t in props["src_tier"]["enum"] if t] == list(TIER_NAMES)


def test_docs_describe_every_field_and_reason() -> None:
    doc = (ROOT / "docs" / "events.md").read_text(encoding="utf-8")
    for name in load_schema()["properties"]:
        assert f"`{name}`" in doc, name
    for reason in REASONS:
        assert f"`{reason}`" in doc, reason


def test_lines_are_utf8_not_escaped() -> None:
    d = format_event(
        RawEvent(EV_DROP, 0, 0, 4, addr_to_int("198.19.40.1"), addr_to_int("198.18.20.1"), 1, 2, 17, 1, 0, DROP, -1, 4),
        POLICY,
    )
    line = dumps_event(d)
    assert "インターネット" in line and "\\u" not in line and "\n" not in line


def test_docs_example_is_valid(validator: Any) -> None:
    import json
    import re

    doc = (ROOT / "docs" / "events.md").read_text(encoding="utf-8")
    examples = re.findall(r"```json\n(.*?)\n```", doc, re.S)
    assert examples
    for ex in examples:
        assert not list(validator.iter_errors(json.loads(ex)))


# -- mail events (smtp, file): built only by gateway.mailevents -------------------------------


def _mail_flow() -> Any:
    from gateway.mailevents import FlowInfo

    return FlowInfo(
        7,
        "198.19.40.25",
        40005,
        "198.18.20.25",
        25,
        "インターネット",
        "lgwan",
        "internet",
        "lgwan",
        "mail-in",
        "mail",
        3,
    )


def _smtp(**kw: Any) -> dict[str, Any]:
    from gateway.mailevents import smtp_event

    args: dict[str, Any] = dict(
        helo="relay.example.jp",
        mail_from="a@example.co.jp",
        rcpt_to=["b@city.example.lg.jp"],
        message_id="<1@example.co.jp>",
        subject="請求書",
        size=1234,
        verdict="sanitized",
        reason="executable",
        quarantine_ids=["20261126T165659Z-3f2a9c0d41b7"],
    )
    args.update(kw)
    return smtp_event(1_700_000_000_000_000, _mail_flow(), 0, **args)


def _file(**kw: Any) -> dict[str, Any]:
    from gateway.mailevents import file_event

    args: dict[str, Any] = dict(
        path="1.2",
        filename_raw="=?ISO-2022-JP?B?GyRCQEE1YT1xGyhC?=.exe",
        filename="請求書.exe",
        declared_type="application/pdf",
        detected_type="application/x-dosexec",
        size=10,
        sha256="ab" * 32,
        verdict="neutralized",
        category="executable",
        reason="executable",
        quarantine_id="20261126T165659Z-3f2a9c0d41b7",
    )
    args.update(kw)
    return file_event(1_700_000_000_000_000, _mail_flow(), 0, **args)


@pytest.mark.parametrize(
    "build",
    [
        lambda: _smtp(),
        lambda: _smtp(verdict="delivered", reason=None, quarantine_ids=[]),
        lambda: _smtp(verdict="refused", reason="quarantine_full", quarantine_ids=[], helo=None, subject=None),
        lambda: _smtp(mail_from="", rcpt_to=[]),
        lambda: _file(),
        lambda: _file(verdict="pass", reason=None, category=None, quarantine_id=None),
        lambda: _file(path="", filename=None, filename_raw=None, declared_type=None),
        lambda: _file(verdict="refused", reason="archive_limit", quarantine_id=None, magic="Zip archive data"),
    ],
)
def test_mail_events_are_valid(validator: Any, build: Any) -> None:
    ev = build()
    errors = list(validator.iter_errors(ev))
    assert not errors, (ev, errors[0].message)
    assert "\\u" not in dumps_event(ev)


@pytest.mark.parametrize(
    "make, mutate",
    [
        (_smtp, lambda d: d.update(event_type="file")),
        (_smtp, lambda d: d.pop("tx_id")),
        (_smtp, lambda d: d.pop("flow_id")),
        (_smtp, lambda d: d.update(action="accept")),  # verdicts live in email.verdict
        (_smtp, lambda d: d.update(proto="UDP")),
        (_smtp, lambda d: d["smtp"].pop("rcpt_to")),
        (_smtp, lambda d: d["smtp"].update(rcpt_to="b@x")),
        (_smtp, lambda d: d["email"].update(verdict="passed")),
        (_smtp, lambda d: d["email"].pop("reason")),  # sanitized needs a reason
        (_smtp, lambda d: d["email"].update(quarantine_ids=["../etc/passwd"])),
        (_smtp, lambda d: d["email"].update(extra=1)),
        (_smtp, lambda d: d.update(fileinfo={})),
        (_file, lambda d: d.update(event_type="smtp")),
        (_file, lambda d: d["fileinfo"].update(sha256="AB" * 32)),
        (_file, lambda d: d["fileinfo"].update(size=-1)),
        (_file, lambda d: d["fileinfo"].update(path="1..2")),
        (_file, lambda d: d["fileinfo"].pop("quarantine_id")),  # stored without an id
        (_file, lambda d: d["fileinfo"].update(stored=False)),  # an id without stored
        (_file, lambda d: d["fileinfo"].update(verdict="pass")),  # a passed part is never stored
        (_file, lambda d: d["fileinfo"].pop("reason")),
        (_file, lambda d: d["fileinfo"].update(name="x")),
        (_file, lambda d: d.update(reason="rule")),
    ],
)
def test_mail_schema_rejects_drift(validator: Any, make: Any, mutate: Any) -> None:
    d = make()
    assert not list(validator.iter_errors(d))
    mutate(d)
    assert list(validator.iter_errors(d))


def test_mail_builders_refuse_bad_verdicts() -> None:
    with pytest.raises(ValueError):
        _smtp(verdict="ok")
    with pytest.raises(ValueError):
        _file(verdict="blocked")
    with pytest.raises(ValueError):
        _file(verdict="pass", reason=None)  # a quarantine id on a passed part


def test_docs_describe_mail_fields() -> None:
    doc = (ROOT / "docs" / "events.md").read_text(encoding="utf-8")
    props = load_schema()["properties"]
    for obj in ("smtp", "email", "fileinfo"):
        for name in props[obj]["properties"]:
            assert f"`{obj}.{name}`" in doc, (obj, name)
