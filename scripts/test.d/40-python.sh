#!/usr/bin/env bash
# Python binding: builds and installs bindings/python into the repo's .venv (as
# `pip install ./bindings/python` does, but with Cargo's dev profile into the shared target dir,
# so no second, release build of the workspace), then runs its pytest suite and mypy's stubtest.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
export PATH="$repo/.venv/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
# maturin is the PEP 517 backend; it reads extra `maturin build` arguments from this variable
export MATURIN_PEP517_ARGS="--profile dev"
python -m pip install -q --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps ./bindings/python
# tests run against the installed package, from a directory where bindings/python/python is not
# on sys.path
cd "$repo/bindings/python"
# both run, whichever fails: the stubs are checked against the built module (pydantic-core's
# `make lint` does the same)
status=0
python -m mypy.stubtest qmail --mypy-config-file pyproject.toml --allowlist stubtest-allowlist.txt || status=1
python -m pytest -q -p no:cacheprovider tests || status=1
exit $status
