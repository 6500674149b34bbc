#!/usr/bin/env bash
# Provision the gateway VM: the package, configs/lab.toml as /etc/lgwan-gateway/gateway.toml, the
# systemd unit from systemd/, forwarding on, then start the service (docs/operations.md "Install").
# vm-test.sh runs it too, with LGWAN_NO_START=1 (it starts the unit itself, under test).
#
#   bash /vagrant/vagrant/provision/gateway.sh        (as root, in the VM)
set -euo pipefail
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

install_package
CONF=/etc/lgwan-gateway/gateway.toml
step "policy $CONF <- ${LGWAN_CONFIG:-configs/lab.toml}"
install -D -m 0640 "$OPT/${LGWAN_CONFIG:-configs/lab.toml}" "$CONF"
"$VENV/bin/lgwan-gateway" check-config "$CONF" >/dev/null || die "check-config $CONF failed"

# the daemon does not change sysctls (docs/operations.md): the gateway must forward
cat >/etc/sysctl.d/90-lgwan-gateway.conf <<'SYSCTL'
net.ipv4.ip_forward = 1
net.ipv6.conf.all.forwarding = 1
SYSCTL
sysctl -q -p /etc/sysctl.d/90-lgwan-gateway.conf

step "units lgwan-gateway.service, lgwan-gateway-purge.{service,timer}"
install -m 0644 "$OPT/systemd/lgwan-gateway.service" "$OPT/systemd/lgwan-gateway-purge.service" \
    "$OPT/systemd/lgwan-gateway-purge.timer" /etc/systemd/system/
systemctl daemon-reload
# quarantine retention (docs/quarantine.md "Retention"): daily, whether or not the daemon runs
systemctl enable -q --now lgwan-gateway-purge.timer
if [[ "${LGWAN_NO_START:-0}" == 1 ]]; then
    step "installed; not started (LGWAN_NO_START=1)"
    exit 0
fi
systemctl enable -q lgwan-gateway
systemctl restart lgwan-gateway # Type=notify: returns once READY=1 (queue bound, rules in)
systemctl is-active -q lgwan-gateway || die "lgwan-gateway is not active: journalctl -u lgwan-gateway"
step "lgwan-gateway active (pid $(systemctl show -P MainPID lgwan-gateway)); zones:"
ip -br -4 addr show | grep -v '^lo' || true
