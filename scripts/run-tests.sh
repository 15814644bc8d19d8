#!/usr/bin/env bash
# Run the whole test matrix (Python 3.10-3.13, ruff, mypy) with tox, from a fresh clone.
# Extra arguments go to tox, e.g. `scripts/run-tests.sh -e py311`.
set -euo pipefail
cd "$(dirname "$0")/.."

# pyenv installs several interpreters but its shims expose only the selected ones: put the
# newest patch release of each version tox needs on PATH, so tox finds python3.10 ... 3.13.
if command -v pyenv >/dev/null 2>&1; then
    root=$(pyenv root)
    for minor in 3.13 3.12 3.10 3.11; do
        v=$(pyenv versions --bare 2>/dev/null | grep -E "^${minor}\.[0-9]+$" | sort -V | tail -n 1 || true)
        if [ -n "$v" ] && [ -d "$root/versions/$v/bin" ]; then
            PATH="$root/versions/$v/bin:$PATH"
        fi
    done
    export PATH
fi

python=$(command -v python3.11 || command -v python3)
if [ ! -x .venv-tox/bin/tox ]; then
    "$python" -m venv .venv-tox
    .venv-tox/bin/python -m pip install --quiet --upgrade pip 'tox>=4.11'
fi
# setuptools reuses build/ between wheel builds and would package a module deleted since.
rm -rf build
exec .venv-tox/bin/tox "$@"
