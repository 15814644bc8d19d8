"""The operation catalog: every vAccel operation, its upstream code, arguments and results.

One table drives argument validation in :class:`~vaccel_core.session.Session`, dummy results in
the noop backend, and encoding in the remote (rpc) path. Upstream renumbered the operation enum
between releases, so the wire always carries the operation *name*; ``code`` is the newest
upstream number, kept for ``genop`` and for display.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np

from .errors import BackendError, InvalidArgumentError


class Kind(enum.Enum):
    """The type of one argument or result."""

    BYTES = "bytes"  # bytes-like (an image, an opaque buffer)
    STR = "str"
    INT = "int"
    FLOAT = "float"
    TENSOR = "tensor"  # one numpy array
    TENSORS = "tensors"  # a list of numpy arrays
    NAMED_TENSORS = "named_tensors"  # dict name -> numpy array (or a list, matched by position)
    BYTES_LIST = "bytes_list"
    INT_LIST = "int_list"
    STR_LIST = "str_list"
    RESOURCE = "resource"  # a Resource registered with the session


class ResourceType(enum.IntEnum):
    """Upstream resource types."""

    LIB = 0
    DATA = 1
    MODEL = 2


@dataclass(frozen=True)
class Param:
    """One argument or result of an operation."""

    name: str
    kind: Kind
    doc: str = ""
    dtype: str | None = None  # for tensors: required numpy dtype name
    ndim: int | None = None  # for tensors: required number of dimensions
    resource_type: ResourceType | None = None  # for resources: required type
    default: Any = None
    optional: bool = False


class Op(enum.Enum):
    """vAccel operations. The value is the name used on the wire and in ``genop``."""

    NOOP = "noop"
    EXEC = "exec"
    EXEC_WITH_RESOURCE = "exec_with_resource"
    IMAGE_CLASSIFY = "image_classify"
    IMAGE_DETECT = "image_detect"
    IMAGE_SEGMENT = "image_segment"
    IMAGE_POSE = "image_pose"
    IMAGE_DEPTH = "image_depth"
    TF_MODEL_LOAD = "tf_model_load"
    TF_MODEL_UNLOAD = "tf_model_unload"
    TF_MODEL_RUN = "tf_model_run"
    TFLITE_MODEL_LOAD = "tflite_model_load"
    TFLITE_MODEL_UNLOAD = "tflite_model_unload"
    TFLITE_MODEL_RUN = "tflite_model_run"
    TORCH_MODEL_LOAD = "torch_model_load"
    TORCH_MODEL_RUN = "torch_model_run"
    TORCH_SGEMM = "torch_sgemm"
    BLAS_SGEMM = "blas_sgemm"
    FPGA_ARRAYCOPY = "fpga_arraycopy"
    FPGA_MMULT = "fpga_mmult"
    FPGA_PARALLEL = "fpga_parallel"
    FPGA_VECTORADD = "fpga_vectoradd"
    MINMAX = "minmax"
    OPENCV = "opencv"
    # Our own generic ONNX-style model API (no upstream code).
    MODEL_LOAD = "model_load"
    MODEL_RUN = "model_run"
    MODEL_UNLOAD = "model_unload"

    @property
    def spec(self) -> OpSpec:
        return CATALOG[self]

    @property
    def code(self) -> int | None:
        return CATALOG[self].code


@dataclass(frozen=True)
class OpSpec:
    """How an operation is called: its Python method name, arguments and results."""

    op: Op
    code: int | None  # newest upstream enum value; None for our own operations
    method: str  # the Session method and the Backend method that implement it
    params: tuple[Param, ...]
    results: tuple[Param, ...]
    doc: str
    check: Callable[[OpSpec, Sequence[Any]], None] | None = field(default=None, compare=False)
    #: Size in bytes of the results, computed from the arguments before the operation runs
    #: (None: not known in advance, e.g. a model's outputs). The agent refuses a call whose
    #: results would exceed its limits before running it.
    result_bytes: Callable[[Sequence[Any]], int | None] | None = field(
        default=None, compare=False
    )

    @property
    def name(self) -> str:
        return self.op.value


def classification_tag(confidence: float, label: str) -> str:
    """Upstream's classification tag, ``"%.3f%% %s"`` of confidence x 100 and the class name:
    ``classification_tag(0.86768, "golden retriever") == "86.768% golden retriever"``."""
    return f"{float(confidence) * 100.0:.3f}% {label}"


def _image() -> Param:
    return Param("image", Kind.BYTES, "encoded image (JPEG, PNG, ...)")


def _model(doc: str = "registered MODEL resource") -> Param:
    return Param("resource", Kind.RESOURCE, doc, resource_type=ResourceType.MODEL)


_IMGNAME = Param("imgname", Kind.STR, "name of the output image the backend wrote")
_EXEC_ARGS = (
    Param("fn_symbol", Kind.STR, "function to call"),
    Param("read", Kind.BYTES_LIST, "input buffers"),
    Param("write_sizes", Kind.INT_LIST, "size in bytes of each output buffer"),
)
_EXEC_RESULTS = (Param("write", Kind.BYTES_LIST, "output buffers"),)


def _f32(name: str, ndim: int, doc: str = "", optional: bool = False) -> Param:
    return Param(name, Kind.TENSOR, doc, dtype="float32", ndim=ndim, optional=optional)


def _check_sgemm(spec: OpSpec, args: Sequence[Any]) -> None:
    a, b, c = args[0], args[1], args[2]
    if a.shape[1] != b.shape[0]:
        raise InvalidArgumentError(
            f"{spec.method}: argument 'b': expected {a.shape[1]} rows to match a's "
            f"{a.shape[1]} columns, got shape {b.shape}"
        )
    if c is not None and c.shape != (a.shape[0], b.shape[1]):
        raise InvalidArgumentError(
            f"{spec.method}: argument 'c': expected shape {(a.shape[0], b.shape[1])}, got {c.shape}"
        )


def _check_same_shape(spec: OpSpec, args: Sequence[Any]) -> None:
    a, b = args[0], args[1]
    if a.shape != b.shape:
        raise InvalidArgumentError(
            f"{spec.method}: argument 'b': expected shape {a.shape} (same as 'a'), got {b.shape}"
        )


def _check_mmult(spec: OpSpec, args: Sequence[Any]) -> None:
    a, b = args[0], args[1]
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise InvalidArgumentError(
            f"{spec.method}: arguments 'a' {a.shape} and 'b' {b.shape} cannot be multiplied"
        )


def _check_minmax(spec: OpSpec, args: Sequence[Any]) -> None:
    data, low, high = args
    if data.size == 0:
        raise InvalidArgumentError(f"{spec.method}: argument 'data': expected at least 1 value")
    if low > high:
        raise InvalidArgumentError(
            f"{spec.method}: argument 'low_threshold' ({low}) is above 'high_threshold' ({high})"
        )


#: Upper bound on what one call may ask a backend to allocate for its outputs (the default
#: message limit of the transports): a guest must not make the host allocate without bound.
MAX_OUTPUT_BYTES = 1 << 30
#: Upper bound on the number of opaque outputs of one call.
MAX_OUTPUTS = 4096


def _check_write_sizes(spec: OpSpec, args: Sequence[Any]) -> None:
    sizes = args[-1]
    for i, size in enumerate(sizes):
        if size < 0:
            raise InvalidArgumentError(
                f"{spec.method}: argument 'write_sizes'[{i}]: expected a size >= 0, got {size}"
            )
    if len(sizes) > MAX_OUTPUTS or sum(sizes) > MAX_OUTPUT_BYTES:
        raise InvalidArgumentError(
            f"{spec.method}: argument 'write_sizes': expected at most {MAX_OUTPUTS} buffers of "
            f"{MAX_OUTPUT_BYTES} bytes in all, got {len(sizes)} buffers of {sum(sizes)} bytes"
        )


def _check_nr_outputs(spec: OpSpec, args: Sequence[Any]) -> None:
    count = args[-1]
    if not 0 <= count <= MAX_OUTPUTS:
        raise InvalidArgumentError(
            f"{spec.method}: argument 'nr_outputs': expected 0..{MAX_OUTPUTS}, got {count}"
        )


def _shape(value: Any, ndim: int) -> tuple[int, ...] | None:
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) != ndim:
        return None
    return tuple(int(d) for d in shape)


def _matmul_bytes(args: Sequence[Any]) -> int | None:
    a, b = _shape(args[0], 2), _shape(args[1], 2)
    if a is None or b is None:
        return None
    return a[0] * b[1] * 4  # float32 m x n


def _like_input_bytes(copies: int) -> Callable[[Sequence[Any]], int | None]:
    def size(args: Sequence[Any]) -> int | None:
        nbytes = getattr(args[0], "nbytes", None)
        return None if nbytes is None else int(nbytes) * copies

    return size


def _write_sizes_bytes(args: Sequence[Any]) -> int | None:
    sizes = args[-1]
    if not isinstance(sizes, Sequence) or isinstance(sizes, (str, bytes)):
        return None
    try:
        return sum(max(int(size), 0) for size in sizes)
    except (TypeError, ValueError):
        return None


def result_bytes(spec: OpSpec, args: Sequence[Any]) -> int | None:
    """The size of ``spec``'s results for ``args`` (its decoded arguments), or None when it
    cannot be known before the operation runs. Never raises: arguments that are not what the
    operation expects give None (validation reports them)."""
    if spec.result_bytes is None or len(args) < len(spec.params):
        return None
    try:
        return spec.result_bytes(args)
    except Exception:
        return None


# Result checks --------------------------------------------------------------------------------
_BYTES_LIKE = (bytes, bytearray, memoryview)
_NUMBER = (int, float, np.integer, np.floating)


def _brief(value: Any) -> str:
    """What a value is, in a few words (for an error message)."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_brief(v) for v in value[:3]) + (", ..." if len(value) > 3 else "")
        return f"{type(value).__name__} of {len(value)} ({inner})"
    if isinstance(value, str):
        return f"str {value[:40]!r}" + ("..." if len(value) > 40 else "")
    if isinstance(value, _BYTES_LIKE):
        return f"{type(value).__name__} of {memoryview(value).nbytes} bytes"
    if isinstance(value, Mapping):
        return f"{type(value).__name__} of {len(value)} entries"
    return type(value).__name__


def expected_result(param: Param) -> str:
    """What a backend must return for one result, in words (also used by docs/reference.md)."""
    kind = param.kind
    if kind is Kind.TENSOR:
        dtype = f"{param.dtype} " if param.dtype else ""
        ndim = f" of {param.ndim} dimensions" if param.ndim is not None else ""
        return f"a {dtype}numpy array{ndim}"
    return {
        Kind.BYTES: "bytes (or bytearray, memoryview)",
        Kind.STR: "a str",
        Kind.INT: "an int",
        Kind.FLOAT: "a float (or int)",
        Kind.TENSORS: "a list (or tuple) of numpy arrays",
        Kind.NAMED_TENSORS: "a dict of name -> numpy array (or a list of numpy arrays)",
        Kind.BYTES_LIST: "a list (or tuple) of bytes",
        Kind.INT_LIST: "a list (or tuple) of ints",
        Kind.STR_LIST: "a list (or tuple) of str",
        Kind.RESOURCE: "a Resource",
    }[kind]


def _result_predicate(param: Param) -> Callable[[Any], bool]:
    """A fast test of one result against its catalog entry (built once per operation)."""
    kind = param.kind
    if kind is Kind.TENSOR:
        dtype = np.dtype(param.dtype) if param.dtype is not None else None
        ndim = param.ndim

        def tensor(value: Any) -> bool:
            return (
                isinstance(value, np.ndarray)
                and (dtype is None or value.dtype == dtype)
                and (ndim is None or value.ndim == ndim)
            )

        return tensor
    if kind is Kind.STR:
        return lambda value: isinstance(value, str)
    if kind is Kind.FLOAT:
        return lambda value: type(value) is float or (
            isinstance(value, _NUMBER) and not isinstance(value, bool)
        )
    if kind is Kind.INT:
        return lambda value: isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if kind is Kind.BYTES:
        return lambda value: isinstance(value, _BYTES_LIKE)
    item: Any = {
        Kind.TENSORS: np.ndarray,
        Kind.NAMED_TENSORS: np.ndarray,
        Kind.BYTES_LIST: _BYTES_LIKE,
        Kind.INT_LIST: (int, np.integer),
        Kind.STR_LIST: str,
    }.get(kind, object)
    named = kind is Kind.NAMED_TENSORS

    def sequence(value: Any) -> bool:
        if named and isinstance(value, Mapping):
            return all(isinstance(k, str) and isinstance(v, item) for k, v in value.items())
        return isinstance(value, (list, tuple)) and all(isinstance(v, item) for v in value)

    return sequence


def _whole_predicate(predicates: tuple[Callable[[Any], bool], ...]) -> Callable[[Any], bool]:
    """One test of a backend's whole return value: None, the value bare, or a tuple/list."""
    count = len(predicates)
    if count == 0:
        return lambda value: value is None
    if count == 1:
        return predicates[0]
    if count == 2:
        p0, p1 = predicates
        return lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and p0(v[0]) and p1(v[1])
    if count == 3:
        p0, p1, p2 = predicates
        return lambda v: (
            isinstance(v, (tuple, list)) and len(v) == 3 and p0(v[0]) and p1(v[1]) and p2(v[2])
        )
    return lambda v: (
        isinstance(v, (tuple, list))
        and len(v) == count
        and all(p(x) for p, x in zip(predicates, v, strict=True))
    )


#: Per operation spec (by identity: hashing a spec hashes all its fields): the spec, a test of
#: the whole return value and one predicate per result; filled on first use.
_RESULT_PREDICATES: dict[
    int, tuple[OpSpec, Callable[[Any], bool], tuple[Callable[[Any], bool], ...]]
] = {}


def _predicates(
    spec: OpSpec,
) -> tuple[OpSpec, Callable[[Any], bool], tuple[Callable[[Any], bool], ...]]:
    entry = _RESULT_PREDICATES.get(id(spec))
    if entry is None or entry[0] is not spec:
        each = tuple(_result_predicate(r) for r in spec.results)
        entry = (spec, _whole_predicate(each), each)
        _RESULT_PREDICATES[id(spec)] = entry
    return entry


def check_result(spec: OpSpec, value: Any, backend_name: str) -> None:
    """Check what backend ``backend_name`` returned for ``spec`` against the catalog: None
    for no result, the value itself for one, a tuple (or list) of them in catalog order for
    several. Raises :class:`~vaccel_core.errors.BackendError` naming the backend, the operation,
    what was expected and what was got."""
    entry = _RESULT_PREDICATES.get(id(spec))
    if entry is None or entry[0] is not spec:
        entry = _predicates(spec)
    if entry[1](value):
        return
    predicates = entry[2]
    results = spec.results
    if len(results) == 1:
        _bad_result(spec, backend_name, results[0], value)
    if not results:
        raise BackendError(
            f"{spec.method}: backend {backend_name!r} returned an invalid result: "
            f"expected None (the operation has no result), got {_brief(value)}"
        )
    if not isinstance(value, (tuple, list)) or len(value) != len(results):
        names = ", ".join(r.name for r in results)
        raise BackendError(
            f"{spec.method}: backend {backend_name!r} returned an invalid result: "
            f"expected a tuple of {len(results)} results ({names}), got {_brief(value)}"
        )
    for predicate, param, item in zip(predicates, results, value, strict=True):
        if not predicate(item):
            _bad_result(spec, backend_name, param, item)


def _bad_result(spec: OpSpec, backend_name: str, param: Param, value: Any) -> NoReturn:
    raise BackendError(
        f"{spec.method}: backend {backend_name!r} returned an invalid result {param.name!r}: "
        f"expected {expected_result(param)}, got {_brief(value)}"
    )


_SPECS: list[OpSpec] = [
    OpSpec(Op.NOOP, 0, "noop", (), (), "Do nothing (debugging and overhead measurement)."),
    OpSpec(
        Op.EXEC,
        1,
        "exec",
        (Param("library", Kind.STR, "shared library path or name"), *_EXEC_ARGS),
        _EXEC_RESULTS,
        "Call a function of a shared library.",
        _check_write_sizes,
        result_bytes=_write_sizes_bytes,
    ),
    OpSpec(
        Op.EXEC_WITH_RESOURCE,
        2,
        "exec_with_resource",
        (
            Param(
                "resource", Kind.RESOURCE, "registered LIB resource", resource_type=ResourceType.LIB
            ),
            *_EXEC_ARGS,
        ),
        _EXEC_RESULTS,
        "Call a function of a registered library resource.",
        _check_write_sizes,
        result_bytes=_write_sizes_bytes,
    ),
    OpSpec(
        Op.IMAGE_CLASSIFY,
        3,
        "classify",
        (_image(),),
        (Param("tags", Kind.STR, "classification tags"), _IMGNAME),
        "Classify an image; returns (tags, output image name).",
    ),
    OpSpec(Op.IMAGE_DETECT, 4, "detect", (_image(),), (_IMGNAME,), "Detect objects."),
    OpSpec(Op.IMAGE_SEGMENT, 5, "segment", (_image(),), (_IMGNAME,), "Segment an image."),
    OpSpec(Op.IMAGE_POSE, 6, "pose", (_image(),), (_IMGNAME,), "Estimate poses."),
    OpSpec(Op.IMAGE_DEPTH, 7, "depth", (_image(),), (_IMGNAME,), "Estimate depth."),
    OpSpec(Op.TF_MODEL_LOAD, 8, "tf_model_load", (_model(),), (), "Load a TensorFlow model."),
    OpSpec(Op.TF_MODEL_UNLOAD, 9, "tf_model_unload", (_model(),), (), "Unload it."),
    OpSpec(
        Op.TF_MODEL_RUN,
        10,
        "tf_model_run",
        (
            _model(),
            Param("in_nodes", Kind.STR_LIST, "input node names"),
            Param("in_tensors", Kind.TENSORS, "input tensors"),
            Param("out_nodes", Kind.STR_LIST, "output node names"),
        ),
        (Param("out_tensors", Kind.TENSORS, "one output tensor per out_nodes entry"),),
        "Run a loaded TensorFlow model.",
    ),
    OpSpec(Op.TFLITE_MODEL_LOAD, 11, "tflite_model_load", (_model(),), (), "Load TFLite."),
    OpSpec(Op.TFLITE_MODEL_UNLOAD, 12, "tflite_model_unload", (_model(),), (), "Unload it."),
    OpSpec(
        Op.TFLITE_MODEL_RUN,
        13,
        "tflite_model_run",
        (_model(), Param("in_tensors", Kind.TENSORS, "input tensors, in the model's order")),
        (Param("out_tensors", Kind.TENSORS, "output tensors, in the model's order"),),
        "Run a loaded TFLite model.",
    ),
    OpSpec(Op.TORCH_MODEL_LOAD, 14, "torch_model_load", (_model(),), (), "Load TorchScript."),
    OpSpec(
        Op.TORCH_MODEL_RUN,
        15,
        "torch_model_run",
        (_model(), Param("in_tensors", Kind.TENSORS, "input tensors, in the model's order")),
        (Param("out_tensors", Kind.TENSORS, "output tensors, in the model's order"),),
        "Run a loaded TorchScript model.",
    ),
    OpSpec(
        Op.TORCH_SGEMM,
        16,
        "torch_sgemm",
        (
            _f32("a", 2, "m x k"),
            _f32("b", 2, "k x n"),
            _f32("c", 2, "m x n, added to a @ b", optional=True),
        ),
        (_f32("out", 2, "a @ b (+ c), m x n"),),
        "a @ b (+ c) with torch.",
        _check_sgemm,
        result_bytes=_matmul_bytes,
    ),
    OpSpec(
        Op.BLAS_SGEMM,
        17,
        "sgemm",
        (
            _f32("a", 2, "m x k"),
            _f32("b", 2, "k x n"),
            _f32("c", 2, "m x n, scaled by beta", optional=True),
            Param("alpha", Kind.FLOAT, "scale of a @ b", default=1.0, optional=True),
            Param(
                "beta", Kind.FLOAT, "scale of c (unused when c is None)", default=0.0, optional=True
            ),
        ),
        (_f32("out", 2, "alpha * a @ b + beta * c"),),
        "Single-precision general matrix multiply.",
        _check_sgemm,
        result_bytes=_matmul_bytes,
    ),
    OpSpec(
        Op.FPGA_ARRAYCOPY,
        18,
        "fpga_arraycopy",
        (Param("a", Kind.TENSOR, "the array to copy", dtype="int32", ndim=1),),
        (Param("out", Kind.TENSOR, "a copy of a (same length)", dtype="int32", ndim=1),),
        "Copy an array.",
        result_bytes=_like_input_bytes(1),
    ),
    OpSpec(
        Op.FPGA_MMULT,
        19,
        "fpga_mmult",
        (_f32("a", 2, "m x k"), _f32("b", 2, "k x n")),
        (_f32("out", 2, "a @ b, m x n"),),
        "Matrix multiply.",
        _check_mmult,
        result_bytes=_matmul_bytes,
    ),
    OpSpec(
        Op.FPGA_PARALLEL,
        20,
        "fpga_parallel",
        (_f32("a", 1, "length n"), _f32("b", 1, "length n (same as a)")),
        (_f32("add", 1, "a + b, length n"), _f32("mult", 1, "a * b, length n")),
        "Element-wise a + b and a * b.",
        _check_same_shape,
        result_bytes=_like_input_bytes(2),
    ),
    OpSpec(
        Op.FPGA_VECTORADD,
        21,
        "fpga_vectoradd",
        (_f32("a", 1, "length n"), _f32("b", 1, "length n (same as a)")),
        (_f32("out", 1, "a + b, length n"),),
        "Element-wise a + b.",
        _check_same_shape,
        result_bytes=_like_input_bytes(1),
    ),
    OpSpec(
        Op.MINMAX,
        22,
        "minmax",
        (
            Param("data", Kind.TENSOR, "the values (at least one)", dtype="float64", ndim=1),
            Param("low_threshold", Kind.INT, "values below it are raised to it"),
            Param("high_threshold", Kind.INT, "values above it are lowered to it (>= low)"),
        ),
        (
            Param("out", Kind.TENSOR, "data clipped to the thresholds", dtype="float64", ndim=1),
            Param("min", Kind.FLOAT, "minimum of data (before clipping)"),
            Param("max", Kind.FLOAT, "maximum of data (before clipping)"),
        ),
        "Clip data to [low, high] and return it with the minimum and maximum of data.",
        _check_minmax,
        result_bytes=_like_input_bytes(1),
    ),
    OpSpec(
        Op.OPENCV,
        23,
        "opencv",
        (
            Param("args", Kind.BYTES_LIST, "opaque input buffers"),
            Param("nr_outputs", Kind.INT, "number of output buffers wanted (0..4096)"),
        ),
        (Param("outputs", Kind.BYTES_LIST, "opaque output buffers (nr_outputs of them)"),),
        "An OpenCV operation (opaque arguments).",
        _check_nr_outputs,
    ),
    OpSpec(Op.MODEL_LOAD, None, "model_load", (_model(),), (), "Load a model (e.g. ONNX)."),
    OpSpec(Op.MODEL_UNLOAD, None, "model_unload", (_model(),), (), "Unload a model."),
    OpSpec(
        Op.MODEL_RUN,
        None,
        "model_run",
        (_model(), Param("inputs", Kind.NAMED_TENSORS, "input name -> array")),
        (Param("outputs", Kind.NAMED_TENSORS, "output name -> array"),),
        "Run a model on numpy arrays; inputs are checked against the model's signature.",
    ),
]

CATALOG: dict[Op, OpSpec] = {spec.op: spec for spec in _SPECS}
BY_CODE: dict[int, Op] = {s.code: s.op for s in _SPECS if s.code is not None}
BY_METHOD: dict[str, Op] = {s.method: s.op for s in _SPECS}


def resolve_op(op: Op | str | int) -> Op:
    """Find an operation by enum, wire name, method name, upstream name or upstream code."""
    if isinstance(op, Op):
        return op
    if isinstance(op, int) and not isinstance(op, bool):
        if op in BY_CODE:
            return BY_CODE[op]
        raise InvalidArgumentError(
            f"genop: argument 'op': unknown upstream operation code {op} "
            f"(expected 0..{max(BY_CODE)})"
        )
    if isinstance(op, str):
        key = op.strip().lower().removeprefix("vaccel_op_")
        for candidate in (key, key.replace("-", "_")):
            try:
                return Op(candidate)
            except ValueError:
                pass
            if candidate in BY_METHOD:
                return BY_METHOD[candidate]
        raise InvalidArgumentError(f"genop: argument 'op': unknown operation {op!r}")
    raise InvalidArgumentError(
        f"genop: argument 'op': expected an operation name or code, got {type(op).__name__}"
    )
