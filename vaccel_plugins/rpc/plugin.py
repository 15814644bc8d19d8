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
