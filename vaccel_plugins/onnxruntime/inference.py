"""onnxruntime inference sessions: execution providers, session options, signature checks.

Everything that touches ``onnxruntime`` itself lives here and imports it on first use, so
that importing the backend module stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vaccel_core.errors import InvalidArgumentError, NotSupportedError
from vaccel_core.log import logger

#: Default execution providers, best first; filtered by what the installed build offers.
DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PROVIDERS_ENV = "VACCEL_ORT_PROVIDERS"
THREADS_ENV = "VACCEL_ORT_THREADS"
SPINNING_ENV = "VACCEL_ORT_SPINNING"

#: Short names accepted in VACCEL_ORT_PROVIDERS besides the full provider names.
_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
}

#: ONNX tensor element types (as onnxruntime spells them) -> numpy dtypes.
_DTYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
}


def import_ort() -> Any:
    """Import onnxruntime, or raise NotSupportedError saying how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise NotSupportedError(
            "onnxruntime is not installed (pip install 'pyvaccel[onnx]' or "
            f"'pyvaccel[onnx-gpu]'): {exc}"
        ) from exc
    return onnxruntime


def _canonical(name: str, known: Sequence[str]) -> str:
    raw = name.strip()
    alias = _ALIASES.get(raw.lower())
    if alias:
        return alias
    for candidate in known:
        if candidate.lower() in (raw.lower(), f"{raw.lower()}executionprovider"):
            return candidate
    raise InvalidArgumentError(
        f"onnxruntime: unknown execution provider {raw!r} in {PROVIDERS_ENV} / ort_providers "
        f"(known: {', '.join(known)}; short names: {', '.join(sorted(_ALIASES))})"
    )


def choose_providers(
    wanted: str | None, available: Sequence[str], known: Sequence[str]
) -> list[str]:
    """The providers to ask for, in order: ``wanted`` (a comma list) or the defaults, keeping
    only those this onnxruntime build offers; CPU when none is left."""
    if wanted and wanted.strip():
        names = [_canonical(n, known) for n in wanted.split(",") if n.strip()]
    else:
        names = list(DEFAULT_PROVIDERS)
    chosen: list[str] = []
    for name in names:
        if name in chosen:
            continue
        if name in available:
            chosen.append(name)
        elif wanted:
            logger.warning(
                "onnxruntime: execution provider %s is not in this build (available: %s)",
                name,
                ", ".join(available),
            )
    if not chosen:
        logger.warning("onnxruntime: none of %s is available; using CPUExecutionProvider", names)
        chosen = ["CPUExecutionProvider"]
    return chosen


@dataclass
class RunSettings:
    """How inference sessions are created: providers and threading."""

    providers: list[str]
    intra_op_threads: int = 0  # 0: onnxruntime's choice (one per physical core)
    spinning: bool = True


def _int_setting(value: str | None, name: str) -> int:
    if value is None or not value.strip():
        return 0
    try:
        number = int(value)
    except ValueError:
        raise InvalidArgumentError(
            f"onnxruntime: {name}: expected an integer, got {value!r}"
        ) from None
    if number < 0:
        raise InvalidArgumentError(f"onnxruntime: {name}: expected >= 0, got {number}")
    return number


def read_settings(extra: Mapping[str, str], env: Mapping[str, str] | None = None) -> RunSettings:
    """Settings from the environment (VACCEL_ORT_*) or ``Config.extra`` (``ort_*`` keys of
    ``--vaccel-config``); the environment wins."""
    env = os.environ if env is None else env
    ort = import_ort()
    wanted = env.get(PROVIDERS_ENV) or extra.get("ort_providers")
    providers = choose_providers(wanted, ort.get_available_providers(), ort.get_all_providers())
    threads = _int_setting(env.get(THREADS_ENV) or extra.get("ort_threads"), "threads")
    spin = (env.get(SPINNING_ENV) or extra.get("ort_spinning") or "1").strip().lower()
    return RunSettings(providers, threads, spin not in {"0", "false", "no", "off"})


@dataclass
class TensorSpec:
    """One input or output of a model: name, numpy dtype (None if not a tensor) and shape."""

    name: str
    onnx_type: str
    dtype: np.dtype[Any] | None
    shape: list[int | str | None]

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        kind = self.dtype.name if self.dtype is not None else self.onnx_type
        return f"{kind} of shape [{dims}]"

    def accepts(self, array: np.ndarray) -> bool:
        if self.dtype is None or array.dtype != self.dtype or array.ndim != len(self.shape):
            return False
        return all(
            not isinstance(d, int) or d == n for d, n in zip(self.shape, array.shape, strict=True)
        )


def _spec(arg: Any) -> TensorSpec:
    shape = [d if isinstance(d, (int, str)) else None for d in (arg.shape or [])]
    shape = [None if isinstance(d, int) and d < 0 else d for d in shape]
    return TensorSpec(arg.name, arg.type, _DTYPES.get(arg.type), shape)


@dataclass
class LoadedModel:
    """An onnxruntime InferenceSession and what it was created from."""

    key: str
    path: Path
    session: Any
    providers: list[str]
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)

    @property
    def batchable(self) -> bool:
        """Whether the graph has a dynamic batch dimension: every input and output is a
        tensor whose first dimension is symbolic (``batch``) or unknown, not a number."""
        specs = [*self.inputs, *self.outputs]
        return bool(self.inputs) and all(
            s.dtype is not None and s.shape and not isinstance(s.shape[0], int) for s in specs
        )

    def run(self, op: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the session; onnxruntime's own errors become vAccel errors naming ``op``."""
        try:
            results = self.session.run(None, feed)
        except Exception as exc:
            kind = type(exc).__name__
            message = f"{op}: onnxruntime failed to run {self.path.name}: {kind}: {exc}"
            if kind in {"InvalidArgument", "INVALID_ARGUMENT"}:
                raise InvalidArgumentError(message) from exc
            raise
        return {spec.name: value for spec, value in zip(self.outputs, results, strict=True)}


def tensorrt_cache_dir() -> Path:
    """Where TensorRT keeps the engines it builds (beside the models cache), so that a model
    is compiled once per machine rather than once per process."""
    from .models import cache_dir

    return cache_dir().parent / "tensorrt"


def provider_arguments(providers: Sequence[str]) -> list[str | tuple[str, dict[str, str]]]:
    """Providers as InferenceSession takes them, with options where they matter: TensorRT
    caches its engines on disk (when the folder can be created)."""
    out: list[str | tuple[str, dict[str, str]]] = []
    for name in providers:
        if name == "TensorrtExecutionProvider":
            folder = tensorrt_cache_dir()
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                logger.warning("onnxruntime: no TensorRT engine cache in %s: %s", folder, exc)
            else:
                options = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(folder)}
                out.append((name, options))
                continue
        out.append(name)
    return out


def _graph_tensors(graph: Any, where: str) -> Iterator[tuple[str, Any]]:
    """Every tensor of a graph with what it is: initializers (dense and sparse) and tensors
    in node attributes, subgraphs (If, Loop, Scan bodies) included."""
    for tensor in graph.initializer:
        yield f"initializer {tensor.name!r}{where}", tensor
    for sparse in graph.sparse_initializer:
        name = f"sparse initializer {sparse.values.name!r}{where}"
        yield name, sparse.values
        yield name, sparse.indices
    for node in graph.node:
        yield from _node_tensors(node, where)


def _node_tensors(node: Any, where: str) -> Iterator[tuple[str, Any]]:
    for attr in node.attribute:
        what = f"attribute {attr.name!r} of node {node.name or node.op_type!r}{where}"
        if attr.HasField("t"):
            yield what, attr.t
        for tensor in attr.tensors:
            yield what, tensor
        sparse = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
        for sp in [*sparse, *attr.sparse_tensors]:
            yield what, sp.values
            yield what, sp.indices
        inner = f" (in a subgraph of node {node.name or node.op_type!r}{where})"
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g, inner)
        for graph in attr.graphs:
            yield from _graph_tensors(graph, inner)


def _model_tensors(model: Any) -> Iterator[tuple[str, Any]]:
    yield from _graph_tensors(model.graph, "")
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node, f" (in function {function.name!r})")
    for info in model.training_info:
        yield from _graph_tensors(info.initialization, " (in training info)")
        yield from _graph_tensors(info.algorithm, " (in training info)")


def check_external_data(op: str, label: str, model_path: Path, files: Sequence[Path]) -> None:
    """Refuse a model whose tensors keep their data outside the resource's own files.

    An ONNX tensor may name an external file (``data_location`` EXTERNAL, key ``location``)
    that onnxruntime opens relative to the model's folder; an absolute or ``../`` location
    would let whoever uploads the model read any file of the host. Each location must be
    the plain name of one of ``files`` (the resource's files, side by side with the model).
    """
    try:
        import onnx
    except ImportError as exc:
        raise NotSupportedError(
            f"{op}: {label}: the onnx package is needed to check the model before loading it "
            f"(pip install 'pyvaccel[onnx]' or 'pyvaccel[onnx-gpu]'): {exc}"
        ) from exc
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:
        raise InvalidArgumentError(
            f"{op}: onnxruntime cannot load {label} as an ONNX model: {type(exc).__name__}: {exc}"
        ) from exc
    folder = model_path.parent
    own = {path.name: path for path in files}
    names = ", ".join(own)
    for what, tensor in _model_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        plain = (
            location in own
            and not os.path.isabs(location)
            and "/" not in location
            and "\\" not in location
            and ".." not in location
        )
        if not plain:
            raise InvalidArgumentError(
                f"{op}: {label}: {what} keeps its data in {location!r}; external data must be "
                f"one of the resource's own files: {names}"
            )
        if not (folder / location).exists() or not os.path.samefile(
            folder / location, own[location]
        ):
            raise InvalidArgumentError(
                f"{op}: {label}: {what} keeps its data in {location!r}, which is not beside "
                f"{model_path.name}; register the model's files from one folder"
            )


def create_session(key: str, model: Path | bytes, settings: RunSettings, label: str) -> LoadedModel:
    """Create an InferenceSession on ``settings.providers`` and log the providers that
    onnxruntime actually chose (it falls back to CPU silently when CUDA cannot start)."""
    ort = import_ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = settings.intra_op_threads
    options.log_severity_level = 3  # errors only: provider fallback is reported by us, below
    if not settings.spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    try:
        session = ort.InferenceSession(
            source, sess_options=options, providers=provider_arguments(settings.providers)
        )
    except Exception as exc:
        raise InvalidArgumentError(
            f"onnxruntime cannot load {label} as an ONNX model: {type(exc).__name__}: {exc}"
        ) from exc
    in_use = list(session.get_providers())
    logger.info(
        "onnxruntime: %s runs on %s (requested %s)",
        label,
        ", ".join(in_use),
        ", ".join(settings.providers),
    )
    path = model if isinstance(model, Path) else Path(label)
    return LoadedModel(
        key,
        path,
        session,
        in_use,
        [_spec(a) for a in session.get_inputs()],
        [_spec(a) for a in session.get_outputs()],
    )


def build_feed(
    op: str,
    model: LoadedModel,
    label: str,
    inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray],
) -> dict[str, np.ndarray]:
    """Match arrays to the model's inputs (by name, or by position) and check dtype and
    shape; errors say what the model expects and what was given."""
    specs = model.inputs
    names = ", ".join(repr(s.name) for s in specs)
    if isinstance(inputs, Mapping):
        by_name = {s.name: s for s in specs}
        for name in inputs:
            if name not in by_name:
                raise InvalidArgumentError(
                    f"{op}: input {name!r}: not an input of {label} (its inputs: {names})"
                )
        missing = [s for s in specs if s.name not in inputs]
        if missing:
            s = missing[0]
            raise InvalidArgumentError(
                f"{op}: input {s.name!r}: missing, expected {s.describe()} (inputs of {label}: "
                f"{names})"
            )
        pairs = [(s, inputs[s.name]) for s in specs]
    else:
        if len(inputs) != len(specs):
            raise InvalidArgumentError(
                f"{op}: argument 'inputs': expected {len(specs)} arrays for the inputs of "
                f"{label} ({names}), got {len(inputs)}"
            )
        pairs = list(zip(specs, inputs, strict=True))
    feed: dict[str, np.ndarray] = {}
    for spec, array in pairs:
        if spec.dtype is None:
            raise NotSupportedError(
                f"{op}: input {spec.name!r} of {label} is a {spec.onnx_type}; only tensor inputs "
                "are supported"
            )
        if not spec.accepts(array):
            raise InvalidArgumentError(
                f"{op}: input {spec.name!r}: expected {spec.describe()}, got {array.dtype} "
                f"{tuple(array.shape)}"
            )
        feed[spec.name] = array
    return feed
