"""One socket, two protocols: a listener that serves ttrpc and gRPC clients alike.

Every ``unix://`` and ``vsock://`` listener of the agent is one of these (so are the hybrid
vsock ``..._PORT`` sockets Kata hands it): a guest's ttrpc client, a gRPC health probe and a
gRPC client all work against the same address. A connection's first byte tells them apart: an
HTTP/2 client starts with its preface (``PRI * HTTP/2.0``, so ``P``), a ttrpc client with a
frame header whose first byte is the high byte of a length far below 1.3 GB (so never ``P``).

ttrpc connections are served here (:class:`~vaccel_transports.ttrpc.server.TtrpcServer`); gRPC ones
are relayed byte for byte to the agent's gRPC server on a private unix socket (grpcio cannot
take over a socket it did not accept), which costs gRPC clients a relay hop and nothing else.

Until its first byte arrives a connection costs no thread: one thread polls them all and drops
those silent past ``handshake_timeout``. At most ``max_connections`` connections (waiting,
ttrpc and relayed gRPC together) are open at once; more are closed at once.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from vaccel_core.log import logger
from vaccel_core.transport import Handler, Listener, TransportOptions, rejection_hook

from ._accept import accept_loop
from ._relay import Pair

#: First byte of the HTTP/2 client preface.
HTTP2_FIRST = b"P"


def describe(sock: socket.socket) -> str:
    """Who is at the other end, as far as the kernel says."""
    try:
        if sock.family == socket.AF_UNIX:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _ = struct.unpack("3i", creds)
            return f"unix peer pid {pid} uid {uid}"
        peer = sock.getpeername()
        if sock.family == getattr(socket, "AF_VSOCK", -1):
            return f"vsock peer CID {peer[0]} port {peer[1]}"
        return f"tcp peer {peer[0]}:{peer[1]}"
    except OSError:
        return "unknown peer"


class DualListener(Listener):
    """Accepts on ``listening`` and serves each connection over ttrpc or gRPC.

    ``grpc`` / ``ttrpc`` say which protocols are served (a connection speaking another is
    closed); ``on_stopped`` runs after the listener stopped (e.g. to remove a socket file)."""

    def __init__(
        self,
        listening: socket.socket,
        address: str,
        handler: Handler,
        options: TransportOptions,
        *,
        grpc: bool = True,
        ttrpc: bool = True,
        on_stopped: Callable[[], None] | None = None,
    ) -> None:
        from .ttrpc.server import TtrpcServer

        self.address = address
        self._listening = listening
        self._on_stopped = on_stopped
        self._max_connections = max(1, int(options.max_connections))
        self._rejected = rejection_hook(handler)
        self._handshake_timeout = max(0.1, float(options.handshake_timeout))
        self.ttrpc = TtrpcServer(handler, address, options) if ttrpc else None
        self.grpc: Any = None
        self._grpc_dir: str | None = None
        self._grpc_path = ""
        if grpc:
            self._start_grpc(handler, options)
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[socket.socket, float]] = {}
        self._pairs: list[Pair] = []
        self._refused = 0
        self._stopped = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop_r, self._stop_w = socket.socketpair()
        self._sniffer = threading.Thread(
            target=self._sniff_loop, name=f"{address} sniff", daemon=True
        )
        self._sniffer.start()
        self._acceptor = threading.Thread(
            target=accept_loop,
            args=(listening, self._stop_r.fileno(), self._accepted, address),
            name=f"{address} accept",
            daemon=True,
        )
        self._acceptor.start()

    def _start_grpc(self, handler: Handler, options: TransportOptions) -> None:
        from .grpc_server import serve

        self._grpc_dir = tempfile.mkdtemp(prefix="vaccel-grpc-")
        self._grpc_path = os.path.join(self._grpc_dir, "agent.sock")
        public = self.address
        try:
            self.grpc = serve(
                f"unix:{self._grpc_path}", lambda _port: public, handler, replace(options, tls=None)
            )
        except BaseException:
            shutil.rmtree(self._grpc_dir, ignore_errors=True)
            raise

    # Accepting -----------------------------------------------------------------------------
    @property
    def open_connections(self) -> int:
        with self._lock:
            self._pairs = [p for p in self._pairs if not p.closed.is_set()]
            relayed = len(self._pairs)
            pending = len(self._pending)
        return pending + relayed + (self.ttrpc.clients if self.ttrpc is not None else 0)

    def _accepted(self, conn: socket.socket) -> None:
        if self.open_connections >= self._max_connections:
            self._rejected("max_connections")
            self._refused += 1
            if self._refused == 1 or self._refused % 100 == 0:
                logger.warning(
                    "%s: refusing a connection: %d open already (limit %d, --max-connections)",
                    self.address,
                    self.open_connections,
                    self._max_connections,
                )
            conn.close()
            return
        with self._lock:
            self._pending[conn.fileno()] = (conn, time.monotonic() + self._handshake_timeout)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _sniff_loop(self) -> None:
        poller = select.poll()
        wake = self._wake_r.fileno()
        poller.register(wake, select.POLLIN)
        watched: set[int] = set()
        while True:
            with self._lock:
                if self._stopped:
                    return
                for fd in self._pending.keys() - watched:
                    poller.register(fd, select.POLLIN)
                    watched.add(fd)
                nearest = min((d for _, d in self._pending.values()), default=None)
            timeout = None if nearest is None else max(nearest - time.monotonic(), 0.0) * 1000.0
            for fd, _ in poller.poll(timeout):
                if fd == wake:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    continue
                with self._lock:
                    entry = self._pending.pop(fd, None)
                poller.unregister(fd)
                watched.discard(fd)
                if entry is not None:
                    self._route(entry[0])
            now = time.monotonic()
            with self._lock:
                expired = [fd for fd, (_, d) in self._pending.items() if d <= now]
                socks = {fd: self._pending.pop(fd)[0] for fd in expired}
            for fd, sock in socks.items():
                poller.unregister(fd)
                watched.discard(fd)
                self._rejected("handshake_timeout")
                logger.info(
                    "%s: closing a connection that sent nothing within %g s (--handshake-timeout)",
                    self.address,
                    self._handshake_timeout,
                )
                sock.close()

    def _route(self, conn: socket.socket) -> None:
        """Hand a connection whose first byte arrived to the protocol it speaks."""
        try:
            first = conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:
            first = b""
        if not first:
            conn.close()
            return
        try:
            if first == HTTP2_FIRST:
                self._relay_grpc(conn)
            elif self.ttrpc is not None:
                self.ttrpc.accept(conn, describe(conn))
            else:
                logger.info(
                    "%s: closing a ttrpc connection: this listener serves gRPC only", self.address
                )
                conn.close()
        except Exception as exc:  # out of threads, say: this connection goes, the rest stay
            logger.warning(
                "%s: dropped a new connection: %s: %s", self.address, type(exc).__name__, exc
            )
            conn.close()

    def _relay_grpc(self, conn: socket.socket) -> None:
        if self.grpc is None:
            logger.info(
                "%s: closing a gRPC connection: this listener serves ttrpc only", self.address
            )
            conn.close()
            return
        inner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            inner.connect(self._grpc_path)
        except OSError:
            inner.close()
            raise
        pair = Pair(conn, inner, f"{self.address} gRPC")
        with self._lock:
            self._pairs.append(pair)

    # Stopping ------------------------------------------------------------------------------
    def set_not_serving(self) -> None:
        """Tell health checkers (of both protocols) that the agent is about to stop."""
        if self.ttrpc is not None:
            self.ttrpc.set_not_serving()
        if self.grpc is not None:
            self.grpc.set_not_serving()

    def stop(self, grace: float = 5.0) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            pending = [sock for sock, _ in self._pending.values()]
            self._pending.clear()
        with contextlib.suppress(OSError):
            self._stop_w.send(b"x")
            self._wake_w.send(b"x")
        self._acceptor.join(2.0)
        self._sniffer.join(2.0)
        self._listening.close()
        for sock in pending:
            sock.close()
        servers: list[Any] = [s for s in (self.ttrpc, self.grpc) if s is not None]
        with ThreadPoolExecutor(max_workers=len(servers) or 1) as pool:
            list(pool.map(lambda server: server.stop(grace), servers))
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            pair.abort()
        for pair in pairs:
            pair.closed.wait(1.0)
        if self._grpc_dir is not None:
            shutil.rmtree(self._grpc_dir, ignore_errors=True)
        for sock in (self._wake_r, self._wake_w, self._stop_r, self._stop_w):
            sock.close()
        if self._on_stopped is not None:
            self._on_stopped()
        logger.info("stopped listening on '%s'", self.address)
