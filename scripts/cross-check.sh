#!/usr/bin/env bash
# Runs the ARM binaries scripts/dist.sh built under qemu-user, without docker.
#
#   scripts/cross-check.sh [TARGET...]     default: aarch64-unknown-linux-gnu
#   scripts/cross-check.sh --all           every ARM target scripts/dist.sh built
#
# Per target, the binary is target/dist/<target>/asset-agent (build it first:
# `scripts/dist.sh TARGET...`); glibc builds run with the host's cross libc as their root
# (qemu -L, Debian's libc6-<arch>-cross, installed if missing), static musl builds with
# nothing. Under qemu-user:
#   1. `--version`;
#   2. `key generate` + `key show --thumbprint` in a temp dir (RSA keygen and PKCS#8 on ARM);
#   3. `check --json` (config, key, directories, clock findings all ok);
#   4. end to end: the host's asset-agent-emulator on loopback, the ARM agent `run` against it
#      under qemu, and the ARM `token --raw` fetching a verified asset token over the socket.
# ARMv6 builds (arm-unknown-linux-musleabihf: Pi Zero/1) run with `qemu-arm -cpu arm1176`,
# the Pi Zero's core, so an ARMv7-only instruction would crash the check instead of passing
# unnoticed.
#
# Exit status: 0 all ok; 1 a binary is missing or a check failed.
set -uo pipefail
cd "$(dirname "$0")/.."

TARGET_DIR=${CARGO_TARGET_DIR:-target}
HOST_EMULATOR=${HOST_EMULATOR:-$TARGET_DIR/debug/asset-agent-emulator}

# Everything started in the background is ended on exit, whatever happens. Background
# jobs are started with `exec` in their subshell, so each PID here is the process itself
# (qemu, the emulator), never a shell wrapped around it.
bg_pids=()
cleanup() {
  local pid
  for pid in "${bg_pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${bg_pids[@]}"; do wait "$pid" 2>/dev/null; done
  bg_pids=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '%s\n' "$*"; }

targets=()
if [ "${1:-}" = "--all" ]; then
  mapfile -t targets < <(cd "$TARGET_DIR/dist" 2>/dev/null && ls -d a*-*-linux-* 2>/dev/null | grep -v '^x86_64')
elif [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=(aarch64-unknown-linux-gnu)
fi

# triple -> "qemu sysroot apt-packages" (sysroot "-" for a static binary)
toolchain() {
  case "$1" in
    aarch64-*-gnu) echo "qemu-aarch64 /usr/aarch64-linux-gnu libc6-arm64-cross" ;;
    armv7-*-gnueabihf) echo "qemu-arm /usr/arm-linux-gnueabihf libc6-armhf-cross" ;;
    aarch64-*-musl) echo "qemu-aarch64 - -" ;;
    armv7-*-musleabihf | arm-*-musleabihf) echo "qemu-arm - -" ;;
    *) return 1 ;;
  esac
}

ensure_packages() {
  local missing=()
  for p in "$@"; do [ "$p" = - ] || dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then say "not root: install them yourself"; return 1; fi
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >/dev/null
}

# Runs the ARM binary under qemu with the given args.
arm() { "${QEMU[@]}" "$BIN" "$@"; }

smoke() {
  local dir out token port emu_pid agent_pid
  dir=$(mktemp -d)
  out=$(arm --version) || { say "--version failed"; return 1; }
  say "  --version: $out"

  cat >"$dir/agent.toml" <<EOF
[salesforce]
instance_url = "http://127.0.0.1:1"
client_id = "3MVG9EMULATOR.asset-agent"
timeout = "5s"
[auth]
refresh_token_file = "$dir/refresh-token"
[asset]
device_id = "arm-check"
name = "ARM check"
serial_number = "ARM-0001"
[state]
dir = "$dir"
[token]
verify = "jwks"
[api]
socket = "$dir/run/agent.sock"
EOF
  arm key generate --config "$dir/agent.toml" >/dev/null || { say "key generate failed"; return 1; }
  out=$(arm key show --thumbprint --config "$dir/agent.toml") || { say "key show failed"; return 1; }
  say "  key generate + key show: thumbprint $out"

  out=$(arm check --json --config "$dir/agent.toml" 2>/dev/null)
  for id in config key state_dir clock; do
    printf '%s' "$out" | grep -A2 "\"check\": \"$id\"" | grep -q '"severity": "ok"' \
      || { say "check --json: $id not ok"; printf '%s\n' "$out"; return 1; }
  done
  say "  check --json: config, key, state_dir, clock ok"

  if [ ! -x "$HOST_EMULATOR" ]; then
    say "  building the host emulator (for the end-to-end check)"
    cargo build --quiet -p asset-agent-emulator || return 1
  fi
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  (exec "$HOST_EMULATOR" --listen "127.0.0.1:$port" --token-lifetime 30 >"$dir/emulator.out" 2>&1) &
  emu_pid=$!
  bg_pids+=("$emu_pid")
  for _ in $(seq 100); do grep -q '^Agent config' "$dir/emulator.out" 2>/dev/null && break; sleep 0.1; done
  awk '/A refresh token/{getline; print $1; exit}' "$dir/emulator.out" >"$dir/refresh-token"
  [ -s "$dir/refresh-token" ] || { say "  the host emulator did not start:"; cat "$dir/emulator.out"; kill "$emu_pid"; return 1; }
  chmod 600 "$dir/refresh-token"
  sed -i "s#http://127.0.0.1:1#http://127.0.0.1:$port#" "$dir/agent.toml"
  (exec "${QEMU[@]}" "$BIN" run --config "$dir/agent.toml" >"$dir/agent.log" 2>&1) &
  agent_pid=$!
  bg_pids+=("$agent_pid")
  token=""
  local deadline=$((SECONDS + 60))
  while [ $SECONDS -lt $deadline ]; do
    token=$(arm token --raw --config "$dir/agent.toml" 2>/dev/null) && break
    sleep 0.5
  done
  cleanup
  case "$token" in
    eyJ*.*.*) say "  end to end: the ARM agent got a verified asset token (${#token} bytes) from the emulator" ;;
    *) say "  end to end: no token within 60 s; the agent said:"; tail -20 "$dir/agent.log" | sed 's/^/    /'; return 1 ;;
  esac
  rm -rf "$dir"
}

declare -A result size secs
worst=0
for T in "${targets[@]}"; do
  say "== $T"
  start=$(date +%s)
  if ! read -r QEMU_BIN SYSROOT PKG < <(toolchain "$T"); then
    say "not an ARM target scripts/dist.sh builds: $T"; result[$T]=FAILED; worst=1; continue
  fi
  BIN=$TARGET_DIR/dist/$T/asset-agent
  if [ ! -f "$BIN" ]; then
    say "no $BIN: build it first with scripts/dist.sh $T"; result[$T]="FAILED (not built)"; worst=1; continue
  fi
  ensure_packages "$PKG" qemu-user || { result[$T]="FAILED (packages)"; worst=1; continue; }
  size[$T]=$(stat -c %s "$BIN")
  arch=$(readelf -A "$BIN" 2>/dev/null | sed -n 's/^ *Tag_CPU_arch: *//p' | head -1)
  say "  $BIN: ${size[$T]} bytes$([ -n "$arch" ] && echo ", ELF Tag_CPU_arch $arch")"
  QEMU=("$QEMU_BIN")
  case "$T" in arm-*) QEMU+=(-cpu arm1176) ;; esac
  [ "$SYSROOT" = - ] || QEMU+=(-L "$SYSROOT")
  if smoke; then
    result[$T]=ok
  else
    result[$T]="FAILED (under qemu)"; worst=1
  fi
  secs[$T]=$(( $(date +%s) - start ))
done

say ""
say "target                              result              size (bytes)  seconds"
for T in "${targets[@]}"; do
  printf '%-35s %-19s %-13s %s\n' "$T" "${result[$T]:-?}" "${size[$T]:--}" "${secs[$T]:--}"
done
exit $worst
