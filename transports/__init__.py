"""Transport plugins: tcp, unix, vsock and virtio-mock."""

from __future__ import annotations

import importlib.util

GRPC_MISSING = "grpcio is not installed (pip install 'pyvaccel[remote]')"


def grpc_missing() -> str | None:
    """The probe of every transport that speaks gRPC: why it cannot, or None.

    It looks grpcio up without importing it, so that discovering the transports (every new
    session does) does not load gRPC into processes that never use it."""
    return GRPC_MISSING if importlib.util.find_spec("grpc") is None else None
