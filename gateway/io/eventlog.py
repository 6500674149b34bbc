"""The JSON-lines event log (eve.json style; schema in docs/events.md and event_schema.json).

One JSON object per line, UTF-8 (zone names and descriptions may be Japanese, so no \\u
escapes). Key order is the order `format_event` builds, which is stable.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from gateway.fastpath.common import CompiledPolicy, RawEvent, format_event

SCHEMA_PATH = Path(__file__).with_name("event_schema.json")


def dumps_event(event: dict[str, object]) -> str:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


class EventLog:
    """Writes events to a text stream; `path` '-' means stdout (left open on close)."""

    def __init__(self, path: str | Path) -> None:
        self._own = str(path) != "-"
        self._f: TextIO = open(path, "w", encoding="utf-8") if self._own else sys.stdout  # noqa: SIM115
        self.count = 0

    def write_raw(self, events: Iterable[RawEvent], policy: CompiledPolicy) -> None:
        f = self._f
        for ev in events:
            f.write(dumps_event(format_event(ev, policy)))
            f.write("\n")
            self.count += 1

    def write(self, event: dict[str, object]) -> None:
        self._f.write(dumps_event(event))
        self._f.write("\n")
        self.count += 1

    def close(self) -> None:
        if self._own:
            self._f.close()
        else:
            self._f.flush()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """All events of a log (tests, tools)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_schema() -> dict[str, Any]:
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        schema: dict[str, Any] = json.load(f)
    return schema
