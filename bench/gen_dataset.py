#!/usr/bin/env python3
"""Generate a CouchDB-shaped data directory for the benchmark.

Usage: gen_dataset.py SIZE_MIB DIR

Shard files hold append-only runs of JSON documents (compressible, with the variety of real
documents: ids, revisions, timestamps, numbers, free text) and, in some shards, incompressible
attachment blobs (about 15% of the total). Deterministic for a given size.
"""
import json
import os
import random
import sys

def main():
    size_mib = int(sys.argv[1])
    root = sys.argv[2]
    rng = random.Random(42)
    words = ["order", "customer", "invoice", "shipped", "pending", "paris", "berlin", "tokyo",
             "widget", "gadget", "blue", "green", "express", "standard", "refund", "priority",
             "warehouse", "north", "south", "discount", "loyalty", "gold", "silver", "bronze"]
    # A pool of distinct documents larger than zstd's level-3 window, so a document's
    # repeats are rarely within reach and the ratio stays like real data (3-6x).
    pool = []
    for i in range(60000):
        doc = {
            "_id": "%016x" % rng.getrandbits(64),
            "_rev": "%d-%032x" % (rng.randint(1, 9), rng.getrandbits(128)),
            "type": rng.choice(["order", "customer", "event"]),
            "created": "2026-%02d-%02dT%02d:%02d:%02dZ" % (rng.randint(1, 12), rng.randint(1, 28),
                                                         rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)),
            "amount": round(rng.random() * 10000, 2),
            "qty": rng.randint(1, 500),
            "tags": rng.sample(words, 3),
            "note": " ".join(rng.choice(words) for _ in range(rng.randint(5, 40))),
            "ref": "%08x" % rng.getrandbits(32),
        }
        pool.append(json.dumps(doc, separators=(",", ":")).encode() + b"\n")

    total = size_mib << 20
    attach_share = 0.15
    ranges = ["00000000-7fffffff", "80000000-ffffffff"]
    os.makedirs(root, exist_ok=True)
    # Node-level files, view indexes, then shards.
    write_docs(os.path.join(root, "_dbs.couch"), 1 << 20, pool, rng)
    write_docs(os.path.join(root, "_nodes.couch"), 64 << 10, pool, rng)
    written = (1 << 20) + (64 << 10)
    n = 0
    while written < total:
        db = "db%03d" % (n // 2)
        rng_name = ranges[n % 2]
        left = total - written
        size = min(left, rng.choice([2, 4, 8, 16, 32]) << 20)
        shard_dir = os.path.join(root, "shards", rng_name)
        os.makedirs(shard_dir, exist_ok=True)
        path = os.path.join(shard_dir, "%s.1795703450.couch" % db)
        if n % 3 == 0:
            blob = int(size * attach_share * 3)
            blob = min(blob, size)
            write_docs(path, size - blob, pool, rng)
            with open(path, "ab") as f:
                f.write(os.urandom(blob))
        else:
            write_docs(path, size, pool, rng)
        if n % 4 == 0:
            view_dir = os.path.join(root, ".shards", rng_name, "%s.1795703450_design" % db, "mrview")
            os.makedirs(view_dir, exist_ok=True)
            write_docs(os.path.join(view_dir, "%032x.view" % rng.getrandbits(128)), size // 8, pool, rng)
            written += size // 8
        written += size
        n += 1

def write_docs(path, size, pool, rng):
    out = []
    got = 0
    while got < size:
        d = pool[rng.randrange(len(pool))]
        out.append(d)
        got += len(d)
    data = b"".join(out)[:size]
    with open(path, "wb") as f:
        f.write(data)

if __name__ == "__main__":
    main()
