#!/usr/bin/env bash
# The VM test's guest half (vm-test.sh copies the repository to /vagrant and runs this as root):
# lgwan-gateway.service under real systemd, deciding real traffic of the namespace lab.
#
# One VM holds everything: `lgwan-gateway lab up --no-daemon` builds the lab's namespaces and host
# servers, and the unit, installed by provision/gateway.sh exactly as on the Vagrant gateway VM,
# runs in the lab's gateway namespace through a drop-in (NetworkNamespacePath=). Nothing else of
# the unit changes, so its hardening, Type=notify, watchdog, reload and restart are what is tested.
set -uo pipefail

SRC="${LGWAN_SRC:-/vagrant}"
OPT=/opt/lgwan-gateway
BIN="$OPT/.venv/bin"
UNIT=lgwan-gateway
CONF=/etc/lgwan-gateway/gateway.toml
NS=lgw-gateway
# The inspected mail flows must pass and the probe's test mail must arrive (the daemon has its mail
# inspector). LGWAN_VM_TEST_STRICT_INSPECT=0 accepts them failing closed (inspect_unavailable), for
# a tree where inspection is broken on purpose or not wired.
STRICT_INSPECT="${LGWAN_VM_TEST_STRICT_INSPECT:-1}"

WORK="$(mktemp -d /tmp/vm-test.XXXXXX)"
failures=0
T0=$SECONDS
log() { printf '[%4ds] %s\n' "$((SECONDS - T0))" "$*"; }
pass() { log "PASS  $*"; }
fail() {
    log "FAIL  $*"
    failures=$((failures + 1))
}
check() { # check NAME COMMAND...: PASS when the command succeeds
    local name="$1"
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}
prop() { systemctl show -P "$1" "$UNIT"; }

# tcp_probe SRC_HOST DST_ADDR PORT [TIMEOUT]: prints the peer's first bytes; fails when blocked.
# bash's /dev/tcp in the source host's namespace: no Python start-up per probe under emulation.
tcp_probe() {
    ip netns exec "lgw-$1" timeout "${4:-2}" bash -c "exec 3<>/dev/tcp/$2/$3 && head -c 24 <&3" 2>/dev/null |
        tr -d '\r\n' | grep .
}
# the flows used below (addresses from gateway/lab/topology.py via the lab's address plan)
ASP=198.18.30.50   # lgwan-asp: lgwan-terminal -> tcp/443 allowed by rule lgwan-to-asp-https
CHUKAN=198.18.30.40 # chukan: lgwan-terminal -> tcp/25 allowed by rule lgwan-to-wan-smtp
asp_passes() { tcp_probe lgwan-terminal "$ASP" 443 >/dev/null; }
asp_blocked() { ! tcp_probe lgwan-terminal "$ASP" 443 >/dev/null; }
smtp_passes() { tcp_probe lgwan-terminal "$CHUKAN" 25 >/dev/null; }
smtp_blocked() { ! tcp_probe lgwan-terminal "$CHUKAN" 25 1 >/dev/null; }

# systemctl reload returns when ExecReload (kill -HUP) has run; the daemon then reports RELOADING=1
# ... READY=1 (systemd 252 has no Type=notify-reload), so wait for "active" again
wait_reloaded() {
    local deadline=$((SECONDS + 20))
    while ((SECONDS < deadline)); do
        [[ "$(prop ActiveState)" == active ]] && return 0
        sleep 0.2
    done
    return 1
}
wait_active() { # wait_active OLD_PID TIMEOUT: active again with another main PID
    local deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)); do
        if [[ "$(prop ActiveState)" == active && "$(prop MainPID)" != "$1" && "$(prop MainPID)" != 0 ]]; then
            return 0
        fi
        sleep 0.5
    done
    return 1
}

# --- set-up ---------------------------------------------------------------------------------------
log "provisioning (vagrant/provision/gateway.sh, LGWAN_NO_START=1)"
LGWAN_SRC="$SRC" LGWAN_NO_START=1 bash "$SRC/vagrant/provision/gateway.sh" || {
    fail "provisioning"
    exit 1
}
log "namespace lab without daemon"
"$BIN/lgwan-gateway" lab down >/dev/null 2>&1 || true
# unshare --net: on Debian 12's kernel (6.1) `ip link add eth0 netns NS type veth ...` looks the
# name up in the *calling* namespace, and this VM's own NIC is eth0 -> "File exists". Newer kernels
# look in the target namespace. In a fresh namespace the lab's own commands work unchanged.
unshare --net "$BIN/lgwan-gateway" lab up --no-daemon >"$WORK/lab-up.log" 2>&1 || {
    cat "$WORK/lab-up.log"
    fail "lab up --no-daemon"
    exit 1
}
mkdir -p "/etc/systemd/system/$UNIT.service.d"
cat >"/etc/systemd/system/$UNIT.service.d/vm-test.conf" <<EOF
# vm-test: run the unit in the namespace lab's gateway (its legs are the lab's zone bridges)
[Service]
NetworkNamespacePath=/run/netns/$NS
EOF
systemctl daemon-reload
systemctl reset-failed "$UNIT" 2>/dev/null || true
check "unit file is the repository's (systemd/lgwan-gateway.service)" \
    cmp -s "$SRC/systemd/lgwan-gateway.service" /etc/systemd/system/$UNIT.service

# --- start, READY ---------------------------------------------------------------------------------
t=$SECONDS
systemctl start "$UNIT" # Type=notify: returns when READY=1 arrived (or the start failed)
log "systemctl start returned after $((SECONDS - t)) s"
check "systemctl is-active = active" systemctl is-active -q "$UNIT"
check "READY=1 reached (Type=notify, SubState running)" test "$(prop Type)/$(prop SubState)" = "notify/running"
check "NFQUEUE rule installed in the gateway namespace" \
    bash -c "ip netns exec $NS iptables -S LGWAN-FWD | grep -q 'NFQUEUE --queue-num 0'"
log "status: $(prop StatusText)"

# --- real traffic as configs/lab.toml says ---------------------------------------------------------
log "lgwan-gateway lab probe (every zone pair, real TCP/UDP/ICMP between the lab's hosts)"
"$BIN/lgwan-gateway" lab probe --json --timeout 2 >"$WORK/probe.json" 2>"$WORK/probe.err"
"$BIN/python" - "$STRICT_INSPECT" "$WORK/probe.json" <<'EOF' >"$WORK/probe.txt"
import json, sys
strict = sys.argv[1] == "1"
data = json.load(open(sys.argv[2]))
bad = [f for f in data["flows"] if not f["ok"] and (strict or f["policy"] != "inspect")]
closed = [f for f in data["flows"] if not f["ok"] and f["policy"] == "inspect" and not strict]
for f in data["flows"]:
    mark = "ok " if f["ok"] else ("BAD" if f in bad else "fail-closed")
    print(f"  {mark} {f['src']:>17} -> {f['dst']:<17} {f['proto']}/{f['port']:<5} policy={f['policy']:<7} passed={f['passed']}")
print(f"  {len(data['flows'])} flows, {len(bad)} differ from the policy, {len(closed)} inspected flows fail closed")
mail = data.get("mail") or {}
print(f"  mail: {json.dumps(mail, ensure_ascii=False)[:300]}")
mail_bad = strict and (mail.get("error") is not None or not mail.get("delivered"))
if mail_bad:
    print("  BAD the probe's mail internet-relay -> lgwan-mail (inspected) did not arrive")
sys.exit(1 if bad or mail_bad else 0)
EOF
probe_rc=$?
cat "$WORK/probe.txt"
if [[ "$STRICT_INSPECT" == 1 ]]; then
    check "every flow passes or is blocked as the policy says; the inspected test mail arrives" test $probe_rc = 0
else
    check "every non-inspected flow passes or is blocked as the policy says" test $probe_rc = 0
fi

# --- quarantine retention: the purge timer and its hardened oneshot under real systemd -------------
check "lgwan-gateway-purge.timer enabled and active" \
    bash -c "systemctl is-enabled -q lgwan-gateway-purge.timer && systemctl is-active -q lgwan-gateway-purge.timer"
q_before="$("$BIN/lgwan-gateway" quarantine list --json 2>/dev/null | wc -l)"
systemctl start lgwan-gateway-purge.service # Type=oneshot: returns when the purge has run
check "purge service ran under its sandbox (Result=success)" \
    test "$(systemctl show -P Result lgwan-gateway-purge.service)" = success
q_after="$("$BIN/lgwan-gateway" quarantine list --json 2>/dev/null | wc -l)"
check "purge kept every entry inside its retention ($q_before entries before, $q_after after)" \
    test "$q_before" = "$q_after"
check "quarantine store verifies after the purge" "$BIN/lgwan-gateway" quarantine verify

# --- reload changes the policy --------------------------------------------------------------------
check "before reload: lgwan-terminal -> lgwan-asp tcp/443 passes" asp_passes
cp "$CONF" "$WORK/gateway.toml.orig"
# the same policy without rule lgwan-to-asp-https
"$BIN/python" - "$CONF" <<'EOF'
import re, sys
path = sys.argv[1]
text = open(path).read()
blocks = re.split(r"(?m)^(?=\[\[rules\]\])", text)
kept = [b for b in blocks if 'id = "lgwan-to-asp-https"' not in b]
assert len(kept) == len(blocks) - 1, "rule lgwan-to-asp-https not found"
open(path, "w").write("".join(kept))
EOF
pid=$(prop MainPID)
systemctl reload "$UNIT"
wait_reloaded
check "after reload: same main PID, still active" test "$(prop MainPID)/$(prop ActiveState)" = "$pid/active"
check "after reload: lgwan-terminal -> lgwan-asp tcp/443 blocked (rule removed)" asp_blocked
check "after reload: lgwan-terminal -> chukan tcp/25 still passes" smtp_passes
log "status: $(prop StatusText)"

# --- a broken config on reload keeps the service and its policy ------------------------------------
printf '[gateway]\nname = "broken\n[[zones]]\nname = 7\n' >"$CONF"
since="$(date '+%Y-%m-%d %H:%M:%S')"
systemctl reload "$UNIT"
wait_reloaded
check "broken reload: still active, same main PID" test "$(prop MainPID)/$(prop ActiveState)" = "$pid/active"
check "broken reload: old policy kept (asp tcp/443 still blocked)" asp_blocked
check "broken reload: old policy kept (chukan tcp/25 still passes)" smtp_passes
check "broken reload: the error names the file and line in the journal" \
    bash -c "journalctl -u $UNIT --since '$since' --no-pager -o cat | grep -q '$CONF:[0-9]'"
journalctl -u "$UNIT" --since "$since" --no-pager -o cat | grep -m3 "$CONF" | sed 's/^/    journal: /'
cp "$WORK/gateway.toml.orig" "$CONF"
systemctl reload "$UNIT"
wait_reloaded
check "restored config reloaded: asp tcp/443 passes again" asp_passes

# --- watchdog -------------------------------------------------------------------------------------
check "WatchdogSec is set (10 s)" test "$(prop WatchdogUSec)" = 10s
w1=$(prop WatchdogTimestampMonotonic)
restarts=$(prop NRestarts)
sleep 12 # longer than WatchdogSec: without pings systemd would have killed it by now
w2=$(prop WatchdogTimestampMonotonic)
check "watchdog pings arrive (timestamp advanced over 12 s)" test "$w2" -gt "$w1"
check "watchdog: no restart, same main PID after 12 s" test "$(prop NRestarts)/$(prop MainPID)" = "$restarts/$pid"
# a hung supervisor (SIGSTOP) stops the pings: systemd must kill and restart it
t=$SECONDS
systemctl kill -s STOP --kill-whom=main "$UNIT"
if wait_active "$pid" 45; then
    pass "hung supervisor (SIGSTOP): watchdog restart after $((SECONDS - t)) s (NRestarts $(prop NRestarts))"
else
    fail "hung supervisor (SIGSTOP): no watchdog restart within 45 s (state $(prop ActiveState)/$(prop SubState))"
fi
check "after watchdog restart: traffic decided again (chukan tcp/25 passes)" smtp_passes

# --- SIGKILL: restart by systemd, fail closed while down -------------------------------------------
pid=$(prop MainPID)
restarts=$(prop NRestarts)
systemctl kill -s KILL "$UNIT"
state_down="$(prop ActiveState)/$(prop SubState)"
# within RestartSec=1s plus the start-up: nobody reads the queue, so the allowed flow is dropped
if smtp_blocked; then
    pass "while down ($state_down): new allowed flow lgwan-terminal -> chukan tcp/25 blocked (fail closed)"
else
    fail "while down ($state_down): lgwan-terminal -> chukan tcp/25 passed without a daemon"
fi
check "while down: the NFQUEUE rule stays in place" \
    bash -c "ip netns exec $NS iptables -S LGWAN-FWD | grep -q NFQUEUE"
t=$SECONDS
if wait_active "$pid" 60; then
    pass "SIGKILL: restarted by systemd after $((SECONDS - t)) s (NRestarts $restarts -> $(prop NRestarts))"
else
    fail "SIGKILL: not active again within 60 s ($(prop ActiveState)/$(prop SubState))"
fi
check "after restart: traffic passes again (chukan tcp/25)" smtp_passes

# --- clean stop: rules stay, traffic stays blocked -------------------------------------------------
systemctl stop "$UNIT"
check "systemctl stop: inactive" bash -c "! systemctl is-active -q $UNIT"
check "after stop: allowed flow blocked (rules stay: fail closed)" smtp_blocked

log "journal of $UNIT (last 15 lines):"
journalctl -u "$UNIT" --no-pager -o short-monotonic | tail -n 15 | sed 's/^/    /'
"$BIN/lgwan-gateway" lab down >/dev/null 2>&1 || true
if ((failures)); then
    log "vm-test-guest: $failures check(s) FAILED"
    exit 1
fi
log "vm-test-guest: all checks passed"
