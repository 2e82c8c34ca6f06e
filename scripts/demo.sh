#!/usr/bin/env bash
# Command 1 of the README: run Gatehouse on embedded defaults in front of a throwaway
# PostgreSQL and print a psql line that works. Installs Debian's PostgreSQL server if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v psql >/dev/null; then
    echo "demo: installing PostgreSQL from Debian packages" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >/dev/null
    # The package may start a system cluster; the demo runs its own.
    (service postgresql stop || pg_ctlcluster --help >/dev/null 2>&1) >/dev/null 2>&1 || true
fi
# Build dependencies: libtss2 (TPM key store), libclang + protoc (pg_query, the SQL parser).
build_missing=()
pkg-config --exists tss2-esys 2>/dev/null || build_missing+=(libtss2-dev pkg-config)
ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || build_missing+=(libclang-dev)
command -v protoc >/dev/null 2>&1 || build_missing+=(protobuf-compiler)
if [ "${#build_missing[@]}" -gt 0 ]; then
    echo "demo: installing build dependencies: ${build_missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${build_missing[@]}" >/dev/null
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gatehouse/target}"
cargo build --release --locked -p gatehouse
exec "$CARGO_TARGET_DIR/release/gatehouse" demo "$@"
