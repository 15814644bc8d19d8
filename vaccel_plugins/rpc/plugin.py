"""Entry point of the rpc backend (``vaccel.backends`` group). Cheap: it imports no grpc and no
protobuf; the backend loads them when it first connects."""

from __future__ import annotations

from typing import Any

from vaccel_core import hookimpl


@hookimpl
def vaccel_register_backends(register: Any) -> None:
    from .backend import RpcBackend

    register(RpcBackend)
