#!/usr/bin/env bash
# B4: couchvault backup to a loopback Swift vs one `curl -T` of the same stored bytes to the
# same Swift, printed as a throughput ratio measured in one run. Not a test.
#
#   bash bench/swift.sh [SIZE_MIB]     (default 512)
#
# Starts its own Swift all-in-one on port 28080 (no object size limit below 5 GiB) and stops it.
set -euo pipefail
SIZE=${1:-512}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$(bash "$ROOT/scripts/target-dir.sh")/release/couchvault"
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/couchvault-bench-swift.XXXXXX")
export SWIFT_PORT=28080 SWIFT_SAIO_DIR=$W/swift
cleanup() { bash "$ROOT/scripts/swift-aio.sh" stop --purge > /dev/null 2>&1 || true; rm -rf "$W"; }
trap cleanup EXIT

(cd "$ROOT" && cargo build --release --quiet --bin couchvault --example swift_upload)
bash "$ROOT/scripts/swift-aio.sh" start > /dev/null
# shellcheck disable=SC1091
source "$SWIFT_SAIO_DIR/env"
export ST_AUTH=$SWIFT_AUTH_URL ST_USER=$SWIFT_USER ST_KEY=$SWIFT_KEY
echo "generating ${SIZE} MiB of CouchDB-shaped data ..."
python3 "$ROOT/bench/gen_dataset.py" "$SIZE" "$W/data"
find "$W/data" -type f -exec cat {} + > /dev/null

t0=$(date +%s.%N)
(cd "$W" && "$BIN" --store swift://bench backup create --instance b --data-dir "$W/data" --allow-incomplete > /dev/null 2>&1)
t1=$(date +%s.%N)
ID=$(cd "$W" && "$BIN" --store swift://bench --json backup list | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["backup_id"])')
STORED=$(cd "$W" && "$BIN" --store swift://bench --json backup show "$ID" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["size"])')

# The same stored bytes, fetched back, then sent with one curl -T.
TOKEN=$(curl -s -D - -o /dev/null -H "X-Auth-User: $ST_USER" -H "X-Auth-Key: $ST_KEY" "$ST_AUTH" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-auth-token"{print $2}')
curl -s -o "$W/stream.bin" -H "X-Auth-Token: $TOKEN" "$SWIFT_STORAGE_URL/bench-default/b/$ID/data"
[[ $(stat -c %s "$W/stream.bin") == "$STORED" ]] || { echo "fetched stream has the wrong size" >&2; exit 1; }
curl -s -o /dev/null -X PUT -H "X-Auth-Token: $TOKEN" "$SWIFT_STORAGE_URL/curlbench"
t2=$(date +%s.%N)
code=$(curl -s -o /dev/null -w '%{http_code}' -T "$W/stream.bin" -H "X-Auth-Token: $TOKEN" "$SWIFT_STORAGE_URL/curlbench/stream")
t3=$(date +%s.%N)
[[ $code == 201 ]] || { echo "curl -T answered $code" >&2; exit 1; }
# The store's upload path alone (segments in flight, MD5/ETag checks, SLO manifest).
t4=$(date +%s.%N)
"$(bash "$ROOT/scripts/target-dir.sh")/release/examples/swift_upload" "$W/stream.bin" storebench stream > /dev/null
t5=$(date +%s.%N)
# The same backup to the local store: the engine's own time (compression and encryption).
t6=$(date +%s.%N)
(cd "$W" && "$BIN" --store "file://$W/local" backup create --instance b --data-dir "$W/data" --allow-incomplete > /dev/null 2>&1)
t7=$(date +%s.%N)

python3 - "$t0" "$t1" "$t2" "$t3" "$t4" "$t5" "$t6" "$t7" "$STORED" "$SIZE" << 'PY'
import sys
t0, t1, t2, t3, t4, t5, t6, t7, stored, size = map(float, sys.argv[1:])
cv, curl, up, local = t1 - t0, t3 - t2, t5 - t4, t7 - t6
print(f"couchvault backup of {size:.0f} MiB to Swift: {cv:.2f} s, {stored/2**20:.0f} MiB stored ({stored/2**20/cv:.0f} MiB/s of stored bytes)")
print(f"curl -T of the same {stored/2**20:.0f} MiB:        {curl:.2f} s ({stored/2**20/curl:.0f} MiB/s)")
print(f"couchvault's Swift upload path alone, same bytes: {up:.2f} s ({stored/2**20/up:.0f} MiB/s)")
print(f"couchvault backup of the same data to the local store: {local:.2f} s")
print(f"B4 end to end: couchvault backup / curl -T throughput = {curl/cv:.2f}  (target >= 0.8)")
print(f"B4 upload path: couchvault store upload / curl -T throughput = {curl/up:.2f}")
print(f"   Swift's share of the backup: {cv:.2f} s to Swift vs {local:.2f} s to local disk")
PY
