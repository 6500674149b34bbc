#!/usr/bin/env bash
# The main job on the built-in lab, from a fresh Debian 12 machine, as root:
#
#   sudo bash scripts/demo.sh
#
# 1. sets up (scripts/setup.sh: Debian packages, .venv, the compiled fast path);
# 2. brings the namespace lab up with the daemon enforcing configs/lab.toml (docs/lab.md), with
#    --isolate-zones so that same-zone traffic is routed through the gateway too (the lab policy
#    denies mynumber-terminal <-> mynumber-server; without it the zone's bridge switches that);
#    a lab that is already up (an earlier run, or one brought up by hand) is taken down first, so
#    every run starts from the same state: fresh event log and Maildirs, the same options;
# 3. sends real traffic across every zone pair (`lgwan-gateway lab probe`: TCP connects, UDP,
#    ICMP echo, the 画面転送 port tcp/3389, an SMTP session with a PDF attachment) and prints what
#    passed and what was blocked next to what the policy says;
# 4. prints what the daemon logged per zone pair, its counters, and where to look;
# 5. leaves the lab up for exploring; `lgwan-gateway lab down` takes it down.
#
# Exit status: that of `lab probe` (1 if any flow differs from the policy). The offline way to see
# the same policy, without root or namespaces, is `lgwan-gateway demo` (replay of a synthetic capture).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ $EUID -ne 0 ]]; then
    echo "demo.sh: needs root (network namespaces, iptables): sudo bash scripts/demo.sh" >&2
    echo "without root: bash scripts/setup.sh && .venv/bin/lgwan-gateway demo   (offline replay)" >&2
    exit 2
fi
bash scripts/setup.sh
LGW="$ROOT/.venv/bin/lgwan-gateway"
step() { printf '\n==> %s\n' "$*"; }

# Idempotent: take down whatever lab is up (also a half-built one: `down` is a no-op otherwise).
if "$LGW" lab status --json | "$ROOT/.venv/bin/python" -c 'import json,sys; st=json.load(sys.stdin); sys.exit(0 if st["up"] or any(h["present"] for h in st["hosts"].values()) else 1)'; then
    step "a lab is already up: taking it down first (lgwan-gateway lab down)"
fi
"$LGW" lab down

step "lgwan-gateway lab up --isolate-zones   (namespaces, servers, the daemon with configs/lab.toml)"
"$LGW" lab up --isolate-zones --config configs/lab.toml >/dev/null
STATE_JSON="$("$LGW" lab status --json)"
state() { "$ROOT/.venv/bin/python" -c "import json,sys; d=json.loads(sys.argv[1]); print($1)" "$STATE_JSON"; }
echo "lab up: $(state 'len(d["hosts"])') namespaces, daemon pid $(state 'd["daemon"]["pid"]')"

step "lgwan-gateway lab probe   (real traffic across every zone pair; policy = what configs/lab.toml says)"
rc=0
"$LGW" lab probe || rc=$?

step "what the daemon logged, per zone pair (python -m gateway.demo live-summary)"
"$ROOT/.venv/bin/python" -m gateway.demo live-summary "$(state 'd["paths"]["events"]')"

step "daemon counters (lgwan-gateway lab exec gateway -- lgwan-gateway stats, selected lines)"
STATS="$("$LGW" lab exec gateway -- "$LGW" stats || true)"
grep -E '^(lgwan_packets_total|lgwan_daemon_drops_total +cause=inspect|lgwan_offload|lgwan_flows |lgwan_events_total)' <<<"$STATS" || true
unavailable="$(awk '$1=="lgwan_daemon_drops_total" && $2=="cause=inspect_unavailable" {print $3}' <<<"$STATS")"
if [[ -n "$unavailable" && "$unavailable" != 0 ]]; then
    echo "note: the mail inspector is not wired into the live daemon yet: packets of the two inspected"
    echo "      mail flows (internet-relay <-> lgwan-mail tcp/25) are dropped (fail closed, $unavailable packets),"
    echo "      so those rows show 'block' and the mail is not delivered."
fi

step "where to look"
cat <<EOF
event log:     $(state 'd["paths"]["events"]')          (one JSON line per flow; docs/events.md)
Maildirs:      $(state '"  ".join(d["paths"]["maildirs"].values())')
quarantine:    $(state 'd["paths"]["quarantine"]')
logs:          $(state 'd["paths"]["logs"]')           (daemon.log, one log per host)
the lab:       sudo $LGW lab status
a host:        sudo $LGW lab exec lgwan-terminal -- ip route
counters:      sudo $LGW lab exec gateway -- $LGW stats
offline:       $LGW demo        (the same policy on a synthetic capture, replayed; no root)

The lab stays up. Take it down with:   sudo $LGW lab down
EOF
exit "$rc"
