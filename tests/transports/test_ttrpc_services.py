"""Other ttrpc services of the agent's handler (its ``services`` attribute, e.g. upstream
vAccel's AgentService) are served on the same connections, under the same token, with their
own error form (StatusError: code, message and details as given)."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from vaccel_core.transport import (
    Address,
    CallError,
    Message,
    Peer,
    StatusError,
    TransportOptions,
)
from vaccel_transports.ttrpc import wire
from vaccel_transports.ttrpc.client import TtrpcChannel
from vaccel_transports.unix import UnixTransport

pytestmark = pytest.mark.timeout(60)

DETAIL = ("type.googleapis.com/vaccel.Error", b"\x08\x5f")


class WithServices:
    """The agent's handler plus a service of another schema."""

    def __init__(self) -> None:
        self.services = {"other.v1.Service": self.other}
        self.peers: list[str] = []

    def other(self, method: str, payload: bytes, peer: Peer) -> bytes:
        self.peers.append(peer.id)
        if method == "Reverse":
            return payload[::-1]
        raise StatusError(13, f"{method}: no such thing", [DETAIL])

    def handle(self, method: str, request: Message, peer: Peer) -> Message:
        self.peers.append(peer.id)
        return Message(b"agent:" + bytes(request.payload))

    def peer_connected(self, peer: Peer) -> None:
        pass

    def peer_disconnected(self, peer: Peer) -> None:
        pass


def test_other_services_share_the_connection_and_choose_their_errors(tmp_path: Path) -> None:
    path = tmp_path / "a.sock"
    handler = WithServices()
    listener = UnixTransport().listen(Address.parse(f"unix://{path}"), handler, TransportOptions())
    try:
        channel = TtrpcChannel.connect_unix(str(path), TransportOptions())
        assert channel.invoke("other.v1.Service", "Reverse", Message(b"abc"), 5).payload == b"cba"
        assert channel.call("Echo", Message(b"x"), 5).payload == b"agent:x"
        assert len(set(handler.peers)) == 1, "one connection, one client, whatever the service"
        check = wire.HealthCheckRequest(service="other.v1.Service").SerializeToString()
        health = channel.invoke("grpc.health.v1.Health", "Check", Message(check), 5)
        assert wire.HealthCheckResponse.FromString(health.payload).status == 1  # SERVING
        with pytest.raises(CallError) as err:
            channel.invoke("other.v1.Service", "Nope", Message(b""), 5)
        assert err.value.status == "INTERNAL" and "Nope: no such thing" in err.value.message
        assert err.value.details == (DETAIL,)
        channel.close()
        # The details travel as given.
        raw = socket.socket(socket.AF_UNIX)
        raw.connect(str(path))
        body = wire.Request(service="other.v1.Service", method="Nope").SerializeToString()
        raw.sendall(struct.pack(">IIBB", len(body), 1, 1, 0) + body)
        length, stream, kind, _ = struct.unpack(">IIBB", raw.recv(10))
        data = b""
        while len(data) < length:
            data += raw.recv(length - len(data))
        raw.close()
        status = wire.Response.FromString(data).status
        assert (stream, kind, status.code) == (1, wire.TYPE_RESPONSE, 13)
        assert [(d.type_url, d.value) for d in status.details] == [DETAIL]
    finally:
        listener.stop(1)


def test_other_services_need_the_token_too(tmp_path: Path) -> None:
    path = tmp_path / "a.sock"
    options = TransportOptions(token=b"sesame")
    listener = UnixTransport().listen(Address.parse(f"unix://{path}"), WithServices(), options)
    try:
        anonymous = TtrpcChannel.connect_unix(str(path), TransportOptions())
        with pytest.raises(CallError) as err:
            anonymous.invoke("other.v1.Service", "Reverse", Message(b"abc"), 5)
        assert err.value.status == "UNAUTHENTICATED"
        anonymous.close()
        trusted = TtrpcChannel.connect_unix(str(path), options)
        assert trusted.invoke("other.v1.Service", "Reverse", Message(b"ab"), 5).payload == b"ba"
        trusted.close()
    finally:
        listener.stop(1)
