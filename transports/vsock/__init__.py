"""The ``vsock`` transport: the agent protocol over AF_VSOCK (``vsock://CID:PORT``).

The guest dials the host (CID 2) by default; the agent listens on every CID
(``vsock://-1:2048``). Clients speak ttrpc straight on the AF_VSOCK socket; the agent's
listener serves ttrpc and gRPC on the same port (:mod:`vaccel_transports.dual`).
``grpc+vsock://`` speaks gRPC, which grpcio's wheels cannot do on vsock: the client then relays
a private unix socket to AF_VSOCK byte for byte (:mod:`vaccel_transports._relay`). Either way
the bytes on the vsock wire are what the ``unix://`` transport speaks. That is what makes
hybrid vsock work: on Firecracker, Cloud Hypervisor and Dragonball a guest's connection to
``vsock://2:2048`` arrives at the host unix socket ``<uds_path>_2048``, where the agent listens with
``unix://<uds_path>_2048`` (see :func:`hybrid_agent_address`).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
from typing import Any

from vaccel_core import hookimpl
from vaccel_core.errors import InvalidArgumentError, RemoteError
from vaccel_core.transport import (
    Address,
    Channel,
    Handler,
    Listener,
    Message,
    Transport,
    TransportOptions,
)

from .. import protobuf_missing, require_grpc, serves_grpc
from .._relay import Relay
from .address import (
    CID_ANY,
    CID_HOST,
    KATA_VACCEL_PORT,
    PORT_ANY,
    VsockAddress,
    hybrid_agent_address,
    hybrid_vsock_path,
    local_cid,
    unavailable_reason,
)

__all__ = [
    "CID_ANY",
    "CID_HOST",
    "KATA_VACCEL_PORT",
    "PORT_ANY",
    "VsockAddress",
    "VsockTransport",
    "hybrid_agent_address",
    "hybrid_vsock_path",
]

#: The transport that speaks on the private unix side of the relay (and on hybrid vsock).
INNER_SCHEME = "unix"


def describe_connect_error(exc: BaseException, target: VsockAddress) -> str:
    """Why dialling ``target`` failed, in words."""
    code = getattr(exc, "errno", None)
    mine = local_cid()
    if isinstance(exc, TimeoutError) and code in (None, 0):
        return f"no answer from CID {target.cid} port {target.port} in time"
    if code == errno.ENODEV:
        return (
            f"no vsock path to CID {target.cid} (ENODEV: this machine's CID is {mine}, and a "
            f"guest cannot dial itself without the vsock_loopback module)"
        )
    if code == errno.ECONNREFUSED:
        return f"nothing listens on port {target.port} of CID {target.cid} (connection refused)"
    if code == errno.ECONNRESET:
        return (
            f"CID {target.cid} reset the connection to port {target.port} (on a hybrid-vsock "
            f"VMM this means nothing listens on the host socket <uds_path>_{target.port})"
        )
    if code == errno.ETIMEDOUT:
        return f"no answer from CID {target.cid} port {target.port} (timed out)"
    if code in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"CID {target.cid} is unreachable ({os.strerror(code)})"
    if code in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
        return "the kernel has no vsock support (AF_VSOCK unavailable)"
    return f"{type(exc).__name__}: {exc}"


class VsockTransport(Transport):
    """gRPC over AF_VSOCK through a byte relay (see the module documentation)."""

    scheme = "vsock"
    name = "vsock"
    version = "0.1.0"
    description = "agent protocol (ttrpc or gRPC) over AF_VSOCK; hybrid vsock via unix://..._PORT"

    @classmethod
    def probe(cls) -> str | None:
        reason = unavailable_reason()
        if reason is not None:
            return reason
        return protobuf_missing()

    # Sockets (tests replace these two with AF_UNIX stand-ins where no vsock peer exists) ----
    def open_stream(self, target: VsockAddress, timeout: float) -> socket.socket:
        """A connected AF_VSOCK stream socket to ``target`` (raises OSError)."""
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect((target.cid, target.port))
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return sock

    def open_listener(self, where: VsockAddress) -> tuple[socket.socket, VsockAddress]:
        """A listening AF_VSOCK socket and the address it is bound to (raises OSError)."""
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind((where.cid, where.port))
            sock.listen(64)
            cid, port = sock.getsockname()
        except BaseException:
            sock.close()
            raise
        return sock, VsockAddress(where.cid if where.cid == CID_ANY else cid, port)

    # Transport -----------------------------------------------------------------------------
    def _inner(self) -> Transport:
        from vaccel_core.plugins import get_registry

        inner: Transport = get_registry().transport(INNER_SCHEME)
        return inner

    def connect(self, address: Address, options: TransportOptions) -> Channel:
        target = VsockAddress.parse(address)
        if target.cid == CID_ANY or target.port == PORT_ANY:
            raise InvalidArgumentError(
                f"address {address}: to connect, name a CID and a port (e.g. vsock://2:2048)"
            )
        where = str(address)
        grpc = address.speaks("ttrpc") == "grpc"
        if grpc:
            require_grpc(address)
        try:
            first = self.open_stream(target, options.connect_timeout)
        except OSError as exc:
            raise RemoteError(
                f"cannot reach the vAccel agent at {where}: {describe_connect_error(exc, target)}"
            ) from None
        if grpc:
            return VsockChannel(self, where, target, first, options)
        from ..ttrpc.client import TtrpcChannel

        channel = TtrpcChannel(first, where, options)
        channel.hello(options.connect_timeout)
        return channel

    def listen(self, address: Address, handler: Handler, options: TransportOptions) -> Listener:
        from ..dual import DualListener

        where = VsockAddress.parse(address)
        try:
            sock, bound = self.open_listener(where)
        except OSError as exc:
            raise RemoteError(f"cannot listen on {where}: {_listen_error(exc)}") from None
        public = str(Address("vsock", str(bound).partition("://")[2], address.protocol))
        try:
            return DualListener(
                sock,
                public,
                handler,
                options,
                grpc=address.protocol != "ttrpc" and serves_grpc(public),
                ttrpc=address.protocol != "grpc",
            )
        except BaseException:
            sock.close()
            raise


class VsockChannel(Channel):
    """A gRPC channel to a private unix socket whose connections are relayed over vsock."""

    def __init__(
        self,
        transport: VsockTransport,
        where: str,
        target: VsockAddress,
        first: socket.socket,
        options: TransportOptions,
    ) -> None:
        self.address = where
        self._dir = tempfile.mkdtemp(prefix="vaccel-vsock-")
        path = os.path.join(self._dir, "relay.sock")
        front = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        front.bind(path)
        front.listen(16)
        spare = [first]  # the connection dialled (and checked) above serves gRPC's first

        def dial() -> socket.socket:
            if spare:
                return spare.pop()
            return transport.open_stream(target, options.connect_timeout)

        self._target = target
        self._relay = Relay(front, dial, f"vsock relay to {where}")
        self._inner_path = path
        self._inner_address = f"unix://{path}"
        try:
            self._channel = transport._inner().connect(Address("unix", path, "grpc"), options)
        except RemoteError as exc:
            self._cleanup()
            raise RemoteError(self._rename(exc.message)) from None
        except BaseException:
            self._cleanup()
            raise
        self.peer_id = getattr(self._channel, "peer_id", "")

    def _rename(self, message: str) -> str:
        """An inner (unix) error message, told in terms of the vsock address."""
        text = message.replace(self._inner_address, self.address)
        text = text.replace(f"unix:{self._inner_path}", self.address)  # gRPC's own spelling
        err = self._relay.last_error
        if err is not None:
            text += f"; over vsock: {describe_connect_error(err, self._target)}"
        return text

    @property
    def lost(self) -> str | None:
        """Why the connection was lost, or None while it is up (as the inner channel says)."""
        lost: str | None = getattr(self._channel, "lost", None)
        return lost

    def call(self, method: str, request: Message, timeout: float | None = None) -> Message:
        try:
            return self._channel.call(method, request, timeout)
        except RemoteError as exc:
            raise RemoteError(self._rename(exc.message)) from None

    def close(self) -> None:
        self._channel.close()
        self._cleanup()

    def _cleanup(self) -> None:
        self._relay.stop(1.0)
        shutil.rmtree(self._dir, ignore_errors=True)


def _listen_error(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "the port is already in use"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"this machine does not have that CID (its CID is {local_cid()})"
    if exc.errno in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
        return "the kernel has no vsock support (AF_VSOCK unavailable)"
    return f"{type(exc).__name__}: {exc}"


@hookimpl
def vaccel_register_transports(register: Any) -> None:
    register(VsockTransport)
