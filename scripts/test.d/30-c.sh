#!/usr/bin/env bash
# The C ABI suite (qmail-ffi, include/qmail.h): header up to date, unsafe confined, the
# library built as shipped (scripts/build-c), the C test programs compiled with
# `cc -std=c99 -Wall -Wextra -Werror` and linked dynamically and statically, the header
# compiled as C++, the example built and run, everything run and checked by
# qmail-ffi/tests/c_programs.rs, then again under valgrind memcheck.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
dist=$target/c
step() { printf -- '-- c: %s\n' "$*"; }

need=()
for tool in cc:gcc g++:g++ make:make pkg-config:pkg-config valgrind:valgrind readelf:binutils; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    step "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi

step "unsafe only in qmail-ffi/src/handle.rs and panic.rs, each block with a SAFETY comment"
# blocks, functions, impls and traits; `#[unsafe(no_mangle)]` (the exports) is not one of them
stray=$(grep -nE '\bunsafe +(\{|fn\b|impl\b|trait\b|extern\b)' qmail-ffi/src/*.rs \
    | grep -v -e '^qmail-ffi/src/handle.rs:' -e '^qmail-ffi/src/panic.rs:' -e '^[^:]*:[0-9]*: *//' || true)
if [ -n "$stray" ]; then echo "unsafe outside handle.rs/panic.rs:"; echo "$stray"; exit 1; fi
awk 'FNR == 1 { recent = "" }
     /SAFETY:/ { recent = FNR }
     /unsafe \{/ && !/^ *\/\// { if (recent == "" || FNR - recent > 4) { print FILENAME ":" FNR ": unsafe block without a // SAFETY: comment"; bad = 1 } }
     END { exit bad }' qmail-ffi/src/handle.rs qmail-ffi/src/panic.rs

step "libqmail links qmail-core only: no SMTP, TLS or inotify code (cargo tree)"
linked=$(cargo tree -p qmail-ffi -e normal --prefix none | grep -E '^(lettre|rustls|ring|notify|qmail-dispatch) ' || true)
if [ -n "$linked" ]; then echo "qmail-ffi depends on: $linked"; exit 1; fi

step "include/qmail.h is what the pinned cbindgen generates"
scripts/gen-header --check

step "build: scripts/build-c $dist"
scripts/build-c "$dist"
export PKG_CONFIG_PATH=$dist/lib/pkgconfig
pkg-config --exists qmail
[ "$(pkg-config --modversion qmail)" = "$(cargo pkgid -p qmail-ffi | sed 's/.*[#@]//')" ]

step "the header alone compiles as C99 and as C++"
cc -std=c99 -Wall -Wextra -Werror -pedantic -fsyntax-only -x c include/qmail.h
g++ -x c++ -std=c++11 -Wall -Wextra -Werror -pedantic -fsyntax-only include/qmail.h
step "the C++ wrapper qmail.hpp compiles as C++11 and C++17 (built and run by 80-deploy.sh)"
for std in c++11 c++17; do
    g++ -x c++ -std=$std -Wall -Wextra -Werror -pedantic -fsyntax-only -Iinclude include/qmail.hpp
done

step "C test programs, dynamic and static (tests/c/Makefile)"
make -s -C tests/c DIST="$dist" OUT="$dist/tests"

step "examples/c: built with the documented command, run against a temp spool"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$dist/examples"
# shellcheck disable=SC2046
cc -std=c99 -Wall -Wextra -Werror -o "$dist/examples/send_order" examples/c/send_order.c $(pkg-config --cflags --libs qmail)
out=$(LD_LIBRARY_PATH=$dist/lib QMAIL_SPOOL=$work/spool "$dist/examples/send_order" customer@example.org README.md)
id=${out#queued as }
[ -f "$work/spool/ready/$id" ] || { echo "example: $out, but no spool file $id"; exit 1; }
if LD_LIBRARY_PATH=$dist/lib QMAIL_SPOOL=$work/spool "$dist/examples/send_order" not-an-address 2>"$work/err"; then
    echo "example accepted a bad address"; exit 1
fi
grep -q 'to: .*InvalidAddress' "$work/err" || { cat "$work/err"; exit 1; }

export QMAIL_C_TESTS=$dist/tests
step "qmail-ffi unit tests and the C programs (dynamic, static), checked through qmail-core"
cargo build -q -p qmail-ffi --examples   # bench/c's Rust half keeps compiling
cargo test -p qmail-ffi --lib --tests -- --include-ignored

step "valgrind memcheck: every C program, dynamic and static, and the example"
vg="valgrind -q --error-exitcode=1 --leak-check=full --show-leak-kinds=definite,indirect,possible"
vg="$vg --errors-for-leak-kinds=definite,indirect,possible --suppressions=$root/tests/c/valgrind.supp"
QMAIL_C_WRAPPER=$vg cargo test -p qmail-ffi --test c_programs -- --include-ignored
LD_LIBRARY_PATH=$dist/lib QMAIL_SPOOL=$work/vg-spool $vg "$dist/examples/send_order" customer@example.org README.md >/dev/null
