#!/usr/bin/env bash
# Issue 21 item 2: the same server over loopback TCP and over its Unix socket, side by side.
# pgload per (round, query, driver, transport), the order alternating each round; ioxide-pg
# pipelined (--pipeline-depth 256) and tokio-postgres (current-thread runtime), 2 connections
# x 64 in flight. Writes bench/results/<date>-unix-<HHMM>.jsonl (every run) and prints the
# medians of q/s, client CPU/query and server CPU/query per (query, driver, transport).
#
#   bench/unix.sh                       # 3 rounds x select42,param, 5 s each, ~2 min
#   ROUNDS=1 SECONDS_PER_RUN=2 bench/unix.sh
#
# Starts a throwaway cluster (bench/cluster.sh) unless PGHOST/DATABASE_URL is set; with a
# server from the environment, BENCH_SOCKET_DIR must name its Unix socket directory.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
QUERIES=${QUERIES:-select42 param}
DRIVERS=${DRIVERS:-ioxide-pg tokio-postgres}
SECS=${SECONDS_PER_RUN:-5}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -p bench --bin pgload
BIN=$CARGO_TARGET_DIR/release

# shellcheck source=bench/cluster.sh
source bench/cluster.sh
cluster_start
: "${BENCH_SOCKET_DIR:?set BENCH_SOCKET_DIR to the Unix socket directory of the server}"

OUT=bench/results/$(date -u +%Y-%m-%d)-unix-$(date -u +%H%M).jsonl
: >"$OUT"
runs=()
for d in $DRIVERS; do
    for t in tcp unix; do runs+=("$d $t"); done
done
for round in $(seq "$ROUNDS"); do
    for q in $QUERIES; do
        order=("${runs[@]}")
        if [ $((round % 2)) = 0 ]; then
            order=()
            for ((i = ${#runs[@]} - 1; i >= 0; i--)); do order+=("${runs[i]}"); done
        fi
        for r in "${order[@]}"; do
            read -r d t <<<"$r"
            extra=()
            [ "$d" = ioxide-pg ] && extra+=(--pipeline-depth 256)
            [ "$t" = unix ] && extra+=(--unix "$BENCH_SOCKET_DIR")
            line=$("$BIN/pgload" --driver "$d" --conns 2 --concurrency 64 --seconds "$SECS" \
                --query "$q" "${extra[@]}")
            echo "{\"round\":$round,${line#\{}" >>"$OUT"
            echo "round $round $q $d $t: $line" >&2
        done
    done
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
keys = sorted({(r["query"], r["driver"], r["transport"]) for r in runs})
print(f"{'query':10} {'driver':15} {'transport':9} {'q/s':>8} {'client us/q':>11} {'server us/q':>11}")
med = {}
for k in keys:
    rs = [r for r in runs if (r["query"], r["driver"], r["transport"]) == k]
    m = [statistics.median(r.get(f, float("nan")) for r in rs)
         for f in ("qps", "client_cpu_us_per_query", "server_cpu_us_per_query")]
    med[k] = m
    print(f"{k[0]:10} {k[1]:15} {k[2]:9} {m[0]:8.0f} {m[1]:11.2f} {m[2]:11.2f}")
for (q, d, t), m in med.items():
    if t == "unix" and (q, d, "tcp") in med:
        c = med[(q, d, "tcp")]
        print(f"{q:10} {d:15} unix/tcp: q/s {m[0]/c[0]:.2f}, client {m[1]/c[1]:.2f}, server {m[2]/c[2]:.2f}")
print(f"({len(runs)} runs in {sys.argv[1]})")
PY
