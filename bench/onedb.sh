#!/usr/bin/env bash
# B8: one database with attachments (about SIZE MiB) on a real CouchDB 3.5 (../shared/couchdb),
# side by side in one run: `restore --database` from a couchvault backup against `couchrestore`
# of a `couchbackup --attachments` file of the same database (npm @cloudant/couchbackup), time
# and peak RSS, into the same fresh node; and `backup verify --deep` against `backup verify` of
# the same backup. Not a test.
#
#   bash bench/onedb.sh [SIZE_MIB]     (default 300)
#
# Starts two CouchDB nodes on 127.0.0.1 (ports 12100 and 12110) and removes them after.
set -euo pipefail
SIZE=${1:-300}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SH=$ROOT/../shared/couchdb/couch.sh
BIN="$(bash "$ROOT/scripts/target-dir.sh")/release/couchvault"
W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/couchvault-bench-onedb.XXXXXX")
cleanup() { "$SH" rm cvb-src > /dev/null 2>&1 || true; "$SH" rm cvb-dst > /dev/null 2>&1 || true; rm -rf "$W"; }
trap cleanup EXIT

(cd "$ROOT" && cargo build --release --quiet --bin couchvault)
command -v couchbackup > /dev/null || npm install -g --no-fund --no-audit @cloudant/couchbackup > /dev/null
eval "$("$SH" start cvb-dst 12110 cvbdst@127.0.0.1)"
DST=$COUCHDB_URL
eval "$("$SH" start cvb-src 12100 cvbsrc@127.0.0.1)"
SRC=$COUCHDB_URL SRC_ETC=$COUCH_ETC
export COUCHDB_USER=admin COUCHDB_PASSWORD=password

echo "writing a ${SIZE} MiB database with attachments ..."
/usr/bin/python3 - "$SRC" "$SIZE" << 'PY'
import base64, json, os, sys, urllib.request
url, size = sys.argv[1], int(sys.argv[2])
auth = "Basic " + base64.b64encode(b"admin:password").decode()
def call(method, path, body=None):
    req = urllib.request.Request(url + path, method=method, data=body,
                                 headers={"Authorization": auth, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return r.read()
call("PUT", "/bench")
att = 100 << 10
n = size * (1 << 20) // att
for start in range(0, n, 20):
    docs = [{"_id": "doc-%06d" % i, "n": i, "tags": ["a", "b", i % 7], "text": "x" * 200,
             "_attachments": {"photo.jpg": {"content_type": "image/jpeg",
                                            "data": base64.b64encode(os.urandom(att)).decode()}}}
            for i in range(start, min(n, start + 20))]
    call("POST", "/bench/_bulk_docs", json.dumps({"docs": docs}).encode())
print("%d documents" % n)
PY

# Runs a command under /usr/bin/time; its seconds and peak RSS (KiB) land in $W/time.
t() { /usr/bin/time -f "%e %M %U %S" -o "$W/time" "$@"; }
# CPU seconds the target CouchDB (its Erlang VM) has used so far: what each restore costs it.
DST_PID=$(cat "${COUCH_INSTANCES:-/tmp/couchdb-instances}/cvb-dst/pid")
couch_cpu() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$DST_PID/stat"; }
cd "$W"
t "$BIN" --json backup create --instance b --couchdb-config "$SRC_ETC" > "$W/created.json"
read -r s_bk _ < "$W/time"
ID=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["backup_id"])' "$W/created.json")
CB_URL=${SRC/http:\/\//http://admin:password@}
t couchbackup --url "$CB_URL" --db bench --attachments --quiet --output "$W/cb.txt" 2> /dev/null
read -r s_cb _ < "$W/time"
curl -s -u admin:password -X PUT "$DST/cr" > /dev/null
DST_CB=${DST/http:\/\//http://admin:password@}
c0=$(couch_cpu)
t sh -c "couchrestore --url '$DST_CB' --db cr --attachments --quiet < '$W/cb.txt' 2> /dev/null"
read -r s_cr m_cr u_cr k_cr < "$W/time"
c1=$(couch_cpu)
t "$BIN" restore "$ID" --database bench --to-url "$DST" --as cv > /dev/null
read -r s_cv m_cv u_cv k_cv < "$W/time"
c2=$(couch_cpu)
echo "  CPU seconds (user+system) of each restore and of the target CouchDB meanwhile:"
echo "    couchrestore $(awk "BEGIN { print $u_cr + $k_cr }") s, CouchDB $(awk "BEGIN { print $c1 - $c0 }") s"
echo "    couchvault   $(awk "BEGIN { print $u_cv + $k_cv }") s, CouchDB $(awk "BEGIN { print $c2 - $c1 }") s"
t "$BIN" backup verify "$ID" > /dev/null
read -r s_v m_v _ < "$W/time"
t "$BIN" backup verify --deep "$ID" > /dev/null
read -r s_dv m_dv _ < "$W/time"
count() { curl -s -u admin:password "$DST/$1" | /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["doc_count"], d["sizes"]["external"])'; }

echo "B8, one database of ${SIZE} MiB with attachments, CouchDB 3.5 on 127.0.0.1"
echo "  couchvault backup of the node: ${s_bk} s; couchbackup --attachments of the database: ${s_cb} s"
echo "  target databases (doc_count, external bytes): couchrestore $(count cr); couchvault $(count cv)"
/usr/bin/python3 - "$s_cr" "$m_cr" "$s_cv" "$m_cv" "$s_v" "$m_v" "$s_dv" "$m_dv" << 'PY'
import sys
s_cr, m_cr, s_cv, m_cv, s_v, m_v, s_dv, m_dv = map(float, sys.argv[1:])
print("  couchrestore --attachments:    %7.2f s, peak RSS %6.1f MiB" % (s_cr, m_cr / 1024))
print("  couchvault restore --database: %7.2f s, peak RSS %6.1f MiB" % (s_cv, m_cv / 1024))
print("  restore --database speed-up:   %.2fx faster (target >= 3x); peak RSS %.2fx of couchrestore's (target <= 0.25x)" % (s_cr / s_cv, m_cv / m_cr))
print("  backup verify:                 %7.2f s, peak RSS %6.1f MiB" % (s_v, m_v / 1024))
print("  backup verify --deep:          %7.2f s, peak RSS %6.1f MiB; %.2fx verify (target <= 2x)" % (s_dv, m_dv / 1024, s_dv / s_v))
PY
