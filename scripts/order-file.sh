#!/usr/bin/env bash
# Regenerates packaging/x86_64-unknown-linux-gnu.order: the functions the agent runs from
# start to serving tokens, which build.rs asks the linker to place first, together.
#
#   scripts/order-file.sh          (needs valgrind and perf; takes a few minutes)
#
# Why: the kernel maps a program's code 64 KiB at a time around each page it touches
# (fault-around), so code the agent runs once, scattered over all of .text, kept the whole
# 2.3 MiB of .text resident. Placed together, the code it runs fills ~1 MiB and the rest is
# never mapped (docs/benchmarks.md, "Memory").
#
# How: a build with symbols runs a cold start (no token cache) against the emulator over
# HTTP, then one over HTTPS (nginx terminating TLS in front of the emulator, with a CA made
# here, so rustls, certificate checks and the ciphers are in the list as on a real device)
# and a warm restart (cached token), each serving keep-alive and one-request connections,
# every GET route, a forced refresh and a clean stop: first under callgrind (every
# function that ran), then natively under `perf record -e page-faults` (what ran natively
# but not under valgrind: CPU-specific assembly, timing-dependent paths), repeated until
# no new function shows up. A run in which the agent serves no token fails the script.
# Runs differ by a few names: timing (a contended mutex), the CPU (ring picks its assembly
# by CPU feature, and valgrind's emulated CPU lacks some), and the page-fault rounds see a
# function only when its page faults, not when listed code next to it has mapped it
# already. Lists from several runs or machines can be merged (`sort -u`); a name that does
# not run costs nothing. Symbol names
# change with the toolchain and dependencies; a stale list is harmless but stops helping,
# which `.ci/run`'s memory budget (scripts/memory-check.sh) catches.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIPLE=x86_64-unknown-linux-gnu
ORDER=packaging/$TRIPLE.order
T=target/order
for tool in valgrind perf curl oha nginx openssl; do
  command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
# shellcheck source=scripts/emulator-agent.sh
. scripts/emulator-agent.sh
scratch_begin

# The shipped profile exactly (symbol names carry a hash of the profile, so a build with
# `strip = false` in it names every function differently); only the final link keeps the
# symbols, through an argument cargo does not hash.
build() {
  cargo build --quiet --release -p asset-agent-emulator --target-dir "$T"
  cargo rustc --quiet --release -p asset-agent --bin asset-agent --target-dir "$T" -- -C strip=none
  AGENT=$T/release/asset-agent
}

# --- the scenario ------------------------------------------------------------------------
# start_tls_proxy: sets TLS_URL (https://localhost:PORT, nginx in front of the emulator)
# and CA_FILE.
start_tls_proxy() {
  local t=$WORK/tls port
  mkdir -p "$t/tmp"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$t/ca.key" -out "$t/ca.pem" -days 2 \
    -subj "/CN=asset-agent order-file CA" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout "$t/server.key" -out "$t/server.csr" \
    -subj "/CN=localhost" 2>/dev/null
  printf 'subjectAltName=DNS:localhost\n' >"$t/ext"
  openssl x509 -req -in "$t/server.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial \
    -out "$t/server.pem" -days 2 -extfile "$t/ext" 2>/dev/null
  port=$(free_port)
  cat >"$t/nginx.conf" <<EOF
worker_processes 1; master_process off; daemon off; pid $t/nginx.pid; error_log $t/error.log warn;
events { worker_connections 64; }
http {
  access_log off; client_body_temp_path $t/tmp/b; proxy_temp_path $t/tmp/p;
  fastcgi_temp_path $t/tmp/f; uwsgi_temp_path $t/tmp/u; scgi_temp_path $t/tmp/s;
  server {
    listen 127.0.0.1:$port ssl;
    ssl_certificate $t/server.pem; ssl_certificate_key $t/server.key;
    location / { proxy_pass $EMU_URL; proxy_set_header Host \$http_host; }
  }
}
EOF
  nginx -c "$t/nginx.conf" >"$t/nginx.log" 2>&1 &
  PIDS+=($!)
  TLS_URL="https://localhost:$port"
  CA_FILE=$t/ca.pem
  for _ in $(seq 1 100); do curl -sf --cacert "$CA_FILE" "$TLS_URL/__emulator/stats" >/dev/null && return 0; sleep 0.05; done
  echo "the TLS proxy did not start" >&2; cat "$t/nginx.log" >&2; exit 1
}

write_agent() {
  local d=$WORK/agent
  write_agent_config "$d" "$AGENT" order
  # The same agent reaching the emulator through the TLS proxy (the tokens' issuer stays
  # the emulator's own URL).
  sed "s#^instance_url = .*#instance_url = \"$TLS_URL\"#" "$d/agent.toml" >"$d/agent-tls.toml"
}

# under TOOL RUN COMMAND...: runs COMMAND in place of this (sub)shell, under callgrind
# (one profile per process) or perf (one recording per run), in a service's environment
# (only PATH) plus SSL_CERT_FILE for the test CA.
under() {
  local tool=$1 run=$2
  shift 2
  local service_env=(env -i "PATH=$PATH" "SSL_CERT_FILE=$CA_FILE")
  case $tool in
    callgrind) exec "${service_env[@]}" valgrind --tool=callgrind --demangle=no --callgrind-out-file="$WORK/cg.%p" "$@" ;;
    perf) exec "${service_env[@]}" perf record -q -e page-faults -c 1 -d -o "$WORK/pf.$run.data" "$@" ;;
  esac
}

# run_scenario TOOL: runs the agent under TOOL: cold over HTTP, cold over HTTPS, warm
# over HTTPS.
run_scenario() {
  local tool=$1 d=$WORK/agent sock=$WORK/agent/run/agent.sock pid p run config
  for run in cold-http cold-https warm-https; do
    config=$d/agent.toml
    case $run in *-https) config=$d/agent-tls.toml ;; esac
    case $run in cold-*) rm -f "$d/state/token-cache.json" ;; esac
    (under "$tool" "$run" "$AGENT" --config "$config" run) >"$WORK/agent.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    echo "  $run under $tool"
    await_token "$sock" "$pid" "$WORK/agent.log" 30
    oha --no-tui -n 300 -c 4 --unix-socket "$sock" http://localhost/v1/token >/dev/null
    oha --no-tui -n 100 -c 1 --disable-keepalive --unix-socket "$sock" http://localhost/v1/token >/dev/null
    for p in /v1/status /v1/health/ready /v1/health/live /metrics "/v1/token?min_ttl=60"; do
      curl -s --unix-socket "$sock" "http://localhost$p" >/dev/null
    done
    curl -s -H 'Accept: text/plain' --unix-socket "$sock" http://localhost/v1/token >/dev/null
    curl -s -X POST --unix-socket "$sock" http://localhost/v1/refresh >/dev/null
    sleep 0.5
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  done
}

# Function symbols (name -> size) of the symbolised build.
symbols() { nm -S "$AGENT" | awk 'NF == 4 && $3 ~ /^[tTwW]$/ { print $4 }' | sort -u >"$WORK/symbols"; }

# --- callgrind: every function that ran ------------------------------------------------
build
start_emulator_bin "$T/release/asset-agent-emulator" 3600
start_tls_proxy
write_agent
echo "callgrind run (about a minute)"
run_scenario callgrind
symbols
# Function names of the agent's own object (ob=) in callgrind's compressed format.
python3 - "$WORK" "$(basename "$AGENT")" >"$WORK/ran" <<'EOF'
import glob, re, sys
work, binary = sys.argv[1:3]
names = set()
for path in glob.glob(f"{work}/cg.*"):
    fns, obs, ob = {}, {}, None
    def name(s, table):
        m = re.match(r"\((\d+)\)(?: (.*))?", s)
        if not m:
            return s
        if m.group(2):
            table[m.group(1)] = m.group(2)
        return table.get(m.group(1))
    for line in open(path):
        line = line.rstrip("\n")
        if line.startswith("ob="):
            ob = name(line[3:], obs)
        elif line.startswith("cob="):
            name(line[4:], obs)
        elif line.startswith("cfn="):
            name(line[4:], fns)
        elif line.startswith("fn="):
            f = name(line[3:], fns)
            if ob and ob.endswith("/" + binary) and f:
                names.add(f.split("'")[0])
print("\n".join(sorted(names)))
EOF
sort -u "$WORK/ran" | comm -12 - "$WORK/symbols" >"$WORK/order"
echo "callgrind: $(wc -l <"$WORK/order") functions"

# --- perf: first touches outside the placed block, natively, until none is new ----------
for round in 1 2 3 4 5; do
  cp "$WORK/order" "$ORDER"
  build
  symbols
  run_scenario perf
  # Faults inside the agent's own code (address == instruction pointer), as symbols.
  # perf prints "ADDRESS ITS-SYMBOL IP ITS-SYMBOL"; a code fault has ADDRESS == IP.
  for data in "$WORK"/pf.*.data; do
    perf script -i "$data" -F addr,ip,sym --no-demangle 2>/dev/null
  done |
    awk '$1 == $3 && $2 != "[unknown]" { print $2 }' | sort -u |
    comm -12 - "$WORK/symbols" | comm -23 - <(sort -u "$WORK/order") >"$WORK/new" || true
  echo "round $round: functions that ran natively outside the list: $(wc -l <"$WORK/new")"
  [ -s "$WORK/new" ] || break
  sort -u "$WORK/order" "$WORK/new" -o "$WORK/order"
done
cp "$WORK/order" "$ORDER"
echo "$ORDER: $(wc -l <"$ORDER") functions"
