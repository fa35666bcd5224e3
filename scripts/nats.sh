#!/usr/bin/env bash
# A NATS server with JetStream on 127.0.0.1, the broker couchvault's cluster backups are
# coordinated through (docs/CLUSTERS.md). Debian's nats-server, installed when missing.
#
#   eval "$(bash scripts/nats.sh start NAME PORT)"   # prints NATS_URL=... NATS_DIR=... NATS_PID=...
#   NATS_MAX_PAYLOAD=2048 bash scripts/nats.sh start NAME PORT   # a smaller max_payload (kept
#                                                     # for the NAME's restarts)
#   bash scripts/nats.sh stop NAME [--purge]         # SIGTERM, waits; --purge deletes its files
#   bash scripts/nats.sh kill NAME                   # SIGKILL (a crashed broker; files kept)
#
# Each NAME has its own directory under ${NATS_BASE:-/tmp/couchvault-nats}/NAME (JetStream
# store, log, pid). Starting a NAME whose directory exists keeps its streams: a restart.
set -euo pipefail

base=${NATS_BASE:-/tmp/couchvault-nats}
die() {
  echo "nats.sh: $*" >&2
  exit 1
}

ensure_installed() {
  command -v nats-server > /dev/null 2>&1 && return
  [[ -x /usr/sbin/nats-server ]] && return
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server > /tmp/couchvault-nats-apt.log 2>&1; then
    apt-get update -qq >> /tmp/couchvault-nats-apt.log 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >> /tmp/couchvault-nats-apt.log 2>&1 ||
      die "apt-get install nats-server failed (log /tmp/couchvault-nats-apt.log)"
  fi
}

server() {
  if command -v nats-server > /dev/null 2>&1; then command -v nats-server; else echo /usr/sbin/nats-server; fi
}

pid_of() {
  local f="$base/$1/nats.pid"
  [[ -f $f ]] && kill -0 "$(cat "$f")" 2> /dev/null && cat "$f"
}

start() {
  local name=${1:?name} port=${2:?port}
  local dir="$base/$name"
  ensure_installed
  mkdir -p "$dir/store"
  # The readiness check reads this start's log alone.
  [[ -f $dir/nats.log ]] && mv "$dir/nats.log" "$dir/nats.log.prev"
  if pid=$(pid_of "$name"); then
    die "$name is already running (pid $pid)"
  fi
  [[ -n ${NATS_MAX_PAYLOAD:-} ]] && echo "max_payload: $NATS_MAX_PAYLOAD" > "$dir/nats.conf"
  local conf=()
  [[ -f $dir/nats.conf ]] && conf=(--config "$dir/nats.conf")
  "$(server)" "${conf[@]}" --addr 127.0.0.1 --port "$port" --jetstream --store_dir "$dir/store" \
    --server_name "$name" --pid "$dir/nats.pid" --log "$dir/nats.log" < /dev/null > /dev/null 2>&1 &
  local pid=$!
  # Ready when the port accepts connections and the log says JetStream is up.
  for _ in $(seq 1 100); do
    if grep -q "Server is ready" "$dir/nats.log" 2> /dev/null; then
      echo "NATS_URL=nats://127.0.0.1:$port"
      echo "NATS_DIR=$dir"
      echo "NATS_PID=$pid"
      return
    fi
    kill -0 "$pid" 2> /dev/null || die "nats-server exited at start (log $dir/nats.log)"
    sleep 0.05
  done
  kill "$pid" 2> /dev/null || true
  die "nats-server not ready after 5 s (log $dir/nats.log)"
}

stop() {
  local name=${1:?name} purge=${2:-}
  local pid
  if pid=$(pid_of "$name"); then
    kill "$pid"
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2> /dev/null || break
      sleep 0.05
    done
    kill -9 "$pid" 2> /dev/null || true
  fi
  [[ $purge == --purge ]] && rm -rf "${base:?}/$name"
  return 0
}

case ${1:-} in
  start) start "${2:-}" "${3:-}" ;;
  stop) stop "${2:-}" "${3:-}" ;;
  kill)
    pid=$(pid_of "${2:?name}") || die "${2} is not running"
    kill -9 "$pid"
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2> /dev/null || break
      sleep 0.05
    done
    ;;
  install) ensure_installed ;;
  *) sed -n '2,10p' "$0" >&2 && exit 2 ;;
esac
