"""numpy arrays as upstream vAccel's TensorFlow, TensorFlow Lite and Torch wire tensors.

Each framework has its own ``Tensor {data, dims, type}`` message and its own ``DataType``
numbering (``vaccel-rpc-proto`` ``tf.proto``, ``tflite.proto``, ``torch.proto``). Data travels as
little-endian C-order bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vaccel_core.errors import InvalidArgumentError, RemoteError


@dataclass(frozen=True)
class Framework:
    """One framework's tensor dialect: its name in messages, its DataType by numpy dtype name
    and the widest dimension value its ``dims`` field holds."""

    name: str
    types: dict[str, int]
    dims_bits: int

    def type_of(self, dtype: np.dtype, where: str) -> int:
        code = self.types.get(dtype.name)
        if code is None:
            raise InvalidArgumentError(
                f"{where}: upstream's {self.name} tensors have no {dtype.name} type "
                f"(supported: {', '.join(sorted(self.types))})"
            )
        return code

    def dtype_of(self, code: int, where: str) -> np.dtype:
        for name, value in self.types.items():
            if value == code:
                return np.dtype(name)
        raise RemoteError(
            f"{where}: the upstream agent sent a {self.name} tensor of type {code}, which has "
            f"no numpy equivalent here"
        )


#: ``vaccel.tf.DataType`` (TensorFlow's TF_DataType values).
TF = Framework(
    "TensorFlow",
    {
        "float32": 1,
        "float64": 2,
        "int32": 3,
        "uint8": 4,
        "int16": 5,
        "int8": 6,
        "complex64": 8,
        "int64": 9,
        "bool": 10,
        "uint16": 17,
        "complex128": 18,
        "float16": 19,
        "uint32": 22,
        "uint64": 23,
    },
    64,
)
#: ``vaccel.tflite.DataType`` (TfLiteType values, shifted by upstream's UNUSED = 0).
TFLITE = Framework(
    "TensorFlow Lite",
    {
        "float32": 2,
        "int32": 3,
        "uint8": 4,
        "int64": 5,
        "bool": 7,
        "int16": 8,
        "complex64": 9,
        "int8": 10,
        "float16": 11,
        "float64": 12,
        "complex128": 13,
        "uint64": 14,
        "uint32": 17,
        "uint16": 18,
    },
    32,
)
#: ``vaccel.torch.DataType`` (upstream's own short list).
TORCH = Framework(
    "Torch",
    {"uint8": 1, "int8": 2, "int16": 3, "int32": 4, "int64": 5, "float16": 6, "float32": 7},
    64,
)


def to_wire(framework: Framework, array: np.ndarray, message: Any, where: str) -> None:
    """Fill a ``Tensor`` message (``data``, ``dims``, ``type``) from ``array``."""
    message.type = framework.type_of(array.dtype, where)
    limit = 2 ** (framework.dims_bits - 1)
    if any(d >= limit for d in array.shape):
        raise InvalidArgumentError(
            f"{where}: shape {array.shape} does not fit upstream's {framework.name} dims"
        )
    message.dims.extend(int(d) for d in array.shape)
    message.data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def from_wire(framework: Framework, message: Any, where: str) -> np.ndarray:
    """The numpy array a ``Tensor`` message holds (a copy, writable)."""
    dtype = framework.dtype_of(int(message.type), where)
    shape = tuple(int(d) for d in message.dims)
    if any(d < 0 for d in shape):
        raise RemoteError(f"{where}: the upstream agent sent a tensor of shape {shape}")
    expected = math.prod(shape) * dtype.itemsize
    if len(message.data) != expected:
        raise RemoteError(
            f"{where}: the upstream agent sent {len(message.data)} bytes for a {dtype.name} "
            f"tensor of shape {shape} ({expected} expected)"
        )
    wire = np.frombuffer(message.data, dtype=dtype.newbyteorder("<"))
    return wire.astype(dtype, copy=True).reshape(shape)


def all_from_wire(framework: Framework, messages: Sequence[Any], where: str) -> list[np.ndarray]:
    return [from_wire(framework, m, f"{where}: output {i}") for i, m in enumerate(messages)]


def node(name: str) -> tuple[str, int]:
    """A TensorFlow node as ``(name, id)``: ``"serving_default_x:1"`` -> ``("serving_default_x",
    1)``; a name without an output index is output 0."""
    base, sep, index = name.rpartition(":")
    if sep and index.isdigit():
        return base, int(index)
    return name, 0


__all__ = ["TF", "TFLITE", "TORCH", "Framework", "all_from_wire", "from_wire", "node", "to_wire"]
