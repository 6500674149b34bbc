"""`lgwan-gateway quarantine ...` through a real subprocess: output, files and exit codes
(0 ok, 1 not found / tampered / refused / verify problems, 2 usage)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.io.quarantine import QuarantineStore
from gateway.io.quarantine_cli import parse_when

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LGWAN_GATEWAY_QUARANTINE_DIR"}
    if env_dir is not None:
        env["LGWAN_GATEWAY_QUARANTINE_DIR"] = str(env_dir)
    return subprocess.run(
        [sys.executable, "-m", "gateway", "quarantine", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )


@pytest.fixture
def filled(tmp_path: Path) -> tuple[Path, list[str]]:
    from test_quarantine import meta

    root = tmp_path / "q"
    store = QuarantineStore(root)
    ids = [
        store.put(b"MZ evil", meta()),
        store.put(b"PK macro", meta(reason="macro", mail_from="suzuki@example.net", filename="報告書.docm")),
        store.put(b"whole message", meta(kind="message", action="refused", reason="encrypted", filename=None)),
    ]
    return root, ids


def test_list_table_and_json(filled: tuple[Path, list[str]]) -> None:
    root, ids = filled
    r = cli("--dir", str(root), "list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ids
    assert "報告書.docm" in lines[1] and "\tmacro\t" in lines[1]
    r = cli("--dir", str(root), "list", "--json", "--reason", "macro")
    (entry,) = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert entry["id"] == ids[1] and entry["mail_from"] == "suzuki@example.net" and entry["filename"] == "報告書.docm"
    assert entry["flow"]["src_ip"] == "198.19.40.25" and len(entry["sha256"]) == 64
    assert cli("--dir", str(root), "list", "--since", "1h", "--kind", "message").stdout.split("\t")[0] == ids[2]
    assert cli("--dir", str(root), "list", "--since", "2999-01-01").stdout == ""
    assert cli("list", env_dir=root).stdout.splitlines() == lines  # directory from the environment


def test_show(filled: tuple[Path, list[str]]) -> None:
    root, ids = filled
    r = cli("--dir", str(root), "show", ids[0])
    assert r.returncode == 0
    d = json.loads(r.stdout)
    assert d["id"] == ids[0] and d["releases"] == [] and d["filename"] == "請求書.pdf.exe"
    assert d["hold_until"] < d["expires"]
    r = cli("--dir", str(root), "show", "20261126T165659Z-000000000000")
    assert r.returncode == 1 and "no quarantine entry" in r.stderr
    assert cli("--dir", str(root), "show", "../../etc/passwd").returncode == 1


def test_export_release_two_person_rule(filled: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, ids = filled
    out = tmp_path / "out.bin"
    r = cli("--dir", str(root), "export", ids[0], "--out", str(out), "--requested-by", "yamada")
    assert r.returncode == 2 and "--approved-by" in r.stderr and not out.exists()
    r = cli(
        "--dir", str(root), "release", ids[0], "--out", str(out), "--requested-by", "yamada", "--approved-by", "yamada"
    )
    assert r.returncode == 1 and "two-person" in r.stderr and not out.exists()
    r = cli(
        "--dir", str(root), "export", ids[0], "--out", str(out),
        "--requested-by", "yamada", "--approved-by", "sato", "--note", "チケット 42",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == b"MZ evil" and ids[0] in r.stdout
    r = cli("--dir", str(root), "export", ids[0], "--out", str(out), "--requested-by", "a", "--approved-by", "b")
    assert r.returncode == 1 and "exists" in r.stderr
    out2 = tmp_path / "single.bin"
    r = cli("--dir", str(root), "release", ids[1], "--out", str(out2), "--requested-by", "yamada", "--force-single")
    assert r.returncode == 0 and out2.read_bytes() == b"PK macro"
    rel = json.loads(cli("--dir", str(root), "show", ids[0]).stdout)["releases"]
    assert [(x["requested_by"], x["approved_by"], x["note"]) for x in rel] == [("yamada", "sato", "チケット 42")]
    rel = json.loads(cli("--dir", str(root), "show", ids[1]).stdout)["releases"]
    assert rel[0]["single_person"] is True


def test_verify_ok_then_tampered(filled: tuple[Path, list[str]]) -> None:
    root, ids = filled
    r = cli("--dir", str(root), "verify")
    assert r.returncode == 0 and "3 entries checked" in r.stdout and "audit chain ok" in r.stdout
    (orig,) = root.glob(f"*/*/*/{ids[1]}.orig")
    data = bytearray(orig.read_bytes())
    data[0] ^= 0x20
    orig.write_bytes(bytes(data))
    r = cli("--dir", str(root), "verify", "--json")
    assert r.returncode == 1
    res = json.loads(r.stdout)
    assert not res["ok"] and len(res["problems"]) == 1 and ids[1] in res["problems"][0]
    r = cli("--dir", str(root), "export", ids[1], "--out", str(root / "x"), "--requested-by", "a", "--approved-by", "b")
    assert r.returncode == 1 and "SHA-256" in r.stderr


def test_verify_reports_the_broken_audit_line(filled: tuple[Path, list[str]]) -> None:
    root, _ = filled
    (log,) = (root / "audit").glob("*.jsonl")
    lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[1] = lines[1].replace('"reason":"macro"', '"reason":"clean"')
    log.write_text("".join(lines), encoding="utf-8")
    r = cli("--dir", str(root), "verify")
    assert r.returncode == 1 and f"{log.name}:2:" in r.stdout


def test_purge_and_recover(filled: tuple[Path, list[str]]) -> None:
    root, ids = filled
    r = cli("--dir", str(root), "purge")
    assert r.returncode == 0 and r.stdout == ""
    r = cli("--dir", str(root), "purge", "--now", "2999-01-01")
    assert r.returncode == 0 and r.stdout.split() == [w for i in ids for w in ("purged", i)]
    assert cli("--dir", str(root), "list").stdout == ""
    assert cli("--dir", str(root), "verify").returncode == 0
    r = cli("--dir", str(root), "recover")
    assert r.returncode == 0 and json.loads(r.stdout) == {"removed": [], "audited": []}


def test_usage_errors_and_missing_store(tmp_path: Path) -> None:
    assert cli("--dir", str(tmp_path), "bogus").returncode == 2
    assert cli("--dir", str(tmp_path), "list", "--since", "yesterday-ish").returncode == 2
    assert cli("--dir", str(tmp_path), "export", "x").returncode == 2  # --out, --requested-by missing
    assert cli().returncode == 2
    r = cli("--dir", str(tmp_path / "nope"), "list")
    assert r.returncode == 1 and "no store" in r.stderr and not (tmp_path / "nope").exists()


def test_parse_when() -> None:
    assert parse_when("2d", now=1000000.0) == 1000000.0 - 2 * 86400
    assert parse_when("30m", now=1000.0) == 1000.0 - 1800
    assert parse_when("2026-11-26") == parse_when("2026-11-26T00:00:00Z")
    assert parse_when("2026-11-26T09:00+09:00") == parse_when("2026-11-26T00:00Z")
