"""A call's deadline reaches the agent's batch queue: a guest that gives up (its
VACCEL_RPC_TIMEOUT passed) leaves the queue at once with DEADLINE_EXCEEDED, on the agent too,
while another guest's call in the same queue goes on and gets its own answer.

The transports run each call inside :func:`vaccel_core.transport.deadline_scope` (ttrpc's
``timeout_nano``, gRPC's ``time_remaining()``). Without that the abandoned call would sit in
the queue for the whole batch delay (here 1 s, the most allowed) and then run for nobody.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.metrics.scrape import metrics_url, scrape
from tests.remote.conftest import AgentProcess, clean_env

from ..onnxruntime.ort_fixtures import PHOTOS, require_ort, require_weights
from .helpers import start_batching_agent

pytestmark = pytest.mark.timeout(180)

DELAY_S = 1.0

# One guest: optionally a warm-up classify (the agent loads the model: a batch of one, after the
# delay), then it waits for a line on stdin and classifies once, printing the tag or the error.
GUEST = r"""
import json, sys
from vaccel_core import Config, Session
address, path, warm = sys.argv[1], sys.argv[2], sys.argv[3] == "warm"
image = open(path, "rb").read()
with Session(config=Config(plugins=["rpc"], rpc_address=address)) as session:
    if warm:
        session.classify(image)
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        print(json.dumps({"tag": session.classify(image)[0]}), flush=True)
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
"""


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    require_ort()
    require_weights()
    handle = start_batching_agent(tmp_path, int(DELAY_S * 1e6))
    yield handle
    handle.stop()


def _guest(address: str, timeout: float | None, warm: bool) -> subprocess.Popen[str]:
    env = {"VACCEL_PLUGINS": "rpc"}
    if timeout is not None:
        env["VACCEL_RPC_TIMEOUT"] = str(timeout)
    guest = subprocess.Popen(
        [sys.executable, "-c", GUEST, address, str(PHOTOS / "dog.jpg"), "warm" if warm else "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(env),
    )
    assert guest.stdout is not None
    assert guest.stdout.readline().strip() == "ready", guest.stderr.read()  # type: ignore[union-attr]
    return guest


def _go(guest: subprocess.Popen[str]) -> None:
    assert guest.stdin is not None
    guest.stdin.write("go\n")
    guest.stdin.flush()


def _runs(agent: AgentProcess) -> dict[str, float]:
    """The agent's Run calls by status."""
    values = scrape(metrics_url(agent)).values("vaccel_agent_calls_total")
    # label order: backend, method, operation, status, transport (sorted names)
    out: dict[str, float] = {}
    for (_backend, method, _op, status, _transport), n in values.items():
        if method == "Run":
            out[status] = out.get(status, 0) + n
    return out


@pytest.mark.parametrize("wire", ["ttrpc", "grpc"])
def test_a_guest_that_gives_up_leaves_the_queue_and_the_other_goes_on(
    agent: AgentProcess, wire: str
) -> None:
    address = agent.address if wire == "ttrpc" else f"grpc+{agent.address}"
    patient = _guest(address, None, warm=True)
    hasty = _guest(address, 0.2, warm=False)
    try:
        _go(patient)
        time.sleep(0.2)  # the patient call is queued first and waits for the batch delay
        started = time.monotonic()
        _go(hasty)
        hasty_reply = json.loads(hasty.communicate(timeout=60)[0])
        # Its own timer or the agent's answer, whichever comes first: both are its deadline.
        error = hasty_reply.get("error", "")
        assert "deadline passed while it waited" in error or "within 0.2 s" in error, hasty_reply
        # The agent counts the abandoned call as DEADLINE_EXCEEDED right away, long before the
        # batch delay would have let it run.
        while time.monotonic() - started < DELAY_S - 0.4:
            if _runs(agent).get("DEADLINE_EXCEEDED"):
                break
            time.sleep(0.05)
        runs = _runs(agent)
        assert runs.get("DEADLINE_EXCEEDED") == 1, runs
        assert time.monotonic() - started < DELAY_S - 0.4, "the agent kept the call queued"
        patient_reply = json.loads(patient.communicate(timeout=60)[0])
        assert patient_reply == {"tag": "37.816% malamute"}, patient_reply
    finally:
        for guest in (patient, hasty):
            if guest.poll() is None:
                guest.kill()
                guest.wait(10)
