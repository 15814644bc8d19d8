"""Blob limits and concurrent uploads in the agent service (no transport)."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import pytest

from vaccel_core import Config
from vaccel_core.transport import CallError, Message, Peer

from .conftest import make_service

pytestmark = pytest.mark.timeout(60)


def put(svc: Any, peer: Peer, digest: str, size: int, offset: int, chunk: bytes) -> Any:
    pb = svc.pb
    req = pb.PutBlobRequest(sha256=digest, size=size, offset=offset)
    req.data.inline = chunk
    reply = svc.handle("PutBlob", Message(req.SerializeToString()), peer)
    return pb.PutBlobResponse.FromString(bytes(reply.payload))


def blob(n: int, seed: int = 0) -> tuple[bytes, str]:
    period = bytes((i * 7 + seed) % 256 for i in range(256))
    data = (period * (n // 256 + 1))[:n]
    return data, hashlib.sha256(data).hexdigest()


def partials(svc: Any) -> list[str]:
    return sorted(p.name for p in svc.blobs.root.iterdir() if p.name.endswith(".partial"))


def call(svc: Any, method: str, msg: Any, reply_type: Any, peer: Peer) -> tuple[Any, list[Any]]:
    """One call into the service: the parsed reply and its out-of-band buffers."""
    reply = svc.handle(method, Message(msg.SerializeToString()), peer)
    return reply_type.FromString(bytes(reply.payload)), list(reply.buffers)


def upload(svc: Any, peer: Peer, data: bytes, chunk: int = 1 << 20) -> Any:
    """Upload ``data`` as one blob in chunks; returns the last PutBlob reply."""
    digest = hashlib.sha256(data).hexdigest()
    offset = 0
    while True:
        reply = put(svc, peer, digest, len(data), offset, data[offset : offset + chunk])
        offset += chunk
        if reply.complete or offset >= len(data):
            return reply


def new_session(svc: Any, peer: Peer) -> int:
    pb = svc.pb
    reply, _ = call(svc, "CreateSession", pb.CreateSessionRequest(), pb.CreateSessionResponse, peer)
    return int(reply.session_id)


def register(
    svc: Any, peer: Peer, sid: int, files: list[tuple[str, str, int]], rtype: int = 2
) -> Any:
    """RegisterResource with (name, sha256, size) triples; returns the reply."""
    pb = svc.pb
    req = pb.RegisterResourceRequest(session_id=sid, type=rtype)
    for name, digest, size in files:
        req.files.add(name=name, sha256=digest, size=size)
    return call(svc, "RegisterResource", req, pb.RegisterResourceResponse, peer)[0]


# Limits --------------------------------------------------------------------------------------
def test_a_huge_blob_is_refused_by_default(service: Any) -> None:
    _, digest = blob(10)
    with pytest.raises(CallError) as err:
        put(service, Peer("p"), digest, 1 << 40, 0, b"x")
    assert err.value.status == "RESOURCE_EXHAUSTED"
    assert str(1 << 40) in err.value.message and str(4 << 30) in err.value.message
    assert partials(service) == []


def test_blob_size_limit_and_quota() -> None:
    svc = make_service(max_blob_bytes=1000, blob_quota_bytes=1500)
    try:
        a, b, c = blob(1001, 1), blob(900, 2), blob(700, 3)
        with pytest.raises(CallError, match=r"of 1001 bytes exceeds .* limit of 1000 bytes") as err:
            put(svc, Peer("p"), a[1], len(a[0]), 0, a[0])
        assert err.value.status == "RESOURCE_EXHAUSTED"
        assert put(svc, Peer("p"), b[1], len(b[0]), 0, b[0]).complete
        # 900 held + 700 announced > 1500, even before any byte of it is written; the error
        # tells q only its own use, never the 900 bytes another client holds
        with pytest.raises(CallError, match=r"700 bytes exceeds .* quota of 1500 bytes") as err:
            put(svc, Peer("q"), c[1], len(c[0]), 0, b"")
        assert "this client holds or reserves 0 bytes" in err.value.message
        assert "900" not in err.value.message
        svc.peer_disconnected(Peer("p"))  # its unused blob goes, freeing the quota
        assert put(svc, Peer("q"), c[1], len(c[0]), 0, c[0]).complete
        # an upload in progress counts with its full announced size
        d = blob(801, 4)
        with pytest.raises(CallError, match="quota of 1500 bytes"):
            put(svc, Peer("q"), d[1], len(d[0]), 0, d[0][:10])
    finally:
        svc.close()


def test_agent_flags_set_the_blob_limits(tmp_path: Any) -> None:
    from vaccel_agent.cli import build_parser, make_config
    from vaccel_agent.server import Agent

    parser = build_parser()
    args = parser.parse_args(["--plugins", "noop", "--max-blob-size", "512M", "--blob-quota", "0"])
    with Agent([f"unix://{tmp_path / 'a.sock'}"], config=make_config(args)) as agent:
        assert agent.service is not None
        assert agent.service.blobs.max_blob_bytes == 512 << 20
        assert agent.service.blobs.quota_bytes is None
    args = parser.parse_args(["--plugins", "noop", "--vaccel-config", "blob_quota=2GiB"])
    with Agent([f"unix://{tmp_path / 'b.sock'}"], config=make_config(args)) as agent:
        assert agent.service is not None
        assert agent.service.blobs.max_blob_bytes == 4 << 30
        assert agent.service.blobs.quota_bytes == 2 << 30
    with pytest.raises(SystemExit):
        parser.parse_args(["--max-blob-size", "lots"])


# Concurrent uploads --------------------------------------------------------------------------
def test_two_interleaved_uploads_of_the_same_blob_both_succeed(service: Any) -> None:
    data, digest = blob(30_000)
    a, b = Peer("a"), Peer("b")
    assert put(service, a, digest, len(data), 0, data[:10_000]).received == 10_000
    # b starting the same blob must not reset a's upload
    assert put(service, b, digest, len(data), 0, data[:5_000]).received == 5_000
    assert put(service, a, digest, len(data), 10_000, data[10_000:20_000]).received == 20_000
    assert put(service, b, digest, len(data), 5_000, data[5_000:20_000]).received == 20_000
    done = put(service, a, digest, len(data), 20_000, data[20_000:])
    assert done.complete and done.received == len(data)
    late = put(service, b, digest, len(data), 20_000, data[20_000:])
    assert late.complete and late.received == len(data), "the second completion is a success"
    assert service.blobs.path(digest).read_bytes() == data
    assert service.blobs.uploads_completed == 2, "each client completed its own upload"
    assert service.blobs.holds(a.id, digest) and service.blobs.holds(b.id, digest)
    assert [p.name for p in service.blobs.root.iterdir()] == [digest], "stored once on disk"
    assert partials(service) == []


def test_concurrent_uploads_in_threads(service: Any) -> None:
    data, digest = blob(64_000, 9)
    barrier = threading.Barrier(4)
    results: dict[str, Any] = {}

    def upload(name: str) -> None:
        peer = Peer(name)
        barrier.wait(10)
        try:
            for offset in range(0, len(data), 1000):
                reply = put(service, peer, digest, len(data), offset, data[offset : offset + 1000])
                if reply.complete:
                    break
            results[name] = reply
        except Exception as exc:  # pragma: no cover - reported below
            results[name] = exc

    threads = [threading.Thread(target=upload, args=(f"peer{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(getattr(r, "complete", False) for r in results.values()), results
    assert len(results) == 4
    assert service.blobs.path(digest).read_bytes() == data
    assert partials(service) == []


def test_chunks_are_not_written_under_the_store_lock(
    service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow disk write of one upload must not stall other clients' calls."""
    import vaccel_agent.blobs

    writing, release = threading.Event(), threading.Event()
    real_open = open

    def slow_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        if "slow" in threading.current_thread().name:
            writing.set()
            release.wait(10)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(vaccel_agent.blobs, "open", slow_open, raising=False)
    slow_data, slow_digest = blob(1000, 1)
    fast_data, fast_digest = blob(1000, 2)
    slow = threading.Thread(
        target=put,
        args=(service, Peer("s"), slow_digest, len(slow_data), 0, slow_data),
        name="slow-writer",
    )
    slow.start()
    try:
        assert writing.wait(10)
        done = threading.Event()

        def fast() -> None:
            put(service, Peer("f"), fast_digest, len(fast_data), 0, fast_data)
            done.set()

        threading.Thread(target=fast, daemon=True).start()
        assert done.wait(5), "another client's PutBlob waited for a chunk being written"
        assert service.blobs.has(fast_digest)
    finally:
        release.set()
        slow.join(10)
    assert service.blobs.has(slow_digest)


def test_rpc_client_uploads_in_full_a_blob_another_client_holds(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another client's upload of the same file gives this one nothing: it sends every chunk
    (and so proves it has the bytes) before it may use the blob."""
    from vaccel_agent.server import Agent
    from vaccel_plugins.rpc.backend import RpcBackend

    from .conftest import RawClient, remote_session

    data, digest = blob(10_000, 5)
    with Agent([f"unix://{tmp_path / 'a.sock'}"], config=Config(plugins=["noop"])) as agent:
        address = agent.bound_addresses[0]
        other = RawClient(address)
        try:
            req = other.pb.PutBlobRequest(sha256=digest, size=len(data), offset=0)
            req.data.inline = data
            assert other.call("PutBlob", req, other.pb.PutBlobResponse).complete
            with remote_session(address) as session:
                backend = session.backends[0]
                assert isinstance(backend, RpcBackend)
                calls: list[tuple[str, bool]] = []
                real_call = backend._call

                def counting_call(
                    channel: Any, address: str, method: str, *a: Any, **k: Any
                ) -> Any:
                    reply = real_call(channel, address, method, *a, **k)
                    calls.append((method, bool(getattr(reply[0], "complete", False))))
                    return reply

                monkeypatch.setattr(backend, "_call", counting_call)  # the shared instance
                view = memoryview(data)
                backend._send_blob(
                    backend._remotes[session.id],
                    digest,
                    len(data),
                    lambda offset: view[offset : offset + 1000],
                )
                assert calls == [("PutBlob", False)] * 9 + [("PutBlob", True)]
                # Once this client holds it, the agent says so at the first chunk.
                calls.clear()
                backend._send_blob(
                    backend._remotes[session.id],
                    digest,
                    len(data),
                    lambda offset: view[offset : offset + 1000],
                )
                assert calls == [("PutBlob", True)], "no further chunks for its own blob"
        finally:
            other.close()
