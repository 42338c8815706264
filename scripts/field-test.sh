#!/usr/bin/env bash
# The release artifacts tested where the field runs (scripts/dist.sh makes them), each
# serving a verified asset token from the host's Salesforce emulator on loopback:
#
#   deb      the amd64 .deb, `dpkg -i` in a Debian 11 (bullseye) root, its agent running
#            there as the package's user;
#   arm64    the aarch64 glibc binary under qemu-aarch64 with Debian 11's libc and loader;
#   armhf    the armv7 glibc binary under qemu-arm with Debian 11's libc and loader;
#   musl     the static x86_64 musl binary in an otherwise empty root (the binary, its
#            config, its state directory; no libc, no /etc, no /dev, no /proc);
#   systemd  scripts/systemd-boot-test.sh booting Debian 11's own systemd (247) with the
#            .deb (every check it makes on the host's systemd, the SoftHSM2 key included).
#
# Usage (as root): scripts/field-test.sh [DIST_DIR] [STEP...]
#   DIST_DIR   default target/dist: asset-agent_*_amd64.deb,
#              x86_64-unknown-linux-musl/asset-agent, aarch64-unknown-linux-gnu/asset-agent,
#              armv7-unknown-linux-gnueabihf/asset-agent
#   STEP       any of deb arm64 armhf musl systemd; default all
#
# The Debian 11 roots come from scripts/field-rootfs.sh (debootstrap, cached between runs);
# each test works on an overlay over them, so the cache is never written. Every step
# prints its time, the root's included (cold: debootstrap; warm: the cache). A missing
# artifact, tool or root is a failure, never a skip: this runs in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
# shellcheck source=scripts/emulator-agent.sh
. scripts/emulator-agent.sh

say() { printf '%s\n' "$*"; }
fail() { say "FAIL: $*"; exit 1; }

dist=target/dist
if [ $# -gt 0 ] && [ -d "$1" ]; then dist=$1; shift; fi
dist=$(realpath "$dist")
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(deb arm64 armhf musl systemd)
suite=bullseye
# The native root: what the .deb and the boot test need in it.
native_pkgs=systemd,systemd-sysv,curl,softhsm2

[ "$(id -u)" = 0 ] || fail "needs root (debootstrap, chroot, mount)"
# What the steps need from Debian, installed when missing (CI runs as root).
missing=()
for p in debootstrap qemu-user curl python3 binutils; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >/dev/null \
    || fail "apt-get install ${missing[*]}"
fi
for tool in debootstrap qemu-aarch64 qemu-arm unshare chroot curl python3 readelf; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is missing"
done
target_dir=${CARGO_TARGET_DIR:-target}
emu_bin=$target_dir/debug/asset-agent-emulator
if [ ! -x "$emu_bin" ]; then cargo build --quiet -p asset-agent-emulator; fi
emu_bin=$(realpath "$emu_bin")

scratch_begin
chmod 755 "$WORK"
start_emulator_bin "$emu_bin" 60
say "emulator at $EMU_URL"
declare -A took

# A root from the cache, timed. Sets ROOT.
rootfs() {
  local t=$SECONDS
  ROOT=$("$repo/scripts/field-rootfs.sh" "$@") || fail "no $1/$2 root (field-rootfs.sh above)"
  say "  root $ROOT ready in $((SECONDS - t)) s"
}

# The first line of the token the agent at SOCKET serves, checked to be a JWT.
token_from() {
  local sock=$1 tok
  tok=$(curl -sf --unix-socket "$sock" http://localhost/v1/token \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])') || return 1
  case "$tok" in eyJ*.*.*) printf '%s' "$tok" ;; *) return 1 ;; esac
}

# Runs the agent (command "$@" ... run) with config DIR/agent.toml; waits for a token.
serve() { # $1 = name, $2 = socket, $3 = log, then the command line of `run`
  local name=$1 sock=$2 log=$3 pid tok
  shift 3
  "$@" >"$log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  await_token "$sock" "$pid" "$log" 90
  tok=$(token_from "$sock") || { cat "$log"; fail "$name: the token served is not a JWT"; }
  say "ok: $name served a verified asset token (${#tok} bytes)"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

step_deb() {
  local deb m
  deb=$(ls "$dist"/asset-agent_*_amd64.deb 2>/dev/null | head -1)
  [ -n "$deb" ] || fail "no $dist/asset-agent_*_amd64.deb (scripts/dist.sh x86_64-unknown-linux-gnu)"
  rootfs "$suite" amd64 "$native_pkgs"
  m=$WORK/deb-root
  mkdir -p "$m"
  # In a mount namespace of our own: everything mounted here goes when it ends.
  unshare --mount --propagation private -- bash -euc '
    root=$1 m=$2 deb=$3 url=$4 work=$5
    mount -t tmpfs tmpfs "$work/deb-disk"
    mkdir "$work/deb-disk/upper" "$work/deb-disk/work"
    mount -t overlay overlay -o "lowerdir=$root,upperdir=$work/deb-disk/upper,workdir=$work/deb-disk/work" "$m"
    mount -t proc proc "$m/proc"
    mount --rbind /dev "$m/dev"
    mount -t tmpfs tmpfs "$m/run"
    mount -t tmpfs tmpfs "$m/tmp"
    cp "$deb" "$m/tmp/asset-agent.deb"
    chroot "$m" dpkg -i /tmp/asset-agent.deb >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; exit 1; }
    echo "ok: dpkg -i $(basename "$deb") in $(. "$m/etc/os-release"; echo "$PRETTY_NAME"), $(chroot "$m" ldd --version | head -1)"
    chroot "$m" dpkg-query -W -f="  installed \${Package} \${Version}, Depends: \${Depends}\n" asset-agent
    chroot "$m" getent passwd asset-agent >/dev/null || { echo "FAIL: no asset-agent user"; exit 1; }
    chroot "$m" asset-agent --version
    # The package'"'"'s own layout: config in /etc/asset-agent, state in /var/lib/asset-agent.
    chroot "$m" install -d -m 0750 -o asset-agent -g asset-agent /run/asset-agent
    cat >"$m/etc/asset-agent/agent.toml" <<EOF
[salesforce]
instance_url = "$url"
client_id = "3MVG9EMULATOR.asset-agent"
[asset]
device_id = "bullseye-device-0001"
name = "Debian 11 pump"
serial_number = "BULLSEYE-0001"
[token]
verify = "jwks"
issuer = "$url"
EOF
    curl -sf -X POST "$url/__emulator/refresh-tokens" \
      | python3 -c "import json,sys; sys.stdout.write(json.load(sys.stdin)[\"refresh_token\"])" \
      >"$m/var/lib/asset-agent/refresh-token"
    chroot "$m" chown asset-agent:asset-agent /var/lib/asset-agent/refresh-token
    chmod 600 "$m/var/lib/asset-agent/refresh-token"
    # As the unit runs it: its user, and the directories systemd would name. chroot
    # switches user and execs (no runuser between), so $! below is the agent itself.
    user=$(chroot "$m" id -u asset-agent):$(chroot "$m" id -g asset-agent)
    as_unit() {
      chroot --userspec="$user" "$m" env CONFIGURATION_DIRECTORY=/etc/asset-agent \
        STATE_DIRECTORY=/var/lib/asset-agent RUNTIME_DIRECTORY=/run/asset-agent "$@"
    }
    chroot --userspec="$user" "$m" env CONFIGURATION_DIRECTORY=/etc/asset-agent \
      STATE_DIRECTORY=/var/lib/asset-agent RUNTIME_DIRECTORY=/run/asset-agent \
      asset-agent run >"$work/deb-agent.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 900); do
      tok=$(as_unit asset-agent token --raw 2>/dev/null) && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    case "${tok:-}" in
      eyJ*.*.*) echo "ok: the agent of the .deb in Debian 11 served a verified asset token (${#tok} bytes)" ;;
      *) cat "$work/deb-agent.log"; echo "FAIL: no token from the agent in Debian 11"; exit 1 ;;
    esac
  ' field-deb "$ROOT" "$m" "$deb" "$EMU_URL" "$WORK" || fail "the .deb in Debian 11"
}
mkdir -p "$WORK/deb-disk"

# An ARM binary under qemu-user with Debian 11's libc: $1 = step, $2 = Debian arch,
# $3 = Rust target, $4 = qemu.
step_qemu() {
  local name=$1 arch=$2 rust=$3 qemu=$4 bin d libc
  bin=$dist/$rust/asset-agent
  [ -x "$bin" ] || fail "no $bin (scripts/dist.sh $rust)"
  rootfs "$suite" "$arch"
  libc=$(compgen -G "$ROOT/lib/*/libc.so.6" | head -1)
  say "  $("$qemu" -L "$ROOT" "$libc" | head -1)"
  d=$WORK/$name
  mkdir -p "$d"
  printf '#!/bin/sh\nexec %s -L %s %s "$@"\n' "$qemu" "$ROOT" "$bin" >"$WORK/$name-agent"
  chmod +x "$WORK/$name-agent"
  say "  $("$WORK/$name-agent" --version)"
  write_agent_config "$d" "$WORK/$name-agent" "$name"
  serve "$name ($rust under $qemu, Debian 11 libc)" "$d/run/agent.sock" "$d/agent.log" \
    "$WORK/$name-agent" run --config "$d/agent.toml"
}

step_musl() {
  local bin r
  bin=$dist/x86_64-unknown-linux-musl/asset-agent
  [ -x "$bin" ] || fail "no $bin (scripts/dist.sh x86_64-unknown-linux-musl)"
  if readelf -l "$bin" | grep -q INTERP; then fail "$bin is not static: it names a program interpreter"; fi
  r=$WORK/empty-root
  mkdir -p "$r/bin"
  install -m 0755 "$bin" "$r/bin/asset-agent"
  # The config, refresh token and key are made from outside (the paths as the agent in
  # the root sees them), and nothing else goes in.
  write_agent_config "$r/cfg" "$bin" musl
  sed -i "s#$r##g" "$r/cfg/agent.toml"
  chroot "$r" /bin/asset-agent check --config /cfg/agent.toml >"$WORK/musl-check.log" 2>&1 \
    || { cat "$WORK/musl-check.log"; fail "asset-agent check in the empty root"; }
  say "  the empty root: $(cd "$r" && find . -mindepth 1 | sort | tr '\n' ' ')"
  serve "the static musl binary in an empty root" "$r/cfg/run/agent.sock" "$WORK/musl-agent.log" \
    chroot "$r" /bin/asset-agent run --config /cfg/agent.toml
  # And its own client, inside the root too.
  chroot "$r" /bin/asset-agent run --config /cfg/agent.toml >"$WORK/musl-agent.log" 2>&1 &
  PIDS+=("$!")
  await_token "$r/cfg/run/agent.sock" "$!" "$WORK/musl-agent.log" 60
  tok=$(chroot "$r" /bin/asset-agent token --raw --config /cfg/agent.toml) || fail "token --raw in the empty root"
  say "ok: and \`asset-agent token --raw\` in the empty root got it (${#tok} bytes)"
}

step_systemd() {
  local deb
  deb=$(ls "$dist"/asset-agent_*_amd64.deb 2>/dev/null | head -1)
  [ -n "$deb" ] || fail "no $dist/asset-agent_*_amd64.deb (scripts/dist.sh x86_64-unknown-linux-gnu)"
  rootfs "$suite" amd64 "$native_pkgs"
  ASSET_AGENT_REQUIRE_SYSTEMD_BOOT=1 "$repo/scripts/systemd-boot-test.sh" --root "$ROOT" "$deb" \
    | sed 's/^/  /'
  [ "${PIPESTATUS[0]}" = 0 ] || fail "the real-systemd boot test in Debian 11"
}

for s in "${steps[@]}"; do
  say "== field: $s"
  t=$SECONDS
  case "$s" in
    deb) step_deb ;;
    arm64) step_qemu arm64 arm64 aarch64-unknown-linux-gnu qemu-aarch64 ;;
    armhf) step_qemu armhf armhf armv7-unknown-linux-gnueabihf qemu-arm ;;
    musl) step_musl ;;
    systemd) step_systemd ;;
    *) fail "unknown step $s (deb arm64 armhf musl systemd)" ;;
  esac
  took[$s]=$((SECONDS - t))
done
say ""
for s in "${steps[@]}"; do say "field: $s ok in ${took[$s]} s"; done
