"""Entry point of the rpc backends (``vaccel.backends`` group): ``rpc`` (our agent) and
``rpc-upstream`` (an upstream vAccel agent). Cheap: it imports no grpc and no protobuf; the
backends load them when they first connect."""

from __future__ import annotations

from typing import Any

from vaccel_core import hookimpl


@hookimpl
def vaccel_register_backends(register: Any) -> None:
    from .backend import RpcBackend
    from .upstream import UpstreamRpcBackend

    register(RpcBackend)
    register(UpstreamRpcBackend)


def _configure_status(parser: Any) -> None:
    from .status_view import configure

    configure(parser)


def _run_status(args: Any) -> int:
    from .status_view import run

    return run(args)


@hookimpl
def vaccel_register_commands(register: Any) -> None:
    register(
        "status",
        "a live view of an agent: clients, sessions, calls per second, latency",
        _configure_status,
        _run_status,
    )
