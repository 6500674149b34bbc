#!/usr/bin/env bash
# `vagrant up` of the multi-VM lab on a Debian 12 machine without downloadable boxes or usable KVM:
# installs vagrant + vagrant-libvirt + libvirt (qemu driver) if missing, starts libvirtd/virtlogd
# when they are not running (also where systemd is not PID 1), builds and adds the local box, brings
# the VMs up, then checks a few flows across the gateway VM. Prints the time of each step.
#
#   sudo bash vagrant/lab-up.sh             # up + checks (LGWAN_VAGRANT_HOSTS as in the Vagrantfile)
#   sudo bash vagrant/lab-up.sh --check     # only the checks, on a lab that is up
#   cd vagrant && sudo vagrant destroy -f   # remove the VMs
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/vagrant"
export VAGRANT_DEFAULT_PROVIDER=libvirt
PACKAGES=(vagrant vagrant-libvirt libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients dnsmasq-base
    qemu-system-x86 qemu-utils rsync)
T0=$SECONDS
step() { printf '==> [lab-up %4ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() {
    printf 'lab-up.sh: ERROR: %s\n' "$*" >&2
    exit 1
}
[[ $EUID -eq 0 ]] || die "run as root (libvirt system instance, box build)"

check_only=0
[[ "${1:-}" == --check ]] && check_only=1

# A flow from a host VM across the gateway VM: the peer's first bytes, or nothing when blocked.
flow() { # flow SRC_VM DST_ADDR PORT EXPECT(pass|block)
    local got
    got="$(vagrant ssh "$1" -c "timeout 3 bash -c 'exec 3<>/dev/tcp/$2/$3 && head -c 24 <&3' 2>/dev/null | tr -d '\r\n'" \
        2>/dev/null || true)"
    local seen=block
    [[ -n "$got" ]] && seen=pass
    printf '    %-18s -> %-15s tcp/%-4s expected %-5s seen %-5s %s %s\n' "$1" "$2" "$3" "$4" "$seen" \
        "$([[ $seen == "$4" ]] && echo ok || echo BAD)" "$got"
    [[ $seen == "$4" ]]
}
checks() {
    step "flows across the gateway VM (configs/lab.toml)"
    local bad=0 running
    running="$(vagrant status --machine-readable | awk -F, '$3=="state" && $4=="running" {print $2}')"
    has() { grep -qx "$1" <<<"$running"; }
    if has mynumber-terminal && has chukan; then
        flow mynumber-terminal 198.18.30.40 443 pass || bad=1 # mynumber-to-chukan-https
        flow mynumber-terminal 198.18.30.40 445 block || bad=1
    fi
    if has mynumber-terminal && has internet-relay; then
        flow mynumber-terminal 198.19.40.25 443 block || bad=1 # mynumber <-> internet: never
    fi
    if has lgwan-mail && has chukan; then
        flow lgwan-mail 198.18.30.40 25 pass || bad=1 # lgwan-to-wan-smtp
        flow chukan 198.18.20.25 25 block || bad=1
    fi
    if has internet-relay && has lgwan-mail; then
        flow internet-relay 198.18.20.25 443 block || bad=1
    fi
    vagrant ssh gateway -c 'systemctl is-active lgwan-gateway; systemctl show -p MainPID,NRestarts,StatusText lgwan-gateway' \
        2>/dev/null | sed 's/^/    gateway: /'
    return $bad
}
if ((check_only)); then
    checks
    exit
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
    step "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        die "apt-get install failed"
fi

# libvirtd without /dev/kvm: where KVM is unusable but /dev/kvm exists, libvirt's KVM check flaps
# ("KVM was enabled when probing ..., but it is not available now" in its debug log) and every API
# call re-probes qemu's capabilities (~30 s under load): `vagrant up` then crawls for many minutes.
# In a private mount namespace /dev is a tmpfs holding bind mounts of every entry except kvm, and
# libvirt's own per-VM /dev namespace is off (it rebuilds /dev from the submounts of /dev and
# fails on these: "Failed to create PTY"), through a qemu.conf bind-mounted in that namespace only.
start_libvirtd_without_kvm() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    unshare --mount --propagation private bash -c '
        set -e
        old="$(mktemp -d /tmp/lgwan-olddev.XXXXXX)"
        mount --rbind /dev "$old"
        mount -t tmpfs -o mode=0755,nosuid lgwan-dev /dev
        for e in "$old"/* "$old"/.[!.]*; do
            [[ -e "$e" || -L "$e" ]] || continue
            n="/dev/${e##*/}"
            if [[ "${e##*/}" =~ ^(kvm|ptmx|pts)$ ]]; then continue
            elif [[ -L "$e" ]]; then cp -P "$e" "$n"
            elif [[ -d "$e" ]]; then mkdir "$n" && mount --rbind "$e" "$n"
            else touch "$n" && mount --bind "$e" "$n"
            fi
        done
        # a bind-mounted ptmx node resolves "pts" beside its original: use our own devpts instance
        mkdir /dev/pts
        mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
        ln -s pts/ptmx /dev/ptmx
        conf="$(mktemp /tmp/lgwan-qemu.conf.XXXXXX)"
        { cat /etc/libvirt/qemu.conf; echo "namespaces = []"; } >"$conf"
        mount --bind "$conf" /etc/libvirt/qemu.conf
        exec libvirtd -d'
}

# libvirt's system instance; where systemd runs the machine its units do this, elsewhere start the
# daemons directly (they daemonize and write their pid files under /run).
if ! virsh -c qemu:///system version >/dev/null 2>&1; then
    step "starting virtlogd and libvirtd"
    if [[ -d /run/systemd/system ]]; then
        systemctl start virtlogd.socket libvirtd.socket libvirtd.service
    else
        pgrep -x virtlogd >/dev/null || virtlogd -d
        if [[ -e /dev/kvm && "$(bash kvm-probe.sh)" == qemu ]]; then
            start_libvirtd_without_kvm
        else
            libvirtd -d
        fi
    fi
    for _ in $(seq 50); do
        virsh -c qemu:///system version >/dev/null 2>&1 && break
        sleep 0.2
    done
    virsh -c qemu:///system version >/dev/null 2>&1 || die "libvirtd does not answer on qemu:///system"
fi
step "libvirt: $(virsh -c qemu:///system version 2>/dev/null | grep -m1 'Running hypervisor' || echo '?'), driver $(bash kvm-probe.sh)"

if [[ -z "${LGWAN_BOX:-}" ]] && ! vagrant box list 2>/dev/null | grep -q '^lgwan-gateway/bookworm64 '; then
    step "building the local box (vagrant/build-box.sh)"
    bash build-box.sh
fi
t=$SECONDS
step "vagrant up --provider=libvirt ($(vagrant status --machine-readable | awk -F, '$3=="state" {printf "%s ", $2}'))"
vagrant up --provider=libvirt
step "vagrant up took $((SECONDS - t)) s"
vagrant status
checks
