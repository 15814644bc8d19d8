"""The agent's call record (vaccel_agent.telemetry): on its own, and through the service's
handler as a listener calls it (a TransportHandler naming the transport)."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.remote.conftest import make_service, missing_remote_extra
from vaccel_core.transport import CallError, Message, Peer

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(missing_remote_extra() is not None, reason=str(missing_remote_extra())),
]


def test_a_call_counts_once_in_its_bucket_its_outcome_and_its_transport() -> None:
    from vaccel_agent.telemetry import BUCKETS, Telemetry

    flying = {"p1": 1}
    t = Telemetry(lambda peer: flying.get(peer, 0) if peer else sum(flying.values()))
    t.connected("p1", "pid 7", "unix")
    call = t.begin("Run", "p1", "", 100)
    assert t.in_flight() == 1, "from the in-flight source"
    assert t.peers()["p1"].in_flight == 1
    flying.clear()
    call.operation, call.backend = "noop", "noop"
    t.end(call, "OK", 40)
    stats = t.calls()[("Run", "noop", "noop")]
    assert (stats.calls, stats.errors, sum(stats.buckets)) == (1, 0, 1)
    assert len(stats.buckets) == len(BUCKETS) and BUCKETS[-1] == math.inf
    assert 0 < stats.seconds < 5
    bucket = stats.buckets.index(1)
    assert stats.seconds <= BUCKETS[bucket] and (bucket == 0 or stats.seconds > BUCKETS[bucket - 1])
    assert t.outcomes() == {("Run", "noop", "noop", "unix", "OK"): 1}, "the peer's transport"
    assert t.traffic() == {"unix": (100, 40)}
    peer = t.peers()["p1"]
    assert (peer.calls, peer.errors, peer.in_flight, peer.transport) == (1, 0, 0, "unix")
    assert t.in_flight() == 0


def test_failures_count_as_errors_and_limits_as_rejections() -> None:
    from vaccel_agent.limits import limit_error
    from vaccel_agent.telemetry import Telemetry

    t = Telemetry()
    t.connected("p", "", "tcp")
    t.failed(t.begin("CreateSession", "p", "", 10), limit_error("CreateSession", "max_sessions"))
    t.failed(t.begin("Run", "p", "", 10), CallError("INVALID_ARGUMENT", "bad (--max-sessions)"))
    t.failed(t.begin("Run", "p", "", 10), RuntimeError("a bug"))
    assert t.rejections() == {"max_sessions": 1}, "only a RESOURCE_EXHAUSTED names a limit"
    assert t.outcomes() == {
        ("CreateSession", "", "", "tcp", "RESOURCE_EXHAUSTED"): 1,
        ("Run", "", "", "tcp", "INVALID_ARGUMENT"): 1,
        ("Run", "", "", "tcp", "INTERNAL"): 1,
    }
    assert t.calls()[("Run", "", "")].errors == 2
    assert t.peers()["p"].errors == 3
    assert t.traffic() == {"tcp": (30, 0)}
    assert t.in_flight() == 0, "no in-flight source: none known"


def test_snapshots_are_copies_and_peers_only_live_ones() -> None:
    from vaccel_agent.telemetry import Telemetry

    t = Telemetry()
    t.connected("a", "one", "unix")
    t.connected("b", "two", "vsock")
    t.end(t.begin("GetStatus", "a", "", 1), "OK", 1)
    calls, peers = t.calls(), t.peers()
    calls[("GetStatus", "", "")].calls = 99
    calls[("GetStatus", "", "")].buckets[0] = 99
    peers["a"].calls = 99
    assert t.calls()[("GetStatus", "", "")].calls == 1
    assert max(t.calls()[("GetStatus", "", "")].buckets) == 1
    assert t.peers()["a"].calls == 1
    own = t.peer("a")
    assert own is not None and (own.description, own.calls) == ("one", 1)
    own.calls = 99
    assert t.peer("a").calls == 1  # type: ignore[union-attr]
    t.disconnected("a")
    assert set(t.peers()) == {"b"}
    assert t.peer("a") is None
    t.end(t.begin("GetStatus", "anonymous-1", "tcp", 1), "OK", 1)
    assert set(t.peers()) == {"b"}, "a peer that never connected is not kept"


def test_extra_histograms_register_observe_and_check_their_labels() -> None:
    from vaccel_agent.telemetry import Telemetry

    t = Telemetry()
    t.histogram("vaccel_agent_batch_size", ("operation",), "Calls per batch.", (1, 2, 4, 8))
    t.histogram("vaccel_agent_batch_size", ("operation",), "Calls per batch.", (1, 2, 4, 8))
    for value in (1, 3, 3, 100):
        t.observe("vaccel_agent_batch_size", ("image_classify",), value)
    hist = t.histograms()["vaccel_agent_batch_size"]
    assert hist.buckets == (1.0, 2.0, 4.0, 8.0, math.inf)
    series = hist.series[("image_classify",)]
    assert (series.count, series.sum, series.buckets) == (4, 107.0, [1, 0, 2, 0, 1])
    with pytest.raises(KeyError, match="histogram nope is not registered"):
        t.observe("nope", ("x",), 1)
    with pytest.raises(ValueError, match=r"expected 1 label values \('operation',\)"):
        t.observe("vaccel_agent_batch_size", ("a", "b"), 1)
    with pytest.raises(ValueError, match="registered with labels"):
        t.histogram("vaccel_agent_batch_size", ("backend",), "x")
    with pytest.raises(ValueError, match="buckets must increase"):
        t.histogram("vaccel_agent_other", (), "x", (2, 1))


def test_concurrent_calls_lose_no_count() -> None:
    from vaccel_agent.telemetry import Telemetry

    t = Telemetry()
    t.connected("p", "", "unix")

    def work() -> None:
        for _ in range(2000):
            t.end(t.begin("Run", "p", "", 1), "OK", 2)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert t.calls()[("Run", "", "")].calls == 8000
    assert t.peers()["p"].calls == 8000
    assert t.traffic() == {"unix": (8000, 16000)}


# Through the service -----------------------------------------------------------------------------
@pytest.fixture
def served() -> Iterator[Any]:
    svc = make_service(max_sessions=1)
    yield svc
    svc.close()


def _call(handler: Any, method: str, msg: Any, reply_type: Any, peer: Peer) -> Any:
    reply = handler.handle(method, Message(msg.SerializeToString()), peer)
    return reply_type.FromString(bytes(reply.payload))


def test_the_service_counts_every_call_by_method_operation_backend_and_status(
    served: Any,
) -> None:
    from vaccel_agent.telemetry import TransportHandler

    pb, handler = served.pb, TransportHandler(served, "vsock")
    peer = Peer("client-1", "pid 42")
    handler.peer_connected(peer)
    assert served.telemetry.peers()["client-1"].transport == "vsock"
    sid = _call(
        handler, "CreateSession", pb.CreateSessionRequest(), pb.CreateSessionResponse, peer
    ).session_id
    for _ in range(3):
        req = pb.OpRequest(session_id=sid, op="noop")
        req.noop.SetInParent()
        _call(handler, "Run", req, pb.OpResponse, peer)
    req = pb.OpRequest(session_id=sid, op="blas_sgemm")
    a = np.eye(2, dtype=np.float32)
    for name in ("a", "b"):
        tensor = getattr(req.blas_sgemm, name)
        tensor.dtype, tensor.inline = "float32", a.tobytes()
        tensor.shape.extend(a.shape)
    _call(handler, "Run", req, pb.OpResponse, peer)
    req.blas_sgemm.b.shape[:] = [3, 2]  # 16 bytes are not 3 x 2 float32
    with pytest.raises(CallError) as bad:
        _call(handler, "Run", req, pb.OpResponse, peer)
    assert bad.value.status == "INVALID_ARGUMENT"
    req = pb.OpRequest(session_id=sid + 1, op="noop")
    req.noop.SetInParent()
    with pytest.raises(CallError, match="not found"):
        _call(handler, "Run", req, pb.OpResponse, peer)
    with pytest.raises(CallError) as over:
        _call(handler, "CreateSession", pb.CreateSessionRequest(), pb.CreateSessionResponse, peer)
    assert over.value.status == "RESOURCE_EXHAUSTED"
    with pytest.raises(CallError, match="no such method"):
        handler.handle("Secret-" + "x" * 100, Message(b""), peer)

    t = served.telemetry
    assert t.outcomes() == {
        ("CreateSession", "", "", "vsock", "OK"): 1,
        ("CreateSession", "", "", "vsock", "RESOURCE_EXHAUSTED"): 1,
        ("Run", "noop", "noop", "vsock", "OK"): 3,
        ("Run", "blas_sgemm", "noop", "vsock", "OK"): 1,
        ("Run", "blas_sgemm", "noop", "vsock", "INVALID_ARGUMENT"): 1,
        ("Run", "noop", "", "vsock", "NOT_FOUND"): 1,
        ("unknown", "", "", "vsock", "UNIMPLEMENTED"): 1,
    }
    assert t.rejections() == {"max_sessions": 1}
    assert t.calls()[("Run", "blas_sgemm", "noop")].errors == 1
    assert sum(sum(s.buckets) for s in t.calls().values()) == 9
    peer_stats = t.peers()["client-1"]
    assert (peer_stats.calls, peer_stats.errors, peer_stats.in_flight) == (9, 4, 0)
    received, sent = t.traffic()["vsock"]
    assert received > 2 * 16 and sent > 16, "the sgemm's tensors in, its result out"
    with served.admission.admit("client-1", "Run", 10):  # a call being served
        assert (t.in_flight(), t.peers()["client-1"].in_flight) == (1, 1)
    assert t.in_flight() == 0
    handler.peer_disconnected(peer)
    assert t.peers() == {}
