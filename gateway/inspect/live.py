"""Live adapter: the daemon worker's NFQUEUE `inspect` hook driving a MailInspector.

INSPECT packets reach `hook(packet_id, payload, decision)` without a verdict (gateway._nfq
defers it); the inspector's Forward/Drop commands become `queue.verdict(id, accept, payload)`,
now or when a later packet releases a held one. Injected packets (the 554 reply with FIN to the
client, the RST to the server) leave through raw sockets in the gateway's namespace: they take
the OUTPUT path, which the gateway's FORWARD rules do not queue.

Quarantine commands: the store's put (temp file, fsync, link, directory fsync, metadata, audit
record) is disk latency the packet loop should not wait for. With a QuarantineWriter (the
daemon's case) it runs on a thread of its own while the loop goes on; the inspector holds the
segment carrying the end of DATA until `quarantined()` (its `pending_q`), so the server commits
nothing before the original is durable, and the writer's pipe wakes the loop when a put is done.
Without one (tests, tools) the put runs at once, as in replay.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from gateway.fastpath.common import TIER_NAMES, CompiledPolicy
from gateway.inspect.commands import Command, Drop, Forward, Inject, Log, Quarantine, Store, store_original
from gateway.inspect.mail import ClassifierFactory, FlowContext, InspectConfig, MailInspector, default_classifier
from gateway.inspect.packet import PacketError, parse_tcp
from gateway.inspect.replay import mail_profiles
from gateway.stream.reassembly import OutOfOrderPolicy, ReassemblyLimits

log = logging.getLogger("lgwan-gateway")


class VerdictQueue(Protocol):
    def verdict(self, packet_id: int, accept: bool, payload: bytes | None = None) -> bool: ...


class RawSender:
    """Raw IP sockets (header included) for crafted packets; opened on first use."""

    def __init__(self) -> None:
        self._socks: dict[int, socket.socket] = {}

    def send(self, packet: bytes) -> None:
        t = parse_tcp(packet)
        fam = socket.AF_INET if t.family == 4 else socket.AF_INET6
        s = self._socks.get(t.family)
        if s is None:
            # IPPROTO_RAW implies IP_HDRINCL (and IPV6_HDRINCL on Linux): we give the whole packet
            s = self._socks[t.family] = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW)
        s.sendto(packet, (t.dst_text, 0))

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()


class QuarantineWriter:
    """Runs the store's puts on `threads` threads and hands the outcomes back to the packet loop,
    which polls `fileno()`.

    A put is a chain of fsyncs (content, directory, metadata, directory, audit log), so on one
    thread the disk's latency bounds the removed attachments a worker can pass per second.
    Several threads overlap their fsyncs (and a journaling filesystem commits them together):
    36 KiB puts on this machine's disk, 455/s on one thread, 711/s on four. Order does not
    matter: every put has its own id and files, each message waits only for its own parts, and
    the audit log appends under its file lock.

    At most `max_pending` originals wait: a full queue blocks `submit`, so a disk slower than the
    mail turns back into a packet loop waiting for it, never into unbounded memory."""

    def __init__(self, store: Store, max_pending: int = 16, threads: int = 4) -> None:
        self.store = store
        self._todo: queue.Queue[Quarantine | None] = queue.Queue(maxsize=max_pending)
        self._done: collections.deque[tuple[Quarantine, str | None, str | None]] = collections.deque()
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.pending = 0  # submitted, outcome not taken yet (packet loop's count)
        self._threads = [
            threading.Thread(target=self._work, name=f"quarantine-writer-{i}", daemon=True) for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    def fileno(self) -> int:
        return self._rfd

    def submit(self, c: Quarantine) -> None:
        self.pending += 1
        self._todo.put(c)

    def _work(self) -> None:
        while (c := self._todo.get()) is not None:
            qid, err = store_original(self.store, c)
            self._done.append((c, qid, err))
            with contextlib.suppress(BlockingIOError):  # a full pipe: the loop is woken already
                os.write(self._wfd, b"\0")

    def take(self, wait: float = 0.0) -> list[tuple[Quarantine, str | None, str | None]]:
        """Outcomes finished so far (after up to `wait` seconds for the first, when one is due)."""
        deadline = time.monotonic() + wait
        while self.pending and not self._done and time.monotonic() < deadline:
            time.sleep(0.001)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._rfd, 4096):
                pass
        out = []
        while self._done:
            out.append(self._done.popleft())
        self.pending -= len(out)
        return out

    def close(self, timeout: float = 30.0) -> None:
        for _ in self._threads:
            self._todo.put(None)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        os.close(self._rfd)
        os.close(self._wfd)


def live_config() -> InspectConfig:
    """Live and replay reassemble alike: out-of-order segments are held (within the window).
    Dropping them instead (to keep the kernel's queue free) turned every reordering or loss
    into a retransmission timeout: the server never saw the later segments, so it sent no
    duplicate ACKs or SACKs, and inside a held part the sender, retransmitting only the first
    unacknowledged segment, never resent the missing one (tests/test_e2e_mail.py's shim). It
    also made live decisions differ from the replay of the same capture."""
    return InspectConfig(reassembly=ReassemblyLimits(out_of_order=OutOfOrderPolicy.HOLD))


class LiveMailInspector:
    def __init__(
        self,
        queue: VerdictQueue,
        policy: CompiledPolicy,
        store: Store,
        events: Callable[[dict[str, Any]], None],
        profiles: Mapping[str, Any] | None = None,
        classifier_factory: ClassifierFactory = default_classifier,
        config: InspectConfig | None = None,
        sender: Callable[[bytes], None] | None = None,
        writer: QuarantineWriter | None = None,
    ) -> None:
        self.queue = queue
        self.policy = policy
        self.store = store
        self.writer = writer
        self.events = events
        self.insp = MailInspector(
            profiles if profiles is not None else mail_profiles(policy), classifier_factory, config or live_config()
        )
        self._raw = RawSender() if sender is None else None
        self.send = sender if sender is not None else self._raw_send
        self.counters: dict[str, int] = {}

    def _raw_send(self, packet: bytes) -> None:
        assert self._raw is not None
        self._raw.send(packet)

    def set_policy(self, policy: CompiledPolicy, profiles: Mapping[str, Any] | None = None) -> None:
        """Reload: new connections use the new rules and profiles; open ones keep theirs."""
        self.policy = policy
        self.insp.profiles = dict(profiles if profiles is not None else mail_profiles(policy))
        self.insp.default_profile = next(iter(self.insp.profiles)) if len(self.insp.profiles) == 1 else None
        self.insp.reset_classifiers()

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def _context(self, d: Any) -> FlowContext:
        rule, sz, dz = int(d[2]), int(d[3]), int(d[4])
        rules, zones = self.policy.rules, self.policy.zones
        r = rules[rule] if 0 <= rule < len(rules) else None
        return FlowContext(
            profile=(r.profile or None) if r is not None else None,
            rule_id=r.rule_id if r is not None else None,
            src_zone=zones[sz].name if 0 <= sz < len(zones) else None,
            dest_zone=zones[dz].name if 0 <= dz < len(zones) else None,
            src_tier=TIER_NAMES[zones[sz].tier] if 0 <= sz < len(zones) else None,
            dest_tier=TIER_NAMES[zones[dz].tier] if 0 <= dz < len(zones) else None,
            policy_generation=self.policy.generation,
        )

    def hook(self, packet_id: int, payload: bytes, decision: Any) -> None:
        """gateway._nfq's `inspect` hook."""
        self.run(self.insp.packet(packet_id, payload, time.time_ns() // 1000, self._context(decision)))

    def tick(self, now_us: int | None = None) -> None:
        self.run(self.insp.expire(time.time_ns() // 1000 if now_us is None else now_us))

    def run(self, cmds: list[Command]) -> None:
        work = list(cmds)
        while work:
            c = work.pop(0)
            if isinstance(c, Forward):
                self.queue.verdict(c.packet_id, True, c.packet)
                self._count("inspect_forwarded_rewritten" if c.packet is not None else "inspect_forwarded")
            elif isinstance(c, Drop):
                self.queue.verdict(c.packet_id, False)
                self._count("inspect_dropped")
            elif isinstance(c, Inject):
                try:
                    self.send(c.packet)
                    self._count(f"inspect_injected_{c.toward}")
                except (OSError, PacketError) as exc:
                    self._count("inspect_inject_errors")
                    log.error("inject to the %s failed: %s", c.toward, exc)
            elif isinstance(c, Log):
                self.events(c.event)
            elif isinstance(c, Quarantine):
                if self.writer is not None:
                    self.writer.submit(c)  # its outcome comes back through stored()
                    continue
                work = self._stored(c, *store_original(self.store, c)) + work

    def _stored(self, c: Quarantine, qid: str | None, err: str | None) -> list[Command]:
        if err is None:
            self._count("quarantined")
        else:
            self._count("quarantine_errors")
            log.error("quarantine: %s", err)
        return self.insp.quarantined(c.key, qid, err)

    def stored(self, wait: float = 0.0) -> None:
        """Feed the writer's finished puts to the inspector (the packet loop calls this when the
        writer's fd is readable)."""
        if self.writer is None or not self.writer.pending:
            return
        for c, qid, err in self.writer.take(wait):
            self.run(self._stored(c, qid, err))

    def close(self) -> None:
        if self.writer is not None:
            # originals already asked for are made durable and their messages finished first
            deadline = time.monotonic() + 30.0
            while self.writer.pending and time.monotonic() < deadline:
                self.stored(wait=0.1)
            self.writer.close()
        self.run(self.insp.finish())
        if self._raw is not None:
            self._raw.close()
