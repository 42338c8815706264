#!/usr/bin/env bash
# The shipped binaries' size budget, checked on the real files (deterministic: the same
# sources and toolchain give the same bytes).
#
#   scripts/size-check.sh BINARY TRIPLE [BINARY TRIPLE ...]
#
# Prints each size and fails when one is over its budget: 4 MiB (4,194,304 bytes) for
# every target, glibc or static musl (the README's "Size"; keep the two in step). The
# triple only labels the line, and must be one scripts/dist.sh builds.
set -euo pipefail

budget() {
  case "$1" in
    x86_64-unknown-linux-gnu | aarch64-unknown-linux-gnu | armv7-unknown-linux-gnueabihf | \
    x86_64-unknown-linux-musl | aarch64-unknown-linux-musl | armv7-unknown-linux-musleabihf | \
    arm-unknown-linux-musleabihf) echo $((4 * 1024 * 1024)) ;;
    *) return 1 ;;
  esac
}

[ $# -ge 2 ] && [ $(($# % 2)) -eq 0 ] || { echo "usage: $0 BINARY TRIPLE [BINARY TRIPLE ...]" >&2; exit 2; }
status=0
while [ $# -gt 0 ]; do
  bin=$1 triple=$2; shift 2
  [ -f "$bin" ] || { echo "FAIL: $bin ($triple) was not built"; status=1; continue; }
  limit=$(budget "$triple") || { echo "FAIL: no budget for $triple"; status=1; continue; }
  size=$(stat -c %s "$bin")
  verdict=ok
  [ "$size" -le "$limit" ] || { verdict="OVER BUDGET by $((size - limit)) bytes"; status=1; }
  printf '%-28s %9d bytes (%d KiB), budget %d bytes (%d KiB): %s\n' \
    "$triple" "$size" $((size / 1024)) "$limit" $((limit / 1024)) "$verdict"
done
exit $status
