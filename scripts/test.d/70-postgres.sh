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
cargo test -p qmail-dispatch --test postgres
# TLS to the database: a PostgreSQL with ssl=on; verify-full, an untrusted certificate, another host name
cargo test -p qmail-dispatch --test pg_tls
cargo test -p qmail-dispatcher --test forward
# run --queue and drain --queue: two dispatchers on one queue (each recipient once), a 4xx
# recipient retried until the lifetime, the drain summary, SIGTERM with transactions in flight,
# a dispatcher SIGKILLed mid-run, the database crashed mid-run, a DSN (about 20 s)
cargo test -p qmail-dispatcher --test pg_run
# the operator's commands with --queue (list, show, cat, summary, hold, release, delete, retry,
# requeue-failed; human and JSON), hold/release/delete against a running run --queue, SIGHUP
cargo test -p qmail-dispatcher --test pg_admin  # about 20 s
# fleet-wide relay limits through run --queue: 3 dispatchers at max_messages_per_second = 50 and
# max_connections = 2 (≤ 550 arrivals in any 10 s, ≤ 2 sessions at once, each message once), a
# SIGKILLed dispatcher's connection slot free at once, a stopping one giving back what waits for
# a slot, the per-process fallback while the database is down (about 25 s)
cargo test -p qmail-dispatcher --test pg_limits
# the torture run: four run --queue dispatchers SIGKILLed, SIGSTOPped past the lease and briefly
# at seeded random moments (QMAIL_TORTURE_SEED=N replays), the forwarder SIGKILLed once; 0 missing,
# duplicates only from the end-of-DATA window (about 25 s)
cargo test -p qmail-dispatcher --test pg_torture
# primary + two synchronous standbys in three network namespaces, two run --queue dispatcher hosts
# and two forwarding web hosts; the primary SIGKILLed mid-run, then its host vanishing (link down);
# needs root (skips otherwise; about 60 s)
cargo test -p qmail-dispatcher --test failover
