# Sourced by run.sh and instructions.sh: a throwaway PostgreSQL cluster for one invocation.
#
# `cluster_start` (unless PGHOST or DATABASE_URL is already set: then that server is used)
# runs initdb in a temp directory, starts the server on a free loopback port with durability
# off, exports PGHOST/PGPORT/PGUSER/PGDATABASE and stops + deletes it on exit. As root, the
# server runs as the `postgres` OS user (PostgreSQL refuses root).

cluster_start() {
    if [ -n "${PGHOST:-}" ] || [ -n "${DATABASE_URL:-}" ]; then
        echo "cluster: using the server from the environment" >&2
        return 0
    fi
    PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
    if [ ! -x "$PG_BIN/pg_ctl" ]; then
        echo "cluster: no PostgreSQL server binaries (set PG_BIN)" >&2
        return 1
    fi
    CLUSTER_DIR=$(mktemp -d /tmp/bench-pg.XXXXXX)
    chmod 755 "$CLUSTER_DIR"
    CLUSTER_AS=()
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$CLUSTER_DIR"
        CLUSTER_AS=(runuser -u postgres --)
    fi
    trap cluster_stop EXIT
    "${CLUSTER_AS[@]}" "$PG_BIN/initdb" -D "$CLUSTER_DIR/data" -U postgres -A trust --no-sync \
        >"$CLUSTER_DIR/initdb.log" 2>&1 || { cat "$CLUSTER_DIR/initdb.log" >&2; return 1; }
    local port
    for _ in $(seq 50); do
        port=$((20000 + RANDOM % 10000))
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || break
    done
    cat >>"$CLUSTER_DIR/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$CLUSTER_DIR'
max_connections = 300
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
CONF
    "${CLUSTER_AS[@]}" "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -l "$CLUSTER_DIR/server.log" -w start \
        >/dev/null || { tail -20 "$CLUSTER_DIR/server.log" >&2; return 1; }
    export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=postgres
    echo "cluster: PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$port ($CLUSTER_DIR)" >&2
}

cluster_stop() {
    if [ -n "${CLUSTER_DIR:-}" ] && [ -d "$CLUSTER_DIR" ]; then
        "${CLUSTER_AS[@]}" "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -m immediate stop >/dev/null 2>&1
        rm -rf "$CLUSTER_DIR"
    fi
}
