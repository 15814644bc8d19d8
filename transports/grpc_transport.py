"""gRPC plumbing shared by the tcp and unix transports.

The server is one generic gRPC service named after agent.proto's ``vaccel.agent.v1.Agent``:
every unary method takes and returns raw bytes (identity serializers), so the agent parses each
payload exactly once. Out-of-band buffers travel in the same gRPC message (see
:mod:`transports.grpc_framing`). The client opens a long-lived ``Attach`` stream carrying a
random peer id (metadata ``vaccel-peer-id``, also sent with every call); when that stream ends,
the handler hears ``peer_disconnected`` and releases what the peer owned. Standard gRPC health
checking and server reflection are served next to the agent service.

Importing this module imports grpc: the tcp/unix plugin modules import it only when used.
"""

from __future__ import annotations

import errno
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

from vaccel_core.errors import RemoteError, VaccelError
from vaccel_core.log import logger as _vaccel_logger
from vaccel_core.proto import SERVICE_NAME
from vaccel_core.transport import (
    CallError,
    Channel,
    Handler,
    Listener,
    Message,
    Peer,
    TransportOptions,
    status_for,
)

from . import grpc_framing

logger = _vaccel_logger.getChild("transport")

PEER_METADATA = "vaccel-peer-id"
ERROR_CODE_METADATA = "vaccel-error-code"
ERROR_DETAIL_METADATA = "vaccel-error-detail-bin"
#: gRPC limits one message to a signed 32-bit length.
GRPC_MAX_MESSAGE = (1 << 31) - 1

def message_limit(options: TransportOptions) -> int:
    """The configured message-size limit, capped at what gRPC can carry."""
    return max(1024, min(int(options.max_message_bytes), GRPC_MAX_MESSAGE))


def grpc_options(options: TransportOptions) -> list[tuple[str, Any]]:
    """Channel/server arguments: message limits and keepalive (to notice vanished peers)."""
    limit = message_limit(options)
    extra = options.extra
    keepalive = int(extra.get("keepalive_time_ms", 20_000))
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.keepalive_time_ms", keepalive),
        ("grpc.keepalive_timeout_ms", int(extra.get("keepalive_timeout_ms", 10_000))),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # The server must accept the client's keepalive pings on an idle Attach stream: by
        # default it allows one every 5 minutes and drops the connection ("too_many_pings")
        # after two more, which would release an idle client's sessions.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", max(keepalive // 2, 100)),
        ("grpc.http2.max_ping_strikes", 0),
    ]


def worker_count(options: TransportOptions) -> int:
    """Server threads: one per attached client plus those serving calls."""
    return max(2, int(options.extra.get("max_workers", 64)))


def _status_code(name: str) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, name, grpc.StatusCode.UNKNOWN)


def _error_detail(status: str, code: int, message: str) -> bytes:
    from vaccel_core.proto import pb

    detail = pb().ErrorDetail(status=status, code=code, message=message)
    return bytes(detail.SerializeToString())


class _Stopping(Exception):
    pass


# ------------------------------------------------------------------------------------------
# Server side


class _AgentService(grpc.GenericRpcHandler):
    """Routes every ``/vaccel.agent.v1.Agent/<Method>`` to ``handler.handle(method, ...)``."""

    def __init__(self, handler: Handler, address: str, options: TransportOptions) -> None:
        self._handler = handler
        self._address = address
        self._limit = message_limit(options)
        workers = worker_count(options)
        # Each attached client holds one worker thread for its Attach stream; keep some
        # workers for calls so that many idle clients cannot starve everyone.
        self._max_clients = int(options.extra.get("max_clients", max(1, workers - 8)))
        self._prefix = f"/{SERVICE_NAME}/"
        self._lock = threading.Lock()
        self._inflight = 0
        self._idle = threading.Condition(self._lock)
        self._stopping = False
        self._attached: dict[str, int] = {}
        self._attach_events: set[threading.Event] = set()

    # Routing -------------------------------------------------------------------------------
    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        if not method.startswith(self._prefix):
            return None
        name = method[len(self._prefix) :]
        if name == "Attach":
            return grpc.unary_stream_rpc_method_handler(self._attach)
        return grpc.unary_unary_rpc_method_handler(self._unary_for(name))

    def _unary_for(self, name: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            return self._unary(name, request, context)

        return unary

    @staticmethod
    def _peer(context: grpc.ServicerContext) -> Peer:
        where = context.peer()
        for key, value in context.invocation_metadata() or ():
            if key == PEER_METADATA and isinstance(value, str) and value:
                return Peer(value[:128], where)
        return Peer(f"anonymous:{where}", where)

    # Unary calls ---------------------------------------------------------------------------
    def _enter(self) -> None:
        with self._lock:
            if self._stopping:
                raise _Stopping()
            self._inflight += 1

    def _leave(self) -> None:
        with self._lock:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.notify_all()

    def _unary(self, name: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            self._enter()
        except _Stopping:
            return self._abort(
                context, "UNAVAILABLE", errno.EREMOTEIO, f"{name}: the agent is stopping"
            )
        failure: tuple[str, int, str] | None = None
        try:
            peer = self._peer(context)
            reply = self._handler.handle(name, grpc_framing.decode(request), peer)
            grpc_framing.check_size(reply, self._limit, f"{name}: the agent's reply")
            return grpc_framing.encode(reply)
        except CallError as exc:
            failure = (exc.status, exc.code, exc.message)
        except grpc_framing.FrameError as exc:
            failure = ("INVALID_ARGUMENT", exc.code, f"{name}: {exc.message}")
        except VaccelError as exc:
            failure = (status_for(exc), exc.code, exc.message)
        except Exception as exc:
            logger.exception("%s: unexpected error in the agent", name)
            failure = (
                "INTERNAL",
                errno.EIO,
                f"{name}: unexpected agent error: {type(exc).__name__}: {exc}",
            )
        finally:
            self._leave()
        status, code, message = failure
        return self._abort(context, status, code, message)

    @staticmethod
    def _abort(context: grpc.ServicerContext, status: str, code: int, message: str) -> bytes:
        context.set_trailing_metadata(
            (
                (ERROR_CODE_METADATA, str(code)),
                (ERROR_DETAIL_METADATA, _error_detail(status, code, message)),
            )
        )
        context.abort(_status_code(status), message)
        raise AssertionError("unreachable")  # pragma: no cover - abort raises

    # Attach streams ------------------------------------------------------------------------
    def _attach(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        from vaccel_core import __version__
        from vaccel_core.proto import pb

        peer = self._peer(context)
        done = threading.Event()
        with self._lock:
            if self._stopping:
                self._abort(
                    context, "UNAVAILABLE", errno.EREMOTEIO, "Attach: the agent is stopping"
                )
            if len(self._attach_events) >= self._max_clients:
                self._abort(
                    context,
                    "RESOURCE_EXHAUSTED",
                    errno.ENOMEM,
                    f"Attach: the agent already serves {self._max_clients} clients "
                    f"(raise TransportOptions.extra max_workers/max_clients)",
                )
            self._attach_events.add(done)
            first = self._attached.get(peer.id, 0) == 0
            self._attached[peer.id] = self._attached.get(peer.id, 0) + 1
        context.add_callback(done.set)
        try:
            if first:
                self._handler.peer_connected(peer)
            logger.debug("peer %s attached from %s on %s", peer.id, peer.description, self._address)
            event = pb().AttachEvent(agent_version=__version__, peer_id=peer.id)
            yield event.SerializeToString()
            done.wait()
        finally:
            with self._lock:
                self._attach_events.discard(done)
                left = self._attached.get(peer.id, 1) - 1
                if left:
                    self._attached[peer.id] = left
                else:
                    self._attached.pop(peer.id, None)
            if not left:
                logger.debug("peer %s detached from %s", peer.id, self._address)
                try:
                    self._handler.peer_disconnected(peer)
                except Exception:
                    logger.exception("peer %s: releasing its state failed", peer.id)

    # Stopping ------------------------------------------------------------------------------
    def drain(self, deadline: float) -> bool:
        """Refuse new calls, wait (until ``deadline``) for in-flight ones; True if drained."""
        with self._lock:
            self._stopping = True
            while self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
            return True

    def end_attach_streams(self) -> None:
        with self._lock:
            events = list(self._attach_events)
        for event in events:
            event.set()


class GrpcListener(Listener):
    """A running gRPC server for one address, with health checking and reflection."""

    def __init__(
        self,
        server: grpc.Server,
        service: _AgentService,
        health: Any,
        address: str,
        on_stopped: Callable[[], None] | None = None,
    ) -> None:
        self.address = address
        self._server = server
        self._service = service
        self._health = health
        self._on_stopped = on_stopped
        self._stopped = False
        self._lock = threading.Lock()

    def set_not_serving(self) -> None:
        """Report NOT_SERVING to health checkers (the agent is about to stop)."""
        self._health.enter_graceful_shutdown()

    def stop(self, grace: float = 5.0) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        deadline = time.monotonic() + max(grace, 0.0)
        self.set_not_serving()
        drained = self._service.drain(deadline)
        if not drained:
            logger.warning("%s: in-flight calls did not finish within %.1f s", self.address, grace)
        self._service.end_attach_streams()
        left = max(deadline - time.monotonic(), 0.0)
        self._server.stop(min(left, 1.0)).wait(left + 1.0)
        if self._on_stopped is not None:
            self._on_stopped()
        logger.info("stopped listening on '%s'", self.address)


def serve(
    bind: str,
    public_address: Callable[[int], str],
    handler: Handler,
    options: TransportOptions,
    *,
    on_stopped: Callable[[], None] | None = None,
) -> GrpcListener:
    """Start a gRPC server bound to ``bind`` (a gRPC target such as ``unix:/p`` or
    ``127.0.0.1:0``); ``public_address(port)`` names the bound address."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    from vaccel_core.proto import pb

    pb()  # the agent's descriptors must be in the pool for reflection
    workers = worker_count(options)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vaccel-agent"),
        options=grpc_options(options),
    )
    service = _AgentService(handler, bind, options)
    server.add_generic_rpc_handlers((service,))
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = server.add_insecure_port(bind)
    except RuntimeError as exc:
        raise RemoteError(f"cannot listen on {bind}: {exc}") from exc
    if port == 0:
        raise RemoteError(f"cannot listen on {bind}: the address is in use or not bindable")
    server.start()
    address = public_address(port)
    service._address = address
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return GrpcListener(server, service, health_servicer, address, on_stopped)


# ------------------------------------------------------------------------------------------
# Client side


class GrpcChannel(Channel):
    """A connection to the agent: one gRPC channel, one Attach stream, one peer id."""

    def __init__(self, target: str, address: str, options: TransportOptions) -> None:
        self.address = address
        self.peer_id = secrets.token_hex(16)
        self._limit = message_limit(options)
        self._metadata = ((PEER_METADATA, self.peer_id),)
        self._channel = grpc.insecure_channel(target, options=grpc_options(options))
        self._calls: dict[str, Any] = {}
        self._lost: str | None = None
        self._closed = False
        timeout = float(options.connect_timeout)
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            self._channel.close()
            raise RemoteError(
                f"cannot reach the vAccel agent at {address}: no connection within "
                f"{timeout:g} s (is vaccel-agent listening there?)"
            ) from None
        attach = self._channel.unary_stream(f"/{SERVICE_NAME}/Attach")
        self._attach = attach(b"", metadata=self._metadata)
        self._attach.add_done_callback(self._attach_ended)

    def _attach_ended(self, call: Any) -> None:
        if self._closed:
            return
        try:
            code = call.code()
            details = call.details()
        except Exception:  # pragma: no cover - defensive
            code, details = None, ""
        if code is None or code == grpc.StatusCode.OK:
            self._lost = "the agent closed the connection"
        else:
            self._lost = f"{code.name}: {details}"
        logger.debug("connection to %s lost: %s", self.address, self._lost)

    @property
    def lost(self) -> str | None:
        """Why the connection was lost (the agent went away), or None while it is up."""
        return self._lost

    def call(self, method: str, request: Message, timeout: float | None = None) -> Message:
        if self._closed:
            raise RemoteError(f"{method}: the channel to {self.address} is closed")
        if self._lost is not None:
            raise RemoteError(
                f"{method}: connection to the vAccel agent at {self.address} was lost "
                f"({self._lost}); its sessions are gone"
            )
        grpc_framing.check_size(request, self._limit, f"{method}: request")
        stub = self._calls.get(method)
        if stub is None:
            stub = self._calls[method] = self._channel.unary_unary(f"/{SERVICE_NAME}/{method}")
        try:
            reply = stub(grpc_framing.encode(request), timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._error(method, exc, timeout) from None
        return grpc_framing.decode(reply)

    def _error(self, method: str, exc: Any, timeout: float | None) -> VaccelError:
        code = exc.code()
        details = exc.details() or ""
        for key, value in exc.trailing_metadata() or ():
            if key == ERROR_DETAIL_METADATA:
                from vaccel_core.proto import pb

                detail = pb().ErrorDetail()
                try:
                    detail.ParseFromString(value)
                except Exception:
                    break
                return CallError(detail.status, detail.message, code=detail.code)
        if code == grpc.StatusCode.UNAVAILABLE:
            self._lost = self._lost or f"UNAVAILABLE: {details}"
            return RemoteError(
                f"{method}: the vAccel agent at {self.address} is unreachable: {details}"
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return RemoteError(
                f"{method}: no answer from the vAccel agent at {self.address} within {timeout:g} s"
                if timeout is not None
                else f"{method}: deadline exceeded"
            )
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return CallError(
                "RESOURCE_EXHAUSTED",
                f"{method}: the agent at {self.address} refused the message: {details}",
                code=errno.ENOMEM,
            )
        if code == grpc.StatusCode.CANCELLED and self._closed:
            return RemoteError(f"{method}: the channel to {self.address} was closed")
        return CallError(code.name, f"{method}: {details}", code=errno.EREMOTEIO)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._attach.cancel()
        finally:
            self._channel.close()
