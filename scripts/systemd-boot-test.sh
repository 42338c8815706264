#!/usr/bin/env bash
# Boots Debian's real systemd as PID 1 of private namespaces, installs the built .deb
# into it with dpkg -i, and runs the agent under it the way a device does: against the
# Salesforce emulator (on loopback; the namespaces share the host's network).
#
# Usage (as root): scripts/systemd-boot-test.sh [--root DIR] [path/to/asset-agent_*.deb]
#   default .deb: target/dist/asset-agent_*_amd64.deb (scripts/dist.sh x86_64-unknown-linux-gnu builds it)
#   --root DIR: boot the Debian tree DIR (its own systemd, libc, dpkg) instead of the host's
#           /usr, /etc and /var, e.g. Debian 11 from `scripts/field-rootfs.sh bullseye amd64
#           systemd,systemd-sysv,curl,softhsm2`; DIR is only read (an overlay's lower dir).
# The .deb may be anywhere, /tmp included: it is streamed into the machine, whose /tmp is
# its own.
#
# What it checks, in two boots of one throw-away machine:
#   boot 1: dpkg -i under a running systemd; units installed, user created; enable both
#           units, configure, power off.
#   boot 2: Salesforce unreachable: boot still finishes within token.ready_timeout, with an
#           honest STATUS; a reload the agent refuses makes `systemctl reload` fail with
#           the reason, and STATUS goes back to the agent's state; restart: READY after the
#           first token, STATUS names the token; an accepted reload; watchdog restart after
#           SIGSTOP; socket activation on first connect; a member of the agent's group gets
#           200 (and `asset-agent status` works for it with no RUNTIME_DIRECTORY or
#           XDG_RUNTIME_DIR), another user is refused; stop; no SIGSYS/EPERM/EACCES/EROFS
#           and no error text repeating itself in the journal; then a SoftHSM2 key:
#           without a drop-in the unit's sandbox makes the token directory read-only, and
#           the agent and `asset-agent check` say so; with the shipped softhsm.conf drop-in
#           the agent generates its key on the token and serves tokens signed by it; the
#           TPM drop-in lets the service open /dev/tpmrm0 that the bare unit hides; power off.
#
# The machine: stage two (scripts/systemd-boot-stage2.sh) becomes PID 1 of new pid, mount,
# uts, ipc and cgroup namespaces, with overlays over /etc, /var and /usr whose upper dirs
# are on a tmpfs that exists only in this script's own mount namespace, a private /dev,
# read-only /sys and /proc/sys, and our own cgroup2 subtree (nsdelegate). Units that
# would touch the host (udev, sysctl, binfmt, modules, clocks, gettys, networking, kernel
# filesystem mounts, timers, ...) are masked, and it boots a small target of its own.
# Whatever happens, the trap kills the namespaces' PID 1, the emulator, and removes the
# cgroups and the temp dir.
#
# Where it cannot boot (not root, no systemd, no cgroup2, no overlayfs, no namespaces) it
# skips with a loud notice and exit 0; with ASSET_AGENT_REQUIRE_SYSTEMD_BOOT=1 (set in
# .ci/run) that is a failure instead.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

say() { printf '%s\n' "$*"; }
fail() { say "FAIL: $*"; exit 1; }
skip() {
  printf '\n!!!!!!!!!! SKIPPED: the real-systemd boot test cannot run here: %s !!!!!!!!!!\n\n' "$*"
  if [ "${ASSET_AGENT_REQUIRE_SYSTEMD_BOOT:-0}" = 1 ]; then
    say "ASSET_AGENT_REQUIRE_SYSTEMD_BOOT=1: a skipped boot test is a failure"; exit 1
  fi
  exit 0
}
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }

target_dir=${CARGO_TARGET_DIR:-target}
target=asset-agent-boot-test.target

# === outer: checks, the cgroup, then ourselves again in a mount namespace of our own ===
if [ -z "${ASSET_AGENT_BOOT_CGROUP:-}" ]; then
  [ "$(id -u)" = 0 ] || skip "needs root"
  for tool in unshare nsenter python3 dpkg-deb; do
    command -v "$tool" >/dev/null 2>&1 || skip "$tool is missing"
  done
  root=""
  if [ "${1:-}" = --root ]; then
    [ -n "${2:-}" ] && [ -d "$2" ] || fail "--root needs a directory (scripts/field-rootfs.sh makes one)"
    root=$(realpath "$2")
    shift 2
  fi
  [ -x "${root}/lib/systemd/systemd" ] || skip "no ${root}/lib/systemd/systemd (apt-get install systemd)"
  for tool in softhsm2-util curl runuser; do
    [ -n "$(chroot "${root:-/}" sh -c "command -v $tool" 2>/dev/null)" ] \
      || skip "$tool is missing${root:+ in $root} (scripts/ci-packages.sh installs it)"
  done
  grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
  grep -qw overlay /proc/filesystems || skip "the kernel has no overlayfs"
  if [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ]; then
    cg_root=/sys/fs/cgroup
  elif [ "$(stat -f -c %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ]; then
    cg_root=/sys/fs/cgroup/unified
  else
    skip "no cgroup2 hierarchy (neither /sys/fs/cgroup nor /sys/fs/cgroup/unified)"
  fi
  unshare --pid --fork --mount --uts --ipc --cgroup --mount-proc true 2>/dev/null \
    || skip "unshare of pid/mount/uts/ipc/cgroup namespaces is not permitted"

  deb=${1:-$(ls "$target_dir"/dist/asset-agent_*_amd64.deb 2>/dev/null | head -1 || true)}
  [ -n "$deb" ] && [ -f "$deb" ] || fail "no .deb: run scripts/dist.sh x86_64-unknown-linux-gnu first, or pass its path"
  deb=$(realpath "$deb")
  emu=""
  for cand in "$target_dir/debug/asset-agent-emulator" "$target_dir/release/asset-agent-emulator"; do
    if [ -x "$cand" ]; then emu=$(realpath "$cand"); break; fi
  done
  if [ -z "$emu" ]; then
    say "-- building the emulator (cargo build -p asset-agent-emulator)"
    cargo build --quiet -p asset-agent-emulator
    emu=$(realpath "$target_dir/debug/asset-agent-emulator")
  fi

  cg=$cg_root/asset-agent-boot.$$
  mkdir "$cg" "$cg/outer" "$cg/boot"
  orig_cg=$(sed -n 's/^0::\(.*\)$/\1/p' /proc/self/cgroup)
  cleanup_outer() {
    local rc=$?
    echo $$ >"$cg_root$orig_cg/cgroup.procs" 2>/dev/null || true
    # Anything still in our subtree (the inner script is gone by now) is ours to end.
    for _ in 1 2 3 4 5; do
      pids=$(cat $(find "$cg" -name cgroup.procs) 2>/dev/null || true)
      [ -z "$pids" ] && break
      kill -9 $pids 2>/dev/null || true
      sleep 0.2
    done
    find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    [ -d "$cg" ] && say "warning: could not remove $cg"
    exit $rc
  }
  trap cleanup_outer EXIT
  trap 'exit 130' INT TERM HUP
  echo $$ >"$cg/outer/cgroup.procs"
  ASSET_AGENT_BOOT_CGROUP=$cg unshare --mount --propagation private -- "$0" "$deb" "$emu" "$root"
  exit $?
fi

# === inner: in our own mount namespace, in $ASSET_AGENT_BOOT_CGROUP/outer ===
cg=$ASSET_AGENT_BOOT_CGROUP
deb=$1
emu=$2
root=${3:-}
test_start=$(now)
disk=$(mktemp -d /tmp/asset-agent-boot.XXXXXX)
mount -t tmpfs -o mode=0700 tmpfs "$disk"
pid1=""
unshare_pid=""
emu_pid=""
cleanup() {
  local rc=$?
  if [ -n "$pid1" ] && kill -0 "$pid1" 2>/dev/null; then kill -9 "$pid1" 2>/dev/null || true; fi
  if [ -n "$unshare_pid" ]; then wait "$unshare_pid" 2>/dev/null || true; fi
  if [ -n "$emu_pid" ]; then kill "$emu_pid" 2>/dev/null || true; wait "$emu_pid" 2>/dev/null || true; fi
  if [ "$rc" != 0 ] && [ -d "$disk" ]; then
    for f in "$disk"/boot-*.log; do [ -f "$f" ] && { say "-- $f (last lines)"; tail -n 30 "$f"; }; done
  fi
  umount -l "$disk" 2>/dev/null || true
  rmdir "$disk" 2>/dev/null || true
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

in_ns() { nsenter -t "$pid1" -m -p -u -i -C -- "$@"; }

# === the machine's configuration, written into /etc's upper dir before the first boot ===
units=$disk/etc.upper/systemd/system
mkdir -p "$units"
masked=(
  systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket
  systemd-udev-trigger.service systemd-udev-settle.service systemd-hwdb-update.service
  systemd-sysctl.service systemd-binfmt.service proc-sys-fs-binfmt_misc.automount
  proc-sys-fs-binfmt_misc.mount systemd-modules-load.service kmod-static-nodes.service
  systemd-timesyncd.service systemd-random-seed.service systemd-tmpfiles-setup-dev.service
  getty@.service serial-getty@.service console-getty.service getty.target
  sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount
  sys-fs-fuse-connections.mount dev-hugepages.mount dev-mqueue.mount
  systemd-remount-fs.service systemd-firstboot.service systemd-machine-id-commit.service
  systemd-pcrphase.service systemd-pcrphase-sysinit.service systemd-repart.service
  systemd-pstore.service systemd-journald-audit.socket
  systemd-ask-password-console.path systemd-ask-password-wall.path
  cryptsetup.target integritysetup.target veritysetup.target timers.target
  networking.service ifupdown-pre.service NetworkManager.service
  NetworkManager-wait-online.service systemd-networkd.service systemd-networkd.socket
  systemd-networkd-wait-online.service systemd-resolved.service apparmor.service
  e2scrub_reap.service
)
for unit in "${masked[@]}"; do ln -sf /dev/null "$units/$unit"; done
cat >"$units/$target" <<EOF
[Unit]
Description=asset-agent boot test: sysinit, basic, and what the test enables
Requires=basic.target
After=basic.target
AllowIsolate=yes
EOF
# No host mounts: the fstab generator would try to mount the host's devices.
printf '# asset-agent boot test: nothing to mount\n' >"$disk/etc.upper/fstab"

boot_n=0
# Boots the machine; returns once systemd answers. Sets pid1 and boot_started.
boot() {
  boot_n=$((boot_n + 1))
  local log=$disk/boot-$boot_n.log
  boot_started=$(now)
  (
    echo "$BASHPID" >"$cg/boot/cgroup.procs"
    exec unshare --pid --fork --mount --uts --ipc --cgroup --mount-proc --propagation private \
      "$repo/scripts/systemd-boot-stage2.sh" "$disk" "$target" "$root"
  ) >"$log" 2>&1 &
  unshare_pid=$!
  pid1=""
  for _ in $(seq 1 200); do
    pid1=$(pgrep -P "$unshare_pid" | head -1 || true)
    [ -n "$pid1" ] && [ "$(cat /proc/"$pid1"/comm 2>/dev/null)" = systemd ] && break
    kill -0 "$unshare_pid" 2>/dev/null || break
    sleep 0.05
  done
  [ -n "$pid1" ] && [ "$(cat /proc/"$pid1"/comm 2>/dev/null)" = systemd ] \
    || { cat "$log"; skip "systemd did not start as PID 1 of the namespaces (log above)"; }
  for _ in $(seq 1 200); do
    in_ns systemctl is-system-running >/dev/null 2>&1 && return 0
    state=$(in_ns systemctl is-system-running 2>/dev/null || true)
    case "$state" in starting|running|degraded) return 0 ;; esac
    kill -0 "$pid1" 2>/dev/null || { cat "$log"; fail "systemd exited during boot"; }
    sleep 0.05
  done
  cat "$log"; fail "systemd did not answer within 10 s"
}

# Waits (at most $1 s) for the boot to finish; prints systemd's verdict.
wait_booted() {
  timeout "$1" nsenter -t "$pid1" -m -p -u -i -C -- systemctl is-system-running --wait || true
}

poweroff() {
  local t; t=$(now)
  in_ns systemctl poweroff --no-block >/dev/null 2>&1 || true
  for _ in $(seq 1 300); do
    kill -0 "$unshare_pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$unshare_pid" 2>/dev/null; then
    kill -9 "$pid1" 2>/dev/null || true
    wait "$unshare_pid" 2>/dev/null || true
    fail "poweroff did not end the machine within 30 s"
  fi
  wait "$unshare_pid" 2>/dev/null || true
  unshare_pid=""
  pid1=""
  say "ok: powered off in $(since "$t") s"
}

show() { in_ns systemctl show -p "$1" --value "$2"; }
wait_for() { # $1 = seconds, $2... = command that must succeed
  local n=$(( $1 * 10 )); shift
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}
status_is() { case "$(show StatusText asset-agent.service)" in $1) return 0 ;; esac; return 1; }
curl_token() { # $1 = user; prints the HTTP code (000: could not connect)
  in_ns runuser -u "$1" -- curl -s -o /dev/null -w '%{http_code}' --max-time 20 \
    --unix-socket /run/asset-agent/agent.sock http://localhost/v1/token || true
}
# No error text that repeats itself ("X failed: X failed: ...").
no_repeats() {
  python3 -c '
import re, sys
bad = [l for l in sys.stdin.read().splitlines()
       if any(a == b and len(a) > 8 for a, b in zip(l.split(": "), l.split(": ")[1:]))]
if bad:
    print("\n".join(bad)); sys.exit(1)'
}

# === the emulator, on loopback ===
"$emu" --listen 127.0.0.1:0 >"$disk/emulator.out" 2>"$disk/emulator.err" &
emu_pid=$!
for _ in $(seq 1 100); do grep -q "listening at" "$disk/emulator.out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^Salesforce emulator listening at \(.*\)$/\1/p' "$disk/emulator.out")
[ -n "$url" ] || { cat "$disk/emulator.err"; fail "the emulator did not start"; }
refresh_token=$(awk '/A refresh token/ {getline; print $1; exit}' "$disk/emulator.out")
client_id=$(sed -n 's/^ *client_id = "\(.*\)"$/\1/p' "$disk/emulator.out")
# A port nothing listens on: "Salesforce is unreachable".
dead_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
say "emulator at $url (pid $emu_pid); offline boot uses http://127.0.0.1:$dead_port"

config() { # $1 = instance URL, $2 = extra TOML
  cat <<EOF
[salesforce]
instance_url = "$1"
client_id = "$client_id"
timeout = "5s"

[asset]
name = "Boot test device"
serial_number = "BOOT-0001"

[token]
issuer = "$url"
$2
EOF
}
write_config() { # as root:asset-agent 0640, like the package's conffile
  config "$@" | in_ns install -m 0640 -o root -g asset-agent /dev/stdin /etc/asset-agent/agent.toml
}

# === boot 1: install ===
say "-- boot 1: install the package under a running systemd"
boot
verdict=$(wait_booted 30)
say "ok: booted ($verdict): $(in_ns systemd-analyze time 2>/dev/null | head -1)"
[ "$verdict" = running ] || { in_ns systemctl --failed --no-pager || true; fail "boot 1 ended $verdict"; }
say "machine: $(in_ns sh -c '. /etc/os-release; echo "$PRETTY_NAME"'), $(in_ns systemctl --version | head -1)"
# Into the machine's own disk: the host's path may be hidden there (its /tmp is its own).
in_ns install -m 0644 /dev/stdin /var/cache/asset-agent-test.deb <"$deb"
in_ns dpkg -i /var/cache/asset-agent-test.deb >"$disk/dpkg.log" 2>&1 || { cat "$disk/dpkg.log"; fail "dpkg -i"; }
in_ns rm /var/cache/asset-agent-test.deb
say "ok: dpkg -i $(basename "$deb")"
in_ns getent passwd asset-agent >/dev/null || fail "no asset-agent user after install"
in_ns systemctl cat asset-agent.service >/dev/null || fail "systemd does not know asset-agent.service"
write_config "http://127.0.0.1:$dead_port" ""
printf '%s' "$refresh_token" \
  | in_ns install -m 0600 -o asset-agent -g asset-agent /dev/stdin /var/lib/asset-agent/refresh-token
in_ns systemctl enable asset-agent.socket asset-agent.service >/dev/null 2>&1
in_ns systemctl add-wants "$target" asset-agent.service >/dev/null 2>&1
# A faster watchdog than the shipped 30 s (and abort timeout), to keep CI short.
in_ns mkdir -p /etc/systemd/system/asset-agent.service.d
printf '[Service]\nWatchdogSec=4s\nTimeoutAbortSec=4s\n' \
  | in_ns tee /etc/systemd/system/asset-agent.service.d/boot-test.conf >/dev/null
in_ns useradd --system --no-create-home --groups asset-agent member
in_ns useradd --system --no-create-home stranger
say "ok: configured (Salesforce unreachable), units enabled, users member (in asset-agent) and stranger"
poweroff

# === boot 2: an offline device ===
say "-- boot 2: Salesforce unreachable"
boot
verdict=$(wait_booted 60)
boot_s=$(since "$boot_started")
analyze=$(in_ns systemd-analyze time 2>&1 | head -1)
say "boot finished ($verdict) after $boot_s s: $analyze"
case "$analyze" in *"Startup finished"*) ;; *) fail "boot did not finish: $analyze" ;; esac
[ "$verdict" = running ] || { in_ns systemctl --failed --no-pager || true; fail "boot 2 ended $verdict"; }
python3 -c "import sys; sys.exit(0 if float('$boot_s') < 30 else 1)" \
  || fail "an offline boot took $boot_s s (token.ready_timeout is 10 s)"
[ "$(show ActiveState asset-agent.service)" = active ] || fail "asset-agent is not active"
st=$(show StatusText asset-agent.service)
say "STATUS: $st"
case "$st" in *"no valid asset token"*|*"no asset token"*) ;; *) fail "STATUS does not say no token is held" ;; esac
printf '%s\n' "$st" | no_repeats || fail "STATUS repeats itself"
in_ns journalctl -u asset-agent --no-pager -o cat | grep -q "ready anyway" \
  || fail "the journal does not say why READY was sent without a token"
say "ok: offline boot finished, agent active without a token, STATUS says so"

# === reload refused ===
write_config "$url" ""
if out=$(in_ns systemctl reload asset-agent 2>&1); then
  fail "systemctl reload succeeded though the agent must refuse a new instance_url: $out"
fi
in_ns journalctl -u asset-agent --no-pager -o cat | grep -q "reload refused.*salesforce.instance_url" \
  || fail "the journal does not give the reason of the refused reload"
say "ok: refused reload made systemctl reload fail; reason in the journal"
wait_for 5 status_is "failing:*" || fail "STATUS did not go back to the agent's state: $(show StatusText asset-agent.service)"
say "ok: STATUS after the reload: $(show StatusText asset-agent.service)"

# === restart online: READY after the first token ===
t=$(now)
in_ns systemctl restart asset-agent
ready_s=$(since "$t")
st=$(show StatusText asset-agent.service)
case "$st" in "ready: asset token for 02i"*) ;; *) fail "STATUS after restart: $st" ;; esac
say "ok: restart returned after READY in $ready_s s; STATUS: $st"
[ "$(curl_token root)" = 200 ] || fail "GET /v1/token as root"

# === reload accepted ===
write_config "$url" $'\n[log]\nlevel = "debug"'
out=$(in_ns systemctl reload asset-agent 2>&1) || fail "an accepted reload failed: $out"
in_ns journalctl -u asset-agent --no-pager -o cat | grep -q "configuration reloaded: applied log.level" \
  || fail "the journal does not show the applied reload"
wait_for 5 status_is "ready: *" || fail "STATUS after an accepted reload: $(show StatusText asset-agent.service)"
say "ok: accepted reload; STATUS: $(show StatusText asset-agent.service)"

# === watchdog ===
main=$(show MainPID asset-agent.service)
restarts=$(show NRestarts asset-agent.service)
t=$(now)
in_ns sh -c 'kill -STOP "$1"' sh "$main"  # the shell's kill: a minimal root has no procps
wait_for 40 bash -c "[ \"\$(nsenter -t $pid1 -m -p -u -i -C -- systemctl show -p NRestarts --value asset-agent.service)\" -gt $restarts ]" \
  || fail "no watchdog restart within 40 s of SIGSTOP"
wait_for 20 status_is "ready: *" || fail "not ready again after the watchdog restart"
in_ns journalctl -u asset-agent --no-pager -o cat | grep -q "Watchdog timeout" || fail "no watchdog timeout in the journal"
say "ok: SIGSTOPped agent restarted by the watchdog (WatchdogSec=4s here) and ready again after $(since "$t") s"

# === socket activation ===
in_ns systemctl stop asset-agent.service 2>/dev/null
[ "$(show ActiveState asset-agent.service)" = inactive ] || fail "the service did not stop"
[ "$(show ActiveState asset-agent.socket)" = active ] || fail "the socket unit is not listening"
t=$(now)
code=$(curl_token root)
[ "$code" = 200 ] || fail "first connect with the service stopped got $code"
say "ok: socket activation: 200 on first connect in $(since "$t") s"
[ "$(show ActiveState asset-agent.service)" = active ] || fail "the connection did not start the service"

# === who may connect ===
[ "$(curl_token member)" = 200 ] || fail "a member of the asset-agent group was refused"
out=$(in_ns runuser -u member -- env -i PATH=/usr/bin:/bin asset-agent status 2>&1) \
  || fail "asset-agent status as a group member: $out"
printf '%s\n' "$out" | grep -q "^state: *ready" || fail "asset-agent status as a member: $out"
code=$(curl_token stranger)
case "$code" in 200) fail "a user outside the group got a token" ;; esac
out=$(in_ns runuser -u stranger -- env -i PATH=/usr/bin:/bin asset-agent status 2>&1) \
  && fail "asset-agent status as a stranger succeeded"
printf '%s\n' "$out" | grep -q "permission denied" || fail "a stranger is not told why: $out"
printf '%s\n' "$out" | no_repeats || fail "the error repeats itself"
say "ok: group member 200 (and asset-agent status works for it), stranger refused ($code): $(printf '%s' "$out" | head -1)"

# === stop ===
t=$(now)
in_ns systemctl stop asset-agent.service 2>/dev/null
stop_s=$(since "$t")
[ "$(show ActiveState asset-agent.service)" = inactive ] || fail "stop"
[ "$(show Result asset-agent.service)" = success ] || fail "stop result: $(show Result asset-agent.service)"
say "ok: stopped in $stop_s s"

# === the journal ===
journal=$(in_ns journalctl -u asset-agent.service -u asset-agent.socket --no-pager -o cat)
if printf '%s\n' "$journal" | grep -E 'SIGSYS|Bad system call|Operation not permitted|Permission denied|Read-only file system|EPERM|EACCES|EROFS'; then
  fail "hardening got in the way (lines above)"
fi
printf '%s\n' "$journal" | no_repeats || fail "error texts repeat themselves in the journal (lines above)"
say "ok: no SIGSYS/EPERM/EACCES/EROFS and no repeated error text in $(printf '%s\n' "$journal" | wc -l) journal lines"

# === a SoftHSM2 key under the shipped unit, with and without its drop-in ===
# The token is made as the agent's user (SoftHSM2 writes its files owner-only), in Debian's
# token directory (root:softhsm 2770), as an installer following the README would.
t=$(now)
module=/usr/lib/softhsm/libsofthsm2.so
in_ns test -f "$module" || fail "no $module in the machine"
in_ns runuser -u asset-agent -g softhsm -- softhsm2-util --init-token --free --label asset-agent \
  --so-pin 12345678 --pin 4711 >/dev/null || fail "softhsm2-util --init-token"
printf '4711\n' | in_ns install -m 0600 -o asset-agent -g asset-agent /dev/stdin /etc/asset-agent/pkcs11-pin
pkcs11_key=$(printf '[key]\nbackend = "pkcs11"\nuri = "pkcs11:token=asset-agent;object=device-key"\nmodule = "%s"\npin_file = "/etc/asset-agent/pkcs11-pin"\n' "$module")
write_config "$url" "$pkcs11_key"
cursor=$(in_ns journalctl -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p')
if in_ns systemctl restart asset-agent 2>/dev/null; then
  fail "the agent started with its key on a SoftHSM2 token the bare unit makes unreachable"
fi
in_ns systemctl stop asset-agent.service asset-agent.socket 2>/dev/null || true
journal=$(in_ns journalctl -u asset-agent.service --after-cursor "$cursor" --no-pager -o cat)
say "ok: without the drop-in the agent does not start: $(printf '%s\n' "$journal" | grep -m1 -i -e error -e failed -e refused || true)"
out=$(in_ns env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin asset-agent check 2>&1) && fail "asset-agent check passed though the unit hides the token directory: $out"
printf '%s\n' "$out" | grep -q "softhsm.conf" \
  || { printf '%s\n' "$out"; fail "asset-agent check does not name the drop-in that gives the token directory back"; }
say "ok: asset-agent check says: $(printf '%s\n' "$out" | grep -m1 "sandbox")"
in_ns install -D -m 0644 /dev/stdin /etc/systemd/system/asset-agent.service.d/softhsm.conf \
  <"$repo/systemd/examples/softhsm.conf"
in_ns systemctl daemon-reload
in_ns systemctl reset-failed asset-agent.service 2>/dev/null || true
in_ns systemctl start asset-agent.socket
cursor=$(in_ns journalctl -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p')
out=$(in_ns systemctl restart asset-agent 2>&1) || {
  in_ns journalctl -u asset-agent.service --after-cursor "$cursor" --no-pager -o cat | tail -n 20
  fail "with the softhsm.conf drop-in the agent did not start: $out"
}
wait_for 20 status_is "ready: *" || fail "SoftHSM2 key: not ready: $(show StatusText asset-agent.service)"
[ "$(curl_token member)" = 200 ] || fail "SoftHSM2 key: GET /v1/token as a group member"
journal=$(in_ns journalctl -u asset-agent.service --after-cursor "$cursor" --no-pager -o cat)
printf '%s\n' "$journal" | grep -q "device key generated" \
  || { printf '%s\n' "$journal" | tail -n 20; fail "SoftHSM2 key: the journal does not show the key generated on the token"; }
if printf '%s\n' "$journal" | grep -E 'SIGSYS|Bad system call|Operation not permitted|Permission denied|Read-only file system|EPERM|EACCES|EROFS'; then
  fail "SoftHSM2 key: hardening got in the way (lines above)"
fi
out=$(in_ns env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin asset-agent check 2>&1) || { printf '%s\n' "$out"; fail "asset-agent check with the drop-in in place"; }
in_ns systemctl stop asset-agent.service 2>/dev/null
say "ok: SoftHSM2 key under the shipped unit + softhsm.conf: key generated on the token, READY, 200, check passes ($(since "$t") s)"

# === the TPM drop-in: /dev/tpmrm0 inside the unit's sandbox ===
# No TPM here, so the node is a character device no driver answers (misc 10:224, the TPM's
# own number, unregistered without one): opening it reaches the kernel (ENXIO/ENODEV) only
# if the sandbox lets it through; the bare unit hides it (ENOENT), and the node without
# DeviceAllow= is refused by the device policy (EPERM). The probe is the shipped unit's
# [Service] with only the command swapped.
in_ns getent group tss >/dev/null || in_ns groupadd --system tss
in_ns mknod -m 0660 /dev/tpmrm0 c 10 224
in_ns chgrp tss /dev/tpmrm0
unit_file=$(show FragmentPath asset-agent.service)
in_ns sh -c "sed -e 's|^ExecStart=.*|ExecStart=/bin/sh -c \"exec 3</dev/tpmrm0\"|' \
  -e 's|^Type=.*|Type=oneshot|' -e '/^ExecReload=/d' -e '/^WatchdogSec=/d' -e '/^Restart/d' \
  -e '/^RuntimeDirectory/d' -e '/^Also=/d' $unit_file >/etc/systemd/system/tpm-probe.service"
probe() { # prints the probe's error (empty: it opened the node)
  in_ns systemctl daemon-reload
  c=$(in_ns journalctl -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p')
  in_ns systemctl start tpm-probe.service >/dev/null 2>&1 || true
  in_ns journalctl -u tpm-probe.service --after-cursor "$c" --no-pager -o cat | grep -m1 'tpmrm0' || true
}
out=$(probe)
case "$out" in *"No such file"*|*"nonexistent"*|*"not found"*) ;; *) fail "the bare unit let the service see /dev/tpmrm0: $out" ;; esac
say "ok: the bare unit hides /dev/tpmrm0: $out"
in_ns mkdir -p /etc/systemd/system/tpm-probe.service.d
in_ns install -m 0644 /dev/stdin /etc/systemd/system/tpm-probe.service.d/tpm.conf <"$repo/systemd/examples/tpm.conf"
out=$(probe)
case "$out" in *"No such device"*) ;; *) fail "with tpm.conf the service still cannot reach /dev/tpmrm0: $out" ;; esac
say "ok: with tpm.conf the open reaches the kernel: $out"
grep -v '^DeviceAllow=' "$repo/systemd/examples/tpm.conf" \
  | in_ns install -m 0644 /dev/stdin /etc/systemd/system/tpm-probe.service.d/tpm.conf
out=$(probe)
case "$out" in *"Operation not permitted"*) ;; *) fail "without DeviceAllow= the device policy did not refuse /dev/tpmrm0: $out" ;; esac
say "ok: and its DeviceAllow= line is needed (without it: $out)"

poweroff
say "ok: real systemd: offline boot $boot_s s, READY after first token $ready_s s, stop $stop_s s, whole test $(since "$test_start") s"
