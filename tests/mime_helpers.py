"""Shared helpers for the MIME tests (feeding in chunks, normalizing, invariants)."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.mime import (
    Boundary,
    Epilogue,
    Event,
    LimitExceeded,
    Limits,
    MimeParser,
    PartData,
    PartEnd,
    PartStart,
    Preamble,
)


def feed(data: bytes, cuts: Iterable[int] = (), limits: Limits | None = None) -> list[Event]:
    """Parse `data` fed in pieces cut at the given positions."""
    p = MimeParser(limits)
    events: list[Event] = []
    last = 0
    for c in sorted(set(cuts)):
        if 0 < c < len(data):
            events += p.feed(data[last:c])
            last = c
    events += p.feed(data[last:])
    events += p.end()
    return events


def bytewise(data: bytes, limits: Limits | None = None) -> list[Event]:
    return feed(data, range(1, len(data)), limits)


def normalize(events: list[Event]) -> list[Event]:
    """Merge adjacent data events of one kind and path: the only chunking-dependent aspect."""
    out: list[Event] = []
    for e in events:
        prev = out[-1] if out else None
        if isinstance(e, PartData) and isinstance(prev, PartData) and prev.path == e.path and prev.end == e.offset:
            out[-1] = PartData(e.path, prev.offset, prev.raw + e.raw, prev.decoded + e.decoded)
        elif (
            isinstance(e, Preamble | Epilogue)
            and type(prev) is type(e)
            and isinstance(prev, Preamble | Epilogue)
            and prev.path == e.path
            and prev.offset + len(prev.raw) == e.offset
        ):
            out[-1] = type(e)(e.path, prev.offset, prev.raw + e.raw)
        elif isinstance(e, PartData) and not e.raw and not e.decoded:
            continue
        else:
            out.append(e)
    return out


def ranges(events: list[Event]) -> list[tuple[int, int, Event]]:
    out: list[tuple[int, int, Event]] = []
    for e in events:
        if isinstance(e, PartStart):
            out.append((e.header_start, e.body_start, e))
        elif (isinstance(e, PartData) and e.raw) or isinstance(e, Boundary):
            out.append((e.offset, e.end, e))
        elif isinstance(e, Preamble | Epilogue) and e.raw:
            out.append((e.offset, e.offset + len(e.raw), e))
    return out


def check_invariants(data: bytes, events: list[Event]) -> None:
    """Offsets slice the input exactly; the event ranges tile it; leaf bodies are tiled by PartData."""
    failed = any(isinstance(e, LimitExceeded) for e in events)
    pos = 0
    for start, end, e in ranges(events):
        assert start == pos, (start, pos, e)
        assert end >= start
        pos = end
        if isinstance(e, PartData | Preamble | Epilogue):
            assert data[start:end] == e.raw
        if isinstance(e, PartStart):
            assert e.header_start <= e.header_end <= e.body_start
            for h in e.headers:
                assert data[h.offset : h.offset + len(h.raw)] == h.raw
                assert e.header_start <= h.offset < e.header_end
        if isinstance(e, Boundary):
            assert data[e.line_start : e.line_start + 2] == b"--"
            assert data[e.offset : e.line_start] in (b"", b"\r\n", b"\n", b"\r")
    if not failed:
        assert pos == len(data)
    # per leaf: PartData ranges cover [body_start, body_end) exactly once
    starts: dict[str, PartStart] = {}
    cover: dict[str, int] = {}
    for e in events:
        if isinstance(e, PartStart):
            starts[e.path] = e
            if e.kind == "leaf":
                cover[e.path] = e.body_start
        elif isinstance(e, PartData):
            assert e.offset == cover[e.path], (e, cover[e.path])
            cover[e.path] = e.end
        elif isinstance(e, PartEnd):
            s = starts.pop(e.path)
            assert e.body_end >= s.body_start
            if s.kind == "leaf":
                assert cover.pop(e.path) == e.body_end, e
    if not failed:
        assert not starts, starts


def leaves(events: list[Event]) -> dict[str, tuple[PartStart, bytes, bytes]]:
    """path -> (PartStart, raw body, decoded body)."""
    heads: dict[str, PartStart] = {}
    raw: dict[str, bytearray] = {}
    dec: dict[str, bytearray] = {}
    for e in events:
        if isinstance(e, PartStart) and e.kind == "leaf":
            heads[e.path] = e
            raw[e.path] = bytearray()
            dec[e.path] = bytearray()
        elif isinstance(e, PartData):
            raw[e.path] += e.raw
            dec[e.path] += e.decoded
    return {p: (heads[p], bytes(raw[p]), bytes(dec[p])) for p in heads}
