"""End to end in the namespace lab with the daemon: bulk traffic, live vs replay, killing the daemon.

- iperf3 through an allowed flow moves data, and the daemon's counters show the kernel passed it
  (offload): only the handshakes reach the queue.
- The events of a live run equal the events of replaying a capture of that run. The capture is
  taken in the gateway namespace on each zone bridge, inbound only (`tcpdump -Q in`), so every
  forwarded packet is captured exactly once, where the daemon sees it. "Equal" is a multiset of all
  events (flow, drop, anomaly, and the mail inspector's smtp/file events) compared on every field
  except `timestamp`: the daemon stamps a packet with the batch clock (or the kernel's NFQA_TIMESTAMP),
  tcpdump with the capture clock. Flow ids are equal too: they hash the flow key and a tag of the
  first packet's bytes (TCP: the ISN), no clock (docs/operations.md, 'Live events and replay').
- Killing the daemon (SIGKILL) in the lab blocks new flows in every zone pair; offloaded
  connections keep passing until a daemon runs again (documented in docs/operations.md); a new
  daemon in the same gateway namespace (what systemd's Restart=on-failure does) restores new flows
  and cuts the connections the dead one had offloaded. tests/test_daemon.py covers SIGKILL on a
  three-namespace topology; this is the lab, across its zones, with the restart.

Each test brings up its own lab (its own prefix) and tears it down, also on failure.
"""

from __future__ import annotations

import collections
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.lab import Lab, netns, run_probes, running_lab
from gateway.lab.core import DEFAULT_CONFIG, daemon_available
from gateway.lab.matrix import ACCEPT, cases_for, run_matrix, send_test_mail
from gateway.lab.topology import GATEWAY, ZONES, address_of

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _can_run() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables)"
    missing = [t for t in ("ip", "iptables", "iperf3", "tcpdump") if not shutil.which(t)]
    if missing:
        return f"needs {', '.join(missing)} (scripts/setup.sh installs them)"
    if not daemon_available():
        return "the daemon (`lgwan-gateway run`) is not in this tree"
    return None


_skip = _can_run()
if _skip and os.environ.get("CI"):
    raise RuntimeError(f"live end-to-end tests cannot run in CI: {_skip}")
if _skip:
    pytestmark.append(pytest.mark.skip(reason=_skip))

IPERF_PORT = 5201
CLOCK_FIELDS = ("timestamp",)  # the field that depends on who read the clock


def _lab(prefix: str) -> Any:
    # a fixed state dir per prefix: a run killed before its teardown left its PIDs there, and this
    # `down` ends those processes, not only the namespaces
    state = Path(tempfile.gettempdir()) / f"lgwan-gateway-test-lab.{prefix}"
    return running_lab(
        config=DEFAULT_CONFIG, daemon=True, state_dir=state, prefix=prefix, isolate_zones=True, fresh=True
    )


def _metrics(lab: Lab) -> dict[str, float]:
    """The daemon's metrics (`name{labels}` -> value) after its workers' next report (every 0.5 s)."""
    from gateway.io.metrics import fetch

    time.sleep(0.7)
    with netns.entered(lab.namespace(GATEWAY)):  # the endpoint listens on the gateway's loopback
        text = fetch()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def _sum(m: dict[str, float], name: str) -> float:
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


def _spawn(lab: Lab, host: str, argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        netns.exec_argv(lab.namespace(host), argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait_line(proc: subprocess.Popen[str], needle: str, timeout: float = 10.0) -> str:
    """Read the process's output until it contains needle; fail after timeout (never hang).

    Raw os.read on the pipe: a buffered readline() could pull both lines into its buffer and then
    select() would wait for data that already arrived.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0 and select.select([fd], [], [], left)[0]:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        seen += chunk
        if needle.encode() in seen:
            return seen.decode(errors="replace")
    raise AssertionError(f"no {needle!r} from {proc.args!r}: {seen.decode(errors='replace')}")


def _end(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> str:
    """Stop a process we started (by its own PID) and return its output."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


# --- iperf3 -------------------------------------------------------------------------------------


def test_iperf3_through_an_allowed_flow_is_offloaded() -> None:
    # lgwan-terminal -> lgwan-file: allowed by the lgwan zone's intra_zone default; with isolated
    # zones it is routed through the gateway. (Every cross-zone allowed port already has a lab server.)
    with _lab("lgwp-") as lab:
        # --forceflush: iperf3 buffers its "Server listening" line when stdout is a pipe
        server = _spawn(lab, "lgwan-file", ["iperf3", "-s", "-1", "--forceflush", "-p", str(IPERF_PORT)])
        try:
            _wait_line(server, "Server listening")
            before = _metrics(lab)
            argv = ["iperf3", "-c", address_of("lgwan-file"), "-p", str(IPERF_PORT), "-t", "2", "-J"]
            run = lab.exec("lgwan-terminal", argv, capture_output=True, text=True, timeout=30)
            assert run.returncode == 0, run.stdout + run.stderr
            result = json.loads(run.stdout)
            received = result["end"]["sum_received"]["bytes"]
            assert received > 0
            after = _metrics(lab)
        finally:
            _end(server)
        queued = _sum(after, "lgwan_worker_packets_total") - _sum(before, "lgwan_worker_packets_total")
        offloaded = after["lgwan_offloaded_packets_total"] - before["lgwan_offloaded_packets_total"]
        bits = result["end"]["sum_received"]["bits_per_second"]
        print(f"iperf3: {received} bytes, {bits / 1e9:.1f} Gbit/s; queued {queued:.0f}, offloaded {offloaded:.0f}")
        # two connections (control + data): their handshakes and closes reach the queue, the rest not
        assert queued < 100
        assert offloaded > 20 * queued
        assert after["lgwan_offload_marked_packets_total"] > before["lgwan_offload_marked_packets_total"]
        assert after['lgwan_daemon_drops_total{cause="truncated"}'] == 0


# --- live events vs replay of a capture ---------------------------------------------------------


@dataclass
class LiveRun:
    live: list[dict[str, Any]]  # events the daemon wrote
    replayed: list[dict[str, Any]]  # events of `lgwan-gateway replay` of the capture
    frames: int  # frames in the merged capture


def _capture_filter() -> str:
    # IPv4 between hosts only: the gateway's own addresses (ARP, its replies) never reach FORWARD,
    # and IPv6 here is link-local neighbour discovery, which is not forwarded either
    own = " or ".join(f"host {z.gateway_address}" for z in ZONES)
    return f"ip and not ({own}) and not broadcast and not multicast"


def _start_capture(lab: Lab, out_dir: Path) -> list[tuple[subprocess.Popen[str], Path]]:
    caps = []
    for z in ZONES:
        path = out_dir / f"in-{z.name}.pcap"
        # -Q in: each forwarded packet once, on the leg it arrives on; -p: a promiscuous bridge would
        # also hand up frames switched between its ports; -U: written packet by packet
        argv = ["tcpdump", "-n", "-p", "-U", "-Q", "in", "-i", z.name, "-w", str(path), _capture_filter()]
        caps.append((_spawn(lab, GATEWAY, argv), path))
    for proc, _ in caps:
        _wait_line(proc, "listening on")  # tcpdump says so once the capture is live
    return caps


def _merge(paths: list[Path], out: Path) -> int:
    """One Ethernet pcap of the legs' captures in timestamp order (stable: leg order on ties)."""
    from gateway.fastpath.common import LINKTYPE_ETHERNET
    from gateway.io.pcap import PcapWriter, iter_capture

    frames: list[tuple[int, int, bytes, int]] = []
    for leg, path in enumerate(paths):
        for batch in iter_capture(path):
            assert batch.linktype == LINKTYPE_ETHERNET
            frames.extend((batch.ts_us[i], leg, batch.frame(i), batch.orig_lengths[i]) for i in range(len(batch)))
    frames.sort(key=lambda f: (f[0], f[1]))
    with out.open("wb") as f:
        w = PcapWriter(f, LINKTYPE_ETHERNET)
        for ts, _, frame, orig in frames:
            w.write(ts, frame, orig)
    return len(frames)


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _store_ids_masked(v: Any) -> Any:
    """Quarantine ids are assigned by each run's store (clock + random): compare their presence."""
    if isinstance(v, dict):
        masked: dict[str, Callable[[Any], Any]] = {
            "quarantine_id": lambda x: "<id>",
            "quarantine_ids": lambda x: ["<id>"] * len(x),
        }
        return {k: masked.get(k, _store_ids_masked)(x) for k, x in v.items()}
    return v


def _key(ev: dict[str, Any], without: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple(
        sorted((k, json.dumps(_store_ids_masked(v), ensure_ascii=False)) for k, v in ev.items() if k not in without)
    )


def _settled(path: Path, quiet_s: float = 1.0, limit_s: float = 10.0) -> None:
    """Wait until the daemon's event log has not grown for quiet_s."""
    size, since, deadline = -1, time.monotonic(), time.monotonic() + limit_s
    while time.monotonic() < deadline:
        now = path.stat().st_size if path.exists() else 0
        if now != size:
            size, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.1)


@pytest.fixture(scope="module")
def live_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRun]:
    tmp = tmp_path_factory.mktemp("live")
    with _lab("lgwr-") as lab:
        assert not lab.events_path.exists() or lab.events_path.stat().st_size == 0  # a quiet lab
        caps = _start_capture(lab, tmp)
        try:
            run_matrix(lab, cases_for(True), timeout=1.0)  # every zone pair, TCP, UDP, ICMP
            send_test_mail(lab)  # SMTP with an attachment (inspected: the daemon decides it too)
            time.sleep(1.0)  # late retransmissions and connection closes
            _settled(lab.events_path)
        finally:
            outputs = [_end(proc, signal.SIGINT) for proc, _ in caps]
        live = _events(lab.events_path)
    merged = tmp / "merged.pcap"
    frames = _merge([p for _, p in caps], merged)
    assert frames > 0, outputs
    replayed_path = tmp / "replayed.jsonl"
    argv = [sys.executable, "-m", "gateway", "replay", str(merged), "--config", str(DEFAULT_CONFIG)]
    argv += ["--events", str(replayed_path), "--out", str(tmp / "forwarded.pcap"), "--quiet"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    yield LiveRun(live, _events(replayed_path), frames)


def test_live_events_equal_replay_of_the_capture(live_run: LiveRun) -> None:
    live = collections.Counter(_key(e, CLOCK_FIELDS) for e in live_run.live)
    replayed = collections.Counter(_key(e, CLOCK_FIELDS) for e in live_run.replayed)
    only_live = [dict(k) for k in (live - replayed).elements()]
    only_replay = [dict(k) for k in (replayed - live).elements()]
    assert not only_live and not only_replay, f"live only: {only_live}\nreplay only: {only_replay}"
    print(f"{len(live_run.live)} live events = {len(live_run.replayed)} replayed, {live_run.frames} frames captured")
    # the run was the whole matrix: one flow event per probed flow at least, every action present
    actions = {e["action"] for e in live_run.live if e["event_type"] == "flow"}
    assert actions == {"accept", "drop", "inspect"}
    assert sum(1 for e in live_run.live if e["event_type"] == "flow") >= len(cases_for(True))


def test_live_flow_ids_equal_replay_of_the_capture(live_run: LiveRun) -> None:
    # flow ids are the join key between flow, smtp and file events: the same flow has the same id
    # live and replayed, and distinct flows have distinct ids
    def ids(events: list[dict[str, Any]]) -> dict[int, set[tuple[Any, ...]]]:
        out: dict[int, set[tuple[Any, ...]]] = collections.defaultdict(set)
        for e in events:
            if "flow_id" in e:
                where = (e["src_ip"], e.get("src_port"), e["dest_ip"], e.get("dest_port"))
                out[e["flow_id"]].add((e["event_type"], *where))
        return out

    live, replayed = ids(live_run.live), ids(live_run.replayed)
    assert live == replayed
    flows = [e for e in live_run.live if e["event_type"] == "flow"]
    assert len({e["flow_id"] for e in flows}) == len(flows)
    assert {e["event_type"] for e in live_run.live if "flow_id" in e} >= {"flow", "smtp"}


# --- killing the daemon -------------------------------------------------------------------------


def _allowed() -> list[Any]:
    return [c.probe for c in cases_for(True) if c.action == ACCEPT]


def _echo(s: socket.socket, data: bytes) -> bool:
    try:
        s.sendall(data)
        return s.recv(100) == data
    except OSError:
        return False


def test_killed_daemon_blocks_the_lab_and_a_new_one_restores_it() -> None:
    with _lab("lgwk-") as lab:
        probes = _allowed()
        assert all(r.passed for r in run_probes(lab.prefix, probes)), "allowed flows must pass first"
        # an established connection, offloaded to the kernel after its handshake
        held = netns.socket_in(lab.namespace("lgwan-terminal"))
        try:
            held.settimeout(1.5)
            held.connect((address_of("lgwan-asp"), 443))
            assert held.recv(100).startswith(b"lgw-lab lgwan-asp")
            assert _echo(held, b"before")

            pid = lab.status()["daemon"]["pid"]
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while netns.pids(lab.namespace(GATEWAY)) and time.monotonic() < deadline:
                time.sleep(0.05)  # the workers die with the supervisor (PR_SET_PDEATHSIG)
            assert netns.pids(lab.namespace(GATEWAY)) == []
            assert not lab.status()["daemon"]["running"]

            # fail closed: no new flow passes in any zone pair
            results = run_probes(lab.prefix, probes, timeout=1.0)
            assert [r.probe for r in results if r.passed] == []
            # documented: the offload ACCEPT rule stays after a crash, so offloaded connections pass
            assert _echo(held, b"offloaded")

            # a new daemon in the same gateway namespace (systemd's Restart=on-failure does this): the
            # lab's own start path (NOTIFY_SOCKET, READY=1, recorded in lab.json so `down` ends it)
            new_pid = lab.restart_daemon()
            daemon = lab.status()["daemon"]
            assert daemon["running"] and daemon["pid"] == new_pid != pid
            results = run_probes(lab.prefix, probes, timeout=1.0)
            assert [r.probe for r in results if not r.passed] == []
            # it moved to a new mark generation and does not know the old connection: cut (no_flow)
            assert not _echo(held, b"after restart")
        finally:
            held.close()
        drops = [e for e in _events(lab.events_path) if e.get("reason") == "no_flow"]
        assert any(e.get("dest_port") == 443 or e.get("src_port") == 443 for e in drops)
