#!/usr/bin/env bash
# Python submit-latency benchmark: qmail (release build) beside smtplib sending the same 2 KiB
# message to a private local Postfix, same run. Figures go to stdout (and bench/out/).
#
#   bench/python/run.sh [--n 2000] [--warmup 200]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
scripts/setup-python-env
export PATH="$root/.venv/bin:$PATH"
# the documented install, release profile (scripts/test.d/40-python.sh installs a dev build)
python -m pip install -q --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps ./bindings/python
work=$(mktemp -d /var/tmp/qmail-bench-python.XXXXXX)
chmod 755 "$work"  # Postfix's own users must reach its data and queue directories
port=${QMAIL_BENCH_PORT:-2627}
cleanup() { scripts/postfix-instance stop "$work/postfix"; rm -rf "$work"; }
trap cleanup EXIT
scripts/postfix-instance start "$work/postfix" "$port"
mkdir -p bench/out
python bench/python/submit_latency.py --port "$port" --spool "$work/spool" --maildir "$work/postfix/Maildir/new" --json bench/out/python-submit-latency.json "$@"
