#!/usr/bin/env bash
# The shipped binary's memory budget: anonymous (private) resident memory (RssAnon) of an
# idle agent holding a token, x86_64 glibc, against the emulator. Not total RSS: file-backed
# pages (the binary's code, libc, libm) are shared and reclaimable; total RSS is printed too.
#
#   scripts/memory-check.sh AGENT_BINARY EMULATOR_BINARY
#
# Starts the agent three times from a cold state (no token cache), waits for its first
# token and two quiet seconds, and reads RssAnon, RSS and PSS from /proc/PID; the
# median must be within the budget, the README's ("Memory"). Each start is from a cold page
# cache for the binary, as after a boot (scripts/uncache.py says why). Fails with the
# per-mapping breakdown when over. The figure depends on the kernel (it maps code 64 KiB
# around each page touched) and the C library; scripts/bench.sh memory measures it in full.
set -euo pipefail
BUDGET_KIB=1536

[ $# -eq 2 ] || { echo "usage: $0 AGENT_BINARY EMULATOR_BINARY" >&2; exit 2; }
AGENT=$(realpath "$1")
EMU=$(realpath "$2")
# shellcheck source=scripts/emulator-agent.sh
. "$(dirname "$0")/emulator-agent.sh"
scratch_begin
start_emulator_bin "$EMU" 3600
d=$WORK/agent
write_agent_config "$d" "$AGENT" memory

rss=()
for run in 1 2 3; do
  rm -f "$d/state/token-cache.json"
  "$(dirname "$0")/uncache.py" "$AGENT"
  # A service's environment, only PATH: no SSL_CERT_FILE / SSL_CERT_DIR, and none of the
  # ASSET_AGENT_* variables .ci/run exports (the agent warns about them as likely typos).
  env -i "PATH=$PATH" "$AGENT" --config "$d/agent.toml" run >"$WORK/agent.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  await_token "$d/run/agent.sock" "$pid" "$WORK/agent.log" 10
  sleep 2
  read -r r p < <(awk '/^Rss:/{r=$2} /^Pss:/{p=$2} END{print r, p}' "/proc/$pid/smaps_rollup")
  a=$(awk '/^RssAnon:/{print $2}' "/proc/$pid/status")
  echo "run $run: idle RssAnon $a KiB (RSS $r KiB, PSS $p KiB)"
  rss+=("$a")
  if [ "$run" = 3 ]; then
    awk '/^[0-9a-f]+-[0-9a-f]+ / { name = (NF >= 6) ? $6 : "[anon]"; sub(/.*\//, "", name) }
         /^Rss:/ { rss[name] += $2 }
         END { for (n in rss) if (rss[n] > 0) printf "    %-28s %5d KiB\n", n, rss[n] }' \
      "/proc/$pid/smaps" | sort -k2 -n -r >"$WORK/breakdown"
  fi
  kill "$pid"
  wait "$pid" 2>/dev/null || true
done
median=$(printf '%s\n' "${rss[@]}" | sort -n | sed -n 2p)
if [ "$median" -le "$BUDGET_KIB" ]; then
  echo "idle RssAnon, median of 3: $median KiB, budget $BUDGET_KIB KiB: ok"
else
  echo "idle RssAnon, median of 3: $median KiB, OVER the budget of $BUDGET_KIB KiB by $((median - BUDGET_KIB)) KiB"
  echo "resident by mapping (last run):"
  cat "$WORK/breakdown"
  echo "if the agent's code changed: regenerate the code order with scripts/order-file.sh;"
  echo "if it is a different binary than 'cargo build --release -p asset-agent' gives, a workspace"
  echo "member changed the agent's dependency features (its symbol names no longer match the list)"
  exit 1
fi
