#!/usr/bin/env bash
# The oldest glibc a binary can start on, read from its ELF version needs (`readelf -V`),
# and a check that it is not above a floor.
#
#   scripts/glibc-floor.sh BINARY [FLOOR]      FLOOR defaults to 2.31
#
# Prints the highest GLIBC_x.y the binary needs. Fails, naming the offending symbol
# versions and the symbols that need them, when one is above FLOOR, or when the binary
# needs GLIBC_ABI_DT_RELR (packed relative relocations, glibc 2.36: the linker records it
# for `-z pack-relative-relocs`). A binary that needs no glibc at all (static musl) fails
# too: this check is for the glibc builds.
set -euo pipefail

[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: $0 BINARY [FLOOR]" >&2; exit 2; }
bin=$1 floor=${2:-2.31}
[ -f "$bin" ] || { echo "FAIL: $bin does not exist" >&2; exit 1; }

needs=$(readelf -V --wide "$bin" | { grep -o 'Name: GLIBC_[A-Z0-9_.]*' || true; } | sed 's/^Name: //' | sort -u)
if [ -z "$needs" ]; then
  echo "FAIL: $bin needs no GLIBC_* symbol version: not a dynamically linked glibc binary"
  exit 1
fi
status=0
if grep -qx 'GLIBC_ABI_DT_RELR' <<<"$needs"; then
  echo "FAIL: $bin needs GLIBC_ABI_DT_RELR (packed relative relocations, glibc 2.36+): linked with -z pack-relative-relocs"
  status=1
fi
versions=$(grep -E '^GLIBC_[0-9]+(\.[0-9]+)+$' <<<"$needs" | sed 's/^GLIBC_//' | sort -V)
highest=$(tail -1 <<<"$versions")
above=$(awk -v f="$floor" 'BEGIN { split(f, F, ".") }
  { split($0, V, "."); for (i = 1; i <= 3; i++) { a = V[i] + 0; b = F[i] + 0;
      if (a > b) { print; next } if (a < b) next } }' <<<"$versions")
if [ -n "$above" ]; then
  for v in $above; do
    # The dynamic symbols bound to that version, for the message.
    syms=$(readelf --dyn-syms --wide "$bin" | awk -v v="@GLIBC_$v" 'index($8, v) { sub(/@.*/, "", $8); print $8 }' | sort -u | tr '\n' ' ')
    echo "FAIL: $bin needs GLIBC_$v, above the floor $floor: ${syms:-(symbols not listed)}"
  done
  status=1
fi
if [ $status -eq 0 ]; then
  echo "ok: $bin needs glibc $highest at most (floor $floor), no GLIBC_ABI_DT_RELR"
fi
exit $status
