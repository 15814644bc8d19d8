#!/usr/bin/env bash
# Quickstart: classify a bundled photo through a vAccel agent, end to end.
#
#   1. create .venv in the repository (if missing) and install pyvaccel[remote,onnx] into it;
#   2. build the default ImageNet model (EfficientNet-Lite0) into the user's cache (once);
#   3. start `vaccel-agent` with the onnxruntime backend on a unix socket in a temporary folder;
#   4. run `classify` through the rpc backend (VACCEL_PLUGINS=rpc) against that agent;
#   5. stop the agent (also on Ctrl-C or failure).
#
# Needs Python 3.10+ (PYTHON=... to choose one) and access to the Python package index.
# The exit status is classify's. Progress goes to stderr; classify's lines go to stdout.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
python="${PYTHON:-python3}"
photo="${1:-examples/photos/dog.jpg}"
venv="$repo/.venv"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'quickstart: error: %s\n' "$*" >&2; exit 1; }

version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
    || die "cannot run $python (set PYTHON=/path/to/python3.10 or newer)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "Python 3.10 or newer is needed, $python is $version (set PYTHON=...)"

if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv"
    "$python" -m venv "$venv" \
        || die "cannot create a virtual environment (on Debian/Ubuntu: apt install python3-venv)"
fi
say "installing pyvaccel[remote,onnx] into .venv"
"$venv/bin/python" -m pip install --quiet --upgrade 'pip>=23'
# setuptools warns on every editable install that maps package folders (agent/ installs as
# vaccel_agent): generic advice, not a problem here.
PYTHONWARNINGS="ignore:Editable installation" \
    "$venv/bin/python" -m pip install --quiet -e "$repo[remote,onnx]"

say "building the default model (once; later runs only verify it)"
"$venv/bin/vaccel" models build >&2

workdir="$(mktemp -d "${TMPDIR:-/tmp}/vaccel-quickstart.XXXXXX")"
address="unix://$workdir/vaccel.sock"
agent_pid=""
cleanup() {
    if [ -n "$agent_pid" ] && kill -0 "$agent_pid" 2>/dev/null; then
        say "stopping the agent (pid $agent_pid)"
        kill -TERM "$agent_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$agent_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$agent_pid" 2>/dev/null || true
        wait "$agent_pid" 2>/dev/null || true
    fi
    rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "starting vaccel-agent -a $address --plugins onnxruntime"
"$venv/bin/vaccel-agent" -a "$address" --plugins onnxruntime >"$workdir/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 300); do
    grep -q "Listening on" "$workdir/agent.log" 2>/dev/null && break
    if ! kill -0 "$agent_pid" 2>/dev/null; then
        cat "$workdir/agent.log" >&2
        die "the agent exited before listening"
    fi
    sleep 0.1
done
grep -q "Listening on" "$workdir/agent.log" || { cat "$workdir/agent.log" >&2; die "the agent did not start listening within 30 s"; }
say "$(grep -m1 "Listening on" "$workdir/agent.log")"

say "classify $photo through the agent (VACCEL_PLUGINS=rpc)"
status=0
VACCEL_PLUGINS=rpc VACCEL_RPC_ADDRESS="$address" "$venv/bin/classify" "$photo" || status=$?
exit "$status"
