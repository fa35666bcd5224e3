#!/usr/bin/env bash
# Builds the default policies in policies/ and the test suite's hostile policy as
# WebAssembly components (wasm32-wasip2), adding the rustup target when it is missing,
# and copies each component, found by cargo's own artifact report (wherever
# CARGO_TARGET_DIR puts it), to the workspace's target directory:
#   -> <target>/policies/<name>.wasm   (<target>: bash scripts/target-dir.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup target list --installed 2> /dev/null | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
OUT="$(bash scripts/target-dir.sh)/policies"
mkdir -p "$OUT"
for crate in policies/gfs-retention policies/standard-protection tests/policies/hostile; do
  (cd "$crate" && cargo build --release --locked --target wasm32-wasip2 \
    --message-format=json-render-diagnostics) \
    | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact":
        print("\n".join(f for f in m.get("filenames", []) if f.endswith(".wasm")))
' \
    | while read -r wasm; do
      [ -n "$wasm" ] && cp "$wasm" "$OUT/"
    done
done
ls -l "$OUT"/*.wasm
