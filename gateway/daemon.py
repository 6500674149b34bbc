"""The live gateway: `lgwan-gateway run`, `lgwan-gateway rules`, `lgwan-gateway stats`.

Process layout: one supervisor and `workers` worker processes.

- A worker binds one NFQUEUE queue, owns one engine (its own flow table) and runs the packet loop:
  batched reads -> engine.decide -> one verdict per packet (gateway._nfq). It reports counter
  snapshots to the supervisor every REPORT_INTERVAL seconds; these double as its heartbeat. It
  dies with the supervisor (PR_SET_PDEATHSIG), so a killed daemon leaves no queue listener and the
  kernel drops queued traffic (fail closed).
- The supervisor loads and validates the policy, installs the iptables rules, handles signals,
  talks to systemd (READY/RELOADING/STOPPING, WATCHDOG pings only while every worker reports),
  re-installs the rules if someone removed them, and serves the Prometheus metrics.

Reload (SIGHUP): the new file is loaded and checked completely in the supervisor first; on error
the old policy stays and the errors (FILE:LINE: reason) are logged. On success each worker swaps
its engine's policy between two packets (no packet waits, none is decided by a half-updated
policy), then the offload ACCEPT rule moves to the new mark generation in one iptables-restore
transaction, so every offloaded flow returns to the queue and is decided by the new policy.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import select
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, Pipe
from typing import Any, Protocol

from gateway.fastpath.common import CompiledPolicy, Limits, RawEvent, format_event
from gateway.io import iptables as ipt
from gateway.io import nftables as nft
from gateway.io.metrics import DEFAULT_ADDRESS, DEFAULT_PORT, DaemonView, WorkerSnapshot
from gateway.io.sdnotify import Notifier
from gateway.policy.model import DaemonSection, metrics_address_problem

log = logging.getLogger("lgwan-gateway")

REPORT_INTERVAL = 0.5  # seconds between worker snapshots (heartbeats)
HEARTBEAT_TIMEOUT = 10.0  # a worker silent this long is hung: stop pinging the watchdog (capped
# at half of WatchdogSec, so systemd notices a hung worker within one watchdog period)
RELOAD_TIMEOUT = 10.0  # seconds a worker may take to acknowledge a new policy
MAX_DRAIN_BATCHES = 32  # batches a worker handles before it looks at its control pipe
PR_SET_PDEATHSIG = 1

# With offload the engine sees a flow's first packets only, so its idle clock stops for offloaded
# flows while the kernel still passes them. If the engine expired such a flow, a reload would send
# its next packet to an engine that has forgotten it: TCP mid-stream = no_flow drop. So with
# offload the idle timeouts of offloadable states are raised to at least these (conntrack's TCP
# established default is 5 days); the flow table's LRU cap still bounds memory.
OFFLOAD_MIN_TIMEOUTS_US = {
    "tcp_established_timeout_us": 432_000 * 1_000_000,
    "udp_timeout_us": 3_600 * 1_000_000,
    "icmp_timeout_us": 3_600 * 1_000_000,
    "other_timeout_us": 3_600 * 1_000_000,
}


class Loaded(Protocol):
    @property
    def compiled(self) -> CompiledPolicy: ...
    @property
    def limits(self) -> Limits: ...
    @property
    def daemon(self) -> DaemonSection: ...


Loader = Callable[[str, int], Loaded]


def default_loader(path: str, generation: int) -> Loaded:
    from gateway.policy import load_policy

    return load_policy(path, generation)


@dataclass(frozen=True)
class Settings:
    config: str
    queue: int = 0
    workers: int = 1
    balance: str = "connection"  # connection | flow | addresses (gateway.io.iptables.RulesConfig)
    events: str | None = None
    metrics_port: int = DEFAULT_PORT  # 0: no metrics endpoint
    metrics_address: str = DEFAULT_ADDRESS
    fail_open: bool = False
    offload: bool = True
    drop_invalid: bool = True
    manage_rules: bool = True
    check_interval: float = 5.0
    max_batch: int = 64
    queue_maxlen: int = 8192
    firewall: str = "iptables"  # iptables | nft | auto (select_firewall)

    def rules_config(self, generation: int, running: bool = True) -> ipt.RulesConfig:
        return ipt.RulesConfig(
            queue_num=self.queue,
            workers=self.workers,
            balance=self.balance,
            fail_open=self.fail_open,
            offload=self.offload,
            drop_invalid=self.drop_invalid,
            generation=generation,
            accept_offloaded=running,
        )


class SettingsError(ValueError):
    """A command-line option the daemon cannot run with (the file's own errors are ConfigErrors)."""


# Settings a reload (SIGHUP) applies; every other one needs a restart (`RESTART_ONLY`): the queues,
# the worker processes, the iptables layout they imply, the metrics socket and the engine's limits
# are set up once at start. A reload never applies part of a change: the policy and the settings
# below switch together, or (an error anywhere) nothing does.
RELOADABLE = ("events", "check_interval")
RESTART_ONLY = ("queue", "workers", "balance", "offload", "fail_open", "metrics_port", "metrics_address", "max_batch",
                "queue_maxlen", "firewall")  # fmt: skip


def settings_for(args: argparse.Namespace, loaded: Loaded) -> Settings:
    """Command-line options over the config's [daemon] section (whose defaults are the daemon's);
    fail_mode comes from [gateway]. Raises SettingsError for a refused --metrics-address."""
    d = loaded.daemon

    def pick(opt: str, value: Any) -> Any:
        given = getattr(args, opt, None)
        return value if given is None else given

    address = str(pick("metrics_address", d.metrics_address))
    try:
        problem = metrics_address_problem(address, d.metrics_allow_remote)
    except ValueError:
        raise SettingsError(f"--metrics-address {address!r} is not an IP address") from None
    if problem is not None and int(pick("metrics_port", d.metrics_port)):
        raise SettingsError(f"--metrics-address: {problem} (in the config's [daemon] section)")
    return Settings(
        config=args.config,
        queue=int(pick("queue", d.queue)),
        workers=int(pick("workers", d.workers)),
        balance=str(pick("balance", d.balance)),
        events=pick("events", d.events),
        metrics_port=int(pick("metrics_port", d.metrics_port)),
        metrics_address=address,
        fail_open=loaded.compiled.extra.get("fail_mode", "closed") == "open",
        offload=bool(pick("offload", d.offload)),
        drop_invalid=not getattr(args, "keep_invalid", False),
        manage_rules=not getattr(args, "no_rules", False),
        check_interval=float(pick("rules_check_interval", d.rules_check_interval)),
        max_batch=d.max_batch,
        queue_maxlen=d.queue_maxlen,
        firewall=str(pick("firewall", d.firewall)),
    )


Firewall = ipt.Iptables | nft.Nftables


def select_firewall(choice: str, probe: Callable[[], tuple[bool, str]] = nft.probe) -> Firewall:
    """The rules backend for `[daemon] firewall`: iptables; nft only where `nft.probe()` passes
    (refused with its reason otherwise: fail closed, nothing installed); auto = nft if it passes."""
    if choice == "iptables":
        return ipt.Iptables()
    ok, why = probe()
    if ok:
        return nft.Nftables()
    if choice == "nft":
        raise SettingsError(f'firewall = "nft" cannot be used here: {why}')
    log.info("firewall = auto: using iptables (nftables backend unavailable: %s)", why)
    return ipt.Iptables()


def restart_only_changes(running: Settings, wanted: Settings, limits: Limits, new_limits: Limits) -> list[str]:
    """What a reload found changed but cannot apply: `key old -> new` per setting."""

    def shown(key: str, s: Settings) -> tuple[str, object]:  # the config's names and values
        if key == "fail_open":
            return "fail_mode", "open" if s.fail_open else "closed"
        return key, getattr(s, key)

    out = [
        f"{shown(k, running)[0]} {shown(k, running)[1]!r} -> {shown(k, wanted)[1]!r}"
        for k in RESTART_ONLY
        if getattr(running, k) != getattr(wanted, k)
    ]
    if limits != new_limits:
        out.append("[limits]")
    return out


def _check_writable(path: str | None) -> str | None:
    """None if the event log `path` can be opened for appending (as the workers will), else why not."""
    if path is None or path == "-":
        return None
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640))
    except OSError as exc:
        return f"event log {path}: {exc.strerror}"
    return None


def engine_limits(limits: Limits, offload: bool) -> Limits:
    if not offload:
        return limits
    raised = {k: max(getattr(limits, k), v) for k, v in OFFLOAD_MIN_TIMEOUTS_US.items()}
    return dataclasses.replace(limits, **raised)


# --- event log --------------------------------------------------------------------------------


class EventWriter:
    """Appends JSON lines (the replay format: format_event, compact, UTF-8). Each batch is one
    write() on an O_APPEND descriptor, so several workers can share one file without tearing
    lines; reopen() after a rotation (done on SIGHUP)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.count = 0
        self._fd = -1
        self.reopen()

    def switch(self, path: str | None) -> None:
        """Write to another file from now on (None: no event log)."""
        self.path = path
        self.reopen()

    def reopen(self) -> None:
        """Open the file again (after a rotation)."""
        if self._fd > 2:
            os.close(self._fd)
        self._fd = -1
        if self.path is None:
            return
        self._fd = 1 if self.path == "-" else os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def write(self, events: list[RawEvent], policy: CompiledPolicy) -> None:
        if self._fd < 0 or not events:
            return
        data = "".join(
            json.dumps(format_event(ev, policy), ensure_ascii=False, separators=(",", ":")) + "\n" for ev in events
        ).encode()
        try:
            os.write(self._fd, data)
        except OSError as exc:  # a full disk must not stop the packet path
            log.error("event log %s: %s", self.path, exc)
            return
        self.count += len(events)

    def write_dicts(self, events: list[dict[str, object]]) -> None:
        """Events already formatted (the mail inspector's smtp/file events)."""
        if self._fd < 0 or not events:
            return
        data = "".join(json.dumps(ev, ensure_ascii=False, separators=(",", ":")) + "\n" for ev in events).encode()
        try:
            os.write(self._fd, data)
        except OSError as exc:
            log.error("event log %s: %s", self.path, exc)
            return
        self.count += len(events)

    def close(self) -> None:
        if self._fd > 2:
            os.close(self._fd)
        self._fd = -1


# --- worker -----------------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _mail_inspector(q: Any, policy: CompiledPolicy, events: EventWriter) -> Any:
    """The live mail inspector for the policy's inspect rules (gateway.inspect.live), or None:
    no inspect rule, or the sanitizers cannot load (then inspected packets are dropped and
    counted as inspect_unavailable: fail closed)."""
    from gateway.fastpath.common import ACT_INSPECT

    if not any(r.action == ACT_INSPECT for r in policy.rules):
        return None
    try:
        import importlib

        from gateway.inspect.live import LiveMailInspector, QuarantineWriter
        from gateway.io.quarantine import QuarantineStore, default_dir

        importlib.import_module("gateway.sanitize.classify")
        store = QuarantineStore(default_dir())
        return LiveMailInspector(q, policy, store, lambda ev: events.write_dicts([ev]), writer=QuarantineWriter(store))
    except Exception as exc:
        log.error("mail inspection unavailable, inspected flows are dropped: %s", exc)
        return None


def _recover_quarantine(policy: CompiledPolicy) -> None:
    """At start, before any worker can store an original: clean up what a crash of the previous
    daemon left in the quarantine (docs/quarantine.md, "Crash safety"): entries stored without
    their audit record are audited (`recovered`), stale temp files and content without metadata go."""
    from gateway.fastpath.common import ACT_INSPECT

    if not any(r.action == ACT_INSPECT for r in policy.rules):
        return
    try:
        from gateway.io.quarantine import QuarantineStore, default_dir

        done = QuarantineStore(default_dir()).recover()
    except Exception as exc:  # the workers' own store use reports a broken store; start anyway
        log.error("quarantine recover failed: %s", exc)
        return
    if done["removed"] or done["audited"]:
        log.warning(
            "quarantine recovered after a crash: %d stale file(s) removed, %d entr(ies) audited",
            len(done["removed"]),
            len(done["audited"]),
        )


class _Waker:
    """Wakes a worker blocked in its queue read when something else needs it: the supervisor's pipe
    or the quarantine writer's. The worker waits for packets in the read itself (Queue.process with
    wait_ms: no poll() per packet); this thread polls the other fds and interrupts that read with
    SIGUSR2 (EINTR) until the worker has taken the work (`taken`). A signal landing just before
    the read starts is repeated every millisecond, so nothing waits longer than that."""

    def __init__(self, fds: list[int]) -> None:
        signal.signal(signal.SIGUSR2, lambda signum, frame: None)  # EINTR only, no default action
        self.due = False
        self._taken = threading.Event()
        self._main = threading.main_thread().ident or threading.get_ident()
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)  # adds fds, stops
        self._poller = select.poll()
        self._poller.register(self._rfd, select.POLLIN)
        for fd in fds:
            self._poller.register(fd, select.POLLIN)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="worker-waker", daemon=True)
        self._thread.start()

    def add(self, fd: int) -> None:
        self._poller.register(fd, select.POLLIN)
        os.write(self._wfd, b"\0")  # re-enter poll() with the new fd

    def _run(self) -> None:
        while not self._stopping:
            ready = self._poller.poll()
            if any(fd == self._rfd for fd, _ in ready):
                with contextlib.suppress(BlockingIOError):
                    os.read(self._rfd, 4096)
                if len(ready) == 1:
                    continue
            self._taken.clear()
            self.due = True
            while not self._stopping:
                signal.pthread_kill(self._main, signal.SIGUSR2)
                if self._taken.wait(0.001):
                    break

    def taken(self) -> None:
        """The worker handled what was due (called after reading the fds)."""
        self.due = False
        self._taken.set()

    def close(self) -> None:
        self._stopping = True
        self._taken.set()
        with contextlib.suppress(OSError):
            os.write(self._wfd, b"\0")
        self._thread.join(2)


def worker_main(
    index: int, settings: Settings, policy: CompiledPolicy, limits: Limits, mark_gen: int, conn: Connection
) -> int:
    """Run one worker's packet loop until told to stop. Returns the exit status."""
    from gateway.fastpath import Engine
    from gateway.io.nfqueue import open_queue

    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)  # the supervisor handles these

    queue_num = settings.queue + index
    engine = Engine(policy, engine_limits(limits, settings.offload))
    try:
        q = open_queue(
            queue_num,
            fail_open=settings.fail_open,
            offload=settings.offload,
            max_batch=settings.max_batch,
            maxlen=settings.queue_maxlen,
        )
    except (OSError, ImportError) as exc:
        conn.send(("error", index, f"cannot bind NFQUEUE {queue_num}: {exc}"))
        return 1
    q.offload_mark = ipt.offload_mark(mark_gen) if settings.offload else 0
    events = EventWriter(settings.events)
    waker = _Waker([conn.fileno()])

    def attach_mail_inspector(policy: CompiledPolicy) -> Any:
        """The policy's mail inspector (None without inspect rules), hooked to the queue, its
        quarantine writer to the waker."""
        mail = _mail_inspector(q, policy, events)
        q.inspect = mail.hook if mail is not None else None
        if mail is not None and mail.writer is not None:
            waker.add(mail.writer.fileno())
        return mail

    mail = attach_mail_inspector(policy)
    conn.send(("ready", index, os.getpid()))

    wait_ms = int(REPORT_INTERVAL * 1000)
    decide = engine.decide
    max_batch = settings.max_batch
    next_report = 0.0
    next_ifnames = time.monotonic() + 5.0
    last_error: object = None

    def report() -> None:
        bounds, counts, total = q.latency()
        conn.send(
            (
                "stats",
                index,
                WorkerSnapshot(
                    worker=index,
                    queue=queue_num,
                    pid=os.getpid(),
                    engine=engine.counters(),
                    nfq={**q.stats(), **(mail.counters if mail is not None else {})},
                    by_verdict_reason=q.by_verdict_reason(),
                    latency_bounds=bounds,
                    latency_counts=counts,
                    latency_sum=total,
                    events=events.count,
                ),
            )
        )

    try:
        while not stop:
            # wait for packets in the read itself (at most wait_ms, for the heartbeat); the waker
            # interrupts it when the supervisor or the quarantine writer has something
            if q.process(decide, wait_ms) >= max_batch:
                for _ in range(MAX_DRAIN_BATCHES - 1):
                    if q.process(decide) < max_batch:
                        break
            woken = waker.due  # the supervisor's pipe or the quarantine writer's
            if woken:
                waker.taken()  # before reading: what arrives from now on wakes us again
                if mail is not None:
                    mail.stored()  # the end of DATA held for a durable original goes on first
            evs = engine.pop_events()
            if evs:
                events.write(evs, policy)
            if q.last_error is not last_error:
                last_error = q.last_error
                log.error("worker %d: %r", index, last_error)
            while woken and conn.poll():
                msg = conn.recv()
                if msg[0] == "policy":
                    _, policy, mark_gen, events_path = msg
                    engine.set_policy(policy)
                    if mail is not None:
                        mail.set_policy(policy)
                    else:
                        mail = attach_mail_inspector(policy)
                    q.offload_mark = ipt.offload_mark(mark_gen) if settings.offload else 0
                    try:
                        events.switch(events_path)
                    except OSError as exc:  # checked by the supervisor first; the disk may still refuse
                        log.error("worker %d: event log %s: %s", index, events_path, exc)
                    conn.send(("reloaded", index, policy.generation))
                elif msg[0] == "stop":
                    stop = True
            now = time.monotonic()
            if now >= next_report:
                if mail is not None:
                    mail.tick()  # expire closed and idle inspected connections
                report()
                next_report = now + REPORT_INTERVAL
            if now >= next_ifnames:  # interfaces may be renamed or recreated with a new index
                q.forget_interfaces()
                next_ifnames = now + 5.0
        report()
    except (BrokenPipeError, EOFError):
        return 1  # the supervisor is gone
    finally:
        waker.close()
        if mail is not None:
            with contextlib.suppress(Exception):
                mail.close()
        q.close()
        events.close()
    return 0


# --- supervisor -------------------------------------------------------------------------------


@dataclass
class WorkerProc:
    index: int
    pid: int
    conn: Connection
    last_seen: float
    ready: bool = False


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        loaded: Loaded,
        loader: Loader = default_loader,
        iptables: Firewall | None = None,
        notifier: Notifier | None = None,
        args: argparse.Namespace | None = None,
    ) -> None:
        self.settings = settings
        # the command-line options: they keep overriding the file's [daemon] keys at every reload
        self.args = args if args is not None else argparse.Namespace(config=settings.config)
        self.loader = loader
        self.policy = loaded.compiled
        self.limits = loaded.limits
        self.generation = loaded.compiled.generation
        # the rules backend (iptables or nftables): chosen in run() when not given (tests give one)
        self._firewall = iptables
        self.ipt: Firewall = iptables or ipt.Iptables()
        self.notify = notifier or Notifier()
        self.view = DaemonView(offload=settings.offload, policy_generation=self.generation)
        self.workers: dict[int, WorkerProc] = {}
        self.mark_gen = 1
        self._flags: set[int] = set()
        self._offloaded_base = (0, 0)
        self._rules_installed = False  # only an instance that installed rules may change them at stop
        self._stop_metrics: Callable[[], None] | None = None

    # signal handlers only record the signal; the main loop acts on it (wakeup fd)
    def _on_signal(self, signum: int, frame: object) -> None:
        self._flags.add(signum)

    def run(self) -> int:
        s = self.settings
        if s.fail_open:
            for _ in range(3):
                log.warning(
                    '!!! fail_mode = "open": NFQUEUE --queue-bypass is set; while this daemon is not running, '
                    "forwarded traffic passes UNFILTERED !!!"
                )
        if s.manage_rules:
            if self._firewall is None:
                try:
                    self.ipt = select_firewall(s.firewall)
                except SettingsError as exc:
                    log.error("%s", exc)
                    return 1
            installed = self.ipt.installed_generation()
            self.mark_gen = ipt.next_generation(installed)
        rfd, wfd = socket.socketpair()
        rfd.setblocking(False)
        wfd.setblocking(False)
        signal.set_wakeup_fd(wfd.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)
        status = 0
        try:
            _recover_quarantine(self.policy)
            if not self._start_workers():
                return 1
            if s.manage_rules:
                self.ipt.install(s.rules_config(self.mark_gen))
                self._rules_installed = True
            if s.metrics_port:
                from gateway.io.metrics import serve

                self._setup_kernel_readers()
                self._stop_metrics = serve(self.view, s.metrics_port, s.metrics_address)
            log.info(
                "running: policy %s generation %d, %d worker(s) on queue %d%s, offload %s (mark generation %d), "
                "rules by %s",
                s.config,
                self.generation,
                s.workers,
                s.queue,
                f"..{s.queue + s.workers - 1}" if s.workers > 1 else "",
                "on" if s.offload else "off",
                self.mark_gen,
                self.ipt.name if s.manage_rules else "nobody",
            )
            self.notify.ready(f"generation {self.generation}")
            status = self._loop(rfd)
        except ipt.IptablesError as exc:  # nftables errors are IptablesErrors too
            log.error("firewall rules (%s): %s", self.ipt.name, exc)
            status = 1
        finally:
            self.notify.stopping()
            self._shutdown()
            signal.set_wakeup_fd(-1)
            rfd.close()
            wfd.close()
        return status

    def _start_workers(self) -> bool:
        parent = os.getpid()
        for index in range(self.settings.workers):
            here, there = Pipe(duplex=True)
            pid = os.fork()
            if pid == 0:  # child
                code = 1
                try:
                    signal.set_wakeup_fd(-1)
                    here.close()
                    _die_with_parent(parent)
                    code = worker_main(index, self.settings, self.policy, self.limits, self.mark_gen, there)
                except BaseException:
                    log.exception("worker %d failed", index)
                finally:
                    os._exit(code)
            there.close()
            self.workers[index] = WorkerProc(index, pid, here, time.monotonic())
        deadline = time.monotonic() + 10
        while not all(w.ready for w in self.workers.values()):
            if time.monotonic() > deadline:
                log.error("workers did not bind their queues in time")
                return False
            for w in self.workers.values():
                if w.conn.poll(0.05):
                    try:
                        msg = w.conn.recv()
                    except EOFError:
                        log.error("worker %d exited during start", w.index)
                        return False
                    if msg[0] == "error":
                        log.error("worker %d: %s", w.index, msg[2])
                        return False
                    if msg[0] == "ready":
                        w.ready = True
        return True

    def _setup_kernel_readers(self) -> None:
        from gateway.io.nfqueue import kernel_queue_stats

        self.view.kernel_queues = kernel_queue_stats
        if self.settings.offload and self.settings.manage_rules:
            self.view.offloaded_flows = self._offloaded_flows
            self.view.offloaded_packets = self._offloaded_packets

    def _offloaded_flows(self) -> int:
        """Conntrack entries carrying the current offload mark (read at scrape time)."""
        want = ipt.offload_mark(self.mark_gen)
        n = 0
        try:
            with open("/proc/net/nf_conntrack") as f:
                for line in f:
                    i = line.find(" mark=")
                    if i >= 0 and (int(line[i + 6 : line.index(" ", i + 6)]) & ipt.MARK_MASK) == want:
                        n += 1
        except (OSError, ValueError):
            return 0
        return n

    def _offloaded_packets(self) -> tuple[int, int]:
        pk, by = self.ipt.offloaded()
        return self._offloaded_base[0] + pk, self._offloaded_base[1] + by

    def _loop(self, wake: socket.socket) -> int:
        poller = select.poll()
        poller.register(wake.fileno(), select.POLLIN)
        by_fd: dict[int, WorkerProc] = {}
        for w in self.workers.values():
            poller.register(w.conn.fileno(), select.POLLIN)
            by_fd[w.conn.fileno()] = w
        next_check = time.monotonic() + self.settings.check_interval
        wd_interval = self.notify.watchdog_usec / 2e6 if self.notify.watchdog_usec else 0.0
        hung_after = min(HEARTBEAT_TIMEOUT, max(2 * REPORT_INTERVAL, wd_interval)) if wd_interval else HEARTBEAT_TIMEOUT
        next_wd = 0.0
        while True:
            for fd, _ in poller.poll(200):
                if fd == wake.fileno():
                    with contextlib.suppress(BlockingIOError):
                        wake.recv(4096)
                    continue
                w = by_fd[fd]
                try:
                    while w.conn.poll():
                        self._handle(w, w.conn.recv())
                except (EOFError, OSError):
                    log.error("worker %d (pid %d) died: stopping (its queue drops traffic meanwhile)", w.index, w.pid)
                    return 1
            for sig in sorted(self._flags):
                self._flags.discard(sig)
                if sig in (signal.SIGTERM, signal.SIGINT):
                    log.info("%s: stopping", signal.Signals(sig).name)
                    return 0
                if sig == signal.SIGHUP:
                    self.reload()
                elif sig == signal.SIGUSR1:
                    self.log_counters()
            now = time.monotonic()
            if self.settings.manage_rules and now >= next_check:
                next_check = now + self.settings.check_interval
                self.check_rules()
            if wd_interval and now >= next_wd:
                if all(now - w.last_seen < hung_after for w in self.workers.values()):
                    self.notify.watchdog()
                    next_wd = now + wd_interval
                else:  # no ping: systemd kills and restarts us after WatchdogSec
                    log.error("a worker stopped reporting; withholding the watchdog ping")
                    next_wd = now + wd_interval

    def _handle(self, w: WorkerProc, msg: tuple[Any, ...]) -> None:
        w.last_seen = time.monotonic()
        if msg[0] == "stats":
            workers = dict(self.view.workers)
            workers[w.index] = msg[2]
            self.view.workers = workers

    def reload(self) -> bool:
        """SIGHUP: validate the new file fully, then swap; on any error keep the running policy."""
        self.notify.reloading()
        t0 = time.monotonic()
        try:
            loaded = self.loader(self.settings.config, self.generation + 1)
        except Exception as exc:  # ConfigError carries FILE:LINE: reason lines; anything else too
            self.view.reloads_failed += 1
            log.error("reload refused, keeping policy generation %d:", self.generation)
            for line in str(exc).splitlines() or [repr(exc)]:
                log.error("  %s", line)
            self.notify.ready(f"generation {self.generation} (last reload failed)")
            return False
        new_policy = loaded.compiled
        try:
            wanted = settings_for(self.args, loaded)
        except SettingsError as exc:
            problem: str | None = str(exc)
        else:
            problem = _check_writable(wanted.events) if wanted.events != self.settings.events else None
        if problem is not None:  # nothing of this file applies, the policy included
            self.view.reloads_failed += 1
            log.error("reload refused, keeping policy generation %d: %s", self.generation, problem)
            self.notify.ready(f"generation {self.generation} (last reload failed)")
            return False
        pending = restart_only_changes(self.settings, wanted, self.limits, loaded.limits)
        if pending:
            log.warning(
                "reload: %s changed; these apply at the next restart only (the running values stay): %s",
                "a setting" if len(pending) == 1 else "settings",
                ", ".join(pending),
            )
        self.view.restart_pending = bool(pending)
        applied = dataclasses.replace(self.settings, **{k: getattr(wanted, k) for k in RELOADABLE})
        new_mark = ipt.next_generation(self.mark_gen)
        for w in self.workers.values():
            w.conn.send(("policy", new_policy, new_mark, applied.events))
        deadline = time.monotonic() + RELOAD_TIMEOUT
        waiting = set(self.workers)
        while waiting and time.monotonic() < deadline:
            for i in list(waiting):
                w = self.workers[i]
                while w.conn.poll(0.01):
                    msg = w.conn.recv()
                    if msg[0] == "reloaded":
                        waiting.discard(i)
                    else:
                        self._handle(w, msg)
        if waiting:
            log.error("worker(s) %s did not take the new policy in time", sorted(waiting))
        self.settings = applied
        self.policy = new_policy
        self.generation = new_policy.generation
        self.mark_gen = new_mark
        if self.settings.manage_rules:
            try:
                before = self.ipt.offloaded() if self.view.offloaded_packets else (0, 0)
                self.ipt.install(self.settings.rules_config(new_mark))
                self._offloaded_base = (self._offloaded_base[0] + before[0], self._offloaded_base[1] + before[1])
            except ipt.IptablesError as exc:
                log.error("reload: installing the new offload rule failed: %s", exc)
        self.view.reloads_ok += 1
        self.view.policy_generation = self.generation
        self.view.mark_generation = new_mark
        for note in getattr(loaded, "notes", []):
            log.info("config: %s", note)
        log.info(
            "reloaded %s: policy generation %d, mark generation %d (%.1f ms)",
            self.settings.config,
            self.generation,
            new_mark,
            (time.monotonic() - t0) * 1e3,
        )
        self.notify.ready(f"generation {self.generation}")
        return True

    def check_rules(self) -> None:
        try:
            if not self.ipt.intact():
                log.warning("iptables rules were altered or removed: re-installing")
                self.ipt.install(self.settings.rules_config(self.mark_gen))
                self.view.rules_reinstalled += 1
        except ipt.IptablesError as exc:
            self.view.rules_check_failed += 1
            log.error("rules check: %s", exc)

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for w in self.view.workers.values():
            for part in (w.engine, w.nfq):
                for k, n in part.items():
                    out[k] = out.get(k, 0) + n
        out["reloads_ok"] = self.view.reloads_ok
        out["reloads_failed"] = self.view.reloads_failed
        out["rules_reinstalled"] = self.view.rules_reinstalled
        return out

    def log_counters(self) -> None:
        totals = self.totals()
        log.info("counters: %s", " ".join(f"{k}={v}" for k, v in sorted(totals.items()) if v))

    def _shutdown(self) -> None:
        for w in self.workers.values():
            with contextlib.suppress(OSError):
                w.conn.send(("stop",))
        deadline = time.monotonic() + 5
        for w in self.workers.values():
            while time.monotonic() < deadline:
                try:
                    pid, _ = os.waitpid(w.pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid:
                    break
                time.sleep(0.02)
            else:
                os.kill(w.pid, signal.SIGKILL)
                os.waitpid(w.pid, 0)
        if self._rules_installed:
            # the rules stay (fail closed); only the offload accept goes, so offloaded flows stop too
            try:
                self.ipt.install(self.settings.rules_config(self.mark_gen, running=False))
            except ipt.IptablesError as exc:
                log.error("stop: %s", exc)
        if self._stop_metrics is not None:
            self._stop_metrics()
        self.log_counters()
        log.info("stopped; the iptables rules stay: forwarded traffic is blocked until the gateway runs again")


# --- commands ---------------------------------------------------------------------------------


def _setup_logging() -> None:
    fmt = "%(levelname)s %(message)s" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s %(levelname)s %(message)s"
    logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stderr)


def _load_or_report(path: str, loader: Loader) -> Loaded | None:
    try:
        return loader(path, 1)
    except Exception as exc:
        for line in str(exc).splitlines() or [repr(exc)]:
            print(line, file=sys.stderr)
        return None


def run_command(args: argparse.Namespace, loader: Loader = default_loader) -> int:
    _setup_logging()
    loaded = _load_or_report(args.config, loader)
    if loaded is None:
        return 2
    try:
        settings = settings_for(args, loaded)
    except SettingsError as exc:
        print(f"lgwan-gateway run: {exc}", file=sys.stderr)
        return 2
    problem = _check_writable(settings.events)  # before any queue or rule exists
    if problem is not None:
        print(f"lgwan-gateway run: {problem}", file=sys.stderr)
        return 2
    return Supervisor(settings, loaded, loader, args=args).run()


def rules_command(args: argparse.Namespace, loader: Loader = default_loader) -> int:
    """Print the iptables-restore (or nft) input `run` installs, or remove the rules."""
    tables = ipt.Iptables()
    if args.remove:
        try:
            tables.remove()
            # the nftables table too, where one was installed (firewall = "nft" or "auto")
            nft_tables = nft.Nftables()
            if shutil.which("nft") and nft_tables.installed_generation() is not None:
                nft_tables.remove()
                print(f"removed the nftables table {nft.FAMILY} {nft.TABLE}")
        except ipt.IptablesError as exc:
            print(f"lgwan-gateway rules --remove: {exc}", file=sys.stderr)
            return 1
        print("removed the lgwan-gateway chains (IPv4 and IPv6): forwarded traffic is no longer filtered")
        return 0
    if not args.config:
        print("lgwan-gateway rules: --config is required (or --remove)", file=sys.stderr)
        return 2
    loaded = _load_or_report(args.config, loader)
    if loaded is None:
        return 2
    try:
        settings = settings_for(args, loaded)
    except SettingsError as exc:
        print(f"lgwan-gateway rules: {exc}", file=sys.stderr)
        return 2
    if settings.firewall != "iptables":
        ok, why = nft.probe() if os.geteuid() == 0 else (False, "not root: cannot ask the kernel")
        if settings.firewall == "nft" or ok:
            return _print_nft_rules(settings, ok, why, fresh=args.fresh)
        print(f"# firewall = auto: iptables (nftables backend unavailable: {why})")
    states: dict[int, ipt.State | None] = dict.fromkeys(ipt.FAMILIES)
    installed: int | None = None
    if not args.fresh:
        try:
            states = {fam: tables.read_state(fam) for fam in ipt.FAMILIES}
            installed = ipt.installed_generation(states[4]) if states[4] else None
        except ipt.IptablesError:
            states = dict.fromkeys(ipt.FAMILIES)  # not root / no iptables: print for a clean host
    gen = ipt.next_generation(installed)
    cfg = settings.rules_config(gen)
    for fam in ipt.FAMILIES:
        where = "this host's current ruleset" if states[fam] is not None else "a host without lgwan-gateway rules"
        print(f"# IPv{fam}: {ipt.tool(fam, 'restore')} --noflush  (computed against {where})")
        print(ipt.restore_input(cfg, states[fam]), end="")
    return 0


def _print_nft_rules(settings: Settings, usable: bool, why: str, *, fresh: bool) -> int:
    installed: int | None = None
    if not fresh:
        try:
            installed = nft.Nftables().installed_generation()
        except ipt.IptablesError:
            installed = None  # not root / no nft: print for a clean host
    print(f"# nft -f -  (one transaction, IPv4 and IPv6; {'usable here' if usable else 'NOT usable here: ' + why})")
    print(nft.ruleset(settings.rules_config(ipt.next_generation(installed))), end="")
    return 0


def stats_command(args: argparse.Namespace) -> int:
    from gateway.io.metrics import fetch, render_table

    try:
        text = fetch(args.port, args.address)
    except OSError as exc:
        print(f"lgwan-gateway stats: cannot read http://{args.address}:{args.port}/metrics: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(render_table(text))
    return 0
