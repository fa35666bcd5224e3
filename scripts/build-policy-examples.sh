#!/usr/bin/env bash
# Builds the JavaScript and Python example policies (policies/examples/) into WebAssembly
# components against wit/, with their toolchains from the package registries:
# componentize-js from npm (into policies/examples/js/node_modules) and componentize-py from
# PyPI (into <target>/policy-tools/py). A component is rebuilt only when its sources or the
# WIT changed.
#   -> <target>/policies/{gfs_retention,standard_protection}_{js,py}.wasm, month_end_py.wasm
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="$(bash scripts/target-dir.sh)/policies"
PY_TOOLS="$(bash scripts/target-dir.sh)/policy-tools/py"
mkdir -p "$OUT"
# stale OUTPUT SOURCE...: whether OUTPUT is missing or older than a source or the WIT.
stale() {
  local out=$1; shift
  [[ -f $out ]] || return 0
  [[ -n $(find "$@" wit -newer "$out" -type f -print -quit) ]]
}

js=policies/examples/js
if stale "$OUT/gfs_retention_js.wasm" "$js"/*.js "$js"/build.mjs "$js"/package.json \
  || stale "$OUT/standard_protection_js.wasm" "$js"/*.js "$js"/build.mjs "$js"/package.json; then
  if [[ ! -d $js/node_modules/@bytecodealliance/componentize-js ]]; then
    echo "installing componentize-js (npm)"
    (cd "$js" && npm install --no-fund --no-audit --silent)
  fi
  (cd "$js" && node build.mjs "$OUT")
fi

py=policies/examples/python
if [[ ! -x $PY_TOOLS/bin/componentize-py ]]; then
  echo "installing componentize-py (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check --target "$PY_TOOLS" -r "$py/requirements.txt"
fi
for policy in gfs_retention:retention-policy standard_protection:protection-policy month_end:policy; do
  name=${policy%%:*} world=${policy#*:}
  stale "$OUT/${name}_py.wasm" "$py/$name" || continue
  started=$SECONDS
  PYTHONPATH="$PY_TOOLS" "$PY_TOOLS/bin/componentize-py" -d wit -w "$world" \
    componentize -p "$py/$name" app -o "$OUT/${name}_py.wasm" > /dev/null
  echo "${name}_py.wasm: $(stat -c %s "$OUT/${name}_py.wasm") bytes in $((SECONDS - started)) s"
done
