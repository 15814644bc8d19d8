"""Serving the agent over ttrpc: the connections a listener accepted, one client each.

A connection's frames are read by one thread at a time, its *reader*. A sequential client (the
common case: one call, its reply, the next call) costs no thread hand-off at all: the reader
runs each complete call itself and goes back to reading. While it runs a call, the connection
is armed in a shared epoll *watcher*; only when another frame arrives during the call does the
watcher start a new reader for the connection, so calls of one connection run concurrently
when the client sends them concurrently. Every call runs in a thread of its connection, so the
agent's own admission (per-client and total calls and bytes) bounds how many run.

What a client can make the agent hold is bounded before it is read:

* a frame's length is checked in its header (over ``max_message_bytes`` plus a little for the
  envelope: RESOURCE_EXHAUSTED for that stream, then the connection closes, since the rest of
  the frame is never read);
* once a frame's first byte is in, the whole frame must arrive within ``--receive-timeout``;
* out-of-band buffers are announced first (sizes, checked against the message limit), then
  received straight into their final memory; calls receiving buffers are bounded per
  connection (``--max-client-calls``) and per listener (``--max-calls``), calls in progress
  per connection by ``--max-streams``, connections by ``--max-clients``;
* a client that does not read its replies gets its connection closed after
  ``--receive-timeout`` of blocked writes.

Protocol violations (a stream id that is even or does not increase, Data on a stream that is
not receiving, a malformed envelope) get an error status on that stream; only what leaves the
byte stream unusable (a truncated or oversized frame, a peer gone mid-frame) ends the
connection. Either way other connections are unaffected.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import secrets
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from vaccel_core.auth import token_matches
from vaccel_core.errors import clip
from vaccel_core.log import logger as _vaccel_logger
from vaccel_core.proto import SERVICE_NAME
from vaccel_core.transport import (
    CallError,
    Handler,
    Message,
    Peer,
    StatusError,
    TransportOptions,
    deadline_scope,
    extra_services,
    rejection_hook,
)

from .. import grpc_framing
from .._failures import call_failure
from .._receiving import ReceiveSlots, Refused, Slot
from . import wire

logger = _vaccel_logger.getChild("ttrpc")

HEALTH_SERVICE = "grpc.health.v1.Health"
SERVING, NOT_SERVING = 1, 2
#: Methods of the agent's service that have no meaning over ttrpc.
GRPC_ONLY = {"Attach": "over ttrpc the connection itself is the client: no Attach stream is needed"}
#: Replies smaller than this are joined into one buffer to send (cheaper than a vector).
SMALL_REPLY = 64 << 10
#: gRPC's limit on one message; the ttrpc limit follows the same setting.
MAX_LIMIT = (1 << 31) - 1


def bearer_of(metadata: Any) -> str | None:
    for item in metadata:
        if item.key == wire.TOKEN_KEY:
            return str(item.value)
    return None


@dataclass(slots=True)
class _Call:
    stream: int
    service: str
    method: str
    payload: bytes
    flags: int
    deadline: float | None
    admin: bool
    authorized: bool = True
    incoming: wire.Incoming | None = None
    #: While its buffers are being received: its receiving slot and when they must be in.
    slot: Slot | None = None
    receive_by: float = 0.0


class TtrpcServer:
    """Serves ``handler`` on ttrpc connections handed over by :meth:`accept`."""

    def __init__(self, handler: Handler, address: str, options: TransportOptions) -> None:
        self.address = address
        self._handler = handler
        #: ``rejected(limit)``: the handler's count of refusals by this listener's limits.
        self.rejected = rejection_hook(handler)
        self.limit = max(1024, min(int(options.max_message_bytes), MAX_LIMIT))
        self.frame_limit = self.limit + wire.ENVELOPE_SLACK
        self.token = options.token
        self.admin_token = options.admin_token
        self.max_clients = max(1, int(options.max_clients))
        self.max_streams = max(1, int(options.max_streams))
        #: Requests receiving their out-of-band buffers, per client and in all (with
        #: eviction of the slowest, as on gRPC); used under ``lock``.
        self.slots = ReceiveSlots(
            int(options.max_calls), int(options.max_client_calls), rejected=self.rejected
        )
        self.receive_timeout = max(0.1, float(options.receive_timeout))
        self.handshake_timeout = max(0.1, float(options.handshake_timeout))
        self.lock = threading.Lock()
        self.connections: set[_Connection] = set()
        self.serving = True
        self.stopping = False
        self._watcher = _Watcher(self)
        #: Other services of the handler (e.g. upstream vAccel's), by full name.
        self._services = dict(extra_services(handler))
        self._numbers = itertools.count(1)

    @property
    def clients(self) -> int:
        return len(self.connections)

    def accept(self, sock: socket.socket, description: str) -> None:
        """Serve a new connection (its first byte may already be waiting) in a thread of its
        own; a listener at ``--max-clients`` answers its first call with an error."""
        with self.lock:
            refuse = self.stopping or len(self.connections) >= self.max_clients
            conn = _Connection(self, sock, description)
            if not refuse:
                self.connections.add(conn)
        if refuse and not self.stopping:
            self.rejected("max_clients")
        target = conn.refuse if refuse else conn.start
        threading.Thread(
            target=target, name=f"vaccel-ttrpc-{next(self._numbers)}", daemon=True
        ).start()

    # Calls ---------------------------------------------------------------------------------
    def run(self, conn: _Connection, call: _Call) -> list[Any]:
        """Serve one complete call; the frames of its reply (never raises)."""
        name = call.method if len(call.method) <= 64 else clip(call.method)
        try:
            if self.stopping:
                raise CallError(
                    "UNAVAILABLE", f"{name}: the agent is stopping", code=errno.EREMOTEIO
                )
            if call.deadline is not None and time.monotonic() >= call.deadline:
                raise CallError(
                    "DEADLINE_EXCEEDED",
                    f"{name}: the call's deadline passed before it could run",
                    code=errno.ETIMEDOUT,
                )
            if call.service == SERVICE_NAME:
                reply = self._agent_call(conn, call, name)
            elif call.service == HEALTH_SERVICE:
                reply = Message(self._health(call, name))
            elif call.service in self._services:
                if not call.authorized:
                    raise self._unauthenticated(name)
                reply = Message(self._services[call.service](call.method, call.payload, conn.peer))
            else:
                known = ", ".join((SERVICE_NAME, HEALTH_SERVICE, *self._services))
                raise CallError(
                    "UNIMPLEMENTED",
                    f"service {clip(call.service)} is not served here (known: {known})",
                    code=errno.ENOTSUP,
                )
            return self._reply_frames(call, reply, name)
        except StatusError as exc:  # a service that speaks another protocol's error form
            return [status_frame(call.stream, exc)]
        except BaseException as exc:  # the call fails, the connection goes on
            return [failure_frame(call.stream, call_failure(name, exc))]

    def _agent_call(self, conn: _Connection, call: _Call, name: str) -> Message:
        if not call.authorized:
            raise self._unauthenticated(name)
        why = GRPC_ONLY.get(call.method)
        if why is not None:
            raise CallError("UNIMPLEMENTED", f"{name}: {why}", code=errno.ENOTSUP)
        if call.incoming is not None:
            request = Message(call.payload, tuple(call.incoming.buffers))
        else:
            request = grpc_framing.decode(call.payload)
        peer = replace(conn.peer, admin=True) if call.admin else conn.peer
        with deadline_scope(call.deadline):
            return self._handler.handle(call.method, request, peer)

    @staticmethod
    def _unauthenticated(name: str) -> CallError:
        return CallError(
            "UNAUTHENTICATED",
            f"{name}: missing or wrong token (send metadata 'authorization: Bearer "
            f"<token>'; clients: VACCEL_RPC_TOKEN_FILE)",
            code=errno.EACCES,
        )

    def _health(self, call: _Call, name: str) -> bytes:
        if call.method != "Check":
            raise CallError(
                "UNIMPLEMENTED",
                f"{name}: {HEALTH_SERVICE} serves only Check over ttrpc",
                code=errno.ENOTSUP,
            )
        try:
            service = wire.HealthCheckRequest.FromString(call.payload).service
        except Exception:
            raise CallError(
                "INVALID_ARGUMENT",
                "Check: malformed request: expected a grpc.health.v1.HealthCheckRequest",
                code=errno.EINVAL,
            ) from None
        if service not in ("", SERVICE_NAME) and service not in self._services:
            raise CallError(
                "NOT_FOUND", f"Check: unknown service {clip(service)}", code=errno.ENOENT
            )
        status = SERVING if self.serving else NOT_SERVING
        return bytes(wire.HealthCheckResponse(status=status).SerializeToString())

    def _reply_frames(self, call: _Call, reply: Message, name: str) -> list[Any]:
        if reply.buffers or len(reply.payload) > self.limit:
            try:
                grpc_framing.check_size(reply, self.limit, f"{name}: the agent's reply")
            except CallError:
                self.rejected("max_message_bytes")
                raise
        frames: list[Any] = []
        if reply.buffers and call.flags & (wire.FLAG_REMOTE_CLOSED | wire.FLAG_REMOTE_OPEN):
            # Our client: the buffers go as Data frames, straight from the reply's memory.
            frames = wire.buffer_frames(call.stream, reply.buffers, 0)
            payload = reply.payload
        else:
            payload = grpc_framing.encode(reply)
        frames.extend(wire.ok_response(call.stream, payload))
        return frames

    # Health and stopping -------------------------------------------------------------------
    def set_not_serving(self) -> None:
        self.serving = False

    def stop(self, grace: float) -> None:
        """Refuse new calls, let running ones finish within ``grace`` seconds, then close
        every connection (their clients' state is released)."""
        deadline = time.monotonic() + max(grace, 0.0)
        with self.lock:
            self.stopping = True
            self.serving = False
        # Polled: stopping is rare, and calls then need no bookkeeping for it.
        while self.running_calls():
            if time.monotonic() >= deadline:
                logger.warning(
                    "%s: in-flight calls did not finish within %.1f s", self.address, grace
                )
                break
            time.sleep(0.01)
        with self.lock:
            connections = list(self.connections)
        for conn in connections:
            conn.shut()
        for conn in connections:
            conn.ended.wait(max(deadline - time.monotonic(), 0.0) + 1.0)
        self._watcher.close()

    def expire_receiving(self) -> None:
        """Requests receiving their buffers for longer than ``--receive-timeout`` lose their
        slot and their buffers now; their reader answers DEADLINE_EXCEEDED at their next
        frame."""
        with self.lock:
            if not len(self.slots):
                return
            expired = self.slots.expire(
                time.monotonic() - self.receive_timeout,
                f"the request did not arrive within {self.receive_timeout:g} s of its headers "
                f"(--receive-timeout)",
            )
        if expired:
            logger.info("%s: dropped %d requests that stopped arriving", self.address, expired)

    def running_calls(self) -> int:
        """Calls running (or sending their reply) now."""
        with self.lock:
            connections = list(self.connections)
        return sum(conn.running for conn in connections)

    def forget(self, conn: _Connection) -> None:
        with self.lock:
            self.connections.discard(conn)


def status_frame(stream: int, exc: StatusError) -> bytes:
    status = wire.Status(code=exc.code, message=exc.message)
    for type_url, value in exc.details:
        status.details.add(type_url=type_url, value=value)
    body = wire.Response(status=status).SerializeToString()
    return wire.HEADER.pack(len(body), stream, wire.TYPE_RESPONSE, 0) + body


def failure_frame(stream: int, exc: CallError) -> bytes:
    body = wire.Response(status=wire.error_status(exc)).SerializeToString()
    return wire.HEADER.pack(len(body), stream, wire.TYPE_RESPONSE, 0) + body


def _drop_buffers(call: _Call) -> None:
    """Evicted: its partial buffers go now (its reader answers at the stream's next frame)."""
    call.incoming = None


class _Connection:
    """One client: its socket, its reader role, its calls."""

    def __init__(self, server: TtrpcServer, sock: socket.socket, description: str) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.reader = wire.FrameReader(sock, server.frame_limit, server.receive_timeout)
        self.peer = Peer(f"client-{secrets.token_hex(6)}", description)
        self.lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.reading = True  # the thread that starts the connection is its first reader
        self.running = 0
        self.closed = False
        self.ended = threading.Event()
        self._last_stream = 0
        self._receiving: dict[int, _Call] = {}
        self._dropped: set[int] = set()  # refused streams whose Data frames are skipped
        # A client that stops reading its replies blocks our writes: bounded by the kernel.
        seconds = int(server.receive_timeout)
        usec = int((server.receive_timeout - seconds) * 1e6)
        timeout = struct.pack("ll", seconds, usec)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)
        wire.widen_send_buffer(sock)

    # Lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self.server._handler.peer_connected(self.peer)
        except Exception:
            logger.exception("client %s: registering it failed", self.peer.id)
            self._end_reading()
            return
        logger.debug("client %s connected over ttrpc to %s", self.peer.id, self.server.address)
        self.server._watcher.register(self)
        self.read_loop()

    def refuse(self) -> None:
        """Answer the first call with why the connection is refused, then close."""
        server = self.server
        why = (
            "the agent is stopping"
            if server.stopping
            else f"this listener already serves {len(server.connections)} clients (limit "
            f"{server.max_clients}, --max-clients)"
        )
        status, code = (
            ("UNAVAILABLE", errno.EREMOTEIO)
            if server.stopping
            else (
                "RESOURCE_EXHAUSTED",
                errno.ENOMEM,
            )
        )
        try:
            header = self.reader.header(time.monotonic() + server.handshake_timeout)
            self._send([failure_frame(header.stream, CallError(status, why, code=code))])
        except Exception:
            pass
        finally:
            self.sock.close()
            self.ended.set()

    def shut(self) -> None:
        """Cut the connection (its reader sees the end and releases the client)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _end_reading(self) -> None:
        """The reader stops for good; the last thread out releases the client."""
        with self.lock:
            self.closed = True
            self.reading = False
            last = self.running == 0
        self.shut()
        if last:
            self._release()

    def _release(self) -> None:
        server = self.server
        server._watcher.unregister(self)
        server.forget(self)
        with server.lock:
            for call in self._receiving.values():
                if call.slot is not None:
                    server.slots.leave(call.slot)
                    call.slot = None
        self._receiving.clear()
        try:
            server._handler.peer_disconnected(self.peer)
        except Exception:
            logger.exception("client %s: releasing its state failed", self.peer.id)
        self.sock.close()
        logger.debug("client %s disconnected from %s", self.peer.id, server.address)
        self.ended.set()

    # Reading -------------------------------------------------------------------------------
    def read_loop(self) -> None:
        """Read frames and run the calls they complete, as long as this thread is the
        connection's reader."""
        try:
            while True:
                call = self._next_call()
                if not self._run(call):
                    return
        except wire.ConnectionClosed as exc:
            if not exc.clean:
                logger.info("client %s: the connection ended mid-frame", self.peer.id)
        except wire.FrameTimeout:
            self.server.rejected("receive_timeout")
            logger.warning(
                "client %s: a frame did not arrive in full within %g s (--receive-timeout); "
                "closing its connection",
                self.peer.id,
                self.server.receive_timeout,
            )
        except wire.ProtocolError as exc:
            logger.warning("client %s: %s; closing its connection", self.peer.id, exc.message)
        except OSError as exc:
            logger.info("client %s: connection failed: %s", self.peer.id, exc)
        except Exception:
            logger.exception("client %s: ttrpc connection failed", self.peer.id)
        self._end_reading()

    def _next_call(self) -> _Call:
        """Read frames until a call is complete."""
        reader = self.reader
        while True:
            head = reader.header()
            if head.type == wire.TYPE_DATA and head.stream in self._dropped:
                self._skip_dropped(head)  # the rest of a refused request, however large
                continue
            if head.length > reader.limit:
                error = CallError(
                    "RESOURCE_EXHAUSTED",
                    f"a {wire.TYPE_NAMES.get(head.type, 'frame')} of {head.length} bytes "
                    f"exceeds the limit of {reader.limit} bytes (max_message_bytes); closing "
                    f"the connection",
                    code=errno.ENOMEM,
                )
                self.server.rejected("max_message_bytes")
                self._send([failure_frame(head.stream, error)])
                raise wire.ProtocolError(error.message)
            if head.type == wire.TYPE_REQUEST:
                call = self._request(head, reader.read(head.length))
            elif head.type == wire.TYPE_DATA:
                call = self._data(head)
            else:
                reader.skip(head.length)  # unknown or server-only types: ignored
                call = None
            if call is not None:
                return call

    def _request(self, head: wire.Header, data: bytes) -> _Call | None:
        stream = head.stream
        if stream % 2 == 0 or stream <= self._last_stream:
            self._fail(
                stream,
                "INVALID_ARGUMENT",
                f"stream id {stream} is not valid: client streams are odd and increase "
                f"(last was {self._last_stream})",
            )
            return None
        self._last_stream = stream
        try:
            request = wire.Request.FromString(data)
        except Exception:
            self._fail(stream, "INVALID_ARGUMENT", "malformed ttrpc Request")
            return None
        server = self.server
        presented = bearer_of(request.metadata) if request.metadata else None
        admin = server.admin_token is not None and token_matches(server.admin_token, presented)
        call = _Call(
            stream,
            request.service,
            request.method,
            request.payload,
            head.flags,
            time.monotonic() + request.timeout_nano / 1e9 if request.timeout_nano > 0 else None,
            admin,
            authorized=server.token is None or admin or token_matches(server.token, presented),
        )
        if self.running + len(self._receiving) >= server.max_streams:
            server.rejected("max_streams")
            self._fail(
                stream,
                "RESOURCE_EXHAUSTED",
                f"{clip(request.method)}: this connection already has "
                f"{self.running + len(self._receiving)} calls in progress (limit "
                f"{server.max_streams}, --max-streams)",
            )
            if head.flags & wire.FLAG_REMOTE_OPEN:
                self._dropped.add(stream)
            return None
        if not head.flags & wire.FLAG_REMOTE_OPEN:
            return call
        name = clip(request.method) if len(request.method) > 64 else request.method
        if len(self._receiving) >= server.slots.per_key:
            server.rejected("max_client_calls")
            self._fail(
                stream,
                "RESOURCE_EXHAUSTED",
                f"{name}: this client already has {len(self._receiving)} requests being "
                f"received (limit {server.slots.per_key}, --max-client-calls)",
            )
            self._dropped.add(stream)
            return None
        try:
            with server.lock:
                call.slot = server.slots.enter(self.peer.id, name, lambda: _drop_buffers(call))
        except Refused as exc:
            self._fail(stream, "RESOURCE_EXHAUSTED", str(exc))
            self._dropped.add(stream)
            return None
        call.receive_by = time.monotonic() + server.receive_timeout
        self._receiving[stream] = call
        return None

    def _data(self, head: wire.Header) -> _Call | None:
        stream = head.stream
        call = self._receiving.get(stream)
        if call is None:
            self.reader.skip(head.length)
            self._fail(stream, "INVALID_ARGUMENT", f"stream {stream} is not receiving data")
            return None
        incoming = call.incoming  # read before the eviction check: eviction drops it
        refusal = self._receive_refusal(call)
        if refusal is not None:
            self.reader.skip(head.length)
            self._stop_receiving(stream, head.flags)
            self._send([failure_frame(stream, refusal)])
            return None
        if incoming is None:
            # The first Data frame announces the buffers' sizes.
            data = self.reader.read(head.length)
            try:
                sizes = wire.receive_sizes(data, self.server.limit - len(call.payload), call.method)
            except CallError as exc:  # announced more than the message limit leaves
                self.server.rejected("max_message_bytes")
                self._stop_receiving(stream, head.flags)
                self._send([failure_frame(stream, exc)])
                return None
            incoming = call.incoming = wire.Incoming(sizes)
        else:
            incoming.fill(self.reader, head.length)
        if not head.flags & wire.FLAG_REMOTE_CLOSED:
            return None
        self._stop_receiving(stream, head.flags)
        if not incoming.complete:
            self._fail(
                stream,
                "INVALID_ARGUMENT",
                f"{clip(call.method)}: out-of-band buffers ended short of their announced sizes",
            )
            return None
        return call

    def _receive_refusal(self, call: _Call) -> CallError | None:
        """Why a request still receiving its buffers is dropped now: evicted by another
        client's request, or past ``--receive-timeout`` since its Request frame."""
        if time.monotonic() > call.receive_by:
            self._expired(call)
            return CallError(
                "DEADLINE_EXCEEDED",
                f"{call.method}: the request did not arrive within "
                f"{self.server.receive_timeout:g} s of its headers (--receive-timeout)",
                code=errno.ETIMEDOUT,
            )
        if call.slot is not None and call.slot.evicted is not None:
            return CallError("RESOURCE_EXHAUSTED", call.slot.evicted, code=errno.ENOMEM)
        return None

    def _expired(self, call: _Call) -> None:
        """Count ``call`` as refused by --receive-timeout, unless the watcher's sweep (or an
        eviction) already took its slot and counted it."""
        server = self.server
        with server.lock:
            slot = call.slot
            if slot is None or slot.evicted is not None:
                return
            server.slots.leave(slot)
            slot.evicted = "past --receive-timeout"
        server.rejected("receive_timeout")

    def _skip_dropped(self, head: wire.Header) -> None:
        self.reader.skip(head.length)
        if head.flags & wire.FLAG_REMOTE_CLOSED:
            self._dropped.discard(head.stream)

    def _stop_receiving(self, stream: int, flags: int) -> None:
        call = self._receiving.pop(stream, None)
        if call is not None and call.slot is not None:
            with self.server.lock:
                self.server.slots.leave(call.slot)
            call.slot = None  # (it refers back to the call: no cycle left to hold the buffers)
        if not flags & wire.FLAG_REMOTE_CLOSED:
            self._dropped.add(stream)

    def _fail(self, stream: int, status: str, message: str) -> None:
        code = {"RESOURCE_EXHAUSTED": errno.ENOMEM, "INVALID_ARGUMENT": errno.EINVAL}
        self._send(
            [failure_frame(stream, CallError(status, message, code=code.get(status, errno.EIO)))]
        )

    # Running -------------------------------------------------------------------------------
    def _run(self, call: _Call) -> bool:
        """Run ``call`` in this thread, watched; whether this thread reads on afterwards."""
        server = self.server
        watcher = server._watcher
        with self.lock:
            self.running += 1
            # More frames already read from the socket (the watcher cannot see them): they
            # get a reader of their own at once; otherwise the watcher starts one if needed.
            handover = self.reader.buffered > 0
            if not handover:
                self.reading = False
                watcher.arm(self)
        if handover:
            self._start_reader()
        keep_reading = False
        try:
            frames = server.run(self, call)
            # Back to reading before replying: the client's next request may come the moment
            # it has the reply, and this thread (not a new one) should read it.
            with self.lock:
                keep_reading = not (self.reading or self.closed)
                if keep_reading:
                    self.reading = True
                    watcher.disarm(self)
            try:
                self._send(frames)
            except OSError as exc:
                if isinstance(exc, (BlockingIOError, TimeoutError)):  # SO_SNDTIMEO ran out
                    server.rejected("receive_timeout")
                logger.info("client %s: cannot send a reply: %s", self.peer.id, exc)
                self.shut()
        finally:
            with self.lock:
                self.running -= 1
                last = self.closed and self.running == 0 and not self.reading
        if last:
            self._release()
        return keep_reading

    def woken(self) -> None:
        """The watcher saw input while no thread was reading: start a reader."""
        with self.lock:
            if self.reading or self.closed:
                return
            self.reading = True
        self._start_reader()

    def _start_reader(self) -> None:
        """A new thread takes the reader role (already marked taken)."""
        try:
            threading.Thread(target=self.read_loop, name="vaccel-ttrpc-reader", daemon=True).start()
        except RuntimeError:  # out of threads: this connection cannot go on
            logger.warning("client %s: no thread to read its calls; closing", self.peer.id)
            self._end_reading()

    def _send(self, frames: list[Any]) -> None:
        with self._write_lock:
            if len(frames) == 2 and len(frames[1]) < SMALL_REPLY:
                self.sock.sendall(frames[0] + frames[1])  # one small Response: one call
            else:
                wire.send_all(self.sock, frames)


_ARMED = select.EPOLLIN | select.EPOLLONESHOT
#: How often the watcher looks for requests that stopped arriving.
SWEEP_SECONDS = 1.0


class _Watcher:
    """One epoll thread that starts a reader for a connection whose input arrives while its
    reader is busy running a call (EPOLLONESHOT: armed per call), and once a second ends the
    requests that are still receiving their buffers past ``--receive-timeout`` (a client that
    goes quiet between two frames is never woken by its socket)."""

    def __init__(self, server: TtrpcServer) -> None:
        self._server = server
        self._epoll = select.epoll()
        self._by_fd: dict[int, _Connection] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = socket.socketpair()
        self._epoll.register(self._stop_r.fileno(), select.EPOLLIN)

    def register(self, conn: _Connection) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="vaccel-ttrpc-watcher", daemon=True
                )
                self._thread.start()
            fd = conn.sock.fileno()
            self._by_fd[fd] = conn
            self._epoll.register(fd, select.EPOLLONESHOT)

    def unregister(self, conn: _Connection) -> None:
        with self._lock:
            fd = conn.sock.fileno()
            if self._by_fd.get(fd) is conn:
                del self._by_fd[fd]
                with contextlib.suppress(OSError):
                    self._epoll.unregister(fd)

    # try/except, not contextlib.suppress: these run twice per call.
    def arm(self, conn: _Connection) -> None:
        try:  # noqa: SIM105
            self._epoll.modify(conn.fd, _ARMED)
        except (OSError, ValueError):
            pass  # the connection is closing

    def disarm(self, conn: _Connection) -> None:
        try:  # noqa: SIM105
            self._epoll.modify(conn.fd, select.EPOLLONESHOT)
        except (OSError, ValueError):
            pass

    def _loop(self) -> None:
        stop = self._stop_r.fileno()
        while True:
            self._server.expire_receiving()
            try:
                events = self._epoll.poll(SWEEP_SECONDS)
            except InterruptedError:
                continue
            except (OSError, ValueError):
                return
            for fd, _ in events:
                if fd == stop:
                    return
                with self._lock:
                    conn = self._by_fd.get(fd)
                if conn is not None:
                    conn.woken()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._stop_w.send(b"x")
        if self._thread is not None:
            self._thread.join(2.0)
        self._epoll.close()
        self._stop_r.close()
        self._stop_w.close()
