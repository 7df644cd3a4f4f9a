# Sourced by run.sh and instructions.sh: a throwaway PostgreSQL cluster for one invocation.
#
# `cluster_start` (unless PGHOST or DATABASE_URL is already set: then that server is used)
# runs initdb in a temp directory, starts the server on a free loopback port with durability
# off, exports PGHOST/PGPORT/PGUSER/PGDATABASE and stops + deletes it on exit. As root, the
# server runs as the `postgres` OS user (PostgreSQL refuses root). The server also listens on
# a Unix socket in that directory, exported as BENCH_SOCKET_DIR. BENCH_MAX_CONNECTIONS sets
# max_connections (default 300; bench/memory.sh and `pgconnect --mode pool --size 512` need
# more).
#
# BENCH_TLS=1 (opt-in) makes it a TLS cluster as well (plaintext still accepted): a CA and a
# server certificate for 127.0.0.1 and localhost made at run time with the `openssl` CLI in
# the cluster's temp dir (never committed; the CA's key is deleted once it has signed;
# BENCH_TLS_KEY=rsa (default, 2048 bits) or ec (P-256)), `ssl = on`, and a SCRAM role for the
# handshake benchmark (`host ... scram-sha-256` for that role only; everyone else stays on
# trust). It exports PGSSLROOTCERT (the CA), PGSSLMODE=verify-full, BENCH_SCRAM_USER and
# BENCH_SCRAM_PASSWORD (random, made here).

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
max_connections = ${BENCH_MAX_CONNECTIONS:-300}
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
CONF
    if [ "${BENCH_TLS:-0}" = 1 ]; then
        cluster_tls || return 1
    fi
    "${CLUSTER_AS[@]}" "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -l "$CLUSTER_DIR/server.log" -w start \
        >/dev/null || { tail -20 "$CLUSTER_DIR/server.log" >&2; return 1; }
    if [ "${BENCH_TLS:-0}" = 1 ]; then
        # The password goes through a psql variable on stdin (not the command line).
        printf '%s\n' "CREATE ROLE $BENCH_SCRAM_USER LOGIN PASSWORD :'pw';" |
            "${CLUSTER_AS[@]}" "$PG_BIN/psql" -XqAt -h "$CLUSTER_DIR" -p "$port" -U postgres \
                -d postgres -v ON_ERROR_STOP=1 -v pw="$BENCH_SCRAM_PASSWORD" >/dev/null ||
            { echo "cluster: creating the SCRAM role failed" >&2; return 1; }
        export PGSSLROOTCERT=$CLUSTER_DIR/tls/ca.crt PGSSLMODE=verify-full
        export BENCH_SCRAM_USER BENCH_SCRAM_PASSWORD BENCH_TLS_KEY_DESC
    fi
    export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=postgres
    # The same server's Unix socket directory (`pgload --unix "$BENCH_SOCKET_DIR"`).
    export BENCH_SOCKET_DIR=$CLUSTER_DIR
    local tls=
    [ "${BENCH_TLS:-0}" = 1 ] && tls=", TLS ($BENCH_TLS_KEY_DESC) + SCRAM role $BENCH_SCRAM_USER"
    echo "cluster: PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$port ($CLUSTER_DIR)$tls" >&2
}

# The TLS half of cluster_start (before the server starts): certificates, ssl settings, the
# SCRAM role's pg_hba line and password.
cluster_tls() {
    if ! command -v openssl >/dev/null; then
        echo "cluster: BENCH_TLS=1 needs the openssl CLI (apt-get install openssl)" >&2
        return 1
    fi
    local dir=$CLUSTER_DIR/tls key
    case "${BENCH_TLS_KEY:-rsa}" in
        rsa) key=(-newkey rsa:2048); BENCH_TLS_KEY_DESC="RSA 2048" ;;
        ec) key=(-newkey ec -pkeyopt ec_paramgen_curve:P-256); BENCH_TLS_KEY_DESC="ECDSA P-256" ;;
        *) echo "cluster: BENCH_TLS_KEY must be rsa or ec" >&2; return 1 ;;
    esac
    mkdir -p "$dir"
    (
        set -e
        cd "$dir"
        umask 077
        openssl req -x509 "${key[@]}" -nodes -days 2 -subj "/CN=ioxide bench CA" \
            -keyout ca.key -out ca.crt
        openssl req -new "${key[@]}" -nodes -subj "/CN=localhost" -keyout server.key -out server.csr
        printf '%s\n' "basicConstraints = critical, CA:FALSE" \
            "keyUsage = critical, digitalSignature, keyEncipherment" \
            "extendedKeyUsage = serverAuth" "subjectAltName = IP:127.0.0.1, DNS:localhost" >server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
            -extfile server.ext -out server.crt
        rm -f ca.key ca.srl server.csr server.ext
        chmod 644 ca.crt server.crt
        chmod 600 server.key
    ) >"$CLUSTER_DIR/openssl.log" 2>&1 || { cat "$CLUSTER_DIR/openssl.log" >&2; return 1; }
    chmod 755 "$dir"
    if [ "$(id -u)" = 0 ]; then
        chown -R postgres: "$dir"
    fi
    cat >>"$CLUSTER_DIR/data/postgresql.conf" <<CONF
ssl = on
ssl_cert_file = '$dir/server.crt'
ssl_key_file = '$dir/server.key'
password_encryption = 'scram-sha-256'
CONF
    BENCH_SCRAM_USER=bench_scram
    BENCH_SCRAM_PASSWORD=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
    # First match wins: the SCRAM role's line goes above initdb's trust lines. Rewritten in
    # place so the file keeps its owner.
    local hba
    hba=$(cat "$CLUSTER_DIR/data/pg_hba.conf")
    printf 'host all %s 127.0.0.1/32 scram-sha-256\n%s\n' "$BENCH_SCRAM_USER" "$hba" \
        >"$CLUSTER_DIR/data/pg_hba.conf"
}

cluster_stop() {
    if [ -n "${CLUSTER_DIR:-}" ] && [ -d "$CLUSTER_DIR" ]; then
        "${CLUSTER_AS[@]}" "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -m immediate stop >/dev/null 2>&1
        rm -rf "$CLUSTER_DIR"
    fi
}
