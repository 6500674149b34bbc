"""Static checks of the VM lab (vagrant/): nothing boots here, docs/vagrant.md says what does.

- the Vagrantfile's plan (vagrant/lab-plan.json) is generated from gateway/lab/topology.py and fresh;
- the Vagrantfile as evaluated (a recording stub of Vagrant's config API, plain Ruby) gives every VM
  the address the namespace lab and configs/lab.toml give it, and uses only 198.18.0.0/15;
- `ruby -c`, `vagrant validate` with the libvirt provider, `vagrant status --machine-readable` names;
- `bash -n` and shellcheck on every script under vagrant/;
- the box builder installs everything scripts/setup.sh installs;
- the unit's capability names are ones systemd knows (`systemd-analyze verify` drops unknown ones
  silently; the other systemd-analyze checks are in tests/test_daemon_unit.py).

In CI (CI set) the tools must be there: scripts/setup.sh installs ruby, vagrant, vagrant-libvirt and
shellcheck, so a missing one fails instead of skipping.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.lab.topology import GATEWAY, HOSTS, ZONES

ROOT = Path(__file__).resolve().parent.parent
VAGRANT_DIR = ROOT / "vagrant"
VAGRANTFILE = VAGRANT_DIR / "Vagrantfile"
LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")
SCRIPTS = sorted(VAGRANT_DIR.rglob("*.sh"))

sys.path.insert(0, str(VAGRANT_DIR))
import labplan  # noqa: E402


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed (scripts/setup.sh installs it)")
        pytest.skip(f"{tool} not installed")
    return path


def _vagrant_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, VAGRANT_DEFAULT_PROVIDER="libvirt", LGWAN_LIBVIRT_DRIVER="qemu")
    env["VAGRANT_DOTFILE_PATH"] = str(tmp_path / "dotvagrant")  # never the developer's machine state
    env["VAGRANT_CHECKPOINT_DISABLE"] = "1"  # no version check over the network
    env.pop("LGWAN_VAGRANT_HOSTS", None)
    env.update(extra)
    return env


# --- the plan ---------------------------------------------------------------------------------------


def test_plan_file_is_generated_from_topology() -> None:
    assert (VAGRANT_DIR / "lab-plan.json").read_text() == labplan.render(), (
        "vagrant/lab-plan.json is stale: run python3 vagrant/labplan.py --write"
    )


def test_plan_matches_lab_toml() -> None:
    policy = tomllib.loads((ROOT / "configs" / "lab.toml").read_text())
    toml_zones = {z["name"]: (z["tier"], z["networks"]) for z in policy["zones"]}
    plan = labplan.plan()
    assert {z["name"]: (z["tier"], [z["network"]]) for z in plan["zones"]} == toml_zones
    for z in plan["zones"]:
        net = ipaddress.ip_network(z["network"])
        assert net.subnet_of(LAB_RANGE)  # type: ignore[arg-type]
        assert z["gateway"] == str(net.network_address + 254)  # .1 is vagrant-libvirt's host bridge
    for h in plan["hosts"]:
        zone = next(z for z in plan["zones"] if z["name"] == h["zone"])
        assert ipaddress.ip_address(h["address"]) in ipaddress.ip_network(zone["network"])
        assert not h["address"].endswith((".1", ".254"))
    assert set(plan["default_hosts"]) >= {"mynumber-terminal", "lgwan-mail", "internet-relay"}
    assert {h["zone"] for h in plan["hosts"] if h["name"] in plan["default_hosts"]} == {z.name for z in ZONES}


def test_labhost_args_are_the_namespace_labs() -> None:
    for h in HOSTS:
        args = labplan.labhost_args(h.name, "/m")
        opts = dict(zip(args[::2], args[1::2], strict=True))
        assert opts["--name"] == h.name
        assert opts["--tcp"] == ",".join(map(str, h.tcp)) and opts["--udp"] == ",".join(map(str, h.udp))
        assert opts.get("--smtp", "") == ",".join(map(str, h.smtp))
        assert ("--maildir" in opts) == bool(h.smtp)
        vm = dict(zip(*[iter(labplan.labhost_args(h.name, "/m", labplan.VM_SKIP_TCP))] * 2, strict=True))
        assert vm["--tcp"].split(",") == [str(p) for p in h.tcp if p != 22]  # the VM's sshd is tcp/22
    assert labplan.routes("chukan") == [
        "198.18.10.0/24 198.18.30.254",
        "198.18.20.0/24 198.18.30.254",
        "198.19.40.0/24 198.18.30.254",
    ]


# --- the Vagrantfile as evaluated -------------------------------------------------------------------

# A stand-in for Vagrant's config objects: every call is accepted, `define` blocks get a recorder
# that knows its machine, and network/provider settings are logged. Plain Ruby, no vagrant needed.
_RECORDER = r"""
require "json"
LOG = []
class Rec
  def initialize(machine, path) @machine = machine; @path = path end
  def define(name, *args, **kw) ; yield Rec.new(name, []) if block_given?; self end
  def method_missing(name, *args, **kw, &blk)
    n = name.to_s
    LOG << {"machine" => @machine, "call" => (@path + [n]).join("."), "args" => args, "kw" => kw} if
      %w[network synced_folder box].include?(n) || n.end_with?("=")
    blk.call(Rec.new(@machine, @path + [n]), Rec.new(@machine, @path + [n, "override"])) if blk
    Rec.new(@machine, @path + [n])
  end
  def respond_to_missing?(*) = true
  def to_s = "rec"
end
module Vagrant
  def self.configure(_version) = yield(Rec.new(nil, []))
end
load ARGV[0]
puts JSON.generate(LOG)
"""


def _evaluate_vagrantfile(tmp_path: Path, hosts: str = "") -> list[dict[str, Any]]:
    _need("ruby")
    script = tmp_path / "record.rb"
    script.write_text(_RECORDER)
    env = dict(os.environ, LGWAN_VAGRANT_HOSTS=hosts, LGWAN_LIBVIRT_DRIVER="qemu")
    proc = subprocess.run(
        ["ruby", str(script), str(VAGRANTFILE)], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    log: list[dict[str, Any]] = json.loads(proc.stdout)
    return log


def _private_networks(log: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    nets: dict[str, list[dict[str, Any]]] = {}
    for e in log:
        if e["call"].endswith("vm.network") and e["args"] == ["private_network"]:
            nets.setdefault(e["machine"], []).append(e["kw"])
    return nets


def test_vagrantfile_addresses_match_topology(tmp_path: Path) -> None:
    nets = _private_networks(_evaluate_vagrantfile(tmp_path, "all"))
    assert set(nets) == {GATEWAY, *(h.name for h in HOSTS)}
    # the gateway: one leg per zone, .254, in the zones' order (eth1..eth4)
    assert [n["ip"] for n in nets[GATEWAY]] == [z.gateway_address for z in ZONES]
    assert [n["libvirt__network_name"] for n in nets[GATEWAY]] == [f"lgwan-{z.name}" for z in ZONES]
    for h in HOSTS:
        (leg,) = nets[h.name]
        assert leg["ip"] == h.address and leg["netmask"] == "255.255.255.0"
        assert leg["libvirt__network_name"] == leg["virtualbox__intnet"] == f"lgwan-{h.zone.name}"
    for legs in nets.values():
        for leg in legs:  # isolated networks: the host machine never routes between zones
            assert leg["libvirt__forward_mode"] == "none" and leg["libvirt__dhcp_enabled"] is False


_ADDR = r"\b\d{1,3}(?:\.\d{1,3}){3}(?:/\d{1,2})?\b"


def _code(path: Path) -> str:
    """The file without comments (they may name other defaults, e.g. vagrant-libvirt's own)."""
    return re.sub(r"#(?![{!]).*$", "", path.read_text(), flags=re.M)


def test_vagrantfile_uses_only_the_lab_range() -> None:
    found = re.findall(_ADDR, _code(VAGRANTFILE))
    assert found, "no literal addresses (management networks) found"
    for lit in found:
        if lit == "255.255.255.0":  # the zones' netmask
            continue
        assert ipaddress.ip_network(lit, strict=False).subnet_of(LAB_RANGE), lit  # type: ignore[arg-type]
    for path in [VAGRANT_DIR / "vm-test.sh", VAGRANT_DIR / "lab-up.sh", *VAGRANT_DIR.glob("provision/*.sh")]:
        for lit in re.findall(_ADDR, _code(path)):
            net = ipaddress.ip_network(lit, strict=False)
            assert net.is_loopback or net.subnet_of(LAB_RANGE), f"{path.name}: {lit}"  # type: ignore[arg-type]


def test_vagrantfile_selection_by_env(tmp_path: Path) -> None:
    nets = _private_networks(_evaluate_vagrantfile(tmp_path, "lgwan-mail,internet-relay"))
    assert set(nets) == {GATEWAY, "lgwan-mail", "internet-relay"}


# --- Ruby and Vagrant ---------------------------------------------------------------------------------


def test_vagrantfile_ruby_syntax() -> None:
    _need("ruby")
    proc = subprocess.run(["ruby", "-c", str(VAGRANTFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "Syntax OK" in proc.stdout, proc.stderr


def test_vagrant_validate_libvirt(tmp_path: Path) -> None:
    _need("vagrant")
    proc = subprocess.run(
        ["vagrant", "validate"], cwd=VAGRANT_DIR, env=_vagrant_env(tmp_path),
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and "validated successfully" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("hosts", ["", "all"])
def test_vagrant_status_machine_names(tmp_path: Path, hosts: str) -> None:
    _need("vagrant")
    proc = subprocess.run(
        ["vagrant", "status", "--machine-readable"], cwd=VAGRANT_DIR,
        env=_vagrant_env(tmp_path, LGWAN_VAGRANT_HOSTS=hosts), capture_output=True, text=True, timeout=180,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    names = [line.split(",")[1] for line in proc.stdout.splitlines() if line.split(",")[2:3] == ["state"]]
    want = [h.name for h in HOSTS] if hosts == "all" else labplan.DEFAULT_HOSTS
    assert names == [GATEWAY, *want]


# --- scripts --------------------------------------------------------------------------------------------


def test_scripts_exist() -> None:
    names = {p.relative_to(VAGRANT_DIR).as_posix() for p in SCRIPTS}
    assert {"build-box.sh", "vm-test.sh", "vm-test-guest.sh", "lab-up.sh", "kvm-probe.sh"} <= names
    assert {"provision/gateway.sh", "provision/host.sh", "provision/common.sh", "provision/host-wheel.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(VAGRANT_DIR).as_posix())
def test_bash_syntax(script: Path) -> None:
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr


def test_shellcheck() -> None:
    _need("shellcheck")
    proc = subprocess.run(
        ["shellcheck", "-x", *(str(p.relative_to(VAGRANT_DIR)) for p in SCRIPTS)], cwd=VAGRANT_DIR,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _bash_array(path: Path, name: str) -> set[str]:
    m = re.search(rf"^{name}=\((.*?)^\)", path.read_text(), re.S | re.M)
    assert m, f"{name} not found in {path}"
    words = re.sub(r"#[^\n]*", "", m.group(1)).split()
    return set(words)


def test_box_has_what_the_gateway_needs() -> None:
    """The box has the runtime and build needs of scripts/setup.sh (libraries the compiled modules
    link, Python, netfilter tools); setup.sh's developer tools (benchmarks, captures) may be missing."""
    setup = _bash_array(ROOT / "scripts" / "setup.sh", "APT_PACKAGES")
    box = _bash_array(VAGRANT_DIR / "build-box.sh", "BOX_PACKAGES")
    needed = {p for p in setup if p.startswith(("lib", "python3"))} | {"iptables", "iproute2", "gcc", "systemd"}
    assert needed <= box, f"missing in the box: {sorted(needed - box)}"
    assert {"openssh-server", "sudo", "rsync", "linux-image-amd64", "systemd-sysv"} <= box


def test_insecure_key_is_vagrants() -> None:
    """The box authorizes Vagrant's well-known public key (public by design; replaced at first up)."""
    ours = (VAGRANT_DIR / "keys" / "vagrant-insecure.pub").read_text().split()[:2]
    assert ours[0] == "ssh-rsa"
    shipped = list(Path("/usr/share/rubygems-integration/all/gems").glob("vagrant-*/keys/vagrant.pub"))
    if shipped:
        assert shipped[0].read_text().split()[:2] == ours
    assert not any(VAGRANT_DIR.rglob("*PRIVATE KEY*")) and "PRIVATE KEY" not in "".join(
        p.read_text(errors="replace") for p in (VAGRANT_DIR / "keys").iterdir()
    )


# --- systemd unit: capability names --------------------------------------------------------------------


def test_unit_capability_names_are_known() -> None:
    """`systemd-analyze verify` silently drops an unknown capability: compare with systemd's own list."""
    _need("systemd-analyze")
    proc = subprocess.run(["systemd-analyze", "capability"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    known = {line.split()[0].upper() for line in proc.stdout.splitlines()[1:] if line.strip()}
    assert "CAP_NET_ADMIN" in known
    unit = (ROOT / "systemd" / "lgwan-gateway.service").read_text()
    sets: dict[str, set[str]] = {}
    for key in ("CapabilityBoundingSet", "AmbientCapabilities"):
        values = re.findall(rf"^{key}=(.*)$", unit, re.M)
        assert values, key
        sets[key] = {c for v in values for c in v.replace("~", "").split()}
        assert sets[key] <= known, f"{key}: unknown {sorted(sets[key] - known)}"
    assert sets["AmbientCapabilities"] <= sets["CapabilityBoundingSet"]
