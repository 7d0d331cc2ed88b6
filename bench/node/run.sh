#!/usr/bin/env bash
# Node submit-latency benchmark: qmail (release build) beside nodemailer's pooled SMTP transport
# to a private local Postfix, same message, same run. Figures go to stdout (and bench/out/).
#
#   bench/node/run.sh [--n 2000] [--warmup 200] [--rounds 4] [--concurrency 16]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
(cd bindings/node && { [ -d node_modules ] || npm ci --no-audit --no-fund; } && npm run build >/dev/null)
work=$(mktemp -d /var/tmp/qmail-bench-node.XXXXXX)
chmod 755 "$work"   # Postfix daemons run as postfix/nobody and need to reach it
port=${QMAIL_BENCH_PORT:-2626}
cleanup() { scripts/postfix-instance stop "$work/postfix"; rm -rf "$work"; }
trap cleanup EXIT
scripts/postfix-instance start "$work/postfix" "$port"
mkdir -p bench/out
node bench/node/submit-latency.js --port "$port" --maildir "$work/postfix/Maildir/new" --spool "$work/spool" --json bench/out/node-submit-latency.json "$@"
