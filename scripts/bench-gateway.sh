#!/usr/bin/env bash
# Gateway mode with many children (results and method in docs/benchmarks.md, "Gateway").
#
#   scripts/bench-gateway.sh
#
# Starts the release emulator and the release agent with CHILDREN child identities (keys
# pre-generated with openssl, as provisioning would), eager refresh on TOKEN_SECS tokens,
# then measures: time until every child holds a token; the agent's RSS then and after
# STEADY_SECS of steady refreshing; its CPU over those STEADY_SECS (scaled to an hour); the
# emulator's token exchanges per second over the boot (the upstream peak); and GET latency
# of /v1/assets/NAME/token over GETS requests spread over the children (curl's
# time_total).
#
# Knobs: CHILDREN (200), TOKEN_SECS (3600), STEADY_SECS (120), GETS (2000), AGENT, EMU_BIN.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
CHILDREN=${CHILDREN:-200}
TOKEN_SECS=${TOKEN_SECS:-3600}
STEADY_SECS=${STEADY_SECS:-120}
GETS=${GETS:-2000}
AGENT=${AGENT:-$ROOT/target/release/asset-agent}
EMU_BIN=${EMU_BIN:-$ROOT/target/release/asset-agent-emulator}
WORK=$(mktemp -d /tmp/asset-agent-gw.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$((20000 + RANDOM % 20000))
"$EMU_BIN" --listen "127.0.0.1:$PORT" --token-lifetime "$TOKEN_SECS" >"$WORK/emu.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/__emulator/stats" >/dev/null && break; sleep 0.1; done
curl -sf -X POST "http://127.0.0.1:$PORT/__emulator/refresh-tokens" \
  | sed 's/.*"refresh_token":"\([^"]*\)".*/\1/' >"$WORK/refresh-token"
chmod 600 "$WORK/refresh-token"
mkdir -p "$WORK/keys" "$WORK/children.d"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/device-key.pem" 2>/dev/null
gen() { openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/keys/c$1.pem" 2>/dev/null; }
GEN=()
for i in $(seq -w 1 "$CHILDREN"); do
  gen "$i" & GEN+=($!)
  if (( ${#GEN[@]} == 16 )); then wait "${GEN[@]}"; GEN=(); fi
done
if (( ${#GEN[@]} > 0 )); then wait "${GEN[@]}"; fi
chmod 600 "$WORK"/keys/*.pem "$WORK/device-key.pem"
for i in $(seq -w 1 "$CHILDREN"); do
  cat >"$WORK/children.d/c$i.toml" <<TOML
device_id = "gw-c$i"
name = "Child $i"
serial_number = "GW-C$i"
[key]
path = "$WORK/keys/c$i.pem"
TOML
done
cat >"$WORK/agent.toml" <<TOML
[salesforce]
instance_url = "http://127.0.0.1:$PORT"
client_id = "3MVG9EMULATOR.asset-agent"
[auth]
refresh_token_file = "$WORK/refresh-token"
[asset]
device_id = "gw-0"
name = "Gateway"
serial_number = "GW-0"
[key]
path = "$WORK/device-key.pem"
[state]
dir = "$WORK"
[token]
verify = "jwks"
refresh = "eager"
[api]
socket = "$WORK/run/agent.sock"
[log]
level = "warn"
TOML
SOCK=$WORK/run/agent.sock
t0=$(date +%s.%N)
"$AGENT" --config "$WORK/agent.toml" run >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
PIDS+=($AGENT_PID)
# Exchanges per second during the boot, sampled by the emulator's counter.
exch() { curl -sf "http://127.0.0.1:$PORT/__emulator/stats" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s.get("grants",{}).get("token_exchange",0))'; }
peak=0; last=0; ready=""; tl=$t0
for s in $(seq 1 120); do
  sleep 1
  now=$(exch); tn=$(date +%s.%N); d=$((now - last)); last=$now
  # The rate over the sampling interval (longer than 1 s on a loaded machine).
  peak=$(python3 -c "print(max($peak, round($d / ($tn - $tl), 1)))"); tl=$tn
  n=$(curl -s --unix-socket "$SOCK" http://l/v1/status | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(1 for c in d.get("children") or [] if c["state"]=="ready"))' 2>/dev/null || echo 0)
  if [ "$n" = "$CHILDREN" ]; then ready=$(python3 -c "import time; print(round(time.time()-$t0,1))"); break; fi
done
rss() { awk '/VmRSS/{print $2}' "/proc/$AGENT_PID/status"; }
cpu() { awk '{print $14+$15}' "/proc/$AGENT_PID/stat"; }
echo "children=$CHILDREN ready_after_s=${ready:-timeout} exchanges=$last peak_exchanges_per_s=$peak rss_kib_ready=$(rss)"
c0=$(cpu); e0=$(exch); sleep "$STEADY_SECS"; c1=$(cpu); e1=$(exch)
HZ=$(getconf CLK_TCK)
python3 -c "print('steady_s=$STEADY_SECS cpu_s=%.2f cpu_s_per_hour=%.1f exchanges=%d' % (($c1-$c0)/$HZ, ($c1-$c0)/$HZ*3600/$STEADY_SECS, $e1-$e0))"
echo "rss_kib_steady=$(rss)"
for i in $(seq 1 "$GETS"); do
  n=$(printf '%03d' $(( (i % CHILDREN) + 1 )))
  echo "url = \"http://l/v1/assets/c$n/token\""
  echo "output = /dev/null"
  echo "write-out = \"%{time_total}\\n\""
done >"$WORK/curl.cfg"
curl -s --unix-socket "$SOCK" -K "$WORK/curl.cfg" >"$WORK/lat.txt"
python3 - "$WORK/lat.txt" <<'PY'
import sys
v = sorted(float(x) * 1e6 for x in open(sys.argv[1]) if x.strip())
q = lambda p: v[min(len(v) - 1, int(p * len(v)))]
print(f"gets={len(v)} latency_us p50={q(0.5):.0f} p90={q(0.9):.0f} p99={q(0.99):.0f} max={v[-1]:.0f}")
PY
echo "rss_kib_after_gets=$(rss)"
