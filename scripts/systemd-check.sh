#!/usr/bin/env bash
# Checks the shipped systemd files the way systemd itself reads them:
#   1. `systemd-analyze verify` on asset-agent.service + asset-agent.socket. It exits 0 even
#      on unknown keys or misspelt values, so ANY output on stderr fails the check.
#      verify also insists that ExecStart= exists, so the units are checked as a temp copy
#      whose ExecStart= points at a built binary (argument 1, default target/debug).
#   2. `systemd-sysusers --dry-run` on the sysusers.d snippet (stderr fails it too).
#   3. `systemd-analyze security --offline=true`: the exposure level must be <= MAX_EXPOSURE.
# Works without systemd as PID 1. Installs systemd's tools quietly if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXPOSURE=${MAX_EXPOSURE:-2.0}
BIN=$(realpath "${1:-${CARGO_TARGET_DIR:-target}/debug/asset-agent}")

if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "installing systemd (for systemd-analyze)"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi
[ -x "$BIN" ] || { echo "no binary at $BIN (build it first)"; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed -e "s#^ExecStart=/usr/bin/asset-agent#ExecStart=$BIN#" -e "s#^ExecReload=/usr/bin/asset-agent#ExecReload=$BIN#" systemd/asset-agent.service >"$tmp/asset-agent.service"
cp systemd/asset-agent.socket "$tmp/"
grep -q "^ExecStart=$BIN run" "$tmp/asset-agent.service" || { echo "ExecStart= not rewritten"; exit 1; }

fail=0
echo "-- systemd-analyze verify"
if ! systemd-analyze verify "$tmp/asset-agent.service" "$tmp/asset-agent.socket" 2>"$tmp/verify.err" \
   || [ -s "$tmp/verify.err" ]; then
  echo "FAIL: systemd-analyze verify complained:"; sed 's/^/  /' "$tmp/verify.err"; fail=1
else
  echo "ok: no diagnostics for asset-agent.service and asset-agent.socket"
fi

echo "-- systemd-sysusers --dry-run"
# It reports what it would create on stderr; anything else there is a diagnostic.
if ! systemd-sysusers --dry-run "$PWD/systemd/asset-agent.sysusers" >/dev/null 2>"$tmp/sysusers.out" \
   || grep -v -E '^(Creating (user|group) |Would write )' "$tmp/sysusers.out" >"$tmp/sysusers.err" \
   || [ -s "$tmp/sysusers.err" ]; then
  echo "FAIL: sysusers.d snippet:"; sed 's/^/  /' "$tmp/sysusers.err"; fail=1
else
  echo "ok: sysusers.d snippet parses"
fi

echo "-- systemd-analyze security --offline=true"
systemd-analyze security --offline=true "$tmp/asset-agent.service" >"$tmp/security.out" 2>&1 || true
level=$(sed -n 's/.*Overall exposure level for asset-agent.service: \([0-9.]*\).*/\1/p' "$tmp/security.out")
if [ -z "$level" ]; then
  echo "FAIL: no exposure level in the report:"; cat "$tmp/security.out"; fail=1
else
  grep '✗' "$tmp/security.out" | sed 's/  */ /g; s/^/  /' || true
  if awk -v l="$level" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(l <= m) }'; then
    echo "ok: exposure level $level (target <= $MAX_EXPOSURE)"
  else
    echo "FAIL: exposure level $level is above $MAX_EXPOSURE"; fail=1
  fi
fi
exit $fail
