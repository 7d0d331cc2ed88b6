#!/usr/bin/env bash
# DKIM signing cost (issue 16; not timed tests). Prints the figures and writes them to
# bench/out/dkim.txt. Needs root (installs postfix for smtp-sink) and the openssl CLI.
#
#   bench/dkim/run.sh [all|signer|small|large|memory]...
#
# signer  the signer alone, in memory (qmail-dispatch/examples/dkim_bench.rs): µs per 2 KiB
#         message (rsa-sha256 2048, ed25519-sha256) and the body hash in MiB/s beside SHA-256.
# small   BENCH_N (default 5000) messages of 2 KiB relayed to smtp-sink by the release
#         dispatcher (durable spool), unsigned, rsa-sha256 signed and ed25519-sha256 signed,
#         interleaved, BENCH_ROUNDS (default 3) rounds, the best of each: msg/s and the µs each
#         signature adds per message.
# large   one message of BENCH_BIG_MIB (default 1024) MiB relayed unsigned, then signed
#         (rsa-sha256): MiB/s of each.
# memory  the signed 1 GiB relay again, its peak anonymous memory (RssAnon, sampled every 10 ms).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
sections=("${@:-all}")
export QMAIL_LOG=${QMAIL_LOG:-warn}
N=${BENCH_N:-5000}
BIG_MIB=${BENCH_BIG_MIB:-1024}
WORKERS=${BENCH_WORKERS:-8}
out=$root/bench/out
mkdir -p "$out"
report=$out/dkim.txt
: > "$report"
say() { echo "$*" | tee -a "$report"; }
now() { date +%s.%N; }

command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl >/dev/null; }
scripts/setup-postfix
cargo build -q --release -p qmail-dispatcher --bins --examples
cargo build -q --release -p qmail-dispatch --example dkim_bench
bin=$root/target/release/qmail-dispatcher
tool=$root/target/release/examples/bench_tool
signer_bench=$root/target/release/examples/dkim_bench
work=$(mktemp -d /tmp/qmail-dkim-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/rsa.pem" 2>/dev/null
openssl genpkey -algorithm ed25519 -out "$work/ed.pem" 2>/dev/null
chmod 600 "$work/rsa.pem" "$work/ed.pem"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
sink_port=$(free_port)
smtp-sink -u nobody 127.0.0.1:"$sink_port" 1024 &
pids+=($!)
wait_port "$sink_port"
say "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(uname -r); load $(cut -d' ' -f1-3 /proc/loadavg)"

# config SPOOL KEY|none -> path of a TOML file
config() {
    local f=$work/$(basename "$1")-$(basename "${2%.pem}").toml
    cat > "$f" <<EOF
spools = ["$1"]
workers = $WORKERS
[[relay]]
url = "smtp://127.0.0.1:$sink_port?tls=none&max_messages_per_connection=100000"
EOF
    if [ "$2" != none ]; then
        cat >> "$f" <<EOF
[[dkim]]
domain = "example.com"
selector = "bench"
key_file = "$2"
EOF
    fi
    echo "$f"
}

signer() {
    say "== the signer alone, in memory (release)"
    "$signer_bench" "$work/rsa.pem" "$work/ed.pem" | tee -a "$report"
}

small() {
    local rounds=${BENCH_ROUNDS:-3}
    say "== $N messages of 2 KiB to smtp-sink, $WORKERS workers, durable spool, best of $rounds interleaved rounds"
    declare -A rate=([none]=0 [rsa]=0 [ed]=0)
    for _ in $(seq "$rounds"); do
        for key in none "$work/rsa.pem" "$work/ed.pem"; do
            spool=$work/small
            rm -rf "$spool"
            "$tool" fill "$spool" "$N" 2048 >/dev/null 2>&1
            cfg=$(config "$spool" "$key")
            t0=$(now)
            "$bin" --config "$cfg" drain >/dev/null
            t1=$(now)
            name=$(basename "${key%.pem}")
            rate[$name]=$(python3 -c "print(max(${rate[$name]}, $N/($t1-$t0)))")
            rm -rf "$spool"
        done
    done
    for name in none rsa ed; do
        say "  $name: $(python3 -c "print(round(${rate[$name]}))") msg/s ($(python3 -c "print(round(1e6/${rate[$name]}, 1))") µs per message)"
    done
    for name in rsa ed; do
        say "  signing cost ($name): $(python3 -c "print(round(1e6/${rate[$name]} - 1e6/${rate[none]}, 1))") µs per message; signed/unsigned throughput = $(python3 -c "print(round(${rate[$name]}/${rate[none]}, 2))")x"
    done
}

large() {
    say "== one message of $BIG_MIB MiB (a base64 attachment) to smtp-sink"
    declare -A secs
    for key in none "$work/rsa.pem"; do
        spool=$work/big
        rm -rf "$spool"
        "$tool" big "$spool" $((BIG_MIB * 1024 * 1024)) >/dev/null 2>&1
        mib=$(python3 -c "import os,sys; d=sys.argv[1]+'/ready'; print(round(sum(os.path.getsize(os.path.join(d,f)) for f in os.listdir(d))/2**20))" "$spool")
        cfg=$(config "$spool" "$key")
        t0=$(now)
        "$bin" --config "$cfg" --workers 1 drain >/dev/null
        t1=$(now)
        name=$(basename "${key%.pem}")
        secs[$name]=$(python3 -c "print($t1-$t0)")
        say "  $name: $mib MiB spooled, $(python3 -c "print(round($mib/${secs[$name]}))") MiB/s"
        rm -rf "$spool"
    done
    say "  signed/unsigned throughput = $(python3 -c "print(round(${secs[none]}/${secs[rsa]}, 2))")x (signing reads the spool file once more)"
}

memory() {
    say "== memory: one signed message of 1 GiB"
    spool=$work/mem
    rm -rf "$spool"
    "$tool" big "$spool" $((1024 * 1024 * 1024)) >/dev/null 2>&1
    cfg=$(config "$spool" "$work/rsa.pem")
    "$bin" --config "$cfg" --workers 1 drain >/dev/null &
    dpid=$!
    peak=0
    while kill -0 "$dpid" 2>/dev/null; do
        v=$(awk '/^RssAnon:/{print $2}' "/proc/$dpid/status" 2>/dev/null || true)
        [ -n "$v" ] && [ "$v" -gt "$peak" ] && peak=$v
        sleep 0.01
    done
    wait "$dpid"
    say "  peak RssAnon of the dispatcher: $((peak / 1024)) MiB ($peak KiB; target ≤ 64 MiB)"
    rm -rf "$spool"
}

for what in "${sections[@]}"; do
    case "$what" in
    all) signer; small; large; memory ;;
    signer|small|large|memory) "$what" ;;
    *) echo "usage: $0 [all|signer|small|large|memory]..." >&2; exit 2 ;;
    esac
done
say "(written to $report)"
