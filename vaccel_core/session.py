"""Sessions: the handle through which a program runs operations, as upstream's vaccel_session."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .backend import Backend
from .batching import Batcher, batcher_for
from .config import Config, get_config
from .dispatch import find_backend, select_backends
from .errors import BackendError, InvalidArgumentError, SessionError, VaccelError
from .log import ensure_logging, logger
from .ops import CATALOG, Op, OpSpec, check_result, resolve_op
from .plugins import PluginRegistry, get_registry
from .profiling import Profiler, Region
from .resource import Resource
from .validate import check_args

_ids = itertools.count(1)
_ids_lock = threading.Lock()


class Session:
    """A vAccel session: pick backends once, then run operations through them.

    ``flags`` is a hint with the upstream plugin-type bits: ``PluginType.REMOTE`` sends the
    session to the remote (rpc) backend; ``PluginType.GPU`` prefers GPU backends; 0 uses the
    configured order. Use it as a context manager, or call :meth:`release`.
    """

    def __init__(
        self,
        flags: int = 0,
        *,
        config: Config | None = None,
        registry: PluginRegistry | None = None,
        batcher: Batcher | None = None,
    ) -> None:
        self.config = config or get_config()
        #: Joins this session's batchable calls with other sessions' (None: off); by default
        #: the process's batcher for the configuration's settings (vaccel_core.batching).
        self.batcher = batcher or batcher_for(self.config)
        ensure_logging(self.config)
        with _ids_lock:
            self.id: int = next(_ids)
        self.flags = int(flags)
        self._registry = registry or get_registry()
        self._lock = threading.RLock()
        self._closed = True
        self._resources: dict[int, Resource] = {}
        #: Each operation resolved so far: its backend's method, its profiling region name, its
        #: catalog entry and the backend's name (results are checked against the catalog).
        self._table: dict[Op, tuple[Callable[..., Any], str, OpSpec, str]] = {}
        self._owner: dict[Op, Backend] = {}
        self.profiler: Profiler | None = Profiler() if self.config.profiling else None
        #: Free-form per-session data for embedding code (the agent records its client here).
        self.meta: dict[str, Any] = {}
        self.backends: list[Backend] = select_backends(self._registry, self.config, self.flags)
        started: list[Backend] = []
        try:
            for backend in self.backends:
                backend.session_init(self)
                started.append(backend)
        except BaseException:
            for backend in reversed(started):
                self._quietly(backend.session_release, backend)
            raise
        self._closed = False
        logger.info(
            "session %d created with backends %s", self.id, ", ".join(b.name for b in self.backends)
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Session {self.id} {state} backends={[b.name for b in self.backends]}>"

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def closed(self) -> bool:
        return self._closed

    # Lifecycle -----------------------------------------------------------------------------
    def release(self) -> None:
        """Unregister every resource, release the session in each backend. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for resource in list(self._resources.values()):
                self._drop_resource(resource)
            for backend in reversed(self.backends):
                self._quietly(backend.session_release, backend, self)
            self._table.clear()
        if self.profiler is not None:
            logger.info("session %d profile:\n%s", self.id, self.profiler.format())
        logger.info("session %d released", self.id)

    def _quietly(self, fn: Callable[..., None], backend: Backend, *args: Any) -> None:
        try:
            fn(*args) if args else fn(self)
        except Exception:
            logger.exception(
                "session %d: backend %r failed to %s",
                self.id,
                backend.name,
                getattr(fn, "__name__", "clean up"),
            )

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise SessionError(f"{what}: session {self.id} is released")

    # Resources -----------------------------------------------------------------------------
    def register_resource(self, resource: Resource) -> None:
        """Register a resource with this session and tell its backends."""
        with self._lock:
            self._check_open("register resource")
            if resource.id in self._resources:
                raise InvalidArgumentError(
                    f"register resource: resource {resource.id} is already registered with "
                    f"session {self.id}"
                )
            done: list[Backend] = []
            try:
                for backend in self.backends:
                    backend.resource_register(self, resource)
                    done.append(backend)
            except BaseException:
                for backend in done:
                    self._quietly(backend.resource_unregister, backend, self, resource)
                raise
            self._resources[resource.id] = resource
            resource._attach(self)

    def unregister_resource(self, resource: Resource) -> None:
        """Unregister a resource; its backends free what they cached for it."""
        with self._lock:
            self._check_open("unregister resource")
            if resource.id not in self._resources:
                raise InvalidArgumentError(
                    f"unregister resource: resource {resource.id} is not registered with "
                    f"session {self.id}"
                )
            self._drop_resource(resource)

    def _drop_resource(self, resource: Resource) -> None:
        for backend in reversed(self.backends):
            self._quietly(backend.resource_unregister, backend, self, resource)
        self._resources.pop(resource.id, None)
        resource._detach(self)

    def has_resource(self, resource: Resource) -> bool:
        return self._resources.get(resource.id) is resource

    @property
    def resources(self) -> list[Resource]:
        return list(self._resources.values())

    # Dispatch ------------------------------------------------------------------------------
    def backend_for(self, op: Op) -> Backend:
        """The backend that runs an operation in this session."""
        backend = self._owner.get(op)
        if backend is None:
            self._resolve(op)
            backend = self._owner[op]
        return backend

    def _resolve(self, op: Op) -> tuple[Callable[..., Any], str, OpSpec, str]:
        backend = find_backend(self.backends, op)
        spec = CATALOG[op]
        entry = (getattr(backend, spec.method), op.value, spec, backend.name)
        self._owner[op] = backend
        self._table[op] = entry
        return entry

    def _invoke(self, op: Op, args: Sequence[Any]) -> Any:
        if self._closed:
            raise SessionError(f"{CATALOG[op].method}: session {self.id} is released")
        fn, region, spec, name = self._table.get(op) or self._resolve(op)
        start = time.perf_counter_ns() if self.profiler is not None else 0
        try:
            if self.batcher is None:
                result = fn(self, *args)
            else:
                result = self.batcher.call(self, self._owner[op], op, args, lambda: fn(self, *args))
        except VaccelError:
            raise
        except Exception as exc:
            backend = self._owner[op]
            raise BackendError(
                f"{CATALOG[op].method}: backend {backend.name!r} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        finally:
            if self.profiler is not None:
                self.profiler.record(region, time.perf_counter_ns() - start)
        if result is not None or spec.results:
            check_result(spec, result, name)
        return result

    def _call(self, op: Op, args: Sequence[Any]) -> Any:
        spec = CATALOG[op]
        if spec.params or args:
            args = check_args(spec, args, self)
        return self._invoke(op, args)

    def genop(self, op: Op | str | int, *args: Any) -> Any:
        """Run any operation by name (``"image_classify"``, ``"classify"``) or upstream code."""
        return self._call(resolve_op(op), args)

    def profile(self) -> list[Region]:
        """Timing regions recorded so far (empty unless VACCEL_PROFILING_ENABLED=1)."""
        return self.profiler.regions() if self.profiler is not None else []

    # The operation catalog -----------------------------------------------------------------
    def noop(self) -> None:
        """Do nothing through the backend (debugging, overhead measurement)."""
        self._invoke(Op.NOOP, ())

    def exec(
        self, library: str, fn_symbol: str, read: Sequence[bytes], write_sizes: Sequence[int]
    ) -> list[bytes]:
        """Call ``fn_symbol`` of a shared library with input buffers; returns output buffers."""
        return self._call(Op.EXEC, (library, fn_symbol, read, write_sizes))

    def exec_with_resource(
        self, resource: Resource, fn_symbol: str, read: Sequence[bytes], write_sizes: Sequence[int]
    ) -> list[bytes]:
        """Like :meth:`exec` with a registered LIB resource."""
        return self._call(Op.EXEC_WITH_RESOURCE, (resource, fn_symbol, read, write_sizes))

    def classify(self, image: bytes) -> tuple[str, str]:
        """Classify an image; returns (tags, output image name)."""
        return tuple(self._call(Op.IMAGE_CLASSIFY, (image,)))

    def detect(self, image: bytes) -> str:
        """Detect objects; returns the output image name."""
        return self._call(Op.IMAGE_DETECT, (image,))

    def segment(self, image: bytes) -> str:
        """Segment an image; returns the output image name."""
        return self._call(Op.IMAGE_SEGMENT, (image,))

    def pose(self, image: bytes) -> str:
        """Estimate poses; returns the output image name."""
        return self._call(Op.IMAGE_POSE, (image,))

    def depth(self, image: bytes) -> str:
        """Estimate depth; returns the output image name."""
        return self._call(Op.IMAGE_DEPTH, (image,))

    def tf_model_load(self, resource: Resource) -> None:
        self._call(Op.TF_MODEL_LOAD, (resource,))

    def tf_model_unload(self, resource: Resource) -> None:
        self._call(Op.TF_MODEL_UNLOAD, (resource,))

    def tf_model_run(
        self,
        resource: Resource,
        in_nodes: Sequence[str],
        in_tensors: Sequence[np.ndarray],
        out_nodes: Sequence[str],
    ) -> list[np.ndarray]:
        return self._call(Op.TF_MODEL_RUN, (resource, in_nodes, in_tensors, out_nodes))

    def tflite_model_load(self, resource: Resource) -> None:
        self._call(Op.TFLITE_MODEL_LOAD, (resource,))

    def tflite_model_unload(self, resource: Resource) -> None:
        self._call(Op.TFLITE_MODEL_UNLOAD, (resource,))

    def tflite_model_run(
        self, resource: Resource, in_tensors: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        return self._call(Op.TFLITE_MODEL_RUN, (resource, in_tensors))

    def torch_model_load(self, resource: Resource) -> None:
        self._call(Op.TORCH_MODEL_LOAD, (resource,))

    def torch_model_run(
        self, resource: Resource, in_tensors: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        return self._call(Op.TORCH_MODEL_RUN, (resource, in_tensors))

    def torch_sgemm(self, a: np.ndarray, b: np.ndarray, c: np.ndarray | None = None) -> np.ndarray:
        return self._call(Op.TORCH_SGEMM, (a, b, c))

    def sgemm(
        self,
        a: np.ndarray,
        b: np.ndarray,
        c: np.ndarray | None = None,
        alpha: float = 1.0,
        beta: float = 0.0,
    ) -> np.ndarray:
        """``alpha * a @ b + beta * c`` in float32 (a: m-by-k, b: k-by-n, c: m-by-n)."""
        return self._call(Op.BLAS_SGEMM, (a, b, c, alpha, beta))

    def fpga_arraycopy(self, a: np.ndarray) -> np.ndarray:
        return self._call(Op.FPGA_ARRAYCOPY, (a,))

    def fpga_mmult(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._call(Op.FPGA_MMULT, (a, b))

    def fpga_parallel(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return tuple(self._call(Op.FPGA_PARALLEL, (a, b)))

    def fpga_vectoradd(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._call(Op.FPGA_VECTORADD, (a, b))

    def minmax(
        self, data: np.ndarray, low_threshold: int, high_threshold: int
    ) -> tuple[np.ndarray, float, float]:
        """Clip ``data`` (float64) to the thresholds; returns (clipped, min, max of data)."""
        return tuple(self._call(Op.MINMAX, (data, low_threshold, high_threshold)))

    def opencv(self, args: Sequence[bytes], nr_outputs: int) -> list[bytes]:
        return self._call(Op.OPENCV, (args, nr_outputs))

    def model_load(self, resource: Resource) -> None:
        """Load a MODEL resource (e.g. an ONNX file) ahead of ``model_run``."""
        self._call(Op.MODEL_LOAD, (resource,))

    def model_unload(self, resource: Resource) -> None:
        self._call(Op.MODEL_UNLOAD, (resource,))

    def model_run(
        self,
        resource: Resource,
        inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray] | np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Run a model on numpy arrays (by input name, or by position); returns outputs by name."""
        return self._call(Op.MODEL_RUN, (resource, inputs))
