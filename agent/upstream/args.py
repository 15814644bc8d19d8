"""Upstream's typed genop arguments (``struct vaccel_arg``) and its sequential reader
(``struct vaccel_arg_array`` with ``vaccel_arg_array_get_*``), with the same checks.

An argument is a buffer, a type (``vaccel.genop.ArgType``, upstream's ``vaccel_arg_type_t``)
and a custom type id. The reader hands out arguments in order; asking for a type checks the
argument's type and size exactly as upstream's getters do, and fails with upstream's code:
ERANGE past the last argument, EINVAL for the wrong type or size. Numbers are little-endian,
as on every host upstream runs on (x86_64, aarch64).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vaccel_core.proto.upstream import ArgType

from . import errors


@dataclass(frozen=True)
class Numeric:
    """One of upstream's numeric argument kinds: its scalar and array types and C layout."""

    scalar: ArgType
    array: ArgType
    fmt: str  # struct format of one element, little-endian
    dtype: str  # numpy dtype of one element, little-endian

    @property
    def itemsize(self) -> int:
        return struct.calcsize(self.fmt)


#: Upstream's ``VACCEL_ARG_NUMERIC_TYPES``, by the name its getters use.
NUMERIC: dict[str, Numeric] = {
    "int8": Numeric(ArgType.INT8, ArgType.INT8_ARRAY, "<b", "<i1"),
    "int16": Numeric(ArgType.INT16, ArgType.INT16_ARRAY, "<h", "<i2"),
    "int32": Numeric(ArgType.INT32, ArgType.INT32_ARRAY, "<i", "<i4"),
    "int64": Numeric(ArgType.INT64, ArgType.INT64_ARRAY, "<q", "<i8"),
    "uint8": Numeric(ArgType.UINT8, ArgType.UINT8_ARRAY, "<B", "<u1"),
    "uint16": Numeric(ArgType.UINT16, ArgType.UINT16_ARRAY, "<H", "<u2"),
    "uint32": Numeric(ArgType.UINT32, ArgType.UINT32_ARRAY, "<I", "<u4"),
    "uint64": Numeric(ArgType.UINT64, ArgType.UINT64_ARRAY, "<Q", "<u8"),
    "float": Numeric(ArgType.FLOAT32, ArgType.FLOAT32_ARRAY, "<f", "<f4"),
    "double": Numeric(ArgType.FLOAT64, ArgType.FLOAT64_ARRAY, "<d", "<f8"),
    "bool": Numeric(ArgType.BOOL, ArgType.BOOL_ARRAY, "<?", "<u1"),
    "char": Numeric(ArgType.CHAR, ArgType.CHAR_ARRAY, "<b", "<i1"),
    "uchar": Numeric(ArgType.UCHAR, ArgType.UCHAR_ARRAY, "<B", "<u1"),
}


class ArgError(Exception):
    """A getter refused an argument: upstream's code (EINVAL, ERANGE) and what it wanted."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(what)
        self.code = code
        self.what = what


@dataclass
class Arg:
    """One argument: its bytes (a write argument's: a bytearray, filled in place), type and
    custom id."""

    buf: bytes | bytearray
    arg_type: int
    custom_type_id: int = 0

    @property
    def size(self) -> int:
        return len(self.buf)

    @classmethod
    def from_proto(cls, proto: Any, *, writable: bool = False) -> Arg:
        """A ``vaccel.genop.Arg`` as upstream's agent converts it: ``size`` must be the length
        of ``buf`` (else Conversion failed), and an empty argument is refused as
        ``vaccel_arg_from_buf`` refuses it (EINVAL). No size is trusted: the bytes are the
        ones received. A write argument gets its own copy to fill."""
        data = proto.buf
        if proto.size != len(data):
            raise errors.conversion_failed(
                f"Could not convert proto `Arg` to `Arg`: Incorrect size; expected "
                f"{len(data)} got {proto.size}"
            )
        if not data:
            raise errors.ffi(errno.EINVAL, "an empty genop arg (size 0)")
        buf = bytearray(data) if writable else bytes(data)
        return cls(buf, int(proto.arg_type), int(proto.custom_type_id))

    def to_proto(self, message_type: Any) -> Any:
        """This argument as a ``vaccel.genop.Arg`` of the reply."""
        return message_type(
            buf=bytes(self.buf),
            size=len(self.buf),
            arg_type=self.arg_type,
            custom_type_id=self.custom_type_id,
        )

    def view(self, dtype: str, count: int | None = None) -> np.ndarray:
        """The first ``count`` elements (default: all whole ones) as a read-only array over
        the argument's own bytes (no copy)."""
        itemsize = np.dtype(dtype).itemsize
        count = self.size // itemsize if count is None else count
        array = np.frombuffer(self.buf, dtype=dtype, count=count)
        array.flags.writeable = False
        return array


def type_name(value: int) -> str:
    try:
        return ArgType(value).name
    except ValueError:
        return f"unknown type {value}"


class ArgReader:
    """Upstream's ``vaccel_arg_array`` over a list of arguments, read in order."""

    def __init__(self, args: Sequence[Arg], label: str) -> None:
        self.args = list(args)
        self.label = label  # "read" or "write"
        self.position = 0

    def __len__(self) -> int:
        return len(self.args)

    def _next(self, expected: ArgType, name: str) -> Arg:
        if self.position >= len(self.args):
            raise ArgError(
                errno.ERANGE,
                f"{name}: no {self.label} arg {self.position} (there are {len(self.args)})",
            )
        arg = self.args[self.position]
        if arg.arg_type != expected:
            raise ArgError(
                errno.EINVAL,
                f"{name}: {self.label} arg {self.position} is {type_name(arg.arg_type)}, "
                f"expected {expected.name}",
            )
        return arg

    def _advance(self, arg: Arg) -> Arg:
        self.position += 1
        return arg

    def scalar(self, kind: str, name: str) -> Any:
        """``vaccel_arg_array_get_<kind>``: exactly one element of that type."""
        numeric = NUMERIC[kind]
        arg = self._next(numeric.scalar, name)
        if arg.size != numeric.itemsize:
            raise ArgError(
                errno.EINVAL,
                f"{name}: {self.label} arg {self.position} has {arg.size} bytes, expected "
                f"{numeric.itemsize} ({numeric.scalar.name})",
            )
        (value,) = struct.unpack(numeric.fmt, bytes(arg.buf))
        if kind == "bool" and arg.buf[0] not in (0, 1):
            raise ArgError(errno.EINVAL, f"{name}: a BOOL must be 0 or 1")
        self._advance(arg)
        return value

    def array_arg(self, kind: str, name: str) -> Arg:
        """``vaccel_arg_array_get_<kind>_array``: the argument itself (to read, or to fill),
        non-empty and a whole number of elements."""
        numeric = NUMERIC[kind]
        arg = self._next(numeric.array, name)
        if arg.size % numeric.itemsize:
            raise ArgError(
                errno.EINVAL,
                f"{name}: {self.label} arg {self.position} has {arg.size} bytes, not a "
                f"whole number of {numeric.itemsize}-byte elements",
            )
        if kind == "bool" and any(b not in (0, 1) for b in arg.buf):
            raise ArgError(errno.EINVAL, f"{name}: a BOOL_ARRAY must hold only 0 and 1")
        return self._advance(arg)

    def array(self, kind: str, name: str) -> np.ndarray:
        """The elements of the next ``<kind>_array`` argument (a read-only view)."""
        return self.array_arg(kind, name).view(NUMERIC[kind].dtype)

    def string(self, name: str) -> str:
        """``vaccel_arg_array_get_string``: a STRING whose last byte is NUL; the text before
        the first NUL (UTF-8)."""
        arg = self._next(ArgType.STRING, name)
        if arg.buf[-1] != 0:
            raise ArgError(errno.EINVAL, f"{name}: the STRING is not NUL-terminated")
        raw = bytes(arg.buf[: arg.buf.index(0)])
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ArgError(errno.EINVAL, f"{name}: the STRING is not UTF-8") from None
        self._advance(arg)
        return text

    def buffer(self, name: str) -> bytes:
        """``vaccel_arg_array_get_buffer``: a non-empty BUFFER."""
        return bytes(self._advance(self._next(ArgType.BUFFER, name)).buf)  # no copy of bytes

    def remaining(self) -> list[Arg]:
        """``vaccel_arg_array_get_remaining``: every argument not read yet."""
        rest = self.args[self.position :]
        self.position = len(self.args)
        return rest


# Filling write arguments -------------------------------------------------------------------
def _writable(arg: Arg) -> bytearray:
    if not isinstance(arg.buf, bytearray):
        raise TypeError("only write args are filled")
    return arg.buf


def fill_text(arg: Arg, text: str) -> None:
    """Write ``text`` as ``snprintf(buf, size, "%s", text)`` does: at most ``size - 1`` bytes,
    then NUL; the rest of the buffer keeps the guest's bytes."""
    buf = _writable(arg)
    data = text.encode("utf-8", "replace")[: max(len(buf) - 1, 0)]
    buf[: len(data)] = data
    if buf:
        buf[len(data)] = 0


def fill_bytes(arg: Arg, data: bytes | bytearray | memoryview) -> None:
    """Copy ``data`` to the start of the buffer, truncated to its size (``memcpy`` of at most
    ``size`` bytes); bytes past ``data`` keep the guest's values."""
    buf = _writable(arg)
    view = memoryview(data).cast("B")[: len(buf)]
    buf[: len(view)] = view
