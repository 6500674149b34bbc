#!/usr/bin/env bash
# Build a local Debian 12 (bookworm) base box from Debian packages, for machines that cannot
# download one (where downloads work, `LGWAN_BOX=debian/bookworm64` uses the public box instead).
#
#   sudo bash vagrant/build-box.sh                # image + `vagrant box add` (if vagrant is installed)
#   sudo bash vagrant/build-box.sh --image-only   # just the qcow2 (what vagrant/vm-test.sh boots)
#   sudo bash vagrant/build-box.sh --rebuild      # also redo debootstrap
#
# Stages, each cached under $LGWAN_CACHE (default /var/cache/lgwan-gateway), so a rerun only
# redoes what changed:
#   1. debootstrap bookworm into rootfs/ from the configured Debian mirror, with every package the
#      provisioning needs (the VMs then need no network at all)            ~2-3 min, cached
#   2. customize: vagrant user + keys, sudo, sshd, fstab, network, extlinux config, Python wheels
#      of the project's dependencies (so pip needs no index in the VM)      seconds
#   3. disk image: MBR + one ext4 partition written with `mke2fs -d` (no loop partition nodes are
#      needed, which containers often lack), extlinux as the boot loader (it installs on a mounted
#      file system; grub-install would need the whole disk as a block device) -> box/box.img (qcow2)
#   4. box/lgwan-bookworm64.box (libvirt provider) + `vagrant box add`
#
# Why extlinux and direct UUIDs: the image must boot the same under vm-test.sh's plain qemu, under
# libvirt, with any disk bus that shows up as /dev/vda or /dev/sda.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LGWAN_CACHE:-/var/cache/lgwan-gateway}"
BOX_NAME="${LGWAN_BOX_NAME:-lgwan-gateway/bookworm64}"
SUITE=bookworm
DISK_GIB=4
# fixed, so the boot config and fstab need not be rewritten per build (one VM disk per VM anyway)
ROOT_UUID=6c6e7761-6e2d-4761-7465-776179000001

# Everything provisioning (vagrant/provision/*.sh) and the VM test need, installed at build time.
# Keep in step with scripts/setup.sh: tests/test_vagrant_static.py checks its libraries and tools are here.
BOX_PACKAGES=(
    linux-image-amd64 systemd-sysv udev kmod dbus openssh-server sudo rsync ifupdown isc-dhcp-client
    python3 python3-venv python3-dev python3-pip gcc libc6-dev
    iptables libnetfilter-queue-dev libmnl-dev iproute2 libmagic1 tcpdump
    systemd procps iputils-ping netcat-openbsd curl ca-certificates less
)
# Build-time tools on this machine (not in scripts/setup.sh: only this script needs them).
HOST_PACKAGES=(debootstrap qemu-utils fdisk extlinux syslinux-common e2fsprogs openssh-client)

image_only=0
rebuild=0
for arg in "$@"; do
    case "$arg" in
        --image-only) image_only=1 ;;
        --rebuild) rebuild=1 ;;
        -h | --help)
            sed -n '2,22p' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        *)
            echo "build-box.sh: unknown argument $arg" >&2
            exit 2
            ;;
    esac
done

step() { printf '==> [%s] %s\n' "$(date +%T)" "$*"; }
die() {
    printf 'build-box.sh: ERROR: %s\n' "$*" >&2
    exit 1
}
[[ $EUID -eq 0 ]] || die "run as root (debootstrap, chroot, loop mount)"

# The mirror apt already uses here (deb822 or one-line format); debootstrap fetches from it.
debian_mirror() {
    local m
    m="$(grep -hoE '^URIs:[[:space:]]*[^[:space:]]+/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '{print $2}' | head -n1 || true)"
    if [[ -z "$m" ]]; then
        m="$(grep -hoE '^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?[^[:space:]]+/debian/?[[:space:]]' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk '{print $NF}' | head -n1 || true)"
    fi
    echo "${LGWAN_DEBIAN_MIRROR:-${m:-http://deb.debian.org/debian}}"
}

missing=()
for pkg in "${HOST_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
    step "installing build tools: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # retry after an update: a fresh machine may have no package lists yet
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } ||
        die "apt-get install ${missing[*]} failed"
fi

mkdir -p "$CACHE/box"
# one build at a time on this machine (CI runs of several checkouts share the cache)
exec 8>"$CACHE/.build.lock"
flock 8
ROOTFS="$CACHE/rootfs"
MIRROR="$(debian_mirror)"

# --- 1. debootstrap (cached: keyed by suite, mirror and package list) ---------------------------
want="$(printf '%s\n' "$SUITE" "$MIRROR" "${BOX_PACKAGES[@]}" | sha256sum | cut -c1-16)"
if ((rebuild == 0)) && [[ -f "$CACHE/rootfs.stamp" && "$(cat "$CACHE/rootfs.stamp")" == "$want" ]]; then
    step "rootfs cached ($ROOTFS)"
else
    step "debootstrap $SUITE from $MIRROR (~2-3 min)"
    rm -rf "$ROOTFS.tmp" "$CACHE/rootfs.stamp"
    include="$(
        IFS=,
        echo "${BOX_PACKAGES[*]}"
    )"
    debootstrap --variant=minbase --include="$include" "$SUITE" "$ROOTFS.tmp" "$MIRROR" \
        >"$CACHE/debootstrap.log" 2>&1 || die "debootstrap failed; see $CACHE/debootstrap.log"
    chroot "$ROOTFS.tmp" apt-get clean
    rm -rf "$ROOTFS"
    mv "$ROOTFS.tmp" "$ROOTFS"
    echo "$want" >"$CACHE/rootfs.stamp"
fi

# stages 2-3 again only when their inputs changed: this script, the keys, the dependencies, rootfs
RAW="$CACHE/box/box.raw"
IMG="$CACHE/box/box.img"
img_want="$(cat "${BASH_SOURCE[0]}" "$ROOT/vagrant/keys/vagrant-insecure.pub" "$ROOT/pyproject.toml" \
    "$CACHE/rootfs.stamp" | sha256sum | cut -c1-16)"
if ((rebuild == 0)) && [[ -f "$IMG" && -f "$CACHE/box/box.img.stamp" && "$(cat "$CACHE/box/box.img.stamp")" == "$img_want" ]]; then
    step "image cached ($IMG)"
    ((image_only)) && exit 0
    skip_image=1
else
    skip_image=0
fi

if ((skip_image == 0)); then
# --- 2. customize (idempotent; cheap) ------------------------------------------------------------
step "customizing the root file system"
echo lgwan-box >"$ROOTFS/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tlgwan-box\n' >"$ROOTFS/etc/hosts"
echo "UUID=$ROOT_UUID / ext4 errors=remount-ro 0 1" >"$ROOTFS/etc/fstab"
# eth0 is the management NIC (vagrant's NAT/management network, or vm-test's user network); vagrant
# configures the private networks itself. net.ifnames=0 below keeps the names eth0, eth1, ...
cat >"$ROOTFS/etc/network/interfaces" <<'EOF'
auto lo
iface lo inet loopback

allow-hotplug eth0
iface eth0 inet dhcp
EOF
if ! chroot "$ROOTFS" id vagrant >/dev/null 2>&1; then
    chroot "$ROOTFS" useradd --create-home --shell /bin/bash --uid 1000 --user-group vagrant
fi
echo 'vagrant:vagrant' | chroot "$ROOTFS" chpasswd # the box convention; sshd refuses passwords below
echo 'vagrant ALL=(ALL) NOPASSWD:ALL' >"$ROOTFS/etc/sudoers.d/vagrant"
chmod 0440 "$ROOTFS/etc/sudoers.d/vagrant"
# Keys: the well-known insecure vagrant key (every public box has it; `vagrant up` replaces it with
# a fresh key pair at first boot) and a key generated on this machine for vm-test.sh, which does
# not use vagrant. The insecure key's public half is shipped in vagrant/keys/; nothing private is.
KEY="$CACHE/box/id_ed25519"
[[ -f "$KEY" ]] || ssh-keygen -q -t ed25519 -N '' -C lgwan-vm-test -f "$KEY"
install -d -m 0700 -o 1000 -g 1000 "$ROOTFS/home/vagrant/.ssh"
cat "$ROOT/vagrant/keys/vagrant-insecure.pub" "$KEY.pub" >"$ROOTFS/home/vagrant/.ssh/authorized_keys"
chown 1000:1000 "$ROOTFS/home/vagrant/.ssh/authorized_keys"
chmod 0600 "$ROOTFS/home/vagrant/.ssh/authorized_keys"
cat >"$ROOTFS/etc/ssh/sshd_config.d/lgwan-box.conf" <<'EOF'
# keys only; no reverse DNS (the VMs have no resolver): a login must not wait for it
PasswordAuthentication no
UseDNS no
EOF
# sshd host keys are made at build time (ssh-keygen -A); a box is a lab machine, not a product
chroot "$ROOTFS" ssh-keygen -A >/dev/null
# journald to the serial console too: vm-test.sh keeps it as the boot log
mkdir -p "$ROOTFS/etc/systemd/journald.conf.d"
printf '[Journal]\nForwardToConsole=no\nStorage=volatile\n' >"$ROOTFS/etc/systemd/journald.conf.d/lgwan-box.conf"
# no getty on tty1..6 under a headless VM; keep the serial getty for debugging
chroot "$ROOTFS" systemctl mask getty@tty1.service >/dev/null 2>&1 || true
# the wheels of the project's runtime and build dependencies (PyPI, fetched here on the host, same
# Python 3.11 / x86_64 ABI as the guest): provisioning installs with pip --no-index
step "dependency wheels -> /var/cache/lgwan-gateway/wheels in the image"
WHEELS="$ROOTFS/var/cache/lgwan-gateway/wheels"
mkdir -p "$WHEELS"
PIP=("$ROOT/.venv/bin/python" -m pip)
[[ -x "$ROOT/.venv/bin/python" ]] || PIP=(python3 -m pip)
mapfile -t reqs < <("${PIP[0]}" -c 'import tomllib
p = tomllib.load(open("'"$ROOT"'/pyproject.toml", "rb"))
print("\n".join([*p["project"]["dependencies"], *p["build-system"]["requires"]]))')
"${PIP[@]}" wheel -q --disable-pip-version-check -w "$WHEELS" "${reqs[@]}" >/dev/null 2>&1 ||
    die "pip wheel of the dependencies failed: ${reqs[*]}"

KVER="$(find "$ROOTFS/boot" -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -n1)"
[[ -n "$KVER" && -f "$ROOTFS/boot/initrd.img-$KVER" ]] || die "no kernel/initrd in $ROOTFS/boot"
mkdir -p "$ROOTFS/boot/extlinux"
cat >"$ROOTFS/boot/extlinux/extlinux.conf" <<EOF
DEFAULT linux
TIMEOUT 0
PROMPT 0
LABEL linux
  LINUX /boot/vmlinuz-$KVER
  INITRD /boot/initrd.img-$KVER
  APPEND root=UUID=$ROOT_UUID ro console=ttyS0,115200 net.ifnames=0 biosdevname=0 quiet
EOF

# --- 3. disk image ------------------------------------------------------------------------------
step "disk image (${DISK_GIB} GiB sparse, ext4 via mke2fs -d, extlinux)"
rm -f "$RAW"
truncate -s "${DISK_GIB}G" "$RAW"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$RAW"
part_bytes=$(((DISK_GIB * 1024 * 1024 - 1024) * 1024))
# -E offset: write the file system into the partition of the disk file directly
mke2fs -q -t ext4 -U "$ROOT_UUID" -L lgwan-root -d "$ROOTFS" -E offset=1048576 "$RAW" "$((part_bytes / 1024))k" ||
    die "mke2fs -d failed"
MNT="$(mktemp -d)"
LOOP="$(losetup -f --show -o 1048576 --sizelimit "$part_bytes" "$RAW")"
cleanup() {
    umount "$MNT" 2>/dev/null || true
    losetup -d "$LOOP" 2>/dev/null || true
    rmdir "$MNT" 2>/dev/null || true
}
trap cleanup EXIT
mount "$LOOP" "$MNT"
extlinux --install "$MNT/boot/extlinux" >/dev/null 2>&1 || die "extlinux --install failed"
cleanup
trap - EXIT
dd if=/usr/lib/EXTLINUX/mbr.bin of="$RAW" bs=440 count=1 conv=notrunc status=none
qemu-img convert -O qcow2 "$RAW" "$IMG.tmp"
mv "$IMG.tmp" "$IMG"
rm -f "$RAW"
echo "$img_want" >"$CACHE/box/box.img.stamp"
fi # skip_image
KEY="$CACHE/box/id_ed25519"
step "image: $IMG ($(du -h "$IMG" | cut -f1) used), ssh key for vm-test.sh: $KEY"
((image_only)) && exit 0

# --- 4. box + vagrant box add ---------------------------------------------------------------------
BOX="$CACHE/box/lgwan-bookworm64.box"
vsize=$DISK_GIB
tmpd="$(mktemp -d)"
ln "$IMG" "$tmpd/box.img" 2>/dev/null || cp "$IMG" "$tmpd/box.img"
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' "$vsize" >"$tmpd/metadata.json"
cat >"$tmpd/Vagrantfile" <<'EOF'
# box defaults; the project's vagrant/Vagrantfile overrides the driver (kvm or qemu)
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
  end
end
EOF
step "packing $BOX"
tar -C "$tmpd" -cf "$BOX" metadata.json Vagrantfile box.img
rm -rf "$tmpd"
if command -v vagrant >/dev/null; then
    step "vagrant box add --name $BOX_NAME"
    vagrant box add --force --name "$BOX_NAME" "$BOX" >/dev/null || die "vagrant box add failed"
    step "box $BOX_NAME added (vagrant box list: $(vagrant box list | grep -c "$BOX_NAME") entry)"
else
    step "vagrant not installed: add later with: vagrant box add --name $BOX_NAME $BOX"
fi
