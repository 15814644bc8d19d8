"""The vAccel exception hierarchy; each error carries the upstream errno-style code."""

from __future__ import annotations

import errno


class VaccelError(Exception):
    """Base of every error this package raises on purpose.

    ``code`` is the upstream vAccel error code (an errno value), so that the error survives a
    trip through the agent and maps back to the same class on the other side.
    """

    code: int = errno.EIO

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


#: Most characters of client input an error message quotes.
CLIP_CHARS = 64


def clip(value: object, limit: int = CLIP_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, saying how long it was: errors quote client
    input only this way, so that a 64 MiB string never comes back in an error message.

    >>> clip("x" * 1000, 8)
    "'xxxxxxx...' (1000 characters)"
    """
    if isinstance(value, (str, bytes, bytearray)) and len(value) > limit:
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{repr(value[: max(limit - 1, 1)])[:-1]}...{repr(value)[-1]} ({len(value)} {unit})"
    text = repr(value)
    if len(text) > limit:
        return f"{text[:limit]}... ({len(text)} characters)"
    return text


class InvalidArgumentError(VaccelError, ValueError):
    """An operation got an argument of the wrong type, shape, size or value (EINVAL)."""

    code = errno.EINVAL


class OutOfMemoryError(VaccelError, MemoryError):
    """Not enough memory for the request (ENOMEM)."""

    code = errno.ENOMEM


class NotSupportedError(VaccelError, NotImplementedError):
    """No selected backend implements the operation, or a feature is unavailable (ENOTSUP)."""

    code = errno.ENOTSUP


class NotFoundError(VaccelError, LookupError):
    """A session, resource, backend or file does not exist (ENOENT)."""

    code = errno.ENOENT


class BackendError(VaccelError):
    """A backend failed while running an operation (EPROTO, as upstream)."""

    code = errno.EPROTO


class SessionError(VaccelError):
    """The session is closed or unusable (ECONNRESET, as upstream)."""

    code = errno.ECONNRESET


class RemoteError(VaccelError):
    """The remote agent could not be reached or failed to answer (EREMOTEIO)."""

    code = errno.EREMOTEIO


class PluginError(VaccelError):
    """A plugin failed to load or register, or the configuration names an unusable one."""

    code = errno.ENOENT


_BY_CODE: dict[int, type[VaccelError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        OutOfMemoryError,
        NotSupportedError,
        NotFoundError,
        BackendError,
        SessionError,
        RemoteError,
    )
}


def error_for_code(code: int, message: str) -> VaccelError:
    """Build the exception class that matches an upstream error code (used across the wire)."""
    cls = _BY_CODE.get(code, VaccelError)
    return cls(message, code=code)
