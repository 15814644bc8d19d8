"""Transport plugins: tcp, unix, vsock and virtio-mock."""

from __future__ import annotations

import importlib.util

GRPC_MISSING = "grpcio is not installed (pip install 'pyvaccel[remote]')"


def grpc_missing() -> str | None:
    """The probe of every transport that speaks gRPC: why it cannot, or None.

    It looks grpcio up without importing it, so that discovering the transports (every new
    session does) does not load gRPC into processes that never use it."""
    return GRPC_MISSING if importlib.util.find_spec("grpc") is None else None


PROTOBUF_MISSING = "protobuf is not installed (pip install 'pyvaccel[remote]')"


def protobuf_missing() -> str | None:
    """The probe of the transports that speak ttrpc by default (they need protobuf only)."""
    try:
        found = importlib.util.find_spec("google.protobuf") is not None
    except ModuleNotFoundError:
        found = False
    return None if found else PROTOBUF_MISSING


def require_grpc(address: object) -> None:
    """Raise a clear error when ``address`` asks for gRPC and grpcio is missing."""
    reason = grpc_missing()
    if reason is not None:
        from vaccel_core.errors import RemoteError

        raise RemoteError(f"{address}: gRPC was asked for, but {reason}")


def serves_grpc(address: object) -> bool:
    """Whether a listener that serves both protocols can serve gRPC too (grpcio installed);
    logs once why not."""
    reason = grpc_missing()
    if reason is None:
        return True
    from vaccel_core.log import logger

    logger.warning("%s: serving ttrpc only: %s", address, reason)
    return False
