#!/usr/bin/env bash
# Whole-process benchmarks of asset-agent (issue 7; results and method in docs/benchmarks.md).
#
#   scripts/bench.sh [SECTION...]
#
# Sections (default: all, in this order):
#   setup      install what the runs need: nginx, hyperfine, gnuplot (apt), oha (cargo install),
#              the aarch64 target and cross linker
#   build      the release builds (agent, emulator) for x86_64 and aarch64 (glibc),
#              and x86_64 static musl (for comparison: AGENT=target/x86_64-unknown-linux-musl/
#              device/asset-agent scripts/bench.sh memory)
#   size       the stripped shipped binaries
#   socket     GET /v1/token vs nginx serving a same-size static file, over Unix sockets, oha
#   memory     RSS/PSS idle, after 100k requests, after 1000 rotations (twice)
#   coldstart  process start to socket / ready / first token / READY=1, cold and cached
#   idle       agent CPU over 5 minutes with 60 s tokens
#   criterion  cargo bench --bench refresh (mint, verify, whole cycle)
#   instr      instructions per GET /v1/token (callgrind): device build, release build, nginx
#   fleet      fleet simulation, 1k and 10k agents, plotted to docs/fleet.png
#
# Knobs (environment): BENCH_OUT (results dir, default target/bench), SOCKET_SECS (length of
# each oha run, default 10), SOCKET_REPEAT (interleaved repeats, default 3), IDLE_SECS (300),
# COLD_RUNS (50), ROTATIONS (1000), REQUESTS (100000), FLEET_AGENTS ("1000 10000"), AGENT
# (the agent binary under test, default target/release/asset-agent).
#
# All load goes to Unix sockets and to the emulator on 127.0.0.1; every loop is bounded.
# The agent under test is the shipped release binary (target/release/asset-agent); the
# emulator is the release build. Servers are pinned to CPU 0 and the load generator to CPU 1
# when the machine has two or more CPUs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

OUT=${BENCH_OUT:-$ROOT/target/bench}
SOCKET_SECS=${SOCKET_SECS:-10}
SOCKET_REPEAT=${SOCKET_REPEAT:-3}
IDLE_SECS=${IDLE_SECS:-300}
COLD_RUNS=${COLD_RUNS:-50}
ROTATIONS=${ROTATIONS:-1000}
REQUESTS=${REQUESTS:-100000}
FLEET_AGENTS=${FLEET_AGENTS:-"1000 10000"}
AGENT=${AGENT:-$ROOT/target/release/asset-agent}
EMU_BIN=${EMU_BIN:-$ROOT/target/release/asset-agent-emulator}
AARCH64=aarch64-unknown-linux-gnu
# Static musl build: not the documented device build, measured as the fix for the RSS gap.
MUSL=x86_64-unknown-linux-musl
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/asset-agent-bench.XXXXXX)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

say() { printf '\n== %s ==\n' "$*"; }
if [ "$(nproc)" -ge 2 ]; then
  SERVER_CPU=(taskset -c 0)
  LOAD_CPU=(taskset -c 1)
else
  SERVER_CPU=()
  LOAD_CPU=()
fi

machine() {
  echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r), $(free -g | awk '/Mem:/{print $2}') GiB"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
}

# ---------------------------------------------------------------------------------------
setup() {
  say setup
  local need=()
  command -v nginx >/dev/null || need+=(nginx-light)
  command -v hyperfine >/dev/null || need+=(hyperfine)
  command -v gnuplot >/dev/null || need+=(gnuplot-nox)
  command -v taskset >/dev/null || need+=(util-linux)
  command -v bc >/dev/null || need+=(bc)
  command -v file >/dev/null || need+=(file)
  command -v valgrind >/dev/null || need+=(valgrind)
  command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
  command -v musl-gcc >/dev/null || need+=(musl-tools)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  fi
  command -v oha >/dev/null || cargo install oha --locked
  rustup target list --installed | grep -qx "$AARCH64" || rustup target add "$AARCH64"
  rustup target list --installed | grep -qx "$MUSL" || rustup target add "$MUSL"
}

build() {
  say build
  cargo build --release
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    cargo build --release -p asset-agent --target "$AARCH64"
  cargo build --release -p asset-agent --target "$MUSL"
}

size() {
  say "size (the shipped release profile, stripped)"
  local f
  for f in target/release/asset-agent "target/$AARCH64/release/asset-agent" "target/$MUSL/release/asset-agent"; do
    [ -f "$f" ] || { echo "$f: not built"; continue; }
    printf '%-50s %9d bytes  %5.2f MiB  (%s)\n' "$f" "$(stat -c %s "$f")" \
      "$(echo "$(stat -c %s "$f") / 1048576" | bc -l)" "$(file -b "$f" | cut -d, -f1-2,6-)"
  done | tee "$OUT/size.txt"
}

# ---------------------------------------------------------------------------------------
# Emulator + agent plumbing.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_emulator LIFETIME_SECS: sets EMU_URL, EMU_PID.
start_emulator() {
  local port
  port=$(free_port)
  EMU_URL="http://127.0.0.1:$port"
  "${SERVER_CPU[@]}" "$EMU_BIN" --listen "127.0.0.1:$port" --token-lifetime "$1" \
    >"$WORK/emulator.log" 2>&1 &
  EMU_PID=$!
  PIDS+=("$EMU_PID")
  for _ in $(seq 1 200); do
    curl -sf "$EMU_URL/__emulator/stats" >/dev/null && return 0
    sleep 0.05
  done
  echo "emulator did not start"; cat "$WORK/emulator.log"; exit 1
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# write_agent DIR [TOKEN_EXTRA]: agent.toml for the running emulator, a refresh token and a
# device key (generated once per DIR, outside any measurement).
write_agent() {
  local d=$1 extra=${2:-}
  mkdir -p "$d/state"
  curl -sf -X POST "$EMU_URL/__emulator/refresh-tokens" |
    python3 -c 'import json,sys; sys.stdout.write(json.load(sys.stdin)["refresh_token"])' >"$d/refresh-token"
  chmod 600 "$d/refresh-token"
  cat >"$d/agent.toml" <<EOF
[salesforce]
instance_url = "$EMU_URL"
client_id = "3MVG9EMULATOR.asset-agent"

[auth]
refresh_token_file = "$d/refresh-token"

[asset]
device_id = "bench-device-0001"
name = "Bench Pump"
serial_number = "BENCH-0001"

[key]
path = "$d/device-key.pem"

[state]
dir = "$d/state"

[token]
verify = "jwks"
issuer = "$EMU_URL"
$extra

[api]
socket = "$d/run/agent.sock"
EOF
  [ -f "$d/device-key.pem" ] || "$AGENT" --config "$d/agent.toml" key generate >/dev/null
}

# start_agent DIR: sets AGENT_PID and waits (bounded) for the first token.
start_agent() {
  local d=$1
  "${SERVER_CPU[@]}" "$AGENT" --config "$d/agent.toml" run >"$d/agent.log" 2>&1 &
  AGENT_PID=$!
  PIDS+=("$AGENT_PID")
  for _ in $(seq 1 400); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$d/run/agent.sock" http://localhost/v1/token)" = 200 ] && return 0
    sleep 0.05
  done
  echo "agent got no token"; cat "$d/agent.log"; exit 1
}

# cpu_ticks PID: utime+stime in clock ticks (includes threads that have exited).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# cpu_ns PID: on-CPU nanoseconds summed over live threads (schedstat).
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {print s}'; }
# mem PID LABEL: one line of RSS/PSS from smaps_rollup.
mem() {
  awk -v label="$2" '/^Rss:/{r=$2} /^Pss:/{p=$2} /^Pss_Anon:/{pa=$2} /^Pss_File:/{pf=$2} /^Private_Dirty:/{pd=$2}
    END {printf "%-44s RSS %6d KiB (%.2f MiB)  PSS %6d KiB (anon %d, file %d)  private dirty %d KiB\n", label, r, r/1024, p, pa, pf, pd}' \
    "/proc/$1/smaps_rollup"
}
# mem_breakdown PID: RSS and PSS per mapping (binary, libc, heap, anonymous, stack...).
mem_breakdown() {
  awk '/^[0-9a-f]+-[0-9a-f]+ / { name = (NF >= 6) ? $6 : "[anon]"; sub(/.*\//, "", name) }
       /^Rss:/ { rss[name] += $2 } /^Pss:/ { pss[name] += $2 }
       END { for (n in rss) if (rss[n] > 0) printf "    %-28s RSS %5d KiB  PSS %5d KiB\n", n, rss[n], pss[n] }' \
    "/proc/$1/smaps" | sort -k3 -n -r
}
refreshes_ok() {
  curl -s --unix-socket "$1/run/agent.sock" http://localhost/v1/status |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["refreshes_ok"])'
}

# ---------------------------------------------------------------------------------------
# oha_run NAME SOCKET PATH CONCURRENCY KEEPALIVE(yes|no) SECS: appends one JSON line.
oha_run() {
  local name=$1 sock=$2 path=$3 c=$4 ka=$5 secs=$6 server_pid=$7 flags=()
  [ "$ka" = no ] && flags+=(--disable-keepalive)
  local t0 t1 s0 s1
  t0=$(date +%s.%N); s0=$(cpu_ticks "$server_pid")
  "${LOAD_CPU[@]}" oha --no-tui --output-format json -z "${secs}s" -c "$c" "${flags[@]}" \
    --unix-socket "$sock" "http://localhost$path" >"$WORK/oha.json"
  t1=$(date +%s.%N); s1=$(cpu_ticks "$server_pid")
  python3 - "$name" "$c" "$ka" "$WORK/oha.json" "$(echo "($s1 - $s0) / $(getconf CLK_TCK) / ($t1 - $t0) * 100" | bc -l)" <<'EOF' >>"$OUT/socket.jsonl"
import json, sys
name, c, ka, path, cpu = sys.argv[1:6]
d = json.load(open(path))
s = d["summary"]
lat = d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
print(json.dumps({"server": name, "c": int(c), "keepalive": ka == "yes",
    "rps": s["requestsPerSec"], "p50_ms": lat["p50"] * 1e3, "p99_ms": lat["p99"] * 1e3,
    "ok": codes.get("200", 0), "other": sum(v for k, v in codes.items() if k != "200"),
    # oha cancels the requests in flight when -z runs out and counts them as errors.
    "errors": sum(v for k, v in d.get("errorDistribution", {}).items() if "deadline" not in k),
    "error_kinds": d.get("errorDistribution", {}), "server_cpu_pct": float(cpu)}))
EOF
}

socket() {
  say "socket: GET /v1/token vs nginx (oha over Unix sockets, ${SOCKET_SECS}s x ${SOCKET_REPEAT} per cell)"
  machine | tee "$OUT/socket-machine.txt"
  start_emulator 3600
  local d=$WORK/socket
  write_agent "$d"
  start_agent "$d"
  # nginx serves the agent's own answer as a static file of exactly the same size.
  local n=$WORK/nginx
  mkdir -p "$n/www/v1" "$n/tmp"
  # nginx's worker runs as an unprivileged user: let it reach the document root.
  chmod 755 "$WORK" "$n" "$n/www" "$n/www/v1"
  curl -s --unix-socket "$d/run/agent.sock" http://localhost/v1/token >"$n/www/v1/token"
  cat >"$n/nginx.conf" <<EOF
worker_processes 1;
pid $n/nginx.pid;
error_log $n/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $n/tmp/body;
  proxy_temp_path $n/tmp/proxy;
  fastcgi_temp_path $n/tmp/fastcgi;
  uwsgi_temp_path $n/tmp/uwsgi;
  scgi_temp_path $n/tmp/scgi;
  types { }
  default_type application/json;
  sendfile on;
  keepalive_requests 10000000;
  keepalive_timeout 75s;
  server {
    listen unix:$n/nginx.sock;
    root $n/www;
  }
}
EOF
  "${SERVER_CPU[@]}" nginx -c "$n/nginx.conf" -g 'daemon off;' &
  local nginx_pid=$!
  PIDS+=("$nginx_pid")
  for _ in $(seq 1 100); do [ -S "$n/nginx.sock" ] && break; sleep 0.05; done
  local a_size n_size
  a_size=$(curl -s --unix-socket "$d/run/agent.sock" http://localhost/v1/token | wc -c)
  n_size=$(curl -s --unix-socket "$n/nginx.sock" http://localhost/v1/token | wc -c)
  echo "body size: agent $a_size bytes, nginx $n_size bytes" | tee "$OUT/socket-body.txt"
  if [ "$a_size" != "$n_size" ] ||
    [ "$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$n/nginx.sock" http://localhost/v1/token)" != 200 ]; then
    echo "nginx does not serve the same-size file; see $n/error.log"; exit 1
  fi
  # nginx's worker is the process doing the work; the master only supervises.
  local worker
  worker=$(pgrep -P "$nginx_pid" | head -1)
  : >"$OUT/socket.jsonl"
  # Warm-up, not recorded.
  "${LOAD_CPU[@]}" oha --no-tui -z 2s -c 16 --unix-socket "$d/run/agent.sock" http://localhost/v1/token >/dev/null
  "${LOAD_CPU[@]}" oha --no-tui -z 2s -c 16 --unix-socket "$n/nginx.sock" http://localhost/v1/token >/dev/null
  local r mode c ka
  for r in $(seq 1 "$SOCKET_REPEAT"); do
    for mode in "1 yes" "16 yes" "1 no" "16 no"; do
      read -r c ka <<<"$mode"
      oha_run agent "$d/run/agent.sock" /v1/token "$c" "$ka" "$SOCKET_SECS" "$AGENT_PID"
      oha_run nginx "$n/nginx.sock" /v1/token "$c" "$ka" "$SOCKET_SECS" "$worker"
    done
  done
  echo "agent refreshes during the runs (should be 1, the initial fetch): $(refreshes_ok "$d")"
  stop "$nginx_pid"; stop "$AGENT_PID"; stop "$EMU_PID"
  python3 - "$OUT/socket.jsonl" <<'EOF' | tee "$OUT/socket.md"
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1])]
def agg(server, c, ka):
    v = [r for r in rows if r["server"] == server and r["c"] == c and r["keepalive"] == ka]
    f = lambda k: (st.median(x[k] for x in v), min(x[k] for x in v), max(x[k] for x in v))
    return {k: f(k) for k in ("rps", "p50_ms", "p99_ms", "server_cpu_pct")}, sum(x["other"] + x["errors"] for x in v)
print("| load | agent req/s | nginx req/s | agent/nginx | agent p50 / p99 ms | nginx p50 / p99 ms | p99 agent/nginx | server CPU agent / nginx |")
print("|---|---|---|---|---|---|---|---|")
for c, ka in [(1, True), (16, True), (1, False), (16, False)]:
    a, ae = agg("agent", c, ka); n, ne = agg("nginx", c, ka)
    label = f"{'keep-alive' if ka else 'new connection per request'}, {c} client{'s' if c > 1 else ''}"
    rng = lambda t: f"{t[0]:,.0f} ({t[1]:,.0f}–{t[2]:,.0f})"
    print(f"| {label} | {rng(a['rps'])} | {rng(n['rps'])} | {a['rps'][0]/n['rps'][0]:.2f} | "
          f"{a['p50_ms'][0]:.3f} / {a['p99_ms'][0]:.3f} | {n['p50_ms'][0]:.3f} / {n['p99_ms'][0]:.3f} | "
          f"{a['p99_ms'][0]/n['p99_ms'][0]:.2f} | {a['server_cpu_pct'][0]:.0f} % / {n['server_cpu_pct'][0]:.0f} % |"
          + (f" non-200 or errors: agent {ae}, nginx {ne}" if ae or ne else ""))
print(f"\nmedian of {len(rows)//8} interleaved runs per cell (range in parentheses)")
EOF
}

# ---------------------------------------------------------------------------------------
memory() {
  say "memory: RSS/PSS of the device-profile agent"
  start_emulator 3600
  local d=$WORK/memory
  # min_ttl_wait = 0: a `?min_ttl=3600` request asks for a refresh and returns at once.
  write_agent "$d" 'min_ttl_wait = "0s"'
  start_agent "$d"
  : >"$OUT/memory.txt"
  sleep 5
  mem "$AGENT_PID" "idle, token held" | tee -a "$OUT/memory.txt"
  local round
  for round in 1 2; do
    "${LOAD_CPU[@]}" oha --no-tui -n "$REQUESTS" -c 16 --unix-socket "$d/run/agent.sock" \
      http://localhost/v1/token >"$WORK/oha.txt"
    grep -E 'Success rate|Requests/sec' "$WORK/oha.txt" | tr -s ' ' | sed 's/^/  /' >>"$OUT/memory.txt"
    mem "$AGENT_PID" "round $round: after $REQUESTS more requests" | tee -a "$OUT/memory.txt"
    rotate "$d" "$ROTATIONS"
    mem "$AGENT_PID" "round $round: after $ROTATIONS more rotations" | tee -a "$OUT/memory.txt"
  done
  sleep 5
  mem "$AGENT_PID" "idle again (5 s later)" | tee -a "$OUT/memory.txt"
  echo "  by mapping:" | tee -a "$OUT/memory.txt"
  mem_breakdown "$AGENT_PID" | tee -a "$OUT/memory.txt"
  # Beyond the goal's scenario: many clients at once (the server allows 256 connections).
  for round in 1 2 3; do
    "${LOAD_CPU[@]}" oha --no-tui -n 50000 -c 200 --unix-socket "$d/run/agent.sock" \
      http://localhost/v1/token >/dev/null
    mem "$AGENT_PID" "wide $round: after 50000 requests, 200 clients" | tee -a "$OUT/memory.txt"
  done
  stop "$AGENT_PID"; stop "$EMU_PID"
}

# rotate DIR N: N full refresh cycles (actor token, exchange, verify, cache write, publish)
# forced through the public API: `GET /v1/token?min_ttl=3600` against 3600 s tokens asks for
# more than any token has left, so each request wakes the refresh loop (the answer is 503
# at once with min_ttl_wait = 0; requests during a refresh coalesce into one more refresh).
rotate() {
  local d=$1 n=$2 before t0 s0
  before=$(refreshes_ok "$d"); t0=$(date +%s.%N); s0=$(cpu_ticks "$AGENT_PID")
  python3 - "$d/run/agent.sock" "$n" <<'EOF' | tee -a "$OUT/memory.txt"
import http.client, json, socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); self.sock.connect(path)
c = C("localhost")
def ok():
    c.request("GET", "/v1/status"); r = c.getresponse(); return json.loads(r.read())["refreshes_ok"]
start, sent, deadline = ok(), 0, time.time() + 600
while time.time() < deadline:
    c.request("GET", "/v1/token?min_ttl=3600"); c.getresponse().read(); sent += 1
    if sent % 10 == 0 and ok() - start >= n:
        break
    time.sleep(0.0005)
print(f"  rotations: {ok() - start} (asked {n}), trigger requests: {sent}")
EOF
  local after t1 s1
  after=$(refreshes_ok "$d"); t1=$(date +%s.%N); s1=$(cpu_ticks "$AGENT_PID")
  echo "  $((after - before)) rotations in $(printf '%.1f' "$(echo "$t1 - $t0" | bc -l)") s, agent CPU $(printf '%.2f' "$(echo "($s1 - $s0) * 1000 / $(getconf CLK_TCK) / ($after - $before)" | bc -l)") ms per rotation (incl. trigger requests)" |
    tee -a "$OUT/memory.txt"
}

# ---------------------------------------------------------------------------------------
coldstart() {
  say "cold start: process start to first token (key present)"
  start_emulator 3600
  local d=$WORK/cold
  write_agent "$d"
  cargo bench --bench coldstart --no-run >/dev/null 2>&1
  : >"$OUT/coldstart.txt"
  local cache
  for cache in remove keep; do
    # One start fills the cache for the `keep` runs (and warms the page cache for both).
    start_agent "$d"; stop "$AGENT_PID"
    cargo bench --bench coldstart -- --agent "$AGENT" --config "$d/agent.toml" \
      --socket "$d/run/agent.sock" --state-dir "$d/state" --runs "$COLD_RUNS" --cache "$cache" |
      grep -v '^fleet\|^$' | tee -a "$OUT/coldstart.txt"
  done
  echo "hyperfine: one-shot clients fetching a token from a running agent" | tee -a "$OUT/coldstart.txt"
  start_agent "$d"
  hyperfine -N --warmup 20 --runs 300 --export-markdown "$OUT/client.md" \
    "curl -s --unix-socket $d/run/agent.sock http://localhost/v1/token" \
    "$AGENT token --raw --socket $d/run/agent.sock" | tee -a "$OUT/coldstart.txt"
  stop "$AGENT_PID"; stop "$EMU_PID"
}

idle() {
  say "idle CPU over ${IDLE_SECS}s with 60 s tokens"
  start_emulator 60
  local d=$WORK/idle
  write_agent "$d"
  start_agent "$d"
  sleep 5
  local r0 t0 s0 n0 r1 t1 s1 n1 hz
  hz=$(getconf CLK_TCK)
  local w0 w1
  r0=$(refreshes_ok "$d"); t0=$(date +%s.%N); s0=$(cpu_ticks "$AGENT_PID"); n0=$(cpu_ns "$AGENT_PID")
  w0=$(cat /proc/"$AGENT_PID"/task/*/status | awk '/^voluntary_ctxt_switches/{s += $2} END {print s}')
  sleep "$IDLE_SECS"
  t1=$(date +%s.%N); s1=$(cpu_ticks "$AGENT_PID"); n1=$(cpu_ns "$AGENT_PID")
  w1=$(cat /proc/"$AGENT_PID"/task/*/status | awk '/^voluntary_ctxt_switches/{s += $2} END {print s}')
  r1=$(refreshes_ok "$d")
  {
    echo "window $(printf '%.1f' "$(echo "$t1 - $t0" | bc -l)") s, refreshes in it: $((r1 - r0))"
    echo "utime+stime: $((s1 - s0)) ticks of 1/$hz s = $(printf '%.4f' "$(echo "($s1 - $s0) / $hz / ($t1 - $t0) * 100" | bc -l)") % of one CPU"
    echo "schedstat:   $(printf '%.1f' "$(echo "($n1 - $n0) / 1000000" | bc -l)") ms on CPU = $(printf '%.4f' "$(echo "($n1 - $n0) / 1000000000 / ($t1 - $t0) * 100" | bc -l)") % of one CPU"
    echo "wake-ups (voluntary context switches, live threads): $((w1 - w0)); threads: $(ls /proc/"$AGENT_PID"/task | wc -l)"
    [ $((r1 - r0)) -gt 0 ] && echo "per refresh: $(printf '%.2f' "$(echo "($n1 - $n0) / 1000000 / ($r1 - $r0)" | bc -l)") ms of agent CPU (schedstat; the idle time between refreshes included)"
  } | tee "$OUT/idle.txt"
  stop "$AGENT_PID"; stop "$EMU_PID"
}

criterion() {
  say "criterion: cargo bench --bench refresh"
  cargo bench --bench refresh 2>&1 | grep -E '^[a-z_]+/|time:' | tee "$OUT/criterion.txt"
}

fleet() {
  say "fleet simulation"
  ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  cargo bench --bench fleet --no-run >/dev/null 2>&1
  local n
  : >"$OUT/fleet.txt"
  for n in $FLEET_AGENTS; do
    cargo bench --bench fleet -- --agents "$n" --csv "$OUT/fleet-$n.csv" | tee -a "$OUT/fleet.txt"
  done
  # The same reboot with the devices coming back over 30 s instead of 1 s.
  n=${FLEET_AGENTS%% *}
  cargo bench --bench fleet -- --agents "$n" --boot-spread 30 --csv "$OUT/fleet-$n-spread30.csv" |
    tee -a "$OUT/fleet.txt"
  plot_fleet
}

plot_fleet() {
  local args=() n
  for n in $FLEET_AGENTS; do [ -f "$OUT/fleet-$n.csv" ] && args+=("$n"); done
  [ ${#args[@]} -gt 0 ] || return 0
  for n in "${args[@]}"; do
    # 10 s bins: t, mean requests/s, % of agents holding a live token at the bin's end.
    awk -F, -v n="$n" 'NR > 1 { b = int($1 / 10) * 10; sum[b] += $2; live[b] = $7 }
      END { for (b in sum) printf "%d,%.2f,%.2f\n", b, sum[b] / 10, live[b] * 100 / n }' \
      "$OUT/fleet-$n.csv" | sort -t, -n -k1 >"$OUT/fleet-$n-10s.csv"
  done
  gnuplot -e "out='docs/fleet.png'; dir='$OUT'; fleets='${args[*]}'" scripts/bench/fleet.gp
  echo "plot: docs/fleet.png"
  for n in $FLEET_AGENTS; do [ -f "$OUT/fleet-$n-spread30.csv" ] && args+=("$n-spread30"); done
  python3 - "$OUT" "${args[@]}" <<'EOF' | tee "$OUT/fleet.md"
import csv, sys
out, fleets = sys.argv[1], sys.argv[2:]
print("| agents | steady req/s (120–300 s) | outage peak 1 s / 10 s / 60 s | recovery peak 1 s / 10 s / 60 s | reboot peak 1 s / 10 s / 60 s | after outage: 50 % / 99 % hold a token again |")
print("|---|---|---|---|---|---|")
for n in fleets:
    rows = [{k: int(v) for k, v in r.items()} for r in csv.DictReader(open(f"{out}/fleet-{n}.csv"))]
    req = {r["t"]: r["requests"] for r in rows}
    steady = sum(req[t] for t in range(120, 300)) / 180
    def peak(a, b, w):
        return max(sum(req[t] for t in range(s, s + w)) / w for s in range(a, b - w + 1))
    def cell(a, b):
        return " / ".join(f"{peak(a, b, w) / steady:.1f}x" for w in (1, 10, 60))
    live = {r["t"]: r["agents_with_live_token"] for r in rows}
    agents = int(n.split("-")[0])
    def back(frac):
        return next((t - 900 for t in range(900, 1500) if live[t] >= frac * agents), None)
    label = f"{agents:,}" + (" (reboot spread over 30 s)" if "spread30" in n else "")
    print(f"| {label} | {steady:.1f} | {cell(300, 900)} | {cell(900, 1500)} | {cell(1500, 2101)} | {back(0.5)} s / {back(0.99)} s |")
EOF
}

# ---------------------------------------------------------------------------------------
# instr: user-space instructions per keep-alive GET /v1/token (valgrind callgrind), a count
# that other load on the machine does not change: device build, release build, and nginx
# serving a static file of the same size.
callgrind_per_request() { # PID SOCKET N: prints instructions per request
  local pid=$1 sock=$2 n=$3 f
  oha --no-tui -n 200 -c 1 --unix-socket "$sock" http://localhost/v1/token >/dev/null
  callgrind_control -z "$pid" >/dev/null
  oha --no-tui -n "$n" -c 1 --unix-socket "$sock" http://localhost/v1/token >/dev/null
  callgrind_control -d "$pid" >/dev/null
  sleep 1
  f=$(ls -t "$WORK"/cg.out."$pid"* | head -1)
  echo $(($(grep -E '^(summary|totals):' "$f" | head -1 | awk '{print $2}') / n))
}

instr() {
  say "instructions per request (callgrind, 5000 keep-alive requests, 1 client)"
  command -v valgrind >/dev/null || { apt-get update -qq; apt-get install -y -qq valgrind; }
  start_emulator 3600
  local bin d vp size=0
  : >"$OUT/instr.txt"
  for bin in "$AGENT" "$EMU_BIN"; do
    d=$WORK/cg-$(basename "$(dirname "$bin")")
    write_agent "$d"
    valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out.%p" "$bin" --config "$d/agent.toml" run \
      >"$d/agent.log" 2>&1 &
    vp=$!
    PIDS+=("$vp")
    for _ in $(seq 1 600); do
      [ "$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$d/run/agent.sock" http://localhost/v1/token)" = 200 ] && break
      sleep 0.1
    done
    size=$(curl -s --unix-socket "$d/run/agent.sock" http://localhost/v1/token | wc -c)
    echo "agent $bin: $(callgrind_per_request "$vp" "$d/run/agent.sock" 5000) instructions per request" |
      tee -a "$OUT/instr.txt"
    stop "$vp"
  done
  stop "$EMU_PID"
  local n=$WORK/nginx-cg
  mkdir -p "$n/www/v1" "$n/tmp"
  head -c "$size" /dev/zero | tr '\0' x >"$n/www/v1/token"
  chmod -R a+rX "$n"
  cat >"$n/nginx.conf" <<NGINX
worker_processes 1; master_process off; daemon off; user root;
pid $n/nginx.pid; error_log $n/error.log warn;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $n/tmp/b; proxy_temp_path $n/tmp/p;
  fastcgi_temp_path $n/tmp/f; uwsgi_temp_path $n/tmp/u; scgi_temp_path $n/tmp/s;
  types { } default_type application/json; sendfile on; keepalive_requests 10000000;
  server { listen unix:$n/nginx.sock; root $n/www; } }
NGINX
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out.%p" nginx -c "$n/nginx.conf" >/dev/null 2>&1 &
  vp=$!
  PIDS+=("$vp")
  for _ in $(seq 1 100); do [ -S "$n/nginx.sock" ] && break; sleep 0.1; done
  sleep 1
  echo "nginx ($size-byte static file): $(callgrind_per_request "$vp" "$n/nginx.sock" 5000) instructions per request" |
    tee -a "$OUT/instr.txt"
  stop "$vp"
}

# ---------------------------------------------------------------------------------------
# Sourced (for one-off experiments with the functions above): define, run nothing.
[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0
sections=("$@")
[ ${#sections[@]} -gt 0 ] || sections=(setup build size socket memory coldstart idle criterion instr fleet)
for s in "${sections[@]}"; do
  case $s in
    setup | build | size | socket | memory | coldstart | idle | criterion | fleet | plot_fleet | instr) "$s" ;;
    *) echo "unknown section: $s"; exit 2 ;;
  esac
done
echo
echo "results in $OUT"
