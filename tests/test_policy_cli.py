"""`lgwan-gateway check-config`: exit codes, the summary, every error on stderr."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from gateway.policy.cli import check_config_command

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "configs" / "lab.toml"

BAD = """\
[gateway]
name = "bad"

[[zones]]
name = "mynumber"
tier = "mynumber"
networks = ["198.18.10.0/24"]

[[zones]]
name = "internet"
tier = "internet"
networks = ["198.19.40.0/24"]

[[rules]]
id = "leak"
from = "mynumber"
to = "internet"
action = "allow"

[[rules]]
id = "typo"
from = "mynumber"
to = "internet"
action = "deny"
lgo = true
"""


def run(path: Path | str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = check_config_command(str(path), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_lab_summary() -> None:
    code, out, err = run(LAB)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"OK {LAB}"
    matrix = {ln.split()[0]: ln.split()[1:] for ln in lines if ln.startswith("  ") and len(ln.split()) == 5}
    # rows: from-zone, columns: mynumber lgwan lgwan-wan internet
    assert matrix["mynumber"] == ["intra:deny", "deny", "allow(1)", "NEVER"]
    assert matrix["lgwan"] == ["deny", "intra", "allow(3)", "allow(1)+inspect(1)"]
    assert matrix["lgwan-wan"] == ["deny", "allow(1)", "intra", "deny"]
    assert matrix["internet"] == ["NEVER", "inspect(1)", "deny", "intra"]
    assert "rules: 8 (8 compiled), profiles: mail" in out
    assert "198.18.30.0/24" in out
    assert any("screen-transfer exception" in ln for ln in lines)
    assert len(lines) <= 40  # one screen


def test_errors_go_to_stderr_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    code, out, err = run(path)
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f'{path}:17: rule "leak": allow mynumber zone "mynumber" -> internet zone "internet": '
        "mynumber <-> internet can never be opened (三層の対策)",
        f'{path}:25: rule "typo": unknown key "lgo" (did you mean "log"?)',
    ]


def test_missing_file_exit_2(tmp_path: Path) -> None:
    code, _, err = run(tmp_path / "nope.toml")
    assert code == 2 and "cannot read policy file" in err


def test_python_m_gateway_check_config(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LGWAN_GATEWAY_PURE_PYTHON": "1"}
    ok = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(LAB)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK ")
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD)
    ko = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert ko.returncode == 2 and ko.stdout == ""
    assert len(ko.stderr.splitlines()) == 2 and ko.stderr.startswith(f"{bad}:17: ")
