#!/usr/bin/env bash
# A throw-away PostgreSQL (Debian's server binaries) in a temporary data directory on a free
# loopback port, for tests and the demo.
#
#   hack/postgres.sh start [DIR] [--watch-pid PID]   start; prints `export CARERIX_TEST_POSTGRES_URL=...`
#   hack/postgres.sh stop  [DIR]                     stop it and remove DIR
#
# DIR defaults to $POSTGRES_DIR or /tmp/carerix-operator-pg. PostgreSQL refuses to run as root, so
# when run as root the server runs as the `postgres` user. With --watch-pid it stops when PID exits.
set -euo pipefail

cmd="${1:-}"; shift || true
DIR="${POSTGRES_DIR:-/tmp/carerix-operator-pg}"
if [[ $# -gt 0 && "$1" != --* ]]; then DIR="$1"; shift; fi
log() { printf '[postgres] %s\n' "$*" >&2; }

bindir() {
  if command -v pg_config >/dev/null 2>&1 && [[ -x "$(pg_config --bindir)/initdb" ]]; then pg_config --bindir; return; fi
  local d; d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [[ -n "$d" ]] || { log "PostgreSQL server binaries not found: apt-get install postgresql"; exit 1; }
  echo "$d"
}

as_pg() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

url() { echo "postgres://carerix:carerix@127.0.0.1:$(cat "$DIR/port")/carerix"; }

stop() {
  if [[ -f "$DIR/data/postmaster.pid" ]]; then
    as_pg "$(bindir)/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  [[ -f "$DIR/watcher.pid" ]] && kill "$(cat "$DIR/watcher.pid")" 2>/dev/null || true
  rm -rf "$DIR"
}

start() {
  local watch_pid=""
  while [[ $# -gt 0 ]]; do case "$1" in --watch-pid) watch_pid=$2; shift 2;; *) log "unknown flag $1"; exit 2;; esac; done
  local bin; bin=$(bindir)
  if [[ -f "$DIR/port" ]] && "$bin/pg_isready" -q -h 127.0.0.1 -p "$(cat "$DIR/port")"; then
    log "already running in $DIR"; echo "export CARERIX_TEST_POSTGRES_URL=$(url)"; return
  fi
  [[ -d "$DIR" ]] && stop
  mkdir -p "$DIR/data"
  [[ $(id -u) -eq 0 ]] && chown -R postgres "$DIR" && chmod 755 "$DIR"
  local port; port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1]);s.close()')
  echo "$port" > "$DIR/port"
  printf 'carerix\n' > "$DIR/pwfile"; [[ $(id -u) -eq 0 ]] && chown postgres "$DIR/pwfile"
  as_pg "$bin/initdb" -D "$DIR/data" -U carerix --pwfile="$DIR/pwfile" -A scram-sha-256 --no-sync >"$DIR/initdb.log" 2>&1 \
    || { cat "$DIR/initdb.log" >&2; exit 1; }
  as_pg "$bin/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $port -k $DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null
  PGPASSWORD=carerix "$bin/createdb" -h 127.0.0.1 -p "$port" -U carerix carerix
  if [[ -n "$watch_pid" ]]; then
    ( trap '' HUP; while kill -0 "$watch_pid" 2>/dev/null; do sleep 1; done; POSTGRES_DIR="$DIR" "$0" stop "$DIR" ) \
      </dev/null >/dev/null 2>&1 &
    echo $! > "$DIR/watcher.pid"
  fi
  log "ready on 127.0.0.1:$port (data in $DIR/data)"
  echo "export CARERIX_TEST_POSTGRES_URL=$(url)"
}

case "$cmd" in
  start) start "$@" ;;
  stop) stop ;;
  *) sed -n '2,10p' "$0"; exit 2 ;;
esac
