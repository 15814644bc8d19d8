"""A client may use only the blobs it uploaded itself (issue 9, attack 1).

Blobs are stored once on disk by sha256, but possession is per client: a client that knows a
digest another client uploaded gets nothing from it. No answer (missing_blobs, size errors,
PutBlob replies, quota errors, status counts) tells one client whether another holds a digest,
or its size.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from vaccel_core import Resource, ResourceType
from vaccel_core.transport import CallError, Message, Peer

from .conftest import AgentProcess, RawClient, make_service, remote_session
from .test_agent_blobs import blob, call, new_session, put, register, upload

pytestmark = pytest.mark.timeout(60)


def sync(svc: Any, peer: Peer, sid: int, rid: int) -> list[tuple[str, bytes]]:
    pb = svc.pb
    from vaccel_plugins.rpc import codec

    reply, buffers = call(
        svc,
        "SyncResource",
        pb.SyncResourceRequest(session_id=sid, resource_id=rid),
        pb.SyncResourceResponse,
        peer,
    )
    decoder = codec.Decoder(buffers, "test")
    return [(f.name, bytes(decoder.data(f.data, f.name))) for f in reply.files]


def test_a_digest_another_client_holds_is_missing_for_this_one(service: Any) -> None:
    alice, mallory = Peer("alice"), Peer("mallory")
    secret, digest = blob(300_000, 3)
    sid_a = new_session(service, alice)
    assert upload(service, alice, secret).complete
    rid = register(service, alice, sid_a, [("secret.bin", digest, len(secret))]).resource_id
    assert rid

    sid_m = new_session(service, mallory)
    _, unknown = blob(300_000, 4)  # a digest nobody holds
    for size in (0, 1, len(secret)):
        for wanted in (digest, unknown):
            reply = register(service, mallory, sid_m, [("x", wanted, size)])
            # the same answer whether alice holds it or nobody does, whatever the size
            assert list(reply.missing_blobs) == [wanted] and reply.resource_id == 0
    with pytest.raises(CallError) as err:
        sync(service, mallory, sid_a, rid)
    assert err.value.status == "NOT_FOUND"
    assert service.counts()["resources"] == 1
    assert sync(service, alice, sid_a, rid) == [("secret.bin", secret)]


def test_put_blob_replies_are_the_same_for_a_digest_another_client_holds(service: Any) -> None:
    alice, mallory = Peer("alice"), Peer("mallory")
    held, held_digest = blob(200_000, 5)
    fresh, fresh_digest = blob(200_000, 6)
    assert upload(service, alice, held).complete

    def replies(data: bytes, digest: str) -> list[tuple[bool, int]]:
        out = []
        for offset in range(0, len(data), 50_000):
            r = put(service, mallory, digest, len(data), offset, data[offset : offset + 50_000])
            out.append((r.complete, r.received))
        return out

    expected = [(False, 50_000), (False, 100_000), (False, 150_000), (True, 200_000)]
    assert replies(held, held_digest) == expected, "no early 'complete' for alice's blob"
    assert replies(fresh, fresh_digest) == expected
    # Bytes that do not match the digest give mallory nothing, held by alice or not.
    for digest in (held_digest, hashlib.sha256(b"nobody has this").hexdigest()):
        with pytest.raises(CallError) as err:
            put(service, Peer("eve"), digest, 4, 0, b"abcd")
        assert err.value.status == "INVALID_ARGUMENT"
        assert "not the announced" in err.value.message
    assert not service.blobs.holds("eve", held_digest)


def test_a_client_uses_the_shared_copy_only_after_uploading_it_in_full(service: Any) -> None:
    alice, mallory = Peer("alice"), Peer("mallory")
    secret, digest = blob(100_000, 7)
    assert upload(service, alice, secret).complete
    sid = new_session(service, mallory)
    assert put(service, mallory, digest, len(secret), 0, secret[:99_999]).received == 99_999
    reply = register(service, mallory, sid, [("m", digest, len(secret))])
    assert list(reply.missing_blobs) == [digest], "an unfinished upload grants nothing"
    assert put(service, mallory, digest, len(secret), 99_999, secret[99_999:]).complete
    rid = register(service, mallory, sid, [("m", digest, len(secret))]).resource_id
    assert sync(service, mallory, sid, rid) == [("m", secret)]
    # Stored once; counted for each client that holds it.
    assert [p.name for p in service.blobs.root.iterdir() if not p.is_dir()] == [digest]
    assert service.counts()["blobs"] == 2
    assert service.counts()["blob_bytes"] == 2 * len(secret)
    # alice leaving does not take mallory's copy away
    service.peer_disconnected(alice)
    assert sync(service, mallory, sid, rid) == [("m", secret)]
    service.peer_disconnected(mallory)
    assert service.counts()["blobs"] == 0
    assert list(service.blobs.root.iterdir()) == []


def test_size_errors_name_only_this_clients_own_blob(service: Any) -> None:
    mallory = Peer("mallory")
    own, digest = blob(5000, 8)
    sid = new_session(service, mallory)
    assert upload(service, mallory, own).complete
    with pytest.raises(CallError, match=r"size 0 differs from the 5000 bytes") as err:
        register(service, mallory, sid, [("m", digest, 0)])
    assert err.value.status == "INVALID_ARGUMENT"


def test_quota_and_counts_do_not_reveal_deduplication() -> None:
    """Each client's blobs count at their full size, shared on disk or not: a client cannot
    learn from the quota or the status counts that another holds the same bytes."""
    svc = make_service(blob_quota_bytes=1500)
    try:
        data, digest = blob(900, 9)
        _, other_digest = blob(900, 10)
        assert upload(svc, Peer("alice"), data).complete
        before = svc.counts()
        for d in (digest, other_digest):  # the same refusal for alice's digest and a new one
            with pytest.raises(CallError, match="quota of 1500 bytes") as err:
                put(svc, Peer("mallory"), d, 900, 0, b"")
            assert err.value.status == "RESOURCE_EXHAUSTED"
        assert svc.counts() == before
    finally:
        svc.close()


def test_the_rpc_client_sends_only_the_hash_when_it_registers_a_file_again(
    shared_agent: AgentProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = blob(3 << 20, 11)
    with remote_session(shared_agent.address) as first:
        Resource.from_buffer(model, ResourceType.MODEL, name="m.onnx").register(first)
        backend: Any = first.backends[0]
        calls: list[str] = []
        real_call = backend._call

        def counting(channel: Any, address: str, method: str, *a: Any, **k: Any) -> Any:
            calls.append(method)
            return real_call(channel, address, method, *a, **k)

        monkeypatch.setattr(backend, "_call", counting)
        with remote_session(shared_agent.address) as second:
            calls.clear()
            again = Resource.from_buffer(model, ResourceType.MODEL, name="other.onnx")
            again.register(second)
            assert calls == ["RegisterResource"], "one round trip, no blob"
            assert backend.resource_sync(second, again) == [("other.onnx", model)]


def test_a_known_digest_gives_another_client_nothing_through_a_real_agent(
    shared_agent: AgentProcess,
) -> None:
    alice, mallory = RawClient(shared_agent.address), RawClient(shared_agent.address)
    pb = alice.pb
    secret, digest = blob(200_000, 12)
    try:
        sid_a = alice.create_session()
        req = pb.PutBlobRequest(sha256=digest, size=len(secret), offset=0)
        req.data.inline = secret
        assert alice.call("PutBlob", req, pb.PutBlobResponse).complete
        reg = pb.RegisterResourceRequest(session_id=sid_a, type=2)
        reg.files.add(name="secret.bin", sha256=digest, size=len(secret))
        rid = alice.call("RegisterResource", reg, pb.RegisterResourceResponse).resource_id
        assert rid

        sid_m = mallory.create_session()
        for size in (0, len(secret)):
            probe = pb.RegisterResourceRequest(session_id=sid_m, type=2)
            probe.files.add(name="x", sha256=digest, size=size)
            reply = mallory.call("RegisterResource", probe, pb.RegisterResourceResponse)
            assert list(reply.missing_blobs) == [digest] and not reply.resource_id
        half = pb.PutBlobRequest(sha256=digest, size=len(secret), offset=0)
        half.data.inline = secret[:1000]
        reply = mallory.call("PutBlob", half, pb.PutBlobResponse)
        assert (reply.complete, reply.received) == (False, 1000)
        with pytest.raises(CallError) as err:
            mallory.channel.call(
                "SyncResource",
                Message(
                    pb.SyncResourceRequest(session_id=sid_a, resource_id=rid).SerializeToString()
                ),
                10,
            )
        assert err.value.status == "NOT_FOUND"
    finally:
        alice.close()
        mallory.close()
