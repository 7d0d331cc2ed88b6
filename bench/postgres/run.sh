#!/usr/bin/env bash
# PostgreSQL queue benchmarks (issue 12; not timed tests). Prints the figures and writes them to
# bench/out/postgres.txt. Needs root (or the postgres user's binaries runnable by you) and
# installs Debian's postgresql through scripts/setup-postgres.
#
#   bench/postgres/run.sh [all|e2e|split] (e2e: only the end-to-end section and the latency;
#                                           split: only the two halves of the end-to-end path)
#
# Everything on this machine, in one run, against one private PostgreSQL (durable: fsync on,
# synchronous_commit on) on 127.0.0.1, BENCH_N messages of 2 KiB (default 20000) from durable
# spools:
#   anchor     `qmail-dispatcher drain` of a directory spool with no relay (claim, outbox
#              write, settle): the directory's claim+settle rate
#   forward    `qmail-dispatcher forward --drain`: local spool → queue, up to 64 per transaction
#   claim      claim (batches of BENCH_BATCH, default 50) + read body + settle Delivered
#              (grouped, as the dispatcher does) with BENCH_THREADS threads (default 16, the
#              dispatcher bench's workers): qmail-dispatch/examples/pg_bench.rs
#   status     `qmail-dispatcher status --queue` over BENCH_DEEP rows (default 1000000), and
#              EXPLAIN ANALYZE of the claim statement at that depth (bench/out/postgres-claim-plan.txt)
# Ratios are PostgreSQL / directory anchor.
#
# End-to-end (issue 12's "How fast"), BENCH_E2E_N messages of 2 KiB (default 30000: a run of about 10 s; 10,000 took 3–4 s and varied by 25 %), durable,
# relayed to one Postfix smtp-sink on loopback (installed by scripts/setup-postfix):
#   e2e dir    `qmail-dispatcher drain` of a directory spool to the sink (BENCH_WORKERS workers,
#              default 16: its fastest here, 4: 11.4k, 8: 13.0-13.7k, 16: 14.2-14.6k,
#              32: 11.4-13.5k msg/s)
#   e2e pg     the steady-state services started together on a filled local spool: one
#              `forward` (not --drain) and 2 `run --queue` dispatchers to the same kind of sink,
#              BENCH_PG_WORKERS workers each (default 16: its fastest here, 4: 3.2-3.5k,
#              8: 3.8-5.2k, 16: 4.2-6.4k, 32: 4.2-5.4k msg/s; a queue worker also waits for
#              its settle's commit, so it needs more of them than a directory's); each side at
#              its own best, as an operator would run it; timed from their start until the
#              dispatchers' delivery log (written after the sink's 250) has N lines; ratio pg/dir
#              BENCH_E2E_ROUNDS=K (default 1) runs the two K times, alternating (the machine's
#              speed drifts between two back-to-back runs: the ratio of one pair moved
#              0.34-0.56), and prints every ratio and their median
#   split      (`split` only) the two halves of the queue's end-to-end path, each alone on the
#              machine, then the directory: `forward --drain` of BENCH_E2E_N messages into the
#              queue, then the 2 `run --queue` dispatchers delivering them from the queue;
#              BENCH_E2E_ROUNDS times. The pipeline of the two on 2 shared cores runs at
#              about 1 / (1/forward + 1/dispatch)
#   latency    idle submit → 250 through forwarder and queue: bench_tool latency (as in
#              bench/dispatcher/run.sh), 101 samples, p50/p90/max
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
export QMAIL_LOG=${QMAIL_LOG:-warn}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
only=${1:-all}
N=${BENCH_N:-20000}
DEEP=${BENCH_DEEP:-1000000}
THREADS=${BENCH_THREADS:-16}
E2E_N=${BENCH_E2E_N:-30000}
ROUNDS=${BENCH_E2E_ROUNDS:-1}
WORKERS=${BENCH_WORKERS:-16}
PG_WORKERS=${BENCH_PG_WORKERS:-16}
BATCH=${BENCH_BATCH:-50}
out=$root/bench/out
mkdir -p "$out"
report=$out/postgres.txt
: > "$report"
say() { echo "$*" | tee -a "$report"; }
now() { date +%s.%N; }
rate() { python3 -c "print(f'{$1/($3-$2):.0f}')"; }

scripts/setup-postgres
scripts/setup-postfix
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
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
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

say "# PostgreSQL queue vs directory spool, $N messages of 2 KiB, $(nproc) CPUs, PostgreSQL $(basename "$(dirname "$pgbin")"); load: $(uptime | sed 's/.*load average: //')"
if [ "$only" != e2e ]; then
"$tool" fill "$work/dir" "$N" 2048 durable
t0=$(now); "$bin" drain --spool "$work/dir" >/dev/null; t1=$(now)
dir_rate=$(rate "$N" "$t0" "$t1")
say "anchor  directory drain (claim + outbox + settle): $dir_rate msg/s"
fi

# ---- end-to-end to smtp-sink: directory drain vs forwarder + 2 queue dispatchers ----
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
lines() { if [ -f "$1" ]; then wc -l < "$1"; else echo 0; fi; }
sink_port=$(free_port)
smtp-sink -u nobody 127.0.0.1:"$sink_port" 1024 &
pids+=($!)
wait_port "$sink_port"
relay="smtp://127.0.0.1:$sink_port?tls=none&max_messages_per_connection=100000"
say "== end-to-end: $E2E_N messages of 2 KiB, durable, to smtp-sink on loopback (directory: $WORKERS workers; queue: 2 dispatchers × $PG_WORKERS); load: $(uptime | sed 's/.*load average: //')"
for i in 1 2; do
    cat > "$work/e2e-d$i.toml" <<EOF
workers = $PG_WORKERS
delivery_log = "$work/e2e.log"
[queue]
url = "$url"
[[relay]]
url = "$relay"
EOF
done
if [ "$only" = split ]; then
    for round in $(seq "$ROUNDS"); do
        [ "$ROUNDS" -gt 1 ] && say "-- round $round of $ROUNDS"
        "$tool" fill "$work/e2e-web" "$E2E_N" 2048 durable
        t0=$(now); "$bin" forward --drain --spool "$work/e2e-web" --queue "$url" >/dev/null; t1=$(now)
        fwd=$(rate "$E2E_N" "$t0" "$t1")
        base=$(lines "$work/e2e.log")
        t0=$(now)
        "$bin" --config "$work/e2e-d1.toml" run --queue "$url" >/dev/null &
        d1=$!; pids+=($d1)
        "$bin" --config "$work/e2e-d2.toml" run --queue "$url" >/dev/null &
        d2=$!; pids+=($d2)
        w=$(bench/postgres/wait_e2e.py "$work/e2e.log" "$((base + E2E_N))" "$work/e2e-web/ready" "$d1" "$d2") \
            || { echo "a dispatcher exited early" >&2; exit 1; }
        read -r _ t1 <<< "$w"
        kill "$d1" "$d2" 2>/dev/null || true; wait "$d1" "$d2" 2>/dev/null || true
        disp=$(rate "$E2E_N" "$t0" "$t1")
        "$tool" fill "$work/e2e-dir" "$E2E_N" 2048 durable
        t0=$(now); "$bin" --spool "$work/e2e-dir" --relay "$relay" --workers "$WORKERS" drain >/dev/null; t1=$(now)
        dir=$(rate "$E2E_N" "$t0" "$t1")
        rm -rf "$work/e2e-dir"
        say "split: forward --drain alone $fwd msg/s ($(python3 -c "print(f'{$fwd/$dir:.2f}')")× the directory); 2 × run --queue alone $disp msg/s ($(python3 -c "print(f'{$disp/$dir:.2f}')")×); pipeline bound 1/(1/f+1/d) $(python3 -c "print(f'{1/(1/$fwd+1/$disp):.0f}')") msg/s ($(python3 -c "print(f'{1/(1/$fwd+1/$disp)/$dir:.2f}')")×); directory drain $dir msg/s"
    done
    echo "written to $report"
    exit 0
fi
ratios=()
for round in $(seq "$ROUNDS"); do
    [ "$ROUNDS" -gt 1 ] && say "-- round $round of $ROUNDS"
    "$tool" fill "$work/e2e-dir" "$E2E_N" 2048 durable
    t0=$(now); "$bin" --spool "$work/e2e-dir" --relay "$relay" --workers "$WORKERS" drain >/dev/null; t1=$(now)
    e2e_dir=$(rate "$E2E_N" "$t0" "$t1")
    say "e2e directory: qmail-dispatcher drain → smtp-sink: $e2e_dir msg/s"
    rm -rf "$work/e2e-dir"

    "$tool" fill "$work/e2e-web" "$E2E_N" 2048 durable
    base=$(lines "$work/e2e.log")
    t0=$(now)
    "$bin" forward --spool "$work/e2e-web" --queue "$url" >/dev/null &
    fwd_pid=$!; pids+=($fwd_pid)
    "$bin" --config "$work/e2e-d1.toml" run --queue "$url" >/dev/null &
    d1=$!; pids+=($d1)
    "$bin" --config "$work/e2e-d2.toml" run --queue "$url" >/dev/null &
    d2=$!; pids+=($d2)
    # one quiet waiter (not a shell loop forking wc and ls every 20 ms beside the services)
    w=$(bench/postgres/wait_e2e.py "$work/e2e.log" "$((base + E2E_N))" "$work/e2e-web/ready" "$fwd_pid" "$d1" "$d2") \
        || { echo "a service exited early" >&2; exit 1; }
    read -r fwd_done t1 <<< "$w"
    e2e_pg=$(rate "$E2E_N" "$t0" "$t1")
    ratio=$(python3 -c "print(f'{$e2e_pg/$e2e_dir:.2f}')")
    ratios+=("$ratio")
    say "e2e PostgreSQL: forward + 2 × run --queue → smtp-sink: $e2e_pg msg/s  ratio pg/dir $ratio (target ≥ 0.5 and ≥ 3000 msg/s)"
    [ "$fwd_done" != 0.000000 ] && say "  (the forwarder had emptied the local spool after $(python3 -c "print(f'{$fwd_done-$t0:.2f}')") s of $(python3 -c "print(f'{$t1-$t0:.2f}')") s)"
    if [ "$round" -lt "$ROUNDS" ]; then
        for p in "$fwd_pid" "$d1" "$d2"; do kill "$p" 2>/dev/null || true; done
        for p in "$fwd_pid" "$d1" "$d2"; do wait "$p" 2>/dev/null || true; done
    fi
done
[ "$ROUNDS" -gt 1 ] && say "ratios pg/dir: ${ratios[*]}; median $(python3 -c "import statistics, sys; print(f'{statistics.median(map(float, sys.argv[1:])):.2f}')" "${ratios[@]}")"

sleep 1
r=$("$tool" latency "$work/e2e-web" "$work/e2e.log" 101)
say "idle submit → 250 through forwarder and queue: $r (target p50 ≤ 100 ms)"
for p in "$fwd_pid" "$d1" "$d2"; do kill "$p" 2>/dev/null || true; done
for p in "$fwd_pid" "$d1" "$d2"; do wait "$p" 2>/dev/null || true; done

[ "$only" = e2e ] && { echo "written to $report"; exit 0; }
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

# the claim statement's plan at this depth (inside a transaction that is rolled back): it
# must walk the partial index message_ready, not the table
plan=$("$pgbin/psql" -qtA "$url" <<'SQL'
BEGIN;
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON)
UPDATE qmail.message m SET state = 'active', owner = 'explain', claims = m.claims + 1,
    claimed_at = now()
FROM (SELECT id FROM qmail.message WHERE state = 'ready' ORDER BY rank, id LIMIT 16
      FOR UPDATE SKIP LOCKED) c
WHERE m.id = c.id RETURNING m.id;
ROLLBACK;
SQL
)
idx=$(echo "$plan" | grep -oE 'Index (Only )?Scan using message_ready' | head -1)
exe=$(echo "$plan" | grep -oE 'Execution Time: [0-9.]+ ms' | head -1)
say "claim of 16 over $DEEP rows: ${idx:-NO message_ready INDEX SCAN}; $exe"
echo "$plan" > "$out/postgres-claim-plan.txt"
echo "written to $report"
