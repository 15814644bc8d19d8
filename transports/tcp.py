"""The tcp transport: the agent protocol over gRPC on TCP (``tcp://HOST:PORT``; port 0 binds a
free port). ``ttrpc+tcp://`` speaks ttrpc instead (no TLS: loopback, or a network you trust
with ``--insecure`` and a token); gRPC stays the default here, where TLS, load balancers and
health probes live.

With ``TransportOptions.tls`` the listener and the channel use TLS through gRPC's own
credentials (mutual TLS when the listener has a client CA); the address stays
``tcp://host:port``. A listener refuses a non-loopback address without TLS unless
``TransportOptions.insecure`` is set, and refuses a port that is already in use.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from vaccel_core import hookimpl
from vaccel_core.errors import InvalidArgumentError, RemoteError
from vaccel_core.transport import Address, Channel, Handler, Listener, Transport, TransportOptions

from . import grpc_missing


def split_host_port(address: Address) -> tuple[str, int]:
    """``127.0.0.1:65500`` -> ("127.0.0.1", 65500); ``[::1]:0`` -> ("[::1]", 0)."""
    host, sep, port = address.target.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidArgumentError(
            f"address: expected tcp://HOST:PORT (e.g. tcp://127.0.0.1:65500), got '{address}'"
        )
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, ``[v6]`` or a name) means only this machine."""
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(bare, None)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos
    )


class TcpTransport(Transport):
    """gRPC over TCP."""

    scheme = "tcp"
    name = "tcp"
    version = "0.1.0"
    description = "agent protocol over gRPC (ttrpc with ttrpc+tcp://) on TCP"

    @classmethod
    def probe(cls) -> str | None:
        return grpc_missing()

    def connect(self, address: Address, options: TransportOptions) -> Channel:
        host, port = split_host_port(address)
        if address.speaks("grpc") == "ttrpc":
            from .ttrpc.client import TtrpcChannel

            refuse_tls(address, options)
            channel = TtrpcChannel.connect_tcp(host, port, options, str(address))
            channel.hello(options.connect_timeout)
            return channel
        from .grpc_client import GrpcChannel

        return GrpcChannel(f"{host}:{port}", str(address), options)

    def listen(self, address: Address, handler: Handler, options: TransportOptions) -> Listener:
        host, port = split_host_port(address)
        if options.tls is None and not options.insecure and not is_loopback(host):
            raise RemoteError(
                f"refusing to listen on {address} without TLS: it is reachable from other "
                f"hosts, and every client there could use the agent unencrypted and "
                f"unauthenticated (give --tls-cert/--tls-key, bind to 127.0.0.1, or pass "
                f"--insecure)"
            )
        if address.protocol == "ttrpc":
            return self._listen_ttrpc(address, host, port, handler, options)
        from .grpc_server import serve

        return serve(
            f"{host}:{port}",
            lambda bound: f"tcp://{host}:{bound}",
            handler,
            options,
            requested=str(address),
        )

    def _listen_ttrpc(
        self, address: Address, host: str, port: int, handler: Handler, options: TransportOptions
    ) -> Listener:
        from .dual import DualListener

        refuse_tls(address, options)
        bare = host.strip("[]")
        family = socket.AF_INET6 if ":" in bare else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            # SO_REUSEADDR only lets a restarted agent bind past TIME_WAIT; a port in use
            # by a live listener is still an error (no SO_REUSEPORT).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((bare, port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise RemoteError(
                f"cannot listen on {address}: {exc.strerror or exc} (the address is in use or "
                f"cannot be bound)"
            ) from None
        bound = sock.getsockname()[1]
        public = f"ttrpc+tcp://{host}:{bound}"
        try:
            return DualListener(sock, public, handler, options, grpc=False)
        except BaseException:
            sock.close()
            raise


def refuse_tls(address: Address, options: TransportOptions) -> None:
    """ttrpc has no TLS: asking for both is an error, not a silent downgrade."""
    if options.tls is not None:
        raise RemoteError(
            f"{address}: ttrpc has no TLS; use tcp:// (gRPC) for TLS, or ttrpc on a unix or "
            f"vsock socket"
        )


@hookimpl
def vaccel_register_transports(register: Any) -> None:
    register(TcpTransport)
