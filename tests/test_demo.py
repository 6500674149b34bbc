"""`lgwan-gateway demo` end to end on configs/lab.toml: every case as the lab policy expects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway import cli, demo, synth

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "lab.toml"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> demo.DemoReport:
    return demo.run_demo(CONFIG, tmp_path_factory.mktemp("demo"))


def test_every_case_matches_the_lab_policy(report: demo.DemoReport) -> None:
    bad = [(r.case.name, r.case.expect, r.action, r.passed, r.packets) for r in report.results if not r.ok]
    assert bad == []
    assert len(report.results) == len(synth.CASES)


def test_passed_and_blocked(report: demo.DemoReport) -> None:
    by = {r.case.name: r for r in report.results}
    chukan = by["mynumber-to-chukan-https"]
    assert chukan.action == "accept" and chukan.rule_id == "mynumber-to-chukan-https"
    assert chukan.passed == chukan.packets > 3
    internet = by["mynumber-to-internet-https"]
    assert (internet.action, internet.rule_id, internet.passed) == ("drop", "default-deny", 0)
    assert by["relay-to-lgwan-mail-smtp"].action == "inspect"
    assert by["lgwan-to-browser-rdp"].rule_id == "lgwan-terminal-to-internet-browser-rdp"
    assert by["orphan-synack-to-lgwan"].reason == "no_flow"
    assert by["overlapping-fragments-to-lgwan"].passed == 0
    frag = by["fragmented-ping-lgwan-to-chukan"]
    assert frag.passed == frag.packets
    # every frame ends up exactly once: forwarded, dropped or held for inspection
    s = report.summary
    assert s["packets"] == sum(r.packets for r in report.results)
    assert sum(r.passed for r in report.results) == s["forwarded"]


def test_report_text_names_outputs(report: demo.DemoReport) -> None:
    text = demo.format_report(report)
    for pair in synth.zone_pairs():
        assert f"{pair[0]} -> {pair[1]}" in text
    assert str(report.output) in text and str(report.events) in text
    assert report.events.is_file() and report.output.is_file()


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.json"
    rc = cli.main(["demo", "--config", str(CONFIG), "--out-dir", str(tmp_path), "--json", str(out)])
    assert rc == 0, capsys.readouterr().out
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["ok"] is True and len(doc["cases"]) == len(synth.CASES)
    assert "result:" in capsys.readouterr().out
