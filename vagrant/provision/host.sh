#!/usr/bin/env bash
# Provision a lab host VM: the package (for its host server), routes to the other zones via the
# gateway's .254, and lgwan-labhost.service running `python -m gateway.labhosts` with the ports of
# gateway/lab/topology.py, the same server the namespace lab runs on every host (docs/lab.md).
#
#   bash /vagrant/vagrant/provision/host.sh HOST       (as root, in the VM)
set -euo pipefail
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HOST="${1:?usage: host.sh HOST (a host name of gateway/lab/topology.py)}"
install_package
PLAN=("$VENV/bin/python" "$OPT/vagrant/labplan.py")
"${PLAN[@]}" --routes "$HOST" >/dev/null || die "unknown lab host $HOST"

# Only the other zones go through the gateway; the default route stays on the management NIC
# (vagrant ssh). A oneshot unit restores them after a reboot.
step "routes to the other zones"
mapfile -t routes < <("${PLAN[@]}" --routes "$HOST")
cmds=()
for r in "${routes[@]}"; do
    read -r net via <<<"$r"
    cmds+=("/sbin/ip route replace $net via $via")
done
{
    echo "[Unit]"
    echo "Description=lab routes: the other zones via the lgwan-gateway VM"
    echo "After=network-online.target"
    echo "Wants=network-online.target"
    echo "[Service]"
    echo "Type=oneshot"
    echo "RemainAfterExit=yes"
    for c in "${cmds[@]}"; do echo "ExecStart=$c"; done
    echo "[Install]"
    echo "WantedBy=multi-user.target"
} >/etc/systemd/system/lgwan-lab-routes.service

step "lgwan-labhost.service: python -m gateway.labhosts $("${PLAN[@]}" --labhost-args "$HOST" --vm)"
cat >/etc/systemd/system/lgwan-labhost.service <<UNIT
[Unit]
Description=lab host server of $HOST (gateway/labhosts: TCP responders, UDP echo, SMTP to a Maildir)
After=network-online.target lgwan-lab-routes.service
Wants=network-online.target

[Service]
StateDirectory=lgwan-labhost
ExecStart=$VENV/bin/python -m gateway.labhosts $("${PLAN[@]}" --labhost-args "$HOST" --vm --maildir /var/lib/lgwan-labhost/maildir)
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable -q lgwan-lab-routes lgwan-labhost
systemctl restart lgwan-lab-routes lgwan-labhost
systemctl is-active -q lgwan-labhost || die "lgwan-labhost is not active: journalctl -u lgwan-labhost"
step "$HOST ready: $(ip -br -4 addr show | grep -v '^lo' | tr -s ' ' | paste -sd';')"
