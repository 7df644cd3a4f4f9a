#!/usr/bin/env bash
# Issue 20, failover: time from the promotion request to the first acknowledged write,
# ioxide-pg's PgPool against a deadpool-postgres pool (tokio-postgres host list), both given
# the same two hosts with target_session_attrs=read-write. Each run starts its own primary +
# synchronous standby (pg-throwaway), 64 writers insert for 1 s, the primary is stopped
# (fast) and the standby promoted, the writers go on for SECONDS_AFTER_STOP (4) more. The drivers alternate
# (the order flips each round), fresh clusters every run; pg-throwaway stops them on drop.
# A probe connection opened to the standby before the stop inserts every millisecond: its
# first acknowledgement after the promotion is the server's floor for the run.
# Writes bench/results/<date>-failover-<HHMM>.json (one line per run + the summary) and .txt
# (the same with the command line and the build). BENCHMARKS.md's section is written by
# hand from them (bench/FINDINGS.md).
#
#   bench/failover.sh                  # 5 rounds, ~2 min
#   ROUNDS=1 bench/failover.sh         # a smoke run
#   WRITERS=64 POOL_SIZE=16 SECONDS_AFTER_STOP=4 bench/failover.sh
#   PROBE=0 bench/failover.sh          # without the server-floor probe connection
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
WRITERS=${WRITERS:-64}
POOL_SIZE=${POOL_SIZE:-16}
SECS=${SECONDS_AFTER_STOP:-4}
PROBE=${PROBE:-1}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -p bench --bin pgfailover
BIN=$CARGO_TARGET_DIR/release
mkdir -p bench/results
OUT=bench/results/$(date -u +%Y-%m-%d)-failover-$(date -u +%H%M)
{
    echo "# $(date -u '+%Y-%m-%d %H:%M UTC') $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "# pgfailover --rounds $ROUNDS --writers $WRITERS --pool-size $POOL_SIZE --seconds $SECS --probe $PROBE"
} >"$OUT.txt"
"$BIN/pgfailover" --rounds "$ROUNDS" --writers "$WRITERS" --pool-size "$POOL_SIZE" \
    --seconds "$SECS" --probe "$PROBE" | tee "$OUT.json" >>"$OUT.txt"
tail -n 1 "$OUT.json"
echo "failover.sh: $OUT.json, $OUT.txt"
