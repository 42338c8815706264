#!/usr/bin/env bash
# Soak: a filesystem that stops answering must hold neither the socket API nor the refresh
# schedule. Two runs against the emulator (6 s asset tokens, so rotations happen while it
# lasts): a sink on a loop-mounted ext4 image, then the state directory (refresh token and
# token cache, with 4 s sessions and rotating refresh tokens) on one. Each is frozen
# (fsfreeze -f) for FREEZE_SECS while a client polls GET /v1/token every 100 ms with a 2 s
# limit; the run reports the probes, the failures, p50/p99/max latency, the refreshes
# during the freeze, and the agent's anonymous memory and threads at its end (the cost of
# the writes stuck meanwhile). Goal, enforced: 0 failures, p99 under 50 ms, at least 3 refreshes.
#
#   scripts/soak-freeze.sh AGENT_BINARY EMULATOR_BINARY
#
# Needs root (loop mount, fsfreeze). Without it the script says so and exits 0, unless
# ASSET_AGENT_REQUIRE_ROOT or ASSET_AGENT_REQUIRE_FSFREEZE is set (CI): then it fails. The
# filesystem is always thawed and unmounted, and every process ended, however it stops.
set -euo pipefail
FREEZE_SECS=${FREEZE_SECS:-30}
P99_MS=50

[ $# -eq 2 ] || { echo "usage: $0 AGENT_BINARY EMULATOR_BINARY" >&2; exit 2; }
AGENT=$(realpath "$1")
EMU=$(realpath "$2")

cannot() {
  if [ -n "${ASSET_AGENT_REQUIRE_ROOT:-}${ASSET_AGENT_REQUIRE_FSFREEZE:-}" ]; then
    echo "soak-freeze: $1, and ASSET_AGENT_REQUIRE_ROOT/ASSET_AGENT_REQUIRE_FSFREEZE is set" >&2
    exit 1
  fi
  echo "soak-freeze: skipped: $1"
  exit 0
}
[ "$(id -u)" = 0 ] || cannot "needs root (loop mount and fsfreeze)"
for tool in mkfs.ext4 fsfreeze mount umount curl python3; do
  command -v "$tool" >/dev/null 2>&1 || cannot "$tool is missing"
done

# shellcheck source=scripts/emulator-agent.sh
. "$(dirname "$0")/emulator-agent.sh"
scratch_begin
MOUNTS=()
cleanup() {
  local m
  # Thawed first: a process stuck in a write on the frozen filesystem cannot exit before.
  for m in "${MOUNTS[@]}"; do fsfreeze -u "$m" 2>/dev/null || true; done
  scratch_end_keep
  for m in "${MOUNTS[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  rm -rf "$WORK"
}
scratch_end_keep() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# A fresh ext4 image mounted on $1.
loop_fs() {
  local mnt=$1
  mkdir -p "$mnt"
  truncate -s 16M "$mnt.img"
  mkfs.ext4 -q "$mnt.img"
  mount -o loop "$mnt.img" "$mnt" || cannot "could not loop-mount an ext4 image"
  MOUNTS+=("$mnt")
}

exchanges() {
  curl -sf "$EMU_URL/__emulator/stats" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["grants"].get("token_exchange", 0))'
}

# Polls the agent's socket every 100 ms for $2 seconds; prints "probes failures p50 p99 max".
poll() {
  python3 - "$1" "$2" <<'EOF'
import socket, sys, time
path, secs = sys.argv[1], float(sys.argv[2])
lat, failed = [], 0
end = time.monotonic() + secs
while time.monotonic() < end:
    t0 = time.monotonic()
    ok = False
    try:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(2)
        s.connect(path)
        s.sendall(b"GET /v1/token HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        ok = data.startswith(b"HTTP/1.1 200")
    except OSError:
        ok = False
    took = (time.monotonic() - t0) * 1000
    if ok:
        lat.append(took)
    else:
        failed += 1
    time.sleep(max(0.0, 0.1 - (time.monotonic() - t0)))
lat.sort()
pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("inf")
print(len(lat) + failed, failed, "%.1f" % pick(0.5), "%.1f" % pick(0.99), "%.1f" % (lat[-1] if lat else float("inf")))
EOF
}

# One run: $1 names it (sink, state).
soak() {
  local what=$1 d=$WORK/$1 mnt extra="" rotate=()
  mkdir -p "$d"
  chmod 755 "$d"
  case $what in
    sink) mnt=$d/sinkfs ;;
    state) mnt=$d/state; rotate=(--rotate-refresh-tokens --session-lifetime 4) ;;
  esac
  loop_fs "$mnt"
  local port
  port=$(free_port)
  EMU_URL="http://127.0.0.1:$port"
  "$EMU" --listen "127.0.0.1:$port" --token-lifetime 6 "${rotate[@]}" >"$d/emulator.log" 2>&1 &
  EMU_PID=$!
  PIDS+=("$EMU_PID")
  for _ in $(seq 1 200); do curl -sf "$EMU_URL/__emulator/stats" >/dev/null && break; sleep 0.05; done
  write_agent_config "$d" "$AGENT" "soak-$what"
  # The runtime directory (socket, fallback copy of a rotated refresh token) is a tmpfs, as
  # /run is on a device.
  mkdir -p "$d/run"
  mount -t tmpfs -o size=4m,mode=0755 tmpfs "$d/run" || cannot "could not mount a tmpfs"
  MOUNTS+=("$d/run")
  if [ "$what" = sink ]; then
    chmod 755 "$mnt"
    printf '\n[[sink]]\npath = "%s/token.jwt"\n' "$mnt" >>"$d/agent.toml"
  else
    # The refresh token lives on the frozen filesystem too.
    mv "$d/refresh-token" "$mnt/refresh-token"
    sed -i "s|^refresh_token_file = .*|refresh_token_file = \"$mnt/refresh-token\"|" "$d/agent.toml"
  fi
  env -i "PATH=$PATH" "$AGENT" --config "$d/agent.toml" run >"$d/agent.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  await_token "$d/run/agent.sock" "$pid" "$d/agent.log" 30
  if [ "$what" = sink ]; then
    for _ in $(seq 1 100); do [ -s "$mnt/token.jwt" ] && break; sleep 0.1; done
  fi
  local before after
  before=$(exchanges)
  fsfreeze -f "$mnt" || cannot "fsfreeze -f failed on $mnt"
  read -r probes failed p50 p99 max < <(poll "$d/run/agent.sock" "$FREEZE_SECS")
  after=$(exchanges)
  local anon threads
  anon=$(awk '/^RssAnon:/{print $2}' "/proc/$pid/status")
  threads=$(awk '/^Threads:/{print $2}' "/proc/$pid/status")
  fsfreeze -u "$mnt"
  local refreshes=$((after - before))
  echo "soak-freeze $what: ${FREEZE_SECS} s frozen: $probes probes, $failed failed, latency p50 $p50 ms, p99 $p99 ms, max $max ms; $refreshes refreshes during the freeze; at its end RssAnon $anon KiB, $threads threads"
  local bad=0
  [ "$failed" -eq 0 ] || bad=1
  python3 -c "import sys; sys.exit(0 if float('$p99') < $P99_MS else 1)" || bad=1
  [ "$refreshes" -ge 3 ] || bad=1
  if [ "$bad" = 1 ]; then
    echo "soak-freeze $what: FAILED (goal: 0 failures, p99 < $P99_MS ms, >= 3 refreshes); the agent's log:"
    cat "$d/agent.log"
    exit 1
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
  kill "$EMU_PID"; wait "$EMU_PID" 2>/dev/null || true
}

soak sink
soak state
echo "soak-freeze: ok"
