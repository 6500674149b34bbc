"""Build, run and tear down the namespace lab; see docs/lab.md.

Layout: one namespace per host (`<prefix><host>`, prefix `lgw-`), plus `<prefix>gateway`. In the
gateway namespace each zone is a Linux bridge named after the zone (`mynumber`, `lgwan`,
`lgwan-wan`, `internet`) holding the address .254; every host's `eth0` is a veth whose peer
(`<zone>-<octet>`) is a port of its zone's bridge. So the gateway's leg in a zone is the bridge,
packets between zones are routed (iptables FORWARD sees them, with `-i`/`-o` = the zone name), and
packets inside a zone are switched by the bridge without reaching FORWARD (bridge-nf-call-* is
set to 0 in the gateway namespace: a real access switch does not hand same-zone traffic to the
gateway either).

Everything `up` creates is written to `<state-dir>/lab.json` *before* it is created, so `down`
undoes a partial `up` too. `down` is idempotent.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib
import importlib.util
import json
import mailbox
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.lab import netns
from gateway.lab.netns import LabError
from gateway.lab.topology import GATEWAY, HOSTS, HOSTS_BY_NAME, ZONES, address_of

DEFAULT_STATE_DIR = Path(os.environ.get("LGWAN_LAB_STATE_DIR", "/run/lgwan-gateway-lab"))
DEFAULT_PREFIX = os.environ.get("LGWAN_LAB_PREFIX", "lgw-")
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "lab.toml"
LOCK_DIR = Path("/run/lock")

READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 3.0
# What `up` writes under the state dir and wipes at the next `up` (never anything else there).
_RUN_ARTIFACTS = ("events.jsonl", "maildirs", "quarantine", "logs", "ready", "notify.sock", "lab.json")


class DaemonUnavailable(LabError):
    """`lgwan-gateway run` does not exist in this tree yet."""


def daemon_available() -> bool:
    """True when gateway/daemon.py exists and the CLI has its `run` subcommand."""
    if importlib.util.find_spec("gateway.daemon") is None:
        return False
    cli = importlib.import_module("gateway.cli")  # imported late: the CLI imports the lab
    for action in cli.build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return "run" in action.choices
    return False


@dataclass
class ProcessRecord:
    """A process the lab started; start_time (from /proc/PID/stat) guards against PID reuse."""

    name: str
    pid: int
    start_time: int
    argv: list[str]
    log: str

    def alive(self) -> bool:
        return _start_time(self.pid) == self.start_time


@dataclass
class LabState:
    prefix: str
    config: str | None = None
    daemon: bool = False
    isolate_zones: bool = False
    namespaces: list[str] = field(default_factory=list)
    processes: dict[str, ProcessRecord] = field(default_factory=dict)
    complete: bool = False  # `up` finished

    def to_json(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "config": self.config,
            "daemon": self.daemon,
            "isolate_zones": self.isolate_zones,
            "namespaces": self.namespaces,
            "processes": {k: vars(v) for k, v in self.processes.items()},
            "complete": self.complete,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabState:
        return cls(
            prefix=data["prefix"],
            config=data.get("config"),
            daemon=bool(data.get("daemon")),
            isolate_zones=bool(data.get("isolate_zones")),
            namespaces=list(data.get("namespaces", [])),
            processes={k: ProcessRecord(**v) for k, v in data.get("processes", {}).items()},
            complete=bool(data.get("complete")),
        )


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # field 22 (starttime); split after the ")" that ends the command name, which may hold spaces
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has exited: it only waits to be reaped
        return None
    return int(fields[19])


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Lab:
    """The lab on this machine, identified by its namespace prefix and its state dir."""

    def __init__(
        self,
        state_dir: Path | str = DEFAULT_STATE_DIR,
        *,
        prefix: str = DEFAULT_PREFIX,
        config: Path | str = DEFAULT_CONFIG,
        python: str = sys.executable,
        daemon_args: Sequence[str] = (),
        isolate_zones: bool = False,
    ) -> None:
        self.isolate_zones = isolate_zones
        self.state_dir = Path(state_dir).resolve()
        self.prefix = prefix
        self.config = Path(config).resolve()
        self.python = python
        self.daemon_args = list(daemon_args)
        self.daemon_command = [python, "-m", "gateway", "run"]  # + --config/--events/daemon_args
        self.state = LabState(prefix=prefix)
        self.touched = False  # this object's `up` changed something: only then may a failed up be undone

    # --- names and paths ------------------------------------------------------------------------
    def namespace(self, host: str) -> str:
        if host != GATEWAY and host not in HOSTS_BY_NAME:
            raise LabError(f"unknown lab host {host!r} (hosts: {', '.join(sorted([*HOSTS_BY_NAME, GATEWAY]))})")
        return self.prefix + host

    def all_namespaces(self) -> list[str]:
        return [self.namespace(GATEWAY), *(self.namespace(h.name) for h in HOSTS)]

    @property
    def events_path(self) -> Path:
        return self.state_dir / "events.jsonl"

    @property
    def quarantine_dir(self) -> Path:
        return self.state_dir / "quarantine"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "lab.json"

    def maildir(self, host: str) -> Path:
        return self.state_dir / "maildirs" / host

    def maildirs(self) -> dict[str, Path]:
        return {h.name: self.maildir(h.name) for h in HOSTS if h.smtp}

    # --- state file -----------------------------------------------------------------------------
    def _save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state.to_json(), indent=1) + "\n")
        os.replace(tmp, self.state_file)

    def load(self) -> LabState | None:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise LabError(f"{self.state_file}: unreadable lab state ({e})") from e
        self.state = LabState.from_json(data)
        return self.state

    @contextlib.contextmanager
    def locked(self, wait_s: float = 0.0) -> Iterator[None]:
        """Hold the lab's lock (one `up`/`down`/running_lab per prefix at a time on this machine)."""
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        path = LOCK_DIR / f"lgwan-gateway-lab.{self.prefix}lock"
        with path.open("a+") as f:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LabError(f"another lab operation holds {path} (a test run or `lab up`?)") from None
                    time.sleep(0.2)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # --- up -------------------------------------------------------------------------------------
    def up(self, *, daemon: bool = True) -> None:
        """Build the topology and start the servers (and the daemon).

        Checks come first and change nothing. After them (`self.touched`), an error leaves the partial
        lab in place for `down`, which the CLI and running_lab call.
        """
        if daemon and not daemon_available():
            raise DaemonUnavailable(
                "the daemon (`lgwan-gateway run`, gateway/daemon.py) is not in this tree yet: "
                "use `lgwan-gateway lab up --no-daemon`"
            )
        if daemon and not self.config.is_file():
            raise LabError(f"policy file {self.config} not found (--config)")
        present = [n for n in self.all_namespaces() if netns.exists(n)]
        if present:
            raise LabError(f"a lab is already up ({', '.join(present)}): run `lgwan-gateway lab down` first")
        self.touched = True
        previous = self.load()
        if previous and (previous.processes or previous.namespaces) and not previous.complete:
            # a failed up whose namespaces are gone may still have live servers: end them first
            self._stop_processes(previous)
        self._wipe_artifacts()
        for d in (self.logs_dir, self.quarantine_dir, self.state_dir / "ready"):
            d.mkdir(parents=True, exist_ok=True)
        for d in self.maildirs().values():
            d.parent.mkdir(parents=True, exist_ok=True)
            mailbox.Maildir(d, create=True)  # tmp/ new/ cur/, so the paths status prints exist at once
        self.state = LabState(
            prefix=self.prefix, config=str(self.config), daemon=daemon, isolate_zones=self.isolate_zones
        )
        self._save()
        self._build_topology()
        self._start_hosts()
        if daemon:
            self._start_daemon()
        self.state.complete = True
        self._save()

    def _wipe_artifacts(self) -> None:
        for name in _RUN_ARTIFACTS:
            p = self.state_dir / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()

    def _build_topology(self) -> None:
        gw = self.namespace(GATEWAY)
        for ns in self.all_namespaces():
            self.state.namespaces.append(ns)  # write-ahead: `down` deletes it even if add fails midway
            self._save()
            netns.add(ns)
        # veths are created directly inside their namespaces, so no name ever exists in the root one
        netns.ip_batch(
            [
                f"link add eth0 netns {self.namespace(h.name)} type veth peer name {h.bridge_port} netns {gw}"
                for h in HOSTS
            ]
        )
        cmds = ["link set lo up"]
        for z in ZONES:
            # STP off: ports forward at once (no 15 s listening/learning delay)
            cmds += [
                f"link add name {z.name} type bridge stp_state 0",
                f"addr add {z.gateway_address}/24 dev {z.name}",
                f"link set {z.name} up",
            ]
        cmds += [f"link set {h.bridge_port} master {h.zone.name} up" for h in HOSTS]
        if self.isolate_zones:
            # private VLAN: isolated ports cannot reach each other, only the bridge (the gateway)
            cmds += [f"link set {h.bridge_port} type bridge_slave isolated on" for h in HOSTS]
        netns.ip_batch(cmds, namespace=gw)
        netns.sysctl(gw, {"net.ipv4.ip_forward": "1"})
        if self.isolate_zones:
            # the gateway answers ARP for same-zone hosts and routes their traffic back out of the
            # same bridge (through FORWARD, where the zone's intra_zone policy applies); no
            # redirects, which would tell the hosts to try the direct path the switch forbids
            for z in ZONES:
                conf = f"net.ipv4.conf.{z.name}"
                netns.sysctl(
                    gw,
                    {
                        f"{conf}.proxy_arp": "1",
                        f"{conf}.proxy_arp_pvlan": "1",
                        f"{conf}.send_redirects": "0",
                        # proxy ARP answers after a random 0-0.8 s by default: a probe would time out
                        f"net.ipv4.neigh.{z.name}.proxy_delay": "0",
                    },
                )
            netns.sysctl(gw, {"net.ipv4.conf.all.send_redirects": "0"})
        with contextlib.suppress(FileNotFoundError):  # only with br_netfilter; per namespace since 5.3
            netns.sysctl(
                gw,
                {
                    "net.bridge.bridge-nf-call-iptables": "0",
                    "net.bridge.bridge-nf-call-ip6tables": "0",
                    "net.bridge.bridge-nf-call-arptables": "0",
                },
            )
        for h in HOSTS:
            netns.ip_batch(
                [
                    "link set lo up",
                    f"addr add {h.address}/24 dev eth0",
                    "link set eth0 up",
                    f"route add default via {h.zone.gateway_address}",
                ],
                namespace=self.namespace(h.name),
            )

    def _spawn(self, name: str, namespace: str, argv: list[str], env: dict[str, str] | None = None) -> ProcessRecord:
        log = self.logs_dir / f"{name}.log"
        full = netns.exec_argv(namespace, argv)
        with log.open("ab") as out:
            # own session: a Ctrl-C at the terminal that ran `lab up` does not reach the servers
            proc = subprocess.Popen(
                full, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        rec = ProcessRecord(name, proc.pid, _start_time(proc.pid) or 0, full, str(log))
        self.state.processes[name] = rec
        self._save()
        return rec

    def _start_hosts(self) -> None:
        ready: dict[str, tuple[ProcessRecord, Path]] = {}
        for h in HOSTS:
            ready_file = self.state_dir / "ready" / h.name
            argv = [self.python, "-m", "gateway.labhosts", "--name", h.name, "--ready-file", str(ready_file)]
            argv += ["--tcp", ",".join(map(str, h.tcp)), "--udp", ",".join(map(str, h.udp))]
            if h.smtp:
                argv += ["--smtp", ",".join(map(str, h.smtp)), "--maildir", str(self.maildir(h.name))]
            ready[h.name] = (self._spawn(h.name, self.namespace(h.name), argv), ready_file)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while ready:
            for name, (rec, ready_file) in list(ready.items()):
                if ready_file.exists():
                    del ready[name]
                elif not rec.alive():
                    raise LabError(f"server on {name} exited during start:\n{_tail(Path(rec.log))}")
            if ready and time.monotonic() > deadline:
                raise LabError(f"servers not ready after {READY_TIMEOUT_S:.0f} s: {', '.join(sorted(ready))}")
            time.sleep(0.02)

    def restart_daemon(self) -> int:
        """Start the daemon again in the lab's gateway namespace, as systemd's Restart= would: the
        running one (if any) is stopped first (SIGTERM, then SIGKILL). Returns once the new daemon
        sent READY=1 (its queues bound, its rules in); the new PID is recorded in lab.json, so `down`
        ends it. Also starts a daemon in a lab brought up without one."""
        state = self.load() or self.state
        if not state.complete or not netns.exists(self.namespace(GATEWAY)):
            raise LabError(f"no lab is up with prefix {self.prefix!r}: run `lgwan-gateway lab up` first")
        if not self.config.is_file():
            raise LabError(f"policy file {self.config} not found")
        old = state.processes.get("daemon")
        if old is not None and old.alive():
            self._stop_processes(LabState(prefix=self.prefix, processes={"daemon": old}))
        self.state = state
        self.state.daemon = True
        self._start_daemon()
        self._save()
        return self.state.processes["daemon"].pid

    def _start_daemon(self) -> None:
        # The daemon speaks sd_notify (Type=notify): play systemd's NOTIFY_SOCKET and wait for READY=1,
        # which it sends once its queue is bound and its rules are in.
        sock_path = self.state_dir / "notify.sock"
        sock_path.unlink(missing_ok=True)  # left by an earlier daemon start
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(sock_path))
            # the quarantine the lab reports (`status`) is the one the daemon writes to, not the
            # machine's /var/lib/lgwan-gateway/quarantine shared by every lab and test run
            env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), LGWAN_GATEWAY_QUARANTINE_DIR=str(self.quarantine_dir))
            argv = [*self.daemon_command, "--config", str(self.config)]
            argv += ["--events", str(self.events_path), *self.daemon_args]
            rec = self._spawn("daemon", self.namespace(GATEWAY), argv, env=env)
            deadline = time.monotonic() + READY_TIMEOUT_S
            sock.settimeout(0.1)
            while True:
                try:
                    msg = sock.recv(4096).decode(errors="replace")
                except TimeoutError:
                    msg = ""
                if "READY=1" in msg.splitlines():
                    return
                if not rec.alive():
                    raise LabError(f"daemon exited during start:\n{_tail(Path(rec.log))}")
                if time.monotonic() > deadline:
                    raise LabError(f"daemon sent no READY=1 within {READY_TIMEOUT_S:.0f} s; log: {rec.log}")

    # --- down -----------------------------------------------------------------------------------
    def down(self) -> list[str]:
        """Stop every process the lab started and delete its namespaces. Returns warnings."""
        state = self.load() or LabState(prefix=self.prefix)
        self._stop_processes(state)
        warnings = []
        # ours by name even without a state file (it may be the part that failed)
        for ns in dict.fromkeys([*state.namespaces, *self.all_namespaces()]):
            left = netns.pids(ns)
            if left:
                warnings.append(f"{ns}: processes not started by the lab still inside: {left}")
            netns.delete(ns)
        state.processes.clear()
        state.namespaces.clear()
        state.complete = False
        self.state = state
        if self.state_file.exists():
            self._save()
        return warnings

    @staticmethod
    def _stop_processes(state: LabState) -> None:
        live = [r for r in state.processes.values() if r.alive()]
        for r in live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(r.pid, signal.SIGTERM)  # its own session: pid == pgid (see _spawn)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(r.alive() for r in live) and time.monotonic() < deadline:
            _reap()
            time.sleep(0.02)
        for r in live:
            if r.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(r.pid, signal.SIGKILL)
        _reap()

    # --- status and exec ------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        state = self.load() or LabState(prefix=self.prefix)
        hosts: dict[str, dict[str, Any]] = {}
        for h in HOSTS:
            ns = self.namespace(h.name)
            hosts[h.name] = {"namespace": ns, "address": h.address, "zone": h.zone.name, "present": netns.exists(ns)}
        gw = self.namespace(GATEWAY)
        hosts[GATEWAY] = {
            "namespace": gw,
            "address": address_of(GATEWAY),
            "addresses": {z.name: z.gateway_address for z in ZONES},
            "present": netns.exists(gw),
        }
        d = state.processes.get("daemon")
        servers = {n: {"pid": r.pid, "running": r.alive()} for n, r in state.processes.items() if n != "daemon"}
        return {
            "up": state.complete and all(v["present"] for v in hosts.values()),
            "state_dir": str(self.state_dir),
            "config": state.config,
            "isolate_zones": state.isolate_zones,
            "hosts": hosts,
            "daemon": {"pid": d.pid if d else None, "running": bool(d and d.alive()), "log": d.log if d else None},
            "servers": servers,
            "paths": {
                "events": str(self.events_path),
                "quarantine": str(self.quarantine_dir),
                "maildirs": {k: str(v) for k, v in self.maildirs().items()},
                "logs": str(self.logs_dir),
            },
        }

    def exec(self, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run a command inside a host's namespace (kwargs go to subprocess.run)."""
        ns = self.namespace(host)
        if not netns.exists(ns):
            raise LabError(f"namespace {ns} does not exist: is the lab up?")
        kwargs.setdefault("check", False)
        return subprocess.run(netns.exec_argv(ns, argv), **kwargs)


def _reap() -> None:
    """Collect exited children of this process (servers started by this `up`), so they stop being zombies."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


@contextlib.contextmanager
def running_lab(
    config: Path | str = DEFAULT_CONFIG,
    daemon: bool = True,
    state_dir: Path | str = DEFAULT_STATE_DIR,
    *,
    prefix: str = DEFAULT_PREFIX,
    daemon_args: Sequence[str] = (),
    isolate_zones: bool = False,
    lock_wait_s: float = 300.0,
    fresh: bool = False,
) -> Iterator[Lab]:
    """Bring the lab up, yield it, and always tear it down (also when `up` fails halfway).

    Holds the lab lock throughout, so concurrent test runs with the same prefix wait for each other.
    `fresh`: first `down` whatever a killed earlier run left under this prefix and state dir,
    under the lock (a `down` outside it would tear down a lab another run has up right now).
    """
    lab = Lab(state_dir, prefix=prefix, config=config, daemon_args=daemon_args, isolate_zones=isolate_zones)
    with lab.locked(wait_s=lock_wait_s):
        try:
            if fresh:
                lab.down()
            lab.up(daemon=daemon)
            yield lab
        finally:
            if lab.touched:  # not after "already up": that lab is someone else's
                lab.down()
