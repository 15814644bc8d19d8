"""Upstream vAccel agent errors as our exceptions.

Upstream's Rust agent fails a call with a ttrpc status (vaccel-rpc-agent ``agent_service.rs``):

* ``INTERNAL`` with a ``vaccel.Error`` detail for an error of its vAccel library: ``FFI``
  (an errno-style ``ffi_error``, e.g. 95 when no plugin implements the operation),
  ``FFI_WITH_STATUS`` (that and a status), ``INVALID_ARGUMENT`` (e.g. an id <= 0),
  ``CONVERSION_FAILED`` (e.g. an argument whose size field lies), ``UNINITIALIZED``,
  ``OUT_OF_BOUNDS``, ``EMPTY_VALUE``. The status message is the error's text (``FFI error:
  95``), so the errno survives even where the detail does not reach us;
* ``NOT_FOUND``: an unknown session or resource id;
* ``INVALID_ARGUMENT``: e.g. a resource registration with neither paths nor blobs.

Each becomes the :class:`~vaccel_core.errors.VaccelError` subclass of its errno, with a message
naming our operation.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterable
from typing import Any

from vaccel_core.errors import (
    BackendError,
    InvalidArgumentError,
    NotFoundError,
    NotSupportedError,
    VaccelError,
    error_for_code,
)
from vaccel_core.transport import CallError

#: Upstream's FFI error text: ``FFI error: 95`` or ``FFI error: 95 [message (code)]``.
_FFI_TEXT = re.compile(r"FFI error: (?P<code>\d+)")
#: Upstream's ``vaccel.ErrorType`` values.
FFI, FFI_WITH_STATUS, INVALID_ARGUMENT, CONVERSION_FAILED = 0, 1, 2, 6


def _strip(message: str, method: str) -> str:
    """The agent's own text: the ttrpc client prefixes the wire method (``Genop: ...``)."""
    return message[len(method) + 2 :] if message.startswith(f"{method}: ") else message


def _errno_name(code: int) -> str:
    return errno.errorcode.get(code, str(code))


def _from_detail(detail: Any, text: str, what: str, where: str) -> VaccelError:
    """The error a parsed ``vaccel.Error`` stands for."""
    kind = int(detail.type)
    if kind in (FFI, FFI_WITH_STATUS):
        code = int(detail.ffi_error) if detail.HasField("ffi_error") else errno.EPROTO
        return error_for_code(code, f"{what}: {where} failed with {_errno_name(code)}: {text}")
    if kind in (INVALID_ARGUMENT, CONVERSION_FAILED):
        return InvalidArgumentError(f"{what}: {where} refused the call: {text}")
    return BackendError(f"{what}: {where} failed: {text}")


def _detail(details: Iterable[Any]) -> Any:
    """The ``vaccel.Error`` among a status's details, parsed, or None."""
    for item in details:
        type_url, value = item if isinstance(item, tuple) else (item.type_url, item.value)
        if not str(type_url).rpartition("/")[2].startswith("vaccel."):
            continue
        from vaccel_core.proto.upstream import upstream

        parsed = upstream().vaccel.Error()
        try:
            parsed.ParseFromString(value)
        except Exception:
            return None
        return parsed
    return None


def upstream_error(exc: CallError, method: str, what: str, address: str) -> VaccelError:
    """Our exception for a failed call of ``method`` (the wire RPC) made for ``what`` (our
    operation name) to the upstream agent at ``address``."""
    text = _strip(exc.message, method)
    where = f"the upstream vAccel agent at {address} ({method})"
    if exc.status == "INTERNAL":
        detail = _detail(getattr(exc, "details", ()) or ())
        if detail is not None:
            return _from_detail(detail, text, what, where)
        ffi = _FFI_TEXT.search(text)
        if ffi is not None:
            code = int(ffi.group("code"))
            return error_for_code(code, f"{what}: {where} failed with {_errno_name(code)}: {text}")
        if text.startswith(("Invalid argument", "Conversion failed")):
            return InvalidArgumentError(f"{what}: {where} refused the call: {text}")
        return BackendError(f"{what}: {where} failed: {text}")
    if exc.status == "NOT_FOUND":
        return NotFoundError(f"{what}: {where}: {text}")
    if exc.status == "INVALID_ARGUMENT":
        return InvalidArgumentError(f"{what}: {where} refused the call: {text}")
    if exc.status in ("UNIMPLEMENTED", "NOT_IMPLEMENTED"):
        return NotSupportedError(f"{what}: {where} does not serve {method}: {text}")
    return error_for_code(exc.code, f"{what}: {where}: {exc.status}: {text}")


__all__ = ["upstream_error"]
