#!/usr/bin/env bash
# Device key backends (docs/benchmarks.md, "Key backends"): cold open and sign latency for
# the file backend, SoftHSM2 and a software TPM (swtpm behind tpm2-pkcs11, straight over the
# swtpm TCTI). Tokens live in a temp dir; swtpm is stopped whatever happens.
#
#   scripts/bench-keys.sh          (needs softhsm2, swtpm, opensc, libtpm2-pkcs11-1, hyperfine)
#
# cold open: `asset-agent key show --thumbprint` (process start, module load and
#            C_Initialize, token lookup, login, key lookup), hyperfine, 20 runs;
# sign:      benches/keys.rs, 200 signatures per backend in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
AGENT=${AGENT:-target/release/asset-agent}
cargo build --release -p asset-agent >/dev/null
tmp=$(mktemp -d)
swtpm_pid=
trap '[ -n "$swtpm_pid" ] && kill "$swtpm_pid" 2>/dev/null; rm -rf "$tmp"' EXIT

softhsm=/usr/lib/softhsm/libsofthsm2.so
tpm2=/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so
printf '1234\n' >"$tmp/pin"; chmod 600 "$tmp/pin"

# SoftHSM2
mkdir -p "$tmp/softhsm"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$tmp/softhsm" >"$tmp/softhsm2.conf"
export SOFTHSM2_CONF=$tmp/softhsm2.conf
softhsm2-util --init-token --free --label bench --so-pin 0000 --pin 1234 >/dev/null

# swtpm (the control channel is on the next port, where the swtpm TCTI looks for it)
port=$(python3 -c 'import socket
while True:
    s=socket.socket(); s.bind(("127.0.0.1",0)); p=s.getsockname()[1]
    t=socket.socket()
    try: t.bind(("127.0.0.1",p+1)); print(p); break
    except OSError: pass')
mkdir -p "$tmp/tpm" "$tmp/store"
swtpm socket --tpm2 --flags not-need-init,startup-clear --tpmstate dir="$tmp/tpm" \
  --server type=tcp,port="$port",bindaddr=127.0.0.1 --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 &
swtpm_pid=$!
sleep 0.5
export TPM2_PKCS11_TCTI="swtpm:host=127.0.0.1,port=$port" TPM2_PKCS11_STORE=$tmp/store TPM2_PKCS11_LOG_LEVEL=0
pkcs11-tool --module "$tpm2" --init-token --label bench --so-pin 12345678 >/dev/null 2>&1
pkcs11-tool --module "$tpm2" --token-label bench --login --login-type so --so-pin 12345678 --init-pin --pin 1234 >/dev/null 2>&1

config() { # NAME KEY-TABLE
  cat >"$tmp/$1.toml" <<TOML
[salesforce]
instance_url = "http://127.0.0.1:9"
client_id = "bench"
[asset]
device_id = "bench"
name = "bench"
serial_number = "bench"
[key]
$2
[state]
dir = "$tmp/state-$1"
[api]
socket = "$tmp/$1.sock"
TOML
}
config file "path = \"$tmp/device-key.pem\""
config softhsm "backend = \"pkcs11\"
uri = \"pkcs11:token=bench;object=bench-key\"
module = \"$softhsm\"
pin_file = \"$tmp/pin\""
config swtpm "backend = \"pkcs11\"
uri = \"pkcs11:token=bench;object=bench-key\"
module = \"$tpm2\"
pin_file = \"$tmp/pin\""

for b in file softhsm swtpm; do
  start=$(date +%s%N)
  "$AGENT" key generate --config "$tmp/$b.toml" >/dev/null
  echo "$b: key generate $(( ($(date +%s%N) - start) / 1000000 )) ms"
done
for b in file softhsm swtpm; do
  hyperfine -N --warmup 3 --runs 20 --export-json "$tmp/$b.json" \
    "$AGENT key show --thumbprint --config $tmp/$b.toml" >/dev/null
  python3 -c "import json,sys; r=json.load(open('$tmp/$b.json'))['results'][0]; print('$b: cold open mean %.1f ms, min %.1f ms (hyperfine, 20 runs)' % (r['mean']*1000, r['min']*1000))"
done
ASSET_AGENT_BENCH_KEYS="softhsm=$tmp/softhsm.toml:swtpm=$tmp/swtpm.toml" cargo bench --bench keys 2>/dev/null
