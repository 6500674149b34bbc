"""The live daemon in network namespaces: client -- gateway (daemon) -- server, real TCP.

Every test builds its own namespaces `lgw-t-<id>-{c,g,s}` (198.18.0.0/15 addresses only) and
removes them, and kills what it started, even on failure. Root only; in CI these never skip.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _can_run() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables)"
    if not shutil.which("ip") or not shutil.which("iptables-restore"):
        return "needs iproute2 and iptables"
    try:
        import gateway._nfq  # noqa: F401
    except ImportError:
        return "gateway._nfq (the NFQUEUE binding) is not built"
    return None


_skip = _can_run()
if _skip and os.environ.get("CI"):
    raise RuntimeError(f"daemon tests cannot run in CI: {_skip}")
if _skip:
    pytestmark.append(pytest.mark.skip(reason=_skip))

CLIENT = "198.18.1.10"
SERVER = "198.18.2.20"
ALLOWED = 5001
OTHER = 5002  # open on the server, not allowed by the policy

POLICY = """
[gateway]
name = "test"
fail_mode = "closed"

[[zones]]
name = "clients"
tier = "lgwan"
networks = ["198.18.1.0/24"]

[[zones]]
name = "servers"
tier = "lgwan"
networks = ["198.18.2.0/24"]

[[rules]]
id = "clients-to-servers"
from = "clients"
to = "servers"
proto = "tcp"
dst_ports = [{port}]
action = "{action}"
"""

# A server for the tests: echo on every port given; a connection starting with b"SINK" reads until
# EOF and answers "<bytes> <sha256>".
SERVER_CODE = r"""
import hashlib, socket, sys, threading
def handle(c):
    with c:
        first = c.recv(65536)
        if first.startswith(b"SINK"):
            h = hashlib.sha256(); n = 0; data = first[4:]
            while data:
                h.update(data); n += len(data); data = c.recv(1 << 20)
            c.sendall(f"{n} {h.hexdigest()}".encode())
            return
        data = first
        while data:
            c.sendall(data); data = c.recv(65536)
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(128)
    while True:
        c, _ = s.accept(); threading.Thread(target=handle, args=(c,), daemon=True).start()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
print("listening", flush=True)
threading.Event().wait()
"""

# A client whose connection outlives a reload: connect, echo, then one echo per stdin line.
HOLD_CODE = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
s.settimeout(2)
for i, line in enumerate(sys.stdin):
    try:
        s.sendall(b"ping%d" % i)
        print("ok" if s.recv(100) == b"ping%d" % i else "bad", flush=True)
    except OSError as e:
        print("fail", type(e).__name__, flush=True)
"""


def sh(*argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


class Lab:
    """client (198.18.1.10) -- gateway (198.18.1.254 | 198.18.2.254) -- server (198.18.2.20)."""

    def __init__(self, tmp: Path, prefix: str = "lgw-t-") -> None:
        self.id = uuid.uuid4().hex[:6]
        self.c, self.g, self.s = (f"{prefix}{self.id}-{x}" for x in "cgs")
        self.tmp = tmp
        self.procs: list[subprocess.Popen[str]] = []
        self.daemon: subprocess.Popen[str] | None = None
        self.notify: socket.socket | None = None
        self.config = tmp / "policy.toml"
        self.events = tmp / "events.jsonl"
        self.log = tmp / "daemon.log"

    def up(self, client_addrs: int = 1) -> None:
        for ns in (self.c, self.g, self.s):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh(
            "ip",
            "link",
            "add",
            "lgwc" + self.id,
            "netns",
            self.c,
            "type",
            "veth",
            "peer",
            "name",
            "cli",
            "netns",
            self.g,
        )
        sh(
            "ip",
            "link",
            "add",
            "lgws" + self.id,
            "netns",
            self.s,
            "type",
            "veth",
            "peer",
            "name",
            "srv",
            "netns",
            self.g,
        )
        for ns, dev, addr, gw in (
            (self.c, "lgwc" + self.id, CLIENT, "198.18.1.254"),
            (self.s, "lgws" + self.id, SERVER, "198.18.2.254"),
        ):
            sh("ip", "-n", ns, "link", "set", dev, "name", "eth0")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", gw)
        for i in range(1, client_addrs):
            sh("ip", "-n", self.c, "addr", "add", f"198.18.1.{10 + i}/24", "dev", "eth0")
        sh("ip", "-n", self.g, "addr", "add", "198.18.1.254/24", "dev", "cli")
        sh("ip", "-n", self.g, "addr", "add", "198.18.2.254/24", "dev", "srv")
        for dev in ("cli", "srv"):
            sh("ip", "-n", self.g, "link", "set", dev, "up")
        sh("ip", "netns", "exec", self.g, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.spawn(self.s, [PY, "-c", SERVER_CODE, str(ALLOWED), str(OTHER)], wait_line="listening")

    def down(self) -> None:
        for p in [*self.procs, *([self.daemon] if self.daemon else [])]:
            if p.poll() is None:
                p.kill()
            with contextlib.suppress(Exception):
                p.wait(timeout=5)
        # workers die with their supervisor (PDEATHSIG); kill any left in the namespace anyway
        for ns in (self.c, self.g, self.s):
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", ns, check=False)
        if self.notify:
            self.notify.close()

    def spawn(self, ns: str, argv: list[str], wait_line: str | None = None, **kw: Any) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            **kw,
        )
        self.procs.append(p)
        if wait_line:
            assert p.stdout is not None
            line = p.stdout.readline()
            assert wait_line in line, line
        return p

    def write_policy(self, action: str = "allow", port: int = ALLOWED, broken: bool = False, daemon: str = "") -> None:
        text = POLICY.format(action=action, port=port)
        if broken:
            text += '\n[[rules]]\nid = "oops"\nfrom = "clients"\nto = "nowhere"\naction = "allow"\n'
        if daemon:
            text += "\n[daemon]\n" + daemon
        self.config.write_text(text)

    def start(
        self, *extra: str, workers: int | None = 1, events: bool = True, env_extra: dict[str, str] | None = None
    ) -> None:
        """workers=None / events=False: no --workers / --events option (the file's [daemon] decides)."""
        sock_path = str(self.tmp / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(sock_path)
        self.notify.settimeout(15)
        env = dict(os.environ, NOTIFY_SOCKET=sock_path, PYTHONPATH=str(ROOT), **(env_extra or {}))
        argv = [PY, "-m", "gateway", "run", "--config", str(self.config)]
        argv += ["--events", str(self.events)] if events else []
        argv += [*(["--workers", str(workers)] if workers is not None else []), "--rules-check-interval", "0.5", *extra]
        logf = open(self.log, "w")  # noqa: SIM115 - closed with the process
        self.daemon = subprocess.Popen(["ip", "netns", "exec", self.g, *argv], stdout=logf, stderr=logf, env=env)
        assert self.next_notify() == ["READY=1", "STATUS=generation 1"], self.log.read_text()

    def next_notify(self) -> list[str]:
        assert self.notify is not None
        try:
            return self.notify.recv(4096).decode().split("\n")
        except TimeoutError:
            raise AssertionError("no sd_notify message; daemon log:\n" + self.log.read_text()) from None

    def signal(self, sig: int) -> None:
        assert self.daemon is not None
        self.daemon.send_signal(sig)

    def metrics(self, port: int = 9687) -> dict[str, float]:
        """The daemon's metrics, `name{labels}` -> value (after the workers' next report)."""
        time.sleep(0.7)
        code = (
            "import urllib.request;"
            f"print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=5).read().decode())"
        )
        out = sh("ip", "netns", "exec", self.g, PY, "-c", code).stdout
        result: dict[str, float] = {}
        for line in out.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                result[key] = float(value)
        return result

    def connect(self, port: int, timeout: float = 2.0, src: str | None = None, payload: bytes = b"hello") -> bool:
        code = (
            "import socket,sys\n"
            f"s=socket.socket(); s.settimeout({timeout})\n" + (f"s.bind(({src!r},0))\n" if src else "") + "try:\n"
            f"    s.connect(({SERVER!r},{port})); s.sendall({payload!r}); got = b''\n"
            f"    while len(got) < {len(payload)}:\n"
            "        chunk = s.recv(65536)\n"
            "        if not chunk: break\n"
            "        got += chunk\n"
            f"    ok = got == {payload!r}\n"
            "except OSError: ok = False\n"
            "print('ok' if ok else 'fail')\n"
        )
        return sh("ip", "netns", "exec", self.c, PY, "-c", code, timeout=timeout + 10).stdout.strip() == "ok"

    def bulk(self, nbytes: int, timeout: float = 15) -> tuple[int, str, str]:
        """Send nbytes of pseudo-random data to the sink; (bytes the server got, its sha256, ours)."""
        code = (
            "import hashlib,os,socket\n"
            f"data = os.urandom(1 << 20) * {nbytes >> 20}\n"
            f"s = socket.create_connection(({SERVER!r}, {ALLOWED}), timeout={timeout})\n"
            "s.sendall(b'SINK' + data); s.shutdown(socket.SHUT_WR)\n"
            "print(s.recv(200).decode(), hashlib.sha256(data).hexdigest())\n"
        )
        out = sh("ip", "netns", "exec", self.c, PY, "-c", code, timeout=timeout + 10).stdout.split()
        return int(out[0]), out[1], out[2]


@pytest.fixture
def lab() -> Iterator[Lab]:
    with tempfile.TemporaryDirectory(prefix="lgw-t-") as tmp:
        lab = Lab(Path(tmp))
        try:
            lab.up()
            lab.write_policy()
            yield lab
        finally:
            lab.down()


def _stop(lab: Lab) -> int:
    assert lab.daemon is not None
    lab.signal(signal.SIGTERM)
    return lab.daemon.wait(timeout=15)


def test_allowed_passes_denied_blocked_and_events(lab: Lab) -> None:
    lab.start()
    assert lab.connect(ALLOWED)
    assert not lab.connect(OTHER, timeout=1.0)
    assert _stop(lab) == 0
    assert lab.next_notify() == ["STOPPING=1"]
    events = [json.loads(line) for line in lab.events.read_text().splitlines()]
    flows = {(e["dest_port"], e["action"], e["rule_id"]) for e in events if e["event_type"] == "flow"}
    assert (ALLOWED, "accept", "clients-to-servers") in flows
    assert (OTHER, "drop", "default-deny") in flows
    # after a clean stop the rules stay: traffic is blocked, not bypassed
    assert not lab.connect(ALLOWED, timeout=1.0)
    rules = sh("ip", "netns", "exec", lab.g, "iptables-save").stdout
    assert "-A FORWARD -j LGWAN-FWD" in rules and "--queue-bypass" not in rules
    assert "connmark" not in rules  # no offload accept while stopped


def test_sigkill_fails_closed(lab: Lab) -> None:
    lab.start()
    assert lab.connect(ALLOWED)
    lab.signal(signal.SIGKILL)
    assert lab.daemon is not None
    lab.daemon.wait(timeout=5)
    time.sleep(0.3)  # the worker dies with its parent (PR_SET_PDEATHSIG)
    assert sh("ip", "netns", "pids", lab.g).stdout.split() == []
    assert not lab.connect(ALLOWED, timeout=1.5)


def test_reload_broken_config_keeps_policy_and_notifies(lab: Lab) -> None:
    lab.start()
    assert lab.connect(ALLOWED)
    lab.write_policy(broken=True)
    lab.signal(signal.SIGHUP)
    reloading = lab.next_notify()
    assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
    assert int(reloading[1].split("=")[1]) > 0
    assert lab.next_notify()[0] == "READY=1"
    assert lab.daemon is not None and lab.daemon.poll() is None
    assert lab.connect(ALLOWED)  # old policy still in force
    m = lab.metrics()
    assert m['lgwan_reloads_total{result="failed"}'] == 1
    assert m['lgwan_reloads_total{result="ok"}'] == 0
    log = lab.log.read_text()
    assert f"{lab.config}:" in log and "reload refused" in log  # FILE:LINE: reason
    # a good reload afterwards works: READY, RELOADING, READY, ..., STOPPING in that order
    lab.write_policy()
    lab.signal(signal.SIGHUP)
    assert lab.next_notify()[0] == "RELOADING=1"
    assert lab.next_notify() == ["READY=1", "STATUS=generation 2"]
    assert _stop(lab) == 0
    assert lab.next_notify() == ["STOPPING=1"]


def test_offload_and_reload_cuts_established_flow(lab: Lab) -> None:
    lab.start()
    hold = lab.spawn(lab.c, [PY, "-c", HOLD_CODE, SERVER, str(ALLOWED)])
    assert hold.stdin is not None and hold.stdout is not None

    def echo() -> str:
        assert hold.stdin is not None and hold.stdout is not None
        hold.stdin.write("x\n")
        hold.stdin.flush()
        return hold.stdout.readline().strip()

    assert echo() == "ok"
    before = lab.metrics()['lgwan_worker_packets_total{queue="0",worker="0"}']
    for _ in range(20):
        assert echo() == "ok"
    m = lab.metrics()
    # after the handshake the flow is passed by the kernel: its packets no longer reach the queue
    assert m['lgwan_worker_packets_total{queue="0",worker="0"}'] == before
    assert m["lgwan_offloaded_packets_total"] >= 40
    assert m["lgwan_offloaded_flows"] >= 1
    # a reload that still allows keeps the connection (re-decided once, offloaded again)
    lab.signal(signal.SIGHUP)
    assert lab.next_notify()[0] == "RELOADING=1"
    assert lab.next_notify()[0] == "READY=1"
    assert echo() == "ok"
    assert echo() == "ok"
    # a reload that denies cuts the established, offloaded connection
    lab.write_policy(action="deny")
    lab.signal(signal.SIGHUP)
    assert lab.next_notify()[0] == "RELOADING=1"
    assert lab.next_notify()[0] == "READY=1"
    assert echo().startswith("fail")
    assert not lab.connect(ALLOWED, timeout=1.0)
    m = lab.metrics()
    assert m["lgwan_flows_redecided_total"] >= 2
    assert m['lgwan_reloads_total{result="ok"}'] == 2


def test_gso_packets_arrive_whole_without_offload(lab: Lab) -> None:
    # every packet through the engine: the kernel hands over whole GSO packets (up to 64 KiB)
    lab.start("--no-offload")
    got, server_sha, our_sha = lab.bulk(64 << 20)
    assert got == (64 << 20) and server_sha == our_sha
    m = lab.metrics()
    assert m["lgwan_gso_packets_total"] > 0
    assert m["lgwan_max_packet_bytes"] > 32768
    assert m['lgwan_daemon_drops_total{cause="truncated"}'] == 0
    assert m['lgwan_packets_total{reason="flow",verdict="accept"}'] > 100


def test_kernel_receive_timestamps_are_used_when_present(lab: Lab) -> None:
    # one socket asking for SO_TIMESTAMP switches the kernel's receive timestamps on, machine-wide;
    # queued packets then carry NFQA_TIMESTAMP and the daemon decides (and logs) with it
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stamper:
        stamper.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_TIMESTAMP", 29), 1)
        lab.start()
        t0 = time.time()
        assert lab.connect(ALLOWED)
        m = lab.metrics()
    assert m["lgwan_kernel_timestamped_packets_total"] >= 3  # at least the handshake
    assert _stop(lab) == 0
    (flow,) = [json.loads(line) for line in lab.events.read_text().splitlines() if '"flow"' in line]
    stamp = datetime.datetime.strptime(flow["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    assert t0 - 1 < stamp < t0 + 5  # the kernel's sec/usec, converted right


def test_rules_checker_reinstalls(lab: Lab) -> None:
    lab.start()
    sh("ip", "netns", "exec", lab.g, "iptables", "-D", "FORWARD", "-j", "LGWAN-FWD")
    sh("ip", "netns", "exec", lab.g, "iptables", "-I", "FORWARD", "1", "-j", "ACCEPT")
    sh("ip", "netns", "exec", lab.g, "iptables", "-F", "LGWAN-FWD")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        forward = [
            r for r in sh("ip", "netns", "exec", lab.g, "iptables", "-S", "FORWARD").stdout.splitlines() if "-A" in r
        ]
        if forward and forward[0] == "-A FORWARD -j LGWAN-FWD":
            break
        time.sleep(0.2)
    assert forward[0] == "-A FORWARD -j LGWAN-FWD"
    assert "NFQUEUE" in sh("ip", "netns", "exec", lab.g, "iptables", "-S", "LGWAN-FWD").stdout
    assert lab.metrics()["lgwan_rules_reinstalled_total"] >= 1
    assert not lab.connect(OTHER, timeout=1.0)  # the ACCEPT someone put first is below our jump again


@pytest.mark.parametrize("balance", ["connection", "flow", "addresses"])
def test_workers_keep_both_directions_together(tmp_path: Path, balance: str) -> None:
    lab = Lab(tmp_path)
    try:
        lab.up(client_addrs=16)
        lab.write_policy()
        # no offload: every packet of both directions goes through a queue, so a reply that reached
        # the other worker would be a no_flow drop and the connection would fail
        lab.start("--no-offload", "--balance", balance, workers=2)
        rules = sh("ip", "netns", "exec", lab.g, "iptables", "-S", "LGWAN-FWD").stdout
        assert ("-j HMARK" in rules) == (balance != "addresses"), rules  # connection: HMARK as fallback
        assert ("connlabel" in rules) == (balance == "connection"), rules
        # connection: 16 connections of ONE address pair (as the parallel sessions of one mail
        # relay) dealt in turn, 8 to each worker; flow: the hash of the ports spreads them over
        # both workers; addresses: 16 address pairs
        sources = ["198.18.1.10"] * 16 if balance != "addresses" else [f"198.18.1.{10 + i}" for i in range(16)]
        results = [lab.connect(ALLOWED, src=src, payload=b"x" * 3000) for src in sources]
        assert all(results)
        m = lab.metrics()
        per_worker = [m[f'lgwan_worker_packets_total{{queue="{i}",worker="{i}"}}'] for i in range(2)]
        assert all(n > 0 for n in per_worker), per_worker  # spread over both queues
        if balance == "connection":
            # the same connection 8 times on each: the packet counts differ by retransmissions at most
            assert min(per_worker) >= 0.8 * max(per_worker), per_worker
        assert m.get('lgwan_packets_total{reason="no_flow",verdict="drop"}', 0) == 0
        assert m["lgwan_workers"] == 2
    finally:
        lab.down()


def test_workers_from_the_config_file(tmp_path: Path) -> None:
    # `workers = 2` in the file's [daemon] section (no --workers): two processes on two queues
    lab = Lab(tmp_path, prefix="lgwd-")
    try:
        lab.up(client_addrs=4)
        lab.write_policy(daemon=f'queue = 3\nworkers = 2\nmetrics_port = 9700\nevents = "{lab.events}"\n')
        lab.start(workers=None, events=False)
        assert lab.daemon is not None
        assert len(_worker_pids(lab.daemon.pid)) == 2
        queues = sh("ip", "netns", "exec", lab.g, "cat", "/proc/net/netfilter/nfnetlink_queue").stdout
        bound = {int(f[0]): int(f[1]) for f in (line.split() for line in queues.splitlines()) if f}
        assert sorted(bound) == [3, 4] and all(bound.values()), queues  # both have a listener (port id)
        rules = sh("ip", "netns", "exec", lab.g, "iptables", "-S", "LGWAN-FWD").stdout
        # connection balancing (the default): a queue rule per worker label, the round-robin deal,
        # the flow hash (HMARK) for connections without a label, --queue-balance as the last
        # resort (it also carries the generation)
        assert '--label "65" -j NFQUEUE --queue-num 4' in rules and "--every 2 --packet 0" in rules, rules
        assert "-j HMARK" in rules and "--mark 0x2 -j NFQUEUE --queue-num 4" in rules, rules
        assert "--queue-balance 3:4" in rules
        assert all(lab.connect(ALLOWED, src=f"198.18.1.{10 + i}") for i in range(4))
        m = lab.metrics(port=9700)  # the file's metrics_port
        assert m["lgwan_workers"] == 2
        assert {k for k in m if k.startswith("lgwan_worker_packets_total")} == {
            f'lgwan_worker_packets_total{{queue="{q}",worker="{w}"}}' for w, q in ((0, 3), (1, 4))
        }
        # a reload applies a new event log path (both workers switch) and only warns about workers
        moved = tmp_path / "moved.jsonl"
        lab.write_policy(daemon=f'queue = 3\nworkers = 3\nmetrics_port = 9700\nevents = "{moved}"\n')
        lab.signal(signal.SIGHUP)
        assert lab.next_notify()[0] == "RELOADING=1"
        assert lab.next_notify() == ["READY=1", "STATUS=generation 2"]
        assert "workers 2 -> 3" in lab.log.read_text()
        assert len(_worker_pids(lab.daemon.pid)) == 2
        assert all(lab.connect(ALLOWED, src=f"198.18.1.{10 + i}") for i in range(4))
        assert lab.metrics(port=9700)["lgwan_restart_pending"] == 1
        assert len([line for line in moved.read_text().splitlines() if '"flow"' in line]) == 4
        assert len([line for line in lab.events.read_text().splitlines() if '"flow"' in line]) == 4  # before
    finally:
        lab.down()


def test_second_instance_refused_and_leaves_rules_alone(lab: Lab) -> None:
    lab.start()
    rules_before = sh("ip", "netns", "exec", lab.g, "iptables", "-S", "LGWAN-FWD").stdout
    second = sh(
        "ip", "netns", "exec", lab.g, "env", f"PYTHONPATH={ROOT}", PY, "-m", "gateway", "run",
        "--config", str(lab.config), "--metrics-port", "0", check=False,
    )  # fmt: skip
    assert second.returncode == 1
    assert "cannot bind NFQUEUE 0" in second.stderr
    assert sh("ip", "netns", "exec", lab.g, "iptables", "-S", "LGWAN-FWD").stdout == rules_before
    assert lab.connect(ALLOWED)


def _worker_pids(daemon_pid: int) -> list[int]:
    """The supervisor's worker processes. A child it forks to run iptables carries the supervisor's
    command line until its exec, so only children seen in two reads 0.2 s apart count."""

    def children() -> set[int]:
        pids = set()
        for p in Path(f"/proc/{daemon_pid}/task/{daemon_pid}/children").read_text().split():
            with contextlib.suppress(OSError):
                if b"gateway" in Path(f"/proc/{p}/cmdline").read_bytes():
                    pids.add(int(p))
        return pids

    first = children()
    time.sleep(0.2)
    return sorted(first & children())


def test_watchdog_pings_follow_worker_health(lab: Lab) -> None:
    # WatchdogSec=1s: pings every 0.5 s while the worker reports, none once it hangs
    lab.start(env_extra={"WATCHDOG_USEC": "1000000"})
    assert lab.next_notify() == ["WATCHDOG=1"]
    assert lab.next_notify() == ["WATCHDOG=1"]
    assert lab.daemon is not None and lab.notify is not None
    (worker,) = _worker_pids(lab.daemon.pid)
    os.kill(worker, signal.SIGSTOP)  # a hung packet loop
    try:
        time.sleep(1.2)
        lab.notify.settimeout(0.01)
        with contextlib.suppress(TimeoutError):
            while True:
                lab.notify.recv(4096)  # pings sent before the hang was noticed
        lab.notify.settimeout(1.5)
        with pytest.raises(TimeoutError):
            lab.notify.recv(4096)
    finally:
        os.kill(worker, signal.SIGCONT)
    lab.notify.settimeout(3)
    assert lab.next_notify() == ["WATCHDOG=1"]
    assert "withholding the watchdog ping" in lab.log.read_text()
