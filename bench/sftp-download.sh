#!/usr/bin/env bash
# SFTP download throughput: a large, real evidence export pulled from `gatehouse serve` by
# OpenSSH's sftp client, timed, then checked with `gatehouse audit verify-export`.
#
# Usage: bench/sftp-download.sh [RECORDS] [RUNS]
#   RECORDS  audit records in the export (default 500000, about 500 MB of CSV + JSON Lines)
#   RUNS     timed downloads (default 3)
# Environment: GATEHOUSE_BIN (use this binary, skip the build), CARGO_TARGET_DIR.
#
# Steps: fill a fresh audit store with RECORDS sealed statement records (example
# `fill_audit_store`, software key store), `gatehouse audit export` into data_dir/exports,
# start `gatehouse serve` with [sftp] on 127.0.0.1 (free ports), `sftp -b` `get -r` of the
# export RUNS times, MB/s = bytes / wall time of the sftp process (login included).
# Everything runs in a temp dir on 127.0.0.1 and is torn down on exit.
set -euo pipefail

RECORDS="${1:-500000}"
RUNS="${2:-3}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CATALOG="$REPO/../shared/oscal/NIST_SP-800-53_rev5_catalog.json"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gatehouse/target}"

cd "$REPO"
cargo build --release -q -p gatehouse-sftp --example fill_audit_store
if [[ -z "${GATEHOUSE_BIN:-}" ]]; then
    cargo build --release -q -p gatehouse
    GATEHOUSE_BIN="$CARGO_TARGET_DIR/release/gatehouse"
fi
FILL="$CARGO_TARGET_DIR/release/examples/fill_audit_store"

WORK="$(mktemp -d /tmp/gh-sftp-bench.XXXXXX)"
GH_PID=""
cleanup() {
    if [[ -n "$GH_PID" ]] && kill -0 "$GH_PID" 2>/dev/null; then
        kill "$GH_PID"; wait "$GH_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT="$(free_port)"; SFTP_PORT="$(free_port)"
DATA="$WORK/data"
ssh-keygen -q -t ed25519 -N '' -C bench@audit -f "$WORK/auditor"
cat >"$WORK/gatehouse.toml" <<EOF
[gateway]
name = "gh-bench"
data_dir = "$DATA"

[[listeners]]
name = "pg"
protocol = "postgres"
bind = "127.0.0.1:$PG_PORT"

[identity.dev_issuer]
enabled = true

[audit]
catalog = "$CATALOG"

[sftp]
bind = "127.0.0.1:$SFTP_PORT"
export_every_seconds = 0
max_read_bytes = 261120

[[sftp.auditors]]
name = "bench"
keys = ["$(cat "$WORK/auditor.pub")"]
EOF
GH=("$GATEHOUSE_BIN" --config "$WORK/gatehouse.toml")

echo "filling the audit store with $RECORDS records"
"$FILL" "$DATA" "$RECORDS"
t0=$(date +%s.%N)
"${GH[@]}" audit export --out "$DATA/exports/evidence-bench" >/dev/null
t1=$(date +%s.%N)
BYTES=$(du -sb "$DATA/exports/evidence-bench" | cut -f1)
echo "export: $BYTES bytes in $(python3 -c "print(f'{$t1-$t0:.1f}')") s"
ls -l "$DATA/exports/evidence-bench"

"${GH[@]}" serve >"$WORK/serve.log" 2>&1 &
GH_PID=$!
for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$SFTP_PORT),0.2)" 2>/dev/null && break
    sleep 0.1
done
"${GH[@]}" sftp host-key --known-hosts 127.0.0.1 >"$WORK/known_hosts"

for run in $(seq "$RUNS"); do
    rm -rf "$WORK/copy"
    t0=$(date +%s.%N)
    echo "get -r /evidence-bench $WORK/copy" | sftp -q -F /dev/null -b - -P "$SFTP_PORT" -i "$WORK/auditor" \
        -o IdentitiesOnly=yes -o BatchMode=yes -o UserKnownHostsFile="$WORK/known_hosts" bench@127.0.0.1 >/dev/null
    t1=$(date +%s.%N)
    python3 -c "b=$BYTES; s=$t1-$t0; print(f'run $run: {b/1e6:.1f} MB in {s:.2f} s = {b/1e6/s:.1f} MB/s')"
done
"${GH[@]}" audit verify-export "$WORK/copy" | tail -1
echo "sftp.download records: $("${GH[@]}" audit tail -n 100 --json | grep -c '"event":"sftp.download"')"
