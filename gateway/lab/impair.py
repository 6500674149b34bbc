"""A path impairment shim for the lab: reorder, duplicate and drop TCP segments, clamp the MSS.

This kernel has no `tc netem`, so the lab builds its own: a process inside one host's namespace
(e.g. `internet-relay`) puts that host's TCP traffic with one peer (address and port, both
directions) through an NFQUEUE (the project's own binding, `gateway._nfq`, with deferred verdicts)
and decides every segment:

- **drop**: the segment is not sent (only its first transmission: a retransmission always passes,
  so each loss costs the sender one recovery, never an endless one). Data carrying a FIN is never
  dropped: the gateway's injected `554` + FIN is sent once, nobody retransmits it;
- **reorder**: the segment is held and released right after the next packet of its direction
  (or after `hold_s` when no packet follows), so the two go out swapped;
- **duplicate**: the segment goes out, then a copy of it (raw socket with `SO_MARK`, which the
  shim's rules let pass unqueued). Only for packets this host sends: a copy of a received packet
  could only be delivered to this host itself, not to the path;
- **MSS**: `TCPMSS --set-mss` rewrites the MSS option of both SYNs, so both ends send small
  segments (the path's "small MSS").

Only segments that carry data are impaired; SYN, FIN-only, RST and pure ACKs pass as they are.
Decisions are seeded and deterministic per segment, not per arrival: each is drawn from
`random.Random("seed:session:direction:offset:length:occurrence")`, where session numbers the
connections in the order their SYNs pass the shim and offset is relative to the direction's ISN.
The same sessions sent again in the same order (other ports, other ISNs) get the same
impairments wherever their segmentation is the same, whatever the timing.

The iptables rules (a chain `LGW_IMPAIR` and a jump from OUTPUT and INPUT) are removed on exit,
also after SIGTERM/SIGINT; if the process is killed hard, the rules stay and, with no listener,
the queue drops the traffic (no `--queue-bypass`): fail closed, and the namespace's deletion
removes them.

    python -m gateway.lab.impair --peer 198.18.20.25 --port 25 --seed 1 \\
        --reorder 0.1 --duplicate 0.1 --drop 0.05 --mss 536 --stats-file S.json

From Python: `with impaired(lab, "internet-relay", "lgwan-mail", 25, Impairments(...)) as shim:`
(the process is recorded in the lab's state, so `lab down` ends it if a test dies first).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.inspect.packet import PacketError, parse_tcp

if TYPE_CHECKING:
    from gateway.lab.core import Lab

CHAIN = "LGW_IMPAIR"
SHIM_MARK = 0x4C470000  # the shim's own copies carry it and skip its rules
DEFAULT_QUEUE = 100  # NFQUEUE numbers are per network namespace
V_INSPECT = 2  # gateway.fastpath.common.INSPECT: the binding hands the packet over without a verdict
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10
SO_MARK = getattr(socket, "SO_MARK", 36)


@dataclass(frozen=True)
class Impairments:
    seed: int = 1
    reorder: float = 0.0  # probability that a data segment is held and sent after the next packet
    duplicate: float = 0.0  # probability that an outgoing data segment is sent twice
    drop: float = 0.0  # probability that a data segment's first transmission is dropped
    mss: int | None = None  # clamp the MSS option of SYNs to this
    hold_s: float = 0.02  # a held segment with no successor goes out after this

    def __post_init__(self) -> None:
        if min(self.reorder, self.duplicate, self.drop) < 0 or self.reorder + self.drop > 1 or self.duplicate > 1:
            raise ValueError("probabilities must be >= 0, reorder + drop <= 1, duplicate <= 1")
        if self.mss is not None and not 88 <= self.mss <= 65495:
            raise ValueError("mss must be 88..65495")


# --- the decision core (no I/O) -----------------------------------------------------------------


@dataclass(frozen=True)
class Accept:
    packet_id: int


@dataclass(frozen=True)
class Drop:
    packet_id: int


@dataclass(frozen=True)
class Send:
    packet: bytes  # a copy to send with the shim's mark (after the original)


Op = Accept | Drop | Send
Direction = tuple[bytes, int, bytes, int]  # src, sport, dst, dport


@dataclass
class _Held:
    packet_id: int
    deadline: float
    copy: bytes | None  # duplicate to send after it, if it was chosen for both


@dataclass
class Impairer:
    """Decides each queued packet. Every packet id handed in gets exactly one Accept or Drop."""

    cfg: Impairments
    isn: dict[Direction, int] = field(default_factory=dict)
    session: dict[frozenset[tuple[bytes, int]], int] = field(default_factory=dict)  # connection -> number
    seen: dict[tuple[Direction, int, int], int] = field(default_factory=dict)
    held: dict[Direction, _Held] = field(default_factory=dict)
    counters: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("packets", "data", "dropped", "reordered", "duplicated", "timeouts"), 0)
    )

    def packet(self, packet_id: int, pkt: bytes, now: float, outgoing: bool) -> list[Op]:
        self.counters["packets"] += 1
        try:
            t = parse_tcp(pkt)
        except PacketError:
            return [Accept(packet_id)]  # not ours to judge (the rules queue TCP only)
        d: Direction = (t.src, t.sport, t.dst, t.dport)
        if t.flags & _SYN:
            self.isn[d] = t.seq
            if not t.flags & _ACK:  # a new connection: the next session number
                self.session[frozenset(((t.src, t.sport), (t.dst, t.dport)))] = len(self.session)
        ops: list[Op] = []
        if not t.payload or t.flags & (_SYN | _RST):
            ops.append(Accept(packet_id))
        else:
            ops += self._data(packet_id, pkt, d, t.seq, len(t.payload), now, outgoing, bool(t.flags & _FIN))
        held = self.held.get(d)
        if held is not None and held.packet_id != packet_id:  # the next packet went first: release
            ops += self._release(d)
        return ops

    def _data(
        self, packet_id: int, pkt: bytes, d: Direction, seq: int, n: int, now: float, outgoing: bool, fin: bool
    ) -> list[Op]:
        self.counters["data"] += 1
        offset = (seq - self.isn.get(d, 0)) % (1 << 32)
        key = (d, offset, n)
        occurrence = self.seen.get(key, 0)
        self.seen[key] = occurrence + 1
        side = "out" if outgoing else "in"
        conn = self.session.get(frozenset(((d[0], d[1]), (d[2], d[3]))), -1)
        rnd = random.Random(f"{self.cfg.seed}:{conn}:{side}:{offset}:{n}:{occurrence}")
        u, dup = rnd.random(), rnd.random() < self.cfg.duplicate and outgoing
        copy = pkt if dup else None
        if occurrence == 0 and u < self.cfg.drop and not fin:
            self.counters["dropped"] += 1
            return [Drop(packet_id)]
        if u < self.cfg.drop + self.cfg.reorder and d not in self.held:
            self.counters["reordered"] += 1
            self.held[d] = _Held(packet_id, now + self.cfg.hold_s, copy)
            return []
        ops: list[Op] = [Accept(packet_id)]
        if copy is not None:
            self.counters["duplicated"] += 1
            ops.append(Send(copy))
        return ops

    def _release(self, d: Direction) -> list[Op]:
        h = self.held.pop(d)
        ops: list[Op] = [Accept(h.packet_id)]
        if h.copy is not None:
            self.counters["duplicated"] += 1
            ops.append(Send(h.copy))
        return ops

    def next_deadline(self) -> float | None:
        return min((h.deadline for h in self.held.values()), default=None)

    def tick(self, now: float) -> list[Op]:
        ops: list[Op] = []
        for d in [d for d, h in self.held.items() if h.deadline <= now]:
            self.counters["timeouts"] += 1
            ops += self._release(d)
        return ops

    def close(self) -> list[Op]:
        ops: list[Op] = []
        for d in list(self.held):
            ops += self._release(d)
        return ops


# --- iptables ------------------------------------------------------------------------------------


def rule_commands(peer: str, port: int, queue: int, mss: int | None) -> tuple[list[list[str]], list[list[str]]]:
    """(install, remove): iptables argument lists (without the `iptables -w` in front)."""
    install = [
        ["-N", CHAIN],
        ["-A", CHAIN, "-m", "mark", "--mark", f"{SHIM_MARK:#x}", "-j", "RETURN"],
    ]
    if mss is not None:
        install.append(
            ["-A", CHAIN, "-p", "tcp", "--tcp-flags", "SYN,RST", "SYN", "-j", "TCPMSS", "--set-mss", str(mss)]
        )
    install.append(["-A", CHAIN, "-j", "NFQUEUE", "--queue-num", str(queue)])
    jumps = [
        ["OUTPUT", "-p", "tcp", "-d", peer, "--dport", str(port), "-j", CHAIN],
        ["INPUT", "-p", "tcp", "-s", peer, "--sport", str(port), "-j", CHAIN],
    ]
    install += [["-I", *j] for j in jumps]
    remove = [["-D", *j] for j in jumps] + [["-F", CHAIN], ["-X", CHAIN]]
    return install, remove


def _iptables(args: Sequence[str], check: bool = True) -> None:
    proc = subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"iptables {' '.join(args)}: {proc.stderr.strip()}")


# --- the process ---------------------------------------------------------------------------------


def serve(
    peer: str, port: int, cfg: Impairments, queue_num: int = DEFAULT_QUEUE, ready: Path | None = None
) -> Impairer:
    """Install the rules, impair until SIGTERM/SIGINT, remove the rules. Returns the decider."""
    from gateway import _nfq

    imp = Impairer(cfg)
    install, remove = rule_commands(peer, port, queue_num, cfg.mss)
    q = _nfq.Queue(queue_num, gso=False)  # the kernel segments GSO packets: one segment per id
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    raw.setsockopt(socket.SOL_SOCKET, SO_MARK, SHIM_MARK)

    def run(ops: list[Op]) -> None:
        for op in ops:
            if isinstance(op, Accept):
                q.verdict(op.packet_id, True)
            elif isinstance(op, Drop):
                q.verdict(op.packet_id, False)
            else:
                raw.sendto(op.packet, (parse_tcp(op.packet).dst_text, 0))

    def decide(pkt: bytes, ts_us: int, in_if: str | None, out_if: str | None) -> tuple[int, int, bool]:
        return (V_INSPECT, 0, in_if is None)  # no input interface: this host sent it (OUTPUT)

    def hook(packet_id: int, pkt: bytes, d: Any) -> None:
        run(imp.packet(packet_id, pkt, time.monotonic(), bool(d[2])))

    q.inspect = hook
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    # the signal also writes to this pipe, which wakes the select below at once
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    old_fd = signal.set_wakeup_fd(wake_w)
    try:
        for args in install:
            _iptables(args)
        if ready is not None:
            ready.write_text(str(os.getpid()))
        while not stop:
            deadline = imp.next_deadline()
            wait = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            if q.fileno() in select.select([q.fileno(), wake_r], [], [], wait)[0]:
                while q.process(decide) > 0:
                    pass
            run(imp.tick(time.monotonic()))
    finally:
        signal.set_wakeup_fd(old_fd)
        for s, h in old.items():
            signal.signal(s, h)
        os.close(wake_r)
        os.close(wake_w)
        for args in remove:
            _iptables(args, check=False)
        with contextlib.suppress(Exception):
            run(imp.close())
        q.close()
        raw.close()
    return imp


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.lab.impair", description=__doc__.split("\n\n")[0])
    p.add_argument("--peer", required=True, help="the peer's IPv4 address")
    p.add_argument("--port", type=int, required=True, help="the peer's TCP port")
    p.add_argument("--queue", type=int, default=DEFAULT_QUEUE)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--reorder", type=float, default=0.0)
    p.add_argument("--duplicate", type=float, default=0.0)
    p.add_argument("--drop", type=float, default=0.0)
    p.add_argument("--mss", type=int)
    p.add_argument("--hold-ms", type=float, default=20.0)
    p.add_argument("--ready-file", type=Path, help="written once the rules are in")
    p.add_argument("--stats-file", type=Path, help="counters as JSON, written at exit")
    a = p.parse_args(argv)
    cfg = Impairments(a.seed, a.reorder, a.duplicate, a.drop, a.mss, a.hold_ms / 1000)
    imp = serve(a.peer, a.port, cfg, a.queue, a.ready_file)
    out = json.dumps({"config": asdict(cfg), "counters": imp.counters})
    if a.stats_file is not None:
        a.stats_file.write_text(out + "\n")
    print(out, flush=True)
    return 0


@dataclass
class Shim:
    """A running shim (see `impaired`); `counters` is filled when it has stopped."""

    cfg: Impairments
    pid: int
    counters: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def impaired(lab: Lab, host: str, peer: str, port: int, cfg: Impairments, timeout: float = 10.0) -> Iterator[Shim]:
    """Run the shim in `host`'s namespace for the traffic with lab host `peer`:`port`."""
    from gateway.lab.core import _reap
    from gateway.lab.topology import address_of

    ready = lab.state_dir / f"impair-{host}.ready"
    stats = lab.state_dir / f"impair-{host}.json"
    for f in (ready, stats):
        f.unlink(missing_ok=True)
    argv = [lab.python, "-m", "gateway.lab.impair", "--peer", address_of(peer), "--port", str(port)]
    argv += ["--seed", str(cfg.seed), "--reorder", str(cfg.reorder), "--duplicate", str(cfg.duplicate)]
    argv += ["--drop", str(cfg.drop), "--hold-ms", str(cfg.hold_s * 1000), "--ready-file", str(ready)]
    argv += ["--stats-file", str(stats)] + (["--mss", str(cfg.mss)] if cfg.mss is not None else [])
    # recorded in lab.json: `lab down` ends it if the caller dies before the finally below
    rec = lab._spawn(f"impair-{host}", lab.namespace(host), argv)
    shim = Shim(cfg, rec.pid)
    try:
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if not rec.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"impairment shim did not start:\n{Path(rec.log).read_text(errors='replace')}")
            time.sleep(0.02)
        yield shim
    finally:
        if rec.alive():
            os.killpg(rec.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while rec.alive() and time.monotonic() < deadline:
            _reap()
            time.sleep(0.02)
        if rec.alive():
            os.killpg(rec.pid, signal.SIGKILL)
        _reap()
        lab.state.processes.pop(rec.name, None)
        lab._save()
        if stats.exists():
            shim.counters = json.loads(stats.read_text())["counters"]


if __name__ == "__main__":
    sys.exit(main())
