#!/usr/bin/env bash
# The dispatcher's web console in a real browser: Debian's chromium (scripts/setup-chromium)
# driven by playwright-core (tests/console/package.json) against real dispatchers.
# console.test.mjs: a directory spool. queue.test.mjs: the same console over a PostgreSQL queue
# (`run --queue`): a private postgres started as qmail-dispatch/tests/pg_common/mod.rs does
# (scripts/setup-postgres installs Debian's package; when it cannot, the queue test is skipped,
# loudly, and the spool test still runs), `queue init`, `forward --drain` of a filled spool, then
# hold/release/delete clicked in the console and each checked on the row (`show --json`).
# Screenshots: target/console/*.png (queue-*.png for the queue). Takes about 10 s once chromium
# and postgresql are installed (the queue test about 3 s of it; about a minute to install each).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

if ! scripts/setup-chromium; then
    echo "75-console: SKIP: Debian's chromium cannot be installed here (apt-get failed)" >&2
    exit 0
fi
if scripts/setup-postgres; then
    export QMAIL_PG_REQUIRED=1
else
    echo "75-console: SKIP: queue.test.mjs (the console over a PostgreSQL queue): PostgreSQL could not be installed (scripts/setup-postgres failed); console.test.mjs still runs" >&2
    export QMAIL_CONSOLE_PG=skip
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
