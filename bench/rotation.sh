#!/usr/bin/env bash
# B9: key rotation of N backups (default 1000) on a loopback Swift: time per backup beside
# reading every backup's metadata (the least a rotation must do), store calls by kind and
# every data object's ETag before and after. Not a test.
#
#   bash bench/rotation.sh [N]
#
# Starts its own Swift all-in-one on port 28080 and stops it.
set -euo pipefail
N=${1:-1000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/couchvault-bench-rotation.XXXXXX")
export SWIFT_PORT=28080 SWIFT_SAIO_DIR=$W/swift
cleanup() { bash "$ROOT/scripts/swift-aio.sh" stop --purge > /dev/null 2>&1 || true; rm -rf "$W"; }
trap cleanup EXIT

(cd "$ROOT" && cargo build --release --quiet --example rotation_bench)
bash "$ROOT/scripts/swift-aio.sh" start > /dev/null
# shellcheck disable=SC1091
source "$SWIFT_SAIO_DIR/env"
export ST_AUTH=$SWIFT_AUTH_URL ST_USER=$SWIFT_USER ST_KEY=$SWIFT_KEY
"$(bash "$ROOT/scripts/target-dir.sh")/release/examples/rotation_bench" "$N"
