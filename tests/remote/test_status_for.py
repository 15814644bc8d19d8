"""The one errno -> status table shared by the agent and the transports."""

from __future__ import annotations

import errno

import pytest

from vaccel_core.errors import (
    BackendError,
    InvalidArgumentError,
    NotFoundError,
    NotSupportedError,
    OutOfMemoryError,
    PluginError,
    RemoteError,
    SessionError,
    VaccelError,
)
from vaccel_core.transport import CallError, status_for


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (InvalidArgumentError("x"), "INVALID_ARGUMENT"),
        (NotFoundError("x"), "NOT_FOUND"),
        (PluginError("x"), "NOT_FOUND"),
        (NotSupportedError("x"), "UNIMPLEMENTED"),
        (OutOfMemoryError("x"), "RESOURCE_EXHAUSTED"),
        (SessionError("x"), "FAILED_PRECONDITION"),
        (RemoteError("x"), "UNAVAILABLE"),
        (BackendError("x"), "INTERNAL"),  # EPROTO
        (VaccelError("x"), "INTERNAL"),  # EIO
        (VaccelError("x", code=errno.EPROTO), "INTERNAL"),
        (VaccelError("x", code=errno.ENOMEM), "RESOURCE_EXHAUSTED"),
        (VaccelError("x", code=errno.EPERM), "UNKNOWN"),
        (InvalidArgumentError("x", code=errno.EPERM), "INVALID_ARGUMENT"),
        (CallError("DEADLINE_EXCEEDED", "x", code=errno.EIO), "DEADLINE_EXCEEDED"),
        (RuntimeError("x"), "INTERNAL"),
    ],
)
def test_status_for(exc: BaseException, status: str) -> None:
    assert status_for(exc) == status


def test_agent_and_grpc_use_the_shared_table() -> None:
    from vaccel_agent import service
    from vaccel_transports import grpc_transport

    assert service.call_error(BackendError("boom")).status == "INTERNAL"
    assert service.call_error(VaccelError("io")).status == "INTERNAL"
    assert grpc_transport.status_for is status_for
