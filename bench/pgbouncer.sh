#!/usr/bin/env bash
# Issue 20, through PgBouncer: every driver through a real PgBouncer (pool_mode = transaction,
# default settings otherwise) in front of one throwaway cluster, 64 queries in flight,
# `select42` and `param`, interleaved over rounds (the order rotates each round). ioxide-pg
# pipelined (depth 256) and at depth 1 with the driver's defaults (it detects the pooler by
# its first refused statement and switches to unnamed statements), and pipelined with
# statement_cache_capacity 0 (the explicit setting); tokio-postgres, deadpool-postgres and
# sqlx in their PgBouncer-safe configuration (pgload --pgbouncer: query_typed for the first
# two, statement_cache_capacity(0) for sqlx). Each run reports client CPU, server CPU
# (PostgreSQL's processes, PGLOAD_SERVER_PID) and PgBouncer's CPU (PGLOAD_BOUNCER_PID) per
# query over the same window.
# Writes bench/results/<date>-pgbouncer-<HHMM>.json (medians, per-round ratios, every run)
# and .txt (the table and the progress log). BENCHMARKS.md's section is written by hand from
# them (bench/FINDINGS.md).
#
#   bench/pgbouncer.sh                             # 3 rounds x 3 s, ~4 min
#   ROUNDS=1 SECONDS_PER_RUN=1 bench/pgbouncer.sh  # a smoke run
#   CONNS=8 POOL_SIZE=20 bench/pgbouncer.sh        # client connections / PgBouncer's pool
#
# Always starts its own cluster (bench/cluster.sh, with PGHOST/DATABASE_URL unset) and its
# own PgBouncer (/usr/sbin/pgbouncer or PGBOUNCER; as the `postgres` OS user when root, in a
# temp dir, a free loopback port, auth_type = trust); stops both by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-3}
CONNS=${CONNS:-8}
POOL_SIZE=${POOL_SIZE:-20}
QUERIES=${QUERIES:-select42 param}
PGBOUNCER=${PGBOUNCER:-$(command -v pgbouncer || echo /usr/sbin/pgbouncer)}
if [ ! -x "$PGBOUNCER" ]; then
    echo "pgbouncer.sh: no pgbouncer program (apt-get install pgbouncer, or set PGBOUNCER)" >&2
    exit 1
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -p bench --bin pgload
BIN=$CARGO_TARGET_DIR/release

unset PGHOST PGPORT PGUSER PGDATABASE DATABASE_URL
# shellcheck source=bench/cluster.sh
source bench/cluster.sh
cluster_start

BOUNCER_DIR=
bouncer_stop() {
    if [ -n "$BOUNCER_DIR" ] && [ -f "$BOUNCER_DIR/pgbouncer.pid" ]; then
        local pid
        pid=$(cat "$BOUNCER_DIR/pgbouncer.pid")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    [ -n "$BOUNCER_DIR" ] && rm -rf "$BOUNCER_DIR"
    return 0
}
trap 'bouncer_stop; cluster_stop' EXIT

BOUNCER_DIR=$(mktemp -d /tmp/bench-pgbouncer.XXXXXX)
chmod 755 "$BOUNCER_DIR"
for _ in $(seq 50); do
    BPORT=$((30000 + RANDOM % 10000))
    (exec 3<>"/dev/tcp/127.0.0.1/$BPORT") 2>/dev/null || break
done
# auth_type = trust still wants the user in auth_file.
printf '"%s" ""\n' "$PGUSER" >"$BOUNCER_DIR/userlist.txt"
cat >"$BOUNCER_DIR/pgbouncer.ini" <<INI
[databases]
$PGDATABASE = host=127.0.0.1 port=$PGPORT dbname=$PGDATABASE
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BPORT
unix_socket_dir =
auth_type = trust
auth_file = $BOUNCER_DIR/userlist.txt
pidfile = $BOUNCER_DIR/pgbouncer.pid
logfile = $BOUNCER_DIR/pgbouncer.log
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 200
log_connections = 0
log_disconnections = 0
INI
AS=()
if [ "$(id -u)" = 0 ]; then
    chown -R postgres: "$BOUNCER_DIR"
    AS=(runuser -u postgres --)
fi
"${AS[@]}" "$PGBOUNCER" -d "$BOUNCER_DIR/pgbouncer.ini" ||
    { cat "$BOUNCER_DIR/pgbouncer.log" >&2 2>/dev/null; exit 1; }
for _ in $(seq 100); do
    [ -s "$BOUNCER_DIR/pgbouncer.pid" ] && (exec 3<>"/dev/tcp/127.0.0.1/$BPORT") 2>/dev/null && break
    sleep 0.1
done
export PGLOAD_BOUNCER_PID PGLOAD_SERVER_PID
PGLOAD_BOUNCER_PID=$(cat "$BOUNCER_DIR/pgbouncer.pid")
PGLOAD_SERVER_PID=$(head -1 "$CLUSTER_DIR/data/postmaster.pid")
URL=postgres://$PGUSER@127.0.0.1:$BPORT/$PGDATABASE
BOUNCER_DESC="$("$PGBOUNCER" --version | head -1) on 127.0.0.1:$BPORT (pid $PGLOAD_BOUNCER_PID), pool_mode = transaction, default_pool_size = $POOL_SIZE -> 127.0.0.1:$PGPORT"

# label|pgload arguments
DRIVERS=(
    "ioxide-pg d=256|--driver ioxide-pg --pipeline-depth 256"
    "ioxide-pg d=1|--driver ioxide-pg --pipeline-depth 1"
    "ioxide-pg d=256 cache=0|--driver ioxide-pg --pipeline-depth 256 --statement-cache-capacity 0"
    "tokio-postgres|--driver tokio-postgres --pgbouncer"
    "deadpool|--driver deadpool --pgbouncer"
    "sqlx|--driver sqlx --pgbouncer"
)
# A/B: BEFORE_PGLOAD=/path/to/an/older/pgload adds ioxide-pg's pipelined and depth-1 rows
# run with that binary ("... before"), interleaved with the rest.
if [ -n "${BEFORE_PGLOAD:-}" ]; then
    DRIVERS+=(
        "ioxide-pg d=256 before|@before --driver ioxide-pg --pipeline-depth 256"
        "ioxide-pg d=1 before|@before --driver ioxide-pg --pipeline-depth 1"
    )
fi
# ONLY='regex' keeps the drivers whose label matches (e.g. ONLY='ioxide|tokio').
if [ -n "${ONLY:-}" ]; then
    kept=()
    for entry in "${DRIVERS[@]}"; do
        [[ ${entry%%|*} =~ $ONLY ]] && kept+=("$entry")
    done
    DRIVERS=("${kept[@]}")
fi
STAMP=$(date -u +%Y-%m-%d)-pgbouncer-$(date -u +%H%M)
OUT=bench/results/$STAMP.json
TXT=bench/results/$STAMP.txt
RAW=$BOUNCER_DIR/runs.jsonl
: >"$RAW"
{
    echo "pgbouncer: $BOUNCER_DESC"
    echo "pgbouncer.sh: $ROUNDS rounds x $SECONDS_PER_RUN s, --conns $CONNS --concurrency 64," \
        "PgBouncer default_pool_size $POOL_SIZE, queries: $QUERIES"
    n=${#DRIVERS[@]}
    for round in $(seq "$ROUNDS"); do
        for q in $QUERIES; do
            for k in $(seq 0 $((n - 1))); do
                entry=${DRIVERS[$(((k + round - 1) % n))]}
                label=${entry%%|*}
                args=${entry#*|}
                prog=$BIN/pgload
                if [ "${args%% *}" = @before ]; then
                    prog=$BEFORE_PGLOAD
                    args=${args#@before }
                fi
                # shellcheck disable=SC2086
                line=$("$prog" $args --conns "$CONNS" --concurrency 64 \
                    --seconds "$SECONDS_PER_RUN" --query "$q" --url "$URL" 2>&1 | tail -1) || true
                if [ "${line:0:1}" != "{" ]; then
                    echo "round $round $q $label: FAILED: $line"
                    line='{"failed":true}'
                fi
                printf '%s\n' "$line" | jq -c --arg l "$label" --argjson r "$round" \
                    '. + {label: $l, round: $r}' >>"$RAW"
                printf '%s\n' "$line" | jq -r --arg l "$label" --argjson r "$round" \
                    '"round \($r) \(.query // "?") \($l): \(.qps // "-") q/s, client \(.client_cpu_us_per_query // "-") us/q, server \(.server_cpu_us_per_query // "-"), pgbouncer \(.bouncer_cpu_us_per_query // "-"), p99 \(.p99_us // "-") us, errors \(.errors_total // .errors // "-"), wrong \(.wrong_answers // "-")\(if .first_error then ", first error: \(.first_error)" else "" end)"'
            done
        done
    done
    python3 - "$RAW" "$OUT" <<'PY'
import json, statistics, sys
raw, out = sys.argv[1], sys.argv[2]
runs = [json.loads(l) for l in open(raw) if l.strip()]
ok = [r for r in runs if not r.get("failed")]
labels = list(dict.fromkeys(r["label"] for r in runs))
queries = list(dict.fromkeys(r["query"] for r in ok))
fields = ["qps", "client_cpu_us_per_query", "p99_us", "server_cpu_us_per_query",
          "bouncer_cpu_us_per_query"]
med = lambda xs: statistics.median(xs) if xs else None
medians, ratios = [], []
for q in queries:
    for l in labels:
        rs = [r for r in ok if r["query"] == q and r["label"] == l]
        m = {"query": q, "label": l, "runs": len(rs),
             "errors": sum(r.get("errors_total", r.get("errors", 0)) for r in rs),
             "wrong_answers": sum(r.get("wrong_answers", 0) for r in rs)}
        for f in fields:
            m[f] = med([r[f] for r in rs if r.get(f) is not None])
        firsts = [r["first_error"] for r in rs if r.get("first_error")]
        if firsts:
            m["first_error"] = firsts[0]
        medians.append(m)
    # Per round: ours (pipelined) against the best peer's client CPU per query.
    for rnd in sorted({r["round"] for r in ok}):
        by = {r["label"]: r for r in ok if r["query"] == q and r["round"] == rnd}
        peers = {l: by[l]["client_cpu_us_per_query"] for l in ("tokio-postgres", "deadpool", "sqlx") if l in by}
        if not peers:
            continue
        best = min(peers, key=peers.get)
        row = {"query": q, "round": rnd, "best_peer": best, "best_peer_cpu": peers[best]}
        for l in labels:
            if l.startswith("ioxide-pg") and l in by:
                row[l] = round(by[l]["client_cpu_us_per_query"] / peers[best], 3)
        ratios.append(row)
json.dump({"medians": medians, "ratios_vs_best_peer_client_cpu": ratios, "runs": runs},
          open(out, "w"), indent=1)
print()
print("| query | driver | q/s | client CPU µs/q | p99 µs | server CPU µs/q | PgBouncer CPU µs/q | errors |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
fmt = lambda v, d=1: "-" if v is None else (f"{v:,.0f}" if d == 0 else f"{v:.{d}f}")
for m in medians:
    print(f"| {m['query']} | {m['label']} | {fmt(m['qps'], 0)} | {fmt(m['client_cpu_us_per_query'], 2)} "
          f"| {fmt(m['p99_us'], 0)} | {fmt(m['server_cpu_us_per_query'], 1)} "
          f"| {fmt(m['bouncer_cpu_us_per_query'], 1)} | {m['errors'] + m['wrong_answers']} |")
print()
print("ioxide-pg client CPU/query ÷ the best peer's, per round (target <= 0.5):")
for r in ratios:
    rest = ", ".join(f"{k} {v}" for k, v in r.items() if k.startswith("ioxide-pg"))
    print(f"  {r['query']} round {r['round']}: best peer {r['best_peer']} {r['best_peer_cpu']} µs; {rest}")
for q in queries:
    rs = [r for r in ratios if r["query"] == q]
    for l in labels:
        xs = [r[l] for r in rs if l in r]
        if xs:
            print(f"  {q} {l}: median ratio {statistics.median(xs):.3f}")
PY
} 2>&1 | tee "$TXT"
echo "pgbouncer.sh: $OUT, $TXT" >&2
