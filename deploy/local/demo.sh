#!/usr/bin/env bash
# Local demo: the whole system on one machine, no cluster.
#
#   baker (curl) -> signer-gateway -> SSH tunnels -> signer-tunnel x2 -> test signers x2
#
# Two test signers hold ONE key (two Ledgers holding one baking key), each behind its own
# tunnel client. The demo shows, and asserts: a signature; a refused double sign; the
# identical request answered again; the primary's link cut silently (its tunnel client is
# frozen with SIGSTOP: no FIN, no keepalive answers) and the backup answering; the primary
# coming back; then /status and a few /metrics lines. It cleans up after itself.
#
# Usage: deploy/local/demo.sh            (builds the binaries if needed)
# Env:   DEMO_KEEP=1 keeps the work dir; BUILD_PROFILE=release uses release builds.
set -euo pipefail
cd "$(dirname "$0")/../.."

profile=${BUILD_PROFILE:-debug}
flag=""; [ "$profile" = release ] && flag="--release"
for tool in cargo python3 curl; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "demo: $tool is missing (scripts/install-deps.sh installs what the project needs)" >&2
    exit 1
  }
done
# The gateway, the tunnel client and the test signer live in three packages of the workspace.
echo "== building (cargo build $flag --workspace --bins)"
cargo build $flag --workspace --bins -q
bin=target/$profile

work=$(mktemp -d /tmp/signer-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${DEMO_KEEP:-0}" = 1 ]; then echo "work dir kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

fail() { echo "DEMO FAILED: $*" >&2; echo "--- gateway log (tail)"; tail -n 30 "$work/gateway.log" >&2 || true; exit 1; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local until=$((SECONDS + $1)); local what=$2; shift 2
  until "$@" >/dev/null 2>&1; do [ $SECONDS -ge $until ] && fail "timed out waiting for $what"; sleep 0.1; done
}

# --- two test signers, one key (seed 1)
start_signer() { # name
  "$bin/test-signer" --listen 127.0.0.1:0 --seed 1 > "$work/$1.out" 2> "$work/$1.log" &
  pids+=($!)
  wait_for 10 "$1 to listen" grep -q listening "$work/$1.out"
}
start_signer ledger-a
start_signer ledger-b
addr_a=$(sed 's/.*on \([^ ]*\) .*/\1/' "$work/ledger-a.out")
addr_b=$(sed 's/.*on \([^ ]*\) .*/\1/' "$work/ledger-b.out")
pkh=$(sed 's/.*keys=//' "$work/ledger-a.out")
echo "== two test signers with one key $pkh: $addr_a (primary), $addr_b (backup)"

# --- identities for the two Pis
"$bin/signer-tunnel" keygen --out "$work/pi-home.key" --comment pi-home > "$work/pi-home.pub" 2>/dev/null
"$bin/signer-tunnel" keygen --out "$work/pi-backup.key" --comment pi-backup > "$work/pi-backup.pub" 2>/dev/null

# --- the gateway
api_port=$(free_port); admin_port=$(free_port); ssh_port=$(free_port)
cat > "$work/gateway.yaml" <<YAML
api: {listen: "127.0.0.1:$api_port"}
admin: {listen: "127.0.0.1:$admin_port"}
watermark: {backend: file, dir: "$work/watermarks", create_if_missing: true}
ssh:
  listen: "127.0.0.1:$ssh_port"
  host_key: "$work/ssh_host_ed25519_key"
  keepalive_interval: 1s
  keepalive_max: 3
signers:
  - name: pi-home
    tunnel: {keys: ["$(cat "$work/pi-home.pub")"]}
  - name: pi-backup
    tunnel: {keys: ["$(cat "$work/pi-backup.pub")"]}
request_timeout: 1s
health_check: {interval: 250ms, timeout: 300ms, rise: 2, fall: 1}
YAML
"$bin/signer-gateway" --config "$work/gateway.yaml" > "$work/gateway.out" 2> "$work/gateway.log" &
pids+=($!)
wait_for 20 "the gateway" grep -q "signer-gateway ready" "$work/gateway.out"
fingerprint=$(sed 's/.*host_key=//' "$work/gateway.out")
api=http://127.0.0.1:$api_port
admin=http://127.0.0.1:$admin_port
echo "== gateway up: API $api, admin $admin, SSH 127.0.0.1:$ssh_port, host key $fingerprint"

# --- the two tunnel clients (the Pis)
start_tunnel() { # name signer-addr
  cat > "$work/$1.yaml" <<YAML
gateways: ["127.0.0.1:$ssh_port"]
host_key: "$fingerprint"
identity: "$work/$1.key"
signer: "$2"
keepalive_interval: 1s
keepalive_max: 3
backoff: {initial: 300ms, max: 2s}
health_check: {interval: 500ms}
YAML
  "$bin/signer-tunnel" --config "$work/$1.yaml" 2> "$work/$1-tunnel.log" &
  pids+=($!)
  eval "pid_$(echo "$1" | tr - _)=$!"
}
start_tunnel pi-home "$addr_a"
start_tunnel pi-backup "$addr_b"
signer_up() { curl -sf "$admin/status" | json "[s['state'] for s in d['signers'] if s['name']=='$1'][0]" | grep -qx up; }
wait_for 20 "both tunnels" bash -c "$(declare -f json signer_up); admin=$admin; signer_up pi-home && signer_up pi-backup"
echo "== both Pis connected:"
curl -s "$admin/status" | json "'\n'.join('   %-10s %-5s %s' % (t['signer'], 'up' if t['connected'] else 'down', t['peer']) for t in d['ssh']['tunnels'])"

# --- sign
att() { printf '137a06a770%064d15%04x%08x%08x%064x' 0 0 "$1" "$2" "$3"; } # level round payload-hash
sign() { curl -s -o "$work/last.json" -w '%{http_code}' "$api/keys/$pkh" -d "\"$1\""; }
signs_of() { curl -s "http://$1/_control/stats" | json "d['signs']"; }

code=$(sign "$(att 100 0 1)"); sig=$(json "d.get('signature','')" < "$work/last.json")
[ "$code" = 200 ] && [[ $sig == edsig* ]] || fail "first signature: HTTP $code $(cat "$work/last.json")"
[ "$(signs_of "$addr_a")" = 1 ] || fail "the primary did not sign it"
echo "== 1. attestation level 100 signed by the primary: $sig"

code=$(sign "$(att 100 0 2)")
[ "$code" = 409 ] || fail "double sign was not refused: HTTP $code"
echo "== 2. different attestation at level 100 refused: HTTP 409 $(json "d[0]['msg']" < "$work/last.json")"

code=$(sign "$(att 100 0 1)"); again=$(json "d.get('signature','')" < "$work/last.json")
[ "$code" = 200 ] && [ "$again" = "$sig" ] || fail "identical request: HTTP $code"
[ "$(signs_of "$addr_a")" = 1 ] || fail "the identical request reached a signer"
echo "== 3. the identical request gets the same signature back, no signer asked"

echo "== 4. cutting the primary's link silently (SIGSTOP its tunnel client)"
kill -STOP "$pid_pi_home"
t0=$(date +%s.%N); level=101; served_by_backup=""
while [ -z "$served_by_backup" ]; do
  code=$(sign "$(att $level 0 1)")
  [ "$code" = 200 ] || fail "request at level $level failed during failover: HTTP $code $(cat "$work/last.json")"
  [ "$(signs_of "$addr_b")" -ge 1 ] && served_by_backup=$level
  level=$((level + 1))
  python3 -c "import time; time.sleep(0.1)"
  python3 -c "import sys,time; sys.exit(0 if time.time()-$t0 < 15 else 1)" || fail "backup never answered"
done
echo "   level $served_by_backup answered by the backup $(python3 -c "import time; print('%.2f' % (time.time()-$t0))") s after the cut; no request failed"

echo "== 5. the primary's link comes back (SIGCONT)"
kill -CONT "$pid_pi_home"
t0=$(date +%s.%N); before=$(signs_of "$addr_a")
until [ "$(signs_of "$addr_a")" -gt "$before" ]; do
  code=$(sign "$(att $level 0 1)"); [ "$code" = 200 ] || fail "request failed while the primary returned: HTTP $code"
  level=$((level + 1))
  python3 -c "import time; time.sleep(0.1)"
  python3 -c "import sys,time; sys.exit(0 if time.time()-$t0 < 20 else 1)" || fail "the primary never came back"
done
echo "   the primary signs again $(python3 -c "import time; print('%.2f' % (time.time()-$t0))") s after its link returned"

echo "== 6. /status"
curl -s "$admin/status" | json "'\n'.join('   %-10s %-5s since %s  last error: %s' % (s['name'], s['state'], s['since'], s['last_error']) for s in d['signers'])"
curl -s "$admin/status" | json "'   tunnels: ' + ', '.join('%s %s (replacements %d, last disconnect: %s)' % (t['signer'], 'connected' if t['connected'] else 'down', t['replacements'], t['last_disconnect']) for t in d['ssh']['tunnels'])"
echo "== 7. a few /metrics lines"
curl -s "$admin/metrics" | grep -E '^signer_gateway_(sign_requests_total|watermark_refusals_total|signer_up|tunnel_connected|tunnel_keepalive_timeouts_total)' | sed 's/^/   /'
curl -s "$admin/metrics" | grep -q 'signer_gateway_watermark_refusals_total{kind="attestation",reason="different_data"} 1' \
  || fail "the refusal is not in the metrics"
echo "DEMO OK"
