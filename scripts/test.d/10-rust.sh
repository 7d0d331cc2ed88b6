#!/usr/bin/env bash
# Rust tests of qmail-core (message model, MIME, spool, initiator, and the dispatch engine
# against real SMTP servers from .venv), plus its doc tests and a formatting check.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH"
cargo fmt -p qmail-core -p qmail-dispatcher --check
cargo test -p qmail-core --all-targets
cargo test -p qmail-core --doc
