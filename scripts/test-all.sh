#!/usr/bin/env bash
# Run the whole Gatehouse test suite: installs what it needs (idempotent, fast when already
# done), then cargo fmt --check, clippy -D warnings, build, cargo tests, and the end-to-end
# tests (tests/e2e, pytest) against a real PostgreSQL, a real OpenID provider and real clients.
#
# Usage: scripts/test-all.sh [--e2e-only] [extra pytest args...]
#   --e2e-only   skip fmt/clippy/cargo test (still builds the gateway)
# Environment:
#   GATEHOUSE_CACHE   cache dir (default ~/.cache/gatehouse): venv, cargo target dir
#   CARGO_TARGET_DIR  default $GATEHOUSE_CACHE/target
# Needs no TTY; exits non-zero if any section fails.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

E2E_ONLY=0
PYTEST_ARGS=()
for a in "$@"; do
  case "$a" in
    --e2e-only) E2E_ONLY=1 ;;
    *) PYTEST_ARGS+=("$a") ;;
  esac
done

export GATEHOUSE_CACHE="${GATEHOUSE_CACHE:-$HOME/.cache/gatehouse}"
# The TPM tests skip without swtpm on a developer machine; here they must run.
export GATEHOUSE_REQUIRE_TPM=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$GATEHOUSE_CACHE/target}"
export CARGO_TERM_COLOR=never
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PYTHONDONTWRITEBYTECODE=1
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
mkdir -p "$GATEHOUSE_CACHE"

SUITE_START=$SECONDS
declare -a SUMMARY=()
FAILED=0
PYTEST_LAST_LINE=""

section() {
  echo
  echo "=================================================================="
  echo "== $*"
  echo "=================================================================="
}

# run_section NAME CMD...: runs CMD, records pass/fail and elapsed time.
run_section() {
  local name="$1"; shift
  section "$name"
  local t0=$SECONDS rc=0
  "$@" || rc=$?
  local dt=$((SECONDS - t0))
  if [ "$rc" -eq 0 ]; then
    SUMMARY+=("[ok]   $name (${dt}s)")
    echo "-- $name: ok (${dt}s)"
  else
    SUMMARY+=("[FAIL] $name (${dt}s, exit $rc)")
    echo "-- $name: FAILED with exit $rc (${dt}s)"
    FAILED=1
  fi
  return "$rc"
}

skip_section() {
  SUMMARY+=("[skip] $1: $2")
  section "$1"
  echo "-- skipped: $2"
}

# ---------------------------------------------------------------------------------------
# System packages
# ---------------------------------------------------------------------------------------
pg_bindir() {
  local best="" v
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] || continue
    v="$(basename "$(dirname "$d")")"
    if [ -z "$best" ] || [ "${v%%.*}" -gt "$(basename "$(dirname "$best")" | cut -d. -f1)" ]; then best="$d"; fi
  done
  echo "$best"
}

python_has_venv() {
  "$1" -c 'import venv, ensurepip' >/dev/null 2>&1
}

install_system_packages() {
  local missing=()
  [ -n "$(pg_bindir)" ] || missing+=(postgresql postgresql-contrib)
  command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
  [ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null 2>&1 || missing+=(pgbouncer)
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  command -v jq >/dev/null 2>&1 || missing+=(jq)
  # OpenSSH's sftp/ssh/ssh-keygen/ssh-keyscan: the real clients of the SFTP server tests.
  command -v sftp >/dev/null 2>&1 && command -v ssh-keyscan >/dev/null 2>&1 || missing+=(openssh-client)
  # TPM 2.0: swtpm for the key-store tests, libtss2 for tss-esapi.
  command -v swtpm >/dev/null 2>&1 || missing+=(swtpm)
  command -v swtpm_setup >/dev/null 2>&1 || missing+=(swtpm-tools)
  command -v tpm2_getcap >/dev/null 2>&1 || missing+=(tpm2-tools)
  pkg-config --exists tss2-esys 2>/dev/null || missing+=(libtss2-dev pkg-config)
  # pg_query (the SQL parser) generates bindings with libclang and compiles protobuf with protoc.
  ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || missing+=(libclang-dev)
  command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
  # The appliance image (image/build.sh) and its boot test (tests/image).
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  command -v mkfs.erofs >/dev/null 2>&1 || missing+=(erofs-utils)
  command -v veritysetup >/dev/null 2>&1 || missing+=(cryptsetup-bin)
  command -v sfdisk >/dev/null 2>&1 || missing+=(fdisk)
  command -v zstd >/dev/null 2>&1 || missing+=(zstd)
  command -v readelf >/dev/null 2>&1 || missing+=(binutils)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  if ! python_has_venv "${PYTHON:-python3}" && ! python_has_venv /usr/bin/python3; then
    missing+=(python3-venv)
  fi
  if [ "${#missing[@]}" -eq 0 ]; then
    echo "system packages: all present"
  else
    echo "system packages: installing ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
      echo "not root: install these packages first: ${missing[*]}" >&2
      return 1
    fi
    # Do not let package scripts start the system postgresql/pgbouncer services (ports
    # 5432/6432 stay free; the tests run their own servers on free ports).
    local made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
    fi
    local rc=0
    apt-get update -qq </dev/null && \
      apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confdef \
        -o Dpkg::Options::=--force-confold "${missing[@]}" </dev/null || rc=$?
    [ "$made_policy" -eq 1 ] && rm -f /usr/sbin/policy-rc.d
    [ "$rc" -eq 0 ] || return "$rc"
  fi
  install_qemu || return 1
  # If a system cluster/pgbouncer got started anyway, stop it; we never rely on it.
  if command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters -h 2>/dev/null | awk '$4 == "online" {print $1, $2}' | while read -r ver name; do
      pg_ctlcluster "$ver" "$name" stop >/dev/null 2>&1 || true
    done
  fi
  if pgrep -x pgbouncer >/dev/null 2>&1 && command -v service >/dev/null 2>&1; then
    service pgbouncer stop >/dev/null 2>&1 || true
  fi
  echo "postgres server binaries: $(pg_bindir)"
  echo "node $(node --version), npm $(npm --version 2>/dev/null), $(psql --version)"
}

# QEMU for the appliance boot test. Debian 12's qemu-system-x86 (7.2) conflicts with a
# qemu-utils from bookworm-backports (>= 8) if one is installed: take both from bookworm.
# Installing QEMU may also upgrade the host's systemd packages (apt's choice, expected).
install_qemu() {
  command -v qemu-system-x86_64 >/dev/null 2>&1 && return 0
  echo "system packages: installing qemu-system-x86"
  local extra=()
  if dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null | grep -q bpo; then
    extra=(--allow-downgrades qemu-utils/bookworm)
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "not root: install qemu-system-x86 first" >&2
    return 1
  fi
  apt-get update -qq </dev/null && \
    apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confdef \
      -o Dpkg::Options::=--force-confold qemu-system-x86 "${extra[@]}" </dev/null
}

# ---------------------------------------------------------------------------------------
# Python venv and node modules
# ---------------------------------------------------------------------------------------
VENV="$GATEHOUSE_CACHE/venv"

setup_venv() {
  local req="$ROOT/tests/requirements.txt"
  local py="${PYTHON:-python3}"
  python_has_venv "$py" || py=/usr/bin/python3
  local want
  want="$( (sha256sum "$req" | cut -d' ' -f1; "$py" -c 'import sys; print(sys.version)') | sha256sum | cut -d' ' -f1)"
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1 \
     && [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" = "$want" ]; then
    echo "venv up to date: $VENV"
    return 0
  fi
  echo "creating venv $VENV with $py ($("$py" --version 2>&1))"
  rm -rf "$VENV"
  "$py" -m venv "$VENV" || return 1
  "$VENV/bin/python" -m pip install -q --upgrade pip </dev/null || return 1
  "$VENV/bin/python" -m pip install -q -r "$req" </dev/null || return 1
  echo "$want" >"$VENV/.requirements.sha256"
  "$VENV/bin/python" -m pip freeze | sed 's/^/  /'
}

setup_node() {
  local dir="$ROOT/tests/oidc"
  local want
  want="$( (sha256sum "$dir/package-lock.json" | cut -d' ' -f1; node --version) | sha256sum | cut -d' ' -f1)"
  if [ -d "$dir/node_modules/oidc-provider" ] && [ "$(cat "$dir/node_modules/.gatehouse-lock.sha256" 2>/dev/null)" = "$want" ]; then
    echo "node_modules up to date: $dir/node_modules"
    return 0
  fi
  (cd "$dir" && npm ci --no-audit --no-fund --prefer-offline --loglevel=error </dev/null) || return 1
  echo "$want" >"$dir/node_modules/.gatehouse-lock.sha256"
  echo "installed oidc-provider $(node -p "require('$dir/node_modules/oidc-provider/package.json').version")"
}

# ---------------------------------------------------------------------------------------
# Rust
# ---------------------------------------------------------------------------------------
cargo_fmt() { cargo fmt --all --check; }
cargo_clippy() { cargo clippy --workspace --all-targets --locked -- -D warnings; }
cargo_build() { cargo build --workspace --locked; }
cargo_tests() {
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-tests=warn
  else
    cargo test --workspace --locked
  fi
}

# ---------------------------------------------------------------------------------------
# Fuzzers: build every target and run each briefly from the committed seed corpus.
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them.
# ---------------------------------------------------------------------------------------
fuzz_smoke() {
  if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz || return 1
  fi
  local secs="${GATEHOUSE_FUZZ_SECONDS:-10}" t work dir spec
  export RUSTC_BOOTSTRAP=1
  local ftarget="$GATEHOUSE_CACHE/fuzz-target"
  # crate dir : its fuzz targets
  for spec in "gateway/pgwire:startup frontend backend" "gateway/sftp/codec:requests" "gateway/sql:classify"; do
    dir="$ROOT/${spec%%:*}"
    (cd "$dir" && CARGO_TARGET_DIR="$ftarget" cargo fuzz build -O) || return 1
    for t in ${spec#*:}; do
      work="$(mktemp -d)"
      cp "$dir/fuzz/corpus/$t/"* "$work/"
      echo "fuzz $t for ${secs}s"
      (cd "$dir" && CARGO_TARGET_DIR="$ftarget" cargo fuzz run -O "$t" "$work" -- \
          -max_total_time="$secs" -print_final_stats=1 2>&1 | grep -E 'Done|ERROR|panicked|SUMMARY|stat::number_of_executed_units') \
        || { rm -rf "$work"; return 1; }
      # A crash leaves an artifact and a non-zero exit; grep above only filters the output.
      if ls "$dir/fuzz/artifacts/$t/" 2>/dev/null | grep -q .; then
        echo "fuzz $t: crash artifacts in $dir/fuzz/artifacts/$t" >&2
        rm -rf "$work"; return 1
      fi
      rm -rf "$work"
    done
  done
}

# ---------------------------------------------------------------------------------------
# End-to-end
# ---------------------------------------------------------------------------------------
e2e() {
  export GATEHOUSE_BIN="$CARGO_TARGET_DIR/debug/gatehouse"
  if [ ! -x "$GATEHOUSE_BIN" ]; then
    echo "gatehouse binary missing at $GATEHOUSE_BIN" >&2
    return 1
  fi
  export PG_BIN
  PG_BIN="$(pg_bindir)"
  local log="$GATEHOUSE_CACHE/e2e-pytest.log" rc=0
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/e2e "${PYTEST_ARGS[@]}" </dev/null 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  PYTEST_LAST_LINE="$(grep -E '(passed|failed|error|no tests ran)' "$log" | tail -n1)"
  # pytest exit 5 = no tests collected: that is a failure here, not a pass.
  return "$rc"
}

# ---------------------------------------------------------------------------------------
# The appliance: release-binary hardening, image build (cached), boot test under QEMU
# ---------------------------------------------------------------------------------------
release_hardening() {
  cargo build --release --locked -p gatehouse || return 1
  image/check-hardening.sh "$CARGO_TARGET_DIR/release/gatehouse"
}

image_build() {
  GATEHOUSE_RELEASE_BIN="$CARGO_TARGET_DIR/release/gatehouse" image/build.sh
}

OELINT_VENV="$GATEHOUSE_CACHE/oelint-venv"

yocto_lint() {
  python3 yocto/update-crates.py --check || return 1
  local req="$ROOT/yocto/requirements-lint.txt" want
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  if [ "$(cat "$OELINT_VENV/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
    rm -rf "$OELINT_VENV"
    python3 -m venv "$OELINT_VENV" && "$OELINT_VENV/bin/python" -m pip install -q -r "$req" </dev/null \
      || return 1
    echo "$want" >"$OELINT_VENV/.requirements.sha256"
  fi
  local files
  mapfile -t files < <(find yocto/meta-gatehouse -name '*.bb' -o -name '*.bbappend' -o -name '*.conf' -o -name '*.inc' | sort)
  # homepageping needs the network; info-level findings are suggestions. Any other finding fails.
  "$OELINT_VENV/bin/oelint-adv" --quiet --release scarthgap --hide info --suppress oelint.vars.homepageping "${files[@]}" \
    && echo "oelint-adv: ${#files[@]} files, no findings"
}

image_boot() {
  export PG_BIN
  PG_BIN="$(pg_bindir)"
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/image </dev/null
}

# ---------------------------------------------------------------------------------------
echo "Gatehouse test suite: $ROOT"
echo "CARGO_TARGET_DIR=$CARGO_TARGET_DIR  GATEHOUSE_CACHE=$GATEHOUSE_CACHE  CI=${CI:-}"

SETUP_OK=1
run_section "setup: system packages" install_system_packages || SETUP_OK=0
run_section "setup: python venv (tests/requirements.txt)" setup_venv || SETUP_OK=0
run_section "setup: npm ci (tests/oidc)" setup_node || SETUP_OK=0

if [ "$E2E_ONLY" -eq 0 ]; then
  run_section "cargo fmt --check" cargo_fmt
  run_section "cargo clippy -D warnings" cargo_clippy
fi
BUILD_OK=1
run_section "cargo build" cargo_build || BUILD_OK=0
if [ "$E2E_ONLY" -eq 0 ]; then
  if [ "$BUILD_OK" -eq 1 ]; then
    run_section "cargo test" cargo_tests
    run_section "fuzz: pgwire, sftp codec and sql classifier targets (short)" fuzz_smoke
  else
    skip_section "cargo test" "build failed"
  fi
fi
if [ "$BUILD_OK" -eq 1 ] && [ "$SETUP_OK" -eq 1 ]; then
  run_section "e2e: pytest tests/e2e" e2e
else
  skip_section "e2e: pytest tests/e2e" "build or setup failed"
  FAILED=1
fi

if [ "$E2E_ONLY" -eq 0 ]; then
  run_section "yocto: oelint-adv meta-gatehouse, crates in step with Cargo.lock" yocto_lint
  if [ "$SETUP_OK" -eq 1 ] && run_section "release binary: hardening (PIE, RELRO, NX, canary, no RPATH)" release_hardening \
     && run_section "image: build (image/build.sh, cached)" image_build; then
    run_section "image: boot test under QEMU + swtpm (tests/image)" image_boot
  else
    skip_section "image: boot test under QEMU + swtpm (tests/image)" "hardening, image build or setup failed"
    FAILED=1
  fi
fi

section "summary ($((SECONDS - SUITE_START))s)"
for line in "${SUMMARY[@]}"; do echo "$line"; done
if [ "$FAILED" -ne 0 ]; then RESULT="RESULT: FAILED"; else RESULT="RESULT: OK"; fi
echo "$RESULT"
# The test runner's own closing line comes last.
if [ -n "$PYTEST_LAST_LINE" ]; then
  echo "$PYTEST_LAST_LINE"
fi
[ "$FAILED" -eq 0 ]
