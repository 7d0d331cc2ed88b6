#!/usr/bin/env bash
# Rust tests of every crate that builds without a language runtime.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH"
cargo test -p qmail-core --all-targets
cargo test -p qmail-core --doc
