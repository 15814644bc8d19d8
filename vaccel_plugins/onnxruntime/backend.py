"""The onnxruntime backend: image classification, generic ONNX models, sgemm and minmax.

``classify`` runs the session's MODEL resource when one is registered (an ImageNet classifier
with one image input and 1000 outputs), else the default EfficientNet-Lite0 model, built once
into the user's cache folder. Inference sessions are cached by model content (the name and
sha256 of every file of the resource, so external weight files count) and shared by every
vAccel session that registers the same model; one is freed when the last session that used
it unregisters the resource or is released. The default classifier's session lives as long
as the process. A model is built outside the backend's lock: only callers of the same model
wait for it.

A MODEL resource is checked before onnxruntime opens it: a tensor whose external data is not
one of the resource's own files (an absolute or ``../`` location) is refused, so a guest
cannot make the host read its other files.

Execution providers: ``VACCEL_ORT_PROVIDERS`` (a comma list, e.g. ``cuda,cpu``) or the
``ort_providers`` key of ``--vaccel-config``; by default TensorRT, CUDA, CPU, keeping those
the installed onnxruntime build offers. What actually runs is read back from each inference
session (onnxruntime falls back to CPU when CUDA cannot start) and logged and reported.

Importing this module does not import onnxruntime.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vaccel_core import (
    Backend,
    BackendError,
    InvalidArgumentError,
    NotSupportedError,
    PluginType,
    Resource,
    ResourceType,
    Session,
)
from vaccel_core.batching import DEFAULT_MODEL as DEFAULT_MODEL_NAME
from vaccel_core.batching import BatchItem
from vaccel_core.config import Config, get_config
from vaccel_core.log import logger
from vaccel_core.ops import Op

from . import inference
from .inference import LoadedModel, RunSettings

INSTALL_HINT = "pip install 'pyvaccel[onnx]' or 'pyvaccel[onnx-gpu]'"
NUM_CLASSES = 1000

#: A one-node ONNX model (Identity on float[1]); an InferenceSession on it tells which
#: execution providers really run before any user model is loaded.
_PROBE_MODEL = bytes.fromhex(
    "0807120676616363656c3a3b0a100a017812017922084964656e74697479120570726f62655a0f0a0178120a"
    "0a08080112040a020801620f0a0179120a0a08080112040a02080142040a00100d"
)

_MAGIC = ((b"\x89PNG", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"))


def _image_suffix(image: bytes) -> str:
    head = bytes(image[:12])
    for magic, suffix in _MAGIC:
        if head.startswith(magic):
            return suffix
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    return ".img"


def output_image_name(image: bytes) -> str:
    """The name ``classify`` returns as its output image: ``classified-<sha256[:8]><ext>``.

    Upstream's jetson plugin writes an annotated copy of the image and returns its name; we
    return a name derived from the input's content and write no file.
    """
    return f"classified-{hashlib.sha256(image).hexdigest()[:8]}{_image_suffix(image)}"


def _model_file(resource: Resource) -> int:
    """Index of the resource's ONNX file: the first ``*.onnx``, else the first file."""
    for i, f in enumerate(resource.files):
        if f.name.lower().endswith(".onnx"):
            return i
    return 0


def model_key(resource: Resource) -> str:
    """The cache key of a MODEL resource's inference session: the name and sha256 of each of
    its files, in order (a graph with other external weights is another model)."""
    return "\n".join(f"{f.name}:{resource.sha256(i)}" for i, f in enumerate(resource.files))


def _label(resource: Resource) -> str:
    return f"MODEL resource {resource.id} ({resource.files[_model_file(resource)].name})"


class OnnxRuntimeBackend(Backend):
    """Runs classify, model_load/run/unload, sgemm and minmax with onnxruntime and numpy."""

    name = "onnxruntime"
    version = "0.1.0"
    type = PluginType.GPU | PluginType.CPU
    description = "onnxruntime: ImageNet classify (EfficientNet-Lite0), ONNX models, sgemm, minmax"
    #: Batched for models with a dynamic batch dimension (LoadedModel.batchable).
    batch_operations = frozenset({Op.IMAGE_CLASSIFY, Op.MODEL_RUN})

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._settings: dict[tuple[str, ...], RunSettings] = {}
        self._models: dict[str, LoadedModel] = {}  # model_key -> loaded model
        self._users: dict[str, set[tuple[int, int]]] = {}  # model_key -> {(session, resource)}
        self._keys: dict[tuple[int, int], str] = {}  # (session id, resource id) -> model_key
        #: One lock per model being built: callers of that model wait, nobody else does.
        self._building: dict[str, threading.Lock] = {}
        self._default_lock = threading.Lock()
        self._default: LoadedModel | None = None
        self._probe: LoadedModel | None = None
        #: Number of onnxruntime InferenceSessions created so far (cache checks use it).
        self.builds = 0

    # Availability and reporting ------------------------------------------------------------
    @classmethod
    def probe(cls) -> str | None:
        try:
            found = importlib.util.find_spec("onnxruntime") is not None
        except (ImportError, ValueError):
            found = False
        return None if found else f"onnxruntime is not installed ({INSTALL_HINT})"

    def details(self) -> dict[str, Any]:
        """The onnxruntime version, the providers requested and those actually running."""
        ort = inference.import_ort()
        settings = self._run_settings()
        with self._lock:
            loaded = [m for m in (self._default, *self._models.values()) if m is not None]
            if not loaded:
                loaded = [self._probe_model(settings)]
            in_use: list[str] = []
            for model in loaded:
                in_use += [p for p in model.providers if p not in in_use]
            return {
                "onnxruntime": ort.__version__,
                "providers_in_use": in_use,
                "providers_requested": list(settings.providers),
                "models_loaded": len(self._models) + (self._default is not None),
            }

    def providers_in_use(self) -> list[str]:
        """Execution providers of the inference sessions created so far (or of a probe one)."""
        return list(self.details()["providers_in_use"])

    def _probe_model(self, settings: RunSettings) -> LoadedModel:
        if self._probe is None:
            self._probe = inference.create_session(
                "probe", _PROBE_MODEL, settings, "a one-node probe model"
            )
        return self._probe

    def _run_settings(self, config: Config | None = None) -> RunSettings:
        """Settings from the environment or the configuration's ``ort_*`` keys (the session's
        configuration when there is one: the agent's ``--vaccel-config``)."""
        extra = (config or get_config()).extra
        key = tuple(
            os.environ.get(env) or extra.get(cfg) or ""
            for env, cfg in (
                (inference.PROVIDERS_ENV, "ort_providers"),
                (inference.THREADS_ENV, "ort_threads"),
                (inference.SPINNING_ENV, "ort_spinning"),
            )
        )
        with self._lock:
            settings = self._settings.get(key)
            if settings is None:
                settings = inference.read_settings(extra)
                self._settings[key] = settings
            return settings

    # Lifecycle -----------------------------------------------------------------------------
    def fini(self) -> None:
        with self._lock:
            self._models.clear()
            self._users.clear()
            self._keys.clear()
            self._default = None
            self._probe = None

    def session_release(self, session: Session) -> None:
        with self._lock:
            for sid, rid in [k for k in self._keys if k[0] == session.id]:
                self._drop_user(sid, rid)

    def resource_unregister(self, session: Session, resource: Resource) -> None:
        with self._lock:
            self._drop_user(session.id, resource.id)

    def _drop_user(self, sid: int, rid: int) -> None:
        key = self._keys.pop((sid, rid), None)
        if key is None:
            return
        users = self._users.get(key, set())
        users.discard((sid, rid))
        if not users:
            self._users.pop(key, None)
            model = self._models.pop(key, None)
            if model is not None:
                logger.info("onnxruntime: freed the inference session of %s", model.path.name)

    # Model cache ---------------------------------------------------------------------------
    def loaded_model(
        self, session: Session, resource: Resource, op: str = "model_load"
    ) -> LoadedModel:
        """The cached inference session of a MODEL resource, created on first use.

        The build runs outside the backend's lock, under a lock of its own model: callers of
        other models (and their classify/model_run) go on meanwhile."""
        key = model_key(resource)
        with self._lock:
            model = self._use(key, session, resource)
            if model is not None:
                return model
            building = self._building.setdefault(key, threading.Lock())
        with building:
            with self._lock:
                model = self._use(key, session, resource)
            if model is not None:
                return model
            try:
                index = _model_file(resource)
                paths = resource.local_paths()
                label = _label(resource)
                inference.check_external_data(op, label, paths[index], paths)
                model = self._build(key, paths[index], label, session.config)
                with self._lock:
                    self._models[key] = model
                    self._use(key, session, resource)
            finally:
                with self._lock:
                    if self._building.get(key) is building:
                        del self._building[key]
            return model

    def _use(self, key: str, session: Session, resource: Resource) -> LoadedModel | None:
        """The cached model of ``key``, noted as used by the resource; None if not built."""
        model = self._models.get(key)
        if model is not None:
            self._users.setdefault(key, set()).add((session.id, resource.id))
            self._keys[(session.id, resource.id)] = key
        return model

    def default_model(self, config: Config | None = None) -> LoadedModel:
        """The default classifier (EfficientNet-Lite0), built into the cache on first use."""
        if self._default is not None:
            return self._default
        with self._default_lock:
            model = self._default
            if model is None:
                from . import models

                try:
                    path = models.ensure_model(models.DEFAULT_MODEL)
                except models.ModelUnavailableError as exc:
                    raise NotSupportedError(
                        f"classify: the default model is unavailable: {exc}"
                    ) from exc
                except models.ModelError as exc:
                    raise BackendError(
                        f"classify: the default model failed to build: {exc}"
                    ) from exc
                model = self._build(
                    f"default:{models.DEFAULT_MODEL}", path, f"default model {path.name}", config
                )
                with self._lock:
                    self._default = model
            return model

    def _build(self, key: str, path: Path, label: str, config: Config | None) -> LoadedModel:
        start = time.perf_counter()
        model = inference.create_session(key, path, self._run_settings(config), label)
        with self._lock:
            self.builds += 1
        logger.info("onnxruntime: loaded %s in %.3fs", label, time.perf_counter() - start)
        return model

    # Operations ----------------------------------------------------------------------------
    def classify(self, session: Session, image: bytes) -> tuple[str, str]:
        model, label, _ = self._classifier(session)
        start = time.perf_counter_ns()
        batch = _preprocess(image)
        _record(session, "onnxruntime_preprocess", start)
        start = time.perf_counter_ns()
        outputs = model.run("classify", {model.inputs[0].name: batch})
        _record(session, "onnxruntime_inference", start)
        scores = np.asarray(next(iter(outputs.values())), dtype=np.float64).reshape(-1)
        return _top_tag(scores, label), output_image_name(image)

    def _classifier(self, session: Session) -> tuple[LoadedModel, str, str]:
        """The session's last registered MODEL resource, else the default model; checked to
        be an image classifier with 1000 outputs. Also its name for batch settings (the
        sha256 of its model file, or "default")."""
        mine = [r for r in session.resources if r.type == ResourceType.MODEL]
        if not mine:
            return self.default_model(session.config), "the default model", DEFAULT_MODEL_NAME
        resource = mine[-1]
        label = _label(resource)
        model = self.loaded_model(session, resource, "classify")
        if len(model.inputs) != 1:
            raise InvalidArgumentError(
                f"classify: {label} has {len(model.inputs)} inputs, expected 1 image input"
            )
        spec = model.inputs[0]
        probe = np.zeros((1, 3, 224, 224), dtype=np.float32)
        if not spec.accepts(probe):
            raise InvalidArgumentError(
                f"classify: {label}: input {spec.name!r} is {spec.describe()}, expected float32 "
                "of shape [batch, 3, 224, 224] (NCHW RGB, ImageNet-normalised)"
            )
        width = model.outputs[0].shape[-1] if model.outputs and model.outputs[0].shape else None
        if isinstance(width, int) and width != NUM_CLASSES:
            raise InvalidArgumentError(
                f"classify: {label}: output {model.outputs[0].name!r} is "
                f"{model.outputs[0].describe()}, expected {NUM_CLASSES} ImageNet classes"
            )
        return model, label, resource.sha256(_model_file(resource))

    def model_load(self, session: Session, resource: Resource) -> None:
        self.loaded_model(session, resource)

    def model_unload(self, session: Session, resource: Resource) -> None:
        with self._lock:
            self._drop_user(session.id, resource.id)

    def model_run(
        self,
        session: Session,
        resource: Resource,
        inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    ) -> dict[str, np.ndarray]:
        model = self.loaded_model(session, resource, "model_run")
        feed = inference.build_feed("model_run", model, _label(resource), inputs)
        return model.run("model_run", feed)

    # Batched execution (vaccel_core.batching) ------------------------------------------------
    def prepare_batch(self, session: Session, op: Op, args: tuple[Any, ...]) -> BatchItem | None:
        """classify and model_run of a model with a dynamic batch dimension: checked and
        preprocessed here, in the caller's thread; other models run alone (None)."""
        if op is Op.IMAGE_CLASSIFY:
            model, label, name = self._classifier(session)
            if not model.batchable:
                return None
            (image,) = args
            start = time.perf_counter_ns()
            array = _preprocess(image)
            _record(session, "onnxruntime_preprocess", start)
            signature = (model.inputs[0].name, array.dtype.str, array.shape[1:])
            return BatchItem(
                (model.key, signature),
                name,
                _Prepared(model, label, {model.inputs[0].name: array}, output_image_name(image)),
            )
        if op is Op.MODEL_RUN:
            resource, inputs = args
            model = self.loaded_model(session, resource, "model_run")
            label = _label(resource)
            feed = inference.build_feed("model_run", model, label, inputs)
            if not model.batchable:
                return None
            sizes = {a.shape[0] if a.ndim else None for a in feed.values()}
            size = sizes.pop() if len(sizes) == 1 else None
            if not size:  # inputs disagree on the batch size, or an empty batch: alone
                return None
            shapes = tuple((n, a.dtype.str, a.shape[1:]) for n, a in feed.items())
            name = resource.sha256(_model_file(resource))
            return BatchItem((model.key, shapes), name, _Prepared(model, label, feed), size)
        return None

    def run_batch(self, op: Op, items: Sequence[BatchItem]) -> list[Any]:
        """One inference for every item; outputs split back along the batch dimension."""
        prepared: list[_Prepared] = [item.data for item in items]
        model, label = prepared[0].model, prepared[0].label
        what = "classify" if op is Op.IMAGE_CLASSIFY else "model_run"
        if len(prepared) == 1:
            feed = prepared[0].feed
        else:
            feed = {n: np.concatenate([p.feed[n] for p in prepared]) for n in prepared[0].feed}
        outputs = model.run(what, feed)
        sizes = [item.size for item in items]
        total = sum(sizes)
        cuts = np.cumsum(sizes)[:-1]
        parts: dict[str, list[np.ndarray]] = {}
        for name, value in outputs.items():
            value = np.asarray(value)
            if value.ndim == 0 or value.shape[0] != total:
                raise BackendError(
                    f"{what}: {label}: output {name!r} has shape {tuple(value.shape)}, not "
                    f"{total} items along the batch dimension"
                )
            parts[name] = np.split(value, cuts)
        if op is Op.IMAGE_CLASSIFY:
            scores = np.asarray(next(iter(outputs.values())), dtype=np.float64)
            scores = scores.reshape(total, -1)
            return [
                (_top_tag(row, label), p.image_name)
                for row, p in zip(scores, prepared, strict=True)
            ]
        return [{name: parts[name][i] for name in parts} for i in range(len(items))]

    def sgemm(
        self,
        session: Session,
        a: np.ndarray,
        b: np.ndarray,
        c: np.ndarray | None,
        alpha: float,
        beta: float,
    ) -> np.ndarray:
        out = np.matmul(a, b, dtype=np.float32)
        if alpha != 1.0:
            out *= np.float32(alpha)
        if c is not None and beta != 0.0:
            out += np.float32(beta) * c
        return out

    def minmax(
        self, session: Session, data: np.ndarray, low_threshold: int, high_threshold: int
    ) -> tuple[np.ndarray, float, float]:
        clipped = np.clip(data, low_threshold, high_threshold)
        return clipped, float(data.min()), float(data.max())


@dataclass
class _Prepared:
    """A call prepared for a batch: its model and its checked, preprocessed inputs."""

    model: LoadedModel
    label: str
    feed: dict[str, np.ndarray]
    image_name: str = ""  # classify: the output image name


def _preprocess(image: bytes) -> np.ndarray:
    """The image as the classifier's input [1, 3, 224, 224]; a bad image is the caller's."""
    from . import imagenet

    try:
        return imagenet.preprocess(image)
    except ValueError as exc:
        reason = str(exc).removeprefix("image: ")
        raise InvalidArgumentError(f"classify: argument 'image': {reason}") from exc


def _top_tag(scores: np.ndarray, label: str) -> str:
    """The top-1 tag of one image's scores (logits, or probabilities from the graph)."""
    from . import imagenet

    if scores.size != NUM_CLASSES:
        raise InvalidArgumentError(
            f"classify: {label} returned {scores.size} scores, expected {NUM_CLASSES} "
            "ImageNet classes"
        )
    probs = scores if _is_distribution(scores) else imagenet.softmax(scores)
    index = int(np.argmax(probs))
    return imagenet.format_tag(probs[index], index)


def _is_distribution(scores: np.ndarray) -> bool:
    """Whether a model already returned probabilities (softmax inside the graph)."""
    return bool(scores.min() >= 0.0 and abs(scores.sum() - 1.0) < 1e-3)


def _record(session: Session, region: str, start_ns: int) -> None:
    if session.profiler is not None:
        session.profiler.record(region, time.perf_counter_ns() - start_ns)
