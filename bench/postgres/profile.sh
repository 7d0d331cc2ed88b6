#!/usr/bin/env bash
# Where the CPU of the end-to-end PostgreSQL run goes (issue 12; not a timed test). Runs the
# `e2e pg` section of bench/postgres/run.sh once (one `forward` + 2 `run --queue` dispatchers
# started together on a filled durable local spool, relaying to smtp-sink) and prints, per
# delivered message:
#   - CPU µs (utime + stime from /proc/PID/stat) of the forwarder, each dispatcher, the sink,
#     the PostgreSQL backends (summed, exited ones included through the postmaster's
#     cutime/cstime), the WAL writer, the checkpointer and the other postgres processes;
#   - commits (pg_stat_database.xact_commit), WAL writes and fsyncs (pg_stat_wal), WAL bytes,
#     and the statements by calls (pg_stat_statements, top 15).
# Wrap it in the CPU lock: `flock /work/wt/cpu.lock bench/postgres/profile.sh`.
#
#   BENCH_E2E_N (10000)   messages of 2 KiB
#   BENCH_PG_WORKERS (16) workers per dispatcher (as run.sh)
#   BENCH_PG_SETTINGS     extra `-c name=value` words for the server (e.g. "-c commit_delay=200")
#   BENCH_PERF=1         also `perf record -a -g` the run into bench/out/pg-profile.perf
#   BENCH_NO_FORWARD=1    import the spool first (forward --drain), then time only the
#                         dispatchers (what the queue side costs on its own)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
export QMAIL_LOG=${QMAIL_LOG:-warn}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
E2E_N=${BENCH_E2E_N:-10000}
PG_WORKERS=${BENCH_PG_WORKERS:-16}
scripts/setup-postgres
scripts/setup-postfix
mkdir -p bench/out
cargo build -q --release -p qmail-dispatcher --bins --examples
bin=$CARGO_TARGET_DIR/release/qmail-dispatcher
tool=$CARGO_TARGET_DIR/release/examples/bench_tool
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
work=$(mktemp -d /tmp/qmail-pgprof.XXXXXX)
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
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
lines() { if [ -f "$1" ]; then wc -l < "$1"; else echo 0; fi; }
port=$(free_port)
mkdir "$work/pg"
[ "$(id -u)" = 0 ] && chown postgres: "$work/pg"
"${as_pg[@]}" "$pgbin/initdb" -D "$work/pg/data" -U qmail -A trust -E UTF8 --locale=C >/dev/null
# shellcheck disable=SC2086
"${as_pg[@]}" "$pgbin/postgres" -D "$work/pg/data" -p "$port" -c listen_addresses=127.0.0.1 \
    -c unix_socket_directories= -c shared_buffers=256MB -c max_connections=200 \
    -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all \
    ${BENCH_PG_SETTINGS:-} >"$work/pg/log" 2>&1 &
pgpid=$!
url="postgres://qmail@127.0.0.1:$port/postgres"
for _ in $(seq 200); do "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$port" && break; sleep 0.05; done
"$bin" queue init --queue "$url" >/dev/null
psql() { "$pgbin/psql" -qtA "$url" "$@"; }
psql -c 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements' >/dev/null

sink_port=$(free_port)
smtp-sink -u nobody 127.0.0.1:"$sink_port" 1024 &
sink=$!; pids+=($sink)
wait_port "$sink_port"
relay="smtp://127.0.0.1:$sink_port?tls=none&max_messages_per_connection=100000"
"$tool" fill "$work/web" "$E2E_N" 2048 durable
for i in 1 2; do
    cat > "$work/d$i.toml" <<EOF
workers = $PG_WORKERS
delivery_log = "$work/e2e.log"
[queue]
url = "$url"
[[relay]]
url = "$relay"
EOF
done

# CPU ticks of a process (utime+stime, and its reaped children's cutime+cstime)
snap() { # → "pid name ticks childticks" per process of the postmaster tree and the others
    python3 - "$pgpid" "$@" <<'PY'
import os, sys
pm = int(sys.argv[1]); others = [int(p) for p in sys.argv[2:]]
def stat(p):
    try:
        s = open(f"/proc/{p}/stat").read()
    except OSError:
        return None
    f = s[s.rindex(")") + 2:].split()
    return int(f[1]), int(f[11]) + int(f[12]), int(f[13]) + int(f[14])  # ppid, self, children
def cmd(p):
    try:
        return open(f"/proc/{p}/cmdline").read().replace("\0", " ").strip()
    except OSError:
        return "?"
for p in os.listdir("/proc"):
    if not p.isdigit():
        continue
    st = stat(p)
    if st and (int(p) == pm or st[0] == pm):
        c = cmd(p)
        kind = "postmaster" if int(p) == pm else ("walwriter" if "walwriter" in c else
               "checkpointer" if "checkpointer" in c else "backend" if "qmail postgres" in c or "idle" in c or "127.0.0.1" in c else "pg-other")
        print(p, kind, st[1], st[2])
for p in others:
    st = stat(p)
    if st:
        print(p, "proc", st[1], st[2])
PY
}
stats() { psql -F' ' -c "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'), wal_records, wal_bytes, wal_write, wal_sync FROM pg_stat_wal"; }

if [ -n "${BENCH_NO_FORWARD:-}" ]; then
    "$bin" forward --drain --spool "$work/web" --queue "$url" >/dev/null
fi
psql -c 'SELECT pg_stat_statements_reset(), pg_stat_reset()' >/dev/null
s0=$(stats)
snap "$sink" > "$work/cpu0"
perf_pid=
if [ -n "${BENCH_PERF:-}" ]; then
    perf record -a -g -F 499 -o "$root/bench/out/pg-profile.perf" >/dev/null 2>&1 &
    perf_pid=$!
fi
t0=$(date +%s.%N)
fwd=
if [ -z "${BENCH_NO_FORWARD:-}" ]; then
    "$bin" forward --spool "$work/web" --queue "$url" >/dev/null &
    fwd=$!; pids+=($fwd)
fi
"$bin" --config "$work/d1.toml" run --queue "$url" >/dev/null &
d1=$!; pids+=($d1)
"$bin" --config "$work/d2.toml" run --queue "$url" >/dev/null &
d2=$!; pids+=($d2)
echo "  pids: forwarder ${fwd:-none}, dispatchers $d1 $d2, sink $sink (perf report --pid)" >&2
read -r fwd_done t1 < <(bench/postgres/wait_e2e.py "$work/e2e.log" "$E2E_N" "${fwd:+$work/web/ready}" ${fwd:+"$fwd"} "$d1" "$d2")
snap "$sink" ${fwd:+"$fwd"} "$d1" "$d2" > "$work/cpu1"
s1=$(stats)
if [ -n "$perf_pid" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
hz=$(getconf CLK_TCK)
python3 - "$work/cpu0" "$work/cpu1" "$E2E_N" "$t0" "$t1" "$hz" "$sink" "${fwd:-0}" "$d1" "$d2" "$s0" "$s1" "$fwd_done" <<'PY'
import sys
a, b, n, t0, t1, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
sink, fwd, d1, d2 = sys.argv[7:11]
s0 = [int(x) for x in sys.argv[11].split()]; s1 = [int(x) for x in sys.argv[12].split()]
fwd_done = float(sys.argv[13] or 0)
def load(f):
    d = {}
    for l in open(f):
        p, k, s, c = l.split()
        d[p] = (k, int(s), int(c))
    return d
A, B = load(a), load(b)
tot = {}
for p, (k, s, c) in B.items():
    s0_, c0_ = (A[p][1], A[p][2]) if p in A else (0, 0)
    name = {sink: "sink", fwd: "forwarder", d1: "dispatcher 1", d2: "dispatcher 2"}.get(p, k)
    tot[name] = tot.get(name, 0) + (s - s0_)
    if k == "postmaster":  # reaped backends
        tot["backend (exited)"] = tot.get("backend (exited)", 0) + (c - c0_)
us = lambda ticks: ticks / hz * 1e6 / n
wall = t1 - t0
print(f"{n} messages in {wall:.2f} s: {n / wall:.0f} msg/s" + (f" (forwarder emptied the spool after {fwd_done - t0:.2f} s)" if fwd_done else ""))
allt = sum(tot.values())
for k in sorted(tot, key=lambda k: -tot[k]):
    print(f"  {k:<18} {us(tot[k]):7.0f} µs/msg  ({tot[k] / hz:.2f} s)")
print(f"  {'total':<18} {us(allt):7.0f} µs/msg  ({allt / hz:.2f} s CPU over {wall:.2f} s wall: {allt / hz / wall:.2f} cores)")
d = [y - x for x, y in zip(s0, s1)]
print(f"  per message: {d[0] / n:.3f} commits, {d[1] / n:.1f} WAL records, {d[2] / n:.0f} WAL bytes, {d[3] / n:.3f} WAL writes, {d[4] / n:.3f} WAL fsyncs")
PY
echo "  statements (calls per message, mean ms):"
psql -F' ' -c "SELECT round(calls::numeric / $E2E_N, 3), round(mean_exec_time::numeric, 3), left(regexp_replace(query, '\s+', ' ', 'g'), 110) FROM pg_stat_statements ORDER BY calls DESC LIMIT 18" | sed 's/^/    /'
echo "  index scans (per message: scans, index entries read, heap tuples fetched):"
psql -F' ' -c "SELECT indexrelname, round(idx_scan::numeric / $E2E_N, 3), round(idx_tup_read::numeric / $E2E_N, 1), round(idx_tup_fetch::numeric / $E2E_N, 1) FROM pg_stat_user_indexes WHERE schemaname = 'qmail' AND idx_scan > 0 ORDER BY idx_tup_read DESC" | sed 's/^/    /'
psql -F' ' -c "SELECT 'message: n_dead_tup', n_dead_tup, 'autovacuums', autovacuum_count, 'hot updates', n_tup_hot_upd, 'updates', n_tup_upd FROM pg_stat_user_tables WHERE schemaname = 'qmail' AND relname = 'message'" | sed 's/^/    /'
