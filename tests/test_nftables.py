"""The optional nftables rules backend (gateway/io/nftables.py) and how the daemon picks a backend.

This kernel has no nftables `queue` expression (NFQUEUE works through iptables only), so here:
- the generated ruleset is loaded into a real kernel in a throwaway namespace with its queue
  statement swapped for `drop` (the one thing the kernel refuses; on a kernel that has
  nft_queue nothing is swapped), and the backend's read-back, repair check, generation swap and
  removal run against it;
- `probe()` must say the backend is unusable and why, and `run --firewall nft` must refuse to
  start and install nothing (fail closed), while `auto` falls back to iptables.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns_helpers import ns_runner, scratch_netns

from gateway.daemon import SettingsError, select_firewall
from gateway.io import iptables as ipt
from gateway.io import nftables as nft

ROOT = Path(__file__).resolve().parents[1]


def test_ruleset_layout() -> None:
    text = nft.ruleset(ipt.RulesConfig(queue_num=3, workers=2, generation=5, balance="addresses"))
    assert text.startswith("add table inet lgwan_gateway\ndelete table inet lgwan_gateway\n")  # atomic replace
    assert 'counter queue num 3-4 comment "lgwan-gateway mark generation 5"' in text
    assert "bypass" not in text  # fail closed unless fail_mode = "open"
    assert "ct state established ct mark & 0xffff0000 == 0x80050000 counter accept" in text
    assert text.count("ct mark set ct mark & 0x0000ffff | 0x80050000") == 2  # TCP after the handshake, non-TCP
    assert "priority mangle" in text and "tcp flags & syn == 0" in text


def test_ruleset_variants() -> None:
    flow = nft.ruleset(ipt.RulesConfig(queue_num=3, workers=2, fail_open=True))
    assert 'counter queue flags bypass to symhash mod 2 offset 3 comment "' in flow
    assert "queue flags bypass num 0 comment" in nft.ruleset(ipt.RulesConfig(fail_open=True))
    stopped = nft.ruleset(ipt.RulesConfig(accept_offloaded=False))
    assert "accept" not in stopped.replace("policy accept", "")  # stopped: every packet to the (empty) queue
    no_offload = nft.ruleset(ipt.RulesConfig(offload=False))
    assert "postrouting" not in no_offload and "ct mark" not in no_offload
    assert "ct state invalid drop" not in nft.ruleset(ipt.RulesConfig(drop_invalid=False))


def test_ruleset_connection_balance() -> None:
    text = nft.ruleset(ipt.RulesConfig(queue_num=3, workers=2))  # balance = "connection", the default
    forward = text.split("chain forward {")[1].split("\n\t}")[0]
    # labelled connections to their worker, then the round-robin deal, then the flow hash last
    assert forward.index("ct label 64 counter queue num 3") < forward.index("ct label 65 counter queue num 4")
    assert "ct state new numgen inc mod 2 vmap { 0 : jump worker0, 1 : jump worker1 }" in forward
    assert forward.index("vmap") < forward.index("to symhash mod 2 offset 3")
    # a worker chain queues only when the label took (else back to the hash, like every later packet)
    assert "chain worker1 {\n\t\tct label set 65\n\t\tct label 65 counter queue num 4\n\t}" in text


def test_select_firewall() -> None:
    def usable() -> tuple[bool, str]:
        return True, "fine"

    def unusable() -> tuple[bool, str]:
        return False, "no nft_queue"

    assert isinstance(select_firewall("iptables", unusable), ipt.Iptables)
    assert isinstance(select_firewall("auto", unusable), ipt.Iptables)
    assert isinstance(select_firewall("auto", usable), nft.Nftables)
    assert isinstance(select_firewall("nft", usable), nft.Nftables)
    with pytest.raises(SettingsError, match="no nft_queue"):
        select_firewall("nft", unusable)


def test_config_key() -> None:
    from gateway.policy import ConfigError
    from gateway.policy.loader import load_policy_text

    lab = (ROOT / "configs" / "lab.toml").read_text()
    assert load_policy_text(lab, "lab.toml").daemon.firewall == "iptables"  # the default
    auto = lab.replace("[daemon]\n", '[daemon]\nfirewall = "auto"\n', 1)
    assert load_policy_text(auto, "lab.toml").daemon.firewall == "auto"
    with pytest.raises(ConfigError) as info:
        load_policy_text(lab.replace("[daemon]\n", '[daemon]\nfirewall = "pf"\n', 1), "lab.toml")
    assert "lab.toml:14" in str(info.value) and "firewall" in str(info.value)


# --- against the kernel ------------------------------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    with scratch_netns("nft", ("nft",)) as name:
        yield name


def _kernel_queues(ns: str) -> bool:
    ok, _ = nft.probe(_ns_runner(ns, swap_queue=False))
    return ok


def _ns_runner(ns: str, *, swap_queue: bool) -> nft.Runner:
    def no_queue(text: str) -> str:  # the statement this kernel refuses
        queue = r"queue (flags bypass )?(num [0-9-]+|to symhash mod [0-9]+ offset [0-9]+)"
        return re.sub(queue, "drop", text)

    return ns_runner(ns, nft.NftablesError, no_queue if swap_queue else None)


@pytest.mark.root
def test_probe_reports_why(netns: str) -> None:
    ok, why = nft.probe(_ns_runner(netns, swap_queue=False))
    bare = "table inet lgw_bare {\n chain c {\n  type filter hook forward priority filter;\n  queue num 0\n }\n}\n"
    kernel_queues = (
        subprocess.run(["ip", "netns", "exec", netns, "nft", "--check", "-f", "-"], input=bare, text=True).returncode
        == 0
    )
    assert ok == kernel_queues, why  # the probe fails exactly where the kernel cannot queue from nftables
    if not ok:
        assert "nft_queue" in why
    listing = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "tables"], capture_output=True, text=True)
    assert "lgwan_gateway" not in listing.stdout  # --check applied nothing


@pytest.mark.root
def test_install_check_swap_and_remove(netns: str) -> None:
    run = _ns_runner(netns, swap_queue=not _kernel_queues(netns))
    tables = nft.Nftables(run)
    assert tables.installed_generation() is None and not tables.intact()
    tables.install(ipt.RulesConfig(generation=4))
    tables.install(ipt.RulesConfig(generation=4))  # idempotent: the table is replaced whole
    assert tables.installed_generation() == 4 and tables.intact()
    listed = run(["nft", "list", "table", "inet", "lgwan_gateway"], None)
    assert "ct mark 0x80040000/16" in listed or "0x80040000" in listed
    assert listed.count("chain ") == 2
    # someone flushes the forward chain: the checker notices, a reinstall repairs it
    run(["nft", "flush", "chain", "inet", "lgwan_gateway", "forward"], None)
    assert not tables.intact()
    tables.install(ipt.RulesConfig(generation=4))
    assert tables.intact()
    # the generation swap is one transaction: the old mark is gone
    tables.install(ipt.RulesConfig(generation=5))
    listed = run(["nft", "list", "table", "inet", "lgwan_gateway"], None)
    assert "0x80050000" in listed and "0x80040000" not in listed and tables.installed_generation() == 5
    assert tables.offloaded() == (0, 0)
    tables.remove()
    assert tables.installed_generation() is None
    tables.remove()  # nothing left: a no-op
    # workers spread by connection: the kernel takes the labels, numgen and verdict map too
    tables.install(ipt.RulesConfig(queue_num=3, workers=2, generation=6))
    assert tables.intact() and tables.installed_generation() == 6
    listed = run(["nft", "list", "table", "inet", "lgwan_gateway"], None)
    assert "numgen inc mod 2 vmap" in listed and "ct label set 65" in listed, listed
    tables.remove()


@pytest.mark.root
def test_run_with_nft_on_a_kernel_without_queue_refuses(netns: str) -> None:
    if _kernel_queues(netns):
        pytest.skip("this kernel can queue from nftables: the refusal does not apply")
    env = {**os.environ, "LGWAN_GATEWAY_QUARANTINE_DIR": "/nonexistent-not-used"}
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "gateway", "run", "--config",
         str(ROOT / "configs" / "lab.toml"), "--firewall", "nft", "--metrics-port", "0"],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert 'firewall = "nft" cannot be used here' in proc.stderr and "nft_queue" in proc.stderr
    tables = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "tables"], capture_output=True, text=True)
    assert "lgwan_gateway" not in tables.stdout
    saved = subprocess.run(["ip", "netns", "exec", netns, "iptables-save"], capture_output=True, text=True)
    assert "LGWAN" not in saved.stdout  # nothing installed by either backend
