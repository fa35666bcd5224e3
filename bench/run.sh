#!/usr/bin/env bash
# couchvault benchmark: backup and restore against the shell pipelines they replace, run
# side by side on the same data in page cache, printed as ratios. Not a test.
#
#   bash bench/run.sh [SIZE_MIB] [synthetic|couchdb]
#                                     (default 1024 synthetic; needs ~3x SIZE_MIB free in $BENCH_DIR)
#     synthetic: bench/gen_dataset.py, CouchDB-shaped files (zstd -3 compresses them 2.7x)
#     couchdb:   bench/couch_dataset.sh, a real CouchDB 3.5 node (../shared/couchdb) filled through
#                its API: 5 databases, JPEG-like and gzip-stored text attachments, old revisions,
#                view indexes (zstd -3 compresses it about 1.1x)
#   BASELINE_BIN=/path/to/older/couchvault bash bench/run.sh   also times that build's backup and
#                                     restore in the same run, printed as new/baseline ratios
#   BENCH_DATA=/path/to/data bash bench/run.sh SIZE KIND   uses that data set (made by
#                                     gen_dataset.py or couch_dataset.sh) instead of generating one
#
# Targets (PRODUCT.md, issue 18): B1 backup <= 1.0x `tar | zstd -3 -T0 | openssl enc -aes-256-ctr`
# and >= 10x faster than Trove's `tar | gzip | openssl enc -aes-256-cbc`; B2 restore, durable
# (default), <= 1.0x `openssl enc -d | zstd -d | tar -x` then `sync`, and with restore.sync = false
# <= 0.9x the pipeline alone; B3 peak RSS <= 32 MiB for a backup and a restore, flat with size.
set -euo pipefail
SIZE=${1:-1024}
KIND=${2:-synthetic}
RUNS=${RUNS:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$(bash "$ROOT/scripts/target-dir.sh")/release/couchvault"
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/couchvault-bench.XXXXXX")
trap 'rm -rf "$W"' EXIT

(cd "$ROOT" && cargo build --release --quiet)
echo "generating ${SIZE} MiB and 100 MiB $KIND data sets in $W ..."
case $KIND in
  synthetic) gen() { python3 "$ROOT/bench/gen_dataset.py" "$@"; } ;;
  couchdb) gen() { bash "$ROOT/bench/couch_dataset.sh" "$@"; } ;;
  *) echo "data set '$KIND': synthetic or couchdb" >&2; exit 2 ;;
esac
if [ -n "${BENCH_DATA:-}" ]; then
  ln -s "$(realpath "$BENCH_DATA")" "$W/data"   # a data set kept from an earlier run
else
  gen "$SIZE" "$W/data"
fi
gen 100 "$W/data100"
warm() { find -L "$1" -type f -exec cat {} + > /dev/null; }

KEY=$(openssl rand -hex 32); IV=$(openssl rand -hex 16)
cat > "$W/nosync.toml" <<CFG
couchvault_config = 1
store = "file://$W/store"
keyring = "$W/couchvault-data/keyring.toml"
[restore]
sync = false
CFG
cv() { (cd "$W" && "$BIN" --store "file://$W/store" "$@"); }
cv backup list > /dev/null 2>&1   # first use: creates the key ring

# measure NAME SETUP CMD -> median wall seconds and max RSS (KiB) over $RUNS runs. Setups end
# with `sync` where a run writes, so one run's writeback does not land in the next one's time.
declare -A WALL RSS
measure() {
  local name=$1 setup=$2 cmd=$3 runs=${4:-$RUNS} walls=() rsss=()
  for _ in $(seq "$runs"); do
    eval "$setup"
    /usr/bin/time -f "%e %M" -o "$W/time" bash -c "$cmd" > /dev/null
    read -r wall rss < "$W/time"
    walls+=("$wall"); rsss+=("$rss")
  done
  WALL[$name]=$(printf '%s\n' "${walls[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  RSS[$name]=$(printf '%s\n' "${rsss[@]}" | sort -n | tail -1)
  printf '  %-28s %8.2f s  %8d MiB peak RSS\n' "$name" "${WALL[$name]}" "$(( ${RSS[$name]} / 1024 ))"
}

echo "backup of ${SIZE} MiB (data in page cache, zstd level 3, encrypted):"
warm "$W/data"
measure couchvault_backup "sync; warm $W/data" \
  "cd $W && $BIN --store file://$W/store backup create --instance bench --data-dir $W/data --compression-level 3 --allow-incomplete"
if [ -n "${BASELINE_BIN:-}" ]; then
  measure baseline_backup "warm $W/data" \
    "cd $W && $BASELINE_BIN --store file://$W/store backup create --instance baseline --data-dir $W/data --compression-level 3 --allow-incomplete"
fi
measure tar_zstd_openssl "rm -f $W/base.enc; sync; warm $W/data" \
  "tar -cf - -C $W/data . | zstd -q -3 -T0 | openssl enc -aes-256-ctr -K $KEY -iv $IV > $W/base.enc"
measure trove_gzip_cbc "warm $W/data" \
  "tar -cf - -C $W/data . | gzip | openssl enc -aes-256-cbc -pbkdf2 -pass pass:bench > $W/trove.enc" 1

ID=$(cv --json backup list --instance bench | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["backup_id"])')
echo "restore of ${SIZE} MiB:"
measure couchvault_restore_nosync "rm -rf $W/r1; sync; warm $W/store" \
  "cd $W && $BIN --config $W/nosync.toml restore $ID --to $W/r1"
measure couchvault_restore_sync "rm -rf $W/r1; sync; warm $W/store" \
  "cd $W && $BIN --store file://$W/store restore $ID --to $W/r1"
measure openssl_zstd_tar "rm -rf $W/r2; mkdir -p $W/r2; sync; warm $W/base.enc" \
  "openssl enc -d -aes-256-ctr -K $KEY -iv $IV < $W/base.enc | zstd -q -d | tar -xf - -C $W/r2"
measure openssl_zstd_tar_sync "rm -rf $W/r2; mkdir -p $W/r2; sync; warm $W/base.enc" \
  "openssl enc -d -aes-256-ctr -K $KEY -iv $IV < $W/base.enc | zstd -q -d | tar -xf - -C $W/r2 && sync"
diff -r "$W/data" "$W/r1" > /dev/null && echo "  (restored tree identical to the source)"
if [ -n "${BASELINE_BIN:-}" ]; then
  BID=$(cv --json backup list --instance baseline | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["backup_id"])')
  measure baseline_restore_nosync "rm -rf $W/r3; warm $W/store" \
    "cd $W && $BASELINE_BIN --config $W/nosync.toml restore $BID --to $W/r3"
fi

echo "peak RSS of a backup at 100 MiB:"
warm "$W/data100"
measure couchvault_backup_100m "warm $W/data100" \
  "cd $W && $BIN --store file://$W/store backup create --instance small --data-dir $W/data100 --allow-incomplete" 1

r() { python3 -c "print(f'{$1/$2:.2f}')"; }
echo
echo "ratios (lower is better for couchvault/baseline):"
echo "  B1 couchvault backup / tar|zstd -3 -T0|openssl ctr   = $(r "${WALL[couchvault_backup]}" "${WALL[tar_zstd_openssl]}")  (target <= 1.0)"
echo "  B1 Trove tar|gzip|openssl cbc / couchvault backup    = $(r "${WALL[trove_gzip_cbc]}" "${WALL[couchvault_backup]}")  (target >= 10)"
echo "  B2 couchvault restore (default, syncfs) / openssl|zstd|tar && sync = $(r "${WALL[couchvault_restore_sync]}" "${WALL[openssl_zstd_tar_sync]}")  (target <= 1.0)"
echo "  B2 couchvault restore (restore.sync = false) / openssl|zstd|tar    = $(r "${WALL[couchvault_restore_nosync]}" "${WALL[openssl_zstd_tar]}")  (target <= 0.9)"
echo "  B3 peak RSS of a backup: $(( ${RSS[couchvault_backup_100m]} / 1024 )) MiB at 100 MiB, $(( ${RSS[couchvault_backup]} / 1024 )) MiB at ${SIZE} MiB (target <= 32, flat)"
echo "  B3 peak RSS of a restore: $(( ${RSS[couchvault_restore_sync]} / 1024 )) MiB (target <= 32)"
if [ -n "${BASELINE_BIN:-}" ]; then
  echo "  this build / BASELINE_BIN: backup $(r "${WALL[couchvault_backup]}" "${WALL[baseline_backup]}"), restore (no sync) $(r "${WALL[couchvault_restore_nosync]}" "${WALL[baseline_restore_nosync]}")"
fi
STORED=$(cv --json backup show "$ID" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["size"])')
echo "  stored bytes: couchvault $STORED, tar|zstd|openssl $(stat -c %s "$W/base.enc"), Trove $(stat -c %s "$W/trove.enc")"
