"""A tiny agent stand-in for transport tests: serves an echo Handler on one address.

Run as ``python -m tests.transports.echo_server ADDRESS``; prints ``Listening on '<address>'``
once it accepts connections, then ``connected <peer>`` / ``disconnected <peer>`` as guests come
and go. Methods: ``echo`` (the request back), ``fail`` (an InvalidArgumentError), ``sleep``
(sleeps float(payload) seconds, then echoes), ``zeros`` (a reply buffer of int(payload) zero
bytes), ``counted`` (the same, with the number of ``counted`` calls so far as payload),
``where`` (whether each request buffer lies in shared memory), ``peers`` (how many peers are
connected).
"""

from __future__ import annotations

import json
import mmap
import signal
import sys
import threading
import time
from typing import Any

from vaccel_core.errors import InvalidArgumentError
from vaccel_core.transport import Address, Message, Peer, TransportOptions


class EchoHandler:
    """The Handler the tests talk to."""

    def __init__(self, out: Any = None) -> None:
        self.out = out or sys.stdout
        self.peers: set[str] = set()
        self.lock = threading.Lock()
        self.calls = 0

    def _say(self, text: str) -> None:
        with self.lock:
            print(text, file=self.out, flush=True)

    def handle(self, method: str, request: Message, peer: Peer) -> Message:
        if method == "echo":
            return Message(bytes(request.payload), list(request.buffers))
        if method == "fail":
            raise InvalidArgumentError(f"fail: asked to fail by {bytes(request.payload)!r}")
        if method == "sleep":
            time.sleep(float(bytes(request.payload)))
            return Message(bytes(request.payload), list(request.buffers))
        if method == "zeros":
            return Message(b"z", [bytes(int(bytes(request.payload)))])
        if method == "counted":
            with self.lock:
                self.calls += 1
                n = self.calls
            return Message(str(n).encode(), [bytes(int(bytes(request.payload)))])
        if method == "where":
            shared = [isinstance(memoryview(b).obj, mmap.mmap) for b in request.buffers]
            return Message(json.dumps(shared).encode())
        if method == "peers":
            with self.lock:
                return Message(str(len(self.peers)).encode())
        raise InvalidArgumentError(f"{method}: no such method")

    def peer_connected(self, peer: Peer) -> None:
        with self.lock:
            self.peers.add(peer.id)
        self._say(f"connected {peer.id}")

    def peer_disconnected(self, peer: Peer) -> None:
        with self.lock:
            self.peers.discard(peer.id)
        self._say(f"disconnected {peer.id}")


def main(argv: list[str]) -> int:
    from vaccel_core.plugins import get_registry

    address = Address.parse(argv[0])
    options = TransportOptions(extra=json.loads(argv[1]) if len(argv) > 1 else {})
    handler = EchoHandler()
    listener = get_registry().transport(address.scheme).listen(address, handler, options)
    print(f"Listening on '{listener.address}'", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    listener.stop(2.0)
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
