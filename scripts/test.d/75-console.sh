#!/usr/bin/env bash
# The dispatcher's web console in a real browser: Debian's chromium (scripts/setup-chromium)
# driven by playwright-core (tests/console/package.json) against a real dispatcher and spool.
# Screenshots: target/console/*.png. Takes about 15 s once chromium is installed (about a minute to install it).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

if ! scripts/setup-chromium; then
    echo "75-console: SKIP: Debian's chromium cannot be installed here (apt-get failed)" >&2
    exit 0
fi
cargo build -q -p qmail-dispatcher --bin qmail-dispatcher --example bench_tool

cd tests/console
stamp=node_modules/.qmail-lock
if ! cmp -s package-lock.json "$stamp" 2>/dev/null; then
    npm ci --no-audit --no-fund
    cp package-lock.json "$stamp"
fi
export QMAIL_DISPATCHER="$CARGO_TARGET_DIR/debug/qmail-dispatcher"
export QMAIL_BENCH_TOOL="$CARGO_TARGET_DIR/debug/examples/bench_tool"
export QMAIL_CONSOLE_ARTIFACTS="$CARGO_TARGET_DIR/console"
mkdir -p "$QMAIL_CONSOLE_ARTIFACTS" && rm -f "$QMAIL_CONSOLE_ARTIFACTS"/*.png
npm test
echo "75-console: screenshots in $QMAIL_CONSOLE_ARTIFACTS"
