"""The transport contract: how agent messages move between the guest and the host agent.

A transport knows sockets (or shared memory), never operations; the agent service and the rpc
backend know operations, never sockets. A message is a method name, a serialized request (the
agent's protobuf bytes) and optional out-of-band buffers: large tensors that a transport may
hand over without copying (the virtio-mock transport places them in shared memory; socket
transports simply send them after the payload).

A transport plugin registers its class through the ``vaccel.transports`` entry point group::

    @hookimpl
    def vaccel_register_transports(register):
        register(UnixTransport)
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from .errors import (
    BackendError,
    InvalidArgumentError,
    NotFoundError,
    NotSupportedError,
    OutOfMemoryError,
    RemoteError,
    SessionError,
    VaccelError,
)

Buffer = bytes | bytearray | memoryview

#: Default cap on one message (payload + buffers). Resource files travel in chunks, so this
#: bounds tensors and images only; larger tensors want a raised limit or shared memory.
DEFAULT_MAX_MESSAGE_BYTES = 16 << 20


#: Wire protocols an address may name before its scheme (``grpc+unix://``, ``ttrpc+tcp://``).
PROTOCOLS = ("grpc", "ttrpc")


@dataclass(frozen=True)
class Address:
    """A parsed agent address: ``unix:///run/v.sock``, ``tcp://127.0.0.1:65500``,
    ``vsock://2:2048``, ``virtio-mock:///run/v.ctl``.

    A ``PROTOCOL+`` prefix names the wire protocol (``grpc+unix://``, ``ttrpc+tcp://``):
    a client speaks it, a listener serves only it. Without one, unix and vsock speak ttrpc
    (their listeners serve ttrpc and gRPC on the same socket) and tcp speaks gRPC."""

    scheme: str
    target: str  # everything after "scheme://"
    protocol: str = ""  # "", "grpc" or "ttrpc"

    @classmethod
    def parse(cls, uri: str) -> Address:
        scheme, sep, target = uri.partition("://")
        if not sep or not scheme or not target:
            raise InvalidArgumentError(
                f"address: expected SCHEME://TARGET (e.g. unix:///tmp/v.sock, "
                f"tcp://127.0.0.1:65500, vsock://2:2048), got {uri!r}"
            )
        protocol, plus, bare = scheme.lower().rpartition("+")
        if plus and protocol not in PROTOCOLS:
            raise InvalidArgumentError(
                f"address {uri!r}: unknown protocol {protocol!r} before '+' (expected "
                f"{' or '.join(PROTOCOLS)}, e.g. grpc+unix:///tmp/v.sock)"
            )
        return cls(bare, target, protocol)

    def speaks(self, default: str) -> str:
        """The protocol a client uses at this address: the named one, else ``default``."""
        return self.protocol or default

    def __str__(self) -> str:
        prefix = f"{self.protocol}+" if self.protocol else ""
        return f"{prefix}{self.scheme}://{self.target}"


@dataclass(frozen=True)
class Peer:
    """One client connection as the agent sees it. ``id`` is unique per client connection
    and is what sessions are owned by."""

    id: str
    description: str = ""
    #: The client proved it is the agent's operator (the admin token): it may see what all
    #: clients hold (GetStatus), never use their sessions.
    admin: bool = False


@dataclass
class Message:
    """A request or a reply: protobuf bytes plus optional out-of-band buffers."""

    payload: Buffer
    buffers: Sequence[Buffer] = field(default_factory=tuple)

    @property
    def nbytes(self) -> int:
        return len(self.payload) + sum(len(b) for b in self.buffers)


class CallError(VaccelError):
    """A call failed with a status (gRPC status-code names: NOT_FOUND, INVALID_ARGUMENT,
    RESOURCE_EXHAUSTED, UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, ...) and an upstream
    error code."""

    def __init__(
        self,
        status: str,
        message: str,
        *,
        code: int | None = None,
        details: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        super().__init__(message, code=code)
        self.status = status
        #: The status details the peer sent (type URL, bytes): another protocol's error form.
        self.details = tuple(details)


#: The one errno -> status table (gRPC status-code names) every transport and the agent use.
STATUS_BY_ERRNO: dict[int, str] = {
    errno.EINVAL: "INVALID_ARGUMENT",
    errno.ENOENT: "NOT_FOUND",
    errno.ENOTSUP: "UNIMPLEMENTED",
    errno.ENOMEM: "RESOURCE_EXHAUSTED",
    errno.ECONNRESET: "FAILED_PRECONDITION",
    errno.ETIMEDOUT: "DEADLINE_EXCEEDED",
    errno.EPROTO: "INTERNAL",
    errno.EREMOTEIO: "UNAVAILABLE",
    errno.EIO: "INTERNAL",
}

_STATUS_BY_CLASS: tuple[tuple[type[VaccelError], str], ...] = (
    (InvalidArgumentError, "INVALID_ARGUMENT"),
    (NotFoundError, "NOT_FOUND"),
    (NotSupportedError, "UNIMPLEMENTED"),
    (OutOfMemoryError, "RESOURCE_EXHAUSTED"),
    (SessionError, "FAILED_PRECONDITION"),
    (BackendError, "INTERNAL"),
    (RemoteError, "UNAVAILABLE"),
)


def status_for(exc: BaseException) -> str:
    """The status a failed call reports for ``exc``: a CallError's own status; for another
    VaccelError the status of its errno ``code`` (which is what crosses the wire), else of
    its class, else UNKNOWN; INTERNAL for any other exception (a bug, not a refusal)."""
    if isinstance(exc, CallError):
        return exc.status
    if not isinstance(exc, VaccelError):
        return "INTERNAL"
    status = STATUS_BY_ERRNO.get(exc.code)
    if status is not None:
        return status
    for cls, by_class in _STATUS_BY_CLASS:
        if isinstance(exc, cls):
            return by_class
    return "UNKNOWN"


class Handler(Protocol):
    """What a listener calls: implemented by the agent service.

    A handler may also have ``rejected(limit: str) -> None``: a listener calls it once for
    each connection, stream or request it refuses by one of its own limits (before any call
    reaches :meth:`handle`), with the limit's name as the agent names it (``max_connections``,
    ``max_streams``, ``max_clients``, ``handshake_timeout``, ``receive_timeout``,
    ``max_message_bytes``, ``max_calls``, ``max_client_calls``). It is optional (a listener
    looks it up with :func:`rejection_hook`), cheap and must not raise; refusals a
    :meth:`handle` call raised itself are never reported through it."""

    def handle(self, method: str, request: Message, peer: Peer) -> Message:
        """Serve one call. Raises VaccelError (or CallError) for a failed call."""
        ...

    def peer_connected(self, peer: Peer) -> None: ...

    def peer_disconnected(self, peer: Peer) -> None:
        """The client's connection went away: the agent releases what it owned."""
        ...


#: A whole ttrpc service besides the agent's own: ``(method, payload, peer) -> reply payload``.
#: It raises CallError for a failed call, or :class:`StatusError` to choose the exact status.
RawService = Callable[[str, bytes, Peer], bytes]


class StatusError(Exception):
    """A failed call of a :data:`RawService` with exactly this status: a gRPC code number, a
    message and details as (type URL, bytes) pairs (another protocol's error form)."""

    def __init__(self, code: int, message: str, details: Sequence[tuple[str, bytes]] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = tuple(details)


def _not_counted(limit: str) -> None:
    """The rejection hook of a handler without ``rejected``."""


def rejection_hook(handler: Handler) -> Callable[[str], None]:
    """The handler's optional ``rejected(limit)`` (see :class:`Handler`), or a no-op: a
    listener looks it up once and calls it on each refusal by one of its limits."""
    hook = getattr(handler, "rejected", None)
    return hook if callable(hook) else _not_counted


def extra_services(handler: Handler) -> Mapping[str, RawService]:
    """The services a handler serves over ttrpc besides the agent's (its ``services``
    attribute: full service name -> :data:`RawService`), e.g. upstream vAccel's."""
    services: Mapping[str, RawService] = getattr(handler, "services", None) or {}
    return services


@dataclass(frozen=True)
class TlsOptions:
    """TLS for a tcp listener or channel, as PEM bytes.

    Listener: ``cert`` + ``key`` are the agent's; ``ca``, when given, is the CA that client
    certificates must chain to (mutual TLS: a client without one is refused). Channel: ``ca``
    verifies the agent (None: the system roots); ``cert`` + ``key`` are the client's own for
    mutual TLS; ``server_name`` overrides the name checked in the agent's certificate."""

    cert: bytes | None = None
    key: bytes | None = None
    ca: bytes | None = None
    server_name: str | None = None


@dataclass
class TransportOptions:
    """Settings common to every transport; ``extra`` carries transport-specific ones.

    The listener limits bound what clients can make one listener hold (see
    ``agent/limits.py`` and docs/security.md for their flags); a transport enforces those that
    apply to it and documents the rest."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    unix_socket_mode: int = 0o600
    connect_timeout: float = 5.0
    #: Open connections per listener; more are closed at once.
    max_connections: int = 1024
    #: Concurrent streams (calls, the Attach stream included) per connection.
    max_streams: int = 16
    #: Attached clients per listener.
    max_clients: int = 64
    #: Seconds a new connection has to finish its set-up.
    handshake_timeout: float = 5.0
    #: Seconds after which a connection with no call and no attached client is closed.
    idle_timeout: float = 30.0
    #: Calls of all clients, and of one client, receiving their request at once (partial
    #: requests hold at most ``max_calls x max_message_bytes``).
    max_calls: int = 64
    max_client_calls: int = 8
    #: Seconds a call's request has to arrive in full after its headers.
    receive_timeout: float = 10.0
    tls: TlsOptions | None = None
    #: Bearer token: a listener refuses calls without it; a channel sends it.
    token: bytes | None = None
    #: Listener: the operator's bearer token (also accepted where ``token`` is asked for);
    #: callers presenting it are :attr:`Peer.admin`.
    admin_token: bytes | None = None
    #: Allow a listener without TLS on a non-loopback address, or a world-writable socket.
    insecure: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Channel(ABC):
    """The client side of a connection to the agent."""

    @abstractmethod
    def call(self, method: str, request: Message, timeout: float | None = None) -> Message:
        """Send one request and wait for its reply. Raises CallError for a failed call and
        RemoteError (naming the address) when the agent cannot be reached."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection (the agent then releases this client's sessions)."""


class Listener(ABC):
    """The server side: accepting clients at one address."""

    #: The address actually bound (e.g. with the real port for ``tcp://127.0.0.1:0``).
    address: str

    @abstractmethod
    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let in-flight calls finish within ``grace`` seconds, remove
        socket files."""


class Transport(ABC):
    """Base class of transport plugins."""

    #: Address scheme this transport serves ("tcp", "unix", "vsock", "virtio-mock").
    scheme: ClassVar[str] = ""
    name: ClassVar[str] = ""
    version: ClassVar[str] = "0"
    description: ClassVar[str] = ""

    @classmethod
    def probe(cls) -> str | None:
        """Why this transport cannot work here, or None. Cheap; must not raise."""
        return None

    @abstractmethod
    def connect(self, address: Address, options: TransportOptions) -> Channel:
        """Open a client channel to the agent at ``address``."""

    @abstractmethod
    def listen(self, address: Address, handler: Handler, options: TransportOptions) -> Listener:
        """Start serving ``handler`` at ``address`` (returns once it accepts connections)."""


# The deadline of the call being served --------------------------------------------------------
_call_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "vaccel_call_deadline", default=None
)


@contextlib.contextmanager
def deadline_scope(deadline: float | None) -> Iterator[None]:
    """Serve a call inside this block when its deadline is known (a ``time.monotonic()``
    value; None: none): a transport runs ``Handler.handle`` in it (ttrpc's ``timeout_nano``,
    gRPC's ``time_remaining()``), so work that waits on the agent's side (a batch queue) gives
    up when the client already has."""
    token = _call_deadline.set(deadline)
    try:
        yield
    finally:
        _call_deadline.reset(token)


def current_deadline() -> float | None:
    """The deadline of the call being served in this thread (see :func:`deadline_scope`)."""
    return _call_deadline.get()
