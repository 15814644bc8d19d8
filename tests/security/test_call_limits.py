"""Issue 9, attack 7 and the per-client limits: a call may not make the agent hold more than
its limits, and the check comes before the memory is committed (for a result, before the
operation runs)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.remote.conftest import (
    RawClient,
    make_service,
    service_call,
    start_agent,
)
from tests.security.conftest import create_session, pb
from vaccel_agent.admission import Admission
from vaccel_agent.limits import Limits
from vaccel_core.transport import CallError, Peer


def tensor(msg: Any, shape: tuple[int, ...], dtype: str = "float32") -> None:
    msg.dtype = dtype
    msg.shape.extend(shape)
    msg.inline = bytes(int(np.prod(shape)) * np.dtype(dtype).itemsize)


def huge_sgemm(session_id: int) -> Any:
    """56 bytes on the wire that ask for a 16383 x 16383 float32 result (1 GiB)."""
    request = pb().OpRequest(session_id=session_id, op="blas_sgemm")
    tensor(request.blas_sgemm.a, (16383, 0))
    tensor(request.blas_sgemm.b, (0, 16383))
    return request


def run(svc: Any, peer: Peer, request: Any) -> Any:
    return service_call(svc, "Run", request, pb().OpResponse, peer)


def test_a_tiny_request_for_a_huge_result_is_refused_before_it_runs() -> None:
    svc = make_service()
    try:
        peer = Peer("attacker")
        sid = create_session(svc, peer)
        request = huge_sgemm(sid)
        assert request.ByteSize() < 64
        with pytest.raises(CallError) as err:
            run(svc, peer, request)
        assert err.value.status == "RESOURCE_EXHAUSTED"
        assert "its result would be 1073610756 bytes" in err.value.message
        assert "--max-message-size" in err.value.message
        exec_request = pb().OpRequest(session_id=sid, op="exec")
        exec_request.exec.library = "libc.so.6"
        exec_request.exec.fn_symbol = "f"
        exec_request.exec.write_sizes.append((1 << 30) - 64)
        with pytest.raises(CallError, match=r"its result would be 1073741760 bytes"):
            run(svc, peer, exec_request)
        assert svc.admission.in_flight() == (0, 0), "nothing stays reserved"
        ok = pb().OpRequest(session_id=sid, op="blas_sgemm")
        tensor(ok.blas_sgemm.a, (4, 3))
        tensor(ok.blas_sgemm.b, (3, 5))
        assert list(run(svc, peer, ok).blas_sgemm.out.shape) == [4, 5]
    finally:
        svc.close()


def test_a_huge_result_never_reaches_the_agents_memory(tmp_path: Path) -> None:
    agent = start_agent([f"unix://{tmp_path / 'a.sock'}"])
    client = RawClient(agent.address)
    try:
        sid = client.create_session()

        def rss() -> int:
            for line in Path(f"/proc/{agent.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
            raise AssertionError("no VmRSS")

        before = rss()
        for _ in range(3):
            with pytest.raises(CallError, match=r"its result would be") as err:
                client.call("Run", huge_sgemm(sid), pb().OpResponse)
            assert err.value.status == "RESOURCE_EXHAUSTED"
        assert rss() - before < 64 << 20, "the 1 GiB result was never built"
        assert client.noop(sid) is not None
    finally:
        client.close()
        agent.stop()


def test_sessions_per_client_are_capped() -> None:
    svc = make_service(max_sessions=2)
    try:
        a, b = Peer("a"), Peer("b")
        create_session(svc, a)
        create_session(svc, a)
        with pytest.raises(CallError) as err:
            create_session(svc, a)
        assert err.value.status == "RESOURCE_EXHAUSTED"
        assert "holds 2 sessions (limit 2) (--max-sessions)" in err.value.message
        create_session(svc, b)  # another client is not affected
    finally:
        svc.close()


def test_admission_counts_calls_and_bytes_per_client_and_in_total() -> None:
    limits = Limits(
        max_calls=3, max_client_calls=2, max_inflight_bytes=1000, max_client_inflight_bytes=600
    )
    admission = Admission(limits)
    a1 = admission.admit("a", "Run", 100)
    a2 = admission.admit("a", "Run", 100)
    with pytest.raises(CallError, match=r"already has 2 calls in flight .*--max-client-calls"):
        admission.admit("a", "Run", 1)
    with pytest.raises(CallError, match=r"--max-client-inflight-bytes"):
        admission.admit("b", "Run", 700)
    b1 = admission.admit("b", "Run", 500)
    with pytest.raises(CallError, match=r"serving 3 calls \(limit 3\).*--max-calls"):
        admission.admit("c", "Run", 1)
    with pytest.raises(CallError, match=r"its result .*--max-inflight-bytes"):
        a1.reserve(400, "its result")
    a1.reserve(200, "its result")
    assert admission.in_flight("a") == (2, 400) and admission.in_flight() == (3, 900)
    for ticket in (a1, a2, b1, a1):  # releasing twice is harmless
        ticket.release()
    assert admission.in_flight() == (0, 0)
    assert admission.rejections == {
        "max_client_calls": 1,
        "max_client_inflight_bytes": 1,
        "max_calls": 1,
        "max_inflight_bytes": 1,
    }


def test_a_client_over_its_concurrent_calls_is_refused_and_others_are_served(
    tmp_path: Path,
) -> None:
    """Through a real agent with the slow backend: client A fills its two slots, its third
    call is refused at once; client B is still served."""
    import sys

    from tests.remote.slow_backend import LAUNCHER

    agent = start_agent(
        [f"unix://{tmp_path / 'a.sock'}"],
        command=[sys.executable, "-c", LAUNCHER],
        env={"VACCEL_PLUGINS": "slow:noop", "VACCEL_TEST_SLOW_SECONDS": "2"},
        args=["--max-client-calls", "2"],
    )
    a, b = RawClient(agent.address), RawClient(agent.address)
    try:
        sid = a.create_session()
        busy = [threading.Thread(target=a.noop, args=(sid,)) for _ in range(2)]
        for thread in busy:
            thread.start()
        time.sleep(0.5)
        start = time.monotonic()
        with pytest.raises(CallError, match=r"already has 2 calls in flight.*--max-client-calls"):
            a.noop(sid)
        assert time.monotonic() - start < 1.0, "refused at once, not queued"
        assert b.status().version, "another client is served meanwhile"
        for thread in busy:
            thread.join(10)
        assert a.noop(sid) is not None
    finally:
        a.close()
        b.close()
        agent.stop()
