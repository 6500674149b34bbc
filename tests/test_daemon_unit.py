"""Daemon pieces without namespaces: settings, limits, event lines, metrics table, `rules`, systemd unit."""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from gateway import cli
from gateway.daemon import EventWriter, SettingsError, Supervisor, engine_limits, rules_command, settings_for
from gateway.fastpath import common
from gateway.fastpath.common import CompiledPolicy, Limits, RawEvent, ZoneSpec, format_event
from gateway.io.metrics import DaemonCollector, DaemonView, WorkerSnapshot, render_table
from gateway.io.nfqueue import kernel_queue_stats
from gateway.io.sdnotify import Notifier
from gateway.lab import Lab
from gateway.lab.netns import LabError
from gateway.policy import ConfigError, load_policy, load_policy_text

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "lgwan-gateway.service"
# `systemd-analyze security --threshold` is on a 0..100 scale: 23 = exposure 2.3, what the unit scores
# ("OK"): any loosening of the sandbox fails the test (22 fails today)
SECURITY_THRESHOLD = 23


def _policy(**extra: object) -> CompiledPolicy:
    zones = (ZoneSpec("a", common.TIER_LGWAN), ZoneSpec("b", common.TIER_LGWAN))
    return CompiledPolicy(zones=zones, prefixes=(), interfaces={}, rules=(), extra=dict(extra))


def test_binding_constants_mirror_common() -> None:
    text = (ROOT / "cython_ext" / "nfq.pyx").read_text()
    consts = dict(re.findall(r"^\s+(V_\w+|R_RULE|R_FLOW) = (\d+)$", text, re.M))
    assert int(consts["V_DROP"]) == common.DROP and int(consts["V_ACCEPT"]) == common.ACCEPT
    assert int(consts["V_INSPECT"]) == common.INSPECT and int(consts["V_FRAGMENT"]) == common.FRAGMENT
    assert int(consts["R_RULE"]) == common.R_RULE and int(consts["R_FLOW"]) == common.R_FLOW


# --- [daemon] settings ----------------------------------------------------------------------------

POLICY_HEAD = """[gateway]
name = "t"

[[zones]]
name = "a"
tier = "lgwan"
networks = ["198.18.1.0/24"]
"""


def _loaded(daemon: str, head: str = POLICY_HEAD) -> Any:
    return load_policy_text(head + "\n[daemon]\n" + daemon, "p.toml")


def _run_args(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["run", "--config", "p.toml", *argv])


def test_settings_come_from_the_file_and_options_override_them() -> None:
    loaded = _loaded(
        'queue = 7\nworkers = 2\noffload = false\nevents = "/var/log/x.jsonl"\nmetrics_port = 9700\n'
        "rules_check_interval = 0.5\nmax_batch = 16\nqueue_maxlen = 100\n"
    )
    s = settings_for(_run_args(), loaded)
    assert (s.queue, s.workers, s.offload, s.events, s.metrics_port, s.metrics_address) == (
        7, 2, False, "/var/log/x.jsonl", 9700, "127.0.0.1",
    )  # fmt: skip
    assert (s.check_interval, s.max_batch, s.queue_maxlen, s.fail_open) == (0.5, 16, 100, False)
    s = settings_for(_run_args("--workers", "3", "--offload", "--events", "-", "--metrics-port", "0"), loaded)
    assert (s.queue, s.workers, s.offload, s.events, s.metrics_port) == (7, 3, True, "-", 0)
    assert not settings_for(_run_args("--no-offload"), _loaded("")).offload
    # no [daemon] section: the daemon's defaults
    d = settings_for(_run_args(), load_policy_text(POLICY_HEAD, "p.toml"))
    assert (d.queue, d.workers, d.offload, d.events, d.metrics_port, d.check_interval) == (0, 1, True, None, 9687, 5.0)
    # `rules` prints what the file's settings install
    rules = cli.build_parser().parse_args(["rules", "--config", "p.toml", "--workers", "4"])
    assert settings_for(rules, loaded).rules_config(1).queue_num == 7
    assert settings_for(rules, loaded).workers == 4


def test_daemon_section_errors_name_file_and_line() -> None:
    with pytest.raises(ConfigError) as err:
        _loaded('workers = 0\nqeue = 1\nevents = "events.jsonl"\noffload = "yes"\nmetrics_port = 70000\n')
    base = POLICY_HEAD.count("\n") + 2  # the [daemon] header's line
    assert [str(e) for e in err.value.errors] == [
        f"p.toml:{base + 1}: daemon.workers: must be greater than or equal to 1, got 0",
        f'p.toml:{base + 2}: daemon: unknown key "qeue" (did you mean "queue"?)',
        f"p.toml:{base + 3}: daemon.events: must be an absolute file path or \"-\" (stdout), got 'events.jsonl'",
        f"p.toml:{base + 4}: daemon.offload: must be a valid boolean, got 'yes'",
        f"p.toml:{base + 5}: daemon.metrics_port: must be less than or equal to 65535, got 70000",
    ]
    with pytest.raises(ConfigError) as err:
        _loaded('queue = 65535\nworkers = 2\nmetrics_address = "198.18.1.254"\n')
    (queues, address) = err.value.errors
    assert queues.line == base + 2 and queues.message.startswith("daemon.workers: queues 65535..65536 run past")
    assert address.line == base + 3
    assert address.message.startswith("daemon.metrics_address: '198.18.1.254' is not a loopback address")
    # a key with a schema error does not hide the relations between the others
    with pytest.raises(ConfigError) as err:
        _loaded('workers = 0\nmetrics_address = "198.18.1.254"\n')
    assert [(e.line, e.message[:30]) for e in err.value.errors] == [
        (base + 1, "daemon.workers: must be greate"),
        (base + 2, "daemon.metrics_address: '198.1"),
    ]
    with pytest.raises(ConfigError, match=r"p.toml:\d+: daemon.metrics_address: 'localhost' is not an IP address"):
        _loaded('metrics_address = "localhost"\n')
    # no endpoint, no exposure: any address is fine with metrics_port = 0
    assert _loaded('metrics_address = "198.18.1.254"\nmetrics_port = 0\n').daemon.metrics_port == 0


def test_remote_metrics_need_the_explicit_switch() -> None:
    loaded = _loaded('metrics_address = "::"\nmetrics_allow_remote = true\n')
    assert loaded.daemon.metrics_address == "::"
    assert any("warning: metrics_allow_remote" in n and "[::]" not in n for n in loaded.notes)
    # a command-line address obeys the file's switch
    with pytest.raises(SettingsError, match="not a loopback address"):
        settings_for(_run_args("--metrics-address", "0.0.0.0"), _loaded(""))
    with pytest.raises(SettingsError, match="not an IP address"):
        settings_for(_run_args("--metrics-address", "gateway.local"), _loaded(""))
    assert settings_for(_run_args("--metrics-address", "::1"), _loaded("")).metrics_address == "::1"
    assert settings_for(_run_args("--metrics-address", "0.0.0.0"), loaded).metrics_address == "0.0.0.0"


def test_run_refuses_bad_settings_before_anything_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.toml"
    path.write_text(POLICY_HEAD)
    assert cli.main(["run", "--config", str(path), "--metrics-address", "198.18.1.254"]) == 2
    assert "not a loopback address" in capsys.readouterr().err
    assert cli.main(["run", "--config", str(path), "--events", str(tmp_path / "missing" / "e.jsonl")]) == 2
    assert "event log" in capsys.readouterr().err


def _supervisor(path: Path, *argv: str) -> Supervisor:
    args = cli.build_parser().parse_args(["run", "--config", str(path), *argv])
    args.no_rules = True  # no iptables here: reload touches only the policy and the settings
    loaded = load_policy(path)
    return Supervisor(settings_for(args, loaded), loaded, args=args, notifier=Notifier({}))


def test_reload_applies_reloadable_settings_and_keeps_restart_only_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "p.toml"
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    path.write_text(POLICY_HEAD + f'[daemon]\nworkers = 1\nevents = "{first}"\n')
    sup = _supervisor(path)
    path.write_text(
        POLICY_HEAD.replace('name = "t"', 'name = "t"\nfail_mode = "open"')
        + f'[daemon]\nworkers = 2\nqueue = 4\nevents = "{second}"\nrules_check_interval = 1.5\n'
        "[limits]\nmax_flows = 10\n"
    )
    with caplog.at_level(logging.WARNING, logger="lgwan-gateway"):
        assert sup.reload()
    assert (sup.generation, sup.settings.events, sup.settings.check_interval) == (2, str(second), 1.5)
    assert (sup.settings.workers, sup.settings.queue) == (1, 0)  # restart-only: the running values stay
    assert sup.view.restart_pending
    assert "queue 0 -> 4, workers 1 -> 2, fail_mode 'closed' -> 'open', [limits]" in caplog.text
    assert second.exists()  # the supervisor checked it can be opened before applying anything

    # an event log that cannot be opened refuses the whole reload: the policy stays too
    path.write_text(POLICY_HEAD + f'[daemon]\nevents = "{tmp_path}/missing-dir/x.jsonl"\nrules_check_interval = 9.0\n')
    assert not sup.reload()
    assert (sup.generation, sup.settings.events, sup.settings.check_interval) == (2, str(second), 1.5)
    assert sup.view.reloads_failed == 1

    # back to the running values: nothing pending any more
    path.write_text(POLICY_HEAD + f'[daemon]\nevents = "{second}"\n')
    assert sup.reload() and not sup.view.restart_pending


def test_reload_keeps_command_line_overrides(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(POLICY_HEAD + '[daemon]\nevents = "/nonexistent/a.jsonl"\n')
    sup = _supervisor(path, "--events", "-", "--rules-check-interval", "2")
    path.write_text(POLICY_HEAD + '[daemon]\nevents = "/nonexistent/b.jsonl"\nrules_check_interval = 7.0\n')
    assert sup.reload()  # the file's events path is never opened: the option wins
    assert (sup.settings.events, sup.settings.check_interval) == ("-", 2.0)
    assert not sup.view.restart_pending


def test_lab_restart_daemon_needs_a_lab(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="no lab is up"):
        Lab(tmp_path, prefix="lgwd-u-").restart_daemon()


def test_offload_raises_engine_timeouts() -> None:
    base = Limits(tcp_established_timeout_us=60_000_000, udp_timeout_us=1_000_000)
    assert engine_limits(base, offload=False) == base
    raised = engine_limits(base, offload=True)
    assert raised.tcp_established_timeout_us == 432_000 * 1_000_000
    assert raised.udp_timeout_us == 3_600 * 1_000_000
    assert raised.tcp_syn_timeout_us == base.tcp_syn_timeout_us  # handshakes always reach the engine
    assert raised.max_flows == base.max_flows


def test_event_writer_appends_replay_format(tmp_path: Path) -> None:
    pol = _policy()
    ev = RawEvent(common.EV_FLOW, 1_700_000_000_000_000, 42, 4, common.addr_to_int("198.18.1.1"),
                  common.addr_to_int("198.18.2.2"), 1234, 80, 6, 0, 1, common.ACCEPT, -1, 0)  # fmt: skip
    path = tmp_path / "events.jsonl"
    path.write_text('{"earlier":1}\n')
    w = EventWriter(str(path))
    w.write([ev, ev], pol)
    w.reopen()
    w.write([ev], pol)
    w.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0]) == {"earlier": 1}
    assert json.loads(lines[1]) == format_event(ev, pol)
    assert lines[1] == json.dumps(format_event(ev, pol), ensure_ascii=False, separators=(",", ":"))


def test_metrics_table() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    view = DaemonView(reloads_ok=2, reloads_failed=1)
    view.workers[0] = WorkerSnapshot(
        worker=0, queue=0, pid=1, engine={"flows": 5}, nfq={"nfq_packets": 10, "truncated": 0},
        by_verdict_reason={(common.ACCEPT, common.R_RULE): 7, (common.DROP, common.R_NO_FLOW): 3},
        latency_bounds=[1e-6, 1e-5], latency_counts=[4, 5, 1], latency_sum=3e-5,
    )  # fmt: skip
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DaemonCollector(view))
    text = generate_latest(reg).decode()
    assert 'lgwan_packets_total{reason="no_flow",verdict="drop"} 3.0' in text
    assert 'lgwan_decision_latency_seconds_bucket{le="+Inf"} 10.0' in text
    table = render_table(text)
    assert re.search(r"lgwan_reloads_total\s+result=failed\s+1", table)
    assert re.search(r"lgwan_flows\s+5", table)
    assert "p50 <=" in table


def test_kernel_queue_stats_parse(tmp_path: Path) -> None:
    f = tmp_path / "q"
    f.write_text("    0  12345     2 2 65531     7     9      100  1\n")
    q = kernel_queue_stats(f)[0]
    assert (q.portid, q.waiting, q.copy_range, q.queue_dropped, q.user_dropped) == (12345, 2, 65531, 7, 9)
    assert kernel_queue_stats(tmp_path / "missing") == {}


def test_rules_command_prints_both_families() -> None:
    args = cli.build_parser().parse_args(["rules", "--config", str(ROOT / "configs" / "lab.toml"), "--fresh"])
    out = io.StringIO()
    with redirect_stdout(out):
        assert rules_command(args) == 0
    text = out.getvalue()
    assert "# IPv4: iptables-restore --noflush" in text and "# IPv6: ip6tables-restore --noflush" in text
    assert text.count("*filter") == 2 and text.count("COMMIT") == 4
    assert "--queue-bypass" not in text  # lab.toml is fail_mode = "closed"


def test_cli_wires_daemon_commands() -> None:
    p = cli.build_parser()
    a = p.parse_args(["run", "--config", "c.toml", "--queue", "3", "--metrics-port", "0", "--no-offload"])
    assert (a.queue, a.metrics_port, a.offload, a.workers, a.events) == (3, 0, False, None, None)
    assert p.parse_args(["run", "--config", "c.toml"]).offload is None  # unset: the file decides
    assert p.parse_args(["rules", "--remove"]).remove
    assert p.parse_args(["stats"]).port == 9687


def _unit_for_verify(tmp_path: Path, unit: Path = UNIT) -> Path:
    # verify checks that ExecStart exists: point it at this interpreter, nothing else changes
    text = unit.read_text().replace("/opt/lgwan-gateway/.venv/bin/lgwan-gateway", sys.executable)
    out = tmp_path / unit.name
    out.write_text(text)
    return out


def _need_systemd_analyze() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")


def _verify_prints_nothing(*units: Path) -> None:
    _need_systemd_analyze()
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, units)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    # verify exits 0 on most mistakes (unknown keys are only warnings): any output is a failure
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", proc.stdout + proc.stderr


def test_unit_verify_prints_nothing(tmp_path: Path) -> None:
    _verify_prints_nothing(_unit_for_verify(tmp_path))


def _security_within(unit: Path, threshold: int) -> None:
    _need_systemd_analyze()
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", f"--threshold={threshold}", str(unit)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr


def test_unit_security_exposure(tmp_path: Path) -> None:
    _security_within(_unit_for_verify(tmp_path), SECURITY_THRESHOLD)


def test_unit_has_required_settings() -> None:
    keys: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            keys[k] = v
    assert keys["Type"] == "notify" and keys["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert keys["Restart"] == "on-failure" and keys["WatchdogSec"]
    assert set(keys["CapabilityBoundingSet"].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert keys["NoNewPrivileges"] == "yes" and keys["ProtectSystem"] == "strict" and keys["PrivateTmp"] == "yes"
    assert "/var/lib/lgwan-gateway" in keys["ReadWritePaths"] and "/var/log/lgwan-gateway" in keys["ReadWritePaths"]
    assert set(keys["RestrictAddressFamilies"].split()) == {"AF_NETLINK", "AF_UNIX", "AF_INET", "AF_INET6"}
    assert keys["SystemCallFilter"] == "@system-service"


# --- the quarantine purge service and its timer ---------------------------------------------------
PURGE_UNIT = ROOT / "systemd" / "lgwan-gateway-purge.service"
PURGE_TIMER = ROOT / "systemd" / "lgwan-gateway-purge.timer"
PURGE_SECURITY_THRESHOLD = 9  # exposure 0.9 ("SAFE"): no capabilities, no network


def test_purge_units_verify_prints_nothing(tmp_path: Path) -> None:
    service = _unit_for_verify(tmp_path, PURGE_UNIT)
    timer = _unit_for_verify(tmp_path, PURGE_TIMER)  # beside its service: verify follows Unit=
    _verify_prints_nothing(service, timer)


def test_purge_unit_security_exposure(tmp_path: Path) -> None:
    _security_within(_unit_for_verify(tmp_path, PURGE_UNIT), PURGE_SECURITY_THRESHOLD)


def _settings(unit: Path) -> dict[str, str]:
    keys: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            keys[k] = v
    return keys


def test_purge_timer_and_service_settings() -> None:
    svc, tmr = _settings(PURGE_UNIT), _settings(PURGE_TIMER)
    assert svc["Type"] == "oneshot" and svc["CapabilityBoundingSet"] == "" and svc["PrivateNetwork"] == "yes"
    assert svc["ReadWritePaths"] == "/var/lib/lgwan-gateway" and svc["ProtectSystem"] == "strict"
    assert tmr["Unit"] == PURGE_UNIT.name and tmr["Persistent"] == "true" and tmr["WantedBy"] == "timers.target"
    # the daemon's unit and the purge agree on where the store is (the daemon's default dir)
    from gateway.io.quarantine import DEFAULT_DIR

    assert svc["Environment"] == f"LGWAN_GATEWAY_QUARANTINE_DIR={DEFAULT_DIR}"


def test_purge_unit_command_line_runs(tmp_path: Path) -> None:
    """ExecStart as written (binary and config path swapped for this checkout's): it parses and
    purges a store without touching a young entry."""
    import shlex

    from gateway.io.quarantine import QuarantineMeta, QuarantineStore
    from gateway.mailevents import FlowInfo

    argv = shlex.split(_settings(PURGE_UNIT)["ExecStart"])
    assert argv[0] == "/opt/lgwan-gateway/.venv/bin/lgwan-gateway"
    argv = [sys.executable, "-m", "gateway", *argv[1:]]
    argv[argv.index("/etc/lgwan-gateway/gateway.toml")] = str(ROOT / "configs" / "lab.toml")
    store = QuarantineStore(tmp_path / "q")
    flow = FlowInfo(1, "198.19.40.25", 40000, "198.18.20.25", 25, profile="mail")
    qid = store.put(b"x", QuarantineMeta(kind="part", flow=flow, reason="executable", action="neutralized"))
    env = {**_env_without_store(), "LGWAN_GATEWAY_QUARANTINE_DIR": str(tmp_path / "q")}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    assert "0 entries purged" in proc.stderr and [e.id for e in store.list()] == [qid]


def _env_without_store() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "LGWAN_GATEWAY_QUARANTINE_DIR"}
