"""The tcp transport: the agent protocol over gRPC on TCP (``tcp://HOST:PORT``; port 0 binds a
free port). Unauthenticated and unencrypted: bind it to loopback or a private network."""

from __future__ import annotations

from typing import Any

from vaccel_core import hookimpl
from vaccel_core.errors import InvalidArgumentError
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


class TcpTransport(Transport):
    """gRPC over TCP."""

    scheme = "tcp"
    name = "tcp"
    version = "0.1.0"
    description = "agent protocol over gRPC on TCP"

    @classmethod
    def probe(cls) -> str | None:
        return grpc_missing()

    def connect(self, address: Address, options: TransportOptions) -> Channel:
        from .grpc_transport import GrpcChannel

        host, port = split_host_port(address)
        return GrpcChannel(f"{host}:{port}", str(address), options)

    def listen(self, address: Address, handler: Handler, options: TransportOptions) -> Listener:
        from .grpc_transport import serve

        host, port = split_host_port(address)
        return serve(f"{host}:{port}", lambda bound: f"tcp://{host}:{bound}", handler, options)


@hookimpl
def vaccel_register_transports(register: Any) -> None:
    register(TcpTransport)
