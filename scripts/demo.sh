#!/usr/bin/env bash
# A real backup and restore of the bundled CouchDB 3.5 fixture on the embedded defaults
# (local store and key ring under ./couchvault-data/ of a scratch directory).
#
#   bash scripts/demo.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
(cd "$ROOT" && cargo build --release --quiet)
BIN="$(bash "$ROOT/scripts/target-dir.sh")/release/couchvault"
WORK=${DEMO_DIR:-$(mktemp -d /tmp/couchvault-demo.XXXXXX)}
cd "$WORK"
tar xzf "$ROOT/tests/fixtures/couchdb-3-datadir.tar.gz"     # -> ./data, a CouchDB data directory

echo "== backup create"
"$BIN" backup create --instance demo --data-dir data --tag origin=demo
ID=$("$BIN" --json backup list --instance demo | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["backup_id"])')
echo "== backup list"
"$BIN" backup list
echo "== backup verify"
"$BIN" backup verify "$ID"
echo "== restore"
"$BIN" restore "$ID" --to restored
diff -r --exclude=.delete data restored
python3 - "$ROOT/tests/fixtures/couchdb-3-datadir.json" <<'PY'
import hashlib, json, sys
files = json.load(open(sys.argv[1]))["files"]
for f in files:
    path = "restored/" + f["path"][len("data/"):]
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == f["sha256"], path
print(f"all {len(files)} restored files match the fixture's SHA-256 checksums")
PY
echo "demo done in $WORK (key ring: $WORK/couchvault-data/keyring.toml)"
