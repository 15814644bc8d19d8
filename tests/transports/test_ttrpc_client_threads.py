"""One TtrpcChannel shared by many threads that call and ask ``lost`` (the rpc backend asks
before every call): no thread ever sees an error. ``lost`` once polled the reader's poll object
without the lock while another thread read with it, and poll() refused ("concurrent poll()
invocation")."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from vaccel_core.transport import Address, Message, Peer, TransportOptions
from vaccel_transports.ttrpc.client import TtrpcChannel
from vaccel_transports.unix import UnixTransport

pytestmark = pytest.mark.timeout(60)


class Echo:
    def handle(self, method: str, request: Message, peer: Peer) -> Message:
        return Message(bytes(request.payload))

    def peer_connected(self, peer: Peer) -> None:
        pass

    def peer_disconnected(self, peer: Peer) -> None:
        pass


def test_threads_calling_and_asking_lost_share_a_channel(tmp_path: Path) -> None:
    path = tmp_path / "a.sock"
    listener = UnixTransport().listen(Address.parse(f"unix://{path}"), Echo(), TransportOptions())
    errors: list[BaseException] = []
    try:
        channel = TtrpcChannel.connect_unix(str(path), TransportOptions())

        def work(n: int) -> None:
            try:
                for i in range(300):
                    assert channel.lost is None
                    payload = f"{n}:{i}".encode()
                    assert channel.call("Echo", Message(payload), 10).payload == payload
            except BaseException as exc:  # reported below, with the thread's failure
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(50)
        channel.close()
    finally:
        listener.stop(1)
    assert errors == []
