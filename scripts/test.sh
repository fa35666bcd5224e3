#!/usr/bin/env bash
# Runs every test: builds the policy components (Rust -> wasm32-wasip2, and the JavaScript
# and Python examples) the policy tests load, installs Debian's nats-server for the cluster
# tests, installs PouchDB Server (npm) for the CouchDB tests when missing, starts the Swift
# all-in-one (with Keystone and Barbican) on 127.0.0.1 that the Swift and key tests need, runs
# `cargo test --workspace`, and stops Swift again, whatever happened.
#
#   bash scripts/test.sh [cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-policies.sh
# The JavaScript and Python example policies, built from source (npm and PyPI).
bash scripts/build-policy-examples.sh
# PouchDB Server: a real CouchDB-compatible server for the live-stats and post-restore tests.
if ! command -v pouchdb-server > /dev/null 2>&1; then
  echo "installing pouchdb-server (npm, about 2.5 minutes)"
  npm install -g --no-fund --no-audit pouchdb-server > /dev/null
fi
# Debian's nats-server: the cluster tests start their own brokers (scripts/nats.sh).
bash scripts/nats.sh install
# Small objects force real segmenting; a short token life forces re-authentication.
export SWIFT_PORT=${SWIFT_PORT:-18080}
# Swift's files (sqlite databases, objects, logs) live in RAM where there is a tmpfs: on a
# fresh CI machine the disk is still writing back the build when the tests start, and Swift's
# fsyncs stalled behind it long enough for 503s and lost tokens (CI, issue 14).
shm=/tmp
[[ -d /dev/shm && -w /dev/shm ]] && shm=/dev/shm
export SWIFT_SAIO_DIR=${SWIFT_SAIO_DIR:-$shm/couchvault-test-swift}
export SWIFT_MAX_FILE_SIZE=2097152
export SWIFT_TOKEN_LIFE=8
bash scripts/swift-aio.sh stop --purge > /dev/null 2>&1 || true
# On failure, Swift's own errors first (they go with the logs when Swift is purged).
swift_down() {
  local rc=$?
  if [[ $rc != 0 ]]; then
    grep -HE "ERROR|Timeout|locked|Traceback" "$SWIFT_SAIO_DIR"/log/*.log 2> /dev/null | tail -30 || true
  fi
  bash scripts/swift-aio.sh stop --purge > /dev/null 2>&1 || true
}
trap swift_down EXIT
bash scripts/swift-aio.sh start --barbican
export COUCHVAULT_TEST_SWIFT_ENV=$SWIFT_SAIO_DIR/env
cargo test --workspace "$@"
