#!/usr/bin/env bash
# Installs the amd64 .deb scripts/dist.sh built on this machine with dpkg -i, checks what
# landed (files, modes, owners, conffile, units, user, that the service user can use it),
# then purges it and removes the user again so the machine stays clean.
#
#   scripts/deb-check.sh [DEB]     default: target/dist/asset-agent_<version>-1_amd64.deb
#
# Needs root and a Debian-like system; build the package first (scripts/dist.sh
# x86_64-unknown-linux-gnu).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '%s\n' "$*"; }
fail() { say "FAIL: $*"; exit 1; }

if [ "$(id -u)" != 0 ]; then fail "needs root (dpkg -i)"; fi
deb=${1:-$(ls "${CARGO_TARGET_DIR:-target}"/dist/asset-agent_*_amd64.deb 2>/dev/null | head -1)}
[ -n "$deb" ] && [ -f "$deb" ] || fail "no .deb to check: run scripts/dist.sh x86_64-unknown-linux-gnu first"
say "checking $deb: $(stat -c %s "$deb") bytes"

say "-- contents"
dpkg-deb -c "$deb" | awk '{print $1, $2, $6}' | sed 's/^/  /'
for path in ./usr/bin/asset-agent ./etc/asset-agent/agent.toml \
            ./usr/lib/systemd/system/asset-agent.service ./usr/lib/systemd/system/asset-agent.socket \
            ./usr/lib/sysusers.d/asset-agent.conf ./usr/lib/tmpfiles.d/asset-agent.conf \
            ./usr/share/doc/asset-agent/README.md; do
  dpkg-deb -c "$deb" | awk '{print $6}' | grep -qx "$path" \
    || dpkg-deb -c "$deb" | awk '{print $6}' | grep -qx "${path/usr\/lib\/systemd/lib\/systemd}" \
    || fail "missing from the package: $path"
done
depends=$(dpkg-deb -f "$deb" Depends)
say "Depends: $depends"
grep -q systemd <<<"$depends" || fail "Depends lacks systemd"
# The release builds are linked against glibc 2.31 (scripts/dist.sh): asking for more
# would refuse Debian 11 and Ubuntu 20.04 for nothing.
libc=$(grep -oE 'libc6 \(>= [0-9.]+\)' <<<"$depends") || fail "Depends has no versioned libc6"
libc_min=$(sed -E 's/.*>= ([0-9.]+)\)/\1/' <<<"$libc")
[ "$(printf '%s\n' "$libc_min" 2.31 | sort -V | tail -1)" = 2.31 ] \
  || fail "Depends asks for $libc, above glibc 2.31"
if dpkg-deb -c "$deb" | grep -q 'emulator'; then fail "the package mentions an emulator file"; fi

# A leftover from an interrupted run would make the checks lie.
if dpkg -s asset-agent >/dev/null 2>&1; then dpkg --purge asset-agent >/dev/null; fi

cleanup() {
  dpkg --purge asset-agent >/dev/null 2>&1 || true
  if getent passwd asset-agent >/dev/null; then userdel asset-agent 2>/dev/null || true; fi
  if getent group asset-agent >/dev/null; then groupdel asset-agent 2>/dev/null || true; fi
}
trap cleanup EXIT

say "-- dpkg -i"
dpkg -i "$deb" >/dev/null

mode() { stat -c '%a %U:%G' "$1"; }
expect_mode() {
  local got; got=$(mode "$1")
  [ "$got" = "$2" ] || fail "$1 is $got, expected $2"
  say "ok: $1 $got"
}
expect_mode /usr/bin/asset-agent "755 root:root"
expect_mode /etc/asset-agent "750 root:asset-agent"
expect_mode /etc/asset-agent/agent.toml "640 root:asset-agent"
expect_mode /var/lib/asset-agent "700 asset-agent:asset-agent"
expect_mode /run/asset-agent "750 asset-agent:asset-agent"
unitdir=/usr/lib/systemd/system; [ -f $unitdir/asset-agent.service ] || unitdir=/lib/systemd/system
expect_mode $unitdir/asset-agent.service "644 root:root"
expect_mode $unitdir/asset-agent.socket "644 root:root"

dpkg-query -W -f='${Conffiles}\n' asset-agent | grep -q '/etc/asset-agent/agent.toml' \
  || fail "agent.toml is not a conffile"
say "ok: /etc/asset-agent/agent.toml is a conffile"

entry=$(getent passwd asset-agent) || fail "no asset-agent user"
IFS=: read -r _ _ uid gid _ home shell <<<"$entry"
[ "$home" = /var/lib/asset-agent ] && [ "$shell" = /usr/sbin/nologin ] && [ "$uid" -lt 1000 ] \
  || fail "unexpected passwd entry: $entry"
getent group asset-agent >/dev/null || fail "no asset-agent group"
say "ok: system user asset-agent (uid $uid, gid $gid, home $home, shell $shell)"

for unit in asset-agent.service asset-agent.socket; do
  if ls /etc/systemd/system/*.wants/"$unit" >/dev/null 2>&1; then fail "$unit enabled on install"; fi
done
say "ok: units installed, not enabled (by design)"

/usr/bin/asset-agent --version | grep -q "^asset-agent " || fail "--version"
if grep -q -a -e '/__emulator' -e 'EMULATOR.asset-agent' /usr/bin/asset-agent; then fail "the packaged binary has emulator code"; fi
say "ok: the packaged binary runs and has no emulator"

say "-- systemd-analyze verify on the installed units (real ExecStart)"
if ! systemd-analyze verify $unitdir/asset-agent.service $unitdir/asset-agent.socket 2>/tmp/asset-agent-verify.$$ \
   || [ -s /tmp/asset-agent-verify.$$ ]; then
  cat /tmp/asset-agent-verify.$$; rm -f /tmp/asset-agent-verify.$$; fail "verify complained"
fi
rm -f /tmp/asset-agent-verify.$$
say "ok: no diagnostics"

say "-- as the service user, with the directories systemd would pass"
as_service() {
  setpriv --reuid=asset-agent --regid=asset-agent --init-groups \
    env -i PATH=/usr/bin:/bin STATE_DIRECTORY=/var/lib/asset-agent \
    RUNTIME_DIRECTORY=/run/asset-agent CONFIGURATION_DIRECTORY=/etc/asset-agent "$@"
}
as_service /usr/bin/asset-agent key generate >/dev/null
expect_mode /var/lib/asset-agent/device-key.pem "600 asset-agent:asset-agent"
report=$(as_service /usr/bin/asset-agent check --json 2>/dev/null || true)
for id in config key state_dir runtime_dir socket clock; do
  sev=$(printf '%s' "$report" | python3 -c "import json,sys; r=json.load(sys.stdin); print(next(f['severity'] for f in r['findings'] if f['check']=='$id'))")
  case "$sev" in ok|info) say "ok: check finding $id: $sev" ;; *) printf '%s\n' "$report"; fail "check finding $id: $sev" ;; esac
done

say "-- dpkg --purge"
dpkg --purge asset-agent >/dev/null
for gone in /usr/bin/asset-agent /etc/asset-agent /var/lib/asset-agent $unitdir/asset-agent.service; do
  [ ! -e "$gone" ] || fail "$gone left after purge"
done
getent passwd asset-agent >/dev/null || fail "purge removed the user (Debian keeps system users)"
say "ok: purge removed files and state, kept the user (removed now by this script)"
