"""The client side of ttrpc: one connection to the agent, shared by every thread of a process.

A call sends its frames and then waits for its Response. Whichever waiting thread finds nobody
reading becomes the reader: it reads frames and hands each reply to the thread it belongs to
until its own has come, then passes the role on. A single-threaded client therefore reads its
own replies (no thread hand-off, no background thread), and concurrent calls share the
connection by stream id.

The connection is the client's identity on the agent: closing it releases its sessions there.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vaccel_core.auth import bearer
from vaccel_core.errors import RemoteError
from vaccel_core.proto import SERVICE_NAME
from vaccel_core.transport import Buffer, CallError, Channel, Message, TransportOptions

from .. import grpc_framing
from . import wire

#: Answers to :meth:`TtrpcChannel.hello` that refuse this client (others prove a server).
REFUSALS = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "UNAVAILABLE"})
#: gRPC's limit on one message; the ttrpc limit follows the same setting.
MAX_LIMIT = (1 << 31) - 1


@dataclass(slots=True)
class _Waiter:
    """A call waiting for its reply."""

    method: str
    status: Any = None
    #: Why the reply is refused (its buffers are over our limit): its frames are skipped.
    refused: CallError | None = None
    payload: bytes = b""
    incoming: wire.Incoming | None = None
    done: bool = False


class TtrpcChannel(Channel):
    """A ttrpc connection to the agent (or any ttrpc server) over a connected socket."""

    def __init__(
        self,
        sock: socket.socket,
        address: str,
        options: TransportOptions,
        service: str = SERVICE_NAME,
    ) -> None:
        self.address = address
        self.service = service
        #: The agent names clients by connection; it does not tell them the name.
        self.peer_id = ""
        sock.settimeout(None)
        wire.widen_send_buffer(sock)
        self._sock = sock
        self._limit = max(1024, min(int(options.max_message_bytes), MAX_LIMIT))
        self._reader = wire.FrameReader(
            sock, self._limit + wire.ENVELOPE_SLACK, max(1.0, float(options.receive_timeout))
        )
        self._metadata: tuple[tuple[str, str], ...] = (
            ((wire.TOKEN_KEY, bearer(options.token)),) if options.token else ()
        )
        self._ids = itertools.count(1, 2)
        #: Request fields that are the same on every call of a method, by (service, method).
        self._prefixes: dict[tuple[str, str], bytes] = {}
        #: Threads sleeping in ``_changed.wait`` (nobody to notify: no notify call).
        self._sleepers = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._send_lock = threading.Lock()
        self._reading = False
        self._waiting: dict[int, _Waiter] = {}
        self._lost: str | None = None
        self._closed = False

    # Opening -------------------------------------------------------------------------------
    @classmethod
    def connect_unix(
        cls,
        path: str,
        options: TransportOptions,
        address: str | None = None,
        service: str = SERVICE_NAME,
    ) -> TtrpcChannel:
        """Connect to the unix socket at ``path`` (``address`` names it in errors)."""
        where = address or f"unix://{path}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        return cls._connected(sock, path, where, options, service)

    @classmethod
    def connect_tcp(
        cls,
        host: str,
        port: int,
        options: TransportOptions,
        address: str | None = None,
        service: str = SERVICE_NAME,
    ) -> TtrpcChannel:
        where = address or f"ttrpc+tcp://{host}:{port}"
        try:
            sock = socket.create_connection((host.strip("[]"), port), options.connect_timeout)
        except OSError as exc:
            raise RemoteError(f"cannot reach the vAccel agent at {where}: {_reason(exc)}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, where, options, service)

    @classmethod
    def _connected(
        cls, sock: socket.socket, target: Any, where: str, options: TransportOptions, service: str
    ) -> TtrpcChannel:
        sock.settimeout(float(options.connect_timeout))
        try:
            sock.connect(target)
        except OSError as exc:
            sock.close()
            raise RemoteError(f"cannot reach the vAccel agent at {where}: {_reason(exc)}") from None
        return cls(sock, where, options, service)

    def hello(self, timeout: float) -> None:
        """One GetStatus call: proves that a vAccel agent answers (and takes our token) before
        the channel is used, as gRPC's Attach does; closes the channel and raises otherwise."""
        try:
            self.invoke(SERVICE_NAME, "GetStatus", Message(b""), timeout)
        except RemoteError as exc:
            self.close()
            raise RemoteError(
                f"cannot attach to the vAccel agent at {self.address}: {exc.message}"
            ) from None
        except CallError as exc:
            if exc.status in REFUSALS:
                self.close()
                raise
            # It answered (a server that does not know GetStatus, say): it speaks ttrpc.
        except BaseException:
            self.close()
            raise

    # Calls ---------------------------------------------------------------------------------
    @property
    def lost(self) -> str | None:
        """Why the connection was lost (the agent went away), or None while it is up."""
        if self._lost is not None or self._closed or self._reading or self._waiting:
            return self._lost
        # Nobody reads: an agent that closed the connection shows as readable EOF. Checked
        # under the lock, which a thread must hold to become the reader: the reader's poll
        # object is never used by two threads at once (poll() refuses that).
        with self._lock:
            if self._lost is not None or self._closed or self._reading or self._waiting:
                return self._lost
            if self._reader.wait(0):
                try:
                    peeked = self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                except BlockingIOError:
                    peeked = b"x"
                except OSError as exc:
                    peeked = b""
                    self._lost = f"{type(exc).__name__}: {exc}"
                if not peeked:
                    self._lost = self._lost or "the agent closed the connection"
            return self._lost

    def call(self, method: str, request: Message, timeout: float | None = None) -> Message:
        return self.invoke(self.service, method, request, timeout)

    def invoke(
        self,
        service: str,
        method: str,
        request: Message,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> Message:
        """Call ``service/method`` and wait for the reply (at most ``timeout`` seconds)."""
        if self._closed:
            raise RemoteError(f"{method}: the channel to {self.address} is closed")
        if self._lost is not None:
            raise self._lost_error(method)
        if request.buffers or len(request.payload) > self._limit:
            grpc_framing.check_size(request, self._limit, f"{method}: request")
        deadline = None if timeout is None else time.monotonic() + timeout
        key = (service, method)
        prefix = self._prefixes.get(key) if not metadata else None
        if prefix is None:
            prefix = wire.request_prefix(service, method, (*self._metadata, *metadata))
            if not metadata and len(self._prefixes) < 256:
                self._prefixes[key] = prefix
        body = wire.request_body(
            prefix, request.payload, int(timeout * 1e9) if timeout is not None else 0
        )
        waiter = _Waiter(method)
        with self._send_lock:
            stream = next(self._ids)  # taken here: ids must reach the agent in order
            self._waiting[stream] = waiter  # (one dict operation: atomic)
            try:
                self._send(stream, body, request.buffers)
            except OSError as exc:
                with self._lock:
                    self._waiting.pop(stream, None)
                    self._lost = self._lost or f"sending failed: {_reason(exc)}"
                raise self._lost_error(method) from None
        self._wait(stream, waiter, deadline, timeout)
        if waiter.refused is not None:
            raise waiter.refused
        if waiter.status is not None and waiter.status.code != 0:
            raise wire.call_error(waiter.status, method)
        if waiter.incoming is not None:
            return Message(waiter.payload, tuple(waiter.incoming.buffers))
        if service != SERVICE_NAME:
            return Message(waiter.payload)  # another service's payload is opaque
        return grpc_framing.decode(waiter.payload)

    def _send(self, stream: int, body: bytes, buffers: Sequence[Buffer]) -> None:
        flags = wire.FLAG_REMOTE_OPEN if buffers else wire.FLAG_REMOTE_CLOSED
        head = wire.HEADER.pack(len(body), stream, wire.TYPE_REQUEST, flags)
        if not buffers:
            self._sock.sendall(head + body)
            return
        frames = [head, body, *wire.buffer_frames(stream, buffers, wire.FLAG_REMOTE_CLOSED)]
        wire.send_all(self._sock, frames)

    def _wait(self, stream: int, waiter: _Waiter, deadline: float | None, timeout: Any) -> None:
        """Until ``waiter`` has its reply: as the reader, or woken by the reader."""
        while True:
            with self._lock:
                while not waiter.done and self._lost is None and self._reading:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._sleepers += 1
                    try:
                        self._changed.wait(left)
                    finally:
                        self._sleepers -= 1
                if waiter.done:
                    return
                if self._lost is not None or self._closed:
                    self._waiting.pop(stream, None)
                    raise self._lost_error(waiter.method)
                if self._reading:  # timed out waiting for the reader
                    self._waiting.pop(stream, None)
                    raise self._timeout_error(waiter.method, timeout)
                self._reading = True
            try:
                self._read_until(waiter, deadline)
            except TimeoutError:
                with self._lock:
                    self._waiting.pop(stream, None)
                raise self._timeout_error(waiter.method, timeout) from None
            finally:
                with self._lock:
                    self._reading = False
                    if self._sleepers:
                        self._changed.notify_all()
            if waiter.done:
                return

    def _read_until(self, waiter: _Waiter, deadline: float | None) -> None:
        """Read frames (handing out others' replies) until ``waiter`` is done."""
        reader = self._reader
        try:
            while not waiter.done:
                try:
                    head = reader.header(deadline)
                except wire.FrameTimeout:
                    if reader.buffered:  # stopped mid-header
                        raise
                    raise TimeoutError from None
                self._dispatch(head)
        except TimeoutError:
            raise
        except wire.ConnectionClosed as exc:
            self._set_lost("the agent closed the connection" + ("" if exc.clean else " mid-frame"))
        except wire.FrameTimeout:
            self._set_lost("the agent stopped sending in the middle of a frame")
        except wire.ProtocolError as exc:
            self._set_lost(exc.message)
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        except OSError as exc:
            self._set_lost(_reason(exc))

    def _set_lost(self, why: str) -> None:
        with self._lock:
            self._lost = self._lost or why

    def _dispatch(self, head: wire.Header) -> None:
        reader = self._reader
        waiter = self._waiting.get(head.stream)  # one dict operation: atomic
        if waiter is None or (waiter.refused is not None and head.type == wire.TYPE_DATA):
            # The reply to a call that gave up waiting, or the rest of a refused one.
            reader.skip(head.length)
            return
        if head.length > reader.limit:
            raise wire.ProtocolError(
                f"the agent sent a frame of {head.length} bytes (limit {reader.limit})"
            )
        if head.type == wire.TYPE_DATA:
            if waiter.incoming is None:
                try:
                    sizes = wire.receive_sizes(
                        reader.read(head.length), self._limit, waiter.method, "client"
                    )
                except CallError as exc:
                    waiter.refused = exc  # the rest of this reply is skipped, frame by frame
                else:
                    waiter.incoming = wire.Incoming(sizes)
            else:
                waiter.incoming.fill(reader, head.length)
            return
        if head.type != wire.TYPE_RESPONSE:
            reader.skip(head.length)
            return
        data = reader.read(head.length)
        payload = wire.ok_payload(data)
        if payload is None:
            try:
                response = wire.Response.FromString(data)
            except Exception:
                raise wire.ProtocolError("the agent sent a malformed ttrpc Response") from None
            waiter.status = response.status if response.HasField("status") else None
            payload = response.payload
        waiter.payload = payload
        if waiter.refused is None and waiter.incoming is not None and not waiter.incoming.complete:
            raise wire.ProtocolError("the agent's reply ended short of its announced buffers")
        with self._lock:
            self._waiting.pop(head.stream, None)
            waiter.done = True
            if self._sleepers:
                self._changed.notify_all()

    # Errors --------------------------------------------------------------------------------
    def _lost_error(self, method: str) -> RemoteError:
        if self._closed:
            return RemoteError(f"{method}: the channel to {self.address} was closed")
        return RemoteError(
            f"{method}: connection to the vAccel agent at {self.address} was lost "
            f"({self._lost}); its sessions are gone"
        )

    def _timeout_error(self, method: str, timeout: Any) -> RemoteError:
        return RemoteError(
            f"{method}: no answer from the vAccel agent at {self.address} within {timeout:g} s"
            if timeout is not None
            else f"{method}: deadline exceeded"
        )

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._changed.notify_all()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ECONNREFUSED:
        return "connection refused (is vaccel-agent listening there?)"
    if exc.errno == errno.ENOENT:
        return "no such socket (is vaccel-agent listening there?)"
    if isinstance(exc, TimeoutError):
        return "no connection in time"
    return exc.strerror or f"{type(exc).__name__}: {exc}"
