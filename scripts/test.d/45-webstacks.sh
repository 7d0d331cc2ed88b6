#!/usr/bin/env bash
# Web stacks: qmail.django against every supported Django (scripts/requirements-webstacks.txt:
# 4.2 LTS, 5.2 LTS, 6.1), each in its own venv under target/webstacks/, with warnings as errors
# (no deprecation warning may come from qmail's backend). One wheel is built (dev profile) and
# installed into every venv; the venvs are kept between runs (pip skips what is there).
# Django 6.x needs Python >= 3.12: taken from PATH (python3.12, python3.13) or pyenv; without one,
# that version is skipped with a message (not silently passed).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
work=$CARGO_TARGET_DIR/webstacks
mkdir -p "$work"
step() { printf -- '-- webstacks: %s\n' "$*"; }

[ -x .venv/bin/python ] || scripts/setup-python-env
step "wheel (maturin, dev profile)"
rm -rf "$work/wheel"
(cd bindings/python && ../../.venv/bin/maturin build -q --profile dev -o "$work/wheel" >/dev/null)
wheel=$(ls "$work"/wheel/qmail*.whl)

find_python() { # MAJOR.MINOR (at least)
    local want=$1 c
    for c in "python$want" python3.13 python3.12 /root/.pyenv/versions/"$want"*/bin/python \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$want"*/bin/python python3; do
        c=$(command -v "$c" 2>/dev/null) || continue
        if "$c" -c "import sys; sys.exit(sys.version_info < tuple(map(int, '$want'.split('.'))))" 2>/dev/null; then
            echo "$c"; return 0
        fi
    done
    return 1
}

status=0 ran=0
while read -r version py; do
    case $version in ''|'#'*|version) continue ;; esac
    venv=$work/django-${version%.*}
    if ! python=$(find_python "$py"); then
        echo "SKIP Django $version: no Python >= $py here (install python$py to test it)"
        continue
    fi
    step "Django $version on $($python --version)"
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "Django==$version" pytest==8.4.2
    "$venv/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel"
    # the installed package, from a directory where bindings/python/python is not on sys.path
    (cd bindings/python && "$venv/bin/python" -m pytest -q -p no:cacheprovider -W error \
        tests/test_django.py tests/test_web_django.py) || status=1
    ran=$((ran + 1))
done < scripts/requirements-webstacks.txt
[ "$ran" -gt 0 ] || { echo "no Django version could be tested"; exit 1; }
exit $status
