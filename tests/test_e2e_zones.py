"""End to end: the daemon on configs/lab.toml in the namespace lab, real TCP, UDP and ICMP.

Every ordered pair of lab zones (the same zone included: the lab runs with isolated zones, so
same-zone traffic is routed through the gateway too) is probed on allowed and denied ports. Every
host listens on every probed port, so a "block" is the gateway's doing, not a closed port. The
expectations (gateway/lab/matrix.py) are written from lab-facts.md's policy text, not computed
from the policy, so the table checks the config and the daemon together. Then the daemon's event log must hold exactly
one flow event per attempted flow, with the action the policy gives.
"""

from __future__ import annotations

import email
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.lab import Lab, Probe, ProbeResult, netns, run_probes, running_lab
from gateway.lab.core import DEFAULT_CONFIG, daemon_available
from gateway.lab.matrix import CASES as MATRIX
from gateway.lab.matrix import DROP, INSPECT, send_test_mail
from gateway.lab.topology import HOSTS_BY_NAME, address_of

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"), reason="the lab needs root (network namespaces, veths)"
)
needs_daemon = pytest.mark.skipif(
    not daemon_available(), reason="the daemon (gateway/daemon.py, `lgwan-gateway run`) has not landed"
)

PREFIX = "lgwe-"
TIMEOUT_S = 1.0  # a blocked probe costs this once: probes run concurrently

CASES = [(c.src, c.dst, c.proto, c.port, c.action) for c in MATRIX]  # (src, dst, proto, port, event action)


def test_table_covers_every_zone_pair() -> None:
    zones = {h.zone.name for h in HOSTS_BY_NAME.values()}
    covered = {(HOSTS_BY_NAME[s].zone.name, HOSTS_BY_NAME[d].zone.name) for s, d, *_ in CASES}
    assert covered == {(a, b) for a in zones for b in zones}
    assert len({c[:4] for c in CASES}) == len(CASES)


def _first_packet(src: str, dst: str, proto: str, port: int) -> bytes:
    from scapy.layers.inet import ICMP, IP, TCP, UDP

    ip = IP(src=address_of(src), dst=address_of(dst))
    if proto == "tcp":
        return bytes(ip / TCP(sport=40000, dport=port, flags="S"))
    if proto == "udp":
        return bytes(ip / UDP(sport=40000, dport=port) / b"probe")
    return bytes(ip / ICMP(type=8, id=1, seq=1) / b"probe")


def test_table_agrees_with_the_policy_offline() -> None:
    """The table against the reference engine on configs/lab.toml, no root needed: a wrong row shows
    up here, before the live test blames the daemon for it."""
    from gateway.fastpath.common import VERDICT_NAMES
    from gateway.fastpath.reference import Engine
    from gateway.policy import load_policy

    policy = load_policy(DEFAULT_CONFIG).compiled
    wrong = []
    for i, (src, dst, proto, port, action) in enumerate(CASES):
        engine = Engine(policy)
        zin, zout = HOSTS_BY_NAME[src].zone.name, HOSTS_BY_NAME[dst].zone.name
        d = engine.decide(_first_packet(src, dst, proto, port), 1_000_000 + i, zin, zout)
        if VERDICT_NAMES[d.verdict] != action:
            wrong.append(f"{src} -> {dst} {proto}/{port}: engine says {VERDICT_NAMES[d.verdict]}, table {action}")
    assert not wrong, "\n".join(wrong)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    state = tmp_path_factory.mktemp("e2e")
    # fresh: leftovers of a killed earlier run (taken down under the lab lock)
    with running_lab(
        config=DEFAULT_CONFIG, daemon=True, state_dir=state, prefix=PREFIX, isolate_zones=True, fresh=True
    ) as lab:
        yield lab
    assert not [n for n in netns.list_namespaces() if n.startswith(PREFIX)]


def _flow_events(path: Path) -> list[dict[str, object]]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [e for e in map(json.loads, filter(None, lines)) if e.get("event_type") == "flow"]


def _matches(event: dict[str, object], r: ProbeResult) -> bool:
    p = r.probe
    if (event.get("src_ip"), event.get("dest_ip"), str(event.get("proto")).lower()) != (
        address_of(p.src),
        address_of(p.dst),
        p.proto,
    ):
        return False
    if p.proto == "icmp":
        return event.get("icmp_type") == 8  # one echo request per (src, dst) pair in the table
    return (event.get("src_port"), event.get("dest_port")) == (r.src_port, p.port)


@pytest.mark.root
@pytest.mark.slow
@needs_root
@needs_daemon
def test_every_zone_pair_behaves_as_the_policy_says(lab: Lab) -> None:
    _check_flows(lab, [c for c in CASES if c[4] != INSPECT])


def _inspector_missing(lab: Lab) -> bool:
    """The daemon counts flows it must inspect but cannot (no inspector: it fails closed)."""
    pid = lab.status()["daemon"]["pid"]
    os.kill(pid, signal.SIGUSR1)  # logs the counters
    time.sleep(0.5)
    log = Path(lab.status()["daemon"]["log"]).read_text(errors="replace")
    return re.search(r"inspect_unavailable=[1-9]", log) is not None


@pytest.mark.root
@pytest.mark.slow
@needs_root
@needs_daemon
def test_inspected_mail_flows_pass_sanitized(lab: Lab) -> None:
    """internet-relay <-> lgwan-mail tcp/25 are inspected: they pass, and inbound mail loses its attachment."""
    try:
        _check_flows(lab, [c for c in CASES if c[4] == INSPECT])
        mail = send_test_mail(lab)
        assert mail["delivered"], mail
    except AssertionError:
        if _inspector_missing(lab):
            pytest.xfail("the daemon has no mail inspector yet: inspected flows fail closed (inspect_unavailable)")
        raise
    parts = email.message_from_bytes(Path(mail["delivered"]).read_bytes()).walk()
    assert "application/pdf" not in [p.get_content_type() for p in parts]  # profile mail: attachments removed


def _check_flows(lab: Lab, cases: list[tuple[str, str, str, int, str]]) -> None:
    probes = [Probe(s, d, proto, port) for s, d, proto, port, _ in cases]
    t0 = time.monotonic()
    results = run_probes(lab.prefix, probes, timeout=TIMEOUT_S)
    elapsed = time.monotonic() - t0
    wrong = [
        f"{r.probe.src} -> {r.probe.dst} {r.probe.proto}/{r.probe.port}: expected "
        f"{'pass' if action != DROP else 'block'}, got {'pass' if r.passed else 'block'} ({r.detail})"
        for r, (*_, action) in zip(results, cases, strict=True)
        if r.passed != (action != DROP)
    ]
    assert not wrong, "\n".join(wrong)
    assert elapsed < 10 * TIMEOUT_S

    # one flow event per attempted flow, with the policy's action (the log may lag the packets)
    deadline = time.monotonic() + 5
    while True:
        events = _flow_events(lab.events_path)
        found = [[e for e in events if _matches(e, r)] for r in results]
        if all(found) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    problems = []
    for r, evs, (*_, action) in zip(results, found, cases, strict=True):
        what = f"{r.probe.src} -> {r.probe.dst} {r.probe.proto}/{r.probe.port}"
        if len(evs) != 1:
            problems.append(f"{what}: {len(evs)} flow events")
        elif evs[0].get("action") != action:
            problems.append(f"{what}: action {evs[0].get('action')!r}, expected {action!r}")
    assert not problems, "\n".join(problems)
    assert lab.status()["daemon"]["running"]
