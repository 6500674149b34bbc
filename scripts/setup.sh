#!/usr/bin/env bash
# Set up a development/run environment on a fresh Debian 12 machine, as root. Idempotent: a second
# run installs nothing new and skips the build when its inputs have not changed.
#
#   sudo bash scripts/setup.sh
#
# Steps: Debian packages -> .venv (Debian's /usr/bin/python3, never a pyenv shim) -> editable
# install of the project with its dev extras, which compiles the Cython fast path in place
# (gateway/_fastpath*.so) -> check that the compiled module imports.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY=/usr/bin/python3
LOG="$(mktemp /tmp/lgwan-gateway-setup.XXXXXX.log)"
trap 'rm -f "$LOG"' EXIT

# Debian packages: compiler + headers for the Cython extension, netfilter for the daemon and its
# namespace tests, libmagic for file-type classification, tcpdump for captures.
APT_PACKAGES=(
    python3 python3-venv python3-dev gcc libc6-dev
    iptables libnetfilter-queue-dev iproute2 libmagic1 tcpdump
    nftables  # nft: the optional nftables rules backend (gateway/io/nftables.py) and its tests
    iperf3 sockperf build-essential libmnl-dev  # peers and the C NFQUEUE loops of bench/bench_live.py
    systemd  # systemd-analyze: the daemon tests verify systemd/lgwan-gateway.service offline
    clamav-daemon  # clamd: optional attachment scanning; tests/test_classify_scanners.py runs a real one
    shellcheck ruby vagrant vagrant-libvirt  # tests/test_vagrant_static.py (~17 MB; no libvirt daemon, no qemu)
    postfix  # smtp-sink/smtp-source: the fast SMTP peers of bench/bench_mail.py (the MTA itself stays unconfigured)
)

step() { printf '==> %s\n' "$*"; }
die() {
    printf 'setup.sh: ERROR: %s\n' "$*" >&2
    if [[ -s "$LOG" ]]; then
        printf -- '--- last lines of the log ---\n' >&2
        tail -n 40 "$LOG" >&2
    fi
    exit 1
}

# 1. Debian packages: apt-get update only when something is missing (it is the slow part).
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    [[ $EUID -eq 0 ]] || die "Debian packages missing (${missing[*]}); run as root: sudo bash scripts/setup.sh"
    step "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # postfix: "No configuration" writes no main.cf, so the host's MTA neither asks nor starts
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq >"$LOG" 2>&1 || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$LOG" 2>&1 || die "apt-get install failed"
else
    step "Debian packages present"
fi

# 2. The virtualenv, on Debian's python (the one python3-dev has headers for). Recreate it if it
# was made from another interpreter (e.g. a pyenv shim earlier on PATH).
if [[ -x "$VENV/bin/python" ]] && [[ "$("$VENV/bin/python" -c 'import sys; print(sys.base_prefix)' 2>/dev/null)" == /usr ]]; then
    step "virtualenv .venv present ($("$VENV/bin/python" --version))"
else
    step "creating .venv with $PY"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV" >"$LOG" 2>&1 || die "python3 -m venv failed"
fi

# 3. Editable install with dev extras; this runs setup.py, which cythonizes and compiles
# cython_ext/fastpath.pyx into gateway/_fastpath*.so. Skipped when nothing that affects the
# install changed since the last successful one and the compiled module still imports.
STAMP="$VENV/.lgwan-gateway-install.sha256"
inputs_hash() {
    cat pyproject.toml setup.py cython_ext/*.pyx cython_ext/*.pxd 2>/dev/null | sha256sum | cut -d' ' -f1
}
[[ -f cython_ext/fastpath.pyx ]] || die "cython_ext/fastpath.pyx is missing: the fast path cannot be built"
want="$(inputs_hash)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] &&
    "$VENV/bin/python" -c 'import gateway._fastpath' >/dev/null 2>&1 &&
    [[ -x "$VENV/bin/lgwan-gateway" ]]; then
    step "project already installed and built (inputs unchanged)"
else
    step "installing the project and dev tools into .venv (compiles the Cython fast path; ~1-2 min)"
    rm -f "$STAMP"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]' >"$LOG" 2>&1 ||
        die "pip install -e '.[dev]' failed (the Cython build is part of it)"
    echo "$want" >"$STAMP"
fi

# 4. Fail loudly if the compiled fast path is not importable: running the 30x slower reference
# by accident is not a fallback anyone wants.
"$VENV/bin/python" - >"$LOG" 2>&1 <<'EOF' || die "the compiled fast path gateway._fastpath does not import"
import gateway._fastpath as m
print(m.__file__)
EOF
step "fast path built: $(tail -n 1 "$LOG" | sed "s|$ROOT/||")"
step "setup done; activate with: source .venv/bin/activate"
