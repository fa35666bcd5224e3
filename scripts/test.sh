#!/usr/bin/env bash
# Runs every test: builds the policy components (Rust -> wasm32-wasip2) the policy tests
# load, installs PouchDB Server (npm) for the CouchDB tests when missing, starts the Swift
# all-in-one (with Keystone and Barbican) on 127.0.0.1 that the Swift and key tests need, runs
# `cargo test --workspace`, and stops Swift again, whatever happened.
#
#   bash scripts/test.sh [cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-policies.sh
# PouchDB Server: a real CouchDB-compatible server for the live-stats and post-restore tests.
if ! command -v pouchdb-server > /dev/null 2>&1; then
  echo "installing pouchdb-server (npm, about 2.5 minutes)"
  npm install -g --no-fund --no-audit pouchdb-server > /dev/null
fi
# Small objects force real segmenting; a short token life forces re-authentication.
export SWIFT_PORT=${SWIFT_PORT:-18080}
export SWIFT_SAIO_DIR=${SWIFT_SAIO_DIR:-/tmp/couchvault-test-swift}
export SWIFT_MAX_FILE_SIZE=2097152
export SWIFT_TOKEN_LIFE=8
bash scripts/swift-aio.sh stop --purge > /dev/null 2>&1 || true
trap 'bash scripts/swift-aio.sh stop --purge > /dev/null 2>&1 || true' EXIT
bash scripts/swift-aio.sh start --barbican
export COUCHVAULT_TEST_SWIFT_ENV=$SWIFT_SAIO_DIR/env
cargo test --workspace "$@"
