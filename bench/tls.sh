#!/usr/bin/env bash
# TLS side by side (issue 18): every driver plaintext and over TLS (rustls, ring), interleaved,
# then connect/handshake cost and the warm-up of 64 connections (pgconnect); writes
# bench/results/<date>-tls-<HHMM>.json (+ .txt, the progress log) and regenerates
# BENCHMARKS.md with its TLS section (the main tables from the results file BENCHMARKS.md
# already names).
#
#   bench/tls.sh                      # 3 rounds x 2 s, ~12 min
#   ROUNDS=1 SECONDS_PER_RUN=1 bench/tls.sh
#
# Starts a throwaway TLS cluster (BENCH_TLS=1 bench/cluster.sh) unless PGHOST/DATABASE_URL is
# set; a server of your own needs PGSSLROOTCERT (its CA; the certificate must name the host)
# and a scram-sha-256 role in BENCH_SCRAM_USER / BENCH_SCRAM_PASSWORD.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-2}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -p bench --bins
BIN=$CARGO_TARGET_DIR/release

export BENCH_TLS=1
# shellcheck source=bench/cluster.sh
source bench/cluster.sh
cluster_start
for v in PGSSLROOTCERT BENCH_SCRAM_USER BENCH_SCRAM_PASSWORD; do
    if [ -z "${!v:-}" ]; then
        echo "tls.sh: $v is not set (see the header of this script)" >&2
        exit 1
    fi
done

STAMP=$(date -u +%Y-%m-%d)-tls-$(date -u +%H%M)
OUT=bench/results/$STAMP.json
"$BIN/bench-run" --plan tls --out "$OUT" --rounds "$ROUNDS" --seconds "$SECONDS_PER_RUN" 2>&1 |
    tee "bench/results/$STAMP.txt"
MAIN=$(sed -n 's/.*from `\(bench\/results\/[^`]*\.json\)`.*/\1/p' BENCHMARKS.md | head -1)
if [ -n "$MAIN" ] && [ -f "$MAIN" ]; then
    "$BIN/bench-report" "$MAIN" --md BENCHMARKS.md --findings bench/FINDINGS.md --tls "$OUT"
    echo "tls.sh: $OUT, BENCHMARKS.md" >&2
else
    echo "tls.sh: $OUT (BENCHMARKS.md names no main results file: not regenerated)" >&2
fi
