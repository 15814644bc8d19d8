"""Upstream's TF, TFLite and Torch tensors (``data``, ``dims``, ``type``) as numpy arrays.

Every tensor a guest sends is checked before it becomes an array: a data type numpy can hold,
at most :data:`MAX_DIMS` non-negative dimensions, and exactly ``prod(dims) x itemsize`` bytes of
data (upstream builds its tensors unchecked). A wrong one is upstream's ``Invalid argument``.
"""

from __future__ import annotations

import errno
import math
from typing import Any

import numpy as np

from . import errors

#: Dimensions of one tensor.
MAX_DIMS = 32

#: Each family's ``DataType`` number -> numpy dtype (little-endian); types numpy cannot hold
#: (strings, quantized, bfloat16, resources, variants) are absent.
DTYPES: dict[str, dict[int, str]] = {
    "tf": {
        1: "<f4", 2: "<f8", 3: "<i4", 4: "<u1", 5: "<i2", 6: "<i1", 8: "<c8", 9: "<i8",
        10: "?", 17: "<u2", 18: "<c16", 19: "<f2", 22: "<u4", 23: "<u8",
    },
    "tflite": {
        2: "<f4", 3: "<i4", 4: "<u1", 5: "<i8", 7: "?", 8: "<i2", 9: "<c8", 10: "<i1",
        11: "<f2", 12: "<f8", 13: "<c16", 14: "<u8", 17: "<u4", 18: "<u2",
    },
    "torch": {1: "<u1", 2: "<i1", 3: "<i2", 4: "<i4", 5: "<i8", 6: "<f2", 7: "<f4"},
}  # fmt: skip


def decode(tensor: Any, family: str, label: str) -> np.ndarray:
    """A request's tensor as a numpy array (a copy), or ``Invalid argument``."""
    dtype = DTYPES[family].get(int(tensor.type))
    if dtype is None:
        raise errors.invalid_argument(
            f"{label}: {family} data type {int(tensor.type)} is not supported by this agent"
        )
    dims = [int(d) for d in tensor.dims]
    if len(dims) > MAX_DIMS or any(d < 0 for d in dims):
        raise errors.invalid_argument(
            f"{label}: expected at most {MAX_DIMS} non-negative dims, got {len(dims)}"
        )
    itemsize = np.dtype(dtype).itemsize
    expected = math.prod(dims) * itemsize
    if expected != len(tensor.data):
        raise errors.invalid_argument(
            f"{label}: dims {dims[:8]}{'...' if len(dims) > 8 else ''} of "
            f"{np.dtype(dtype).name} need {expected} bytes, data has {len(tensor.data)}"
        )
    return np.frombuffer(tensor.data, dtype=dtype).reshape(dims).copy()


def encode(array: Any, family: str, message_type: Any, label: str) -> Any:
    """A backend's result as the family's ``Tensor`` message."""
    value = np.asarray(array)
    wanted = value.dtype.newbyteorder("<") if value.dtype.byteorder == ">" else value.dtype
    for number, name in DTYPES[family].items():
        if np.dtype(name) == wanted:
            data = np.ascontiguousarray(value, dtype=name).tobytes()
            return message_type(data=data, dims=list(value.shape), type=number)
    raise errors.ffi(
        errno.EPROTO,  # VACCEL_EBACKEND: the backend returned what the wire cannot carry
        f"{label}: a {value.dtype.name} result has no {family} data type",
    )
