#!/usr/bin/env bash
# Run the whole test matrix (Python 3.10-3.13, ruff, mypy) with tox, from a fresh clone.
# Extra arguments go to tox, e.g. `scripts/run-tests.sh -e py311`.
set -euo pipefail
cd "$(dirname "$0")/.."

# pyenv installs several interpreters but its shims only expose the selected ones: select the
# newest patch release of each version tox needs, so that tox can find python3.10 ... 3.13.
if command -v pyenv >/dev/null 2>&1; then
    versions=()
    for minor in 3.11 3.10 3.12 3.13; do
        v=$(pyenv versions --bare 2>/dev/null | grep -E "^${minor}\.[0-9]+$" | sort -V | tail -n 1 || true)
        [ -n "$v" ] && versions+=("$v")
    done
    if [ "${#versions[@]}" -gt 0 ]; then
        PYENV_VERSION=$(IFS=:; echo "${versions[*]}")
        export PYENV_VERSION
    fi
fi

python=$(command -v python3.11 || command -v python3)
if [ ! -x .venv-tox/bin/tox ]; then
    "$python" -m venv .venv-tox
    .venv-tox/bin/python -m pip install --quiet --upgrade pip 'tox>=4.11'
fi
exec .venv-tox/bin/tox "$@"
