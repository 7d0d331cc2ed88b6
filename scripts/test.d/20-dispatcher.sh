#!/usr/bin/env bash
# The dispatcher's suites: the engine against real SMTP servers (qmail-dispatch/tests/*.rs)
# and the qmail-dispatcher binary
# (dispatcher-bin/tests: commands, two processes on one spool, SIGKILL and restart, latency).
# The SMTP servers are aiosmtpd (tests/smtp/smtp_server.py) from .venv, made by
# scripts/setup-python-env; TLS tests make their certificates with the openssl CLI; the Q-07
# Postfix test starts a private instance with scripts/postfix-instance (installs postfix).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x .venv/bin/python ] || scripts/setup-python-env
if ! command -v openssl >/dev/null; then
    apt-get update -qq && apt-get install -y -qq openssl >/dev/null
fi
scripts/install-fault-tools   # faketime, unshare/setpriv for dispatcher-bin/tests/faults.rs
export PATH="$PWD/.venv/bin:$PATH"
# the PostgreSQL tests among these binaries run in 70-postgres.sh (once, with PostgreSQL
# installed and required): here they skip even where PostgreSQL is installed
export QMAIL_PG_LATER=1
cargo test --no-fail-fast -p qmail-dispatch -p qmail-dispatcher --all-targets
cargo test -p qmail-dispatch --doc
