"""Upstream vAccel's error form on the wire, as its Rust agent (vaccel-rpc-agent 0.5) sends it.

A failed call of ``vaccel.sync.agent.AgentService`` ends with a ttrpc status:

* a vAccel error (the C library returned an errno-style code, or a conversion failed):
  INTERNAL, message ``"FFI error: <code>"`` (``"Invalid argument: ..."``, ``"Conversion failed:
  ..."``), and one detail ``type.googleapis.com/vaccel.ProtoError`` holding a ``vaccel.Error``
  (``type`` FFI with ``ffi_error``, or INVALID_ARGUMENT / CONVERSION_FAILED with
  ``status.message``). Upstream's guest reads the code from that detail, whatever its type URL;
* a session or resource that does not exist: NOT_FOUND ``"Unknown session <id>"``, no detail;
* a request the agent refuses outright: INVALID_ARGUMENT with a message, no detail.

Our messages start exactly as upstream's and may add the reason in parentheses (what was
wrong, never a host path). Our limits have no upstream counterpart: they end with
RESOURCE_EXHAUSTED naming the flag, plus the detail with ``ffi_error`` ENOMEM, so that an
upstream guest still gets a vAccel code (VACCEL_ENOMEM) rather than a transport error.
"""

from __future__ import annotations

import errno
import secrets
from collections.abc import Sequence

from vaccel_agent.service import call_error
from vaccel_core.errors import VaccelError
from vaccel_core.log import logger as _vaccel_logger
from vaccel_core.transport import CallError, StatusError

logger = _vaccel_logger.getChild("agent.upstream")

#: ttrpc status codes (gRPC numbering) upstream's agent uses.
INVALID_ARGUMENT = 3
NOT_FOUND = 5
RESOURCE_EXHAUSTED = 8
INTERNAL = 13

#: The type URL of the detail upstream's agent attaches to vAccel errors (sic: not vaccel.Error).
PROTO_ERROR_TYPE_URL = "type.googleapis.com/vaccel.ProtoError"

#: vaccel.ErrorType values.
FFI = 0
FFI_WITH_STATUS = 1
INVALID_ARGUMENT_TYPE = 2
CONVERSION_FAILED = 6


def _detail(
    type_: int,
    *,
    ffi_error: int | None = None,
    message: str | None = None,
    status_code: int | None = None,
) -> bytes:
    from vaccel_core.proto.upstream import upstream

    error = upstream().vaccel.Error(type=type_)
    if ffi_error is not None:
        error.ffi_error = ffi_error
    if message is not None or status_code is not None:
        error.status.message = message or ""
        error.status.code = status_code or 0
    return bytes(error.SerializeToString())


def _with_reason(head: str, reason: str) -> str:
    return f"{head} ({reason})" if reason else head


def ffi(code: int, reason: str = "") -> StatusError:
    """A vAccel error code, as upstream's agent reports a failed C call (``Error::Ffi``)."""
    detail = _detail(FFI, ffi_error=code)
    return StatusError(
        INTERNAL, _with_reason(f"FFI error: {code}", reason), [(PROTO_ERROR_TYPE_URL, detail)]
    )


def ffi_with_status(
    code: int, reason: str = "", status_code: int = 0, message: str = ""
) -> StatusError:
    """A vAccel error code with the framework's status, as upstream's TensorFlow calls (and
    TFLite's run) report it (``Error::FfiWithStatus``: ``FFI error: 95 [<message> (<code>)]``)."""
    detail = _detail(FFI_WITH_STATUS, ffi_error=code, message=message, status_code=status_code)
    head = f"FFI error: {code} [{message} ({status_code})]"
    return StatusError(INTERNAL, _with_reason(head, reason), [(PROTO_ERROR_TYPE_URL, detail)])


def invalid_id(value: int) -> StatusError:
    """An id that is not positive (``VaccelId::try_from``: ``Error::InvalidArgument``)."""
    message = f"Invalid ID: {value}"
    detail = _detail(INVALID_ARGUMENT_TYPE, message=message)
    return StatusError(INTERNAL, f"Invalid argument: {message}", [(PROTO_ERROR_TYPE_URL, detail)])


def invalid_argument(message: str) -> StatusError:
    """A vAccel ``Error::InvalidArgument`` (INTERNAL with its detail)."""
    detail = _detail(INVALID_ARGUMENT_TYPE, message=message)
    return StatusError(INTERNAL, f"Invalid argument: {message}", [(PROTO_ERROR_TYPE_URL, detail)])


def conversion_failed(message: str) -> StatusError:
    """A vAccel ``Error::ConversionFailed``: a request field that does not convert (a genop
    arg whose ``size`` is not the length of its ``buf``)."""
    detail = _detail(CONVERSION_FAILED, message=message)
    return StatusError(INTERNAL, f"Conversion failed: {message}", [(PROTO_ERROR_TYPE_URL, detail)])


def not_found(message: str) -> StatusError:
    """Upstream's ``AgentServiceError::NotFound``: NOT_FOUND with the message only."""
    return StatusError(NOT_FOUND, message)


def refused(message: str) -> StatusError:
    """Upstream's ``AgentServiceError::InvalidArgument``: INVALID_ARGUMENT, message only (also
    what ttrpc-rust answers for a method it does not know or a payload it cannot parse)."""
    return StatusError(INVALID_ARGUMENT, message)


def from_vaccel(
    exc: VaccelError, private: Sequence[str] = (), *, with_status: bool = False
) -> StatusError:
    """Our error in upstream's form: a limit (RESOURCE_EXHAUSTED) keeps its status and gains
    the ENOMEM detail; anything else is ``FFI error: <its code>`` (``with_status``: with an
    empty status, as the TensorFlow calls) with our message as the reason (without the
    agent's ``private`` folders)."""
    failure = call_error(exc, private)
    if failure.status == "RESOURCE_EXHAUSTED":
        detail = _detail(FFI, ffi_error=errno.ENOMEM)
        return StatusError(RESOURCE_EXHAUSTED, failure.message, [(PROTO_ERROR_TYPE_URL, detail)])
    if with_status:
        return ffi_with_status(failure.code, failure.message)
    return ffi(failure.code, failure.message)


def unexpected(name: str, exc: BaseException) -> StatusError:
    """A bug of the agent: logged with a reference; the client gets INTERNAL with that
    reference only (nothing of the agent's internals)."""
    if isinstance(exc, CallError):
        return from_vaccel(exc)
    reference = secrets.token_hex(4)
    logger.error("%s: unexpected error in the agent (reference %s)", name, reference, exc_info=exc)
    return StatusError(
        INTERNAL, f"{name}: unexpected agent error (reference {reference} in the agent's log)"
    )
