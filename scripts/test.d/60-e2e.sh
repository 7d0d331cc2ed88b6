#!/usr/bin/env bash
# End to end (issue 7): two web hosts' C, Python and Node initiators submit 3,000 messages (a
# third with attachments) into two spools; two `qmail-dispatcher run` processes serve both
# through two relays (a private Postfix, the aiosmtpd recorder); the recorder is stopped halfway
# and restarted. Asserts exactly once per recipient, headers and attachments as submitted,
# nothing left or failed. The harness is tests/e2e/run.py; it prints `N passed, N failed` and
# exits non-zero on any failure. Work dir: QMAIL_E2E_DIR (default $CARGO_TARGET_DIR/e2e).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
work=$(realpath -m "${QMAIL_E2E_DIR:-$CARGO_TARGET_DIR/e2e}")
step() { printf -- '-- e2e: %s\n' "$*"; }

# run.py stops everything it starts; this covers a harness killed before its own cleanup
trap 'scripts/postfix-instance stop "$work/postfix" >/dev/null 2>&1 || true' EXIT

step "building what it needs"
need=()
for tool in cc:gcc unshare:util-linux; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v node >/dev/null || { echo "e2e: node is required (the Node initiator)" >&2; exit 1; }
scripts/setup-python-env
scripts/setup-postfix
# the `dist` profile (release, stripped): what 80-deploy.sh packages, so it is built once
cargo build -q --profile dist -p qmail-dispatcher
export QMAIL_DISPATCHER=$CARGO_TARGET_DIR/dist/qmail-dispatcher
scripts/build-c >/dev/null
if ! .venv/bin/python -c 'import qmail' 2>/dev/null; then
    .venv/bin/python -m pip install -q --disable-pip-version-check ./bindings/python
fi
( cd bindings/node && { [ -d node_modules ] || npm ci --silent --no-audit --no-fund; } \
    && { ls qmail.*.node >/dev/null 2>&1 || npm run -s build >/dev/null; } )

step "running tests/e2e/run.py (work dir $work)"
.venv/bin/python tests/e2e/run.py --workdir "$work"
