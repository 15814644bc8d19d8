"""A byte relay between stream sockets.

grpcio can neither bind nor dial ``vsock:`` addresses, nor take over a connection someone else
accepted. So gRPC stays on a private unix socket, and connections that must reach it from
elsewhere are relayed byte for byte: a guest's gRPC channel to AF_VSOCK (:mod:`.vsock`), and the
gRPC clients of a listener that serves ttrpc and gRPC on one socket (:mod:`.dual`).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

from vaccel_core.log import logger

from ._accept import accept_loop

#: Per pump: small, since every relayed connection holds two (a connection-flooding client
#: must not turn --max-connections into gigabytes).
CHUNK = 64 << 10


def _pump(src: socket.socket, dst: socket.socket, done: Callable[[], None]) -> None:
    """Copy ``src`` to ``dst`` until EOF or an error, then half-close ``dst``."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    try:
        while True:
            n = src.recv_into(buf)
            if not n:
                break
            dst.sendall(view[:n])
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
    except OSError:
        # One side failed (reset, closed): tear both down so the other pump ends too.
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
    finally:
        done()


class Pair:
    """Two connected sockets relayed both ways by two threads; closed when both end."""

    def __init__(self, a: socket.socket, b: socket.socket, name: str) -> None:
        self.a, self.b = a, b
        self._left = 2
        self._lock = threading.Lock()
        self.closed = threading.Event()
        for src, dst, tag in ((a, b, "->"), (b, a, "<-")):
            threading.Thread(
                target=_pump, args=(src, dst, self._one_done), name=f"{name} {tag}", daemon=True
            ).start()

    def _one_done(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            for s in (self.a, self.b):
                s.close()
            self.closed.set()

    def abort(self) -> None:
        """Cut both connections (the pumps then end and close the sockets)."""
        for s in (self.a, self.b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


class Relay:
    """Accepts on ``listening`` and relays each connection to a socket from ``dial()``.

    ``dial`` may raise OSError: the accepted connection is then closed and the error is kept
    in :attr:`last_error` (the side that waits on the other end reports it).
    """

    def __init__(
        self,
        listening: socket.socket,
        dial: Callable[[], socket.socket],
        name: str,
        max_pairs: int | None = None,
        rejected: Callable[[str], None] = lambda limit: None,
    ) -> None:
        self.listening = listening
        self.dial = dial
        self.name = name
        #: Relayed connections at most (each costs two threads); more are closed at once.
        self.max_pairs = max_pairs
        #: ``rejected(limit)``: told of each connection refused over ``max_pairs``.
        self._rejected = rejected
        self.last_error: OSError | None = None
        self.pairs: list[Pair] = []
        self._lock = threading.Lock()
        self._stop_r, self._stop_w = socket.socketpair()
        self._thread = threading.Thread(target=self._accept_loop, name=name, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        accept_loop(self.listening, self._stop_r.fileno(), self._relay, self.name)

    def _relay(self, conn: socket.socket) -> None:
        with self._lock:
            self.pairs = [p for p in self.pairs if not p.closed.is_set()]
            full = self.max_pairs is not None and len(self.pairs) >= self.max_pairs
        if full:
            self._rejected("max_connections")
            logger.warning(
                "%s: refusing a connection: %d relayed already (--max-connections)",
                self.name,
                len(self.pairs),
            )
            conn.close()
            return
        try:
            other = self.dial()
        except OSError as exc:
            self.last_error = exc
            logger.warning("%s: cannot reach the other side: %s", self.name, exc)
            conn.close()
            return
        self.last_error = None
        try:
            pair = Pair(conn, other, self.name)
        except BaseException:  # no thread to pump it (out of threads): drop this one only
            for s in (conn, other):
                s.close()
            raise
        with self._lock:
            self.pairs.append(pair)

    def stop_accepting(self, timeout: float = 2.0) -> None:
        """Accept no more connections (relayed ones go on)."""
        if self.listening.fileno() < 0:
            return
        with contextlib.suppress(OSError):
            self._stop_w.send(b"x")
        self._thread.join(timeout)
        self.listening.close()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting, cut every relayed connection, wait up to ``timeout`` seconds."""
        self.stop_accepting(timeout)
        with self._lock:
            pairs = list(self.pairs)
        for pair in pairs:
            pair.abort()
        for pair in pairs:
            pair.closed.wait(timeout)
        self._stop_r.close()
        self._stop_w.close()
