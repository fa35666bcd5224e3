#!/usr/bin/env bash
# Builds the default policies in policies/ and the test suite's hostile policy as
# WebAssembly components (wasm32-wasip2), adding the rustup target when it is missing.
#   -> policies/<name>/target/wasm32-wasip2/release/<name>.wasm
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup target list --installed 2> /dev/null | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
for crate in policies/gfs-retention policies/standard-protection tests/policies/hostile; do
  (cd "$crate" && cargo build --release --locked --target wasm32-wasip2 --quiet)
done
ls -l policies/*/target/wasm32-wasip2/release/*.wasm tests/policies/hostile/target/wasm32-wasip2/release/*.wasm
