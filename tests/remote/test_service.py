"""The agent service on its own (no transport): blobs, reaping, UpdateSession."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest

from vaccel_core import Config
from vaccel_core.transport import CallError, Peer

from .conftest import service_call

pytestmark = pytest.mark.timeout(60)


def test_sessions_of_clients_that_never_attached_are_reaped(service: Any) -> None:
    pb = service.pb
    attached, anonymous = Peer("attached"), Peer("anonymous:ipv4:1.2.3.4:5")
    service.peer_connected(attached)
    for peer in (attached, anonymous):
        service_call(
            service, "CreateSession", pb.CreateSessionRequest(), pb.CreateSessionResponse, peer
        )
    assert service.counts()["sessions"] == 2
    assert service.reap(time.monotonic() + 60) == 0
    assert service.reap(time.monotonic() + service.unattached_ttl + 1) == 1
    assert service.counts()["sessions"] == 1, "the attached client's session stays"
    assert service.reap_period <= 5.0


def test_blob_chunks_must_arrive_in_order_and_match_their_digest(service: Any) -> None:
    pb = service.pb
    peer = Peer("p")
    data = bytes(range(256)) * 1000
    digest = hashlib.sha256(data).hexdigest()

    def put(offset: int, chunk: bytes) -> Any:
        req = pb.PutBlobRequest(sha256=digest, size=len(data), offset=offset)
        req.data.inline = chunk
        return service_call(service, "PutBlob", req, pb.PutBlobResponse, peer)

    assert put(0, data[:100_000]).received == 100_000
    with pytest.raises(CallError, match="expected the chunk at offset 100000, got offset 5"):
        put(5, data[100_000:])
    reply = put(100_000, data[100_000:])
    assert reply.complete and reply.received == len(data)
    assert service.blobs.has(digest)
    assert service.blobs.path(digest).read_bytes() == data
    assert oct(service.blobs.root.stat().st_mode & 0o777) == "0o700"
    service.peer_disconnected(peer)
    assert not service.blobs.has(digest), "an unused blob of a departed client is dropped"


def test_update_session_keeps_resources(service: Any) -> None:
    pb = service.pb
    peer = Peer("p")
    sid = service_call(
        service, "CreateSession", pb.CreateSessionRequest(), pb.CreateSessionResponse, peer
    ).session_id
    data = b"model"
    digest = hashlib.sha256(data).hexdigest()
    put = pb.PutBlobRequest(sha256=digest, size=len(data), offset=0)
    put.data.inline = data
    service_call(service, "PutBlob", put, pb.PutBlobResponse, peer)
    reg = pb.RegisterResourceRequest(session_id=sid, type=2)
    reg.files.add(name="m.onnx", sha256=digest, size=len(data))
    rid = service_call(
        service, "RegisterResource", reg, pb.RegisterResourceResponse, peer
    ).resource_id
    reply = service_call(
        service,
        "UpdateSession",
        pb.UpdateSessionRequest(session_id=sid, flags=0x100),
        pb.UpdateSessionResponse,
        peer,
    )
    assert list(reply.backends) == ["noop"]
    run = pb.OpRequest(session_id=sid, op="model_load")
    run.model_load.resource = rid
    service_call(service, "Run", run, pb.OpResponse, peer)
    assert service.counts()["resources"] == 1
    service_call(
        service,
        "UnregisterResource",
        pb.UnregisterResourceRequest(session_id=sid, resource_id=rid),
        pb.UnregisterResourceResponse,
        peer,
    )
    assert service.counts()["blobs"] == 0, "blob freed with its last resource"


def test_blob_dir_setting_keeps_blobs_in_a_private_subfolder(tmp_path: Any) -> None:
    from vaccel_agent.cli import build_parser, make_config
    from vaccel_agent.server import Agent

    config = make_config(
        build_parser().parse_args(["--blob-dir", str(tmp_path), "--plugins", "noop"])
    )
    agent = Agent([f"unix://{tmp_path / 'a.sock'}"], config=config)
    with agent:
        assert agent.service is not None
        root = agent.service.blobs.root
        assert root.parent == tmp_path and oct(root.stat().st_mode & 0o777) == "0o700"
    assert not root.exists(), "removed when the agent stops"
    assert not (tmp_path / "a.sock").exists()


def test_embedded_agent_api_shape(tmp_path: Any) -> None:
    """The API Kata's integrated mode embeds: Agent(addresses, *, config, options, session_ttl,
    limits)."""
    import inspect
    import threading

    from vaccel_agent.server import Agent
    from vaccel_core.transport import TransportOptions

    params = inspect.signature(Agent.__init__).parameters
    assert list(params) == ["self", "addresses", "config", "options", "session_ttl", "limits"]
    assert all(params[p].kind is inspect.Parameter.KEYWORD_ONLY for p in list(params)[2:])
    agent = Agent(
        [f"unix://{tmp_path / 'a.sock'}", "tcp://127.0.0.1:0"],
        config=Config(plugins=["noop"]),
        options=TransportOptions(max_message_bytes=1 << 20),
        session_ttl=30,
    )
    agent.start()
    assert agent.bound_addresses[0] == f"unix://{tmp_path / 'a.sock'}"
    assert agent.bound_addresses[1].startswith("tcp://127.0.0.1:")
    assert agent.wait(0) is False and not agent.stopped
    stopper = threading.Timer(0.2, agent.stop, kwargs={"grace": 1.0})
    stopper.start()
    assert agent.wait() is True
    assert agent.stopped and not (tmp_path / "a.sock").exists()
