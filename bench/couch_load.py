#!/usr/bin/env python3
"""Loads a real CouchDB with documents and attachments through _bulk_docs (benchmark B7).

    couch_load.py URL DBS MIB ROUND   fill DBS databases with about MIB MiB in all (ROUND 0),
                                      or append about MIB MiB more (ROUND n > 0)

Documents are JSON bodies with one inline attachment each (application/octet-stream, half-random
bytes that compress about 2x, like the documents of the other benchmarks). Ids carry the round,
so every round adds new documents. Only 127.0.0.1.
"""
import base64
import json
import random
import sys
import urllib.request

url, dbs, mib, rnd = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
assert url.startswith("http://127.0.0.1:") or url.startswith("http://localhost:"), url
auth = "Basic " + base64.b64encode(b"admin:password").decode()
ATT = 48 << 10
BATCH = 64


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method)
    req.add_header("Authorization", auth)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read() or b"null")


rng = random.Random(rnd * 7919 + 1)
per_db = max(1, int(mib * (1 << 20) / ATT / dbs))
for d in range(dbs):
    name = f"bench{d}"
    if rnd == 0:
        call("PUT", f"/{name}?q=2")
    for start in range(0, per_db, BATCH):
        docs = []
        for i in range(start, min(per_db, start + BATCH)):
            raw = bytes(0x61 + (rng.getrandbits(4)) for _ in range(ATT // 4)) * 4
            docs.append({
                "_id": f"r{rnd:03}-{i:07}",
                "round": rnd,
                "n": i,
                "text": "".join(rng.choice("abcdefghij ") for _ in range(200)),
                "_attachments": {"blob": {"content_type": "application/octet-stream",
                                          "data": base64.b64encode(raw).decode()}},
            })
        res = call("POST", f"/{name}/_bulk_docs", {"docs": docs})
        bad = [r for r in res if "error" in r]
        assert not bad, bad[:3]
