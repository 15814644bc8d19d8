"""Upstream vAccel's generic-operation argument layouts, on the guest side.

An upstream agent runs every operation without an RPC of its own through ``Genop``: the
request carries typed read and write arguments and the agent hands them to its C library's
``vaccel_genop``. ``read_args[0]`` is the operation type, one ``UINT8`` argument (upstream's
``vaccel_op_type`` numbering, which our catalog's ``code`` follows); the other arguments follow
each operation's ``vaccel_*_unpack`` in upstream's ``src/ops/*.c`` (vAccel 0.8 layouts: typed
arguments, image operations writing ``out_imgname`` before ``out_text``). The guest sizes every
write argument: it sends a zero-filled buffer of the size it wants back, and the agent returns
the buffers as the operation left them.

This module packs our validated catalog arguments into such arguments and turns the returned
write buffers back into our results. It knows nothing of protobuf or of the transport
(:mod:`vaccel_plugins.rpc.upstream` puts the arguments on the wire).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vaccel_core.errors import InvalidArgumentError, RemoteError
from vaccel_core.ops import CATALOG, Op, OpSpec
from vaccel_core.proto.upstream import ArgType

#: Little-endian struct formats of the scalar types (upstream's hosts are little-endian).
_SCALAR_FORMATS: dict[ArgType, str] = {
    ArgType.INT8: "<b",
    ArgType.INT16: "<h",
    ArgType.INT32: "<i",
    ArgType.INT64: "<q",
    ArgType.UINT8: "<B",
    ArgType.UINT16: "<H",
    ArgType.UINT32: "<I",
    ArgType.UINT64: "<Q",
    ArgType.FLOAT32: "<f",
    ArgType.FLOAT64: "<d",
}

#: numpy dtypes of the array types.
_ARRAY_DTYPES: dict[ArgType, str] = {
    ArgType.INT32_ARRAY: "<i4",
    ArgType.FLOAT32_ARRAY: "<f4",
    ArgType.FLOAT64_ARRAY: "<f8",
    ArgType.UCHAR_ARRAY: "u1",
}

#: Size of each text output (tags, image names): what upstream's examples give (STR_SIZE_MAX).
TEXT_BYTES = 512


@dataclass(frozen=True)
class GenopArg:
    """One typed argument: its bytes, its type and (for CUSTOM) its custom type id."""

    buf: bytes
    type: ArgType
    custom_type_id: int = 0

    @property
    def size(self) -> int:
        return len(self.buf)


def scalar(type_: ArgType, value: int | float) -> GenopArg:
    """A scalar argument (``INT64``, ``FLOAT32``, ...) holding ``value``."""
    return GenopArg(struct.pack(_SCALAR_FORMATS[type_], value), type_)


def array(type_: ArgType, values: np.ndarray) -> GenopArg:
    """An array argument (``FLOAT32_ARRAY``, ...) holding ``values`` in C order."""
    data = np.ascontiguousarray(values, dtype=_ARRAY_DTYPES[type_])
    return GenopArg(data.tobytes(), type_)


def output(type_: ArgType, count: int = 1) -> GenopArg:
    """A write argument of ``count`` zeroed elements (one for a scalar type), which the agent
    fills."""
    if type_ in _SCALAR_FORMATS:
        itemsize = struct.calcsize(_SCALAR_FORMATS[type_])
    else:
        itemsize = np.dtype(_ARRAY_DTYPES[type_]).itemsize
    return GenopArg(bytes(count * itemsize), type_)


def op_type(op: Op) -> GenopArg:
    """``read_args[0]``: the operation type as one UINT8 argument."""
    code = CATALOG[op].code
    if code is None:  # pragma: no cover - only upstream operations are packed
        raise AssertionError(f"{op.value} has no upstream operation type")
    return scalar(ArgType.UINT8, code)


def string(value: str) -> GenopArg:
    """A STRING argument: UTF-8 with its terminating NUL (upstream checks for it)."""
    return GenopArg(value.encode() + b"\0", ArgType.STRING)


def text(raw: bytes) -> str:
    """A C string the agent wrote into a text output: up to its first NUL."""
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Packed:
    """One call's arguments: read (operation type first) and write, and how to read the
    results back from the returned write buffers."""

    read: list[GenopArg]
    write: list[GenopArg]
    results: Callable[[list[bytes]], Any]


#: How a RESOURCE argument becomes the agent's resource id.
ResourceId = Callable[[Any], int]


def _returned(spec: OpSpec, index: int, got: Sequence[bytes], want: GenopArg) -> bytes:
    """Write buffer ``index`` as the agent returned it, truncated to the size the guest gave
    (upstream's client copies into the guest's buffer); a short one is the agent's fault."""
    if index >= len(got):
        raise RemoteError(
            f"{spec.method}: the upstream agent returned {len(got)} write arguments, "
            f"expected at least {index + 1}"
        )
    raw = got[index]
    if len(raw) < want.size:
        raise RemoteError(
            f"{spec.method}: the upstream agent returned {len(raw)} bytes for write argument "
            f"{index}, expected {want.size}"
        )
    return bytes(raw[: want.size])


def _values(raw: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """A writable native-endian array of ``shape`` from little-endian ``raw`` bytes."""
    return np.frombuffer(raw, dtype=dtype).astype(dtype.lstrip("<"), copy=True).reshape(shape)


def _int32(spec: OpSpec, name: str, value: int) -> int:
    if not -(2**31) <= value < 2**31:
        raise InvalidArgumentError(
            f"{spec.method}: argument '{name}': expected a C int (32 bits) for upstream's "
            f"layout, got {value}"
        )
    return value


# Packers, one per operation: (spec, validated args, resource id) -> Packed -------------------
def _image(spec: OpSpec, args: Sequence[Any], _: ResourceId) -> Packed:
    """Image operations: read [BUFFER image]; write [UCHAR_ARRAY out_imgname] and, for
    classify, [UCHAR_ARRAY out_text] after it."""
    read = [op_type(spec.op), GenopArg(bytes(args[0]), ArgType.BUFFER)]
    classify = spec.op is Op.IMAGE_CLASSIFY
    write = [output(ArgType.UCHAR_ARRAY, TEXT_BYTES)]
    if classify:
        write.append(output(ArgType.UCHAR_ARRAY, TEXT_BYTES))

    def results(got: list[bytes]) -> Any:
        imgname = text(_returned(spec, 0, got, write[0]))
        if not classify:
            return imgname
        return text(_returned(spec, 1, got, write[1])), imgname

    return Packed(read, write, results)


def _sgemm(spec: OpSpec, args: Sequence[Any], _: ResourceId) -> Packed:
    """read [INT64 m, INT64 n, INT64 k, FLOAT32 alpha, FLOAT32_ARRAY a, INT64 lda,
    FLOAT32_ARRAY b, INT64 ldb, FLOAT32 beta, INT64 ldc]; write [FLOAT32_ARRAY c], which
    carries c in (scaled by beta) and the result out. Row-major, as upstream's examples."""
    a, b, c, alpha, beta = args
    m, k = a.shape
    n = b.shape[1]
    c_in = np.zeros((m, n), dtype=np.float32) if c is None else c
    i64, f32 = ArgType.INT64, ArgType.FLOAT32
    read = [
        op_type(spec.op),
        scalar(i64, m),
        scalar(i64, n),
        scalar(i64, k),
        scalar(f32, alpha),
        array(ArgType.FLOAT32_ARRAY, a),
        scalar(i64, k),
        array(ArgType.FLOAT32_ARRAY, b),
        scalar(i64, n),
        scalar(f32, beta),
        scalar(i64, n),
    ]
    write = [array(ArgType.FLOAT32_ARRAY, c_in)]

    def results(got: list[bytes]) -> Any:
        return _values(_returned(spec, 0, got, write[0]), "<f4", (m, n))

    return Packed(read, write, results)


def _exec(spec: OpSpec, args: Sequence[Any], resource_id: ResourceId) -> Packed:
    """exec: read [STRING library, STRING fn_symbol, inputs...]; exec_with_resource: read
    [INT64 resource id, STRING fn_symbol, inputs...]; write: one RAW buffer per output size.
    Our inputs and outputs are opaque bytes, so they travel as RAW arguments."""
    target, fn_symbol, inputs, sizes = args
    first = string(target) if spec.op is Op.EXEC else scalar(ArgType.INT64, resource_id(target))
    read = [op_type(spec.op), first, string(fn_symbol)]
    read += [GenopArg(bytes(item), ArgType.RAW) for item in inputs]
    write = [GenopArg(bytes(size), ArgType.RAW) for size in sizes]

    def results(got: list[bytes]) -> Any:
        return [_returned(spec, i, got, want) for i, want in enumerate(write)]

    return Packed(read, write, results)


def _minmax(spec: OpSpec, args: Sequence[Any], _: ResourceId) -> Packed:
    """read [FLOAT64_ARRAY indata, INT32 ndata, INT32 low, INT32 high]; write
    [FLOAT64_ARRAY outdata, FLOAT64 min, FLOAT64 max] (C ints and doubles, untyped upstream)."""
    data, low, high = args
    count = int(data.size)
    i32 = ArgType.INT32
    read = [
        op_type(spec.op),
        array(ArgType.FLOAT64_ARRAY, data),
        scalar(i32, _int32(spec, "data", count)),
        scalar(i32, _int32(spec, "low_threshold", low)),
        scalar(i32, _int32(spec, "high_threshold", high)),
    ]
    write = [
        output(ArgType.FLOAT64_ARRAY, count),
        output(ArgType.FLOAT64),
        output(ArgType.FLOAT64),
    ]

    def results(got: list[bytes]) -> Any:
        out = _values(_returned(spec, 0, got, write[0]), "<f8", (count,))
        low_, high_ = (struct.unpack("<d", _returned(spec, i, got, write[i]))[0] for i in (1, 2))
        return out, float(low_), float(high_)

    return Packed(read, write, results)


def _fpga_arraycopy(spec: OpSpec, args: Sequence[Any], _: ResourceId) -> Packed:
    """read [INT32_ARRAY a]; write [INT32_ARRAY out] of the same length."""
    (a,) = args
    read = [op_type(spec.op), array(ArgType.INT32_ARRAY, a)]
    write = [output(ArgType.INT32_ARRAY, int(a.size))]

    def results(got: list[bytes]) -> Any:
        return _values(_returned(spec, 0, got, write[0]), "<i4", (int(a.size),))

    return Packed(read, write, results)


def _fpga_mmult(spec: OpSpec, args: Sequence[Any], _: ResourceId) -> Packed:
    """read [FLOAT32_ARRAY a, FLOAT32_ARRAY b]; write [FLOAT32_ARRAY c]. Upstream passes only
    len(a) to the plugin, so only square matrices of one size can be expressed."""
    a, b = args
    n = a.shape[0]
    if a.shape != (n, n) or b.shape != (n, n):
        raise InvalidArgumentError(
            f"{spec.method}: upstream's layout carries only the length of 'a', so 'a' and 'b' "
            f"must be square matrices of one size; got {a.shape} and {b.shape}"
        )
    read = [op_type(spec.op), array(ArgType.FLOAT32_ARRAY, a), array(ArgType.FLOAT32_ARRAY, b)]
    write = [output(ArgType.FLOAT32_ARRAY, n * n)]

    def results(got: list[bytes]) -> Any:
        return _values(_returned(spec, 0, got, write[0]), "<f4", (n, n))

    return Packed(read, write, results)


def _fpga_elementwise(spec: OpSpec, args: Sequence[Any], _: ResourceId) -> Packed:
    """fpga_parallel: read [FLOAT32_ARRAY a, FLOAT32_ARRAY b]; write [FLOAT32_ARRAY add,
    FLOAT32_ARRAY mult]. fpga_vectoradd: the same read; write [FLOAT32_ARRAY c]."""
    a, b = args
    count = int(a.size)
    read = [op_type(spec.op), array(ArgType.FLOAT32_ARRAY, a), array(ArgType.FLOAT32_ARRAY, b)]
    write = [output(ArgType.FLOAT32_ARRAY, count) for _ in spec.results]

    def results(got: list[bytes]) -> Any:
        out = [
            _values(_returned(spec, i, got, want), "<f4", (count,)) for i, want in enumerate(write)
        ]
        return out[0] if len(out) == 1 else tuple(out)

    return Packed(read, write, results)


Packer = Callable[[OpSpec, Sequence[Any], ResourceId], Packed]

#: Every operation upstream's RPC plugin sends as Genop, with its packer. Not here: noop
#: (upstream's plugin does not forward it and its genop rejects op type 0), torch_sgemm (no
#: unpack in upstream's genop), opencv (its outputs' sizes are not known to our API) and our
#: own model_load/run/unload (no upstream operation).
PACKERS: dict[Op, Packer] = {
    Op.EXEC: _exec,
    Op.EXEC_WITH_RESOURCE: _exec,
    Op.IMAGE_CLASSIFY: _image,
    Op.IMAGE_DETECT: _image,
    Op.IMAGE_SEGMENT: _image,
    Op.IMAGE_POSE: _image,
    Op.IMAGE_DEPTH: _image,
    Op.BLAS_SGEMM: _sgemm,
    Op.FPGA_ARRAYCOPY: _fpga_arraycopy,
    Op.FPGA_MMULT: _fpga_mmult,
    Op.FPGA_PARALLEL: _fpga_elementwise,
    Op.FPGA_VECTORADD: _fpga_elementwise,
    Op.MINMAX: _minmax,
}


def pack(op: Op, args: Sequence[Any], resource_id: ResourceId) -> Packed:
    """The Genop arguments of one call of ``op`` with validated ``args``."""
    return PACKERS[op](CATALOG[op], args, resource_id)


__all__ = [
    "PACKERS",
    "TEXT_BYTES",
    "ArgType",
    "GenopArg",
    "Packed",
    "array",
    "op_type",
    "output",
    "pack",
    "scalar",
    "string",
    "text",
]
