"""Sessions belong to their client; they are released when it goes away or idles; an agent
that dies gives a clear error and a restarted one serves again."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from vaccel_core import RemoteError, Resource, ResourceType, SessionError
from vaccel_core.transport import CallError

from .conftest import (
    REPO,
    AgentProcess,
    RawClient,
    clean_env,
    remote_session,
    start_agent,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)


def test_another_client_gets_not_found(shared_agent: AgentProcess) -> None:
    alice, mallory = RawClient(shared_agent.address), RawClient(shared_agent.address)
    pb = alice.pb
    try:
        sid = alice.create_session()
        assert alice.noop(sid).WhichOneof("result") == "noop"
        with pytest.raises(CallError) as run:
            mallory.noop(sid)
        assert run.value.status == "NOT_FOUND"
        assert f"session {sid} not found" in run.value.message
        with pytest.raises(CallError) as destroy:
            mallory.call(
                "DestroySession",
                pb.DestroySessionRequest(session_id=sid),
                pb.DestroySessionResponse,
            )
        assert destroy.value.status == "NOT_FOUND"
        assert alice.noop(sid).WhichOneof("result") == "noop", "still alive for its owner"
        alice.call(
            "DestroySession", pb.DestroySessionRequest(session_id=sid), pb.DestroySessionResponse
        )
        with pytest.raises(CallError, match="not found"):
            alice.noop(sid)
    finally:
        alice.close()
        mallory.close()


def test_two_concurrent_clients_are_isolated(shared_agent: AgentProcess) -> None:
    errors: list[BaseException] = []
    results: dict[int, list[np.ndarray]] = {}

    def client(k: int) -> None:
        try:
            raw = RawClient(shared_agent.address)
            with remote_session(shared_agent.address) as session:
                out = []
                for i in range(20):
                    a = np.full(1000 + k, float(i), dtype=np.float32)
                    out.append(session.fpga_vectoradd(a, a))
                    session.noop()
                results[k] = out
            raw.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert [r.shape for r in results[0]] == [(1000,)] * 20
    assert [r.shape for r in results[1]] == [(1001,)] * 20


CLIENT = textwrap.dedent(
    """
    import sys, time
    from vaccel_core import Config, Resource, ResourceType, Session
    config = Config(plugins=["rpc"], rpc_address=sys.argv[1])
    sessions = [Session(config=config) for _ in range(3)]
    for s in sessions:
        Resource.from_buffer(b"model bytes", ResourceType.MODEL, name="m.onnx").register(s)
        s.noop()
    print("ready", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_client_that_goes_away_leaves_zero_sessions(shared_agent: AgentProcess, how: str) -> None:
    observer = shared_agent.observer()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", CLIENT, shared_agent.address],
            env=clean_env(),
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        status = observer.status()
        assert status.sessions >= 3 and status.resources >= 3 and status.blobs >= 1
        if how == "kill":
            proc.kill()
        else:
            proc.terminate()
        proc.wait(10)
        # Everything goes, sessions, resources and blobs; waiting for all three (not just the
        # sessions) keeps this robust to an earlier test's client whose release still runs.
        def held() -> tuple[int, int, int]:
            status = observer.status()
            return (status.sessions, status.resources, status.blobs)

        wait_until(lambda: held() == (0, 0, 0), 10, "zero sessions, resources and blobs")
    finally:
        observer.close()
    shared_agent.wait_for_log(r"disconnected .*released 3 session")


def test_idle_sessions_are_released_after_the_ttl(tmp_path: Path) -> None:
    handle = start_agent([f"unix://{tmp_path / 'v.sock'}"], args=["--session-ttl", "1.0"])
    client = RawClient(handle.address)
    operator = handle.observer()
    try:
        sid = client.create_session()
        assert client.status().session_ttl == pytest.approx(1.0)
        wait_until(lambda: client.status().sessions == 0, 10, "idle session released")
        assert operator.status().sessions_released == 1
        with pytest.raises(CallError) as err:
            client.noop(sid)
        assert err.value.status == "NOT_FOUND"
        busy = client.create_session()
        for _ in range(15):  # used more often than the TTL: kept
            client.noop(busy)
            time.sleep(0.1)
        assert client.status().sessions == 1
    finally:
        client.close()
        operator.close()
        handle.stop()


def test_killed_agent_gives_a_clear_error_and_a_restarted_one_serves(tmp_path: Path) -> None:
    address = f"unix://{tmp_path / 'v.sock'}"
    handle = start_agent([address])
    session = remote_session(address)
    session.noop()
    handle.kill()
    with pytest.raises((RemoteError, SessionError)) as err:
        session.noop()
    assert address in str(err.value)
    with pytest.raises(RemoteError, match="cannot reach the vAccel agent at " + address):
        remote_session(address)
    restarted = start_agent([address])
    try:
        with pytest.raises(SessionError, match="create a new session"):
            session.noop()
        session.release()  # the lost session releases without errors
        with remote_session(address) as again:
            again.noop()
            assert again.minmax(np.arange(4.0), 1, 2)[1:] == (0.0, 0.0)
    finally:
        restarted.stop()


def test_same_model_registered_again_sends_only_its_hash(shared_agent: AgentProcess) -> None:
    raw = shared_agent.observer()
    model = bytes(np.random.default_rng(7).integers(0, 256, 3 << 20, dtype=np.uint8))
    try:
        before = raw.status().blob_uploads
        with remote_session(shared_agent.address) as first:
            Resource.from_buffer(model, ResourceType.MODEL, name="m.onnx").register(first)
            assert raw.status().blob_uploads == before + 1
            with remote_session(shared_agent.address) as second:
                res = Resource.from_buffer(model, ResourceType.MODEL, name="other-name.onnx")
                res.register(second)
                status = raw.status()
                assert status.blob_uploads == before + 1, "the second register sent no blob"
                assert status.blobs == 1 and status.blob_bytes == len(model)
                assert status.resources == 2
                backend = second.backends[0]
                assert backend.resource_sync(second, res) == [("other-name.onnx", model)]
        wait_until(lambda: raw.status().blobs == 0, 5, "blob freed with its last user")
    finally:
        raw.close()


def test_resource_from_a_file_travels_as_a_blob(shared_agent: AgentProcess, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07" * 40_000_000)  # 80 MB: several upload chunks
    with remote_session(shared_agent.address) as session:
        res = Resource(path, ResourceType.MODEL)
        res.register(session)
        session.model_load(res)
        out = session.model_run(res, {"x": np.ones((2, 2), np.float32)})
        assert list(out) == ["x"]
        synced = session.backends[0].resource_sync(session, res)
        assert synced[0][0] == "model.onnx" and synced[0][1] == path.read_bytes()


def test_a_call_past_its_deadline_fails_and_the_session_lives_on(tmp_path: Path) -> None:
    from tests.remote.slow_backend import LAUNCHER
    from vaccel_core import BackendError

    handle = start_agent(
        [f"unix://{tmp_path / 'v.sock'}"],
        command=[sys.executable, "-c", LAUNCHER],
        env={"VACCEL_PLUGINS": "slow", "VACCEL_TEST_SLOW_SECONDS": "2"},
    )
    try:
        with remote_session(handle.address) as session:
            backend = session.backends[0]
            saved = backend.op_timeout  # type: ignore[attr-defined]
            backend.op_timeout = 0.5  # type: ignore[attr-defined]
            try:
                start = time.monotonic()
                with pytest.raises(RemoteError, match=r"noop: no answer from the vAccel agent"):
                    session.noop()
                assert time.monotonic() - start < 1.5
            finally:
                backend.op_timeout = saved  # type: ignore[attr-defined]
            with pytest.raises(BackendError, match="cannot classify"):
                session.classify(b"img")  # same session, same connection: still served
    finally:
        handle.stop()
