"""The ttrpc client's own limit on replies: a reply whose buffers are over it is refused
before a byte of them is stored, and the connection goes on (its frames are skipped)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vaccel_core.transport import Address, CallError, Message, Peer, TransportOptions
from vaccel_transports.ttrpc.client import TtrpcChannel
from vaccel_transports.unix import UnixTransport

pytestmark = pytest.mark.timeout(60)


class Replies:
    """Replies with ``size`` bytes out of band for method Big; echoes otherwise."""

    def __init__(self, size: int) -> None:
        self.size = size

    def handle(self, method: str, request: Message, peer: Peer) -> Message:
        if method == "Big":
            return Message(b"", [bytes(self.size)])
        return Message(bytes(request.payload))

    def peer_connected(self, peer: Peer) -> None:
        pass

    def peer_disconnected(self, peer: Peer) -> None:
        pass


def test_a_reply_over_the_clients_limit_is_refused_and_the_channel_goes_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.sock"
    listener = UnixTransport().listen(
        Address.parse(f"unix://{path}"),
        Replies(9 << 20),
        TransportOptions(max_message_bytes=64 << 20),
    )
    try:
        channel = TtrpcChannel.connect_unix(str(path), TransportOptions(max_message_bytes=1 << 20))
        with pytest.raises(CallError) as err:
            channel.call("Big", Message(b""), 10)
        assert err.value.status == "RESOURCE_EXHAUSTED"
        assert "the client refused the message: 9437184 bytes" in err.value.message
        assert channel.lost is None
        assert channel.call("Echo", Message(b"next"), 10).payload == b"next"
        channel.close()
    finally:
        listener.stop(1)
