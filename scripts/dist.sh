#!/usr/bin/env bash
# Builds the release artifacts into target/dist/ (README, "Install").
#
#   scripts/dist.sh [TARGET...]           no TARGET: all seven below
#   scripts/dist.sh --check [TARGET...]   only compile-check each target (`cargo zigbuild
#                                         check`, the release profile): no artifacts
#
# glibc targets, linked by zig against glibc 2.31 (cargo-zigbuild's `TARGET.2.31`), so they
# start on Debian 11+, Ubuntu 20.04+, Raspberry Pi OS bullseye+, Jetson L4T 35+:
#   x86_64-unknown-linux-gnu      -> asset-agent_<version>-1_amd64.deb
#   aarch64-unknown-linux-gnu     -> asset-agent_<version>-1_arm64.deb
#   armv7-unknown-linux-gnueabihf -> asset-agent_<version>-1_armhf.deb
# Each .deb is `cargo deb --no-build` of that binary (units, sysusers, tmpfiles, conffile,
# maintainer scripts, as Cargo.toml's [package.metadata.deb] says), with Depends computed
# from the binary: libc6 (>= the highest GLIBC_x.y it needs, `readelf -V`), and systemd.
# scripts/glibc-floor.sh fails the build if that is above 2.31 or needs GLIBC_ABI_DT_RELR.
#
# musl targets, fully static (no dynamic loader, so no PKCS#11 modules: the agent says so):
#   x86_64-unknown-linux-musl, aarch64-unknown-linux-musl, armv7-unknown-linux-musleabihf,
#   arm-unknown-linux-musleabihf (ARMv6: Pi Zero, Pi 1)
#   -> asset-agent-<version>-<target>.tar.gz, holding asset-agent-<version>-<target>/ with
#      asset-agent, README.md, agent.toml (the example config) and systemd/ (units,
#      sysusers.d, tmpfiles.d files)
#
# Also target/dist/<target>/asset-agent, the plain binary of each target (what the tests
# run), and target/dist/SHA256SUMS over the .debs and tarballs (`cd target/dist &&
# sha256sum -c SHA256SUMS`). target/dist is emptied first: it only ever holds this run's
# artifacts.
#
# Installs what it needs when missing, and says so: the rustup targets; ziglang and
# cargo-zigbuild from PyPI (pip); cargo-deb from crates.io (`cargo install --locked`).
# Where rustup has no prebuilt standard library for a target (a 404 from
# static.rust-lang.org), std is built from source with the same compiler (the rust-src
# component, `-Z build-std` under RUSTC_BOOTSTRAP=1; for musl, zig's C runtime and libc
# with `-C link-self-contained=no`), and the summary says so.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_TARGETS=(
  x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
  x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf
  arm-unknown-linux-musleabihf
)
GLIBC_FLOOR=2.31
TARGET_DIR=${CARGO_TARGET_DIR:-target}
DIST=$TARGET_DIR/dist

say() { printf '%s\n' "$*"; }
die() { printf 'dist.sh: FAILED: %s\n' "$*" >&2; exit 1; }

check_only=0
if [ "${1:-}" = "--check" ]; then check_only=1; shift; fi
case "${1:-}" in -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
if [ $# -eq 0 ]; then targets=("${ALL_TARGETS[@]}"); else targets=("$@"); fi
for t in "${targets[@]}"; do
  printf '%s\n' "${ALL_TARGETS[@]}" | grep -qx -- "$t" \
    || die "unknown target $t (known: ${ALL_TARGETS[*]})"
done

# File times in the packages: the commit's, unless SOURCE_DATE_EPOCH says otherwise.
EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
version=$(cargo metadata --no-deps --format-version 1 \
  | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "asset-agent"))') \
  || die "could not read the version of asset-agent from cargo metadata"

# --- tools --------------------------------------------------------------------------

# pip, as this Python allows it: a Debian python3 refuses system-wide installs (PEP 668).
pip_install() {
  if ! python3 -m pip --version >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || die "python3 has no pip: install python3-pip"
    say "installing python3-pip (apt)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip; } >/dev/null \
      || die "apt-get install python3-pip failed"
  fi
  python3 -m pip install --quiet --disable-pip-version-check "$@" 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@" \
    || die "pip install $* failed"
}

ensure_zig() {
  # pip's --user scripts directory, where cargo-zigbuild lands when not installed system-wide.
  PATH="$PATH:$(python3 -m site --user-base 2>/dev/null || echo "$HOME/.local")/bin"
  if ! command -v zig >/dev/null 2>&1 && ! python3 -m ziglang version >/dev/null 2>&1; then
    say "installing zig (ziglang from PyPI)"
    pip_install ziglang
  fi
  if ! command -v cargo-zigbuild >/dev/null 2>&1; then
    say "installing cargo-zigbuild (from PyPI)"
    pip_install cargo-zigbuild
    hash -r
    command -v cargo-zigbuild >/dev/null 2>&1 || die "cargo-zigbuild installed but not on PATH ($PATH)"
  fi
}

ensure_cargo_deb() {
  command -v cargo-deb >/dev/null 2>&1 && return 0
  say "installing cargo-deb (cargo install --locked cargo-deb)"
  cargo install --locked --quiet cargo-deb || die "cargo install cargo-deb failed"
}

# Sets STD_MODE for $1: "rustup" (prebuilt std installed) or "build-std" (from source).
ensure_target() {
  local t=$1 log
  STD_MODE=rustup
  rustup target list --installed | grep -qx -- "$t" && return 0
  say "adding the rustup target $t"
  log=$(mktemp)
  for attempt in 1 2 3; do
    if timeout 300 rustup target add "$t" >"$log" 2>&1; then rm -f "$log"; return 0; fi
    grep -q '404' "$log" && break
    say "rustup target add $t failed (attempt $attempt), retrying"
    sleep $((attempt * 5))
  done
  if ! grep -q '404' "$log"; then
    cat "$log" >&2; rm -f "$log"
    die "rustup could not add $t (see above)"
  fi
  rm -f "$log"
  say "rustup has no prebuilt std for $t (404): building std from source with this compiler"
  if ! rustup component list --installed | grep -q '^rust-src'; then
    say "adding the rust-src component"
    timeout 600 rustup component add rust-src >/dev/null || die "rustup component add rust-src failed"
  fi
  STD_MODE=build-std
}

# --- per target ---------------------------------------------------------------------

deb_arch() {
  case "$1" in
    x86_64-*) echo amd64 ;; aarch64-*) echo arm64 ;; armv7-*) echo armhf ;;
    *) return 1 ;;
  esac
}

# Debian packages for the shared libraries a glibc build may need.
package_of() {
  case "$1" in
    libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | librt.so.1 | ld-linux*.so.* | libutil.so.1) echo libc6 ;;
    libgcc_s.so.1) echo libgcc-s1 ;;
    *) return 1 ;;
  esac
}

# The Depends line true to binary $1: libc6 at the glibc it was linked against (zig's 2.31
# headers and symbol stubs: nothing older is built against or tested), after checking that
# no symbol version it needs is newer (scripts/glibc-floor.sh already failed the build if
# so); a package for any other shared library it needs; systemd.
depends_of() {
  local bin=$1 lib pkg needs
  needs=$(readelf -V --wide "$bin" | { grep -oE 'Name: GLIBC_[0-9]+(\.[0-9]+)+' || true; } | sed 's/^Name: GLIBC_//' | sort -V | tail -1)
  [ -n "$needs" ] || die "$bin needs no GLIBC version: not a glibc binary"
  [ "$(printf '%s\n' "$needs" "$GLIBC_FLOOR" | sort -V | tail -1)" = "$GLIBC_FLOOR" ] \
    || die "$bin needs GLIBC_$needs, above the $GLIBC_FLOOR it was to be linked against"
  local extra=()
  for lib in $(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    pkg=$(package_of "$lib") || die "$bin needs $lib, which no Depends rule covers (scripts/dist.sh, package_of)"
    [ "$pkg" = libc6 ] || extra+=("$pkg")
  done
  local deps="libc6 (>= $GLIBC_FLOOR)"
  for pkg in $(printf '%s\n' "${extra[@]}" | sort -u); do deps="$deps, $pkg"; done
  echo "$deps, systemd"
}

# Rewrites the Depends field of .deb $1 to $2 (cargo-deb's $auto cannot read a foreign
# architecture's binary without that architecture's libc installed).
set_depends() {
  local deb=$1 want=$2 dir
  dir=$(mktemp -d)
  dpkg-deb -R "$deb" "$dir/pkg"
  sed -i "s/^Depends: .*/Depends: $want/" "$dir/pkg/DEBIAN/control"
  SOURCE_DATE_EPOCH=$EPOCH dpkg-deb --root-owner-group -Zxz --build "$dir/pkg" "$deb" >/dev/null
  rm -rf "$dir"
}

build_deb() {
  local t=$1 bin=$2 arch out deb want got contents
  arch=$(deb_arch "$t")
  ensure_cargo_deb
  out=$DIST
  # --no-build: the binary zig just built, at target/<t>/release (cargo-deb maps the
  # assets' target/release/ there); --no-strip: the release profile already stripped it.
  cargo deb --quiet --no-build --no-strip --target "$t" --output "$out" -p asset-agent >/dev/null \
    || die "cargo deb --target $t failed"
  deb=$out/asset-agent_${version}-1_${arch}.deb
  [ -f "$deb" ] || die "cargo deb did not write $deb (it wrote: $(ls "$out"))"
  want=$(depends_of "$bin")
  got=$(dpkg-deb -f "$deb" Depends)
  if [ "$got" != "$want" ]; then
    say "  Depends from cargo-deb: '$got'; setting the one computed from the binary: '$want'"
    set_depends "$deb" "$want"
  fi
  contents=$(dpkg-deb -c "$deb")
  grep -q ' \./usr/bin/asset-agent$' <<<"$contents" || die "$deb has no /usr/bin/asset-agent"
  cmp -s <(dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/asset-agent) "$bin" \
    || die "the binary in $deb is not the one built for $t"
  say "  $deb: $(stat -c %s "$deb") bytes, Depends: $(dpkg-deb -f "$deb" Depends)"
}

build_tarball() {
  local t=$1 bin=$2 name stage
  name=asset-agent-$version-$t
  stage=$(mktemp -d)
  mkdir -p "$stage/$name/systemd"
  install -m 0755 "$bin" "$stage/$name/asset-agent"
  install -m 0644 README.md "$stage/$name/README.md"
  install -m 0644 config/agent.toml "$stage/$name/agent.toml"
  install -m 0644 systemd/asset-agent.service systemd/asset-agent.socket \
    systemd/asset-agent.sysusers systemd/asset-agent.tmpfile "$stage/$name/systemd/"
  # The same bytes from the same commit: fixed owners, order and times, gzip without a date.
  tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" \
    -cf - "$name" | gzip -9n >"$DIST/$name.tar.gz"
  rm -rf "$stage"
  say "  $DIST/$name.tar.gz: $(stat -c %s "$DIST/$name.tar.gz") bytes"
}

# Static and self-contained: no program interpreter, no shared library.
check_static() {
  local bin=$1
  if readelf -l "$bin" | grep -q 'INTERP'; then die "$bin has a program interpreter: not static"; fi
  if readelf -d "$bin" 2>/dev/null | grep -q '(NEEDED)'; then
    die "$bin needs shared libraries: $(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
  fi
}

# A static binary this machine can run refuses a PKCS#11 key, naming the build to use
# (`check` and `run`), instead of failing to load the module with a misleading hint.
check_static_pkcs11() {
  local bin=$1 dir out cmd
  dir=$(mktemp -d)
  cat >"$dir/agent.toml" <<EOF
[salesforce]
instance_url = "http://127.0.0.1:1"
client_id = "3MVG9EMULATOR.asset-agent"
[auth]
refresh_token_file = "$dir/refresh-token"
[asset]
device_id = "dist-check"
name = "dist check"
serial_number = "DIST-0001"
[key]
backend = "pkcs11"
uri = "pkcs11:token=asset-agent;object=device-key"
module = "/usr/lib/softhsm/libsofthsm2.so"
pin_file = "$dir/pin"
[state]
dir = "$dir/state"
[api]
socket = "$dir/agent.sock"
EOF
  printf 'x' >"$dir/refresh-token"
  printf '1234' >"$dir/pin"
  chmod 600 "$dir/refresh-token" "$dir/pin"
  for cmd in check run; do
    if out=$(env -i PATH=/usr/bin:/bin timeout 20 "$bin" --config "$dir/agent.toml" "$cmd" 2>&1); then
      rm -rf "$dir"
      die "$bin $cmd with a PKCS#11 key succeeded: a static binary cannot load one"
    fi
    if ! grep -q 'statically linked build.*cannot load a PKCS#11 module.*the \.deb' <<<"$out"; then
      say "$out"
      rm -rf "$dir"
      die "$bin $cmd does not say that a static binary cannot load a PKCS#11 module"
    fi
  done
  rm -rf "$dir"
  say "  check and run with a PKCS#11 key: refused, naming the .deb (static binary)"
}

# --- main ---------------------------------------------------------------------------
# (One function, called on the last line: bash has read all of it before it runs, so an
# edit to this file during a build cannot change what the running build does.)
main() {

  ensure_zig
  start_all=$SECONDS
  declare -A std_mode built_bytes floor_of secs_of
  if [ $check_only = 0 ]; then
    rm -rf "$DIST"
    mkdir -p "$DIST"
  fi
  for t in "${targets[@]}"; do
    say "== $t"
    start=$SECONDS
    ensure_target "$t"
    std_mode[$t]=$STD_MODE
    zig_target=$t
    case "$t" in *-gnu | *-gnueabihf) zig_target=$t.$GLIBC_FLOOR ;; esac
    cmd=(cargo zigbuild)
    env_extra=()
    # The crates' source paths as written into the binary (panic locations, log
    # callsites): `NAME-VERSION/src/...` instead of this machine's registry checkout
    # (`$CARGO_HOME/registry/src/index.crates.io-HASH/`), the same wherever it is built,
    # and 23 KB less on x86_64.
    rustflags=()
    for src in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/; do
      [ -d "$src" ] && rustflags+=("--remap-path-prefix=$src=")
    done
    target_root=$TARGET_DIR
    if [ "$STD_MODE" = build-std ]; then
      cmd+=(-Z build-std=std,panic_abort)
      env_extra=(RUSTC_BOOTSTRAP=1)
      # rustc would link its own musl start files and libc from rustup's std component,
      # which is what is missing: zig's musl provides them instead.
      case "$t" in
        *-musl*) rustflags+=(-C link-self-contained=no) ;;
      esac
      # A target directory of their own: RUSTC_BOOTSTRAP changes the host's proc-macro
      # builds (proc-macro2 reads it), so sharing one would rebuild every other target's
      # dependencies after each of these builds, and back.
      target_root=$TARGET_DIR/build-std
      env_extra+=("CARGO_TARGET_DIR=$target_root")
    fi
    env_extra+=("CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$t")_RUSTFLAGS=${rustflags[*]}")
    if [ $check_only = 1 ]; then
      cmd=(cargo-zigbuild check "${cmd[@]:2}")
      say "  ${env_extra[*]:+${env_extra[*]} }${cmd[*]} --release --locked -p asset-agent --target $zig_target"
      env "${env_extra[@]}" "${cmd[@]}" --release --locked -p asset-agent --target "$zig_target" \
        || die "cargo zigbuild check --target $zig_target failed"
      secs_of[$t]=$((SECONDS - start))
      continue
    fi
    say "  ${env_extra[*]:+${env_extra[*]} }${cmd[*]} --release --locked -p asset-agent --target $zig_target"
    env "${env_extra[@]}" "${cmd[@]}" --release --locked -p asset-agent --target "$zig_target" \
      || die "cargo zigbuild --target $zig_target failed"
    bin=$target_root/$t/release/asset-agent
    [ -f "$bin" ] || die "the build left no $bin"
    mkdir -p "$DIST/$t"
    cp "$bin" "$DIST/$t/asset-agent"
    built_bytes[$t]=$(stat -c %s "$bin")
    say "  $DIST/$t/asset-agent: ${built_bytes[$t]} bytes"
    case "$t" in
      *-gnu | *-gnueabihf)
        floor_out=$(scripts/glibc-floor.sh "$bin" "$GLIBC_FLOOR") \
          || { say "$floor_out"; die "$t needs a newer glibc than $GLIBC_FLOOR"; }
        say "  $floor_out"
        floor_of[$t]="glibc $(readelf -V --wide "$bin" | { grep -oE 'Name: GLIBC_[0-9]+(\.[0-9]+)+' || true; } | sed 's/^Name: GLIBC_//' | sort -V | tail -1) (needs)"
        build_deb "$t" "$bin"
        ;;
      *)
        check_static "$bin"
        [ "${t%%-*}" != "$(uname -m)" ] || check_static_pkcs11 "$bin"
        floor_of[$t]="none (static)"
        build_tarball "$t" "$bin"
        ;;
    esac
    case "$t" in
      arm-*)
        # A Pi Zero's core is ARMv6: nothing in the binary may claim more.
        cpu=$(readelf -A "$bin" | sed -n 's/^ *Tag_CPU_arch: *//p' | head -1)
        case "$cpu" in v6 | v6K | v6KZ) say "  ELF Tag_CPU_arch: $cpu (runs on ARMv6)" ;;
          *) die "$bin is tagged Tag_CPU_arch $cpu, not ARMv6: it would not run on a Pi Zero" ;; esac
        ;;
    esac
    secs_of[$t]=$((SECONDS - start))
  done

  if [ $check_only = 0 ]; then
    mapfile -t artifacts < <(cd "$DIST" && ls -- *.deb *.tar.gz 2>/dev/null)
    [ ${#artifacts[@]} -gt 0 ] || die "nothing to checksum in $DIST"
    (cd "$DIST" && sha256sum -- "${artifacts[@]}" >SHA256SUMS)
    (cd "$DIST" && sha256sum --quiet -c SHA256SUMS) || die "SHA256SUMS does not verify"
  fi

  say ""
  if [ $check_only = 1 ]; then
    say "target                              std        seconds  (compile check only)"
    for t in "${targets[@]}"; do printf '%-35s %-10s %s\n' "$t" "${std_mode[$t]}" "${secs_of[$t]}"; done
  else
    say "target                              bytes      libc floor           std        seconds"
    for t in "${targets[@]}"; do
      printf '%-35s %-10s %-20s %-10s %s\n' "$t" "${built_bytes[$t]}" "${floor_of[$t]}" "${std_mode[$t]}" "${secs_of[$t]}"
    done
    say ""
    say "artifacts in $DIST ($((SECONDS - start_all)) s):"
    for f in "${artifacts[@]}" SHA256SUMS; do
      printf '  %-60s %s bytes\n' "$f" "$(stat -c %s "$DIST/$f")"
    done
  fi
}

main "$@"; exit $?
