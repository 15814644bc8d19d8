"""SyncResource never reads more than one reply may carry (issue 9, attack 8).

A whole-resource reply over the message limit is refused before any file is read; a resource
of any size can be read back in pieces (``SyncResourceRequest.piece``), which the rpc client
does.
"""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import pytest

from vaccel_core import Resource, ResourceType
from vaccel_core.errors import OutOfMemoryError
from vaccel_core.transport import CallError, Peer
from vaccel_plugins.rpc import codec

from .conftest import make_service, remote_session, start_agent
from .test_agent_blobs import blob, call, new_session, register, upload

pytestmark = pytest.mark.timeout(90)

LIMIT = 1 << 20


@pytest.fixture
def small_service() -> Any:
    svc = make_service(max_message_bytes=LIMIT)
    yield svc
    svc.close()


def registered(svc: Any, peer: Peer, files: list[tuple[str, bytes]]) -> tuple[int, int]:
    sid = new_session(svc, peer)
    triples = []
    for name, data in files:
        assert upload(svc, peer, data, chunk=LIMIT // 2).complete
        triples.append((name, blob_digest(data), len(data)))
    rid = register(svc, peer, sid, triples).resource_id
    assert rid
    return sid, rid


def blob_digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def sync_piece(
    svc: Any, peer: Peer, sid: int, rid: int, file: int, offset: int, length: int = 0
) -> tuple[Any, list[Any], int]:
    """One piece request: the reply, its buffers and its size on the wire."""
    pb = svc.pb
    req = pb.SyncResourceRequest(session_id=sid, resource_id=rid)
    req.piece.file, req.piece.offset, req.piece.length = file, offset, length
    req.piece.SetInParent()
    reply, buffers = call(svc, "SyncResource", req, pb.SyncResourceResponse, peer)
    wire = reply.ByteSize() + sum(memoryview(b).nbytes for b in buffers)
    return reply, buffers, wire


def test_a_whole_resource_over_the_limit_is_refused_before_reading(
    small_service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer = Peer("p")
    big, _ = blob(3 * LIMIT, 1)
    sid, rid = registered(small_service, peer, [("big.bin", big)])
    opened: list[str] = []
    real_open = builtins.open

    def spying_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spying_open)
    pb = small_service.pb
    with pytest.raises(CallError) as err:
        call(
            small_service,
            "SyncResource",
            pb.SyncResourceRequest(session_id=sid, resource_id=rid),
            pb.SyncResourceResponse,
            peer,
        )
    monkeypatch.undo()
    assert err.value.status == "RESOURCE_EXHAUSTED"
    assert "--max-message-size" in err.value.message and "piece" in err.value.message
    assert str(3 * LIMIT) in err.value.message
    root = str(small_service.blobs.root)
    assert not [p for p in opened if p.startswith(root)], "no resource file was opened"


def test_a_resource_larger_than_a_message_is_read_in_pieces(small_service: Any) -> None:
    peer = Peer("p")
    big, _ = blob(3 * LIMIT + 12345, 2)
    small, _ = blob(1000, 3)
    empty = b""
    files = [("big.bin", big), ("empty", empty), ("small.bin", small)]
    sid, rid = registered(small_service, peer, files)
    got = [bytearray() for _ in files]
    index, offset, calls = 0, 0, 0
    while index < len(files):
        reply, buffers, wire = sync_piece(small_service, peer, sid, rid, index, offset)
        calls += 1
        assert wire <= LIMIT, "every reply fits the message limit"
        assert [(f.name, f.size) for f in reply.files] == [(n, len(d)) for n, d in files]
        decoder = codec.Decoder(buffers, "test")
        for i in range(index, len(files)):
            got[i] += decoder.data(reply.files[i].data, "data")
        while index < len(files) and len(got[index]) == len(files[index][1]):
            index += 1
        offset = len(got[index]) if index < len(files) else 0
        assert calls < 10
    assert [bytes(g) for g in got] == [d for _, d in files]
    assert calls == 4, "3 full pieces, then the rest of big.bin and both small files at once"


def test_a_piece_asks_for_at_most_length_bytes(small_service: Any) -> None:
    peer = Peer("p")
    data, _ = blob(10_000, 4)
    sid, rid = registered(small_service, peer, [("a", data), ("b", data)])
    reply, buffers, _ = sync_piece(small_service, peer, sid, rid, 0, 9_000, length=3_000)
    decoder = codec.Decoder(buffers, "test")
    assert bytes(decoder.data(reply.files[0].data, "a")) == data[9_000:]
    assert bytes(decoder.data(reply.files[1].data, "b")) == data[:2_000]


def test_a_piece_counts_against_the_clients_bytes_in_flight() -> None:
    svc = make_service(max_message_bytes=4 * LIMIT, max_client_inflight_bytes=LIMIT)
    try:
        peer = Peer("p")
        data, _ = blob(3 * LIMIT, 7)
        sid, rid = registered(svc, peer, [("big.bin", data)])
        with pytest.raises(CallError) as err:
            sync_piece(svc, peer, sid, rid, 0, 0)  # as much as fits a message: 3 MiB
        assert err.value.status == "RESOURCE_EXHAUSTED"
        assert "--max-client-inflight-bytes" in err.value.message
        # Counted twice (the bytes read and the reply that carries them): a quarter fits.
        reply, buffers, _ = sync_piece(svc, peer, sid, rid, 0, 0, length=LIMIT // 4)
        got = codec.Decoder(buffers, "test").data(reply.files[0].data, "data")
        assert bytes(got) == data[: LIMIT // 4], "a smaller piece is served"
    finally:
        svc.close()


@pytest.mark.parametrize(
    ("file", "offset", "expected"),
    [
        (2, 0, "argument 'piece.file': expected a file index below 2, got 2"),
        (0, 10_001, "'piece.offset': expected at most 10000 (the size of file 0), got 10001"),
    ],
)
def test_piece_arguments_are_checked(
    small_service: Any, file: int, offset: int, expected: str
) -> None:
    peer = Peer("p")
    data, _ = blob(10_000, 5)
    sid, rid = registered(small_service, peer, [("a", data), ("b", data)])
    with pytest.raises(CallError) as err:
        sync_piece(small_service, peer, sid, rid, file, offset)
    assert err.value.status == "INVALID_ARGUMENT"
    assert expected in err.value.message


def test_rpc_resource_sync_reads_a_resource_larger_than_the_message_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = start_agent(
        [f"unix://{tmp_path / 'v.sock'}"], args=["--max-message-size", str(4 * LIMIT)]
    )
    try:
        model = tmp_path / "model.onnx"
        big, _ = blob(9 * LIMIT + 7, 6)
        model.write_bytes(big)
        labels = tmp_path / "labels.txt"
        labels.write_bytes(b"cat\ndog\n")
        with remote_session(handle.address) as session:
            backend: Any = session.backends[0]
            # this client's own limit matches the agent's (chunks of half of it)
            monkeypatch.setattr(backend, "max_message_bytes", 4 * LIMIT)
            res = Resource([model, labels], ResourceType.MODEL)
            res.register(session)
            assert backend.resource_sync(session, res) == [
                ("model.onnx", big),
                ("labels.txt", b"cat\ndog\n"),
            ]
            # A client that asks for the whole resource at once gets a clear refusal.
            remote = backend._remotes[session.id]
            with pytest.raises(OutOfMemoryError, match=r"read it in pieces.*--max-message-size"):
                backend._call(
                    remote.channel,
                    remote.address,
                    "SyncResource",
                    backend.pb.SyncResourceRequest(
                        session_id=remote.session_id, resource_id=remote.resources[res.id]
                    ),
                    reply_type=backend.pb.SyncResourceResponse,
                )
            session.noop()
    finally:
        handle.stop()
