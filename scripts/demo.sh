#!/usr/bin/env bash
# The main job on the built-in lab, from a fresh Debian 12 machine:
#
#   sudo bash scripts/demo.sh [--out-dir DIR] [--seed N] [--json FILE]
#
# Sets up (scripts/setup.sh), then `lgwan-gateway demo`: synthesizes lab traffic between every
# pair of zones, replays it through the compiled engine with configs/lab.toml and prints per zone
# pair and traffic case what passed and what was blocked (with rule ids), and where the output
# capture and event log are (out/demo/ by default). Exit status 1 if a case differs from the policy.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
echo "==> lgwan-gateway demo"
exec "$ROOT/.venv/bin/lgwan-gateway" demo --config configs/lab.toml "$@"
