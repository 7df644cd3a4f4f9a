#!/usr/bin/env bash
# Instructions per query (user space, all threads of the client) under callgrind: ioxide-pg
# against tokio-postgres (and depth-1 ioxide-pg against deadpool). Each case runs pgload
# --fixed-queries N1 and N2 under `valgrind --tool=callgrind`; (Ir(N2) - Ir(N1)) / (N2 - N1)
# cancels startup (connects, prepares, runtime setup). The kernel's work is not counted:
# see the ring counters (enters/SQEs per query) printed beside, or `strace -c -f`.
#
#   bench/instructions.sh                 # N1=10000 N2=30000, ~2 min
#   KEEP=/tmp/cg bench/instructions.sh    # keep the callgrind files for callgrind_annotate
#
# Uses PGHOST/DATABASE_URL if set, else a throwaway cluster (bench/cluster.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-10000}
N2=${N2:-30000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
command -v valgrind >/dev/null || {
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq valgrind >/dev/null
}
cargo build --release -p bench --bin pgload
PGLOAD=$CARGO_TARGET_DIR/release/pgload
# shellcheck source=bench/cluster.sh
source bench/cluster.sh
cluster_start
DIR=${KEEP:-$(mktemp -d)}
mkdir -p "$DIR"

# ir FILE: the total instruction count callgrind wrote.
ir() { awk '/^summary:|^totals:/ {print $2; exit}' "$1"; }

# measure NAME pgload-args...: prints "NAME instr/query json-of-N2-run"
measure() {
    local name=$1; shift
    local i1 i2 json
    valgrind --tool=callgrind --callgrind-out-file="$DIR/$name.$N1" "$PGLOAD" "$@" \
        --fixed-queries "$N1" >/dev/null 2>"$DIR/$name.$N1.log"
    json=$(valgrind --tool=callgrind --callgrind-out-file="$DIR/$name.$N2" "$PGLOAD" "$@" \
        --fixed-queries "$N2" 2>"$DIR/$name.$N2.log")
    i1=$(ir "$DIR/$name.$N1")
    i2=$(ir "$DIR/$name.$N2")
    local per=$(( (i2 - i1) / (N2 - N1) ))
    local ring
    ring=$(echo "$json" | sed -n 's/.*"enters_per_query":\([0-9.]*\).*"sqes_per_query":\([0-9.]*\).*/enters\/q \1, sqes\/q \2/p')
    printf '%-44s %8d instr/query   %s\n' "$name" "$per" "$ring"
    echo "$name $per" >>"$DIR/summary.txt"
}

: >"$DIR/summary.txt"
echo "user-space instructions per query (callgrind, N=$N2-$N1), files in $DIR" >&2
for q in select42 param; do
    measure "ioxide-pg-d256-1conn-c64-$q" --driver ioxide-pg --pipeline-depth 256 --conns 1 --concurrency 64 --query "$q"
    measure "tokio-postgres-1conn-c64-$q" --driver tokio-postgres --conns 1 --concurrency 64 --query "$q"
done
measure "ioxide-pg-d1-8conns-c64-select42" --driver ioxide-pg --pipeline-depth 1 --conns 8 --concurrency 64 --query select42
measure "deadpool-8conns-c64-select42" --driver deadpool --conns 8 --concurrency 64 --query select42
awk '{v[$1]=$2} END {
    for (q in a) {}
    split("select42 param", qs, " ");
    for (i = 1; i <= 2; i++) {
        io = v["ioxide-pg-d256-1conn-c64-" qs[i]]; tp = v["tokio-postgres-1conn-c64-" qs[i]];
        if (tp > 0) printf "ratio ioxide-pg / tokio-postgres (%s, 1 conn): %.2f\n", qs[i], io / tp;
    }
    io = v["ioxide-pg-d1-8conns-c64-select42"]; dp = v["deadpool-8conns-c64-select42"];
    if (dp > 0) printf "ratio ioxide-pg d=1 / deadpool (select42, 8 conns): %.2f\n", io / dp;
}' "$DIR/summary.txt"
[ -n "${KEEP:-}" ] || rm -rf "$DIR"
