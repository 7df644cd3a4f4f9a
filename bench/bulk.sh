#!/usr/bin/env bash
# Issue 19's bulk paths side by side (pgbulk --compare): typed reads of 10 000-row results,
# bulk insert of 100 000 rows, LISTEN/NOTIFY rate and latency, COPY in and out of 1 000 000
# rows (binary typed, text raw); ioxide-pg against tokio-postgres (and sqlx for reads and
# text COPY, psql's \copy for COPY), interleaved over rounds on one throwaway cluster.
# Writes bench/results/<date>-bulk-<HHMM>.json (medians + every run) and .txt (the table and
# the progress log). BENCHMARKS.md's "Issue 19: bulk paths" section is written from them by
# hand (bench/FINDINGS.md).
#
#   bench/bulk.sh                                  # 5 rounds, ~3 min
#   ROUNDS=1 bench/bulk.sh                         # a smoke run
#   WORKLOADS=reads,insert bench/bulk.sh -- --queries 100   # a subset; flags after -- go to every run
#   WORKLOADS=copy-in-binary,copy-in-text,copy-out-binary,copy-out-text bench/bulk.sh   # COPY only
#
# Starts a throwaway cluster (bench/cluster.sh) unless PGHOST/DATABASE_URL is set.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
WORKLOADS=${WORKLOADS:-reads,insert,notify-burst,notify-paced,copy-in-binary,copy-in-text,copy-out-binary,copy-out-text}
[ "${1:-}" = -- ] && shift
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -p bench --bin pgbulk
BIN=$CARGO_TARGET_DIR/release

# shellcheck source=bench/cluster.sh
source bench/cluster.sh
cluster_start

STAMP=$(date -u +%Y-%m-%d)-bulk-$(date -u +%H%M)
OUT=bench/results/$STAMP.json
"$BIN/pgbulk" --compare --rounds "$ROUNDS" --workloads "$WORKLOADS" --out "$OUT" "$@" 2>&1 |
    tee "bench/results/$STAMP.txt"
