#!/usr/bin/env bash
# Installs the Debian packages the CI steps need, only those missing, quietly:
#   systemd                    systemd-analyze, systemd-sysusers, systemd-tmpfiles, and
#                              the systemd that systemd-boot-test.sh boots
#   curl                       systemd-boot-test.sh talks to the socket with it
#   faketime                   tests/check.rs: a wrong system clock, for real
#   qemu-user                  running the ARM builds (cross-check.sh installs the
#                              cross libc each one runs with; zig links them, so no
#                              cross gcc is needed)
#   python3                    deb-check.sh and cross-check.sh read JSON and pick ports
#   softhsm2 opensc            tests/pkcs11_softhsm.rs: a PKCS#11 token (and pkcs11-tool)
#   swtpm swtpm-tools tpm2-tools libtpm2-pkcs11-1 libtpm2-pkcs11-tools
#                              tests/pkcs11_tpm.rs: a software TPM 2.0 behind tpm2-pkcs11
# CI runs as root on a possibly fresh machine; elsewhere this only reports what is missing.
set -euo pipefail
want=(systemd curl faketime qemu-user
      softhsm2 opensc swtpm swtpm-tools tpm2-tools libtpm2-pkcs11-1 libtpm2-pkcs11-tools)
command -v python3 >/dev/null 2>&1 || want+=(python3)
missing=()
for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -eq 0 ]; then
  echo "ok: all present (${want[*]})"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "missing (install as root): ${missing[*]}"
  exit 1
fi
echo "installing: ${missing[*]}"
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "ok: installed"
