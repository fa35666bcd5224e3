#!/usr/bin/env bash
# Benchmark B7: incremental backups of a real CouchDB 3.5 node (../shared/couchdb) against a
# full backup and restic's second run, side by side in one run, printed as ratios. Not a test.
#
#   bash bench/incremental.sh [SIZE_MIB]   (default 1024; needs ~6x SIZE_MIB free in $BENCH_DIR)
#
# The node is loaded through _bulk_docs with attachments, backed up full, then about 1% new
# documents are appended to every database (CouchDB appends them to its files) and the new
# state is backed up: couchvault exact and fast incrementals, a couchvault full, restic's
# second run into the same repository. Then 7 rounds of 1% more, each an incremental, and a
# restore of that chain (full + 7 incrementals) against a restore of a full of the same data.
# Targets (issue 13): exact <= 0.25x full and <= 0.33x restic; fast <= 0.05x full; stored
# bytes <= 1.2x zstd -3 of the appended bytes and <= restic's added data; restore of the chain
# <= 1.3x the full's; peak RSS of an incremental no more than a full's.
set -euo pipefail
SIZE=${1:-1024}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
COUCH=$ROOT/../shared/couchdb/couch.sh
[ -x "$COUCH" ] || [ -f "$COUCH" ] || { echo "needs a real CouchDB at $COUCH"; exit 1; }
command -v restic > /dev/null || apt-get install -y restic > /dev/null
BIN="$(bash "$ROOT/scripts/target-dir.sh")/release/couchvault"
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/couchvault-b7.XXXXXX")
NODE=cvbench7
cleanup() { bash "$COUCH" rm "$NODE" > /dev/null 2>&1 || true; rm -rf "$W"; }
trap cleanup EXIT
(cd "$ROOT" && cargo build --release --quiet)

eval "$(bash "$COUCH" start "$NODE" 15984 cvb7@127.0.0.1)"
DATA=$COUCH_DATA
echo "loading ${SIZE} MiB into 4 databases of a real CouchDB 3.5 node ($COUCHDB_URL) ..."
python3 "$ROOT/bench/couch_load.py" "$COUCHDB_URL" 4 "$SIZE" 0
sleep 2
echo "  data dir: $(du -sm "$DATA" | cut -f1) MiB"
warm() { find "$1" -type f -exec cat {} + > /dev/null; }
cv() { (cd "$W" && "$BIN" --store "file://$W/store" "$@"); }
cv backup list > /dev/null 2>&1   # first use: creates the key ring
export RESTIC_REPOSITORY=$W/restic RESTIC_PASSWORD=bench
restic init -q

# timed NAME CMD: wall seconds and peak RSS (KiB) of one run
declare -A WALL RSS
timed() {
  local name=$1 cmd=$2
  /usr/bin/time -f "%e %M" -o "$W/time" bash -c "$cmd" > "$W/$name.out"
  read -r WALL[$name] RSS[$name] < "$W/time"
  printf '  %-26s %8.2f s  %6d MiB peak RSS\n' "$name" "${WALL[$name]}" "$(( ${RSS[$name]} / 1024 ))"
}
create() { echo "cd $W && $BIN --store file://$W/store --json backup create --data-dir $DATA $*"; }
last_id() { cv --json backup list --instance "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["backup_id"])'; }

echo "first backups (not compared):"
warm "$DATA"
timed full0 "$(create --instance node)"
timed restic_first "restic backup -q --json $DATA"
FULL0=$(last_id node)
cv --json backup show "$FULL0" > "$W/full0.json"

echo "appending about 1% new documents to every database ..."
python3 "$ROOT/bench/couch_load.py" "$COUCHDB_URL" 4 "$(python3 -c "print($SIZE/100)")" 1
sleep 2
# What CouchDB appended: each file's bytes past its size at the full, compressed as couchvault would.
python3 - "$W/full0.json" "$DATA" > "$W/appended" <<'PY'
import json, os, sys
meta = json.load(open(sys.argv[1])); data = sys.argv[2]
for f in meta["files"]:
    if not f["path"].startswith("data/"):
        continue
    p = os.path.join(data, f["path"][5:])
    if os.path.exists(p) and os.path.getsize(p) > f["size"]:
        with open(p, "rb") as fh:
            fh.seek(f["size"]); sys.stdout.buffer.write(fh.read())
PY
APPENDED=$(stat -c %s "$W/appended")
APPENDED_ZSTD=$(zstd -q -3 -c "$W/appended" | wc -c)

echo "backups of the new state (data in page cache):"
warm "$DATA"
timed exact "$(create --instance node --incremental)"
EXACT=$(last_id node)
EXACT_STORED=$(cv --json backup show "$EXACT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["size"])')
cv backup delete "$EXACT" > /dev/null
warm "$DATA"
timed fast "$(create --instance node --incremental --fast)"
FAST=$(last_id node)
cv backup delete "$FAST" > /dev/null
warm "$DATA"
timed full "$(create --instance fullcmp)"
warm "$DATA"
timed restic_second "restic backup --json $DATA"
RESTIC_ADDED=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    m = json.loads(l)
    if m.get("message_type") == "summary": print(m.get("data_added_packed", m["data_added"]))' "$W/restic_second.out")

echo "7 more rounds of about 1%, an incremental each:"
timed inc1 "$(create --instance node --incremental)"
for r in 2 3 4 5 6 7; do
  python3 "$ROOT/bench/couch_load.py" "$COUCHDB_URL" 4 "$(python3 -c "print($SIZE/100)")" "$r"
  sleep 1
  timed "inc$r" "$(create --instance node --incremental)"
done
CHAIN=$(last_id node)
timed full_final "$(create --instance final)"
FINAL=$(last_id final)
cat > "$W/nosync.toml" <<CFG
couchvault_config = 1
store = "file://$W/store"
keyring = "$W/couchvault-data/keyring.toml"
[restore]
sync = false
CFG
echo "restores (no flush; store in page cache; each twice, the second counts):"
for run in 1 2; do
  rm -rf "$W/r-chain" "$W/r-full"; warm "$W/store"
  timed restore_chain "cd $W && $BIN --config $W/nosync.toml restore $CHAIN --to $W/r-chain"
  rm -rf "$W/r-full"; warm "$W/store"
  timed restore_full "cd $W && $BIN --config $W/nosync.toml restore $FINAL --to $W/r-full"
done
diff -r "$W/r-chain" "$W/r-full" > /dev/null && echo "  (the chain's restore is identical to the full's)"

ratio() { python3 -c "print(f'{$1/$2:.3f}')"; }
echo
echo "B7 results (${SIZE} MiB node, about 1% appended to every database):"
echo "  appended bytes $APPENDED, zstd -3 of them $APPENDED_ZSTD; exact incremental stored $EXACT_STORED; restic added $RESTIC_ADDED"
echo "  exact incremental / full backup          $(ratio "${WALL[exact]}" "${WALL[full]}")   (target <= 0.25)"
echo "  exact incremental / restic second run    $(ratio "${WALL[exact]}" "${WALL[restic_second]}")   (target <= 0.33)"
echo "  fast incremental / full backup           $(ratio "${WALL[fast]}" "${WALL[full]}")   (target <= 0.05)"
echo "  stored / zstd of the appended bytes      $(ratio "$EXACT_STORED" "$APPENDED_ZSTD")   (target <= 1.2)"
echo "  stored / restic's added data             $(ratio "$EXACT_STORED" "$RESTIC_ADDED")   (target <= 1.0)"
echo "  restore full+7 incrementals / full       $(ratio "${WALL[restore_chain]}" "${WALL[restore_full]}")   (target <= 1.3)"
echo "  peak RSS exact incremental / full        $(ratio "${RSS[exact]}" "${RSS[full]}")   (target <= 1.0)"
