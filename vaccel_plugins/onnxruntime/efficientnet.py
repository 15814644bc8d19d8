"""Build an EfficientNet-Lite0 ONNX graph from a legacy ``torch.save`` state dict, without torch.

Two parts:

* :func:`load_torch_state_dict` reads an old-style (non-zip) ``torch.save`` file with a
  restricted unpickler that only knows the tensor-rebuild helpers and ``OrderedDict``;
  any other global in the pickle is refused, so a hostile file cannot run code.
* :func:`build_model` turns the lukemelas-style state dict into an ONNX graph with
  BatchNorm folded into the convolutions and TF "SAME" padding.

Only numpy is needed to read the weights; ``onnx`` is imported when a graph is built.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = [
    "BN_EPS",
    "INPUT_NAME",
    "INPUT_SIZE",
    "NUM_CLASSES",
    "OPSET",
    "OUTPUT_NAME",
    "STAGES",
    "Stage",
    "UnsafePickleError",
    "WeightsFormatError",
    "build_model",
    "convert",
    "load_torch_state_dict",
]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
INPUT_SIZE = 224
NUM_CLASSES = 1000
OPSET = 13
BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280

# Magic number and protocol version that start a legacy torch.save file.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class WeightsFormatError(ValueError):
    """The weights file is not a legacy torch state dict of the expected shape."""


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global that the restricted unpickler does not allow."""


# --------------------------------------------------------------------------------------
# Restricted reader for legacy torch.save files
# --------------------------------------------------------------------------------------

_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True, slots=True)  # slots: a pickle BUILD cannot alter the shared instances
class _StorageType:
    """Stand-in for ``torch.FloatStorage`` and friends: only carries the dtype."""

    name: str
    dtype: np.dtype[Any]


@dataclass
class _Storage:
    """A storage named in the pickle; its bytes follow the pickles in the file."""

    key: str
    dtype: np.dtype[Any]
    numel: int
    data: np.ndarray | None = None


@dataclass
class _LazyTensor:
    """A tensor whose storage has not been read yet."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self) -> np.ndarray:
        """Return a contiguous copy of the tensor's elements."""
        data = self.storage.data
        if data is None:
            raise WeightsFormatError(f"storage {self.storage.key!r} has no data")
        if not self.size:
            return data[self.offset : self.offset + 1].reshape(()).copy()
        extent = (
            self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True)) + 1
        )
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, dtype=data.dtype)
        if self.offset < 0 or extent > data.size or min(self.stride) < 0:
            raise WeightsFormatError(
                f"tensor of size {self.size} at offset {self.offset} overruns "
                f"storage {self.storage.key!r} of {data.size} elements"
            )
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.size,
            strides=tuple(s * data.itemsize for s in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(
    storage: _Storage,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: object = None,
    metadata: object = None,
) -> _LazyTensor:
    """Our replacement for ``torch._utils._rebuild_tensor_v2``."""
    del requires_grad, backward_hooks, metadata
    if not isinstance(storage, _Storage):
        raise WeightsFormatError("tensor rebuilt from something that is not a storage")
    if not (_is_index_tuple(size) and _is_index_tuple(stride) and len(size) == len(stride)):
        raise WeightsFormatError(f"bad tensor size {size!r} or stride {stride!r}")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise WeightsFormatError(f"bad tensor storage offset {storage_offset!r}")
    return _LazyTensor(storage, storage_offset, tuple(size), tuple(stride))


def _is_index_tuple(value: object) -> bool:
    """A tuple of non-negative ints (sizes and strides of a tensor)."""
    return isinstance(value, tuple) and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value
    )


def _rebuild_tensor(
    storage: _Storage, storage_offset: int, size: tuple[int, ...], stride: tuple[int, ...]
) -> _LazyTensor:
    """Our replacement for the older ``torch._utils._rebuild_tensor``."""
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(
    data: _LazyTensor, requires_grad: bool = False, backward_hooks: object = None
) -> _LazyTensor:
    """Our replacement for ``torch._utils._rebuild_parameter``: a parameter is its tensor."""
    del requires_grad, backward_hooks
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dt) for name, dt in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that maps the few torch globals to our functions and refuses all others."""

    def __init__(self, file: IO[bytes], storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global '{module}.{name}' from the weights file: "
                "only torch tensor-rebuild helpers and collections.OrderedDict are allowed"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        if (
            not isinstance(pid, tuple)
            or len(pid) not in (5, 6)
            or pid[0] != "storage"
            or not isinstance(pid[1], _StorageType)
        ):
            raise WeightsFormatError(f"unexpected persistent id {pid!r}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        view = pid[5] if len(pid) == 6 else None
        if view is not None:
            raise WeightsFormatError(f"storage views are not supported (storage {key!r})")
        storage = self._storages.get(key)
        if storage is None:
            storage = _Storage(key, storage_type.dtype, numel)
            self._storages[key] = storage
        return storage


def _restricted_load(file: IO[bytes], storages: dict[str, _Storage]) -> Any:
    return _RestrictedUnpickler(file, storages).load()


def _read_storage_data(file: IO[bytes], storage: _Storage) -> None:
    header = file.read(8)
    if len(header) != 8:
        raise WeightsFormatError(f"file ends before storage {storage.key!r}")
    (count,) = struct.unpack("<q", header)
    if count != storage.numel:
        raise WeightsFormatError(
            f"storage {storage.key!r} holds {count} elements, the pickle says {storage.numel}"
        )
    nbytes = count * storage.dtype.itemsize
    raw = file.read(nbytes)
    if len(raw) != nbytes:
        raise WeightsFormatError(
            f"file ends inside storage {storage.key!r} ({len(raw)} of {nbytes} bytes)"
        )
    storage.data = np.frombuffer(raw, dtype=storage.dtype)


def _materialize(obj: Any) -> Any:
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def load_torch_state_dict(source: str | os.PathLike[str] | IO[bytes]) -> dict[str, np.ndarray]:
    """Read a legacy (non-zip) ``torch.save`` state dict into numpy arrays, without torch.

    Raises :class:`UnsafePickleError` if the file references any global other than the
    tensor-rebuild helpers, and :class:`WeightsFormatError` if it is not such a file.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fh:
            return load_torch_state_dict(io.BytesIO(fh.read()))
    file = source
    if file.read(2) == b"PK":
        raise WeightsFormatError(
            "this is a zip-format torch.save file; only the legacy format is supported"
        )
    file.seek(0)
    storages: dict[str, _Storage] = {}
    try:
        magic = _restricted_load(file, storages)
        if magic != _LEGACY_MAGIC:
            raise WeightsFormatError("not a legacy torch.save file (bad magic number)")
        protocol = _restricted_load(file, storages)
        if protocol != _LEGACY_PROTOCOL:
            raise WeightsFormatError(f"unsupported torch.save protocol {protocol!r}")
        sys_info = _restricted_load(file, storages)
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise WeightsFormatError("big-endian torch.save files are not supported")
        result = _restricted_load(file, storages)
        keys = _restricted_load(file, storages)
    except (UnsafePickleError, WeightsFormatError):
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError) as exc:
        raise WeightsFormatError(f"cannot read torch.save file: {exc}") from exc
    if not isinstance(keys, list):
        raise WeightsFormatError("storage key list missing after the main pickle")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise WeightsFormatError(f"storage {key!r} listed but never used")
        _read_storage_data(file, storage)
    try:
        state = _materialize(result)
    except RecursionError as exc:
        raise WeightsFormatError("the pickle nests too deeply") from exc
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise WeightsFormatError("the file does not hold a state dict of tensors")
    return dict(state)


# --------------------------------------------------------------------------------------
# EfficientNet-Lite0 graph
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One MBConv stage: how many blocks, kernel size, first stride, expansion, out channels."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    out: int


STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 1, 16),
    Stage(2, 3, 2, 6, 24),
    Stage(2, 5, 2, 6, 40),
    Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112),
    Stage(4, 5, 2, 6, 192),
    Stage(1, 3, 1, 6, 320),
)


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TF "SAME" padding (extra pixel at the end) for one axis: (begin, end, out size)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


def _fold_bn(
    weight: np.ndarray, state: dict[str, np.ndarray], bn: str
) -> tuple[np.ndarray, np.ndarray]:
    """Fold BatchNorm ``bn`` (a key prefix) into a bias-free conv weight (OIHW)."""
    gamma = _get(state, f"{bn}.weight", (weight.shape[0],))
    beta = _get(state, f"{bn}.bias", (weight.shape[0],))
    mean = _get(state, f"{bn}.running_mean", (weight.shape[0],))
    var = _get(state, f"{bn}.running_var", (weight.shape[0],))
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + BN_EPS)
    folded_w = weight.astype(np.float64) * scale[:, None, None, None]
    folded_b = beta.astype(np.float64) - mean.astype(np.float64) * scale
    return folded_w.astype(np.float32), folded_b.astype(np.float32)


def _get(state: dict[str, np.ndarray], key: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        value = state[key]
    except KeyError:
        raise WeightsFormatError(f"weights lack {key!r}") from None
    if value.shape != shape:
        raise WeightsFormatError(f"{key!r} has shape {value.shape}, expected {shape}")
    return value


class _GraphBuilder:
    """Collects ONNX nodes and initializers while tracking the spatial size."""

    def __init__(self, state: dict[str, np.ndarray]) -> None:
        import onnx  # noqa: F401  (fail early with ImportError if missing)

        self.state = state
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.size = INPUT_SIZE
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def _init(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def conv_bn(
        self,
        x: str,
        prefix: str,
        bn: str,
        shape: tuple[int, ...],
        stride: int,
        groups: int,
        relu6: bool,
    ) -> str:
        """Conv (weights ``prefix.weight``) with BN ``bn`` folded in, then optional ReLU6."""
        from onnx import helper

        kernel = shape[-1]
        weight, bias = _fold_bn(_get(self.state, f"{prefix}.weight", shape), self.state, bn)
        begin, end, out_size = _same_pads(self.size, kernel, stride)
        self.size = out_size
        w = self._init(f"{prefix}.weight", weight)
        b = self._init(f"{prefix}.bias", bias)
        y = self._name(prefix.replace(".", "_"))
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, w, b],
                [y],
                name=y,
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[begin, begin, end, end],
                group=groups,
            )
        )
        if not relu6:
            return y
        out = y + "_relu6"
        self.nodes.append(helper.make_node("Clip", [y, "zero", "six"], [out], name=out))
        return out

    def mbconv(self, x: str, index: int, cin: int, stage: Stage, stride: int) -> str:
        """One MBConv block (no squeeze-excite), with a skip when shapes allow."""
        from onnx import helper

        p = f"_blocks.{index}"
        hidden = cin * stage.expand
        h = x
        if stage.expand != 1:
            h = self.conv_bn(h, f"{p}._expand_conv", f"{p}._bn0", (hidden, cin, 1, 1), 1, 1, True)
        k = stage.kernel
        h = self.conv_bn(
            h, f"{p}._depthwise_conv", f"{p}._bn1", (hidden, 1, k, k), stride, hidden, True
        )
        h = self.conv_bn(
            h, f"{p}._project_conv", f"{p}._bn2", (stage.out, hidden, 1, 1), 1, 1, False
        )
        if stride == 1 and cin == stage.out:
            out = self._name(f"block{index}_add")
            self.nodes.append(helper.make_node("Add", [h, x], [out], name=out))
            return out
        return h

    def head(self, x: str) -> str:
        """Global average pool, flatten and the classifier."""
        from onnx import helper

        pooled = self._name("pool")
        flat = self._name("flatten")
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled], name=pooled))
        self.nodes.append(helper.make_node("Flatten", [pooled], [flat], name=flat, axis=1))
        fc_weight = _get(self.state, "_fc.weight", (NUM_CLASSES, HEAD_CHANNELS))
        fc_w = self._init("_fc.weight", fc_weight)
        fc_b = self._init("_fc.bias", _get(self.state, "_fc.bias", (NUM_CLASSES,)))
        self.nodes.append(
            helper.make_node("Gemm", [flat, fc_w, fc_b], [OUTPUT_NAME], name="fc", transB=1)
        )
        return OUTPUT_NAME


def build_model(state: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Build the EfficientNet-Lite0 ONNX model (opset 13) from a lukemelas-style state dict.

    Input ``input``: float32 ``[batch, 3, 224, 224]``; output ``logits``: ``[batch, 1000]``.
    """
    from onnx import TensorProto, helper

    g = _GraphBuilder(state)
    g._init("zero", np.array(0.0, dtype=np.float32))
    g._init("six", np.array(6.0, dtype=np.float32))
    x = g.conv_bn(INPUT_NAME, "_conv_stem", "_bn0", (STEM_CHANNELS, 3, 3, 3), 2, 1, True)
    cin, index = STEM_CHANNELS, 0
    for stage in STAGES:
        for repeat in range(stage.repeats):
            x = g.mbconv(x, index, cin, stage, stage.stride if repeat == 0 else 1)
            cin, index = stage.out, index + 1
    x = g.conv_bn(x, "_conv_head", "_bn1", (HEAD_CHANNELS, cin, 1, 1), 1, 1, True)
    g.head(x)
    _check_all_used(state, index)
    input_shape: list[str | int] = ["batch", 3, INPUT_SIZE, INPUT_SIZE]
    graph = helper.make_graph(
        g.nodes,
        "efficientnet_lite0",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", NUM_CLASSES])],
        g.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="vaccel-efficientnet-converter",
        doc_string="EfficientNet-Lite0 ImageNet-1k classifier; input (x-127)/128 RGB NCHW 224x224",
    )
    model.ir_version = 8  # readable by onnxruntime 1.10 and newer
    return model


def _check_all_used(state: dict[str, np.ndarray], blocks: int) -> None:
    """Refuse weights that have blocks beyond the known architecture (another variant)."""
    extra = [k for k in state if k.startswith(f"_blocks.{blocks}.")]
    if extra:
        raise WeightsFormatError(
            f"weights have more than {blocks} blocks ({extra[0]!r}): not EfficientNet-Lite0"
        )


def convert(
    pth_path: str | os.PathLike[str],
    onnx_path: str | os.PathLike[str] | IO[bytes],
    *,
    check: bool = True,
    log: Callable[[str], None] | None = None,
) -> onnx.ModelProto:
    """Read ``pth_path``, build the ONNX model, optionally check it, and write it out."""
    import onnx

    start = time.perf_counter()
    state = load_torch_state_dict(pth_path)
    model = build_model(state)
    if check:
        onnx.checker.check_model(model)
    data = model.SerializeToString()
    if isinstance(onnx_path, (str, os.PathLike)):
        with open(onnx_path, "wb") as fh:
            fh.write(data)
    else:
        onnx_path.write(data)
    if log is not None:
        log(f"built EfficientNet-Lite0 ONNX graph in {time.perf_counter() - start:.2f}s")
    return model
