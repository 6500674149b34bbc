"""The namespace lab without the daemon: topology, forwarding, servers, status, exec, teardown.

Needs root (network namespaces). Uses the namespace prefix `lgwt-` so it never touches a lab a
developer has up (`lgw-`); runs of this file on one machine wait for each other (the lab lock).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from gateway.lab import (
    GATEWAY,
    HOSTS,
    ZONES,
    Lab,
    LabError,
    Probe,
    netns,
    run_probes,
    running_lab,
    smtp_client,
)

pytestmark = [
    pytest.mark.root,
    # in CI (root) these must run: never skip there, so a lost root shows up as failures
    pytest.mark.skipif(
        os.geteuid() != 0 and not os.environ.get("CI"), reason="the lab needs root (network namespaces, veths)"
    ),
]

PREFIX = "lgwt-"
LAB_NET = ipaddress.ip_network("198.18.0.0/15")
REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "gateway", "lab", *args], capture_output=True, text=True, env=env, check=check
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    state = tmp_path_factory.mktemp("lab")
    # fresh: leftovers of a killed earlier run of this file
    with running_lab(daemon=False, state_dir=state, prefix=PREFIX, fresh=True) as lab:
        yield lab
    assert not [n for n in netns.list_namespaces() if n.startswith(PREFIX)]


def test_topology(lab: Lab) -> None:
    names = netns.list_namespaces()
    for h in HOSTS:
        assert lab.namespace(h.name) in names
        assert ipaddress.ip_address(h.address) in LAB_NET
        out = netns.ip("-4", "-o", "addr", "show", "dev", "eth0", namespace=lab.namespace(h.name))
        assert f"inet {h.address}/24" in out
        route = netns.ip("route", "show", "default", namespace=lab.namespace(h.name))
        assert route.startswith(f"default via {h.zone.gateway_address} dev eth0")
    gw = lab.namespace(GATEWAY)
    for z in ZONES:
        out = netns.ip("-4", "-o", "addr", "show", "dev", z.name, namespace=gw)
        assert f"inet {z.gateway_address}/24" in out  # the zone's leg is named after the zone
    with netns.entered(gw):
        assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"


def test_hosts_ping_their_gateway(lab: Lab) -> None:
    results = run_probes(lab.prefix, [Probe(h.name, GATEWAY, "icmp") for h in HOSTS])
    # the probe targets the gateway's first address; every host reaches it through its own leg
    assert all(r.passed for r in results), [r for r in results if not r.passed]


def test_without_daemon_cross_zone_traffic_flows(lab: Lab) -> None:
    """Sanity: no daemon, no rules, so the gateway forwards everything (each zone pair, each proto)."""
    probes = []
    for src in HOSTS:
        for dst in HOSTS:
            if src.zone != dst.zone and src.octet == min(h.octet for h in HOSTS if h.zone == src.zone):
                probes += [Probe(src.name, dst.name, "tcp", 443), Probe(src.name, dst.name, "udp", 7)]
                probes.append(Probe(src.name, dst.name, "icmp"))
    results = run_probes(lab.prefix, probes)
    failed = [r for r in results if not r.passed]
    assert not failed
    banners = {r.detail.split(" ")[1] for r in results if r.probe.proto == "tcp"}
    assert banners == {h.name for h in HOSTS}  # the answer came from the real peer


def test_probe_reports_a_closed_port_as_not_passed(lab: Lab) -> None:
    (r,) = run_probes(lab.prefix, [Probe("lgwan-terminal", "internet-host", "tcp", 9)])
    assert not r.passed and "refused" in r.detail.lower()


def test_smtp_stores_message_in_maildir(lab: Lab) -> None:
    msg = EmailMessage()
    msg["From"] = "relay@example.jp"
    msg["To"] = "soumu@lgwan.example.lg.jp"
    msg["Subject"] = "lab test"
    msg.set_content("本文\n.a line starting with a dot\n")
    msg.add_attachment(b"\x00\x01" * 3000, maintype="application", subtype="octet-stream", filename="a.bin")
    wire = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))  # once: each call draws a new boundary
    with smtp_client(lab.prefix, "internet-relay", "lgwan-mail") as c:
        c.sendmail("relay@example.jp", ["soumu@lgwan.example.lg.jp"], wire)
    maildir = lab.maildir("lgwan-mail")
    (stored,) = (maildir / "new").iterdir()
    assert stored.read_bytes() == wire  # byte-exact, CRLF kept, dot-unstuffed
    (record,) = (json.loads(line) for line in maildir.with_name("lgwan-mail.jsonl").read_text().splitlines())
    assert record["peer"][0] == "198.19.40.25" and record["rcpt_tos"] == ["soumu@lgwan.example.lg.jp"]


def test_status_json_shape(lab: Lab) -> None:
    out = _cli("status", "--json", "--state-dir", str(lab.state_dir), "--prefix", PREFIX, check=True).stdout
    st = json.loads(out)
    assert st["up"] is True
    assert set(st["hosts"]) == {h.name for h in HOSTS} | {GATEWAY}
    assert st["hosts"]["lgwan-mail"]["namespace"] == f"{PREFIX}lgwan-mail"
    assert st["hosts"]["lgwan-mail"]["address"] == "198.18.20.25"
    assert st["hosts"][GATEWAY]["namespace"] == f"{PREFIX}gateway"
    assert st["daemon"] == {"pid": None, "running": False, "log": None}
    assert st["paths"]["events"] == str(lab.events_path)
    assert st["paths"]["quarantine"] == str(lab.quarantine_dir)
    assert set(st["paths"]["maildirs"]) >= {"lgwan-mail", "internet-relay"}
    assert all(s["running"] for s in st["servers"].values())


def test_exec_passes_exit_status_through(lab: Lab) -> None:
    r = _cli("exec", "--prefix", PREFIX, "chukan", "--", "sh", "-c", "ip -4 -o addr show dev eth0; exit 7")
    assert r.returncode == 7
    assert "198.18.30.40/24" in r.stdout
    assert _cli("exec", "--prefix", PREFIX, "no-such-host", "--", "true").returncode == 1


def test_up_when_already_up_fails_and_leaves_the_lab_alone(lab: Lab) -> None:
    other = Lab(lab.state_dir / "other", prefix=PREFIX)
    with pytest.raises(LabError, match="already up"):
        other.up(daemon=False)
    assert not other.touched  # so neither the CLI nor running_lab will tear the running lab down
    # the CLI meets the lock that running_lab holds, and also leaves the lab alone
    r = _cli("up", "--no-daemon", "--prefix", PREFIX, "--state-dir", str(lab.state_dir / "other"))
    assert r.returncode == 1 and "another lab operation" in r.stderr
    assert all(netns.exists(n) for n in lab.all_namespaces())
    assert run_probes(lab.prefix, [Probe("lgwan-terminal", "chukan", "tcp", 443)])[0].passed


class _FailingLab(Lab):
    """Fails right after its servers started: namespaces and processes exist."""

    def _start_hosts(self) -> None:
        super()._start_hosts()
        raise LabError("simulated failure")


def test_down_cleans_up_after_failed_up(tmp_path: Path) -> None:
    prefix = "lgwf-"
    Lab(tmp_path, prefix=prefix).down()
    failing = _FailingLab(tmp_path, prefix=prefix)
    with pytest.raises(LabError, match="simulated"):
        failing.up(daemon=False)
    pids = [r.pid for r in failing.state.processes.values()]
    assert len(pids) == len(HOSTS) and all(Path(f"/proc/{p}").exists() for p in pids)
    # a new Lab object: `down` works from the state file alone, like a later CLI call
    Lab(tmp_path, prefix=prefix).down()
    assert not [n for n in netns.list_namespaces() if n.startswith(prefix)]
    assert not any(r.alive() for r in failing.state.processes.values())
    Lab(tmp_path, prefix=prefix).down()  # idempotent


def test_down_after_failure_while_creating_namespaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = "lgwf-"
    real_add, calls = netns.add, []

    def add(name: str) -> None:
        calls.append(name)
        if len(calls) == 4:
            raise LabError("simulated: netns add failed")
        real_add(name)

    monkeypatch.setattr(netns, "add", add)
    with pytest.raises(LabError, match="simulated"), running_lab(daemon=False, state_dir=tmp_path, prefix=prefix):
        pass
    assert not [n for n in netns.list_namespaces() if n.startswith(prefix)]


def test_isolated_zones_route_same_zone_traffic_through_forward(tmp_path: Path) -> None:
    with running_lab(daemon=False, state_dir=tmp_path, prefix="lgwi-", isolate_zones=True) as lab:
        same_zone = Probe("mynumber-terminal", "mynumber-server", "tcp", 22)
        assert run_probes(lab.prefix, [same_zone])[0].passed
        gw = lab.namespace(GATEWAY)
        rule = ["FORWARD", "-i", "mynumber", "-o", "mynumber", "-j", "DROP"]
        lab.exec(GATEWAY, ["iptables", "-w", "-A", *rule], check=True)
        (r,) = run_probes(lab.prefix, [same_zone], timeout=0.5)
        assert not r.passed  # the gateway's FORWARD chain decided a same-zone flow
        assert netns.exists(gw)


def test_probe_command_without_daemon_sees_everything_pass(lab: Lab) -> None:
    r = _cli("probe", "--json", "--timeout", "0.5", "--prefix", PREFIX, "--state-dir", str(lab.state_dir))
    out = json.loads(r.stdout)
    assert r.returncode == 1  # denied rows pass without a daemon: they differ from the policy
    assert out["flows"] and all(f["passed"] for f in out["flows"])
    assert out["mail"]["delivered"] and out["mail"]["attachment_kept"]
