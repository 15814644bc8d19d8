"""Genop arguments as an upstream vAccel 0.8 guest packs them, written from upstream's C
(nubificus/vaccel ``src/ops/*.c``: each ``vaccel_*_unpack``; ``src/arg.c``: the typed getters;
``examples/*_generic.c``: the guest's pack order), not from our agent.

Facts this relies on:

* ``read_args[0]`` is the operation type, one ``UINT8`` arg of 1 byte (``vaccel_genop``);
  0 (noop) and numbers from ``VACCEL_OP_MAX`` (24) up are EINVAL, a number in range with no
  unpack function (the TF/TFLite/Torch ops, torch sgemm) is ENOTSUP.
* A typed getter needs the exact ArgType, a buffer, and for a scalar the exact C size (an
  array: a non-empty multiple of the element size); otherwise EINVAL.
* The guest sends every write arg with its full size (its buffer's bytes); the agent returns
  every write arg, each as long as the guest gave it.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from vaccel_core.proto.upstream import upstream


class OpType(enum.IntEnum):
    """``vaccel_op_type_t`` (src/include/vaccel/op.h), in upstream's order."""

    NOOP = 0
    EXEC = 1
    EXEC_WITH_RESOURCE = 2
    IMAGE_CLASSIFY = 3
    IMAGE_DETECT = 4
    IMAGE_SEGMENT = 5
    IMAGE_POSE = 6
    IMAGE_DEPTH = 7
    TF_MODEL_LOAD = 8
    TF_MODEL_UNLOAD = 9
    TF_MODEL_RUN = 10
    TFLITE_MODEL_LOAD = 11
    TFLITE_MODEL_UNLOAD = 12
    TFLITE_MODEL_RUN = 13
    TORCH_MODEL_LOAD = 14
    TORCH_MODEL_RUN = 15
    TORCH_SGEMM = 16
    BLAS_SGEMM = 17
    FPGA_ARRAYCOPY = 18
    FPGA_MMULT = 19
    FPGA_PARALLEL = 20
    FPGA_VECTORADD = 21
    MINMAX = 22
    OPENCV = 23


#: ``VACCEL_OP_MAX``: the first number that is no operation.
OP_MAX = 24
#: Operations upstream's genop dispatches (its ``callbacks`` table); the rest are ENOTSUP.
DISPATCHED = frozenset(
    {
        OpType.NOOP,
        OpType.BLAS_SGEMM,
        OpType.IMAGE_CLASSIFY,
        OpType.IMAGE_DETECT,
        OpType.IMAGE_SEGMENT,
        OpType.IMAGE_POSE,
        OpType.IMAGE_DEPTH,
        OpType.EXEC,
        OpType.MINMAX,
        OpType.FPGA_ARRAYCOPY,
        OpType.FPGA_MMULT,
        OpType.FPGA_PARALLEL,
        OpType.FPGA_VECTORADD,
        OpType.EXEC_WITH_RESOURCE,
        OpType.OPENCV,
    }
)


def arg_type(name: str) -> int:
    """An ArgType number by name (``"UINT8"`` -> 9)."""
    return int(upstream().genop.ArgType.Value(name))


def arg(buf: bytes, type_name: str, size: int | None = None) -> Any:
    """A ``genop.Arg``; ``size`` defaults to the buffer's length (pass another to lie)."""
    return upstream().genop.Arg(
        buf=buf, size=len(buf) if size is None else size, arg_type=arg_type(type_name)
    )


def op(op_type: int) -> Any:
    """``read_args[0]``: the operation type as ``vaccel_arg_array_add_uint8`` packs it."""
    return arg(bytes([op_type]), "UINT8")


def int64(value: int) -> Any:
    return arg(struct.pack("<q", value), "INT64")


def int32(value: int) -> Any:
    return arg(struct.pack("<i", value), "INT32")


def float32(value: float) -> Any:
    return arg(struct.pack("<f", value), "FLOAT32")


def float64(value: float) -> Any:
    return arg(struct.pack("<d", value), "FLOAT64")


def float32_array(values: np.ndarray) -> Any:
    return arg(np.ascontiguousarray(values, dtype="<f4").tobytes(), "FLOAT32_ARRAY")


def float64_array(values: np.ndarray) -> Any:
    return arg(np.ascontiguousarray(values, dtype="<f8").tobytes(), "FLOAT64_ARRAY")


def buffer(data: bytes) -> Any:
    return arg(data, "BUFFER")


def uchar_array(size: int) -> Any:
    """An output buffer of ``size`` bytes, zero-filled as the examples' arrays are."""
    return arg(bytes(size), "UCHAR_ARRAY")


def c_string(buf: bytes) -> str:
    """The NUL-terminated text at the start of a returned buffer."""
    return buf.split(b"\0", 1)[0].decode()


# Layouts -----------------------------------------------------------------------------------------
def classify_args(image: bytes, text_size: int, name_size: int) -> tuple[list[Any], list[Any]]:
    """image_classification_unpack: read [op, img BUFFER]; write [out_imgname, out_text],
    both UCHAR_ARRAY (out_imgname first: vAccel 0.8 order)."""
    return [op(OpType.IMAGE_CLASSIFY), buffer(image)], [
        uchar_array(name_size),
        uchar_array(text_size),
    ]


def image_args(op_type: OpType, image: bytes, name_size: int) -> tuple[list[Any], list[Any]]:
    """detect/segment/pose/depth: read [op, img BUFFER]; write [out_imgname UCHAR_ARRAY]."""
    return [op(op_type), buffer(image)], [uchar_array(name_size)]


def sgemm_args(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, alpha: float, beta: float
) -> tuple[list[Any], list[Any]]:
    """sgemm_unpack (row-major, as examples/sgemm_generic.c packs it): read [op, m, n, k INT64,
    alpha FLOAT32, a FLOAT32_ARRAY, lda INT64, b FLOAT32_ARRAY, ldb INT64, beta FLOAT32,
    ldc INT64]; write [c FLOAT32_ARRAY], its initial values sent (C = alpha*A*B + beta*C)."""
    m, k = a.shape
    n = b.shape[1]
    read = [
        op(OpType.BLAS_SGEMM),
        int64(m),
        int64(n),
        int64(k),
        float32(alpha),
        float32_array(a),
        int64(k),
        float32_array(b),
        int64(n),
        float32(beta),
        int64(n),
    ]
    return read, [float32_array(c)]


def minmax_args(
    data: np.ndarray, low_threshold: int, high_threshold: int
) -> tuple[list[Any], list[Any]]:
    """minmax_unpack (which checks neither types nor sizes, so these are our choice): read
    [op, indata FLOAT64_ARRAY, ndata INT32, low INT32, high INT32]; write [outdata
    FLOAT64_ARRAY of ndata, min FLOAT64, max FLOAT64]."""
    read = [
        op(OpType.MINMAX),
        float64_array(data),
        int32(len(data)),
        int32(low_threshold),
        int32(high_threshold),
    ]
    return read, [float64_array(np.zeros(len(data))), float64(0.0), float64(0.0)]


def exec_args(
    library: str, fn_symbol: str, read: Sequence[Any], write: Sequence[Any]
) -> tuple[list[Any], list[Any]]:
    """exec_unpack: read [op, library STRING, fn_symbol STRING, the function's own args...];
    write: the function's (NUL-terminated strings as ``vaccel_arg_array_add_string``)."""
    strings = [arg(s.encode() + b"\0", "STRING") for s in (library, fn_symbol)]
    return [op(OpType.EXEC), *strings, *read], list(write)
