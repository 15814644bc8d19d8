"""The tcp/unix transports on their own (in-process listener, real sockets, real gRPC and
ttrpc: the unix tests run over both)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from vaccel_core import RemoteError
from vaccel_core.transport import Address, CallError, Message, Peer, TransportOptions
from vaccel_transports.tcp import TcpTransport
from vaccel_transports.unix import UnixTransport

from .conftest import wait_until

pytestmark = pytest.mark.timeout(60)


class EchoHandler:
    """Echoes payload and buffers; records peers."""

    def __init__(self, reply_size: int = 0) -> None:
        self.connected: list[str] = []
        self.disconnected: list[str] = []
        self.reply_size = reply_size
        self.lock = threading.Lock()

    def handle(self, method: str, request: Message, peer: Peer) -> Message:
        if method == "Big":
            return Message(b"", [bytes(self.reply_size)])
        if method == "Who":
            return Message(peer.id.encode())
        return Message(bytes(request.payload), [bytes(b) for b in request.buffers])

    def peer_connected(self, peer: Peer) -> None:
        with self.lock:
            self.connected.append(peer.id)

    def peer_disconnected(self, peer: Peer) -> None:
        with self.lock:
            self.disconnected.append(peer.id)


@pytest.fixture(params=["unix", "grpc+unix", "tcp", "ttrpc+tcp"])
def transport_and_address(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[object, str]:
    if request.param.endswith("unix"):
        return UnixTransport(), f"{request.param}://{tmp_path / 't.sock'}"
    return TcpTransport(), f"{request.param}://127.0.0.1:0"


@pytest.fixture(params=["unix", "grpc+unix"])
def unix(request: pytest.FixtureRequest) -> str:
    """A unix scheme: ttrpc (the default) or gRPC."""
    return str(request.param)


def test_echo_peers_and_disconnect(transport_and_address: tuple) -> None:
    transport, address = transport_and_address
    handler = EchoHandler()
    options = TransportOptions()
    listener = transport.listen(Address.parse(address), handler, options)
    try:
        a = transport.connect(Address.parse(listener.address), options)
        b = transport.connect(Address.parse(listener.address), options)
        reply = a.call("Echo", Message(b"hi", [b"x" * 100_000, b"y"]), 5)
        assert bytes(reply.payload) == b"hi"
        assert [len(x) for x in reply.buffers] == [100_000, 1]
        ids = {bytes(c.call("Who", Message(b""), 5).payload).decode() for c in (a, b)}
        assert len(ids) == 2, "each connection is its own peer"
        wait_until(lambda: sorted(handler.connected) == sorted(ids), 5, "both attached")
        a.close()
        wait_until(lambda: len(handler.disconnected) == 1, 5, "a detached")
        assert b.call("Echo", Message(b"still"), 5).payload == b"still"
        b.close()
    finally:
        listener.stop(1)
    assert sorted(handler.disconnected) == sorted(ids)


def test_idle_connection_survives_keepalive_pings(tmp_path: Path, unix: str) -> None:
    """Keepalive pings on an idle client must not make the server drop it (too_many_pings),
    which would release the client's sessions. Scaled down: a ping every 100 ms (without the
    fix the server drops the client after about 3 s)."""
    import time

    options = TransportOptions(extra={"keepalive_time_ms": 100, "keepalive_timeout_ms": 2000})
    handler = EchoHandler()
    listener = UnixTransport().listen(Address.parse(f"{unix}://{tmp_path / 's'}"), handler, options)
    try:
        channel = UnixTransport().connect(Address.parse(listener.address), options)
        assert channel.call("Echo", Message(b"x"), 5).payload == b"x"
        time.sleep(6)
        assert handler.disconnected == [], "the server dropped an idle client"
        assert channel.lost is None  # type: ignore[attr-defined]
        assert channel.call("Echo", Message(b"y"), 5).payload == b"y"
        channel.close()
    finally:
        listener.stop(1)


def test_reply_over_the_limit_is_resource_exhausted(tmp_path: Path, unix: str) -> None:
    options = TransportOptions(max_message_bytes=64 << 10)
    handler = EchoHandler(reply_size=1 << 20)
    listener = UnixTransport().listen(Address.parse(f"{unix}://{tmp_path / 's'}"), handler, options)
    try:
        channel = UnixTransport().connect(Address.parse(listener.address), options)
        with pytest.raises(CallError) as err:
            channel.call("Big", Message(b""), 5)
        assert err.value.status == "RESOURCE_EXHAUSTED"
        assert "the agent's reply of 1048581 bytes exceeds the message size limit" in str(err.value)
        assert channel.call("Echo", Message(b"ok"), 5).payload == b"ok"
        channel.close()
    finally:
        listener.stop(1)


def test_too_many_clients_are_refused_not_starved(tmp_path: Path, unix: str) -> None:
    options = TransportOptions(max_clients=1, extra={"max_workers": 4})
    handler = EchoHandler()
    listener = UnixTransport().listen(Address.parse(f"{unix}://{tmp_path / 's'}"), handler, options)
    try:
        first = UnixTransport().connect(Address.parse(listener.address), options)
        wait_until(lambda: len(handler.connected) == 1, 5, "first attached")
        with pytest.raises(CallError, match=r"already serves 1 clients .*--max-clients") as err:
            UnixTransport().connect(Address.parse(listener.address), options)
        assert err.value.status == "RESOURCE_EXHAUSTED"
        assert first.call("Echo", Message(b"x"), 5).payload == b"x"
        first.close()
        wait_until(lambda: len(handler.disconnected) == 1, 5, "first detached")
        again = UnixTransport().connect(Address.parse(listener.address), options)
        assert again.call("Echo", Message(b"x"), 5).payload == b"x"
        again.close()
    finally:
        listener.stop(1)


def test_bad_addresses_are_clear(tmp_path: Path) -> None:
    from vaccel_core.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="expected tcp://HOST:PORT"):
        TcpTransport().listen(Address.parse("tcp://localhost"), EchoHandler(), TransportOptions())
    with pytest.raises(RemoteError, match="does not exist"):
        UnixTransport().listen(
            Address.parse(f"unix://{tmp_path / 'no' / 'dir.sock'}"),
            EchoHandler(),
            TransportOptions(),
        )
    with pytest.raises(InvalidArgumentError, match="bytes long; the limit is 107"):
        UnixTransport().connect(Address.parse("unix:///" + "x" * 120), TransportOptions())
    regular = tmp_path / "file"
    regular.write_text("x")
    with pytest.raises(RemoteError, match="exists and is not a socket"):
        UnixTransport().listen(
            Address.parse(f"unix://{regular}"), EchoHandler(), TransportOptions()
        )
    with pytest.raises(RemoteError, match="cannot reach the vAccel agent at unix://"):
        UnixTransport().connect(
            Address.parse(f"unix://{tmp_path / 'none.sock'}"), TransportOptions(connect_timeout=0.5)
        )


class _Refused(Exception):
    """What gRPC raises for a call the server refused (RST_STREAM REFUSED_STREAM)."""

    def code(self) -> object:
        import grpc

        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "Stream refused by server"

    def trailing_metadata(self) -> tuple:
        return ()


def test_a_refused_call_is_not_a_lost_connection(tmp_path: Path) -> None:
    """Under load the agent's gRPC core may refuse one stream; the client must not take that
    for the agent going away (which drops every session of the client)."""
    handler = EchoHandler()
    listener = UnixTransport().listen(
        Address.parse(f"grpc+unix://{tmp_path / 's'}"), handler, TransportOptions()
    )
    try:
        channel = UnixTransport().connect(Address.parse(listener.address), TransportOptions())
        error = channel._error("Run", _Refused(), 5)  # type: ignore[attr-defined]
        assert isinstance(error, RemoteError) and "refused the call" in error.message
        assert channel.lost is None  # type: ignore[attr-defined]
        assert channel.call("Echo", Message(b"still"), 5).payload == b"still"
        listener.stop(1)
        wait_until(lambda: channel.lost is not None, 5, "the agent going away is noticed")
        error = channel._error("Run", _Refused(), 5)  # type: ignore[attr-defined]
        assert "is unreachable" in error.message
        channel.close()
    finally:
        listener.stop(1)
