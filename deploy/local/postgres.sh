#!/usr/bin/env bash
# Project-owned PostgreSQL 15 cluster in $STATE/pg (not the system cluster).
# Usage: postgres.sh install|up|down|status
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PGBIN=/usr/lib/postgresql/15/bin
PGDIR="$STATE/pg"
DATA="$PGDIR/data"
RUN="$PGDIR/run"           # unix socket directory
PIDFILE="$DATA/postmaster.pid"
LOG="$LOGS/postgres.log"
OSUSER=postgres            # only used when we are root: postgres refuses root

svc_install() {
  if [ ! -x "$PGBIN/postgres" ]; then
    apt_install postgresql-15
  fi
}

pg() { as_user "$OSUSER" "$@"; }

is_up() { daemon_up "$PIDFILE" postgres "$PG_PORT"; }

init_cluster() {
  ensure_dirs "$PGDIR" "$RUN"
  if is_root; then
    require_traversable "$OSUSER" "$PGDIR"
    chown "$OSUSER:$OSUSER" "$PGDIR" "$RUN"
    touch "$LOG" && chown "$OSUSER:$OSUSER" "$LOG"
  fi
  chmod 700 "$PGDIR" "$RUN"
  if [ ! -s "$DATA/PG_VERSION" ]; then
    info "postgres: initdb $DATA"
    # Collation C: keys (device ids, metric names) compare bytewise, the same order as
    # C.UTF-8's code points without strcoll per comparison (storage/README.md, "Collation").
    pg "$PGBIN/initdb" -D "$DATA" -U postgres -E UTF8 --locale=C.UTF-8 --lc-collate=C \
      --auth-local=trust --auth-host=scram-sha-256 >>"$LOG" 2>&1 \
      || { tail -n 30 "$LOG" >&2; die "postgres: initdb failed (log: $LOG)"; }
    echo "include_if_exists = 'citysense.conf'" | pg tee -a "$DATA/postgresql.conf" >/dev/null
  fi
  # Rewritten on every start so edits here take effect on the next `up`.
  # fsync and synchronous_commit stay on: the tests check durability.
  pg tee "$DATA/citysense.conf" >/dev/null <<'EOF'
# Managed by deploy/local/postgres.sh - local edits are overwritten.
shared_buffers = 256MB
max_connections = 200
max_wal_size = 2GB
fsync = on
synchronous_commit = on
password_encryption = scram-sha-256
# Loaded at start (Debian's postgresql-15 ships it) so benchmarks can see where the server's
# time goes (loadtests/e2e.py); a database reads it after CREATE EXTENSION pg_stat_statements.
# It counts every top-level statement: a hash-table update per statement, small beside them.
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = top
EOF
  pg tee "$DATA/pg_hba.conf" >/dev/null <<'EOF'
# Managed by deploy/local/postgres.sh - local edits are overwritten.
# TYPE  DATABASE  USER      ADDRESS        METHOD
local   all       postgres                 trust
host    all       all       127.0.0.1/32   scram-sha-256
EOF
}

# Role `citysense` (LOGIN, CREATEDB) owning database `citysense`. The password
# travels in the environment and is read with psql's \getenv, so it never
# appears on a command line.
provision() {
  load_secrets
  CITYSENSE_PG_PROVISION_PW="$CITYSENSE_DB_PASSWORD" \
    "$PGBIN/psql" -X -q -h "$RUN" -p "$PG_PORT" -U postgres -d postgres \
    -v ON_ERROR_STOP=1 >/dev/null <<'EOF'
\getenv pw CITYSENSE_PG_PROVISION_PW
SELECT 'CREATE ROLE citysense' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'citysense') \gexec
ALTER ROLE citysense WITH LOGIN CREATEDB PASSWORD :'pw';
SELECT 'CREATE DATABASE citysense OWNER citysense' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'citysense') \gexec
ALTER DATABASE citysense OWNER TO citysense;
EOF
}

svc_up() {
  if is_up; then
    info "postgres already up"
    write_env_file
    return 0
  fi
  if pid=$(pid_alive "$PIDFILE" postgres); then
    die "postgres: our server (pid $pid) is running but not listening on port $PG_PORT (started with another port?); run '$0 down' first"
  fi
  require_port_free "$PG_PORT" postgres CITYSENSE_PG_PORT
  svc_install
  ensure_dirs
  init_cluster
  info "postgres: starting on 127.0.0.1:$PG_PORT"
  if ! pg "$PGBIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $RUN" start >/dev/null; then
    tail -n 30 "$LOG" >&2
    die "postgres: failed to start (log: $LOG)"
  fi
  local i
  for ((i = 0; i < 60; i++)); do
    "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 1 && break
    sleep 0.5
  done
  "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 1 \
    || { tail -n 30 "$LOG" >&2; die "postgres: not ready on port $PG_PORT"; }
  provision
  write_env_file
  info "postgres: up (port $PG_PORT)"
}

svc_down() {
  if ! pid_alive "$PIDFILE" postgres >/dev/null; then
    info "postgres already down"
    return 0
  fi
  info "postgres: stopping"
  pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null
}

svc_status() {
  if is_up; then info "postgres: up (port $PG_PORT)"; else info "postgres: down"; return 3; fi
}

dispatch postgres "${1:-}"
