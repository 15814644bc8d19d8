"""LABELLED STAND-IN for upstream vAccel's C core (libvaccel 0.8) and a plugin behind it, as
upstream's Rust agent calls them: ``vaccel_genop`` with upstream's ``src/ops/*.c`` unpack
layouts, and the model operations. Written from upstream's C sources (``src/ops/genop.c``,
``src/arg.c``, ``src/ops/{blas,image,minmax,fpga,exec}.c``, ``plugins/noop``), independently
of our agent and of our guest's packing code, so that our guest mode is checked against
upstream's layouts rather than against itself.

It works on :class:`CArg` (``struct vaccel_arg``: a mutable buffer, a type, a custom type id)
and fails with :class:`Failure` carrying the C return code, as the library does. Where
upstream's C reads a buffer without checking its size (minmax, fpga), this stand-in checks and
fails with EINVAL instead of reading out of bounds.

The "plugin" implements noop, sgemm (numpy), the image operations (fixed tags), minmax, the
four fpga operations, exec with two built-in "libraries", and Torch model load/run (echoing
its inputs, as upstream's noop plugin does). TensorFlow and TensorFlow Lite are not
implemented (ENOTSUP), as on an agent without those plugins.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

EINVAL, ENOTSUP, ERANGE, EPERM, ENOENT = (
    errno.EINVAL,
    errno.ENOTSUP,
    errno.ERANGE,
    errno.EPERM,
    errno.ENOENT,
)

# vaccel_op_type (src/include/vaccel/op.h)
OP_NOOP, OP_EXEC, OP_EXEC_WITH_RESOURCE = 0, 1, 2
OP_IMAGE_CLASSIFY, OP_IMAGE_DETECT, OP_IMAGE_SEGMENT, OP_IMAGE_POSE, OP_IMAGE_DEPTH = 3, 4, 5, 6, 7
OP_BLAS_SGEMM = 17
OP_FPGA_ARRAYCOPY, OP_FPGA_MMULT, OP_FPGA_PARALLEL, OP_FPGA_VECTORADD = 18, 19, 20, 21
OP_MINMAX, OP_OPENCV, OP_MAX = 22, 23, 24

# vaccel_arg_type (src/include/vaccel/arg.h)
RAW, INT32, INT32_ARRAY, INT64, UINT8 = 0, 5, 6, 7, 9
FLOAT32, FLOAT32_ARRAY, FLOAT64, FLOAT64_ARRAY = 17, 18, 19, 20
UCHAR_ARRAY, STRING, BUFFER = 26, 27, 28

RESOURCE_LIB, RESOURCE_DATA, RESOURCE_MODEL = 0, 1, 2

#: What the image operations write (upstream's noop plugin writes similar dummy strings).
IMAGE_TAG = "This is a stand-in classification tag for {size} bytes"
IMAGE_NAME = "stand-in-{op}.png"


class Failure(Exception):
    """A C return code other than VACCEL_OK, and what the library would have logged."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


@dataclass
class CArg:
    """``struct vaccel_arg``: the agent made it from a wire ``Arg``; write args are filled in
    place."""

    buf: bytearray
    type: int
    custom_type_id: int = 0

    @property
    def size(self) -> int:
        return len(self.buf)


class ArgArray:
    """``struct vaccel_arg_array`` wrapped over args, read in order (``vaccel_arg_array_get_*``
    in ``src/arg.c``): a getter checks the type, and for scalars the exact size; arrays must be
    non-empty and a whole number of elements; strings must end in NUL. Past the end: ERANGE."""

    def __init__(self, args: Sequence[CArg]) -> None:
        self.args = list(args)
        self.position = 0

    def _next(self, type_: int) -> CArg:
        if self.position >= len(self.args):
            raise Failure(ERANGE, "no argument left")
        arg = self.args[self.position]
        if arg.type != type_:
            raise Failure(EINVAL, f"argument {self.position}: type {arg.type}, expected {type_}")
        return arg

    def scalar(self, type_: int, fmt: str) -> int | float:
        arg = self._next(type_)
        if arg.size != struct.calcsize(fmt):
            raise Failure(EINVAL, f"argument {self.position}: {arg.size} bytes")
        self.position += 1
        value: int | float = struct.unpack(fmt, arg.buf)[0]
        return value

    def array(self, type_: int, dtype: str) -> np.ndarray:
        """A writable view over the argument's buffer (so writes reach the write args)."""
        arg = self._next(type_)
        itemsize = np.dtype(dtype).itemsize
        if not arg.size or arg.size % itemsize:
            raise Failure(EINVAL, f"argument {self.position}: {arg.size} bytes")
        self.position += 1
        return np.frombuffer(arg.buf, dtype=dtype)

    def buffer(self) -> bytes:
        arg = self._next(BUFFER)
        if not arg.size:
            raise Failure(EINVAL, f"argument {self.position}: empty buffer")
        self.position += 1
        return bytes(arg.buf)

    def string(self) -> str:
        arg = self._next(STRING)
        if not arg.size or arg.buf[-1] != 0:
            raise Failure(EINVAL, f"argument {self.position}: not a NUL-terminated string")
        self.position += 1
        return bytes(arg.buf[:-1]).decode(errors="replace")

    def remaining(self) -> list[CArg]:
        rest = self.args[self.position :]
        self.position = len(self.args)
        return rest


def _snprintf(out: np.ndarray, text: str) -> None:
    """C's snprintf into a uchar buffer: at most size-1 bytes, then a NUL."""
    if out.size == 0:
        return
    data = text.encode()[: out.size - 1]
    out[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    out[len(data)] = 0


def _raw_scalar(arg: CArg, fmt: str, what: str) -> int | float:
    """An untyped read of ``*(T *)arg->buf`` (minmax): checked here, unchecked upstream."""
    if arg.size < struct.calcsize(fmt):
        raise Failure(EINVAL, f"{what}: {arg.size} bytes (upstream would read past them)")
    value: int | float = struct.unpack_from(fmt, arg.buf)[0]
    return value


def _raw_array(arg: CArg, dtype: str, count: int, what: str) -> np.ndarray:
    """An untyped ``(T *)arg->buf`` of ``count`` elements (minmax, fpga)."""
    itemsize = np.dtype(dtype).itemsize
    if count < 0 or arg.size < count * itemsize:
        raise Failure(
            EINVAL, f"{what}: {arg.size} bytes for {count} elements (upstream would overrun)"
        )
    return np.frombuffer(arg.buf, dtype=dtype, count=count)


@dataclass
class Resource:
    """A registered resource on the agent: its type, its files (name, bytes) and the sessions
    it is registered with."""

    id: int
    type: int
    files: list[tuple[str, bytes]]
    sessions: set[int] = field(default_factory=set)


@dataclass
class CoreSession:
    """``struct vaccel_session`` as far as the stand-in needs it."""

    id: int
    flags: int
    resources: dict[int, Resource] = field(default_factory=dict)
    loaded: set[int] = field(default_factory=set)


Lookup = Callable[[int], Resource | None]


class Core:
    """``vaccel_genop`` and the model operations of one agent process."""

    def __init__(self, resources: Lookup) -> None:
        self.resource_by_id = resources
        self._unpack: dict[int, Callable[[CoreSession, list[CArg], list[CArg]], None]] = {
            OP_NOOP: self._noop,
            OP_BLAS_SGEMM: self._sgemm,
            OP_IMAGE_CLASSIFY: self._image,
            OP_IMAGE_DETECT: self._image,
            OP_IMAGE_SEGMENT: self._image,
            OP_IMAGE_POSE: self._image,
            OP_IMAGE_DEPTH: self._image,
            OP_EXEC: self._exec,
            OP_MINMAX: self._minmax,
            OP_FPGA_ARRAYCOPY: self._fpga,
            OP_FPGA_MMULT: self._fpga,
            OP_FPGA_PARALLEL: self._fpga,
            OP_FPGA_VECTORADD: self._fpga,
            OP_EXEC_WITH_RESOURCE: self._exec_with_resource,
            OP_OPENCV: self._opencv,
        }
        self._op = OP_NOOP

    # genop.c -------------------------------------------------------------------------------
    def genop(self, session: CoreSession, read: list[CArg], write: list[CArg]) -> None:
        if len(read) < 1:
            raise Failure(EINVAL, "Missing operation type")
        op = int(ArgArray(read).scalar(UINT8, "<B"))
        if not op or op >= OP_MAX:
            raise Failure(EINVAL, "Invalid operation type")
        unpack = self._unpack.get(op)
        if unpack is None:
            raise Failure(ENOTSUP, f"Operation not implemented for op type {op}")
        self._op = op
        unpack(session, read[1:], write)

    @staticmethod
    def _count(read: list[CArg], write: list[CArg], nr_read: int, nr_write: int, op: str) -> None:
        if len(read) != nr_read:
            raise Failure(EINVAL, f"Wrong number of read arguments for {op}: {len(read)}")
        if len(write) != nr_write:
            raise Failure(EINVAL, f"Wrong number of write arguments for {op}: {len(write)}")

    def _noop(self, session: CoreSession, read: list[CArg], write: list[CArg]) -> None:
        self._count(read, write, 0, 0, "noop")

    # blas.c: 10 read (m, n, k, alpha, a, lda, b, ldb, beta, ldc), 1 write (c) ---------------
    def _sgemm(self, session: CoreSession, read: list[CArg], write: list[CArg]) -> None:
        self._count(read, write, 10, 1, "sgemm")
        r = ArgArray(read)
        m, n, k = (int(r.scalar(INT64, "<q")) for _ in range(3))
        alpha = float(r.scalar(FLOAT32, "<f"))
        a = r.array(FLOAT32_ARRAY, "<f4")
        lda = int(r.scalar(INT64, "<q"))
        b = r.array(FLOAT32_ARRAY, "<f4")
        ldb = int(r.scalar(INT64, "<q"))
        beta = float(r.scalar(FLOAT32, "<f"))
        ldc = int(r.scalar(INT64, "<q"))
        c = ArgArray(write).array(FLOAT32_ARRAY, "<f4")
        # The plugin: row-major C = alpha * A @ B + beta * C (cblas_sgemm, CblasRowMajor).
        if min(m, n, k) < 0 or lda < k or ldb < n or ldc < n:
            raise Failure(EINVAL, f"sgemm: bad dimensions m={m} n={n} k={k}")
        if a.size < m * lda or b.size < k * ldb or c.size < m * ldc:
            raise Failure(EINVAL, "sgemm: a matrix is shorter than its dimensions")
        a_ = a[: m * lda].reshape(m, lda)[:, :k].astype(np.float64)
        b_ = b[: k * ldb].reshape(k, ldb)[:, :n].astype(np.float64)
        c_ = c[: m * ldc].reshape(m, ldc)[:, :n]
        c_[...] = (alpha * (a_ @ b_) + beta * c_.astype(np.float64)).astype(np.float32)

    # image.c: 1 read (BUFFER img), write (UCHAR_ARRAY out_imgname [, out_text]) -------------
    def _image(self, session: CoreSession, read: list[CArg], write: list[CArg]) -> None:
        op = self._op
        self._count(read, write, 1, 2 if op == OP_IMAGE_CLASSIFY else 1, f"image op {op}")
        img = ArgArray(read).buffer()
        w = ArgArray(write)
        out_imgname = w.array(UCHAR_ARRAY, "u1")
        try:
            out_text: np.ndarray | None = w.array(UCHAR_ARRAY, "u1")
        except Failure as exc:
            if exc.code != ERANGE:
                raise
            out_text = None
        if out_text is not None:
            _snprintf(out_text, IMAGE_TAG.format(size=len(img)))
        _snprintf(out_imgname, IMAGE_NAME.format(op=op))

    # exec.c: read (STRING library | INT64 resource id, STRING fn_symbol, args...) ------------
    def _exec(self, session: CoreSession, read: list[CArg], write: list[CArg]) -> None:
        if len(read) < 2:
            raise Failure(EINVAL, f"Wrong number of read arguments in exec: {len(read)}")
        r = ArgArray(read)
        library = r.string()
        fn_symbol = r.string()
        self._call_library(library, fn_symbol, r.remaining(), write)

    def _exec_with_resource(
        self, session: CoreSession, read: list[CArg], write: list[CArg]
    ) -> None:
        if len(read) < 2:
            raise Failure(EINVAL, f"Wrong number of read arguments in exec: {len(read)}")
        r = ArgArray(read)
        res_id = int(r.scalar(INT64, "<q"))
        fn_symbol = r.string()
        resource = self.resource_by_id(res_id)
        if resource is None:
            raise Failure(ENOENT, f"no resource {res_id}")
        if resource.type != RESOURCE_LIB:
            raise Failure(EINVAL, "Invalid resource type: expected VACCEL_RESOURCE_LIB")
        if res_id not in session.resources:
            raise Failure(EPERM, f"Resource {res_id} is not registered to session {session.id}")
        self._call_library(resource.files[0][0], fn_symbol, r.remaining(), write)

    @staticmethod
    def _call_library(library: str, fn: str, read: list[CArg], write: list[CArg]) -> None:
        """The exec plugin's dlopen + dlsym, with two built-in libraries:
        ``libmytestlib.so`` ``mytestfunc`` (upstream's example: one INT32 in, twice it out,
        typed) and ``libstandin.so`` ``reverse`` (one RAW in, its bytes reversed into the
        first RAW out, as far as it fits)."""
        name = library.rsplit("/", 1)[-1]
        if name == "libmytestlib.so" and fn == "mytestfunc":
            if len(read) != 1 or len(write) != 1:
                raise Failure(EINVAL, "Invalid number of arguments")
            value = int(ArgArray(read).scalar(INT32, "<i"))
            out = ArgArray(write)._next(INT32)
            if out.size != 4:
                raise Failure(EINVAL, "output is not an int32")
            out.buf[:] = struct.pack("<i", 2 * value)
            return
        if name == "libstandin.so" and fn == "reverse":
            if len(read) != 1 or len(write) < 1:
                raise Failure(EINVAL, "Invalid number of arguments")
            data = bytes(read[0].buf[::-1])[: write[0].size]
            write[0].buf[: len(data)] = data
            return
        raise Failure(ENOENT, f"dlopen/dlsym failed for {library}:{fn}")

    # minmax.c: 4 read, 3 write, untyped --------------------------------------------------
    def _minmax(self, session: CoreSession, read: list[CArg], write: list[CArg]) -> None:
        self._count(read, write, 4, 3, "minmax")
        ndata = int(_raw_scalar(read[1], "<i", "minmax ndata"))
        low = int(_raw_scalar(read[2], "<i", "minmax low_threshold"))
        high = int(_raw_scalar(read[3], "<i", "minmax high_threshold"))
        indata = _raw_array(read[0], "<f8", ndata, "minmax indata")
        outdata = _raw_array(write[0], "<f8", ndata, "minmax outdata")
        if write[1].size < 8 or write[2].size < 8 or ndata < 1:
            raise Failure(EINVAL, "minmax: outputs too small or no data")
        outdata[...] = np.clip(indata, low, high)
        write[1].buf[:8] = struct.pack("<d", float(indata.min()))
        write[2].buf[:8] = struct.pack("<d", float(indata.max()))

    # fpga.c: untyped float/int arrays, lengths from read[0] -------------------------------
    def _fpga(self, session: CoreSession, read: list[CArg], write: list[CArg]) -> None:
        op = self._op
        if op == OP_FPGA_ARRAYCOPY:
            self._count(read, write, 1, 1, "fpga_arraycopy")
            n = read[0].size // 4
            a = _raw_array(read[0], "<i4", n, "fpga_arraycopy a")
            _raw_array(write[0], "<i4", n, "fpga_arraycopy out")[...] = a
            return
        nr_write = 2 if op == OP_FPGA_PARALLEL else 1
        self._count(read, write, 2, nr_write, f"fpga op {op}")
        n = read[0].size // 4
        a = _raw_array(read[0], "<f4", n, "fpga a")
        b = _raw_array(read[1], "<f4", n, "fpga b")
        if op == OP_FPGA_MMULT:
            side = round(n**0.5)
            if side * side != n:
                raise Failure(EINVAL, "fpga_mmult: a is not a square matrix")
            c = _raw_array(write[0], "<f4", n, "fpga_mmult c")
            c[...] = (a.reshape(side, side) @ b.reshape(side, side)).reshape(-1)
        elif op == OP_FPGA_PARALLEL:
            _raw_array(write[0], "<f4", n, "fpga_parallel add")[...] = a + b
            _raw_array(write[1], "<f4", n, "fpga_parallel mult")[...] = a * b
        else:
            _raw_array(write[0], "<f4", n, "fpga_vectoradd c")[...] = a + b

    def _opencv(self, session: CoreSession, read: list[CArg], write: list[CArg]) -> None:
        raise Failure(ENOTSUP, "no plugin implements opencv")

    # Model operations ------------------------------------------------------------------------
    @staticmethod
    def _model_checks(session: CoreSession, resource: Resource) -> None:
        """What ``vaccel_{tf,tflite,torch}_model_*`` check before the plugin (src/ops/torch.c):
        a MODEL resource (EINVAL), registered with the session (EPERM)."""
        if resource.type != RESOURCE_MODEL:
            raise Failure(EINVAL, "Invalid resource type: expected VACCEL_RESOURCE_MODEL")
        if resource.id not in session.resources:
            raise Failure(EPERM, f"Resource {resource.id} is not registered to {session.id}")

    def model_load(self, session: CoreSession, resource: Resource, framework: str) -> None:
        self._model_checks(session, resource)
        if framework != "torch":
            raise Failure(ENOTSUP, f"no plugin implements {framework} model load")
        session.loaded.add(resource.id)

    def torch_model_run(
        self, session: CoreSession, resource: Resource, inputs: list[tuple], nr_out: int
    ) -> list[tuple]:
        """Upstream's noop plugin: output i is a copy of input i (dims, type, data)."""
        self._model_checks(session, resource)
        if nr_out > len(inputs):
            raise Failure(EINVAL, f"{nr_out} outputs asked of {len(inputs)} inputs")
        return [inputs[i] for i in range(nr_out)]
