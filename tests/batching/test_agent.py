"""Batching in a real agent process: guests (separate processes, each its own client
connection over unix, ttrpc or gRPC) classifying different photos at once get their own tags while
their calls share batches (seen on the agent's metrics endpoint); per-client limits apply
before the batcher."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.metrics.scrape import metrics_url, scrape
from tests.remote.conftest import AgentProcess, clean_env, start_agent
from vaccel_core import PluginRegistry, Session
from vaccel_core.config import Config
from vaccel_core.testing import missing_remote_extra

from ..onnxruntime.ort_fixtures import PHOTOS, require_ort, require_weights
from .helpers import start_batching_agent

pytestmark = pytest.mark.timeout(240)

ROUNDS = 3

# One guest: its own process and connection; classifies one photo ROUNDS times once told to.
GUEST = r"""
import json, sys
from vaccel_core import Config, Session
address, path, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
image = open(path, "rb").read()
with Session(config=Config(plugins=["rpc"], rpc_address=address)) as session:
    print("ready", flush=True)
    sys.stdin.readline()
    print(json.dumps([session.classify(image)[0] for _ in range(rounds)]), flush=True)
"""


@pytest.fixture(scope="module")
def expected() -> dict[str, str]:
    """Each bundled photo's tag from an unbatched local session."""
    require_ort()
    require_weights()
    from vaccel_plugins.onnxruntime import plugin

    registry = PluginRegistry()
    registry.register_plugin(plugin, "onnxruntime")
    try:
        with Session(config=Config(plugins=["onnxruntime"]), registry=registry) as s:
            s.batcher = None
            return {
                p.name: s.classify(p.read_bytes())[0]
                for p in sorted(PHOTOS.iterdir())
                if p.suffix in {".jpg", ".png"}
            }
    finally:
        registry.shutdown()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    handle = start_batching_agent(tmp_path, 300_000)
    yield handle
    handle.stop()


@pytest.mark.parametrize("wire", ["ttrpc", "grpc"])
def test_guests_get_their_own_tags_from_shared_batches(
    agent: AgentProcess, expected: dict[str, str], wire: str
) -> None:
    """Over ttrpc (a thread per call) and gRPC (the listener's worker pool) alike."""
    names = sorted(expected)
    address = agent.address if wire == "ttrpc" else f"grpc+{agent.address}"
    guests = [
        subprocess.Popen(
            [sys.executable, "-c", GUEST, address, str(PHOTOS / name), str(ROUNDS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env({"VACCEL_PLUGINS": "rpc"}),
        )
        for name in names
    ]
    try:
        for guest in guests:
            assert guest.stdout is not None and guest.stdin is not None
            assert guest.stdout.readline().strip() == "ready", guest.stderr.read()
        for guest in guests:
            guest.stdin.write("go\n")  # type: ignore[union-attr]
            guest.stdin.flush()  # type: ignore[union-attr]
        replies = [json.loads(guest.communicate(timeout=120)[0]) for guest in guests]
    finally:
        for guest in guests:
            if guest.poll() is None:
                guest.kill()
                guest.wait(10)
    for name, tags in zip(names, replies, strict=True):
        assert tags == [expected[name]] * ROUNDS, f"{name}: {tags}"
    metrics = scrape(metrics_url(agent))
    labels = (("operation", "image_classify"),)
    calls = len(names) * ROUNDS
    assert metrics.samples["vaccel_agent_batch_size_sum"][labels] == calls
    batches = metrics.samples["vaccel_agent_batch_size_count"][labels]
    assert batches < calls, "no two guests' calls ever shared a batch"
    assert metrics.samples["vaccel_agent_batch_queue_seconds_count"][labels] == calls


def test_per_client_limits_apply_before_the_batcher(tmp_path: Path) -> None:
    """A client over --max-client-calls is refused at once while its admitted calls wait
    in the batch queue (admission comes first; the queue holds only admitted calls)."""
    reason = missing_remote_extra()
    if reason:
        pytest.skip(reason)
    require_ort()
    require_weights()
    handle = start_agent(
        [f"unix://{tmp_path / 'agent.sock'}"],
        env={"VACCEL_PLUGINS": "onnxruntime"},
        args=["--batch-max-size", "8", "--batch-max-delay-us", "1000000",
              "--max-client-calls", "2"],
    )  # fmt: skip
    try:
        image = (PHOTOS / "dog.jpg").read_bytes()
        config = Config(plugins=["rpc"], rpc_address=handle.address)
        with Session(config=config) as session:
            session.classify(image)  # warm: model built, connection up
            outcomes: list[object] = [None] * 3
            start = threading.Barrier(3)

            def call(i: int) -> None:
                start.wait(10)
                try:
                    outcomes[i] = session.classify(image)[0]
                except Exception as exc:
                    outcomes[i] = exc

            threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
        refused = [o for o in outcomes if isinstance(o, Exception)]
        served = [o for o in outcomes if isinstance(o, str)]
        assert len(refused) == 1 and len(served) == 2, outcomes
        assert "--max-client-calls" in str(refused[0])
        assert served[0] == served[1]
    finally:
        handle.stop()
