#!/usr/bin/env bash
# VM test: lgwan-gateway.service under real systemd (PID 1 in a Debian 12 VM), deciding real lab
# traffic. The host has no usable systemd or KVM, so: plain qemu (-accel tcg unless kvm-probe.sh
# finds KVM working) on the image of build-box.sh (cached under /var/cache/lgwan-gateway), a
# throw-away overlay disk, user-mode networking restricted to the VM (198.19.252.0/24, no route out),
# then vm-test-guest.sh inside over ssh. Vagrant is not needed (it is slower and adds nothing here).
#
#   sudo bash vagrant/vm-test.sh            # build/reuse the image, boot, test, power off
#   sudo bash vagrant/vm-test.sh --keep     # leave the VM running afterwards (ssh command printed)
#
# scripts/test.sh runs it when LGWAN_VM_TEST=1 (README: "VM test"). Timings go to stdout at the end.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LGWAN_CACHE:-/var/cache/lgwan-gateway}"
IMG="$CACHE/box/box.img"
KEY="$CACHE/box/id_ed25519"
MEM="${LGWAN_VM_MEM:-1536}"
BOOT_TIMEOUT="${LGWAN_VM_BOOT_TIMEOUT:-600}"
keep=0
[[ "${1:-}" == --keep ]] && keep=1

[[ $EUID -eq 0 ]] || {
    echo "vm-test.sh: run as root (the image build uses debootstrap and a loop mount)" >&2
    exit 2
}
T0=$SECONDS
declare -A took
step() { printf '==> [vm-test %4ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() {
    printf 'vm-test.sh: ERROR: %s\n' "$*" >&2
    exit 1
}
for tool in qemu-system-x86_64 qemu-img ssh; do
    command -v "$tool" >/dev/null || missing=1
done
if [[ -n "${missing:-}" ]]; then
    step "installing qemu-system-x86 qemu-utils openssh-client"
    export DEBIAN_FRONTEND=noninteractive
    pkgs=(qemu-system-x86 qemu-utils openssh-client)
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null; } ||
        die "apt-get install ${pkgs[*]} failed"
fi

# 1. image (debootstrap only on the first run) and the project's wheel
t=$SECONDS
bash "$ROOT/vagrant/build-box.sh" --image-only
bash "$ROOT/vagrant/provision/host-wheel.sh"
took[build]=$((SECONDS - t))

# 2. boot an overlay of the image
WORK="$(mktemp -d /tmp/lgwan-vm-test.XXXXXX)"
QEMU_PID=""
rc=1
cleanup() {
    if ((keep)) && [[ -n "$QEMU_PID" ]]; then
        step "VM left running (pid $QEMU_PID): ssh -i $KEY -p $PORT vagrant@127.0.0.1; serial log $WORK/serial.log"
        return
    fi
    if [[ -n "$QEMU_PID" ]] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill "$QEMU_PID" 2>/dev/null || true
        wait "$QEMU_PID" 2>/dev/null || true
    fi
    # keep the logs of a failed run for reading; a passing run leaves nothing behind
    if ((rc == 0)); then rm -rf "$WORK"; else rm -f "$WORK/disk.qcow2"; fi
}
trap cleanup EXIT
qemu-img create -q -f qcow2 -b "$IMG" -F qcow2 "$WORK/disk.qcow2"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
ACCEL="${LGWAN_VM_ACCEL:-$([[ "$(bash "$ROOT/vagrant/kvm-probe.sh")" == kvm ]] && echo kvm || echo tcg)}"
CPU=max
[[ "$ACCEL" == kvm ]] && CPU=host
step "booting the VM (qemu -accel $ACCEL, ${MEM} MiB, 2 vCPUs; serial log $WORK/serial.log)"
t=$SECONDS
# restrict=on: the guest reaches nothing outside the VM; only the forwarded ssh port comes in
qemu-system-x86_64 -accel "$ACCEL" -cpu "$CPU" -m "$MEM" -smp 2 -nographic -nodefaults \
    -serial "file:$WORK/serial.log" -monitor none \
    -drive "file=$WORK/disk.qcow2,if=virtio,cache=unsafe" \
    -netdev "user,id=n0,restrict=on,net=198.19.252.0/24,host=198.19.252.2,hostfwd=tcp:127.0.0.1:$PORT-:22" \
    -device virtio-net-pci,netdev=n0 >"$WORK/qemu.log" 2>&1 &
QEMU_PID=$!
SSH=(ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=5
    -o BatchMode=yes -i "$KEY" -p "$PORT" vagrant@127.0.0.1)
until "${SSH[@]}" true 2>/dev/null; do
    kill -0 "$QEMU_PID" 2>/dev/null || {
        cat "$WORK/qemu.log" >&2
        die "qemu exited during boot"
    }
    ((SECONDS - t < BOOT_TIMEOUT)) || {
        tail -n 30 "$WORK/serial.log" >&2
        die "no ssh after ${BOOT_TIMEOUT} s"
    }
    sleep 2
done
took[boot]=$((SECONDS - t))
step "ssh up after ${took[boot]} s ($("${SSH[@]}" systemd-analyze 2>/dev/null | head -n1))"

# 3. the repository to /vagrant (where Vagrant's rsync folder puts it), the project wheel included
t=$SECONDS
(cd "$ROOT" && tar -cf - --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./out \
    --exclude=./bench/out --exclude='*.so' --exclude='*.c' --exclude=__pycache__ --exclude=./vagrant/.vagrant \
    --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache --exclude=.hypothesis .) |
    "${SSH[@]}" 'sudo rm -rf /vagrant && sudo mkdir /vagrant && sudo tar -C /vagrant -xf -'
rc=0
"${SSH[@]}" "sudo LGWAN_VM_TEST_STRICT_INSPECT=${LGWAN_VM_TEST_STRICT_INSPECT:-1} bash /vagrant/vagrant/vm-test-guest.sh" || rc=$?
took[test]=$((SECONDS - t))
if ((rc != 0)); then
    "${SSH[@]}" 'sudo journalctl -u lgwan-gateway --no-pager | tail -n 60' >"$WORK/journal.log" 2>&1 || true
    step "journal of lgwan-gateway: $WORK/journal.log; serial console: $WORK/serial.log"
fi
((keep)) || "${SSH[@]}" 'sudo systemctl poweroff' >/dev/null 2>&1 || true
step "timings: image+wheel ${took[build]} s, boot to ssh ${took[boot]} s, provision+test ${took[test]} s, total $((SECONDS - T0)) s (accel $ACCEL)"
if ((rc != 0)); then
    die "the VM test failed (exit $rc)"
fi
step "VM test passed"
