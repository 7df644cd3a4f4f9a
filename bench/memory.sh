#!/usr/bin/env bash
# Issue 21 item 4: resident memory per idle pooled connection (64 and 512 connections) and
# per in-flight query (one connection, 256 in flight): ioxide-pg's PgPool against
# tokio-postgres clients and a deadpool-postgres pool (bench/src/bin/pgmem.rs), one process
# per measurement, the order alternating each round. Writes
# bench/results/<date>-memory-<HHMM>.jsonl (every run) and prints the medians.
#
#   bench/memory.sh                    # 3 rounds, ~1 min
#   ROUNDS=1 CONNS=64 bench/memory.sh
#
# Starts a throwaway cluster (bench/cluster.sh, max_connections raised to 600) unless
# PGHOST/DATABASE_URL is set.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64 512}
DRIVERS=${DRIVERS:-ioxide-pg tokio-postgres deadpool}
INFLIGHT=${INFLIGHT:-256}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -p bench --bin pgmem
BIN=$CARGO_TARGET_DIR/release
export BENCH_MAX_CONNECTIONS=${BENCH_MAX_CONNECTIONS:-600}

# shellcheck source=bench/cluster.sh
source bench/cluster.sh
cluster_start

OUT=bench/results/$(date -u +%Y-%m-%d)-memory-$(date -u +%H%M).jsonl
: >"$OUT"
runs=()
for n in $CONNS; do
    for d in $DRIVERS; do runs+=("$d --conns $n"); done
done
for d in $DRIVERS; do
    [ "$d" = deadpool ] || runs+=("$d --inflight $INFLIGHT")
done
for round in $(seq "$ROUNDS"); do
    order=("${runs[@]}")
    if [ $((round % 2)) = 0 ]; then
        order=()
        for ((i = ${#runs[@]} - 1; i >= 0; i--)); do order+=("${runs[i]}"); done
    fi
    for r in "${order[@]}"; do
        # shellcheck disable=SC2086
        line=$("$BIN/pgmem" --driver $r)
        echo "{\"round\":$round,${line#\{}" >>"$OUT"
        echo "round $round $r: $line" >&2
        sleep 0.5
    done
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
idle = sorted({(r["conns"], r["driver"]) for r in runs if "inflight" not in r})
print(f"{'conns':>5} {'driver':15} {'KiB/conn open':>13} {'KiB/conn used':>13}")
med = {}
for k in idle:
    rs = [r for r in runs if (r["conns"], r["driver"]) == k and "inflight" not in r]
    m = [statistics.median(r[f] for r in rs) for f in ("kib_per_conn_open", "kib_per_conn_used")]
    med[k] = m
    print(f"{k[0]:5} {k[1]:15} {m[0]:13.1f} {m[1]:13.1f}")
for (n, d), m in med.items():
    t = med.get((n, "tokio-postgres"))
    if d != "tokio-postgres" and t:
        print(f"{n:5} {d:15} / tokio-postgres (used): {m[1] / t[1]:.2f}")
for d in sorted({r["driver"] for r in runs if "inflight" in r}):
    rs = [r for r in runs if r["driver"] == d and "inflight" in r]
    print(f"{d:15} KiB per in-flight query at depth {rs[0]['inflight']}: "
          f"{statistics.median(r['kib_per_inflight_query'] for r in rs):.2f}")
print(f"({len(runs)} runs in {sys.argv[1]})")
PY
