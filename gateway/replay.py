"""`lgwan-gateway replay`: run a capture through the engine offline.

The adapter around the sans-I/O parts: it reads the capture in bounded batches, lets the engine
decide each batch (`decide_frames`), reassembles fragments like conntrack would live
(gateway/stream/defrag.py), writes the frames the gateway would forward and the event log.

Every frame of the capture gets exactly one final verdict: accepted (forwarded), dropped (by
reason) or inspected. Inspect-flow frames go to the mail inspector (`Inspector`, implemented by
gateway.inspect.replay); without it (no sanitizer installed) they are not forwarded (fail
closed) and counted as `inspect_unavailable`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol

from gateway.fastpath.common import (
    ACCEPT,
    DROP,
    FRAGMENT,
    INSPECT,
    LINKTYPE_ETHERNET,
    R_MALFORMED,
    REASONS,
    SUPPORTED_LINKTYPES,
    CompiledPolicy,
    Limits,
    RawEvent,
)
from gateway.io.eventlog import EventLog
from gateway.io.pcap import (
    DEFAULT_CHUNK_SIZE,
    Batch,
    CaptureReader,
    PcapError,
    PcapWriter,
    ip_offset,
    open_capture,
)
from gateway.stream.defrag import Defragmenter, Dropped, Reassembled


class PolicyLike(Protocol):
    """What replay needs of `gateway.policy.LoadedPolicy`."""

    @property
    def compiled(self) -> CompiledPolicy: ...

    @property
    def limits(self) -> Limits: ...


class OutFrame(NamedTuple):
    ts_us: int
    frame: bytes
    orig_len: int


class Inspector(Protocol):
    """Where frames of `inspect` flows go: the mail sanitizer plugs in here.

    It gets every frame the engine marks INSPECT, in capture order, and returns the frames to
    forward now (possibly rewritten, possibly frames it held earlier). What it never returns is
    not forwarded: holding and dropping are the same from replay's point of view.
    """

    def packet(self, frame: OutFrame, linktype: int) -> Sequence[OutFrame]: ...

    def finish(self) -> Sequence[OutFrame]:
        """End of capture: frames still held that should go out."""
        ...

    def pop_events(self) -> list[dict[str, object]]:
        """Events in the event-log format (docs/events.md)."""
        ...


@dataclass
class ReplaySummary:
    capture: str
    format: str
    implementation: str
    packets: int = 0  # frames in the capture; each ends in exactly one of the next three
    accepted: int = 0
    dropped: int = 0
    inspected: int = 0
    inspect_unavailable: int = 0  # inspected frames not forwarded because no inspector is present
    # frames written to --out (or that would be, without --out): accepted plus what an inspector
    # released, minus frames whose link type differs from the output's (see warnings)
    forwarded: int = 0
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    non_ip: int = 0
    flows: int = 0
    fragments: int = 0
    datagrams_reassembled: int = 0
    events: int = 0
    bytes: int = 0
    seconds: float = 0.0
    packets_per_second: float = 0.0
    truncated: bool = False
    warnings: list[str] = field(default_factory=list)
    engine_counters: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def format_text(self) -> str:
        lines = [
            f"capture        {self.capture} ({self.format}{', truncated' if self.truncated else ''})",
            f"engine         {self.implementation}",
            f"packets        {self.packets}  ({self.packets_per_second:,.0f} packets/s, {self.seconds:.2f} s)",
            f"flows          {self.flows}",
            f"accepted       {self.accepted}",
            f"dropped        {self.dropped}",
        ]
        for reason, n in sorted(self.dropped_by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {reason:<18} {n}")
        lines.append(f"inspected      {self.inspected}")
        if self.inspect_unavailable:
            lines.append(f"  not forwarded: no inspector (fail closed): {self.inspect_unavailable}")
        lines.append(f"non-IP         {self.non_ip}")
        if self.fragments:
            lines.append(f"fragments      {self.fragments} ({self.datagrams_reassembled} datagrams reassembled)")
        lines.append(f"events         {self.events}")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


_ACCEPT_B = bytes([ACCEPT])
_INSPECT_B = bytes([INSPECT])


class _Held(NamedTuple):
    """A fragment waiting for its datagram's verdict."""

    frame: OutFrame
    linktype: int


class _Replayer:
    def __init__(
        self,
        policy: PolicyLike,
        writer_file: BinaryIO | None,
        events: EventLog | None,
        inspector: Inspector | None,
    ) -> None:
        from gateway.fastpath import Engine

        self.policy = policy.compiled
        self.engine = Engine(policy.compiled, policy.limits)
        self.defrag: Defragmenter[_Held] = Defragmenter()
        self.writer_file = writer_file
        self.writer: PcapWriter | None = None
        self.events = events
        self.inspector = inspector
        self.accepted = 0
        self.dropped = 0
        self.inspected = 0
        self.forwarded = 0
        self.fragments = 0
        self.reassembled = 0
        # per-frame corrections of the engine's drop counters (it counts a reassembled datagram
        # once; here each of its fragments counts) and drops that happen outside the engine
        self.extra_drops: dict[str, int] = {}
        self.warnings: list[str] = []
        self._warned_links: set[int] = set()

    # --- output ---------------------------------------------------------------------------
    def _writer_for(self, linktype: int) -> PcapWriter | None:
        if self.writer_file is None:
            return None
        if self.writer is None:
            self.writer = PcapWriter(self.writer_file, linktype)
        if self.writer.linktype != linktype:
            if linktype not in self._warned_links:
                self._warned_links.add(linktype)
                self.warnings.append(
                    f"frames of link type {linktype} cannot be written to the output (link type "
                    f"{self.writer.linktype}): left out of --out but counted as decided"
                )
            return None
        return self.writer

    def _emit(self, frames: Sequence[OutFrame], linktype: int) -> None:
        w = self._writer_for(linktype)
        if w is not None:
            for fr in frames:
                w.write(fr.ts_us, fr.frame, fr.orig_len)
        if w is not None or self.writer_file is None:
            self.forwarded += len(frames)

    def _log(self, raw: list[RawEvent]) -> None:
        if self.events is not None and raw:
            self.events.write_raw(raw, self.policy)

    def _drop_extra(self, reason: str, n: int) -> None:
        self.extra_drops[reason] = self.extra_drops.get(reason, 0) + n

    # --- batches --------------------------------------------------------------------------
    def batch(self, batch: Batch) -> None:
        n = len(batch)
        if batch.linktype not in SUPPORTED_LINKTYPES:
            if batch.linktype not in self._warned_links:
                self._warned_links.add(batch.linktype)
                self.warnings.append(f"unsupported link type {batch.linktype}: its frames are dropped")
            self.dropped += n
            self._drop_extra("unsupported_linktype", n)
            return
        verdicts = bytearray(n)
        # The engine stops right after a fragment, so a datagram completed by that fragment is
        # decided before the frames that follow it: the same order as live (conntrack reassembles
        # before the queue), whatever the batch boundaries.
        pos = 0
        while pos < n:
            stop = self.engine.decide_frames(
                batch.buf, batch.offsets, batch.lengths, batch.ts_us, batch.linktype, verdicts, pos
            )
            self._log(self.engine.pop_events())
            fragment = verdicts[stop - 1] == FRAGMENT
            self._forward_range(batch, verdicts, pos, stop - 1 if fragment else stop)
            if fragment:
                self._fragment(batch, stop - 1)
            pos = stop
        self.accepted += verdicts.count(_ACCEPT_B)
        self.dropped += verdicts.count(bytes([DROP]))
        self.inspected += verdicts.count(_INSPECT_B)

    def _forward_range(self, batch: Batch, verdicts: bytearray, start: int, stop: int) -> None:
        w = self._writer_for(batch.linktype)
        if w is not None:
            self.forwarded += w.write_selected(batch, verdicts, ACCEPT, start, stop)
        elif self.writer_file is None:  # no --out: count what would be written
            self.forwarded += verdicts.count(_ACCEPT_B, start, stop)
        if self.inspector is not None:
            i = verdicts.find(_INSPECT_B, start, stop)
            while i >= 0:
                fr = OutFrame(batch.ts_us[i], batch.frame(i), batch.orig_lengths[i])
                self._emit(self.inspector.packet(fr, batch.linktype), batch.linktype)
                i = verdicts.find(_INSPECT_B, i + 1, stop)

    # --- fragments ------------------------------------------------------------------------
    def _fragment(self, batch: Batch, i: int) -> None:
        self.fragments += 1
        frame = batch.frame(i)
        held = _Held(OutFrame(batch.ts_us[i], frame, batch.orig_lengths[i]), batch.linktype)
        off = ip_offset(batch.linktype, frame)
        if off is None:  # the engine found IP here, so this cannot happen; fail closed anyway
            self._drop_extra(REASONS[R_MALFORMED], 1)
            self.dropped += 1
            return
        for r in self.defrag.feed(frame[off:], held.frame.ts_us, held):
            self._result(r)

    def _result(self, r: Reassembled[_Held] | Dropped[_Held]) -> None:
        k = len(r.handles)
        if isinstance(r, Dropped):
            self.dropped += k
            self._drop_extra(REASONS[r.reason], k)
            if r.event is not None:
                self._log([r.event])
            return
        self.reassembled += 1
        d = self.engine.decide(r.packet, r.ts_us)
        self._log(self.engine.pop_events())
        if d.verdict == ACCEPT:
            self.accepted += k
            for h in r.handles:
                self._emit([h.frame], h.linktype)
        elif d.verdict == INSPECT:
            self.inspected += k
            if self.inspector is not None:
                for h in r.handles:
                    self._emit(self.inspector.packet(h.frame, h.linktype), h.linktype)
        else:
            self.dropped += k
            self._drop_extra(REASONS[d.reason], k - 1)  # the engine counted the datagram once

    def finish(self, default_linktype: int) -> None:
        for r in self.defrag.flush():
            self._result(r)
        if self.inspector is not None:
            self._emit(self.inspector.finish(), self.writer.linktype if self.writer else default_linktype)
            if self.events is not None:
                for ev in self.inspector.pop_events():
                    self.events.write(ev)
        if self.writer_file is not None and self.writer is None:
            self.writer = PcapWriter(self.writer_file, default_linktype)  # a valid, empty capture


class _Progress:
    """A one-line progress bar on stderr, only for a terminal."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = max(total, 1)
        self.enabled = enabled and sys.stderr.isatty()
        self.start = time.monotonic()
        self.last = 0.0

    def update(self, done: int, packets: int, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self.last < 0.2:
            return
        self.last = now
        frac = min(done / self.total, 1.0)
        width = 30
        bar = "#" * int(frac * width)
        rate = packets / max(now - self.start, 1e-9)
        sys.stderr.write(f"\r[{bar:<{width}}] {frac * 100:5.1f}% {packets:,} packets {rate:,.0f}/s")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()


def replay(
    pcap_path: str | Path,
    loaded_policy: PolicyLike,
    out_path: str | Path | None = None,
    events_path: str | Path | None = None,
    progress: bool = False,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    inspector: Inspector | None = None,
) -> ReplaySummary:
    """Replay a capture; raises PcapError (corrupt capture) or OSError (unreadable/unwritable)."""
    from gateway.fastpath import IMPLEMENTATION

    t0 = time.perf_counter()
    with open(pcap_path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        reader: CaptureReader = open_capture(f, chunk_size)
        out_f: BinaryIO | None = open(out_path, "wb") if out_path is not None else None  # noqa: SIM115
        events = EventLog(events_path) if events_path is not None else None
        try:
            rp = _Replayer(loaded_policy, out_f, events, inspector)
            bar = _Progress(size, progress)
            for batch in reader:
                rp.batch(batch)
                bar.update(reader.bytes_read, reader.frames)
            linktypes = sorted(reader.linktypes & SUPPORTED_LINKTYPES)
            rp.finish(linktypes[0] if linktypes else LINKTYPE_ETHERNET)
            bar.update(reader.bytes_read, reader.frames, final=True)
        finally:
            if out_f is not None:
                out_f.close()
            if events is not None:
                events.close()
    seconds = time.perf_counter() - t0
    counters = rp.engine.counters()
    by_reason: dict[str, int] = {}
    for name in REASONS:
        n = counters.get(f"drop_{name}", 0) + rp.extra_drops.get(name, 0)
        if n:
            by_reason[name] = n
    for name, n in rp.extra_drops.items():
        if name not in REASONS and n:
            by_reason[name] = n
    summary = ReplaySummary(
        capture=str(pcap_path),
        format=reader.format,
        implementation=IMPLEMENTATION,
        packets=reader.frames,
        accepted=rp.accepted,
        dropped=rp.dropped,
        inspected=rp.inspected,
        inspect_unavailable=rp.inspected if inspector is None else 0,
        forwarded=rp.forwarded,
        dropped_by_reason=by_reason,
        non_ip=counters.get("drop_non_ip", 0),
        flows=counters.get("flows_created", 0),
        fragments=rp.fragments,
        datagrams_reassembled=rp.reassembled,
        events=events.count if events is not None else 0,
        bytes=reader.bytes_read,
        seconds=seconds,
        packets_per_second=reader.frames / seconds if seconds > 0 else 0.0,
        truncated=reader.truncated,
        warnings=reader.warnings + rp.warnings,
        engine_counters=counters,
    )
    return summary


def _mail_inspector(args: argparse.Namespace, policy: CompiledPolicy) -> tuple[Inspector | None, str]:
    """The mail inspector for the policy's inspect rules, with its quarantine directory:
    --quarantine DIR, else OUT.quarantine next to --out, else a temporary directory (removed at
    exit: without --out nothing is delivered anywhere, so there is nothing to release)."""
    from gateway.fastpath.common import ACT_INSPECT

    if not any(r.action == ACT_INSPECT for r in policy.rules):
        return None, ""
    try:
        import importlib

        from gateway.inspect.replay import ReplayMailInspector
        from gateway.io.quarantine import QuarantineStore

        importlib.import_module("gateway.sanitize.classify")  # fail here, not on the first SYN

        qdir = getattr(args, "quarantine", None)
        if qdir is None and args.out is not None:
            qdir = f"{args.out}.quarantine"
        if qdir is None:
            import atexit
            import shutil
            import tempfile

            qdir = tempfile.mkdtemp(prefix="lgwan-replay-quarantine-")
            atexit.register(shutil.rmtree, qdir, True)
        return ReplayMailInspector(policy, QuarantineStore(Path(qdir))), f"quarantine: {qdir}"
    except ImportError as exc:  # the sanitizers are not installed: inspected frames stay unforwarded
        return None, f"mail inspection unavailable ({exc}): inspected frames are not forwarded"


def replay_command(args: argparse.Namespace) -> int:
    """CLI entry: 0 success, 1 unreadable capture (or unwritable output), 2 config error."""
    from gateway.policy import ConfigError, load_policy

    try:
        loaded = load_policy(args.config)
    except ConfigError as exc:
        for issue in exc.errors:
            print(issue, file=sys.stderr)
        return 2
    quiet = bool(getattr(args, "quiet", False))
    try:
        inspector, note = _mail_inspector(args, loaded.compiled)
        if note and not quiet:
            print(f"lgwan-gateway: {note}", file=sys.stderr)
        summary = replay(args.pcap, loaded, args.out, args.events, progress=not quiet, inspector=inspector)
    except PcapError as exc:
        print(f"lgwan-gateway: {args.pcap}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"lgwan-gateway: {exc}", file=sys.stderr)
        return 1
    if args.json_summary:
        with open(args.json_summary, "w", encoding="utf-8") as f:
            json.dump(summary.to_dict(), f, ensure_ascii=False, indent=2)
            f.write("\n")
    if not quiet:
        # the event log may own stdout
        stream = sys.stderr if args.events == "-" else sys.stdout
        print(summary.format_text(), file=stream)
    return 0
