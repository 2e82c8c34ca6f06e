#!/usr/bin/env bash
# Side-by-side PostgreSQL benchmark: direct vs pgbouncer (session mode) vs Gatehouse.
#
# Usage: bench/pg-compare.sh [--quick] [--targets LIST] [--workloads LIST] [--duration SECONDS] [--rounds N] [--no-bulk] [--keep]
#
#   --quick            5 s per measured run instead of 20 s (1 s warm-ups)
#   --targets LIST     comma-separated subset of: direct,pgbouncer,bare-relay,gatehouse,gatehouse+tls,
#                      gatehouse+mask,gatehouse+policy (default: all). bare-relay is a reference point, not
#                      a product: a plain tokio TCP relay (gateway/gatehouse/examples/bare_relay.rs) with
#                      no protocol, identity or audit, the floor any tokio proxy pays on this machine. gatehouse masks vaulted credentials only (always on);
#                      gatehouse+policy goes to a second connection tagged environment=production, where
#                      the example policy's presets and rules apply (every statement parsed and judged);
#                      gatehouse+mask is the same gateway with every masking detector on (a masking
#                      profile selected by the token's group). Gatehouse is only built/started if a
#                      gatehouse target is listed.
#   --workloads LIST   comma-separated subset of: select-simple,select-extended,select-prepared,tpcb-simple
#                      (default: all; "none" runs only the bulk fetch)
#   --duration N       seconds per measured pgbench run (overrides --quick)
#   --rounds N         measure every target N times per workload, interleaved round by round;
#                      the report shows medians and each target's per-round ratio to pgbouncer
#                      (min-max), since on a shared machine single runs swing by 10-20%
#   --no-bulk          skip the 1,000,000-row bulk-fetch measurements
#   --pin              pin PostgreSQL and pgbench to CPU 0 and every proxy to CPU 1 (taskset), as
#                      on the appliance, where the gateway has CPUs of its own; a supplement to the
#                      default run (everything sharing all CPUs), not a replacement for it
#   --keep             keep the temporary directory (logs, pgbench logs) for inspection
#
# Environment: GATEHOUSE_BIN (use this binary, skip the build), CARGO_TARGET_DIR (default
# ~/.cache/gatehouse/target), BENCH_SCALE (pgbench scale, default 10), BENCH_CLIENTS (default 8),
# BENCH_JOBS (default 2), BENCH_GH_EXTRA_TOML (appended to the gatehouse config),
# BENCH_GH_WORKER_THREADS (gateway.worker_threads; default: one per CPU).
#
# Everything (PostgreSQL, pgbouncer, gatehouse) runs on 127.0.0.1 on free ports, in a temp dir,
# and is torn down on exit, also on failure or Ctrl-C. Results: stdout and bench/results/latest.md.
set -euo pipefail

ORIG_CMD="$0${*:+ $*}"
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"

QUICK=0
TARGETS_ARG="direct,pgbouncer,bare-relay,gatehouse,gatehouse+tls,gatehouse+mask,gatehouse+policy"
WORKLOADS_ARG="all"
DURATION=""
ROUNDS=1
DO_BULK=1
KEEP=0
PIN=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --targets) TARGETS_ARG="${2:?--targets needs a value}"; shift ;;
        --targets=*) TARGETS_ARG="${1#*=}" ;;
        --workloads) WORKLOADS_ARG="${2:?--workloads needs a value}"; shift ;;
        --workloads=*) WORKLOADS_ARG="${1#*=}" ;;
        --duration) DURATION="${2:?--duration needs a value}"; shift ;;
        --duration=*) DURATION="${1#*=}" ;;
        --rounds) ROUNDS="${2:?--rounds needs a value}"; shift ;;
        --rounds=*) ROUNDS="${1#*=}" ;;
        --no-bulk) DO_BULK=0 ;;
        --keep) KEEP=1 ;;
        --pin) PIN=1 ;;
        -h|--help) sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "pg-compare: unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

if [[ -z "$DURATION" ]]; then
    if [[ $QUICK == 1 ]]; then DURATION=5; else DURATION=20; fi
fi
[[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -gt 0 ]] || { echo "pg-compare: bad --duration: $DURATION" >&2; exit 2; }
[[ "$ROUNDS" =~ ^[0-9]+$ && "$ROUNDS" -gt 0 ]] || { echo "pg-compare: bad --rounds: $ROUNDS" >&2; exit 2; }
if [[ $QUICK == 1 || $DURATION -lt 10 ]]; then WARMUP=1; else WARMUP=3; fi
SCALE="${BENCH_SCALE:-10}"
CLIENTS="${BENCH_CLIENTS:-8}"
JOBS="${BENCH_JOBS:-2}"
BULK_ROWS=1000000
BULK_REPEAT=3

ALL_TARGETS=(direct pgbouncer bare-relay gatehouse gatehouse+tls gatehouse+mask gatehouse+policy)
TARGETS=()
IFS=',' read -r -a _req <<<"$TARGETS_ARG"
for t in "${ALL_TARGETS[@]}"; do            # canonical order, so interleaving is stable
    for r in "${_req[@]}"; do [[ "$r" == "$t" ]] && TARGETS+=("$t") && break; done
done
for r in "${_req[@]}"; do
    [[ " ${ALL_TARGETS[*]} " == *" $r "* ]] || { echo "pg-compare: unknown target '$r' (known: ${ALL_TARGETS[*]})" >&2; exit 2; }
done
[[ ${#TARGETS[@]} -gt 0 ]] || { echo "pg-compare: no targets" >&2; exit 2; }
has_target() { [[ " ${TARGETS[*]} " == *" $1 "* ]]; }
NEED_GH=0; { has_target gatehouse || has_target gatehouse+tls || has_target gatehouse+mask || has_target gatehouse+policy; } && NEED_GH=1

# workload name -> pgbench arguments
ALL_WORKLOADS=(select-simple select-extended select-prepared tpcb-simple)
WORKLOADS=()
if [[ "$WORKLOADS_ARG" == all ]]; then
    WORKLOADS=("${ALL_WORKLOADS[@]}")
elif [[ "$WORKLOADS_ARG" != none ]]; then
    IFS=',' read -r -a _req <<<"$WORKLOADS_ARG"
    for r in "${_req[@]}"; do
        [[ " ${ALL_WORKLOADS[*]} " == *" $r "* ]] || { echo "pg-compare: unknown workload '$r' (known: ${ALL_WORKLOADS[*]})" >&2; exit 2; }
        WORKLOADS+=("$r")
    done
fi
declare -A WL_ARGS=(
    [select-simple]="-S -M simple"
    [select-extended]="-S -M extended"
    [select-prepared]="-S -M prepared"
    [tpcb-simple]="-M simple"
)

log() { printf '[pg-compare %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in python3 psql pgbench; do command -v "$tool" >/dev/null || die "$tool not found"; done

# --------------------------------------------------------------------------------------------
# temp dir + cleanup
# --------------------------------------------------------------------------------------------
TMP="$(mktemp -d /tmp/gatehouse-pg-compare.XXXXXX)"
chmod 711 "$TMP"
PG_BIN=""
PGDATA_DIR="$TMP/pg/data"
PG_STARTED=0
BOUNCER_PID=""
GH_PID=""
RELAY_PID=""
declare -A T_PORT T_PASS T_SSL T_PID T_DB

stop_pid() { # pid name
    local pid="$1" name="$2"
    [[ -n "$pid" ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) did not exit on SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    stop_pid "$GH_PID" gatehouse
    stop_pid "$RELAY_PID" bare-relay
    stop_pid "$BOUNCER_PID" pgbouncer
    if [[ $PG_STARTED == 1 ]]; then
        as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 30 stop >/dev/null 2>&1 \
            || as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m immediate stop >/dev/null 2>&1
    fi
    if [[ $rc -ne 0 ]]; then
        for f in "$TMP/pg/log" "$TMP/bouncer/log" "$TMP/gatehouse/serve.log"; do
            [[ -s "$f" ]] && { log "--- last lines of $f ---"; tail -n 15 "$f" >&2; }
        done
    fi
    if [[ $KEEP == 1 ]]; then log "kept temp dir $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Run as an unprivileged user when we are root (postgres and pgbouncer refuse to run as root).
if [[ $(id -u) == 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user to run the server as"
    PG_USER=postgres
    BOUNCER_USER=nobody
    as_pg()      { setpriv --reuid="$PG_USER" --regid="$(id -g "$PG_USER")" --clear-groups -- "$@"; }
    # an array, not a function: a backgrounded function runs in a forked subshell, so "$!" would not be
    # the server's pid; a backgrounded simple command is exec'd, and setpriv execs too
    AS_BOUNCER=(setpriv --reuid="$BOUNCER_USER" --regid="$(id -g "$BOUNCER_USER")" --clear-groups --)
else
    PG_USER="$(id -un)"; BOUNCER_USER="$PG_USER"
    as_pg()      { "$@"; }
    AS_BOUNCER=(env)
fi

free_ports() { # n -> n distinct free loopback ports
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks: s.close()
PY
}
audit_seq() { # sqlite path -> highest audit record id ("-" if unreadable)
    python3 - "$1" <<'PY' 2>/dev/null || echo -
import sqlite3, sys
c = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True, timeout=5)
print(c.execute("SELECT coalesce(max(rowid), 0) FROM records").fetchone()[0])
PY
}
randpw() { python3 -c 'import secrets; print(secrets.token_hex(16))'; }

proc_ticks() { # pid -> utime+stime (clock ticks, all threads incl. exited ones)
    local stat
    stat="$(cat "/proc/$1/stat")" || return 1
    stat="${stat##*) }"              # drop "pid (comm) "; field 3 (state) is now $1
    # shellcheck disable=SC2086
    set -- $stat
    echo $(( ${12} + ${13} ))        # utime = field 14, stime = field 15
}
CLK_TCK="$(getconf CLK_TCK)"

read -r PG_PORT BOUNCER_PORT GH_PORT GH_TLS_PORT RELAY_PORT < <(free_ports 5)
PG_SUPER_PW="$(randpw)"
BENCH_PW="$(randpw)"
DB=bench

# libpq connection helpers -------------------------------------------------------------------
# run_as_target TARGET cmd... : runs cmd with PGHOST/PGPORT/PGUSER/PGDATABASE/PGPASSWORD/PGSSLMODE set
# With --pin, pgbench runs through $ON_DB_CPU (taskset to CPU 0) and every proxy is started
# through $ON_PROXY_CPU (CPU 1), so it sizes itself to the one CPU it has (tokio's runtime
# counts the CPUs it may run on), as it would on a machine of its own.
ON_DB_CPU=()
ON_PROXY_CPU=()
check_pinned() { # pid: the process must be on CPU 1 only (taskset execs, so $! is the proxy)
    [[ $PIN == 1 ]] || return 0
    [[ "$(taskset -p "$1" | awk '{print $NF}')" == 2 ]] || die "pid $1 is not pinned to CPU 1"
}
run_as_target() {
    local t="$1"; shift
    PGHOST=127.0.0.1 PGPORT="${T_PORT[$t]}" PGUSER=bench PGDATABASE="${T_DB[$t]:-$DB}" \
        PGPASSWORD="${T_PASS[$t]}" PGSSLMODE="${T_SSL[$t]}" PGCONNECT_TIMEOUT=10 "${ON_DB_CPU[@]}" "$@"
}
psql_super() {
    PGHOST=127.0.0.1 PGPORT="$PG_PORT" PGUSER=postgres PGDATABASE=postgres PGPASSWORD="$PG_SUPER_PW" \
        PGSSLMODE=disable psql -X -q -v ON_ERROR_STOP=1 "$@"
}
wait_ready() { # target timeout_s
    local t="$1" deadline=$(( SECONDS + $2 )) err
    while true; do
        if err="$(run_as_target "$t" psql -X -qAt -c 'select 1' 2>&1)"; then return 0; fi
        if [[ $SECONDS -ge $deadline ]]; then log "$t not ready: $err"; return 1; fi
        sleep 0.3
    done
}

# --------------------------------------------------------------------------------------------
# 1. gatehouse binary
# --------------------------------------------------------------------------------------------
GH_VERSION="-"
if [[ $NEED_GH == 1 ]]; then
    if [[ -n "${GATEHOUSE_BIN:-}" ]]; then
        log "using GATEHOUSE_BIN=$GATEHOUSE_BIN"
    else
        export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gatehouse/target}"
        log "building gatehouse (cargo build --release -p gatehouse, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
        (cd "$REPO" && cargo build --release -p gatehouse) || die "cargo build failed"
        GATEHOUSE_BIN="$CARGO_TARGET_DIR/release/gatehouse"
    fi
    [[ -x "$GATEHOUSE_BIN" ]] || die "gatehouse binary not found/executable: $GATEHOUSE_BIN"
    GH_VERSION="$("$GATEHOUSE_BIN" --version 2>/dev/null | head -n1 || true)"
    [[ -n "$GH_VERSION" ]] || GH_VERSION="(no --version output)"
fi

# --------------------------------------------------------------------------------------------
# 2. PostgreSQL
# --------------------------------------------------------------------------------------------
PG_BIN="$(printf "%s\n" /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
[[ -n "$PG_BIN" && -x "$PG_BIN/postgres" ]] || die "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"
PG_VERSION="$("$PG_BIN/postgres" --version)"
log "PostgreSQL: $PG_VERSION ($PG_BIN), port $PG_PORT"

mkdir -p "$TMP/pg"
printf '%s\n' "$PG_SUPER_PW" >"$TMP/pg/su.pw"
chown -R "$PG_USER" "$TMP/pg"
chmod 700 "$TMP/pg"
as_pg "$PG_BIN/initdb" -D "$PGDATA_DIR" -U postgres --pwfile="$TMP/pg/su.pw" \
    --auth=scram-sha-256 -E UTF8 --no-locale >"$TMP/initdb.log" 2>&1 \
    || { cat "$TMP/initdb.log" >&2; die "initdb failed"; }
rm -f "$TMP/pg/su.pw"
cat >>"$PGDATA_DIR/postgresql.conf" <<EOF

# --- gatehouse bench/pg-compare.sh ---
listen_addresses = '127.0.0.1'
port = $PG_PORT
max_connections = 100
unix_socket_directories = ''
password_encryption = 'scram-sha-256'
shared_buffers = '256MB'
EOF
if [[ $PIN == 1 ]]; then
    command -v taskset >/dev/null || die "--pin needs taskset (util-linux)"
    [[ $(nproc) -ge 2 ]] || die "--pin needs at least 2 CPUs"
    ON_DB_CPU=(taskset -c 0)
    ON_PROXY_CPU=(taskset -c 1)
    log "pinned: PostgreSQL and pgbench to CPU 0, proxies to CPU 1"
fi
# With --pin every PostgreSQL process (postmaster, backends, workers) inherits CPU 0.
as_pg "${ON_DB_CPU[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$TMP/pg/log" -w -t 60 start >/dev/null \
    || die "PostgreSQL did not start"
PG_STARTED=1

psql_super -c "CREATE ROLE bench LOGIN PASSWORD '$BENCH_PW'" -c "CREATE DATABASE $DB OWNER bench" >/dev/null
T_PORT[direct]=$PG_PORT; T_PASS[direct]=$BENCH_PW; T_SSL[direct]=disable; T_PID[direct]=""
wait_ready direct 10 || die "cannot log in to PostgreSQL as bench"

log "pgbench -i -s $SCALE"
run_as_target direct pgbench -i -s "$SCALE" -q >"$TMP/pgbench-init.log" 2>&1 \
    || { cat "$TMP/pgbench-init.log" >&2; die "pgbench -i failed"; }
run_as_target direct psql -X -q -v ON_ERROR_STOP=1 -c "VACUUM ANALYZE pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history" >/dev/null

if [[ $DO_BULK == 1 ]]; then
    log "creating bulk table t ($BULK_ROWS rows)"
    run_as_target direct psql -X -q -v ON_ERROR_STOP=1 >/dev/null <<SQL
CREATE TABLE t AS
SELECT g AS id,
       (g::bigint * 7919) % 1000003 AS n,
       'customer number ' || g AS name,
       'customer' || g || '@example.com' AS email,
       '+1 415 555 ' || lpad((g % 10000)::text, 4, '0') AS phone,
       CASE WHEN g % 3 = 0 THEN (ARRAY['4111 1111 1111 1111', '5555 5555 5555 4444', '3782 822463 10005',
            '6011 1111 1111 1117', '4012888888881881'])[g % 5 + 1] END AS card,
       lpad(((g % 665) + 1)::text, 3, '0') || '-' || lpad(((g % 98) + 1)::text, 2, '0') || '-'
           || lpad(((g % 9998) + 1)::text, 4, '0') AS ssn,
       CASE WHEN g % 7 = 0 THEN (ARRAY['DE89 3704 0044 0532 0130 00', 'GB82 WEST 1234 5698 7654 32'])[g % 2 + 1] END AS iban,
       'lorem ipsum dolor sit amet consectetur adipiscing ' || (g % 97) AS note,
       date '2020-01-01' + (g % 2000) AS day
FROM generate_series(1, $BULK_ROWS) AS g;
VACUUM ANALYZE t;
SQL
fi

# --------------------------------------------------------------------------------------------
# 3. pgbouncer (session mode, SCRAM both sides)
# --------------------------------------------------------------------------------------------
BOUNCER_VERSION="-"
if has_target pgbouncer; then
    if ! command -v pgbouncer >/dev/null 2>&1 && [[ ! -x /usr/sbin/pgbouncer ]]; then
        [[ $(id -u) == 0 ]] || die "pgbouncer is not installed (apt-get install pgbouncer)"
        log "installing pgbouncer with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer >"$TMP/apt.log" 2>&1 \
            || { apt-get update -q >>"$TMP/apt.log" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer >>"$TMP/apt.log" 2>&1; } \
            || { tail "$TMP/apt.log" >&2; die "apt-get install pgbouncer failed"; }
    fi
    PGBOUNCER="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
    BOUNCER_VERSION="$("$PGBOUNCER" --version | head -n1)"
    mkdir -p "$TMP/bouncer"
    printf '"bench" "%s"\n' "$BENCH_PW" >"$TMP/bouncer/userlist.txt"
    cat >"$TMP/bouncer/pgbouncer.ini" <<EOF
[databases]
$DB = host=127.0.0.1 port=$PG_PORT dbname=$DB

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $TMP/bouncer/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 40
log_connections = 0
log_disconnections = 0
ignore_startup_parameters = extra_float_digits
EOF
    chown -R "$BOUNCER_USER" "$TMP/bouncer"
    chmod 700 "$TMP/bouncer"
    log "pgbouncer: $BOUNCER_VERSION, port $BOUNCER_PORT, as $BOUNCER_USER"
    "${ON_PROXY_CPU[@]}" "${AS_BOUNCER[@]}" "$PGBOUNCER" "$TMP/bouncer/pgbouncer.ini" >"$TMP/bouncer/log" 2>&1 &
    BOUNCER_PID=$!
    T_PORT[pgbouncer]=$BOUNCER_PORT; T_PASS[pgbouncer]=$BENCH_PW; T_SSL[pgbouncer]=disable
    T_PID[pgbouncer]=$BOUNCER_PID
    check_pinned "$BOUNCER_PID"
    wait_ready pgbouncer 15 || die "pgbouncer not usable"
    [[ "$(cat /proc/$BOUNCER_PID/comm)" == pgbouncer ]] || die "pid $BOUNCER_PID is not pgbouncer"
fi

# --------------------------------------------------------------------------------------------
# 3b. bare tokio relay (reference point)
# --------------------------------------------------------------------------------------------
if has_target bare-relay; then
    if [[ -n "${BARE_RELAY_BIN:-}" ]]; then
        log "using BARE_RELAY_BIN=$BARE_RELAY_BIN"
    else
        export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gatehouse/target}"
        log "building the bare relay (cargo build --release -p gatehouse --example bare_relay)"
        (cd "$REPO" && cargo build --release -q -p gatehouse --example bare_relay) || die "cargo build (bare_relay) failed"
        BARE_RELAY_BIN="$CARGO_TARGET_DIR/release/examples/bare_relay"
    fi
    "${ON_PROXY_CPU[@]}" "$BARE_RELAY_BIN" "127.0.0.1:$RELAY_PORT" "127.0.0.1:$PG_PORT" >"$TMP/bare-relay.log" 2>&1 &
    RELAY_PID=$!
    T_PORT[bare-relay]=$RELAY_PORT; T_PASS[bare-relay]=$BENCH_PW; T_SSL[bare-relay]=disable
    T_PID[bare-relay]=$RELAY_PID
    check_pinned "$RELAY_PID"
    wait_ready bare-relay 15 || die "bare relay not usable"
fi

# --------------------------------------------------------------------------------------------
# 4. gatehouse
# --------------------------------------------------------------------------------------------
if [[ $NEED_GH == 1 ]]; then
    GH_DIR="$TMP/gatehouse"
    GH_AUDIT_DB="$GH_DIR/data/audit.db"
    GH_CFG="$GH_DIR/gatehouse.toml"
    mkdir -p "$GH_DIR/data"
    chmod 700 "$GH_DIR" "$GH_DIR/data"
    {
        cat <<EOF
[gateway]
name = "bench"
data_dir = "$GH_DIR/data"
${BENCH_GH_WORKER_THREADS:+worker_threads = $BENCH_GH_WORKER_THREADS}

[[listeners]]
name = "bench-plain"
protocol = "postgres"
bind = "127.0.0.1:$GH_PORT"
dangerous_allow_plaintext_on_loopback = true
EOF
        if has_target gatehouse+tls; then cat <<EOF

[[listeners]]
name = "bench-tls"
protocol = "postgres"
bind = "127.0.0.1:$GH_TLS_PORT"
EOF
        fi
        cat <<EOF

[identity.dev_issuer]
enabled = true

[policy]
path = "$BENCH_DIR/policy.toml"

# gatehouse+mask: the same gateway, a token in group "masked" selects full masking (every
# detector on); plain "gatehouse" masks vaulted credentials only (always on).
[[masking_profiles]]
name = "bench-full"
groups = ["masked"]
[masking_profiles.masking]
EOF
        # Extra gatehouse config for experiments (e.g. an [audit] table).
        if [[ -n "${BENCH_GH_EXTRA_TOML:-}" ]]; then printf '\n%s\n' "$BENCH_GH_EXTRA_TOML"; fi
    } >"$GH_CFG"
    CONN_ENTRY="
[[connections]]
name = \"bench\"
kind = \"postgres\"
host = \"127.0.0.1\"
port = $PG_PORT
database = \"$DB\"
tls = \"disable\""
    gh_connection_add() {
        printf '%s\n' "$BENCH_PW" | "$GATEHOUSE_BIN" --config "$GH_CFG" connection add bench \
            --host 127.0.0.1 --port "$PG_PORT" --database "$DB" --user bench --tls disable \
            >>"$GH_DIR/connection-add.log" 2>&1
    }
    log "gatehouse: connection add bench (password on stdin)"
    if ! gh_connection_add; then
        # maybe the binary only stores the credential for a connection the config already names
        log "connection add without a [[connections]] entry failed; retrying with the entry in the config"
        printf '%s\n' "$CONN_ENTRY" >>"$GH_CFG"
        gh_connection_add || { cat "$GH_DIR/connection-add.log" >&2; die "gatehouse connection add failed"; }
    fi
    if ! grep -q '^\[\[connections\]\]' "$GH_CFG"; then
        # the binary stored only the credential: add the (secret-free) connection entry ourselves
        printf '%s\n' "$CONN_ENTRY" >>"$GH_CFG"
    fi
    # gatehouse+policy: the same database as a production-tagged connection (guardrails apply).
    printf '%s\n' "$BENCH_PW" | "$GATEHOUSE_BIN" --config "$GH_CFG" connection add bench_guarded \
        --host 127.0.0.1 --port "$PG_PORT" --database "$DB" --user bench --tls disable \
        --tag environment=production >>"$GH_DIR/connection-add.log" 2>&1 \
        || { cat "$GH_DIR/connection-add.log" >&2; die "gatehouse connection add bench_guarded failed"; }
    if grep -qF "$BENCH_PW" "$GH_CFG"; then die "gatehouse wrote the upstream password into the config file"; fi
    "$GATEHOUSE_BIN" --config "$GH_CFG" config check >"$GH_DIR/config-check.log" 2>&1 \
        || { cat "$GH_DIR/config-check.log" >&2; log "warning: 'gatehouse config check' failed (continuing)"; }
    "$GATEHOUSE_BIN" --config "$GH_CFG" token --user bench --ttl-seconds 7200 >"$GH_DIR/token.out" 2>"$GH_DIR/token.err" \
        || { cat "$GH_DIR/token.err" >&2; die "gatehouse token failed"; }
    # the JWT (header.payload.signature) in the output; else the last non-empty line
    GH_TOKEN="$(grep -oE 'eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+' "$GH_DIR/token.out" | tail -n1 || true)"
    [[ -n "$GH_TOKEN" ]] || GH_TOKEN="$(tr -d '\r' <"$GH_DIR/token.out" | awk 'NF { last = $0 } END { print last }')"
    GH_TOKEN="${GH_TOKEN//[[:space:]]/}"
    [[ -n "$GH_TOKEN" ]] || { cat "$GH_DIR/token.err" >&2; die "gatehouse token printed nothing"; }
    GH_MASK_TOKEN="$("$GATEHOUSE_BIN" --config "$GH_CFG" token --user bench --groups masked --ttl-seconds 7200 2>>"$GH_DIR/token.err" \
        | grep -oE 'eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+' | tail -n1)"
    [[ -n "$GH_MASK_TOKEN" ]] || die "gatehouse token --groups masked printed nothing"
    log "gatehouse: $GH_VERSION, serve on port $GH_PORT$(has_target gatehouse+tls && echo " (tls $GH_TLS_PORT)" || true)"
    "${ON_PROXY_CPU[@]}" "$GATEHOUSE_BIN" --config "$GH_CFG" serve >"$GH_DIR/serve.log" 2>&1 &
    GH_PID=$!
    check_pinned "$GH_PID"
    T_PORT[gatehouse]=$GH_PORT; T_PASS[gatehouse]=$GH_TOKEN; T_SSL[gatehouse]=disable; T_PID[gatehouse]=$GH_PID
    T_PORT[gatehouse+tls]=$GH_TLS_PORT; T_PASS[gatehouse+tls]=$GH_TOKEN; T_SSL[gatehouse+tls]=require
    T_PID[gatehouse+tls]=$GH_PID
    T_PORT[gatehouse+mask]=$GH_PORT; T_PASS[gatehouse+mask]=$GH_MASK_TOKEN; T_SSL[gatehouse+mask]=disable
    T_PID[gatehouse+mask]=$GH_PID
    T_PORT[gatehouse+policy]=$GH_PORT; T_PASS[gatehouse+policy]=$GH_TOKEN; T_SSL[gatehouse+policy]=disable
    T_PID[gatehouse+policy]=$GH_PID; T_DB[gatehouse+policy]=bench_guarded
    for t in gatehouse gatehouse+tls gatehouse+mask gatehouse+policy; do
        has_target "$t" || continue
        kill -0 "$GH_PID" 2>/dev/null || die "gatehouse serve exited"
        wait_ready "$t" 30 || die "gatehouse ($t) not usable"
    done
fi

# --------------------------------------------------------------------------------------------
# 5./6. pgbench runs, interleaved per workload
# --------------------------------------------------------------------------------------------
RESULTS="$TMP/results.tsv"      # target workload tps tx failed p50_us p99_us lat_avg_ms cpu_us_per_tx audit_rec_per_tx round
BULK_RESULTS="$TMP/bulk.tsv"    # target method bytes best_s
: >"$RESULTS"; : >"$BULK_RESULTS"
mkdir -p "$TMP/pgbench-logs"

percentiles() { # log-prefix -> "p50_us p99_us count"
    python3 - "$1" <<'PY'
import glob, sys
lat = []
for path in glob.glob(sys.argv[1] + ".*"):
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2].isdigit():   # skipped/failed transactions log "skipped"/"failed"
                lat.append(int(parts[2]))
if not lat:
    print("- - 0"); sys.exit(0)
lat.sort()
def pct(p):  # nearest-rank
    k = max(0, min(len(lat) - 1, int(-(-p * len(lat) // 100)) - 1))
    return lat[k]
print(pct(50), pct(99), len(lat))
PY
}

prepare_workload() { # workload -- reset state the TPC-B script writes to, flush dirty pages
    if [[ "$1" == tpcb-* ]]; then
        run_as_target direct psql -X -q -v ON_ERROR_STOP=1 \
            -c "TRUNCATE pgbench_history" -c "VACUUM ANALYZE pgbench_branches, pgbench_tellers" >/dev/null
        psql_super -c CHECKPOINT >/dev/null
    fi
}

TOTAL_RUNS=$(( ${#WORKLOADS[@]} * ${#TARGETS[@]} * ROUNDS ))
RUN_NO=0
for wl in "${WORKLOADS[@]}"; do
    read -r -a wl_args <<<"${WL_ARGS[$wl]}"
    for round in $(seq 1 "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
        RUN_NO=$((RUN_NO + 1))
        prepare_workload "$wl"
        # warm-up (not logged, not measured)
        run_as_target "$t" pgbench -n "${wl_args[@]}" -c "$CLIENTS" -j "$JOBS" -T "$WARMUP" \
            >"$TMP/pgbench-logs/$t-$wl.warmup.out" 2>&1 \
            || { cat "$TMP/pgbench-logs/$t-$wl.warmup.out" >&2; die "warm-up $t/$wl failed"; }
        prefix="$TMP/pgbench-logs/$t-$wl"
        pid="${T_PID[$t]}"
        before=""; [[ -n "$pid" ]] && before="$(proc_ticks "$pid")"
        audit_before="-"; [[ "$t" == gatehouse* ]] && audit_before="$(audit_seq "$GH_AUDIT_DB")"
        rc=0
        run_as_target "$t" pgbench -n "${wl_args[@]}" -c "$CLIENTS" -j "$JOBS" -T "$DURATION" \
            -l --log-prefix="$prefix" >"$prefix.out" 2>&1 || rc=$?
        after=""; [[ -n "$pid" ]] && after="$(proc_ticks "$pid")"
        audit_after="-"
        if [[ "$t" == gatehouse* && "$audit_before" != - ]]; then
            sleep 0.5   # let the gateway finish writing session-end records
            audit_after="$(audit_seq "$GH_AUDIT_DB")"
        fi
        if [[ $rc -ne 0 ]]; then cat "$prefix.out" >&2; die "pgbench $t/$wl failed (exit $rc)"; fi
        tps="$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$prefix.out" | head -n1)"
        tx="$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$prefix.out" | head -n1)"
        failed="$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$prefix.out" | head -n1)"
        lat_avg="$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$prefix.out" | head -n1)"
        [[ -n "$tps" && -n "$tx" ]] || { cat "$prefix.out" >&2; die "cannot parse pgbench output for $t/$wl"; }
        read -r p50 p99 nlogged < <(percentiles "$prefix")
        audit_per_tx="-"
        if [[ "$audit_before" != - && "$audit_after" != - && "$tx" -gt 0 ]]; then
            audit_per_tx="$(awk -v a="$audit_before" -v b="$audit_after" -v n="$tx" 'BEGIN { printf "%.2f", (b - a) / n }')"
        fi
        cpu="-"
        if [[ -n "$pid" && "$tx" -gt 0 ]]; then
            cpu="$(awk -v d=$(( after - before )) -v hz="$CLK_TCK" -v n="$tx" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')"
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$wl" "$tps" "$tx" "${failed:-0}" "$p50" "$p99" \
            "${lat_avg:--}" "$cpu" "$audit_per_tx" "$round" >>"$RESULTS"
        log "[$RUN_NO/$TOTAL_RUNS] $wl via $t: tps=$tps p50=${p50}us p99=${p99}us proxy cpu/tx=${cpu}us audit rec/tx=$audit_per_tx (logged $nlogged tx)"
        rm -f "$prefix".[0-9]*   # per-transaction logs can be large
    done
    done
done

# --------------------------------------------------------------------------------------------
# 7. bulk fetch
# --------------------------------------------------------------------------------------------
if [[ $DO_BULK == 1 ]]; then
    declare -A BULK_SQL=(
        [copy]="COPY (SELECT * FROM t) TO STDOUT"
        [select]="SELECT * FROM t"
    )
    declare -A BULK_FLAGS=([copy]="-q" [select]="-qAt")
    declare -A BULK_BYTES BULK_BEST
    for method in copy select; do
        read -r -a flags <<<"${BULK_FLAGS[$method]}"
        # untimed run per target: warm-up and byte count (through the target, so masking would show up)
        for t in "${TARGETS[@]}"; do
            BULK_BYTES[$t/$method]="$(run_as_target "$t" psql -X "${flags[@]}" -c "${BULK_SQL[$method]}" | wc -c)"
        done
        for _rep in $(seq 1 "$BULK_REPEAT"); do   # repetitions outermost: drift hits every target alike
            for t in "${TARGETS[@]}"; do
                start=$EPOCHREALTIME
                run_as_target "$t" psql -X "${flags[@]}" -c "${BULK_SQL[$method]}" >/dev/null
                end=$EPOCHREALTIME
                BULK_BEST[$t/$method]="$(awk -v s="$start" -v e="$end" -v b="${BULK_BEST[$t/$method]:-}" \
                    'BEGIN { d = e - s; if (b == "" || d < b) b = d; printf "%.4f", b }')"
            done
        done
        for t in "${TARGETS[@]}"; do
            printf '%s\t%s\t%s\t%s\n' "$t" "$method" "${BULK_BYTES[$t/$method]}" "${BULK_BEST[$t/$method]}" >>"$BULK_RESULTS"
            log "bulk $method via $t: ${BULK_BYTES[$t/$method]} bytes, best of $BULK_REPEAT ${BULK_BEST[$t/$method]} s"
        done
    done
fi

# --------------------------------------------------------------------------------------------
# 8. report
# --------------------------------------------------------------------------------------------
GIT_REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no commit')"
GIT_DIRTY="$(git -C "$REPO" status --porcelain 2>/dev/null | wc -l | tr -d ' ')"
GH_AUDIT_INFO="-"
if [[ $NEED_GH == 1 && -f "$GH_AUDIT_DB" ]]; then
    GH_AUDIT_INFO="$(audit_seq "$GH_AUDIT_DB") records, $(( $(cat "$GH_AUDIT_DB" "$GH_AUDIT_DB"-wal 2>/dev/null | wc -c) / 1000000 )) MB (db + wal)"
fi
CPU_MODEL="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
mkdir -p "$BENCH_DIR/results"
REPORT="$BENCH_DIR/results/latest.md"
python3 - "$RESULTS" "$BULK_RESULTS" >"$TMP/report.md" <<PY
import sys, csv
rows = [r for r in csv.reader(open(sys.argv[1]), delimiter="\t")]
bulk = [r for r in csv.reader(open(sys.argv[2]), delimiter="\t")]
print("# Gatehouse PostgreSQL side-by-side benchmark")
print()
print("- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')")
print("- machine: $(nproc) CPUs, ${CPU_MODEL}, $(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 )) MiB RAM, load average at end: $(cut -d' ' -f1-3 /proc/loadavg)")
print("- postgres: ${PG_VERSION}; pgbouncer: ${BOUNCER_VERSION} (session mode, SCRAM); pgbench: $(pgbench --version)")
print("- gatehouse: ${GH_VERSION}, git rev ${GIT_REV} (${GIT_DIRTY} uncommitted/untracked paths); worker_threads: ${BENCH_GH_WORKER_THREADS:-one per CPU}")
print("- command: \`${ORIG_CMD}\`")
print("- pgbench: scale ${SCALE}, -c ${CLIENTS} -j ${JOBS} -T ${DURATION} (warm-up ${WARMUP} s per run), targets interleaved per workload, ${ROUNDS} round(s); all processes on 127.0.0.1 $( [[ $PIN == 1 ]] && echo "pinned (--pin): PostgreSQL and pgbench on CPU 0, each proxy on CPU 1" || echo "sharing the same CPUs" )")
if ${ROUNDS} > 1:
    print("- with several rounds: TPS, latencies and CPU are medians over the rounds; 'vs pgbouncer' is the median of the per-round ratios (each target against pgbouncer in the same round), 'per round' their range")
print("- latency percentiles from pgbench -l per-transaction logs; proxy CPU = utime+stime of the proxy process (all threads) over the measured run / transactions")
print()
print("- audit rec/tx: gatehouse audit records written during the measured run (incl. session start/end records) / transactions; this build writes a statement and a statement.result record per statement, so 2 for select-only and 14 for TPC-B (7 statements) mean every statement was recorded")
print("- gatehouse audit store at the end: ${GH_AUDIT_INFO}")
print()
import statistics
multi = ${ROUNDS} > 1
if rows:
  if multi:
    print("| target | workload | TPS | vs pgbouncer | per round | vs direct | p50 ms | p99 ms | proxy CPU µs/tx | audit rec/tx |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  else:
    print("| target | workload | TPS | vs pgbouncer | vs direct | p50 ms | p99 ms | proxy CPU µs/tx | audit rec/tx |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
runs = {}
for r in rows:
    runs.setdefault((r[0], r[1]), []).append(r)
by_round = {(r[0], r[1], r[10]): float(r[2]) for r in rows}
def med(vals):
    vals = [float(v) for v in vals if v not in ("-", "")]
    return statistics.median(vals) if vals else None
def ratio(a, b):
    return "%.2f" % (a / b) if b else "-"
def ms(us):
    return "%.3f" % (us / 1000) if us is not None else "-"
def num(v, fmt):
    return fmt % v if v is not None else "-"
order = []
for r in rows:
    if r[1] not in order: order.append(r[1])
for wl in order:
    seen = []
    for r in rows:
        if r[1] == wl and r[0] not in seen: seen.append(r[0])
    for t in seen:
        rs = runs[(t, wl)]
        v = med([r[2] for r in rs])
        def vs(other):
            per = [by_round[(t, wl, r[10])] / by_round[(other, wl, r[10])] for r in rs if (other, wl, r[10]) in by_round]
            return per
        pb, pd = vs("pgbouncer"), vs("direct")
        vb = "%.2f" % statistics.median(pb) if pb else "-"
        vd = "%.2f" % statistics.median(pd) if pd else "-"
        failed = sum(int(r[4]) for r in rs if r[4] not in ("", "-"))
        fail = "" if failed == 0 else " (%d failed)" % failed
        cols = [t, wl, "%.0f%s" % (v, fail), vb]
        if multi:
            cols.append("%.2f-%.2f" % (min(pb), max(pb)) if pb else "-")
        cols += [vd, ms(med([r[5] for r in rs])), ms(med([r[6] for r in rs])),
                 num(med([r[8] for r in rs]), "%.1f"), num(med([r[9] for r in rs]), "%.2f")]
        print("| " + " | ".join(cols) + " |")
if bulk:
    print()
    print("Bulk fetch of ${BULK_ROWS} rows (\`psql\` output to /dev/null, best of ${BULK_REPEAT}; MB = 10^6 bytes):")
    print()
    print("| target | method | bytes | best s | MB/s | vs direct |")
    print("|---|---|---:|---:|---:|---:|")
    direct = {r[1]: int(r[2]) / float(r[3]) for r in bulk if r[0] == "direct"}
    for r in bulk:
        rate = int(r[2]) / float(r[3])
        vd = ratio(rate, direct[r[1]]) if r[1] in direct else "-"
        label = {"copy": "COPY TO STDOUT", "select": "SELECT * (psql -At)"}[r[1]]
        print("| %s | %s | %s | %.3f | %.1f | %s |" % (r[0], label, r[2], float(r[3]), rate / 1e6, vd))
PY
cp "$TMP/report.md" "$REPORT"
echo
cat "$REPORT"
echo
log "written $REPORT"
