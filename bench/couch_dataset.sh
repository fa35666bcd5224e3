#!/usr/bin/env bash
# Builds a real CouchDB 3.5 data directory for the benchmarks with ../shared/couchdb/: five
# databases of about SIZE_MIB MiB in all, written through the HTTP API as an application would:
# about 86 documents per MiB (JSON bodies of ~1 KiB, kept snappy-compressed by CouchDB), one in
# ten with an attachment (three in five JPEG-like random bytes, two in five text that CouchDB
# stores gzip-encoded), a fifth of the documents updated once (old revisions stay in the
# append-only files until compaction), a design document per database with a view queried so
# its index files exist. The node is then stopped and its data directory moved to OUT_DIR.
#
#   bash bench/couch_dataset.sh [SIZE_MIB] OUT_DIR     (default 1536; ~1.3x SIZE_MIB free)
#
# Only 127.0.0.1 (port 12200). Not a test.
set -euo pipefail
SIZE=${1:-1536}
OUT=${2:?usage: couch_dataset.sh [SIZE_MIB] OUT_DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SH=$ROOT/../shared/couchdb/couch.sh
[[ -x $SH ]] || { echo "needs ../shared/couchdb/couch.sh (a real CouchDB 3.5)" >&2; exit 1; }
[[ ! -e $OUT ]] || { echo "$OUT exists: give a new directory" >&2; exit 1; }
trap '"$SH" rm cvb-data > /dev/null 2>&1 || true' EXIT
eval "$("$SH" start cvb-data 12200 cvbdata@127.0.0.1)"

started=$SECONDS
/usr/bin/python3 - "$COUCHDB_URL" "$SIZE" << 'PY'
import base64, json, os, random, sys, urllib.request

url, size = sys.argv[1], int(sys.argv[2])
assert url.startswith("http://127.0.0.1:"), url
auth = "Basic " + base64.b64encode(b"admin:password").decode()
rng = random.Random(18)


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method,
                                 headers={"Authorization": auth, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read() or b"null")


WORDS = ("invoice order customer shipment payment ledger account balance credit debit "
         "warehouse product quantity price discount region north south east west status "
         "pending approved rejected closed open review audit note comment total").split()
# Text attachments: a log-like corpus cut at random places, so each is different.
CORPUS = "\n".join(
    "%s %s %06d %s %.2f" % (rng.choice(WORDS), rng.choice(WORDS), i, " ".join(rng.choices(WORDS, k=8)),
                           rng.random() * 1e4)
    for i in range(40000)).encode()


def document(db, i):
    return {"_id": "%s-%08d" % (db, i), "type": rng.choice(WORDS), "n": i,
            "customer": {"name": " ".join(rng.choices(WORDS, k=2)), "id": rng.randrange(1 << 30),
                         "region": rng.choice(WORDS[16:20])},
            "lines": [{"sku": "SKU-%05d" % rng.randrange(99999), "qty": rng.randrange(1, 50),
                       "price": round(rng.random() * 500, 2)} for _ in range(rng.randrange(2, 9))],
            "notes": " ".join(rng.choices(WORDS, k=rng.randrange(10, 60))),
            "created": "2026-%02d-%02dT%02d:%02d:00Z" % (rng.randrange(1, 13), rng.randrange(1, 29),
                                                          rng.randrange(24), rng.randrange(60))}


def attachment():
    n = rng.randrange(40 << 10, 200 << 10)
    if rng.random() < 0.6:
        return "photo.jpg", "image/jpeg", os.urandom(n)
    start = rng.randrange(len(CORPUS) - n)
    return "report.txt", "text/plain", CORPUS[start:start + n]


dbs = ["orders", "customers", "inventory", "audit", "media"]
docs_total = size * 86
made = {db: 0 for db in dbs}
att_bytes = 0
for db in dbs:
    call("PUT", "/" + db)
    call("PUT", "/%s/_design/reports" % db, {"views": {"by_type": {
        "map": "function (doc) { if (doc.type) emit([doc.type, doc.n], doc.lines ? doc.lines.length : 0); }",
        "reduce": "_sum"}}})
per_db = docs_total // len(dbs)
batch = []
for i in range(per_db):
    for db in dbs:
        d = document(db, i)
        if i % 10 == 0:
            name, ctype, data = attachment()
            att_bytes += len(data)
            d["_attachments"] = {name: {"content_type": ctype, "data": base64.b64encode(data).decode()}}
        batch.append((db, d))
    if len(batch) >= 250 or i == per_db - 1:
        by_db = {}
        for db, d in batch:
            by_db.setdefault(db, []).append(d)
        for db, docs in by_db.items():
            for r in call("POST", "/%s/_bulk_docs" % db, {"docs": docs}):
                assert "rev" in r, r
            made[db] += len(docs)
        batch = []
# A fifth updated once: the old revisions stay in the files.
for db in dbs:
    ids = ["%s-%08d" % (db, i) for i in range(0, per_db, 5)]
    for k in range(0, len(ids), 500):
        rows = call("POST", "/%s/_all_docs" % db, {"keys": ids[k:k + 500]})["rows"]
        docs = [dict(document(db, 0), _id=r["id"], _rev=r["value"]["rev"], updated=True) for r in rows]
        call("POST", "/%s/_bulk_docs" % db, {"docs": docs})
    call("GET", "/%s/_design/reports/_view/by_type?group_level=1" % db)
print("%d databases, %d documents, about %d attachments (%d MiB of them)"
      % (len(dbs), sum(made.values()), sum(made.values()) // 10, att_bytes >> 20))
PY
echo "loaded in $((SECONDS - started)) s"
"$SH" stop cvb-data > /dev/null
mv "$COUCH_DATA" "$OUT"
du -sh "$OUT"
