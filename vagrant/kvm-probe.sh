#!/usr/bin/env bash
# Print "kvm" if KVM really runs a guest here, else "qemu" (software emulation). An openable
# /dev/kvm is not enough: on some nested hosts guests hang before their kernel starts. So boot a
# Debian kernel under KVM for a few seconds and look for its first console line. The answer is
# cached in $LGWAN_CACHE/kvm-probe (per host kernel); delete the file to probe again.
set -euo pipefail
CACHE="${LGWAN_CACHE:-/var/cache/lgwan-gateway}"
KEY="$(uname -r)"
if [[ ! -w /dev/kvm ]]; then
    echo qemu
    exit 0
fi
if [[ -f "$CACHE/kvm-probe" ]] && read -r k v <"$CACHE/kvm-probe" && [[ "$k" == "$KEY" ]]; then
    echo "$v"
    exit 0
fi
kernel="$(find "$CACHE/rootfs/boot" /boot -maxdepth 1 -name 'vmlinuz-*' 2>/dev/null | sort -V | tail -n1 || true)"
answer=qemu
if [[ -n "$kernel" ]] && command -v qemu-system-x86_64 >/dev/null; then
    out="$(timeout 20 qemu-system-x86_64 -accel kvm -cpu host -m 256 -nographic -nodefaults -no-reboot \
        -serial stdio -kernel "$kernel" -append 'console=ttyS0 panic=-1' 2>/dev/null | head -c 65536 || true)"
    # "Linux version" is printed by the kernel itself: the guest got past the hang point
    grep -q 'Linux version' <<<"$out" && answer=kvm
fi
if mkdir -p "$CACHE" 2>/dev/null; then
    echo "$KEY $answer" >"$CACHE/kvm-probe" 2>/dev/null || true # not root: probe again next time
fi
echo "$answer"
