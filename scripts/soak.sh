#!/usr/bin/env bash
# Soak: the playground under steady load for SOAK_SECONDS (default 600), sampling the
# playground's RSS, open fds, the server's client backends and the error count every
# SOAK_SAMPLE seconds (default 10; 3 when SOAK_SECONDS <= 60). Fails (exit 1) when, over
# the last SOAK_WINDOW seconds (default: 480 of 600, or the last 2/3 of a short run),
# RSS grew by more than SOAK_MAX_RSS_PCT (5) percent or the fd count grew at all, or when
# any request failed (SOAK_MAX_ERRORS, default 0), or the playground died.
#
#   scripts/soak.sh                      # the 10-minute soak
#   SOAK_SECONDS=30 scripts/soak.sh      # the 30 s version (CI)
#
# Load: `wrk` (2 threads, SOAK_CONNS=64 keep-alive connections, GET SOAK_ROUTE=/) with a
# Lua hook that counts non-200 answers and bodies other than the expected one as it goes;
# without wrk (or with SOAK_LOADER=python), a Python keep-alive HTTP loop
# (scripts/soak_load.py) does the same, slower.
# The database: PGHOST/PGPORT/PGUSER/PGDATABASE if PGHOST is set, else a throwaway cluster
# made here (initdb in a temp dir, loopback only, removed on exit). The playground runs with
# REACTORS=2 and PG_POOL_SIZE=4 unless set. Samples go to $SOAK_OUT/samples.tsv (default
# target/soak/).
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_SECONDS=${SOAK_SECONDS:-600}
if [ -z "${SOAK_SAMPLE:-}" ]; then
    if [ "$SOAK_SECONDS" -le 60 ]; then SOAK_SAMPLE=3; else SOAK_SAMPLE=10; fi
fi
if [ -z "${SOAK_WINDOW:-}" ]; then
    if [ "$SOAK_SECONDS" -ge 600 ]; then
        SOAK_WINDOW=$((SOAK_SECONDS - 120))
    else
        SOAK_WINDOW=$((SOAK_SECONDS * 2 / 3))
    fi
fi
SOAK_MAX_RSS_PCT=${SOAK_MAX_RSS_PCT:-5}
SOAK_MAX_ERRORS=${SOAK_MAX_ERRORS:-0}
SOAK_CONNS=${SOAK_CONNS:-64}
SOAK_ROUTE=${SOAK_ROUTE:-/}
SOAK_EXPECT=${SOAK_EXPECT:-42}
SOAK_OUT=${SOAK_OUT:-target/soak}
export REACTORS=${REACTORS:-2}
export PG_POOL_SIZE=${PG_POOL_SIZE:-4}

say() { printf 'soak: %s\n' "$*" >&2; }
die() { say "FAIL: $*"; exit 1; }

mkdir -p "$SOAK_OUT"
SOAK_OUT=$(cd "$SOAK_OUT" && pwd)
rm -f "$SOAK_OUT"/wrk-* "$SOAK_OUT"/.tmp-wrk-* "$SOAK_OUT"/samples.tsv
WORK=$(mktemp -d /tmp/ioxide-soak.XXXXXX)
PIDS=()
PG_DATA=""
PG_CTL=""

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "$PG_DATA" ]; then
        as_pg "$PG_CTL" -D "$PG_DATA" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# ---- the database -----------------------------------------------------------------------
pg_bindir() {
    if [ -n "${PG_BIN:-}" ]; then echo "$PG_BIN"; return; fi
    if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; then
        pg_config --bindir; return
    fi
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}
BIN=$(pg_bindir)
[ -x "$BIN/psql" ] || die "PostgreSQL binaries not found (set PG_BIN)"
PG_CTL="$BIN/pg_ctl"

as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ -z "${PGHOST:-}" ]; then
    export PGHOST=127.0.0.1 PGPORT PGUSER=postgres PGDATABASE=postgres
    PGPORT=$(free_port)
    PG_DATA="$WORK/data"
    if [ "$(id -u)" = 0 ]; then chown postgres "$WORK"; fi
    as_pg "$BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 >"$WORK/initdb.log" 2>&1 ||
        { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
    as_pg "$PG_CTL" -D "$PG_DATA" -l "$WORK/pg.log" -w -t 60 start \
        -o "-p $PGPORT -k $WORK -c listen_addresses=127.0.0.1 -c max_connections=100 -c fsync=off -c synchronous_commit=off" \
        >/dev/null || { cat "$WORK/pg.log" >&2; die "postgres did not start"; }
    say "throwaway PostgreSQL at 127.0.0.1:$PGPORT"
fi
backends() {
    "$BIN/psql" -X -A -t -q -h "$PGHOST" -p "${PGPORT:-5432}" -U "${PGUSER:-postgres}" -d "${PGDATABASE:-postgres}" -c \
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()" 2>/dev/null ||
        echo "?"
}

# ---- the playground ---------------------------------------------------------------------
if [ -n "${SOAK_BIN:-}" ]; then
    PLAYGROUND=$SOAK_BIN
else
    say "building the playground (cargo build --release -p playground)"
    cargo build --release -q -p playground
    PLAYGROUND="${CARGO_TARGET_DIR:-target}/release/playground"
fi
[ -x "$PLAYGROUND" ] || die "no playground binary at $PLAYGROUND"

export PORT=${SOAK_PORT:-$(free_port)}
"$PLAYGROUND" >"$SOAK_OUT/playground.log" 2>&1 &
APP=$!
PIDS+=("$APP")
URL="http://127.0.0.1:$PORT"
for _ in $(seq 1 300); do
    if [ "$(curl -s -m 1 "$URL$SOAK_ROUTE" 2>/dev/null || true)" = "$SOAK_EXPECT" ]; then break; fi
    kill -0 "$APP" 2>/dev/null || { cat "$SOAK_OUT/playground.log" >&2; die "the playground exited"; }
    sleep 0.1
done
[ "$(curl -s -m 1 "$URL$SOAK_ROUTE" || true)" = "$SOAK_EXPECT" ] || die "the playground does not answer $SOAK_ROUTE with $SOAK_EXPECT"
say "playground pid $APP on :$PORT (REACTORS=$REACTORS PG_POOL_SIZE=$PG_POOL_SIZE)"

# ---- the load ---------------------------------------------------------------------------
# Runs a little past the sampling so the last sample is still under load.
LOAD_SECONDS=$((SOAK_SECONDS + 2))
if [ "${SOAK_LOADER:-wrk}" = wrk ] && command -v wrk >/dev/null; then
    LOADER=wrk
    wrk -t 2 -c "$SOAK_CONNS" -d "${LOAD_SECONDS}s" --timeout 5s --latency \
        -s scripts/soak_count.lua "$URL$SOAK_ROUTE" -- "$SOAK_OUT" "$SOAK_EXPECT" \
        >"$SOAK_OUT/load.log" 2>&1 &
else
    LOADER=python
    python3 scripts/soak_load.py "$URL$SOAK_ROUTE" "$LOAD_SECONDS" 8 "$SOAK_OUT" "$SOAK_EXPECT" \
        >"$SOAK_OUT/load.log" 2>&1 &
fi
LOAD=$!
PIDS+=("$LOAD")
say "load: $LOADER for ${SOAK_SECONDS}s, sampling every ${SOAK_SAMPLE}s, judging the last ${SOAK_WINDOW}s"

# ---- sampling ---------------------------------------------------------------------------
counts() { # "ok bad" summed over the load's per-thread counter files
    cat "$SOAK_OUT"/wrk-* 2>/dev/null | awk '{o += $1; b += $2} END {printf "%d %d\n", o, b}'
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$APP/status"; }
fds() { find "/proc/$APP/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

printf 't_s\trss_kb\tfds\tbackends\tok\terrors\n' >"$SOAK_OUT/samples.tsv"
START=$(date +%s)
T=0
while [ "$T" -le "$SOAK_SECONDS" ]; do
    kill -0 "$APP" 2>/dev/null || { tail -n 20 "$SOAK_OUT/playground.log" >&2; die "the playground died at ${T}s"; }
    read -r OK BAD < <(counts)
    LINE=$(printf '%s\t%s\t%s\t%s\t%s\t%s' "$T" "$(rss_kb)" "$(fds)" "$(backends)" "$OK" "$BAD")
    printf '%s\n' "$LINE" >>"$SOAK_OUT/samples.tsv"
    printf 'soak: t=%4ss rss=%s KiB fds=%s backends=%s ok=%s errors=%s\n' $LINE >&2
    NEXT=$((T + SOAK_SAMPLE))
    NOW=$(($(date +%s) - START))
    [ "$NEXT" -gt "$NOW" ] && sleep $((NEXT - NOW))
    T=$NEXT
done
wait "$LOAD" || true
read -r OK BAD < <(counts)
say "load finished: $(grep -E 'Requests/sec|Non-2xx|Socket errors|requests in' "$SOAK_OUT/load.log" | tr -s ' ' | paste -sd ';' -)"

# ---- the verdict ------------------------------------------------------------------------
# Baseline: the first sample at or after (duration - window); final: the last sample.
read -r BASE_T BASE_RSS BASE_FDS LAST_T LAST_RSS LAST_FDS LAST_BACKENDS MAX_BACKENDS < <(
    awk -v from=$((SOAK_SECONDS - SOAK_WINDOW)) -F'\t' 'NR > 1 {
        if (!have && $1 >= from) { bt = $1; br = $2; bf = $3; have = 1 }
        lt = $1; lr = $2; lf = $3; lb = $4
        if ($4 != "?" && $4 > mb) mb = $4
    } END { print bt, br, bf, lt, lr, lf, lb, mb + 0 }' "$SOAK_OUT/samples.tsv"
)
RSS_PCT=$(awk -v a="$BASE_RSS" -v b="$LAST_RSS" 'BEGIN { printf "%.2f", (b - a) * 100 / a }')
FD_GROWTH=$((LAST_FDS - BASE_FDS))
SOCKET_ERRORS=$(awk '/Socket errors/ { n = 0; for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) n += $i; print n }' "$SOAK_OUT/load.log")
SOCKET_ERRORS=${SOCKET_ERRORS:-0}
ERRORS=$((BAD + SOCKET_ERRORS))
say "window ${BASE_T}s..${LAST_T}s: RSS ${BASE_RSS} -> ${LAST_RSS} KiB (${RSS_PCT} %), fds ${BASE_FDS} -> ${LAST_FDS} (${FD_GROWTH}), backends ${LAST_BACKENDS} (max ${MAX_BACKENDS}); requests ok ${OK}, errors ${ERRORS} (bad answers ${BAD}, socket errors ${SOCKET_ERRORS})"

FAILED=0
if awk -v p="$RSS_PCT" -v m="$SOAK_MAX_RSS_PCT" 'BEGIN { exit !(p > m) }'; then
    say "FAIL: RSS grew ${RSS_PCT} % (> ${SOAK_MAX_RSS_PCT} %) over the last ${SOAK_WINDOW}s"
    FAILED=1
fi
if [ "$FD_GROWTH" -gt 0 ]; then
    say "FAIL: open fds grew by ${FD_GROWTH} over the last ${SOAK_WINDOW}s"
    FAILED=1
fi
if [ "$ERRORS" -gt "$SOAK_MAX_ERRORS" ]; then
    say "FAIL: ${ERRORS} failed requests (> ${SOAK_MAX_ERRORS})"
    FAILED=1
fi
if [ "$OK" -eq 0 ]; then
    say "FAIL: no request succeeded"
    FAILED=1
fi
EXPECTED_BACKENDS=$((REACTORS * PG_POOL_SIZE))
if [ "$MAX_BACKENDS" -gt "$EXPECTED_BACKENDS" ]; then
    say "FAIL: ${MAX_BACKENDS} server backends > REACTORS × PG_POOL_SIZE = ${EXPECTED_BACKENDS}"
    FAILED=1
fi
if [ "$FAILED" = 0 ]; then
    say "PASS (samples in $SOAK_OUT/samples.tsv)"
fi
exit "$FAILED"
