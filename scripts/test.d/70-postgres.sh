#!/usr/bin/env bash
# The PostgreSQL queue (issue 12) against a real PostgreSQL: qmail-dispatch/tests/postgres.rs
# (claims, fencing, aging, due times, requeue, chunked 1 GiB bodies with RssAnon measured,
# leases of SIGKILLed and SIGSTOPped owners, the fleet-wide rate limit over 3 processes,
# connection slots, the database going down) and dispatcher-bin/tests/forward.rs (queue init,
# forward, status --queue, SIGKILL between COMMIT and unlink, the database killed mid-run,
# inotify wake-up, a 1 GiB message forwarded in bounded memory) and dispatcher-bin/tests/pg_run.rs
# (run --queue, drain --queue). Each test starts its own
# private postgres (scripts/setup-postgres installs Debian's package). Skips loudly only when
# PostgreSQL cannot be installed. QMAIL_PG_BIG_MIB sets the large message (default 1024 here, 64 in a plain cargo test).
# pg_torture.rs: dispatchers SIGKILLed and SIGSTOPped at random. failover.rs: three
# network-namespace hosts (primary + two synchronous standbys), the primary SIGKILLed mid-run and
# a standby promoted, followed by run --queue dispatchers on two more hosts.
# About 2-3 minutes here (118-192 s measured on 2 shared cores), most of it the 1 GiB tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! scripts/setup-postgres; then
    echo "70-postgres: SKIPPED: PostgreSQL could not be installed (scripts/setup-postgres failed)" >&2
    exit 0
fi
if ! command -v ip >/dev/null; then
    apt-get -qq update >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get -qq install -y iproute2 >/dev/null || true
fi
export QMAIL_PG_REQUIRED=1
# One cargo invocation with the package set of 20-dispatcher.sh: the same features, so
# nothing is rebuilt (one `-p qmail-dispatcher` alone unifies features differently and
# relinks the binary); --no-fail-fast runs every binary and reports every failure.
cargo test --no-fail-fast -p qmail-dispatch -p qmail-dispatcher \
    --test postgres --test pg_tls --test forward --test pg_run --test pg_admin \
    --test pg_limits --test pg_torture --test failover
