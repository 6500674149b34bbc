# shellcheck shell=bash
# Shared by gateway.sh and host.sh (sourced; runs inside a VM as root). The repository is at $SRC
# (/vagrant: Vagrant's rsync folder, or the copy vm-test.sh uploads).
set -euo pipefail

SRC="${LGWAN_SRC:-/vagrant}"
OPT=/opt/lgwan-gateway
VENV="$OPT/.venv"
BOX_WHEELS=/var/cache/lgwan-gateway/wheels # dependency wheels baked into the box by build-box.sh
HOST_WHEELS="$SRC/vagrant/.wheelhouse"     # the project's wheel, built by provision/host-wheel.sh
export DEBIAN_FRONTEND=noninteractive

step() { printf '==> [%s] %s\n' "$(hostname)" "$*"; }
die() {
    printf 'provision: ERROR: %s\n' "$*" >&2
    exit 1
}

# The package into /opt/lgwan-gateway/.venv, the path systemd/lgwan-gateway.service runs. Offline
# with the local box (wheels baked in); with a public box (debian/bookworm64) from Debian and PyPI.
install_package() {
    [[ -f "$SRC/pyproject.toml" ]] || die "$SRC is not the repository (synced folder missing?)"
    step "copying $SRC to $OPT"
    mkdir -p "$OPT"
    rsync -a --delete --exclude=.venv/ --exclude=.git/ --exclude=vagrant/.wheelhouse/ --exclude=__pycache__/ \
        "$SRC/" "$OPT/"
    local pip_src=(--no-index --find-links "$BOX_WHEELS")
    if [[ ! -d "$BOX_WHEELS" ]]; then
        step "no baked wheels (public box): installing Debian packages, then pip from the index"
        # the list of scripts/setup.sh: build tools and netfilter headers for the Cython extensions
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends python3-venv python3-dev gcc libc6-dev \
            iptables libnetfilter-queue-dev iproute2 libmagic1 tcpdump rsync >/dev/null
        pip_src=()
    fi
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    local wheel
    wheel="$(find "$HOST_WHEELS" -maxdepth 1 -name 'lgwan_gateway-*.whl' 2>/dev/null | head -n1)"
    if [[ -n "$wheel" ]]; then
        step "pip install $(basename "$wheel") (built on the host)"
        "$VENV/bin/pip" install -q --disable-pip-version-check "${pip_src[@]}" "$wheel"
        # same version number on every build: force the project itself, not its dependencies
        "$VENV/bin/pip" install -q --disable-pip-version-check --no-index --no-deps --force-reinstall "$wheel"
    else
        step "pip install $OPT (compiles the Cython fast path in the VM: minutes under emulation)"
        "$VENV/bin/pip" install -q --disable-pip-version-check "${pip_src[@]}" "$OPT"
    fi
    "$VENV/bin/python" -c 'import gateway._fastpath, gateway._nfq' || die "the compiled modules do not import"
}
