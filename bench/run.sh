#!/usr/bin/env bash
# The side-by-side benchmark suite: pgload (every driver, every setting, interleaved, three
# rounds, medians), HTTP end to end with wrk, then BENCHMARKS.md and the charts.
#
#   bench/run.sh            # full matrix, ~15 min
#   QUICK=1 bench/run.sh    # 1 round, ~5 min
#
# Uses the server in PGHOST/PGPORT/PGUSER/PGDATABASE (or DATABASE_URL) if set; otherwise
# starts one throwaway PostgreSQL cluster for the whole invocation (bench/cluster.sh).
# Writes bench/results/<UTC date>.json, bench/results/<date>-{select42,param}.svg and
# BENCHMARKS.md. Knobs: ROUNDS, SECONDS_PER_RUN, HTTP_SECONDS, BENCH_GROUPS (comma list of
# matrix,one_conn,rows100,depth,protocol,reactors; default all), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${QUICK:-0}" = 1 ]; then
    ROUNDS=${ROUNDS:-1} HTTP_SECONDS=${HTTP_SECONDS:-3}
else
    ROUNDS=${ROUNDS:-3} HTTP_SECONDS=${HTTP_SECONDS:-5}
fi
SECONDS_PER_RUN=${SECONDS_PER_RUN:-2}

if ! command -v wrk >/dev/null; then
    echo "run.sh: installing wrk" >&2
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq wrk >/dev/null
fi

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -p bench --bins
BIN=$CARGO_TARGET_DIR/release
PLAYGROUND_ARGS=()
if cargo build --release -p playground 2>/dev/null && [ -x "$BIN/playground" ]; then
    PLAYGROUND_ARGS=(--playground "$BIN/playground")
fi

# shellcheck source=bench/cluster.sh
source bench/cluster.sh
cluster_start

STAMP=$(date -u +%Y-%m-%d-%H%M)
[ "${QUICK:-0}" = 1 ] && STAMP=$STAMP-quick
OUT=bench/results/$STAMP.json
GROUP_ARGS=()
[ -n "${BENCH_GROUPS:-}" ] && GROUP_ARGS=(--groups "$BENCH_GROUPS")
"$BIN/bench-run" --out "$OUT" --rounds "$ROUNDS" --seconds "$SECONDS_PER_RUN" \
    --http-seconds "$HTTP_SECONDS" "${PLAYGROUND_ARGS[@]}" "${GROUP_ARGS[@]}"
# The TLS section comes from the latest bench/tls.sh run, if any.
TLS_ARGS=()
TLS_RESULTS=$(ls bench/results/*-tls-*.json 2>/dev/null | sort | tail -1)
[ -n "$TLS_RESULTS" ] && TLS_ARGS=(--tls "$TLS_RESULTS")
"$BIN/bench-report" "$OUT" --md BENCHMARKS.md --findings bench/FINDINGS.md "${TLS_ARGS[@]}"
echo "run.sh: $OUT, BENCHMARKS.md" >&2
