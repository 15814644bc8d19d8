"""The agent's gRPC server (tcp and unix listeners), built on grpc.aio.

Why asyncio: gRPC's threaded server gives a worker thread to every call as soon as its headers
arrive, so a client that sends headers and never the body holds a thread for as long as it
likes (64 such calls froze the agent). Here receiving costs no thread: a call reaches a worker
only once its whole request has arrived, and workers serve clients in turn
(:class:`~vaccel_transports._scheduler.FairExecutor`), so one client's queue never delays another's
calls by more than one call each.

Identity: a client opens an ``Attach`` stream and gets an unguessable capability in the first
``AttachEvent``; every other call carries it in metadata ``vaccel-capability``. Sessions belong
to the client the capability names and are released when its stream ends. Nothing a client
says about itself (an id, an address) names it; calls without a capability may only ask
``GetStatus`` (and the health and reflection services). With ``TransportOptions.token`` every
call must also carry ``authorization: Bearer <token>``.

Connection limits are gRPC core's own: connections per listener, streams per connection,
handshake and idle timeouts, message size (see :func:`server_options`). gRPC core buffers a
request until it is complete, at most ``max_message_bytes`` per stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import grpc

from vaccel_core.auth import TOKEN_METADATA, token_matches
from vaccel_core.errors import RemoteError
from vaccel_core.proto import SERVICE_NAME
from vaccel_core.transport import (
    CallError,
    Handler,
    Listener,
    Peer,
    TransportOptions,
    deadline_scope,
    rejection_hook,
)

from . import grpc_framing
from ._failures import call_failure
from ._receiving import ReceiveSlots, Refused
from ._scheduler import FairExecutor, QueueFull
from .grpc_transport import (
    CAPABILITY_METADATA,
    common_options,
    error_metadata,
    logger,
    message_limit,
    status_code,
)

#: Methods a client may call without a capability (they touch no client state).
OPEN_METHODS = frozenset({"GetStatus"})
#: Worker threads per listener that run calls (backends block, so they run in threads).
DEFAULT_WORKERS = 16


def server_options(options: TransportOptions) -> list[tuple[str, Any]]:
    """gRPC server arguments: the common ones plus the listener limits."""
    return [
        *common_options(options),
        ("grpc.max_concurrent_streams", max(2, int(options.max_streams))),
        ("grpc.max_allowed_incoming_connections", max(1, int(options.max_connections))),
        ("grpc.server_handshake_timeout_ms", max(100, int(options.handshake_timeout * 1000))),
        ("grpc.max_connection_idle_ms", max(100, int(options.idle_timeout * 1000))),
        # A port already in use is an error, never silently shared with another process.
        ("grpc.so_reuseport", 0),
        # Without bandwidth-delay probing a stream's window stays at HTTP/2's initial 64 KiB
        # until its request is read: a call refused or not yet admitted buffers no more than
        # that (with probing, gRPC granted unread streams about 12 MiB each).
        ("grpc.http2.bdp_probe", 0),
        # ... and that initial window is 16 KiB (measured: an unread stream then holds 8 KiB
        # per 8 KiB of lookahead); a request being read gets a window as large as itself.
        ("grpc.http2.lookahead_bytes", 16 << 10),
    ]


class _EventLoop:
    """One asyncio loop in a daemon thread, shared by every gRPC listener of the process."""

    _lock = threading.Lock()
    _instance: _EventLoop | None = None

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="vaccel-grpc-loop", daemon=True
        )
        self.thread.start()

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance.loop


def run_coroutine(coro: Any, timeout: float | None = None) -> Any:
    """Run ``coro`` on the shared loop and wait for its result."""
    return asyncio.run_coroutine_threadsafe(coro, _EventLoop.get()).result(timeout)


@dataclass
class _Client:
    peer: Peer
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class AgentServicer(grpc.GenericRpcHandler):
    """Routes ``/vaccel.agent.v1.Agent/<Method>`` to ``handler.handle(method, ...)``."""

    def __init__(self, handler: Handler, address: str, options: TransportOptions) -> None:
        self._handler = handler
        #: ``rejected(limit)``: the handler's count of refusals by this listener's limits
        #: (those gRPC core enforces itself, e.g. --max-connections on tcp, are not seen).
        self.rejected = rejection_hook(handler)
        self.address = address
        self._limit = message_limit(options)
        self._token = options.token
        self._admin_token = options.admin_token
        self._max_clients = max(1, int(options.max_clients))
        self._max_streams = max(2, int(options.max_streams))
        workers = int(options.extra.get("max_workers", DEFAULT_WORKERS))
        self._executor = FairExecutor(workers, self._max_streams, "vaccel-agent")
        self._receive_timeout = max(0.1, float(options.receive_timeout))
        #: Calls receiving their request (the only time gRPC buffers request bytes for them).
        self.receiving = ReceiveSlots(
            int(options.max_calls), int(options.max_client_calls), rejected=self.rejected
        )
        self._prefix = f"/{SERVICE_NAME}/"
        self._clients: dict[str, _Client] = {}  # capability -> client
        self._anonymous = itertools.count(1)
        self._lock = threading.Lock()
        self._inflight = 0
        self._idle = threading.Condition(self._lock)
        self._stopping = False

    # Routing -------------------------------------------------------------------------------
    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        """Every method is served with a streaming request, so that gRPC reads a request
        only when the agent asks for it: after the caller is known and admitted."""
        method: str = handler_call_details.method
        if not method.startswith(self._prefix):
            return None
        name = method[len(self._prefix) :]
        if name == "Attach":
            return grpc.stream_stream_rpc_method_handler(self._attach)
        return grpc.stream_unary_rpc_method_handler(self._unary_for(name))

    def _unary_for(self, name: str) -> Callable[[Any, Any], Any]:
        async def unary(requests: Any, context: Any) -> bytes:
            return await self._unary(name, context)

        return unary

    # Receiving -----------------------------------------------------------------------------
    async def receive(self, key: Hashable, name: str, context: Any) -> Any:
        """The call's (first) request message, read within the receive slots' bounds and
        ``--receive-timeout``; None at the end of the stream."""
        try:
            slot = self.receiving.enter(key, name)
        except Refused as exc:
            raise CallError("RESOURCE_EXHAUSTED", str(exc), code=errno.ENOMEM) from None
        try:
            message = await asyncio.wait_for(context.read(), self._receive_timeout)
        except asyncio.CancelledError:
            if slot.evicted is None:
                raise
            raise CallError("RESOURCE_EXHAUSTED", slot.evicted, code=errno.ENOMEM) from None
        except asyncio.TimeoutError:
            self.rejected("receive_timeout")
            raise CallError(
                "DEADLINE_EXCEEDED",
                f"{name}: the request did not arrive within {self._receive_timeout:g} s of "
                f"its headers (--receive-timeout)",
                code=errno.ETIMEDOUT,
            ) from None
        finally:
            self.receiving.leave(slot)
        return None if message is grpc.aio.EOF else message

    # Who is calling ------------------------------------------------------------------------
    def _check_token(self, name: str, metadata: dict[str, Any]) -> bool:
        """Whether the caller is the operator; CallError (UNAUTHENTICATED) when a token is
        required and missing."""
        presented = metadata.get(TOKEN_METADATA)
        admin = self._admin_token is not None and token_matches(self._admin_token, presented)
        if self._token is not None and not admin and not token_matches(self._token, presented):
            raise CallError(
                "UNAUTHENTICATED",
                f"{name}: missing or wrong token (send 'authorization: Bearer <token>'; "
                f"clients: VACCEL_RPC_TOKEN_FILE)",
                code=errno.EACCES,
            )
        return admin

    def _caller(self, name: str, context: Any) -> tuple[Peer, str]:
        """The calling client's peer and scheduling key, or CallError."""
        metadata = dict(context.invocation_metadata() or ())
        admin = self._check_token(name, metadata)
        capability = metadata.get(CAPABILITY_METADATA)
        if capability:
            client = self._clients.get(capability) if isinstance(capability, str) else None
            if client is None:
                raise CallError(
                    "UNAUTHENTICATED",
                    f"{name}: unknown capability (its Attach stream has ended, or it was "
                    f"never issued by this agent); attach again",
                    code=errno.EACCES,
                )
            return client.peer, client.peer.id
        if name not in OPEN_METHODS:
            raise CallError(
                "UNAUTHENTICATED",
                f"{name}: no client capability: open an Attach stream first and send the "
                f"capability it returns in metadata '{CAPABILITY_METADATA}'",
                code=errno.EACCES,
            )
        anonymous = Peer(f"anonymous-{next(self._anonymous)}", context.peer(), admin=admin)
        return anonymous, "anonymous"

    # Unary calls ---------------------------------------------------------------------------
    def _enter(self) -> bool:
        with self._lock:
            if self._stopping:
                return False
            self._inflight += 1
            return True

    def _leave(self) -> None:
        with self._lock:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.notify_all()

    async def _unary(self, name: str, context: Any) -> bytes:
        if not self._enter():
            return await _abort(
                context, "UNAVAILABLE", errno.EREMOTEIO, f"{name}: the agent is stopping"
            )
        failure: tuple[str, int, str]
        try:
            peer, key = self._caller(name, context)
            request = await self.receive(key, name, context)
            if request is None:
                raise CallError(
                    "INVALID_ARGUMENT",
                    f"{name}: the call carried no request",
                    code=errno.EINVAL,
                )
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            return await self._executor.run(key, self._serve, name, request, peer, deadline)
        except QueueFull as exc:
            self.rejected("max_streams")
            failure = (
                "RESOURCE_EXHAUSTED",
                errno.ENOMEM,
                f"{name}: this client already has {exc.args[0]} calls queued or running "
                f"(limit {self._max_streams}, --max-streams)",
            )
        except Exception as exc:
            error = call_failure(name, exc)
            failure = (error.status, error.code, error.message)
        finally:
            self._leave()
        return await _abort(context, *failure)

    def _serve(self, name: str, request: bytes, peer: Peer, deadline: float | None) -> bytes:
        """One call, in a worker thread."""
        with deadline_scope(deadline):
            reply = self._handler.handle(name, grpc_framing.decode(request), peer)
        try:
            grpc_framing.check_size(reply, self._limit, f"{name}: the agent's reply")
        except CallError:
            self.rejected("max_message_bytes")
            raise
        return grpc_framing.encode(reply)

    # Attach streams ------------------------------------------------------------------------
    async def _attach(self, requests: Any, context: Any) -> AsyncIterator[bytes]:
        # The AttachRequest (a free-form description) is never read: an Attach holds no more
        # than a stream window of request bytes.
        from vaccel_core import __version__
        from vaccel_core.proto import pb

        try:
            admin = self._check_token("Attach", dict(context.invocation_metadata() or ()))
            with self._lock:
                if self._stopping:
                    raise CallError(
                        "UNAVAILABLE", "Attach: the agent is stopping", code=errno.EREMOTEIO
                    )
                if len(self._clients) >= self._max_clients:
                    self.rejected("max_clients")
                    raise CallError(
                        "RESOURCE_EXHAUSTED",
                        f"Attach: this listener already serves {len(self._clients)} clients "
                        f"(limit {self._max_clients}, --max-clients)",
                        code=errno.ENOMEM,
                    )
                capability = secrets.token_urlsafe(32)
                peer = Peer(f"client-{secrets.token_hex(6)}", context.peer(), admin=admin)
                client = _Client(peer)
                self._clients[capability] = client
        except CallError as exc:
            await _abort(context, exc.status, exc.code, exc.message)
            return
        peer = client.peer
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self._handler.peer_connected, peer)
            logger.debug(
                "client %s attached from %s on %s", peer.id, peer.description, self.address
            )
            event = pb().AttachEvent(
                agent_version=__version__, peer_id=peer.id, capability=capability
            )
            yield event.SerializeToString()
            await client.ended.wait()
        finally:
            with self._lock:
                self._clients.pop(capability, None)
            # Not awaited: this task may be being cancelled (the client went away).
            loop.run_in_executor(None, self._disconnected, peer)

    def _disconnected(self, peer: Peer) -> None:
        logger.debug("client %s detached from %s", peer.id, self.address)
        try:
            self._handler.peer_disconnected(peer)
        except Exception:
            logger.exception("client %s: releasing its state failed", peer.id)

    @property
    def clients(self) -> int:
        """Clients attached now."""
        return len(self._clients)

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
            clients = list(self._clients.values())
        loop = _EventLoop.get()
        for client in clients:
            loop.call_soon_threadsafe(client.ended.set)

    def shutdown(self) -> None:
        self._executor.shutdown()


class OtherServicesGuard(grpc.aio.ServerInterceptor):
    """The health and reflection services under the same receiving bounds as the agent's
    own methods (as the anonymous client): their requests are read only once admitted and
    within ``--receive-timeout``, never buffered whole by gRPC before."""

    def __init__(self, servicer: AgentServicer) -> None:
        self._servicer = servicer

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith(f"/{SERVICE_NAME}/"):
            return handler
        return self._guarded(handler, details.method.rsplit("/", 1)[-1])

    def _guarded(self, handler: Any, name: str) -> Any:
        servicer = self._servicer

        async def first(context: Any) -> Any:
            try:
                request = await servicer.receive("anonymous", name, context)
            except CallError as exc:
                await _abort(context, exc.status, exc.code, exc.message)
            if request is None:
                await _abort(context, "INVALID_ARGUMENT", errno.EINVAL, f"{name}: no request")
            return request

        kinds = dict(
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        if handler.request_streaming and handler.response_streaming:

            async def stream_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
                async def guarded_requests() -> AsyncIterator[Any]:
                    while True:
                        try:
                            request = await servicer.receive("anonymous", name, context)
                        except CallError as exc:
                            await _abort(context, exc.status, exc.code, exc.message)
                        if request is None:
                            return
                        yield request

                async for reply in _replies(handler.stream_stream(guarded_requests(), context)):
                    yield reply

            return grpc.stream_stream_rpc_method_handler(stream_stream, **kinds)
        if handler.response_streaming:

            async def unary_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
                request = await first(context)
                async for reply in _replies(handler.unary_stream(request, context)):
                    yield reply

            return grpc.stream_stream_rpc_method_handler(unary_stream, **kinds)
        if handler.request_streaming:
            return handler  # stream-unary: reads on demand already (none are served today)

        async def unary_unary(requests: Any, context: Any) -> Any:
            request = await first(context)
            return await handler.unary_unary(request, context)

        return grpc.stream_unary_rpc_method_handler(unary_unary, **kinds)


async def _replies(result: Any) -> AsyncIterator[Any]:
    """What a streaming handler produced: the items of an async iterator, or nothing when it
    wrote its replies itself (``context.write``) and returned a coroutine."""
    if hasattr(result, "__aiter__"):
        async for reply in result:
            yield reply
    elif result is not None:
        await result


async def _abort(context: Any, status: str, code: int, message: str) -> bytes:
    context.set_trailing_metadata(error_metadata(status, code, message))
    await context.abort(status_code(status), message)
    raise AssertionError("unreachable")  # pragma: no cover - abort raises


class GrpcListener(Listener):
    """A running gRPC server for one address, with health checking and reflection."""

    def __init__(
        self,
        server: Any,
        servicer: AgentServicer,
        health: Any,
        address: str,
        on_stopped: Callable[[], None] | None = None,
    ) -> None:
        self.address = address
        self.servicer = servicer
        self._server = server
        self._health = health
        self._on_stopped = on_stopped
        self._stopped = False
        self._lock = threading.Lock()

    def set_not_serving(self) -> None:
        """Report NOT_SERVING to health checkers (the agent is about to stop)."""
        with contextlib.suppress(Exception):
            run_coroutine(self._health.enter_graceful_shutdown(), 5.0)

    def stop(self, grace: float = 5.0) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        deadline = time.monotonic() + max(grace, 0.0)
        self.set_not_serving()
        if not self.servicer.drain(deadline):
            logger.warning("%s: in-flight calls did not finish within %.1f s", self.address, grace)
        self.servicer.end_attach_streams()
        left = max(deadline - time.monotonic(), 0.0)
        with contextlib.suppress(Exception):
            run_coroutine(self._server.stop(min(left, 1.0)), left + 2.0)
        self.servicer.shutdown()
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
    requested: str | None = None,
) -> GrpcListener:
    """Start a gRPC server bound to ``bind`` (a gRPC target such as ``unix:/p`` or
    ``127.0.0.1:0``); ``public_address(port)`` names the bound address and ``requested`` the
    address asked for, in errors. With ``options.tls`` the port is served with TLS (mutual
    TLS when ``options.tls.ca`` is set)."""
    return run_coroutine(
        _start(bind, public_address, handler, options, on_stopped, requested or bind), 30.0
    )


async def _start(
    bind: str,
    public_address: Callable[[int], str],
    handler: Handler,
    options: TransportOptions,
    on_stopped: Callable[[], None] | None,
    requested: str,
) -> GrpcListener:
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    from vaccel_core.proto import pb

    pb()  # the agent's descriptors must be in the pool for reflection
    servicer = AgentServicer(handler, bind, options)
    server = grpc.aio.server(
        options=server_options(options), interceptors=(OtherServicesGuard(servicer),)
    )
    server.add_generic_rpc_handlers((servicer,))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        if options.tls is not None:
            port = server.add_secure_port(bind, _server_credentials(options))
        else:
            port = server.add_insecure_port(bind)
    except RuntimeError:
        port = 0
    if port == 0:
        servicer.shutdown()
        raise RemoteError(f"cannot listen on {requested}: the address is in use or cannot be bound")
    await server.start()
    address = public_address(port)
    servicer.address = address
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return GrpcListener(server, servicer, health_servicer, address, on_stopped)


def _server_credentials(options: TransportOptions) -> Any:
    tls = options.tls
    assert tls is not None
    if not tls.cert or not tls.key:
        raise RemoteError("TLS: the agent needs both a certificate and its key")
    return grpc.ssl_server_credentials(
        [(tls.key, tls.cert)],
        root_certificates=tls.ca,
        require_client_auth=tls.ca is not None,
    )
