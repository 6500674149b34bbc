#!/usr/bin/env bash
# The one test command (CI runs exactly this):
#
#   sudo bash scripts/test.sh [extra pytest args]
#
# set up (scripts/setup.sh) -> ruff check -> ruff format --check -> mypy (strict, config in
# pyproject.toml) -> pytest over tests/. The suite parametrizes itself over both engine
# implementations, so one pytest run covers the Cython fast path and the pure-Python reference.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh

BIN="$ROOT/.venv/bin"
step() { printf '==> %s\n' "$*"; }

step "ruff check"
"$BIN/ruff" check --quiet .
step "ruff format --check"
# Python files only: ruff also formats code blocks in Markdown, where aligned comments are wanted.
"$BIN/ruff" format --check --quiet --extend-exclude '*.md' .
step "mypy (strict)"
"$BIN/mypy" --no-error-summary
step "pytest"
# No test collected (exit 5) means a broken suite or a wrong path: treat it as a failure.
set +e
"$BIN/python" -m pytest -q "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
    echo "test.sh: ERROR: pytest collected no tests" >&2
    exit 1
fi
# The VM test (docs/vagrant.md): the systemd unit under real systemd in a qemu VM, ~3 min (~5 min
# on the first run, which builds the cached image). CI runs it; elsewhere LGWAN_VM_TEST=1 does.
if [[ $rc -eq 0 && "${LGWAN_VM_TEST:-$([[ -n "${CI:-}" ]] && echo 1 || echo 0)}" == 1 ]]; then
    step "VM test (vagrant/vm-test.sh)"
    bash vagrant/vm-test.sh || rc=$?
fi
exit $rc
