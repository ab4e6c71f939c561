# Sourced by .ci/run: a throwaway PostgreSQL server for the tests of replicas sharing one decision log.
#   . .ci/postgres.sh && pg_start && trap pg_stop EXIT   # exports ROUTER_RL_TEST_PG_URL
# Installs PostgreSQL from the Debian packages when its binaries are missing (apt-get update once, then
# install), creates a cluster in a temp dir owned by the postgres user (initdb refuses to run as root),
# listens on 127.0.0.1 only, on a free port, with trust authentication for the test role on loopback.

pg_bin_dir() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}

pg_as_owner() {  # run as the postgres user when we are root, else as ourselves
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_start() {
    local bin port
    bin="$(pg_bin_dir)"
    if [ -z "$bin" ]; then
        if [ "$(id -u)" != 0 ]; then
            echo "postgres: not installed and not root; the PostgreSQL tests will skip" >&2
            return 0
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        bin="$(pg_bin_dir)"
    fi
    PG_DIR="$(mktemp -d)"
    mkdir -p "$PG_DIR/socket"
    if [ "$(id -u)" = 0 ]; then chown -R postgres: "$PG_DIR"; fi
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    pg_as_owner "$bin/initdb" -D "$PG_DIR/data" -U router_rl --auth=trust -E UTF8 --no-locale >/dev/null
    pg_as_owner "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$PG_DIR/socket" start >/dev/null
    PG_BIN="$bin"
    export ROUTER_RL_TEST_PG_URL="postgresql://router_rl@127.0.0.1:$port/postgres"
    echo "postgres: $("$bin/postgres" --version) at $ROUTER_RL_TEST_PG_URL" >&2
}

pg_stop() {
    if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR/data" ]; then
        pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
        rm -rf "$PG_DIR"
    fi
}
