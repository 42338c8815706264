#!/usr/bin/env bash
# Cross-builds the device binary for ARM and runs it under qemu-user, without docker.
#
#   scripts/cross-check.sh [TARGET...]     default: aarch64-unknown-linux-gnu
#   scripts/cross-check.sh --all           every [target.*] in cross.toml
#   CROSS_CHECK_TESTS=1 scripts/cross-check.sh ...   also run the unit tests under qemu
#
# Per target: add the rustup target (retrying a stalled download; if rustup has no
# prebuilt std for it, fall back to nightly's -Z build-std when nightly and rust-src are
# installed), link with Debian's cross gcc via CARGO_TARGET_<TRIPLE>_LINKER (no committed
# .cargo/config that would break native builds), build the shipped release profile of the
# agent (which has no emulator in it), then under qemu-user:
#   1. `--version`;
#   2. `key generate` + `key show --thumbprint` in a temp dir (RSA keygen and PKCS#8 on ARM);
#   3. `check --json` (config, key, directories, clock findings all ok);
#   4. end to end: the host's asset-agent-emulator on loopback, the ARM agent `run` against it
#      under qemu, and the ARM `token --raw` fetching a verified asset token over the socket.
# ARMv6 targets (Pi Zero/1) run with `qemu-arm -cpu arm1176`, the Pi Zero's core, so an
# ARMv7-only instruction would crash the check instead of passing unnoticed.
#
# Exit status: 0 all ok; 1 a build or check failed; 3 only "target unavailable" (rustup
# could not download it right now), which .ci/run reports loudly without failing the suite.
set -uo pipefail
cd "$(dirname "$0")/.."

PROFILE=release
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
RUN_TESTS=${CROSS_CHECK_TESTS:-0}

say() { printf '%s\n' "$*"; }
loud() { printf '\n!!!!!!!!!! %s !!!!!!!!!!\n\n' "$*"; }

targets=()
if [ "${1:-}" = "--all" ]; then
  mapfile -t targets < <(sed -n 's/^\[target\.\([a-z0-9_-]*\)\]$/\1/p' cross.toml)
elif [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=(aarch64-unknown-linux-gnu)
fi

# triple -> "gcc-prefix qemu sysroot apt-packages"
toolchain() {
  case "$1" in
    aarch64-*) echo "aarch64-linux-gnu qemu-aarch64 /usr/aarch64-linux-gnu gcc-aarch64-linux-gnu:libc6-dev-arm64-cross" ;;
    armv7-* | arm-*) echo "arm-linux-gnueabihf qemu-arm /usr/arm-linux-gnueabihf gcc-arm-linux-gnueabihf:libc6-dev-armhf-cross" ;;
    *) return 1 ;;
  esac
}

ensure_packages() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then say "not root: install them yourself"; return 1; fi
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >/dev/null
}

# Prints "stable" or "nightly-build-std"; fails if neither can build the target.
ensure_target() {
  local t=$1
  if rustup target list --installed 2>/dev/null | grep -qx "$t"; then echo stable; return 0; fi
  for attempt in 1 2 3; do
    # A download that stalls is killed and retried; a 404 (no prebuilt std) fails fast.
    if timeout 300 rustup target add "$t" >/dev/null 2>"/tmp/cross-check-rustup.$$"; then
      echo stable; return 0
    fi
    grep -q "404" "/tmp/cross-check-rustup.$$" && break
    say "rustup target add $t failed (attempt $attempt), retrying" >&2
    sleep $((attempt * 5))
  done
  say "rustup has no $t std right now: $(grep -m1 -o 'error: .*' "/tmp/cross-check-rustup.$$" || true)" >&2
  rm -f "/tmp/cross-check-rustup.$$"
  case "$t" in
    *-gnu | *-gnueabihf)
      if rustup run nightly rustc --version >/dev/null 2>&1 \
         && { rustup component list --toolchain nightly --installed | grep -q '^rust-src' \
              || timeout 300 rustup component add --toolchain nightly rust-src >/dev/null 2>&1; }; then
        echo nightly-build-std; return 0
      fi ;;
    # musl: build-std cannot help, the target's musl libc ships only in rustup's std.
  esac
  return 1
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

unit_tests() {
  local runner="${QEMU[*]}"
  say "  unit tests under qemu (the agent's lib):"
  env "CARGO_TARGET_${ENVT}_RUNNER=$runner" "${CARGO[@]}" test --target "$T" -p asset-agent --lib \
    "${BUILD_STD[@]}" -q 2>&1 | grep -E '^test result|FAILED|panicked' | sed 's/^/    /'
  return "${PIPESTATUS[0]}"
}

declare -A result size secs
worst=0
for T in "${targets[@]}"; do
  say "== $T"
  start=$(date +%s)
  if ! read -r PREFIX QEMU_BIN SYSROOT PKGS < <(toolchain "$T"); then
    say "unknown target $T"; result[$T]=FAILED; worst=1; continue
  fi
  ensure_packages ${PKGS//:/ } qemu-user || { result[$T]="FAILED (packages)"; worst=1; continue; }
  if ! mode=$(ensure_target "$T"); then
    loud "TARGET UNAVAILABLE: rustup could not provide $T right now; its build was NOT verified"
    result[$T]="UNAVAILABLE"; [ $worst -eq 0 ] && worst=3; continue
  fi
  ENVT=$(echo "$T" | tr 'a-z-' 'A-Z_')
  ENVC=$(echo "$T" | tr '-' '_')
  export "CARGO_TARGET_${ENVT}_LINKER=${PREFIX}-gcc" "CC_${ENVC}=${PREFIX}-gcc" "AR_${ENVC}=${PREFIX}-ar"
  CARGO=(cargo); BUILD_STD=()
  if [ "$mode" = nightly-build-std ]; then
    say "  (no prebuilt std: building std from source with nightly -Z build-std)"
    CARGO=(cargo +nightly); BUILD_STD=(-Z build-std=std,panic_abort)
  fi
  if ! "${CARGO[@]}" build --profile "$PROFILE" -p asset-agent --target "$T" "${BUILD_STD[@]}" -q; then
    result[$T]="FAILED (build)"; worst=1; continue
  fi
  BIN=$TARGET_DIR/$T/$PROFILE/asset-agent
  size[$T]=$(stat -c %s "$BIN")
  arch=$(readelf -A "$BIN" 2>/dev/null | sed -n 's/^ *Tag_CPU_arch: *//p' | head -1)
  say "  built $BIN: ${size[$T]} bytes ($(( ${size[$T]} / 1024 )) KiB)${arch:+, ELF Tag_CPU_arch $arch}"
  QEMU=("$QEMU_BIN")
  note=""
  case "$T" in
    arm-*)
      # Emulate the Pi Zero's core only if the whole binary claims ARMv6: Debian's armhf
      # startup files (crt1.o, crti.o, crtbegin.o) and sysroot are ARMv7 Thumb-2, so a
      # -gnueabihf binary linked here cannot run on a Pi Zero whatever we compile.
      if [ "$arch" = v6 ] || [ "$arch" = v6KZ ] || [ "$arch" = v6K ]; then
        QEMU+=(-cpu arm1176)
      else
        note="ARMv6 compatibility NOT verified: the binary is tagged $arch by Debian's ARMv7 startup files; build Pi Zero binaries with cross (its ARMv6 toolchain) or the musl target"
        loud "$T: $note"
      fi ;;
  esac
  case "$T" in *-gnu | *-gnueabihf) QEMU+=(-L "$SYSROOT") ;; esac
  if smoke && { [ "$RUN_TESTS" != 1 ] || unit_tests; }; then
    result[$T]=ok${note:+" (not v6-safe)"}
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
