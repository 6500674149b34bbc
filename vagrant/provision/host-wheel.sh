#!/usr/bin/env bash
# On the machine that runs vagrant (or vm-test.sh): build the project's wheel into
# vagrant/.wheelhouse/ with the project's .venv (Debian 12 / CPython 3.11 / x86_64 = the box's ABI),
# so the VMs install it instead of compiling the Cython fast path under emulation. Idempotent and
# cheap when the sources did not change (a hash of them is kept beside the wheel); serialized with
# flock because Vagrant runs this trigger once per machine, in parallel.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="$ROOT/vagrant/.wheelhouse"
PY="$ROOT/.venv/bin/python"
if [[ "$(uname -s)" != Linux || ! -x "$PY" ]]; then
    echo "host-wheel.sh: no $PY here: the VMs build the package from the synced source" >&2
    exit 0
fi
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9

# inputs: everything that ends up in the wheel
want="$(cd "$ROOT" && find pyproject.toml setup.py cython_ext gateway -type f \
    \( -name '*.py' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.pyi' -o -name '*.toml' -o -name '*.json' -o -name py.typed \) \
    -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"
if [[ -f "$OUT/.stamp" && "$(cat "$OUT/.stamp")" == "$want" ]] && compgen -G "$OUT/lgwan_gateway-*.whl" >/dev/null; then
    exit 0
fi
rm -f "$OUT"/lgwan_gateway-*.whl "$OUT/.stamp"
# Built from a copy: an in-tree build would write build/ and cython_ext/*.c, which the developers'
# editable install (scripts/setup.sh) uses at the same time. Build isolation fetches setuptools,
# wheel and Cython from the configured index.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$ROOT" && tar -cf - --exclude=__pycache__ --exclude='*.so' --exclude='*.c' \
    pyproject.toml setup.py README.md cython_ext gateway) | tar -C "$tmp" -xf -
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$OUT" "$tmp" >"$OUT/build.log" 2>&1 || {
    tail -n 30 "$OUT/build.log" >&2
    exit 1
}
echo "$want" >"$OUT/.stamp"
echo "host-wheel.sh: built $(basename "$OUT"/lgwan_gateway-*.whl)"
