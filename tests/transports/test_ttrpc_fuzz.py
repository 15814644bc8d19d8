"""Property-based fuzzing of the ttrpc listener (hypothesis), against the real thing: a real
unix listener (ttrpc and gRPC on one socket) in this process, real sockets, real threads.

A raw client writes random frames (any stream id, type and flags; data that is junk or a ttrpc
Request with random service, method, payload, timeout and metadata; lengths that tell the
truth, claim more or claim less than what follows; sometimes stopping mid-frame), closes its
writing side and reads what comes back. Whatever it wrote, the listener must:

* answer only with well-formed Response frames (a parseable ``Response``; an error status
  names what was wrong);
* close or keep the connection, never hang on it (the read ends within a bound);
* never crash a thread (nothing logged at ERROR) nor leave one behind;
* go on serving another client connected all along.

The normal suite runs a modest number of examples with a fixed seed; ``tox -e fuzz`` runs
``VACCEL_FUZZ_EXAMPLES`` with a random seed.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaccel_core.proto import SERVICE_NAME
from vaccel_core.transport import Address, Message, Peer, TransportOptions
from vaccel_transports.ttrpc import wire
from vaccel_transports.ttrpc.client import TtrpcChannel
from vaccel_transports.unix import UnixTransport

CONFIGURED = int(os.environ.get("VACCEL_FUZZ_EXAMPLES") or 0)
EXAMPLES = CONFIGURED or 60

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(120 + EXAMPLES)]

LIMIT = 64 << 10
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=not CONFIGURED,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


class Echo:
    def handle(self, method: str, request: Message, peer: Peer) -> Message:
        return Message(bytes(request.payload), [bytes(b) for b in request.buffers])

    def peer_connected(self, peer: Peer) -> None:
        pass

    def peer_disconnected(self, peer: Peer) -> None:
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, TtrpcChannel]]:
    """A listener and a healthy client that stays connected through every example."""
    path = tmp_path_factory.mktemp("ttrpc-fuzz") / "a.sock"
    options = TransportOptions(max_message_bytes=LIMIT, receive_timeout=0.5, handshake_timeout=0.5)
    listener = UnixTransport().listen(Address.parse(f"unix://{path}"), Echo(), options)
    healthy = TtrpcChannel.connect_unix(str(path), TransportOptions())
    # Its first call makes it a client (the listener's threads for it start now, not later).
    assert healthy.call("Echo", Message(b"hello"), 5).payload == b"hello"
    yield str(path), healthy
    healthy.close()
    listener.stop(1)


def envelopes() -> st.SearchStrategy[bytes]:
    texts = st.text(max_size=40)
    request = st.builds(
        lambda service, method, payload, timeout, meta: wire.Request(
            service=service,
            method=method,
            payload=payload,
            timeout_nano=timeout,
            metadata=[{"key": k, "value": v} for k, v in meta],
        ).SerializeToString(),
        st.sampled_from([SERVICE_NAME, "grpc.health.v1.Health", "x"]) | texts,
        st.sampled_from(["Echo", "Check", "GetStatus", "Attach"]) | texts,
        st.binary(max_size=256),
        st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
        st.lists(st.tuples(texts, texts), max_size=3),
    )
    sizes = st.builds(
        lambda sizes: wire.Buffers(sizes=sizes).SerializeToString(),
        st.lists(st.integers(min_value=0, max_value=1 << 40), max_size=3),
    )
    return request | sizes | st.binary(max_size=300)


frames = st.tuples(
    st.integers(min_value=0, max_value=(1 << 32) - 1) | st.integers(min_value=0, max_value=9),
    st.sampled_from([1, 2, 3]) | st.integers(min_value=0, max_value=255),
    st.sampled_from([0, 1, 2, 4]) | st.integers(min_value=0, max_value=255),
    envelopes(),
    st.sampled_from(["exact", "exact", "exact", "more", "less", "huge"]),
)


def encode(frame: tuple[int, int, int, bytes, str]) -> bytes:
    stream, kind, flags, data, lie = frame
    length = {
        "exact": len(data),
        "more": len(data) + 7,
        "less": max(len(data) - 3, 0),
        "huge": LIMIT + wire.ENVELOPE_SLACK + 1,
    }[lie]
    return struct.pack(">IIBB", length, stream, kind, flags) + data


def read_replies(sock: socket.socket, within: float) -> list[tuple[int, int, bytes]]:
    """Frames sent back until the listener closes or ``within`` seconds pass."""
    sock.settimeout(0.2)
    data = b""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    out = []
    while len(data) >= 10:
        length, stream, kind, _ = struct.unpack(">IIBB", data[:10])
        out.append((stream, kind, data[10 : 10 + length]))
        data = data[10 + length :]
    assert not data, f"a truncated frame came back: {data!r}"
    return out


@FUZZ
@given(attack=st.lists(frames, min_size=1, max_size=6), cut=st.booleans())
def test_random_frames_never_break_the_listener(
    served: tuple[str, TtrpcChannel],
    errors_logged: list[str],
    attack: list[Any],
    cut: bool,
) -> None:
    path, healthy = served
    before = threading.active_count()
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(path)
    try:
        payload = b"".join(encode(frame) for frame in attack)
        if cut and len(payload) > 11:
            payload = payload[: len(payload) // 2]
        raw.sendall(b"\0" + payload[1:] if payload[:1] == b"P" else payload)
        raw.shutdown(socket.SHUT_WR)
        replies = read_replies(raw, within=3.0)
    finally:
        raw.close()
    for _stream, kind, data in replies:
        assert kind == wire.TYPE_RESPONSE, f"the listener sent a frame of type {kind}"
        response = wire.Response.FromString(data)
        if response.status.code:
            assert response.status.message, "an error status says what was wrong"
    assert healthy.call("Echo", Message(b"still here"), 5).payload == b"still here"
    deadline = time.monotonic() + 3
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() <= before, "a connection's thread was left behind"
    assert errors_logged == []


def test_the_fuzzer_reaches_the_service(served: tuple[str, TtrpcChannel]) -> None:
    """The generator's valid case is served: the fuzzing above is not all refusals."""
    path, _ = served
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(path)
    body = wire.Request(service=SERVICE_NAME, method="Echo", payload=b"ok").SerializeToString()
    raw.sendall(encode((1, wire.TYPE_REQUEST, 0, body, "exact")))
    raw.shutdown(socket.SHUT_WR)
    [(stream, kind, data)] = read_replies(raw, within=3.0)
    raw.close()
    assert (stream, kind) == (1, wire.TYPE_RESPONSE)
    assert wire.Response.FromString(data).payload == b"ok"
