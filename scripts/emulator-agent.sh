# Sourced by the measuring scripts (bench.sh, memory-check.sh): a scratch
# directory whose processes end with the script, the emulator, and an agent configured for
# it. Not a command.
#
#   scratch_begin                   WORK (a new temp directory), PIDS (killed on exit)
#   start_emulator_bin BIN SECS [PREFIX...]
#                                   EMU_URL, EMU_PID; tokens of SECS seconds; PREFIX runs
#                                   it (taskset, say); the log in $WORK/emulator.log
#   write_agent_config DIR BIN NAME [TOKEN_EXTRA]
#                                   DIR/agent.toml for the emulator at EMU_URL, a refresh
#                                   token, and a device key (generated once per DIR, with
#                                   BIN); NAME names the device ("NAME-device-0001");
#                                   TOKEN_EXTRA goes into [token]
#   await_token SOCKET PID LOG SECS waits (at most SECS) for the agent PID to answer
#                                   GET /v1/token with 200 on SOCKET; if it does not, or
#                                   exits first, prints LOG and exits 1
#   free_port                       a free TCP port on 127.0.0.1

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

scratch_begin() {
  WORK=$(mktemp -d)
  PIDS=()
  trap scratch_end EXIT
}

scratch_end() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}

start_emulator_bin() {
  local bin=$1 secs=$2 port
  shift 2
  port=$(free_port)
  EMU_URL="http://127.0.0.1:$port"
  "$@" "$bin" --listen "127.0.0.1:$port" --token-lifetime "$secs" >"$WORK/emulator.log" 2>&1 &
  EMU_PID=$!
  PIDS+=("$EMU_PID")
  for _ in $(seq 1 200); do
    curl -sf "$EMU_URL/__emulator/stats" >/dev/null && return 0
    sleep 0.05
  done
  echo "the emulator did not start" >&2
  cat "$WORK/emulator.log" >&2
  exit 1
}

write_agent_config() {
  local d=$1 bin=$2 name=$3 extra=${4:-}
  mkdir -p "$d/state"
  chmod 700 "$d" "$d/state"
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
device_id = "$name-device-0001"
name = "$name pump"
serial_number = "$name-0001"

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
  [ -f "$d/device-key.pem" ] || "$bin" --config "$d/agent.toml" key generate >/dev/null
}

await_token() {
  local sock=$1 pid=$2 log=$3 deadline=$((SECONDS + $4))
  while [ "$SECONDS" -lt "$deadline" ] && kill -0 "$pid" 2>/dev/null; do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$sock" http://localhost/v1/token)" = 200 ] && return 0
    sleep 0.05
  done
  echo "the agent served no token" >&2
  cat "$log" >&2
  exit 1
}
