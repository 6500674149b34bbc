#!/usr/bin/env python3
"""Benchmark of the per-packet engines and of the replay path (a script, not a test).

    .venv/bin/python bench/bench_engine.py [--packets 1000000] [--flows 10000] [--python-subset 200000]

On a realistic mixed capture of the built-in lab (gateway/synth.py: all zone pairs, allowed bulk
and interactive flows, denied flows, orphans, fragments; cached in bench/out/), pinned to one core:

- Cython engine (gateway._fastpath.Engine.decide_frames) over the whole capture in memory,
- pure-Python reference (gateway.fastpath.reference.Engine, same API) over a prefix subset,
- a scapy baseline over a smaller subset: Ether(frame) + one dict lookup on the 5-tuple, i.e.
  what a naive Python filter would do per packet,
- the full replay path with the Cython engine: pcap file in, forwarded pcap + event log out.

Checks that both engines give identical verdicts, counters and events on the common subset, and
prints whether the goals are met: replay >= 1,000,000 packets/s, Cython >= 30x the reference.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from array import array
from collections.abc import Callable
from pathlib import Path

os.environ.pop("LGWAN_GATEWAY_PURE_PYTHON", None)  # replay must use the compiled engine here

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway import _fastpath, synth  # noqa: E402
from gateway.fastpath import reference  # noqa: E402
from gateway.fastpath.common import LINKTYPE_ETHERNET, VERDICT_NAMES  # noqa: E402
from gateway.policy import load_policy  # noqa: E402
from gateway.replay import replay  # noqa: E402

GOAL_REPLAY_PPS = 1_000_000
GOAL_RATIO = 30.0


def pin_one_core() -> int:
    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[-1]  # the last core: usually the least busy with interrupts
    os.sched_setaffinity(0, {cpu})
    return cpu


def capture(out_dir: Path, packets: int, flows: int, seed: int) -> Path:
    path = out_dir / f"lab-mixed-{packets}p-{flows}f-s{seed}.pcap"
    if path.is_file():
        print(f"capture: {path} (cached)")
        return path
    t = time.perf_counter()
    r = synth.bench_capture(path, packets, flows, seed)
    dt = time.perf_counter() - t
    os.sync()  # so the write-back of a fresh capture does not slow the timed runs
    print(f"capture: {path}: {r.packets:,} packets, {len(r.flows):,} flows, {r.bytes / 1e6:.0f} MB, made in {dt:.1f} s")
    return path


class Frames:
    """The capture in memory, indexed like replay does (offsets/lengths/timestamps arrays)."""

    def __init__(self, path: Path) -> None:
        self.buf = path.read_bytes()
        self.offsets, self.lengths, self.ts = array("q"), array("q"), array("q")
        orig = array("q")
        swapped = self.buf[:4] == b"\xa1\xb2\xc3\xd4"
        nano = self.buf[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
        _fastpath.scan_pcap_records(self.buf, 24, nano, swapped, self.offsets, self.lengths, self.ts, orig)
        self.n = len(self.offsets)

    def prefix(self, n: int) -> tuple[array[int], array[int], array[int]]:
        return self.offsets[:n], self.lengths[:n], self.ts[:n]


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_engine(cls: type, policy: object, limits: object, fr: Frames, n: int) -> tuple[float, bytearray, object]:
    eng = cls(policy, limits)
    offs, lens, ts = fr.prefix(n)
    out = bytearray(n)

    def run() -> None:
        # decide_frames stops after each fragment (replay reassembles there); the bench just
        # carries on, as replay does
        pos = 0
        while pos < n:
            pos = eng.decide_frames(fr.buf, offs, lens, ts, LINKTYPE_ETHERNET, out, pos)

    dt = timed(run)
    return dt, out, eng


def scapy_baseline(fr: Frames, n: int) -> float:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether

    table: dict[tuple[object, ...], int] = {}
    buf = fr.buf

    def loop() -> None:
        for i in range(n):
            o = fr.offsets[i]
            p = Ether(buf[o : o + fr.lengths[i]])
            ip = p.getlayer(IP)
            if ip is None:
                continue
            l4 = ip.getlayer(TCP) or ip.getlayer(UDP)
            key = (ip.src, ip.dst, ip.proto, l4.sport if l4 else 0, l4.dport if l4 else 0)
            table[key] = table.get(key, 0) + 1

    return timed(loop)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--flows", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--python-subset", type=int, default=200_000, help="packets for the pure-Python reference")
    ap.add_argument("--scapy-subset", type=int, default=20_000, help="packets for the scapy baseline")
    ap.add_argument("--repeat", type=int, default=3, help="Cython runs (best is reported)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "lab.toml"))
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "out"))
    a = ap.parse_args()

    cpu = pin_one_core()
    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"pinned to cpu {cpu}; python {sys.version.split()[0]}; policy {a.config}")
    path = capture(out_dir, a.packets, a.flows, a.seed)
    loaded = load_policy(a.config)
    pol, lim = loaded.compiled, loaded.limits
    fr = Frames(path)
    print(f"loaded {fr.n:,} frames ({len(fr.buf) / 1e6:.0f} MB) into memory\n")

    # 1. Cython over everything, best of N (each run on a fresh engine: same work every time)
    best = min(run_engine(_fastpath.Engine, pol, lim, fr, fr.n)[0] for _ in range(a.repeat))
    _, cy_out, cy_eng = run_engine(_fastpath.Engine, pol, lim, fr, fr.n)
    cy_pps = fr.n / best
    counts = {VERDICT_NAMES[v]: cy_out.count(v) for v in range(len(VERDICT_NAMES))}
    print(f"cython engine   {cy_pps:>14,.0f} pkt/s  ({fr.n:,} packets, best of {a.repeat}: {best:.3f} s)")
    print(f"                verdicts {counts}; flows created {cy_eng.counters()['flows_created']:,}")

    # 2. pure-Python reference over a prefix; verdicts/counters/events must equal the Cython ones
    n_py = min(a.python_subset, fr.n)
    py_dt, py_out, py_eng = run_engine(reference.Engine, pol, lim, fr, n_py)
    py_pps = n_py / py_dt
    print(f"python engine   {py_pps:>14,.0f} pkt/s  (first {n_py:,} packets: {py_dt:.2f} s)")
    _, cy_sub, cy_sub_eng = run_engine(_fastpath.Engine, pol, lim, fr, n_py)
    same = (
        py_out == cy_sub == cy_out[:n_py]
        and py_eng.counters() == cy_sub_eng.counters()
        and py_eng.pop_events() == cy_sub_eng.pop_events()
    )
    diff = sum(1 for x, y in zip(py_out, cy_sub, strict=True) if x != y)
    print(f"                identical verdicts, counters and events on those {n_py:,}: {same} ({diff} verdicts differ)")

    # 3. scapy decode + dict lookup
    n_sc = min(a.scapy_subset, fr.n)
    sc_pps = n_sc / scapy_baseline(fr, n_sc)
    print(f"scapy baseline  {sc_pps:>14,.0f} pkt/s  (first {n_sc:,} packets: Ether() decode + 5-tuple dict lookup)")

    # 4. the replay path, file in -> file out, compiled engine. Output goes to tmpfs when there is
    # one: the input is in the page cache by now, and the VM's disk write speed is not the engine's.
    del fr  # the replay reads the file itself
    tmp = Path(tempfile.mkdtemp(prefix="lgwan-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else out_dir))
    fwd, ev = tmp / "forwarded.pcap", tmp / "events.jsonl"
    try:
        s = min((replay(path, loaded, fwd, ev) for _ in range(2)), key=lambda x: x.seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rp_pps = s.packets / s.seconds
    print(
        f"replay (cython) {rp_pps:>14,.0f} pkt/s  ({s.packets:,} packets, best of 2: {s.seconds:.2f} s, "
        f"{s.bytes / s.seconds / 1e6:,.0f} MB/s; engine: {s.implementation}; forwarded {s.forwarded:,}, "
        f"events {s.events:,}; output to {tmp.parent}, removed)"
    )

    ratio_py, ratio_sc = cy_pps / py_pps, cy_pps / sc_pps
    print()
    print(
        f"cython / python: {ratio_py:6.1f}x    cython / scapy: {ratio_sc:6.1f}x    "
        f"replay / python: {rp_pps / py_pps:.1f}x"
    )
    goals = [
        (f"replay path >= {GOAL_REPLAY_PPS:,} pkt/s", rp_pps >= GOAL_REPLAY_PPS, f"{rp_pps:,.0f}"),
        (f"cython >= {GOAL_RATIO:.0f}x python", ratio_py >= GOAL_RATIO, f"{ratio_py:.1f}x"),
        ("engines agree", same, str(same)),
        ("replay used the compiled engine", s.implementation == "cython", s.implementation),
    ]
    for name, ok, val in goals:
        print(f"  [{'MET' if ok else 'NOT MET':7}] {name}: {val}")
    return 0 if all(ok for _, ok, _ in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
