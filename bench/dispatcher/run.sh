#!/usr/bin/env bash
# Dispatcher benchmarks (issue 3; not timed tests). Prints the figures and writes them to
# bench/out/dispatcher.txt. Needs root (Postfix) and installs postfix (smtp-sink, smtp-source).
#
#   bench/dispatcher/run.sh [all|throughput|latency|memory|deep]
#
# throughput  N messages of 2 KiB (BENCH_N, default 10000) relayed on loopback to Postfix's
#             smtp-sink by the dispatcher (durable spool, BENCH_WORKERS workers, default 8; the
#             sink offers PIPELINING), next to (a) `smtp-source -s 8` pushing the same count and
#             size to the same sink (this machine's limit; it does not pipeline), and the same
#             with -d (connections reused, as the dispatcher does), and (b) Postfix relaying the
#             same count to the same sink through relayhost (queue filled first with delivery
#             held, then released and timed until empty).
# latency     idle submit → 250 from the relay, 101 samples: p50/p90/max.
# memory      one message with a 1 GiB attachment relayed; the dispatcher's peak anonymous
#             memory (RssAnon, sampled every 20 ms) and max RSS.
# deep        BENCH_DEEP (default 1000000) messages queued: time to the first delivery after
#             start, and how long `status` takes.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
what=${1:-all}
# delivery lines go to the delivery_log file where one is configured, not to the terminal
export QMAIL_LOG=${QMAIL_LOG:-warn}
N=${BENCH_N:-10000}
DEEP=${BENCH_DEEP:-1000000}
WORKERS=${BENCH_WORKERS:-8}
SOURCES=${BENCH_SOURCES:-8}
out=$root/bench/out
mkdir -p "$out"
report=$out/dispatcher.txt
: > "$report"
say() { echo "$*" | tee -a "$report"; }
now() { date +%s.%N; }

scripts/setup-postfix
cargo build -q --release -p qmail-dispatcher --bins --examples
# BENCH_DISPATCHER: another build to measure (A/B runs), default the one just built
bin=${BENCH_DISPATCHER:-$root/target/release/qmail-dispatcher}
tool=$root/target/release/examples/bench_tool
work=$(mktemp -d /tmp/qmail-bench.XXXXXX)
chmod 755 "$work"   # Postfix daemons (user postfix) need to reach their queue inside
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    scripts/postfix-instance stop "$work/postfix" || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

sink_port=$(free_port)
smtp-sink -u nobody 127.0.0.1:"$sink_port" 1024 &
pids+=($!)
wait_port "$sink_port"
say "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(uname -r); load: $(uptime | sed 's/.*load average: //')"

throughput() {
    say "== throughput: $N messages of 2 KiB to smtp-sink on loopback"
    # (a) smtp-source: the limit of this machine (one connection per message, and reused)
    t0=$(now)
    smtp-source -s "$SOURCES" -l 2048 -m "$N" -f bench@example.com -t sink@example.org 127.0.0.1:"$sink_port"
    t1=$(now)
    src=$(python3 -c "print(round($N/($t1-$t0)))")
    say "smtp-source -s $SOURCES: $src msg/s"
    t0=$(now)
    smtp-source -d -s "$SOURCES" -l 2048 -m "$N" -f bench@example.com -t sink@example.org 127.0.0.1:"$sink_port"
    t1=$(now)
    srcd=$(python3 -c "print(round($N/($t1-$t0)))")
    say "smtp-source -d -s $SOURCES: $srcd msg/s"

    # the dispatcher, durable spool (fsync per state change, as in production)
    spool=$work/spool
    "$tool" fill "$spool" "$N" 2048 durable
    t0=$(now)
    # the dispatcher's CPU time (user + system) per message: the load skews it far less than
    # the wall-clock rate
    /usr/bin/time -f "%U %S" -o "$work/cpu" \
        "$bin" --spool "$spool" --relay "smtp://127.0.0.1:$sink_port?tls=none&max_messages_per_connection=100000" \
        --workers "$WORKERS" drain
    t1=$(now)
    disp=$(python3 -c "print(round($N/($t1-$t0)))")
    cpu=$(python3 -c "u,s=open('$work/cpu').read().split()[-2:]; print(f'{(float(u)+float(s))/$N*1e6:.1f} µs CPU per message (user {float(u)/$N*1e6:.1f} + system {float(s)/$N*1e6:.1f})')")
    say "qmail-dispatcher drain, $WORKERS workers, durable: $disp msg/s; $cpu"
    rm -rf "$spool"

    # (b) Postfix relaying through relayhost to the same sink
    pf_port=$(free_port)
    scripts/postfix-instance start "$work/postfix" "$pf_port" --relayhost "127.0.0.1:$sink_port"
    pfc="$work/postfix/etc"
    postconf -c "$pfc" -e "defer_transports = smtp" >/dev/null
    postfix -c "$pfc" reload >/dev/null 2>&1
    smtp-source -d -s "$SOURCES" -l 2048 -m "$N" -f bench@example.com -t sink@example.org 127.0.0.1:"$pf_port"
    # wait until everything is queued (deferred by defer_transports)
    for _ in $(seq 600); do
        q=$(postqueue -c "$pfc" -p | tail -1)
        [[ "$q" == *"in $N Request"* ]] && break
        sleep 0.5
    done
    postconf -c "$pfc" -e "defer_transports =" >/dev/null
    t0=$(now)
    postfix -c "$pfc" reload >/dev/null 2>&1
    postqueue -c "$pfc" -f
    for _ in $(seq 6000); do
        postqueue -c "$pfc" -p | grep -q "Mail queue is empty" && break
        sleep 0.1
    done
    t1=$(now)
    pf=$(python3 -c "print(round($N/($t1-$t0)))")
    say "Postfix relayhost → smtp-sink: $pf msg/s"
    scripts/postfix-instance stop "$work/postfix"
    say "ratio: dispatcher/Postfix = $(python3 -c "print(round($disp/$pf,2))")x (target ≥ 10), dispatcher/smtp-source = $(python3 -c "print(round($disp/$src,2))")x (target ≥ 0.75), dispatcher/smtp-source -d = $(python3 -c "print(round($disp/$srcd,2))")x"
}

latency() {
    say "== latency: idle submit → 250 from the relay (smtp-sink)"
    spool=$work/lat
    mkdir -p "$spool"
    # the delivery log is configured through a file (not a CLI option)
    cat > "$work/lat.toml" <<EOF
spools = ["$spool"]
workers = 4
delivery_log = "$work/lat.log"
[[relay]]
url = "smtp://127.0.0.1:$sink_port?tls=none"
EOF
    "$bin" --config "$work/lat.toml" run &
    dpid=$!
    pids+=($dpid)
    sleep 1
    r=$("$tool" latency "$spool" "$work/lat.log" 101)
    kill "$dpid"; wait "$dpid" || true
    say "idle submit → accepted: $r (target p50 ≤ 50 ms)"
}

memory() {
    say "== memory: one message with a 1 GiB attachment"
    spool=$work/big
    "$tool" big "$spool" $((1024 * 1024 * 1024))
    /usr/bin/time -f "%M" -o "$work/rss" "$bin" --spool "$spool" --relay "smtp://127.0.0.1:$sink_port?tls=none" --workers 1 drain &
    tpid=$!
    # peak anonymous memory (heap, stacks; not the file pages the body streams through)
    anon=0
    while kill -0 "$tpid" 2>/dev/null; do
        dpid=$(pgrep -P "$tpid" -x qmail-dispatche || true)
        if [ -n "$dpid" ]; then
            a=$(awk '/^RssAnon:/{print $2}' "/proc/$dpid/status" 2>/dev/null || echo 0)
            [ "${a:-0}" -gt "$anon" ] && anon=$a
        fi
        sleep 0.02
    done
    wait "$tpid"
    say "peak anonymous memory (RssAnon) of the dispatcher: $anon KiB (target ≤ 64 MiB); max RSS: $(cat "$work/rss") KiB"
    rm -rf "$spool"
}

deep() {
    say "== deep queue: $DEEP messages queued"
    spool=$work/deep
    "$tool" fill "$spool" "$DEEP" 1024
    t0=$(now)
    "$bin" --spool "$spool" status >/dev/null
    t1=$(now)
    say "status: $(python3 -c "print(round($t1-$t0,2))") s (target ≤ 1 s)"
    cat > "$work/deep.toml" <<EOF
spools = ["$spool"]
workers = $WORKERS
delivery_log = "$work/deep.log"
[[relay]]
url = "smtp://127.0.0.1:$sink_port?tls=none"
EOF
    t0=$(now)
    "$bin" --config "$work/deep.toml" run &
    dpid=$!
    pids+=($dpid)
    for _ in $(seq 3000); do [ -s "$work/deep.log" ] && break; sleep 0.01; done
    t1=$(now)
    say "first delivery after start: $(python3 -c "print(round($t1-$t0,2))") s (target ≤ 2 s)"
    kill "$dpid"; wait "$dpid" || true
    rm -rf "$spool"
}

case "$what" in
all) throughput; latency; memory; deep ;;
throughput|latency|memory|deep) "$what" ;;
*) echo "usage: $0 [all|throughput|latency|memory|deep]" >&2; exit 2 ;;
esac
say "(written to $report)"
