#!/usr/bin/env bash
# Node binding (bindings/node, the `qmail` npm package): npm ci, build the addon (dev profile,
# into the shared target dir) with napi-rs, check that the committed index.js / index.d.ts are
# what the CLI generates, then run its node:test suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
cd bindings/node

# npm ci reinstalls node_modules from package-lock.json; skip it when the lock is unchanged
stamp=node_modules/.qmail-lock
if ! cmp -s package-lock.json "$stamp" 2>/dev/null; then
    npm ci --no-audit --no-fund
    cp package-lock.json "$stamp"
fi

# the generated loader and typings are committed: regenerate and compare
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
cp index.js index.d.ts "$gen/"
npx napi build --platform --js index.js --dts index.d.ts
for f in index.js index.d.ts; do
    if ! cmp -s "$f" "$gen/$f"; then
        diff -u "$gen/$f" "$f" | head -40 || true
        echo "bindings/node/$f is not what napi build generates: commit the regenerated file" >&2
        exit 1
    fi
done

npm test
