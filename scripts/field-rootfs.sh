#!/usr/bin/env bash
# A Debian root filesystem for the field tests (scripts/field-test.sh, systemd-boot-test.sh
# --root), made by debootstrap from Debian's archive and cached between runs.
#
# Usage (as root): scripts/field-rootfs.sh SUITE ARCH [PACKAGE,...]
#   SUITE    a Debian suite, e.g. bullseye
#   ARCH     a Debian architecture: the host's (amd64 here) gives a full minbase system
#            you can chroot into, with PACKAGEs added; another (arm64, armhf) gives the
#            first stage of `debootstrap --foreign`: the suite's libc and loader unpacked,
#            enough for `qemu-aarch64 -L ROOT` / `qemu-arm -L ROOT` (PACKAGEs not allowed)
# Prints the root's path on stdout (progress goes to stderr).
#
# The cache: ${ASSET_AGENT_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/asset-agent-ci}/rootfs/
# SUITE-ARCH-KEY, KEY naming the package list. A root is used only if it was finished (a
# stamp written last) and still looks whole (dpkg, libc and the loader are there; the
# native one runs /bin/true in a chroot and dpkg knows every PACKAGE); otherwise it is
# removed and made again. It is built aside and renamed into place, under a lock, so an
# interrupted or concurrent run never leaves half a root where the next one looks.
set -euo pipefail

die() { printf 'field-rootfs: %s\n' "$*" >&2; exit 1; }
note() { printf 'field-rootfs: %s\n' "$*" >&2; }

[ $# -ge 2 ] || die "usage: $0 SUITE ARCH [PACKAGE,...]"
suite=$1
arch=$2
include=${3:-}
mirror=${ASSET_AGENT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
[ "$(id -u)" = 0 ] || die "needs root (debootstrap and chroot)"
command -v debootstrap >/dev/null 2>&1 || die "debootstrap is missing: apt-get install debootstrap"
host_arch=$(dpkg --print-architecture)
foreign=0
if [ "$arch" != "$host_arch" ]; then
  foreign=1
  [ -z "$include" ] || die "extra packages need a native root ($arch is not $host_arch)"
fi

cache=${ASSET_AGENT_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/asset-agent-ci}/rootfs
key=minbase
[ -n "$include" ] && key=$(printf '%s' "$include" | sha256sum | cut -c1-12)
[ "$foreign" = 1 ] && key=foreign
root=$cache/$suite-$arch-$key
stamp=$root/.asset-agent-ci-complete
mkdir -p "$cache"

whole() {
  [ -f "$stamp" ] || return 1
  [ -x "$root/usr/bin/dpkg" ] || return 1
  compgen -G "$root/lib/*/libc.so.6" >/dev/null || return 1
  compgen -G "$root/lib/ld-linux*.so.*" >/dev/null || compgen -G "$root/lib64/ld-linux*.so.*" >/dev/null \
    || return 1
  if [ "$foreign" = 0 ]; then
    chroot "$root" /bin/true || return 1
    local p
    for p in ${include//,/ }; do
      chroot "$root" dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
        || return 1
    done
  fi
  return 0
}

exec 9>"$root.lock"
flock 9
if whole; then
  note "cached: $root"
  printf '%s\n' "$root"
  exit 0
fi
if [ -e "$root" ]; then
  note "the cached $root is incomplete or broken: making it again"
  rm -rf --one-file-system "$root"
fi
build=$cache/.build-$suite-$arch-$$
rm -rf --one-file-system "$cache"/.build-"$suite"-"$arch"-* 2>/dev/null || true
args=(--variant=minbase --arch="$arch")
[ "$foreign" = 1 ] && args+=(--foreign)
[ -n "$include" ] && args+=(--include="$include")
note "debootstrap ${args[*]} $suite (from $mirror)"
start=$SECONDS
if ! debootstrap "${args[@]}" "$suite" "$build" "$mirror" >"$cache/.debootstrap-$suite-$arch.log" 2>&1; then
  tail -n 20 "$cache/.debootstrap-$suite-$arch.log" >&2
  rm -rf --one-file-system "$build"
  die "debootstrap of $suite/$arch failed (log above; the mirror is $mirror, ASSET_AGENT_DEBIAN_MIRROR overrides it)"
fi
# Nothing of the downloads is needed again; the apt lists are (dpkg -i needs none).
rm -f "$build"/var/cache/apt/archives/*.deb
date -u +%FT%TZ >"$build/.asset-agent-ci-complete"
mv "$build" "$root"
whole || die "the new root $root does not pass its own check"
note "made $root in $((SECONDS - start)) s ($(du -sm "$root" | cut -f1) MB)"
printf '%s\n' "$root"
