#!/usr/bin/env bash
# Prints the workspace's target directory as cargo reports it (it honours
# CARGO_TARGET_DIR, .cargo/config.toml and the like), so scripts never assume ./target.
#   TARGET=$(bash scripts/target-dir.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --format-version 1 --no-deps --offline 2> /dev/null \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])' \
  || cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
