#!/usr/bin/env bash
# Whole-process benchmarks of asset-agent (results and method in docs/benchmarks.md).
#
#   scripts/bench.sh [SECTION...]
#
# With no section, the quick suite (under 5 minutes once built) that reruns the socket,
# memory, cold start and idle CPU figures of docs/benchmarks.md, then prints one summary table:
#   build      the shipped release build of the agent and the emulator (x86_64)
#   memory     RSS and PSS idle with a token held, and after load (keep-alive and
#              new-connection requests)
#   socket     GET /v1/token vs nginx serving the same bytes, over Unix sockets (oha): four
#              cells (keep-alive / new connection per request, 1 / 16 clients), and a fifth
#              with a client lean enough not to be the bottleneck (benches/newconn.rs, new
#              connection per request, 16 clients); beside nginx, the floor, a server that
#              does nothing but answer (benches/floor.rs); rounds interleaved. Ends with
#              the guard: PASS/FAIL per cell (req/s >= 0.75x nginx, p99 <= 1.5x nginx),
#              exit 1 when the agent under test fails one
#   coldstart  process start to first token served (no token cache), p50 / p90
#   idle       agent CPU while idle with 60 s tokens, and CPU per refresh (refreshes are
#              budgeted since fleet-safe refresh, so they cannot be forced in bulk any more)
#   summary    the table, from the results of the sections above
# Other sections (not in the default run):
#   setup      install what the runs need (nginx, hyperfine, valgrind, bc, oha, the aarch64 target)
#   aarch64    the aarch64 release build, and its RSS/PSS idle under qemu-user (guest mappings)
#   size       the stripped shipped binaries
#   criterion  cargo bench --bench refresh (mint, verify, whole cycle)
#   instr      instructions per GET /v1/token (callgrind): the agent(s) and nginx
#   fleet      fleet simulation, 1k and 10k agents, plotted to docs/fleet.png
#
# Before/after in one run: BASELINE=path/to/old/asset-agent adds that binary as "before" to
# every agent measurement, interleaved with the one under test ("after"), so both see the
# same machine load.
#
# Knobs (environment): BENCH_OUT (results dir, default target/bench), SOCKET_SECS (length
# of each oha run, default 5), SOCKET_ROUNDS (interleaved rounds, default 3), IDLE_SECS (60),
# COLD_RUNS (30 per binary), REQUESTS (100000), LOAD_THREADS (oha's worker threads: 1 when
# it has a core of its own, else one per CPU), AGENT
# (default target/release/asset-agent), BASELINE (unset), FLEET_AGENTS ("1000 10000").
#
# All load goes to Unix sockets and to the emulator on 127.0.0.1; every loop is bounded.
# Servers (agents, nginx) are pinned to CPU 0 and the load generator to CPU 1 when the
# machine has two or more CPUs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

OUT=${BENCH_OUT:-$ROOT/target/bench}
SOCKET_SECS=${SOCKET_SECS:-5}
SOCKET_ROUNDS=${SOCKET_ROUNDS:-3}
IDLE_SECS=${IDLE_SECS:-60}
COLD_RUNS=${COLD_RUNS:-30}
REQUESTS=${REQUESTS:-100000}
FLEET_AGENTS=${FLEET_AGENTS:-"1000 10000"}
AGENT=${AGENT:-$ROOT/target/release/asset-agent}
EMU_BIN=${EMU_BIN:-$ROOT/target/release/asset-agent-emulator}
AARCH64=aarch64-unknown-linux-gnu
mkdir -p "$OUT"
# shellcheck source=scripts/emulator-agent.sh
. "$ROOT/scripts/emulator-agent.sh"
scratch_begin

# The binaries under test, as "label=path" (first the baseline, if any).
AGENTS=()
if [ -n "${BASELINE:-}" ]; then
  AGENTS+=("before=$(realpath "$BASELINE")" "after=$AGENT")
else
  AGENTS+=("agent=$AGENT")
fi

say() { printf '\n== %s ==\n' "$*"; }
# Agents run in a service's environment, only PATH: systemd sets no SSL_CERT_FILE /
# SSL_CERT_DIR (a developer shell often does, and that changes where the CA store is read
# from), and no ASSET_AGENT_* variables (CI exports its own, which the agent warns about as
# likely typos: other code, other figures).
AGENT_ENV=(env -i "PATH=$PATH")
if [ "$(nproc)" -ge 2 ]; then
  SERVER_CPU=(taskset -c 0)
  LOAD_CPU=(taskset -c 1)
  LOAD_THREADS=${LOAD_THREADS:-1}
else
  SERVER_CPU=()
  LOAD_CPU=()
  LOAD_THREADS=${LOAD_THREADS:-$(nproc)}
fi

machine() {
  echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r), $(free -g | awk '/Mem:/{print $2}') GiB"
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
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
  command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
  command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  fi
  command -v oha >/dev/null || cargo install oha --locked
  rustup target list --installed | grep -qx "$AARCH64" || rustup target add "$AARCH64"
}

build() {
  say build
  # One at a time, as the shipped binary is built: should a member ever unify other
  # dependency features into the agent's, this still measures the shipped binary.
  cargo build --release -p asset-agent
  cargo build --release -p asset-agent-emulator
  cargo bench --bench newconn --bench floor --no-run
}

# bench_bin NAME: the path of benches/NAME.rs built in the bench profile (the lean load
# generator, the floor server), built
# first if need be (compiler messages are not shown here: `build` shows them).
bench_bin() {
  cargo bench --bench "$1" --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    d = json.loads(line)
    if d.get("reason") == "compiler-artifact" and d["target"]["name"] == sys.argv[1] and d.get("executable"):
        print(d["executable"])' "$1"
}

aarch64_build() {
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    cargo build --release -p asset-agent --target "$AARCH64"
}

size() {
  say "size (the shipped release profile, stripped)"
  local f
  for f in target/release/asset-agent "target/$AARCH64/release/asset-agent"; do
    [ -f "$f" ] || { echo "$f: not built"; continue; }
    printf '%-50s %9d bytes  %5.2f MiB  (%s)\n' "$f" "$(stat -c %s "$f")" \
      "$(echo "$(stat -c %s "$f") / 1048576" | bc -l)" "$(file -b "$f" | cut -d, -f1-2,6-)"
  done | tee "$OUT/size.txt"
}

# ---------------------------------------------------------------------------------------
# Emulator + agent plumbing.

# start_emulator LIFETIME_SECS: sets EMU_URL, EMU_PID. The emulator runs on the load
# generator's CPU: it is only busy while an agent refreshes, never during the socket runs.
start_emulator() { start_emulator_bin "$EMU_BIN" "$1" "${LOAD_CPU[@]}"; }

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# write_agent DIR BINARY [TOKEN_EXTRA]: agent.toml for the running emulator, a refresh
# token and a device key (generated once per DIR, outside any measurement).
write_agent() { write_agent_config "$1" "$2" bench "${3:-}"; }

# start_agent DIR BINARY: sets AGENT_PID and waits (bounded) for the first token.
start_agent() {
  local d=$1 bin=$2
  "${AGENT_ENV[@]}" "${SERVER_CPU[@]}" "$bin" --config "$d/agent.toml" run >"$d/agent.log" 2>&1 &
  AGENT_PID=$!
  PIDS+=("$AGENT_PID")
  await_token "$d/run/agent.sock" "$AGENT_PID" "$d/agent.log" 20
}

# cpu_ticks PID: utime+stime in clock ticks (includes threads that have exited).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# cpu_ns PID: on-CPU nanoseconds summed over live threads (schedstat).
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {printf "%.0f\n", s}'; }
# mem_json PID LABEL STATE: one JSON line of RSS/PSS (KiB) from smaps_rollup.
mem_json() {
  awk -v label="$2" -v state="$3" -v threads="$(ls /proc/"$1"/task | wc -l)" \
    '/^Rss:/{r=$2} /^Pss:/{p=$2} /^Pss_Anon:/{pa=$2} /^Pss_File:/{pf=$2} /^Private_Dirty:/{pd=$2}
    END {printf "{\"agent\":\"%s\",\"state\":\"%s\",\"rss\":%d,\"pss\":%d,\"pss_anon\":%d,\"pss_file\":%d,\"private_dirty\":%d,\"threads\":%d}\n", label, state, r, p, pa, pf, pd, threads}' \
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
# with_server_cpu SERVER_PID COMMAND...: runs the load command on the load CPU and sets
# SERVER_CPU_PCT (the server's share of one core meanwhile) and SERVER_CPU_NS, and
# LOAD_CPU_PCT and LOAD_CPU_NS, the same for the load command itself: a load generator that
# uses its whole core is the bottleneck, and then its latencies say more about it than about
# the server.
with_server_cpu() {
  local server_pid=$1 t0 t1 n0 n1
  shift
  t0=$(date +%s.%N); n0=$(cpu_ns "$server_pid")
  # `times` in this shell (not a subshell): the CPU of its children that have ended.
  times >"$WORK/times.0"
  "${LOAD_CPU[@]}" "$@"
  times >"$WORK/times.1"
  t1=$(date +%s.%N); n1=$(cpu_ns "$server_pid")
  SERVER_CPU_PCT=$(echo "($n1 - $n0) / 1000000000 / ($t1 - $t0) * 100" | bc -l)
  SERVER_CPU_NS=$((n1 - n0))
  LOAD_CPU_NS=$(($(children_cpu_ns "$WORK/times.1") - $(children_cpu_ns "$WORK/times.0")))
  LOAD_CPU_PCT=$(echo "$LOAD_CPU_NS / 1000000000 / ($t1 - $t0) * 100" | bc -l)
}
# children_cpu_ns FILE: user + system CPU of finished children, from the output of `times`.
children_cpu_ns() {
  awk 'NR == 2 { for (i = 1; i <= 2; i++) { split($i, p, "m"); sub("s", "", p[2]); t += p[1] * 60 + p[2] } }
       END { printf "%.0f\n", t * 1e9 }' "$1"
}

# oha_run NAME SOCKET C KEEPALIVE(yes|no) SECS SERVER_PID ROUND: appends one JSON line.
oha_run() {
  local name=$1 sock=$2 c=$3 ka=$4 secs=$5 server_pid=$6 round=$7 flags=()
  [ "$ka" = no ] && flags+=(--disable-keepalive)
  with_server_cpu "$server_pid" oha --no-tui --worker-threads "$LOAD_THREADS" --output-format json -z "${secs}s" -c "$c" "${flags[@]}" \
    --unix-socket "$sock" "http://localhost/v1/token" >"$WORK/oha.json"
  python3 - "$name" "$c" "$ka" "$WORK/oha.json" "$SERVER_CPU_PCT" "$round" "$SERVER_CPU_NS" "$LOAD_CPU_PCT" "$LOAD_CPU_NS" <<'EOF' >>"$OUT/socket.jsonl"
import json, sys
name, c, ka, path, cpu, rnd, ns, load_cpu, load_ns = sys.argv[1:10]
d = json.load(open(path))
s = d["summary"]
lat = d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
answered = sum(codes.values())
print(json.dumps({"server": name, "client": "oha", "c": int(c), "keepalive": ka == "yes", "round": int(rnd),
    "rps": s["requestsPerSec"], "p50_ms": lat["p50"] * 1e3, "p99_ms": lat["p99"] * 1e3,
    # Server CPU (schedstat, all threads) per answered request: what other load on the
    # machine hardly changes, unlike req/s and latency.
    "cpu_us_per_req": int(ns) / 1e3 / answered if answered else None,
    "ok": codes.get("200", 0), "other": sum(v for k, v in codes.items() if k != "200"),
    # oha cancels the requests in flight when -z runs out and counts them as errors.
    "errors": sum(v for k, v in d.get("errorDistribution", {}).items() if "deadline" not in k and "aborted" not in k),
    "error_kinds": d.get("errorDistribution", {}), "server_cpu_pct": float(cpu),
    "client_cpu_us_per_req": int(load_ns) / 1e3 / answered if answered else None, "client_cpu_pct": float(load_cpu)}))
EOF
}

# newconn_run NAME SOCKET C SECS SERVER_PID ROUND: the same with the lean new-connection
# client; appends one JSON line.
newconn_run() {
  local name=$1 sock=$2 c=$3 secs=$4 server_pid=$5 round=$6
  with_server_cpu "$server_pid" "$NEWCONN" --bench --socket "$sock" --clients "$c" --secs "$secs" >"$WORK/newconn.json"
  python3 - "$name" "$c" "$WORK/newconn.json" "$SERVER_CPU_PCT" "$round" "$SERVER_CPU_NS" "$LOAD_CPU_PCT" "$LOAD_CPU_NS" <<'EOF' >>"$OUT/socket.jsonl"
import json, sys
name, c, path, cpu, rnd, ns, load_cpu, load_ns = sys.argv[1:9]
d = json.load(open(path))
print(json.dumps({"server": name, "client": "newconn", "c": int(c), "keepalive": False, "round": int(rnd),
    "rps": d["rps"], "p50_ms": d["p50_ms"], "p99_ms": d["p99_ms"], "p999_ms": d["p999_ms"],
    "cpu_us_per_req": int(ns) / 1e3 / d["requests"], "ok": d["requests"] - d["non_200"],
    "other": d["non_200"], "errors": d["errors"], "server_cpu_pct": float(cpu),
    "client_cpu_us_per_req": int(load_ns) / 1e3 / d["requests"], "client_cpu_pct": float(load_cpu)}))
EOF
}

socket() {
  say "socket: GET /v1/token vs nginx (oha over Unix sockets, ${SOCKET_SECS}s per run, ${SOCKET_ROUNDS} interleaved rounds)"
  NEWCONN=$(bench_bin newconn)
  [ -x "$NEWCONN" ] || { echo "could not build benches/newconn.rs (cargo bench --bench newconn --no-run)"; exit 1; }
  local floor_bin
  floor_bin=$(bench_bin floor)
  [ -x "$floor_bin" ] || { echo "could not build benches/floor.rs (cargo bench --bench floor --no-run)"; exit 1; }
  machine | tee "$OUT/socket-machine.txt"
  start_emulator 3600
  local spec label bin d names=() socks=() pids=()
  for spec in "${AGENTS[@]}"; do
    label=${spec%%=*} bin=${spec#*=} d=$WORK/socket-$label
    write_agent "$d" "$bin"
    start_agent "$d" "$bin"
    names+=("$label") socks+=("$d/run/agent.sock") pids+=("$AGENT_PID")
  done
  # nginx serves the first agent's own answer as a static file of exactly the same size.
  local n=$WORK/nginx first=$WORK/socket-${names[0]}
  mkdir -p "$n/www/v1" "$n/tmp"
  # nginx's worker runs as an unprivileged user: let it reach the document root.
  chmod 755 "$WORK" "$n" "$n/www" "$n/www/v1"
  curl -s --unix-socket "$first/run/agent.sock" http://localhost/v1/token >"$n/www/v1/token"
  chmod 644 "$n/www/v1/token"
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
  local sizes="" i
  for i in "${!names[@]}"; do
    sizes+="${names[$i]} $(curl -s --unix-socket "${socks[$i]}" http://localhost/v1/token | wc -c) bytes, "
  done
  local n_size
  n_size=$(curl -s --unix-socket "$n/nginx.sock" http://localhost/v1/token | wc -c)
  echo "body size: ${sizes}nginx $n_size bytes" | tee "$OUT/socket-body.txt"
  if [ "$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$n/nginx.sock" http://localhost/v1/token)" != 200 ]; then
    echo "nginx does not serve the file; see $n/error.log"; exit 1
  fi
  # nginx's worker is the process doing the work; the master only supervises.
  local worker
  worker=$(pgrep -P "$nginx_pid" | head -1)
  names+=(nginx) socks+=("$n/nginx.sock") pids+=("$worker")
  # The floor answers with the first agent's own bytes, as it answers a keep-alive request
  # (the floor closes after them when a request asks it to).
  local f=$WORK/floor
  mkdir -p "$f"
  python3 - "$first/run/agent.sock" "$f/answer" <<'EOF'
import socket, sys
def whole(got):
    head, sep, body = got.partition(b"\r\n\r\n")
    lengths = [int(l.split(b":", 1)[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
    return sep and lengths and len(body) >= lengths[0]
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"GET /v1/token HTTP/1.1\r\nhost: localhost\r\n\r\n")
got = b""
while not whole(got):
    more = s.recv(65536)
    if not more:
        sys.exit("the agent closed before its answer was whole")
    got += more
open(sys.argv[2], "wb").write(got)
EOF
  "${SERVER_CPU[@]}" "$floor_bin" --bench --socket "$f/floor.sock" --answer "$f/answer" &
  local floor_pid=$!
  PIDS+=("$floor_pid")
  for _ in $(seq 1 100); do [ -S "$f/floor.sock" ] && break; sleep 0.05; done
  if [ "$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$f/floor.sock" http://localhost/v1/token)" != 200 ]; then
    echo "the floor server ($floor_bin) does not answer on $f/floor.sock"; exit 1
  fi
  names+=(floor) socks+=("$f/floor.sock") pids+=("$floor_pid")
  : >"$OUT/socket.jsonl"
  # Warm-up, not recorded.
  for i in "${!names[@]}"; do
    "${LOAD_CPU[@]}" oha --no-tui -z 1s -c 16 --unix-socket "${socks[$i]}" http://localhost/v1/token >/dev/null
  done
  # Each round runs every cell for every server; the servers' order rotates per round so
  # none always runs first (or right after the same neighbour).
  local r mode c ka gen k j count=${#names[@]}
  for r in $(seq 1 "$SOCKET_ROUNDS"); do
    for mode in "1 yes oha" "16 yes oha" "1 no oha" "16 no oha" "16 no newconn"; do
      read -r c ka gen <<<"$mode"
      for k in $(seq 0 $((count - 1))); do
        j=$(((k + r) % count))
        if [ "$gen" = newconn ]; then
          newconn_run "${names[$j]}" "${socks[$j]}" "$c" "$SOCKET_SECS" "${pids[$j]}" "$r"
        else
          oha_run "${names[$j]}" "${socks[$j]}" "$c" "$ka" "$SOCKET_SECS" "${pids[$j]}" "$r"
        fi
      done
    done
  done
  for i in "${!names[@]}"; do
    case ${names[$i]} in nginx | floor) ;; *) echo "${names[$i]}: refreshes during the runs (1 = only the initial fetch): $(refreshes_ok "$WORK/socket-${names[$i]}")" ;; esac
  done
  stop "$nginx_pid"
  stop "$floor_pid"
  for i in "${!names[@]}"; do case ${names[$i]} in nginx | floor) ;; *) stop "${pids[$i]}" ;; esac; done
  stop "$EMU_PID"
  socket_table | tee "$OUT/socket.md"
  socket_guard
}

# socket_guard: each agent against the guard in every cell of the last socket run: at
# least GUARD_RPS (0.75) times nginx's throughput and a p99 at most GUARD_P99 (1.5) times
# nginx's (medians of the interleaved rounds). Prints PASS or FAIL per agent and cell; fails
# (exit 1) when the agent under test ("after", or the only one) fails a cell. "before"
# is shown for comparison only.
socket_guard() {
  python3 - "$OUT/socket.jsonl" "${GUARD_RPS:-0.75}" "${GUARD_P99:-1.5}" <<'EOF' | tee "$OUT/socket-guard.txt"
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1])]
min_rps, max_p99 = float(sys.argv[2]), float(sys.argv[3])
client = lambda r: r.get("client", "oha")
agents = [s for s in dict.fromkeys(r["server"] for r in rows) if s not in ("nginx", "floor")]
tested = "after" if "after" in agents else agents[-1]
med = lambda s, c, ka, gen, k: st.median(r[k] for r in rows if r["server"] == s and r["c"] == c and r["keepalive"] == ka and client(r) == gen)
failed = False
print(f"guard: req/s >= {min_rps}x nginx and p99 <= {max_p99}x nginx in every cell (agent under test: {tested})")
for c, ka, gen in sorted({(r["c"], r["keepalive"], client(r)) for r in rows}, key=lambda t: (not t[1], t[0], t[2])):
    label = f"{'keep-alive' if ka else 'new connection'}, {c} client{'s' if c > 1 else ''}" + (", newconn" if gen == "newconn" else "")
    n_rps, n_p99 = med("nginx", c, ka, gen, "rps"), med("nginx", c, ka, gen, "p99_ms")
    for a in agents:
        rps, p99 = med(a, c, ka, gen, "rps") / n_rps, med(a, c, ka, gen, "p99_ms") / n_p99
        ok = rps >= min_rps and p99 <= max_p99
        failed |= a == tested and not ok
        print(f"{'PASS' if ok else 'FAIL'}  {label:<34} {a:<8} req/s {rps:.2f}x  p99 {p99:.2f}x")
print("socket guard:", "FAIL" if failed else "PASS")
sys.exit(1 if failed else 0)
EOF
}

socket_table() {
  python3 - "$OUT/socket.jsonl" <<'EOF'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1])]
servers = [s for s in dict.fromkeys(r["server"] for r in rows) if s != "nginx"]
# Which load generator ran a row: oha, or the lean new-connection client.
client = lambda r: r.get("client", "oha")
def agg(server, c, ka, gen):
    v = [r for r in rows if r["server"] == server and r["c"] == c and r["keepalive"] == ka and client(r) == gen]
    f = lambda k: (st.median(x[k] for x in v), min(x[k] for x in v), max(x[k] for x in v))
    out = {k: f(k) for k in ("rps", "p50_ms", "p99_ms", "server_cpu_pct", "cpu_us_per_req")}
    # Rows from before the load generator's CPU was recorded have none.
    load = [x for x in v if x.get("client_cpu_us_per_req") is not None]
    out["load"] = (f"{st.median(x['client_cpu_us_per_req'] for x in load):.1f} ({st.median(x['client_cpu_pct'] for x in load):.0f} %)"
                   if load else "–")
    return out, sum(x["other"] + x["errors"] for x in v)
def paired(server, c, ka, gen):
    # p99 against nginx's in the same round (their runs are adjacent, so a noisy stretch of
    # the host touches both): the median ratio and the rounds at or under nginx's.
    by = lambda s, r: [x["p99_ms"] for x in rows if x["server"] == s and x["c"] == c and x["keepalive"] == ka and x["round"] == r and client(x) == gen]
    ratios = [a[0] / n[0] for r in sorted({x["round"] for x in rows}) for a, n in [(by(server, r), by("nginx", r))] if a and n]
    return f"{st.median(ratios):.2f} ({sum(q <= 1 for q in ratios)}/{len(ratios)})"
print("| load | server | req/s (range) | vs nginx | p50 / p99 ms | p99 vs nginx | p99 vs nginx, per round (rounds at or under) | server CPU | CPU µs per request | load generator's CPU µs per request (its core) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for c, ka, gen in [(1, True, "oha"), (16, True, "oha"), (1, False, "oha"), (16, False, "oha"), (16, False, "newconn")]:
    if not any(client(r) == gen and r["c"] == c and r["keepalive"] == ka for r in rows):
        continue
    label = f"{'keep-alive' if ka else 'new connection'}, {c} client{'s' if c > 1 else ''}" + (", lean client (newconn)" if gen == "newconn" else "")
    n, ne = agg("nginx", c, ka, gen)
    for s in servers + ["nginx"]:
        a, ae = agg(s, c, ka, gen)
        rng = f"{a['rps'][0]:,.0f} ({a['rps'][1]:,.0f}–{a['rps'][2]:,.0f})"
        print(f"| {label} | {s} | {rng} | {a['rps'][0]/n['rps'][0]:.2f} | {a['p50_ms'][0]:.3f} / {a['p99_ms'][0]:.3f} | "
              f"{a['p99_ms'][0]/n['p99_ms'][0]:.2f} | {paired(s, c, ka, gen) if s != 'nginx' else '–'} | {a['server_cpu_pct'][0]:.0f} % | {a['cpu_us_per_req'][0]:.1f} | {a['load']} |"
              + (f" non-200 or errors: {ae}" if ae else ""))
print(f"\nmedian of {max(r['round'] for r in rows)} interleaved {'rounds'} per cell (range in parentheses); "
      "floor: a server that does nothing but answer with the agent's bytes (benches/floor.rs)")
EOF
}

# ---------------------------------------------------------------------------------------
# memory: RSS and PSS of each agent, idle with a token held and after load. Agents are
# measured one after the other, twice, in alternating order.
memory() {
  say "memory: RSS/PSS, idle with a token held and after load"
  start_emulator 3600
  : >"$OUT/memory.jsonl"
  : >"$OUT/memory-maps.txt"
  local round spec label bin d order=()
  for round in 1 2; do
    order=("${AGENTS[@]}")
    [ "$round" = 2 ] && order=($(printf '%s\n' "${AGENTS[@]}" | tac))
    for spec in "${order[@]}"; do
      label=${spec%%=*} bin=${spec#*=} d=$WORK/memory-$label-$round
      write_agent "$d" "$bin"
      "$ROOT/scripts/uncache.py" "$bin"   # a cold start, as after a boot
      start_agent "$d" "$bin"
      sleep 3
      mem_json "$AGENT_PID" "$label" idle >>"$OUT/memory.jsonl"
      [ "$round" = 1 ] && { echo "$label, idle with a token held, by mapping:"; mem_breakdown "$AGENT_PID"; } | tee -a "$OUT/memory-maps.txt"
      "${LOAD_CPU[@]}" oha --no-tui -n "$REQUESTS" -c 16 --unix-socket "$d/run/agent.sock" \
        http://localhost/v1/token >/dev/null
      "${LOAD_CPU[@]}" oha --no-tui -n $((REQUESTS / 10)) -c 16 --disable-keepalive \
        --unix-socket "$d/run/agent.sock" http://localhost/v1/token >/dev/null
      sleep 2
      mem_json "$AGENT_PID" "$label" "after load" >>"$OUT/memory.jsonl"
      stop "$AGENT_PID"
    done
  done
  stop "$EMU_PID"
  memory_table | tee "$OUT/memory.md"
}

memory_table() {
  python3 - "$OUT/memory.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| agent | state | RSS KiB (MiB) | PSS KiB | PSS anon / file KiB | threads |")
print("|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['agent']} | {r['state']} | {r['rss']:,} ({r['rss']/1024:.2f}) | {r['pss']:,} | {r['pss_anon']:,} / {r['pss_file']:,} | {r['threads']} |")
EOF
}

# ---------------------------------------------------------------------------------------
# coldstart: process start to the first `GET /v1/token` answered 200, key present, no token
# cache (access token, exchange, JWKS, verification all happen), the socket polled every
# 250 µs from just before the spawn; runs alternate between the binaries.
coldstart() {
  say "cold start: process start to first token (key present, no token cache), $COLD_RUNS runs each"
  start_emulator 3600
  local spec label bin d args=()
  for spec in "${AGENTS[@]}"; do
    label=${spec%%=*} bin=${spec#*=} d=$WORK/cold-$label
    write_agent "$d" "$bin"
    # One start outside the measurement warms the page cache.
    start_agent "$d" "$bin"; stop "$AGENT_PID"
    args+=("$label" "$bin" "$d")
  done
  python3 - "$COLD_RUNS" "${AGENT_ENV[*]} ${SERVER_CPU[*]:-}" "${args[@]}" <<'EOF' | tee "$OUT/coldstart.txt"
import json, os, signal, socket, subprocess, sys, time
runs, pin, rest = int(sys.argv[1]), sys.argv[2].split(), sys.argv[3:]
agents = [rest[i:i + 3] for i in range(0, len(rest), 3)]
def status(sock_path):
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(sock_path)
        s.sendall(b"GET /v1/token HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        head = s.recv(12)
        s.close()
        return int(head[9:12])
    except (OSError, ValueError):
        return None
res = {label: [] for label, _, _ in agents}
for run in range(runs):
    for label, bin_, d in (agents if run % 2 == 0 else agents[::-1]):
        try:
            os.remove(os.path.join(d, "state", "token-cache.json"))
        except FileNotFoundError:
            pass
        sock = os.path.join(d, "run", "agent.sock")
        t0 = time.perf_counter()
        p = subprocess.Popen(pin + [bin_, "--config", os.path.join(d, "agent.toml"), "run"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        got = None
        while time.perf_counter() - t0 < 20:
            if status(sock) == 200:
                got = (time.perf_counter() - t0) * 1e3
                break
            time.sleep(0.00025)
        p.send_signal(signal.SIGTERM)
        p.wait()
        if got is not None:
            res[label].append(got)
for label, v in res.items():
    v.sort()
    q = lambda f: v[min(len(v) - 1, int(f * len(v)))]
    print(json.dumps({"agent": label, "runs": len(v), "p50_ms": q(0.5), "p90_ms": q(0.9), "max_ms": v[-1]}))
EOF
  stop "$EMU_PID"
}

# ---------------------------------------------------------------------------------------
# idle: every agent at once (independent processes), 60 s tokens, so the window holds
# refreshes as a device's idle time does.
idle() {
  say "idle CPU over ${IDLE_SECS}s with 60 s tokens"
  start_emulator 60
  local spec label bin d labels=() dirs=() pids=()
  for spec in "${AGENTS[@]}"; do
    label=${spec%%=*} bin=${spec#*=} d=$WORK/idle-$label
    write_agent "$d" "$bin" 'refresh = "eager"'
    start_agent "$d" "$bin"
    labels+=("$label") dirs+=("$d") pids+=("$AGENT_PID")
  done
  sleep 5
  local i t0 t1 hz r0=() s0=() n0=() w0=()
  hz=$(getconf CLK_TCK)
  wakeups() { cat /proc/"$1"/task/*/status | awk '/^voluntary_ctxt_switches/{s += $2} END {print s}'; }
  t0=$(date +%s.%N)
  for i in "${!labels[@]}"; do
    r0+=("$(refreshes_ok "${dirs[$i]}")") s0+=("$(cpu_ticks "${pids[$i]}")") n0+=("$(cpu_ns "${pids[$i]}")") w0+=("$(wakeups "${pids[$i]}")")
  done
  sleep "$IDLE_SECS"
  t1=$(date +%s.%N)
  : >"$OUT/idle.jsonl"
  for i in "${!labels[@]}"; do
    local r1 s1 n1 w1
    r1=$(refreshes_ok "${dirs[$i]}") s1=$(cpu_ticks "${pids[$i]}") n1=$(cpu_ns "${pids[$i]}") w1=$(wakeups "${pids[$i]}")
    python3 -c 'import json,sys; a=sys.argv[1:]; w=float(a[1])-float(a[0]); print(json.dumps({"agent":a[2],"window_s":round(w,1),"refreshes":int(a[3]),
      "cpu_pct_ticks":int(a[4])/int(a[5])/w*100,"cpu_ms_schedstat":int(a[6])/1e6,"cpu_pct":int(a[6])/1e9/w*100,"wakeups":int(a[7]),
      "ms_per_refresh":(int(a[6])/1e6/int(a[3])) if int(a[3]) else None}))' \
      "$t0" "$t1" "${labels[$i]}" $((r1 - ${r0[$i]})) $((s1 - ${s0[$i]})) "$hz" $((n1 - ${n0[$i]})) $((w1 - ${w0[$i]})) |
      tee -a "$OUT/idle.jsonl"
    stop "${pids[$i]}"
  done
  stop "$EMU_PID"
}

# ---------------------------------------------------------------------------------------
# aarch64: the aarch64 build's memory under qemu-user. qemu's own memory is not the
# agent's, so only the guest's file mappings (the agent binary and the aarch64 libraries)
# are summed; the guest heap is inside qemu's anonymous memory and is not separable.
aarch64() {
  say "aarch64 (qemu-user): RSS of the guest's file mappings, idle with a token held"
  aarch64_build
  start_emulator 3600
  local bin=$ROOT/target/$AARCH64/release/asset-agent d=$WORK/arm
  write_agent "$d" "$AGENT"
  "${AGENT_ENV[@]}" QEMU_LD_PREFIX=/usr/aarch64-linux-gnu "${SERVER_CPU[@]}" qemu-aarch64 "$bin" --config "$d/agent.toml" run >"$d/agent.log" 2>&1 &
  AGENT_PID=$!
  PIDS+=("$AGENT_PID")
  await_token "$d/run/agent.sock" "$AGENT_PID" "$d/agent.log" 60
  sleep 3
  awk -v bin="$bin" '/^[0-9a-f]+-[0-9a-f]+ / { name = (NF >= 6) ? $6 : ""; guest = (name == bin || name ~ /aarch64-linux-gnu/) }
       guest && /^Rss:/ { r += $2 } guest && /^Pss:/ { p += $2 }
       END { printf "{\"agent\":\"aarch64 (qemu)\",\"guest_file_rss\":%d,\"guest_file_pss\":%d}\n", r, p }' \
    "/proc/$AGENT_PID/smaps" | tee "$OUT/aarch64.jsonl"
  mem_json "$AGENT_PID" "qemu-aarch64 process (qemu included)" idle | tee -a "$OUT/aarch64.jsonl"
  stop "$AGENT_PID"; stop "$EMU_PID"
}

# ---------------------------------------------------------------------------------------
summary() {
  say "summary"
  python3 - "$OUT" <<'EOF' | tee "$OUT/summary.md"
import json, os, statistics as st, sys
out = sys.argv[1]
def load(name):
    p = os.path.join(out, name)
    return [json.loads(l) for l in open(p)] if os.path.exists(p) else []
mem, sock, idle = load("memory.jsonl"), load("socket.jsonl"), load("idle.jsonl")
cold = [json.loads(l) for l in open(os.path.join(out, "coldstart.txt")) if l.startswith("{")] if os.path.exists(os.path.join(out, "coldstart.txt")) else []
agents = list(dict.fromkeys([r["agent"] for r in mem] + [r["server"] for r in sock if r["server"] != "nginx"] + [r["agent"] for r in cold] + [r["agent"] for r in idle]))
rows = []
def cell(a, f):
    try:
        return f(a)
    except (ValueError, ZeroDivisionError, KeyError, st.StatisticsError):
        return "–"
def med(rs, k):
    return st.median(r[k] for r in rs)
def memv(a, state, k):
    v = [r[k] for r in mem if r["agent"] == a and r["state"] == state]
    return f"{max(v):,} KiB ({max(v) / 1024:.2f} MiB)"
def sockv(a, c, ka, gen="oha"):
    mine = [r for r in sock if r["server"] == a and r["c"] == c and r["keepalive"] == ka and r.get("client", "oha") == gen]
    ng = [r for r in sock if r["server"] == "nginx" and r["c"] == c and r["keepalive"] == ka and r.get("client", "oha") == gen]
    per_round = [a["p99_ms"] / n["p99_ms"] for a in mine for n in ng if a["round"] == n["round"]]
    return (f"{med(mine, 'rps') / med(ng, 'rps'):.2f}x / {med(mine, 'p99_ms') / med(ng, 'p99_ms'):.2f}x"
            f" (p99 per round {st.median(per_round):.2f}x, {sum(q <= 1 for q in per_round)}/{len(per_round)} at or under;"
            f" {med(mine, 'cpu_us_per_req'):.1f} vs {med(ng, 'cpu_us_per_req'):.1f} µs CPU/req{loadv(mine + ng)})")
def loadv(rs):
    # The load generator's own CPU, when recorded: at ~100 % of its core it is the bottleneck.
    rs = [r for r in rs if r.get("client_cpu_us_per_req") is not None]
    return (f"; load generator {med(rs, 'client_cpu_us_per_req'):.1f} µs/req at {med(rs, 'client_cpu_pct'):.0f} % of its core"
            if rs else "")
def first(rs, a):
    # A section not run leaves no row: the cell shows "–" (KeyError, caught by cell).
    r = next((r for r in rs if r["agent"] == a), None)
    if r is None:
        raise KeyError(a)
    return r
def coldv(a):
    r = first(cold, a)
    return f"{r['p50_ms']:.1f} ms (p90 {r['p90_ms']:.1f})"
def idlev(a):
    r = first(idle, a)
    return f"{r['cpu_pct']:.4f} % ({r['refreshes']} refreshes, {r['cpu_ms_schedstat']:.1f} ms)"
lines = [
    ("RSS idle, token held (max of 2)", lambda a: memv(a, "idle", "rss")),
    ("PSS idle, token held", lambda a: memv(a, "idle", "pss")),
    ("RSS after load", lambda a: memv(a, "after load", "rss")),
    ("PSS after load", lambda a: memv(a, "after load", "pss")),
    ("keep-alive, 1 client: req/s / p99 vs nginx", lambda a: sockv(a, 1, True)),
    ("keep-alive, 16 clients", lambda a: sockv(a, 16, True)),
    ("new connection, 1 client", lambda a: sockv(a, 1, False)),
    ("new connection, 16 clients", lambda a: sockv(a, 16, False)),
    ("new connection, 16 clients, lean client (newconn)", lambda a: sockv(a, 16, False, "newconn")),
    ("cold start to first token, p50", coldv),
    (f"idle CPU", idlev),
]
print("| figure | " + " | ".join(agents) + " |")
print("|---|" + "---|" * len(agents))
for name, f in lines:
    print(f"| {name} | " + " | ".join(cell(a, f) for a in agents) + " |")
print()
print("socket cells: throughput / p99 as a multiple of nginx's (median of the interleaved rounds), p99 against nginx's in the same round, server CPU per request (agent vs nginx), and the load generator's own CPU per request")
EOF
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
  local spec label bin d vp size=0
  : >"$OUT/instr.txt"
  for spec in "${AGENTS[@]}"; do
    label=${spec%%=*} bin=${spec#*=} d=$WORK/cg-$label
    write_agent "$d" "$bin"
    "${AGENT_ENV[@]}" valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out.%p" "$bin" --config "$d/agent.toml" run \
      >"$d/agent.log" 2>&1 &
    vp=$!
    PIDS+=("$vp")
    await_token "$d/run/agent.sock" "$vp" "$d/agent.log" 60
    size=$(curl -s --unix-socket "$d/run/agent.sock" http://localhost/v1/token | wc -c)
    echo "$label ($bin): $(callgrind_per_request "$vp" "$d/run/agent.sock" 5000) instructions per request" |
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
[ ${#sections[@]} -gt 0 ] || sections=(build memory socket coldstart idle summary)
for s in "${sections[@]}"; do
  case $s in
    setup | build | size | socket | memory | coldstart | idle | summary | aarch64 | criterion | fleet | plot_fleet | instr) "$s" ;;
    *) echo "unknown section: $s"; exit 2 ;;
  esac
done
echo
echo "results in $OUT"
