"""Upstream's generic operation (``vaccel_genop``) on our catalog.

``read_args[0]`` is the operation as one UINT8 in upstream's ``vaccel_op_type_t`` numbering; the
other arguments follow that operation's ``vaccel_<op>_unpack`` layout (src/ops/*.c of vAccel
0.8). Each unpacker here checks the counts, types and sizes upstream checks, and also every
size upstream trusts (the FPGA and minmax layouts carry untyped buffers whose lengths upstream
never compares): an argument that would make upstream read or write past a buffer is refused
with EINVAL instead. The operation then runs through the session's backends as the agent's own
``Run`` does, and its results are written into the guest's write buffers in place, truncated to
the sizes the guest gave (text as ``snprintf``; arrays as ``memcpy``).

Failures use upstream's codes: EINVAL for a missing op type, op 0 (noop: upstream's genop
rejects it), an op number past the last, and any wrong count, type or size; ENOTSUP for the ops
genop has no unpacker for (TF, TFLite, Torch) and, from the session, for ops no selected backend
implements; ENOENT / EPERM for a resource that is unknown / not registered with the session.
"""

from __future__ import annotations

import enum
import errno
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from vaccel_core.ops import Op, ResourceType
from vaccel_core.resource import Resource
from vaccel_core.session import Session

from .args import Arg, ArgError, ArgReader, fill_bytes, fill_text


class OpType(enum.IntEnum):
    """Upstream's ``vaccel_op_type_t`` (vAccel 0.8): the first genop read arg."""

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


#: ``VACCEL_OP_MAX``: op numbers from here on are invalid.
OP_MAX = len(OpType)

#: Our catalog's operation for each upstream op number (same names).
CATALOG_OP: dict[OpType, Op] = {t: Op[t.name] for t in OpType}

#: Resolves a resource id for the running session: (the resource, whether it is registered
#: with the session); raises ArgError(ENOENT) when the client has no resource of that id.
ResourceLookup = Callable[[int], tuple[Resource, bool]]


@dataclass
class GenopCall:
    """One genop call after its op type: the session, the remaining args, a resource lookup."""

    op: OpType
    session: Session
    read: ArgReader
    write: ArgReader
    resource: ResourceLookup

    @property
    def name(self) -> str:
        return self.op.name.lower()

    def counts(self, nr_read: int | None, nr_write: int | None, min_read: int = 0) -> None:
        """Upstream's count checks: exactly ``nr_read`` / ``nr_write`` (None: any), at least
        ``min_read``."""
        for label, args, wanted in (("read", self.read, nr_read), ("write", self.write, nr_write)):
            if wanted is not None and len(args) != wanted:
                raise ArgError(
                    errno.EINVAL,
                    f"Wrong number of {label} arguments for {self.name}: {len(args)} "
                    f"(expected {wanted})",
                )
        if len(self.read) < min_read:
            raise ArgError(
                errno.EINVAL,
                f"Wrong number of read arguments for {self.name}: {len(self.read)} "
                f"(expected at least {min_read})",
            )

    def run(self, *args: Any) -> Any:
        """The operation through the session's backends (our catalog's checks included)."""
        return self.session.genop(CATALOG_OP[self.op], *args)


# Helpers -------------------------------------------------------------------------------------
def _elements(arg: Arg, dtype: str, name: str) -> np.ndarray:
    """An untyped buffer as whole elements of ``dtype`` (upstream: ``size / sizeof``)."""
    if arg.size < np.dtype(dtype).itemsize:
        raise ArgError(errno.EINVAL, f"{name}: {arg.size} bytes hold no {dtype} element")
    return arg.view(dtype)


def _room(arg: Arg, nbytes: int, name: str) -> None:
    """A write buffer must hold what the operation writes (upstream would overrun it)."""
    if arg.size < nbytes:
        raise ArgError(
            errno.EINVAL,
            f"{name}: the write buffer has {arg.size} bytes, the result needs {nbytes}",
        )


def _int32(arg: Arg, name: str) -> int:
    """Upstream's ``*(int *)buf`` of an untyped argument: its first 4 bytes."""
    if arg.size < 4:
        raise ArgError(errno.EINVAL, f"{name}: {arg.size} bytes, an int needs 4")
    return int(arg.view("<i4", 1)[0])


def _matrix(flat: np.ndarray, rows: int, cols: int, ld: int, name: str) -> np.ndarray:
    """A row-major ``rows x cols`` matrix with leading dimension ``ld`` out of ``flat``,
    refused when ``flat`` is too short for it (upstream's BLAS would read past it)."""
    if ld < cols:
        raise ArgError(errno.EINVAL, f"{name}: leading dimension {ld} is below {cols}")
    needed = (rows - 1) * ld + cols
    if flat.size < needed:
        raise ArgError(
            errno.EINVAL,
            f"{name}: a {rows} x {cols} matrix with leading dimension {ld} needs {needed} "
            f"floats, the arg has {flat.size}",
        )
    step = flat.itemsize
    return as_strided(flat, shape=(rows, cols), strides=(ld * step, step), writeable=False)


# Unpackers -----------------------------------------------------------------------------------
def _exec(call: GenopCall) -> None:
    call.counts(None, None, min_read=2)
    library = call.read.string("library")
    fn_symbol = call.read.string("fn_symbol")
    _exec_common(call, (library, fn_symbol))


def _exec_with_resource(call: GenopCall) -> None:
    call.counts(None, None, min_read=2)
    resource_id = call.read.scalar("int64", "resource id")
    fn_symbol = call.read.string("fn_symbol")
    resource, registered = call.resource(resource_id)
    if resource.type != ResourceType.LIB:
        raise ArgError(
            errno.EINVAL, f"resource {resource_id} is {resource.type.name}, expected LIB"
        )
    if not registered:
        raise ArgError(errno.EPERM, f"resource {resource_id} is not registered with the session")
    _exec_common(call, (resource, fn_symbol))


def _exec_common(call: GenopCall, head: tuple[Any, ...]) -> None:
    read = [bytes(arg.buf) for arg in call.read.remaining()]
    writes = call.write.remaining()
    outputs = call.run(*head, read, [arg.size for arg in writes])
    for arg, data in zip(writes, outputs or (), strict=False):
        fill_bytes(arg, data)


def _image(call: GenopCall) -> None:
    with_text = call.op == OpType.IMAGE_CLASSIFY
    call.counts(1, 2 if with_text else 1)
    image = call.read.buffer("img")
    out_imgname = call.write.array_arg("uchar", "out_imgname")
    out_text = call.write.array_arg("uchar", "out_text") if with_text else None
    result = call.run(image)
    if out_text is not None:
        tags, imgname = result
        fill_text(out_text, str(tags))
    else:
        imgname = result
    fill_text(out_imgname, str(imgname))


def _sgemm(call: GenopCall) -> None:
    call.counts(10, 1)
    read = call.read
    m, n, k = (read.scalar("int64", name) for name in ("m", "n", "k"))
    alpha = read.scalar("float", "alpha")
    a_flat = read.array("float", "a")
    lda = read.scalar("int64", "lda")
    b_flat = read.array("float", "b")
    ldb = read.scalar("int64", "ldb")
    beta = read.scalar("float", "beta")
    ldc = read.scalar("int64", "ldc")
    c_arg = call.write.array_arg("float", "c")
    if min(m, n, k) < 1:
        raise ArgError(errno.EINVAL, f"sgemm: m, n and k must be positive, got {m}, {n}, {k}")
    a = np.ascontiguousarray(_matrix(a_flat, m, k, lda, "a"), dtype=np.float32)
    b = np.ascontiguousarray(_matrix(b_flat, k, n, ldb, "b"), dtype=np.float32)
    c = np.ascontiguousarray(_matrix(c_arg.view("<f4"), m, n, ldc, "c"), dtype=np.float32)
    out = np.asarray(call.run(a, b, c, float(alpha), float(beta)), dtype="<f4")
    if out.shape != (m, n):
        raise ArgError(errno.EPROTO, f"sgemm: the backend returned shape {out.shape}")
    target = np.frombuffer(c_arg.buf, dtype="<f4")
    view = as_strided(target, shape=(m, n), strides=(ldc * 4, 4))
    view[...] = out


def _fpga_arraycopy(call: GenopCall) -> None:
    call.counts(1, 1)
    a = _elements(call.read.args[0], "<i4", "a")
    out_arg = call.write.args[0]
    _room(out_arg, a.nbytes, "out_a")
    out = np.asarray(call.run(np.asarray(a, dtype=np.int32)), dtype="<i4")
    fill_bytes(out_arg, out.tobytes()[: a.nbytes])


def _pair(call: GenopCall) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` of the FPGA ops: float buffers, ``b`` at least as long as ``a``
    (upstream reads ``len_a`` elements of both)."""
    a = _elements(call.read.args[0], "<f4", "a")
    b = _elements(call.read.args[1], "<f4", "b")
    if b.size < a.size:
        raise ArgError(errno.EINVAL, f"b: {b.size} floats, a has {a.size}")
    return np.asarray(a, dtype=np.float32), np.asarray(b[: a.size], dtype=np.float32)


def _fpga_mmult(call: GenopCall) -> None:
    call.counts(2, 1)
    a, b = _pair(call)
    side = math.isqrt(a.size)
    if side * side != a.size:
        raise ArgError(errno.EINVAL, f"fpga_mmult: a has {a.size} floats, not a square matrix")
    out_arg = call.write.args[0]
    _room(out_arg, a.nbytes, "c")
    out = np.asarray(call.run(a.reshape(side, side), b.reshape(side, side)), dtype="<f4")
    fill_bytes(out_arg, out.tobytes()[: a.nbytes])


def _fpga_parallel(call: GenopCall) -> None:
    call.counts(2, 2)
    a, b = _pair(call)
    add_arg, mult_arg = call.write.args
    _room(add_arg, a.nbytes, "add_output")
    _room(mult_arg, a.nbytes, "mult_output")
    add, mult = call.run(a, b)
    fill_bytes(add_arg, np.asarray(add, dtype="<f4").tobytes()[: a.nbytes])
    fill_bytes(mult_arg, np.asarray(mult, dtype="<f4").tobytes()[: a.nbytes])


def _fpga_vectoradd(call: GenopCall) -> None:
    call.counts(2, 1)
    a, b = _pair(call)
    out_arg = call.write.args[0]
    _room(out_arg, a.nbytes, "c")
    out = np.asarray(call.run(a, b), dtype="<f4")
    fill_bytes(out_arg, out.tobytes()[: a.nbytes])


def _minmax(call: GenopCall) -> None:
    call.counts(4, 3)
    data_arg, ndata_arg, low_arg, high_arg = call.read.args
    ndata = _int32(ndata_arg, "ndata")
    low, high = _int32(low_arg, "low_threshold"), _int32(high_arg, "high_threshold")
    available = data_arg.size // 8
    if not 1 <= ndata <= available:
        raise ArgError(
            errno.EINVAL, f"minmax: ndata {ndata}, the data arg holds {available} doubles"
        )
    data = np.asarray(data_arg.view("<f8", ndata), dtype=np.float64)
    out_arg, min_arg, max_arg = call.write.args
    _room(out_arg, ndata * 8, "outdata")
    _room(min_arg, 8, "min")
    _room(max_arg, 8, "max")
    out, low_value, high_value = call.run(data, low, high)
    fill_bytes(out_arg, np.asarray(out, dtype="<f8").tobytes()[: ndata * 8])
    fill_bytes(min_arg, np.float64(low_value).astype("<f8").tobytes())
    fill_bytes(max_arg, np.float64(high_value).astype("<f8").tobytes())


def _opencv(call: GenopCall) -> None:
    read = [bytes(arg.buf) for arg in call.read.remaining()]
    writes = call.write.remaining()
    outputs = call.run(read, len(writes))
    for arg, data in zip(writes, outputs or (), strict=False):
        fill_bytes(arg, data)


#: Upstream genop's callbacks (``genop.c``); the other op numbers are ENOTSUP.
UNPACKERS: dict[OpType, Callable[[GenopCall], None]] = {
    OpType.EXEC: _exec,
    OpType.EXEC_WITH_RESOURCE: _exec_with_resource,
    OpType.IMAGE_CLASSIFY: _image,
    OpType.IMAGE_DETECT: _image,
    OpType.IMAGE_SEGMENT: _image,
    OpType.IMAGE_POSE: _image,
    OpType.IMAGE_DEPTH: _image,
    OpType.BLAS_SGEMM: _sgemm,
    OpType.FPGA_ARRAYCOPY: _fpga_arraycopy,
    OpType.FPGA_MMULT: _fpga_mmult,
    OpType.FPGA_PARALLEL: _fpga_parallel,
    OpType.FPGA_VECTORADD: _fpga_vectoradd,
    OpType.MINMAX: _minmax,
    OpType.OPENCV: _opencv,
}


def op_type(read: ArgReader) -> OpType:
    """The op of a genop call (``read_args[0]``, one UINT8), as upstream's ``vaccel_genop``
    checks it; raises ArgError (EINVAL, or ENOTSUP for an op genop does not dispatch)."""
    if len(read) < 1:
        raise ArgError(errno.EINVAL, "Missing operation type")
    try:
        value = int(read.scalar("uint8", "op type"))
    except ArgError as exc:
        raise ArgError(
            errno.EINVAL, f"Failed to unpack operation type for genop: {exc.what}"
        ) from None
    if value == OpType.NOOP or value >= OP_MAX:
        raise ArgError(
            errno.EINVAL,
            f"Invalid operation type {value} (genop takes 1..{OP_MAX - 1}; noop is 0)",
        )
    op = OpType(value)
    if op not in UNPACKERS:
        raise ArgError(errno.ENOTSUP, f"Operation not implemented for VACCEL_OP_{op.name}")
    return op


def genop(session: Session, read: list[Arg], write: list[Arg], resource: ResourceLookup) -> None:
    """Run one genop call; the results are in ``write``'s buffers. Raises ArgError (the
    arguments) or VaccelError (the operation)."""
    reader = ArgReader(read, "read")
    op = op_type(reader)
    rest = ArgReader(reader.remaining(), "read")
    UNPACKERS[op](GenopCall(op, session, rest, ArgReader(write, "write"), resource))
