#!/usr/bin/env bash
# PostgreSQL queue benchmarks (issue 12; not timed tests). Prints the figures and writes them to
# bench/out/postgres.txt. Needs root (or the postgres user's binaries runnable by you) and
# installs Debian's postgresql through scripts/setup-postgres.
#
#   bench/postgres/run.sh
#
# Everything on this machine, in one run, against one private PostgreSQL (durable: fsync on,
# synchronous_commit on) on 127.0.0.1, BENCH_N messages of 2 KiB (default 20000) from durable
# spools:
#   anchor     `qmail-dispatcher drain` of a directory spool with no relay (claim, outbox
#              write, settle): the directory's claim+settle rate
#   forward    `qmail-dispatcher forward --drain`: local spool → queue, up to 64 per transaction
#   claim      claim (batches of BENCH_BATCH, default 50) + read body + settle Delivered with
#              BENCH_THREADS threads (default 16, the dispatcher bench's workers): qmail-dispatch/examples/pg_bench.rs
#   status     `qmail-dispatcher status --queue` over BENCH_DEEP rows (default 1000000)
# Ratios are PostgreSQL / directory anchor.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
export QMAIL_LOG=${QMAIL_LOG:-warn}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
N=${BENCH_N:-20000}
DEEP=${BENCH_DEEP:-1000000}
THREADS=${BENCH_THREADS:-16}
BATCH=${BENCH_BATCH:-50}
out=$root/bench/out
mkdir -p "$out"
report=$out/postgres.txt
: > "$report"
say() { echo "$*" | tee -a "$report"; }
now() { date +%s.%N; }
rate() { python3 -c "print(f'{$1/($3-$2):.0f}')"; }

scripts/setup-postgres
cargo build -q --release -p qmail-dispatcher --bins --examples
cargo build -q --release -p qmail-dispatch --example pg_bench
bin=$CARGO_TARGET_DIR/release/qmail-dispatcher
tool=$CARGO_TARGET_DIR/release/examples/bench_tool
pgb=$CARGO_TARGET_DIR/release/examples/pg_bench
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
work=$(mktemp -d /tmp/qmail-pgbench.XXXXXX)
chmod 755 "$work"
as_pg=()
if [ "$(id -u)" = 0 ]; then as_pg=(setpriv --reuid=postgres --regid=postgres --clear-groups --); fi
pgpid=
cleanup() {
    [ -n "$pgpid" ] && kill -INT "$pgpid" 2>/dev/null && wait "$pgpid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir "$work/pg"
[ "$(id -u)" = 0 ] && chown postgres: "$work/pg"
"${as_pg[@]}" "$pgbin/initdb" -D "$work/pg/data" -U qmail -A trust -E UTF8 --locale=C >/dev/null
"${as_pg[@]}" "$pgbin/postgres" -D "$work/pg/data" -p "$port" -c listen_addresses=127.0.0.1 \
    -c unix_socket_directories= -c shared_buffers=256MB -c max_connections=200 \
    >"$work/pg/log" 2>&1 &
pgpid=$!
url="postgres://qmail@127.0.0.1:$port/postgres"
for _ in $(seq 200); do "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$port" && break; sleep 0.05; done
"$bin" queue init --queue "$url" >/dev/null

say "# PostgreSQL queue vs directory spool, $N messages of 2 KiB, $(nproc) CPUs, PostgreSQL $(basename "$(dirname "$pgbin")")"
"$tool" fill "$work/dir" "$N" 2048 durable
t0=$(now); "$bin" drain --spool "$work/dir" >/dev/null; t1=$(now)
dir_rate=$(rate "$N" "$t0" "$t1")
say "anchor  directory drain (claim + outbox + settle): $dir_rate msg/s"

"$tool" fill "$work/web" "$N" 2048 durable
t0=$(now); "$bin" forward --drain --spool "$work/web" --queue "$url" >/dev/null; t1=$(now)
fwd_rate=$(rate "$N" "$t0" "$t1")
say "forward spool → queue (batches of up to 64 per transaction): $fwd_rate msg/s  ratio $(python3 -c "print(f'{$fwd_rate/$dir_rate:.2f}')")"

line=$("$pgb" claim "$url" "$THREADS" "$BATCH")
claim_rate=$(echo "$line" | sed -E 's/.*: ([0-9]+) msg\/s/\1/')
say "claim + body + settle ($THREADS threads, batches of $BATCH): $claim_rate msg/s  ratio $(python3 -c "print(f'{$claim_rate/$dir_rate:.2f}')")"

"$pgb" fill "$url" "$DEEP"
best=
for _ in 1 2 3; do
    t0=$(now); "$bin" status --queue "$url" >/dev/null; t1=$(now)
    ms=$(python3 -c "print(f'{($t1-$t0)*1000:.0f}')")
    if [ -z "$best" ] || [ "$ms" -lt "$best" ]; then best=$ms; fi
done
say "status over $DEEP + $N rows (whole command, best of 3): $best ms"
echo "written to $report"
