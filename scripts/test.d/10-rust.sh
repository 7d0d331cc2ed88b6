#!/usr/bin/env bash
# Rust tests of qmail-core (message model, MIME, spool, initiator), its doc tests, and the
# formatting check of every crate in the workspace.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH"
cargo fmt --all --check
cargo test --no-fail-fast -p qmail-core --all-targets
cargo test -p qmail-core --doc
