"""What a failed call reports: every listener turns whatever a call raised into a CallError."""

from __future__ import annotations

import errno
import secrets

from vaccel_core.errors import VaccelError
from vaccel_core.log import logger
from vaccel_core.transport import CallError, status_for

from . import grpc_framing


def call_failure(name: str, exc: BaseException) -> CallError:
    """The CallError that ends call ``name`` after ``exc``: a CallError as it is, a
    malformed frame as INVALID_ARGUMENT, a VaccelError by :func:`status_for`; anything else is
    a bug of the agent: logged with a reference, reported as INTERNAL with that reference only
    (nothing of the agent's internals reaches the client)."""
    if isinstance(exc, CallError):
        return exc
    if isinstance(exc, grpc_framing.FrameError):
        return CallError("INVALID_ARGUMENT", f"{name}: {exc.message}", code=exc.code)
    if isinstance(exc, VaccelError):
        return CallError(status_for(exc), exc.message, code=exc.code)
    reference = secrets.token_hex(4)
    logger.error("%s: unexpected error in the agent (reference %s)", name, reference, exc_info=exc)
    return CallError(
        "INTERNAL",
        f"{name}: unexpected agent error (reference {reference} in the agent's log)",
        code=errno.EIO,
    )
