"""The backend conformance kit: a pytest base class a backend author runs in their own tests.

::

    # tests/test_conformance.py of your backend package
    from vaccel_core.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        backend = "mybackend"          # the name your ``vaccel.backends`` entry point registers

Every operation the backend declares (the catalog methods it overrides) is called with valid
sample arguments (:func:`sample_args`) and its results are checked against the catalog (types,
dtypes, dimensions and, where the arguments fix them, shapes: :func:`check_result`); then with
invalid arguments, which must raise a :class:`~vaccel_core.errors.VaccelError` (a backend that
crashes with another exception fails); then ``init``/``fini`` and the session and resource
hooks; then several threads, each with its own session; then the same backend behind a real
``vaccel-agent`` process, reached through the rpc backend (skipped, with the reason, when the
``remote`` extra is not installed). A backend that declares ``batch_operations`` is also run in
batches (:meth:`BackendConformance.check_batching`, part of ``test_valid_arguments``): each
call of a batch must get exactly the result it gets alone (arrays within :data:`BATCH_ATOL`),
in order; override :meth:`BackendConformance.batch_args` to give distinct calls that batch.

Override :meth:`BackendConformance.sample_args` (real models, real images) and
:meth:`BackendConformance.invalid_args` (calls that pass the catalog's checks but that your
backend must refuse), or set ``skip_ops`` (operation -> reason) for operations the kit cannot
call here. ``plugin`` (a module or object with a ``vaccel_register_backends`` hookimpl) or
``backend_class`` registers the backend without an installed entry point (the agent part then
needs the entry point and is skipped without it).

:func:`new_backend` writes a new backend project from the template (see
``vaccel_core/templates/backend/README.md``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from importlib import resources as ir
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .backend import Backend
from .config import Config
from .errors import BackendError, VaccelError
from .hookspecs import hookimpl
from .ops import CATALOG, Kind, Op, OpSpec, Param, ResourceType
from .plugins import BACKEND_GROUP, PluginRegistry
from .resource import Resource
from .session import Session

__all__ = [
    "BATCH_ATOL",
    "PNG_1PX",
    "PNG_32PX",
    "AgentProcess",
    "BackendConformance",
    "check_call_refused",
    "check_result",
    "missing_remote_extra",
    "new_backend",
    "sample_args",
    "sample_resources",
    "start_agent",
]

#: A valid one-pixel PNG image.
PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


def _png(width: int, height: int, green: int = 128, blue: int = 64) -> bytes:
    """An RGB PNG image of a horizontal red gradient over constant green and blue."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = bytes(v for x in range(width) for v in (x * 255 // max(width - 1, 1), green, blue))
    raw = b"".join(b"\x00" + row for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


#: A valid 32x32 RGB PNG image: the kit's sample image (large enough for real classifiers).
PNG_32PX = _png(32, 32)


# Samples -----------------------------------------------------------------------------------------
def sample_resources(session: Session) -> dict[ResourceType, Resource]:
    """One registered resource of each type (their bytes are placeholders, not real models)."""
    out = {}
    for rtype in ResourceType:
        res = Resource.from_buffer(f"{rtype.name} bytes".encode(), rtype, name=f"{rtype.name}.bin")
        res.register(session)
        out[rtype] = res
    return out


def sample_args(
    op: Op, resources: Mapping[ResourceType, Resource], image: bytes = PNG_32PX
) -> tuple[Any, ...]:
    """Arguments that pass the catalog's validation for ``op`` (``image`` for the image
    operations)."""
    model = resources[ResourceType.MODEL]
    f32 = np.arange(6, dtype=np.float32)
    m23 = f32.reshape(2, 3)
    m32 = f32.reshape(3, 2)
    table: dict[Op, tuple[Any, ...]] = {
        Op.NOOP: (),
        Op.EXEC: ("libmytestlib.so", "mytestfunc", [b"\x01\x00\x00\x00"], [4]),
        Op.EXEC_WITH_RESOURCE: (resources[ResourceType.LIB], "mytestfunc", [b"abc"], [8]),
        Op.IMAGE_CLASSIFY: (image,),
        Op.IMAGE_DETECT: (image,),
        Op.IMAGE_SEGMENT: (image,),
        Op.IMAGE_POSE: (image,),
        Op.IMAGE_DEPTH: (image,),
        Op.TF_MODEL_LOAD: (model,),
        Op.TF_MODEL_UNLOAD: (model,),
        Op.TF_MODEL_RUN: (model, ["in"], [m23], ["out"]),
        Op.TFLITE_MODEL_LOAD: (model,),
        Op.TFLITE_MODEL_UNLOAD: (model,),
        Op.TFLITE_MODEL_RUN: (model, [m23]),
        Op.TORCH_MODEL_LOAD: (model,),
        Op.TORCH_MODEL_RUN: (model, [m23, np.ones(3, dtype=np.int64)]),
        Op.TORCH_SGEMM: (m23, m32, np.ones((2, 2), dtype=np.float32)),
        Op.BLAS_SGEMM: (m23, m32, np.ones((2, 2), dtype=np.float32), 2.0, 0.5),
        Op.FPGA_ARRAYCOPY: (np.arange(5, dtype=np.int32),),
        Op.FPGA_MMULT: (m23, m32),
        Op.FPGA_PARALLEL: (f32, f32),
        Op.FPGA_VECTORADD: (f32, f32),
        Op.MINMAX: (np.linspace(-5, 5, 11), -2, 3),
        Op.OPENCV: ([b"arg0", b"arg1"], 2),
        Op.MODEL_LOAD: (model,),
        Op.MODEL_UNLOAD: (model,),
        Op.MODEL_RUN: (model, {"x": m23}),
    }
    return table[op]


# Result checks -----------------------------------------------------------------------------------
_LISTS: dict[Kind, type | tuple[type, ...]] = {
    Kind.BYTES_LIST: (bytes, bytearray, memoryview),
    Kind.INT_LIST: int,
    Kind.STR_LIST: str,
}


def _what(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__


def _check_value(where: str, param: Param, value: Any) -> None:
    kind = param.kind
    if kind is Kind.TENSOR:
        if not isinstance(value, np.ndarray):
            raise AssertionError(f"{where}: expected a numpy array, got {_what(value)}")
        if param.dtype is not None and value.dtype != np.dtype(param.dtype):
            raise AssertionError(f"{where}: expected dtype {param.dtype}, got {_what(value)}")
        if param.ndim is not None and value.ndim != param.ndim:
            raise AssertionError(f"{where}: expected {param.ndim} dimensions, got {_what(value)}")
    elif kind is Kind.TENSORS:
        if not isinstance(value, (list, tuple)):
            raise AssertionError(f"{where}: expected a list of numpy arrays, got {_what(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, np.ndarray):
                raise AssertionError(f"{where}[{i}]: expected a numpy array, got {_what(item)}")
    elif kind is Kind.NAMED_TENSORS:
        if not isinstance(value, dict):
            raise AssertionError(f"{where}: expected a dict name -> array, got {_what(value)}")
        for key, item in value.items():
            if not isinstance(key, str) or not isinstance(item, np.ndarray):
                raise AssertionError(
                    f"{where}[{key!r}]: expected str -> numpy array, got "
                    f"{_what(key)} -> {_what(item)}"
                )
    elif kind in _LISTS:
        if not isinstance(value, (list, tuple)):
            raise AssertionError(f"{where}: expected a list, got {_what(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, _LISTS[kind]) or isinstance(item, bool):
                raise AssertionError(
                    f"{where}[{i}]: expected {kind.value} items, got {_what(item)}"
                )
    elif kind is Kind.BYTES:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise AssertionError(f"{where}: expected bytes, got {_what(value)}")
    elif kind is Kind.STR:
        if not isinstance(value, str):
            raise AssertionError(f"{where}: expected str, got {_what(value)}")
    elif kind is Kind.INT:
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise AssertionError(f"{where}: expected int, got {_what(value)}")
    elif kind is Kind.FLOAT:
        if not isinstance(value, (float, int, np.floating, np.integer)) or isinstance(value, bool):
            raise AssertionError(f"{where}: expected float, got {_what(value)}")
    elif kind is Kind.RESOURCE and not isinstance(value, Resource):
        raise AssertionError(f"{where}: expected a Resource, got {_what(value)}")


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, np.ndarray) else None


def _expected_shapes(op: Op, args: tuple[Any, ...]) -> dict[int, tuple[int, ...] | None]:
    """Result index -> shape the arguments fix (only for operations where they do)."""
    if op in (Op.BLAS_SGEMM, Op.TORCH_SGEMM, Op.FPGA_MMULT):
        a, b = _shape(args[0]), _shape(args[1])
        return {0: (a[0], b[1]) if a and b else None}
    if op in (Op.FPGA_ARRAYCOPY, Op.FPGA_VECTORADD, Op.MINMAX):
        return {0: _shape(args[0])}
    if op is Op.FPGA_PARALLEL:
        return {0: _shape(args[0]), 1: _shape(args[0])}
    return {}


def check_result(op: Op | str, result: Any, args: tuple[Any, ...] = ()) -> None:
    """Raise AssertionError, naming the operation and result, unless ``result`` is what the
    catalog says ``op`` returns: None for no results, the value for one, a tuple for more; each
    of the right type, dtype and dimensions, and of the shape ``args`` fix (sgemm's ``m x n``,
    element-wise results the shape of their input, opencv's ``nr_outputs`` buffers, exec's
    ``write_sizes``)."""
    op = op if isinstance(op, Op) else Op(op)
    spec: OpSpec = CATALOG[op]
    name = spec.method
    if not spec.results:
        if result is not None:
            raise AssertionError(f"{name}: expected no result (None), got {_what(result)}")
        return
    if len(spec.results) == 1:
        values: tuple[Any, ...] = (result,)
    else:
        if not isinstance(result, tuple) or len(result) != len(spec.results):
            raise AssertionError(
                f"{name}: expected a tuple of {len(spec.results)} results "
                f"({', '.join(p.name for p in spec.results)}), got {_what(result)}"
                + (f" of {len(result)}" if isinstance(result, (tuple, list)) else "")
            )
        values = result
    for param, value in zip(spec.results, values, strict=True):
        _check_value(f"{name}: result {param.name!r}", param, value)
    if not args:
        return
    for index, shape in _expected_shapes(op, args).items():
        got = _shape(values[index])
        if shape is not None and got != shape:
            raise AssertionError(
                f"{name}: result {spec.results[index].name!r}: expected shape {shape} "
                f"(from the arguments), got {_what(values[index])}"
            )
    if op is Op.OPENCV and len(values[0]) != args[1]:
        raise AssertionError(
            f"{name}: result 'outputs': expected nr_outputs={args[1]} buffers, got {len(values[0])}"
        )
    if op in (Op.EXEC, Op.EXEC_WITH_RESOURCE):
        sizes = [len(bytes(b)) for b in values[0]]
        if len(sizes) != len(args[3]) or any(g > w for g, w in zip(sizes, args[3], strict=False)):
            raise AssertionError(
                f"{name}: result 'write': expected buffers of at most write_sizes={list(args[3])} "
                f"bytes, got sizes {sizes}"
            )


def check_call_refused(session: Session, op: Op, args: tuple[Any, ...]) -> VaccelError:
    """Call ``op`` with arguments it must refuse; return the VaccelError it raised. Raise
    AssertionError when it succeeds, raises another exception, or when the backend itself
    crashed (a non-vAccel exception that the session wrapped in a BackendError)."""
    name = CATALOG[op].method
    try:
        session.genop(op, *args)
    except VaccelError as exc:
        cause = exc.__cause__
        if (
            isinstance(exc, BackendError)
            and cause is not None
            and not isinstance(cause, VaccelError)
        ):
            raise AssertionError(
                f"{name}{_brief_args(args)}: the backend crashed with "
                f"{type(cause).__name__}: {cause} — raise a VaccelError subclass "
                f"(InvalidArgumentError, NotFoundError, ...) for arguments it refuses"
            ) from exc
        if not str(exc):
            raise AssertionError(f"{name}: {type(exc).__name__} has no message") from exc
        return exc
    except Exception as exc:
        raise AssertionError(
            f"{name}{_brief_args(args)}: expected a VaccelError, got {type(exc).__name__}: {exc}"
        ) from exc
    raise AssertionError(f"{name}{_brief_args(args)}: accepted arguments it must refuse")


#: Largest difference between a batched and an alone array result the kit accepts.
BATCH_ATOL = 1e-5


def _difference(got: Any, want: Any, where: str = "") -> str | None:
    """How ``got`` differs from ``want`` (arrays within :data:`BATCH_ATOL`), or None."""
    if isinstance(want, np.ndarray) or isinstance(got, np.ndarray):
        a, b = np.asarray(got), np.asarray(want)
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"{where}{a.dtype} {a.shape} instead of {b.dtype} {b.shape}"
        if a.size and not np.allclose(a, b, rtol=0.0, atol=BATCH_ATOL, equal_nan=True):
            worst = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
            return f"{where}values differ by up to {worst:.3g} (allowed {BATCH_ATOL:g})"
        return None
    if isinstance(want, Mapping) and isinstance(got, Mapping):
        if set(got) != set(want):
            return f"{where}keys {sorted(got)} instead of {sorted(want)}"
        for key in want:
            why = _difference(got[key], want[key], f"{where}[{key!r}] ")
            if why is not None:
                return why
        return None
    if isinstance(want, (tuple, list)) and isinstance(got, (tuple, list)):
        if len(got) != len(want):
            return f"{where}{len(got)} values instead of {len(want)}"
        for k, (g, w) in enumerate(zip(got, want, strict=True)):
            why = _difference(g, w, f"{where}[{k}] ")
            if why is not None:
                return why
        return None
    return None if got == want else f"{where}{_clip_value(got)} instead of {_clip_value(want)}"


def _clip_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _brief_args(args: tuple[Any, ...]) -> str:
    return "(" + ", ".join(_what(a) for a in args) + ")"


class _Wrong:
    """An argument of no catalog kind."""

    def __repr__(self) -> str:
        return "<wrong>"


# The agent ---------------------------------------------------------------------------------------
def missing_remote_extra() -> str | None:
    """Why the agent part cannot run here, or None."""
    for module in ("grpc", "google.protobuf"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"{module} is not installed: the agent part needs pip install 'pyvaccel[remote]'"
    return None


_LISTENING = re.compile(r"^Listening on '(?P<address>[^']+)'$")


class AgentProcess:
    """A ``vaccel-agent`` started by :func:`start_agent`; stop it with :meth:`stop`."""

    def __init__(self, proc: subprocess.Popen[str], folder: Path) -> None:
        self.proc = proc
        self.folder = folder
        self.address = ""
        self.lines: list[str] = []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)


_SELECTION = {"VACCEL_PLUGINS", "VACCEL_BACKENDS", "VACCEL_RPC_ADDRESS", "VACCEL_VSOCK"}


def start_agent(plugins: str, *, timeout: float = 30.0) -> AgentProcess:
    """Start ``python -m vaccel_agent -a unix://TMP/agent.sock --plugins PLUGINS`` with this
    interpreter, this process's import path and environment (less the variables that select
    backends or an agent), and wait until it listens."""
    folder = Path(tempfile.mkdtemp(prefix="vaccel-kit-"))
    # The settings the in-process sessions see, less those that pick backends or an agent.
    env = {k: v for k, v in os.environ.items() if k not in _SELECTION}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    cmd = [sys.executable, "-m", "vaccel_agent", "-a", f"unix://{folder / 'agent.sock'}"]
    cmd += ["--plugins", plugins]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=folder
    )
    agent = AgentProcess(proc, folder)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            agent.lines.append(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(agent.lines):
            match = _LISTENING.match(line)
            if match:
                agent.address = match.group("address")
                return agent
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    agent.stop()
    output = "\n".join(agent.lines[-20:])
    raise AssertionError(
        f"the agent did not start ({' '.join(cmd)}; exit {proc.poll()}):\n{output}"
    )


# The base class ----------------------------------------------------------------------------------
def _pytest() -> Any:
    import pytest

    return pytest


class _Shim:
    """A plugin object registering one backend class (for ``backend_class``)."""

    def __init__(self, cls: type[Backend]) -> None:
        self.cls = cls

    @hookimpl
    def vaccel_register_backends(self, register: Any) -> None:
        register(self.cls)


class BackendConformance:
    """Subclass it in a ``Test*`` class and set ``backend``; pytest runs the tests below."""

    #: The backend's name (as in ``VACCEL_PLUGINS``).
    backend: ClassVar[str] = ""
    #: A plugin object to register instead of the installed entry points (optional).
    plugin: ClassVar[Any] = None
    #: A Backend class to register instead of the installed entry points (optional).
    backend_class: ClassVar[type[Backend] | None] = None
    #: Operations the kit must not call here, with the reason (shown as a skip).
    skip_ops: ClassVar[Mapping[Op, str]] = {}
    #: Threads (each with its own session) and rounds per thread of the thread-safety test.
    threads: ClassVar[int] = 4
    rounds: ClassVar[int] = 3
    #: Run the backend behind a real agent process too.
    remote: ClassVar[bool] = True

    # Hooks for authors -------------------------------------------------------------------------
    def sample_args(self, op: Op, resources: Mapping[ResourceType, Resource]) -> tuple[Any, ...]:
        """Valid arguments for ``op`` (default: :func:`sample_args`)."""
        return sample_args(op, resources)

    def make_resources(self, session: Session) -> dict[ResourceType, Resource]:
        """One resource of each type, registered with ``session``, for :meth:`sample_args`
        (default: :func:`sample_resources`, placeholder bytes; give real models here)."""
        return sample_resources(session)

    def invalid_args(
        self, op: Op, resources: Mapping[ResourceType, Resource]
    ) -> list[tuple[Any, ...]]:
        """Extra argument tuples ``op`` must refuse with a VaccelError (beyond the wrong-type
        ones the kit makes itself): e.g. a model that is not a model."""
        return []

    def batch_args(
        self, op: Op, resources: Mapping[ResourceType, Resource]
    ) -> list[tuple[Any, ...]]:
        """Distinct argument tuples of ``op`` that can run in one batch (default: 4 images of
        different colours for the image operations, else :meth:`sample_args` once). Give real
        inputs that produce different results: the kit checks each call gets its own."""
        spec = CATALOG[op]
        if spec.params and spec.params[0].kind is Kind.BYTES and op.name.startswith("IMAGE_"):
            return [(_png(32, 32, green, 255 - green),) for green in (0, 85, 170, 255)]
        return [self.sample_args(op, resources)]

    # Helpers -----------------------------------------------------------------------------------
    def make_registry(self) -> PluginRegistry:
        """A private registry holding the backend (a fresh one: its own init/fini)."""
        pytest = _pytest()
        if not self.backend:
            pytest.fail(f"{type(self).__name__}: set the class attribute 'backend'")
        registry = PluginRegistry()
        if self.backend_class is not None:
            registry.register_plugin(_Shim(self.backend_class), f"kit-{self.backend}")
        elif self.plugin is not None:
            registry.register_plugin(self.plugin, self.backend)
        else:
            registry.load_entrypoints(groups=(BACKEND_GROUP,))
        info = registry.backends.get(self.backend)
        if info is None:  # pytest.fail raises
            failures = "; ".join(f.describe() for f in registry.failures) or "none"
            pytest.fail(
                f"backend {self.backend!r} is not registered (registered: "
                f"{', '.join(sorted(registry.backends)) or 'none'}; failures: {failures}). "
                f"Is the package installed (pip install -e .) with a 'vaccel.backends' entry "
                f"point?"
            )
        assert info is not None
        if info.reason is not None:
            pytest.skip(f"backend {self.backend!r} is unavailable here: {info.reason}")
        return registry

    def config(self) -> Config:
        """The sessions' configuration: the environment's, with only this backend."""
        config = Config.from_env()
        config.plugins = [self.backend]
        return config

    def open_session(self, registry: PluginRegistry) -> Session:
        return Session(config=self.config(), registry=registry)

    def declared(self, registry: PluginRegistry) -> list[Op]:
        ops = registry.backends[self.backend].cls.operations()
        return [op for op in CATALOG if op in ops and op not in self.skip_ops]

    def run_valid(self, session: Session, ops: list[Op]) -> None:
        """Every op with valid arguments; results checked against the catalog."""
        resources = self.make_resources(session)
        for op in ops:
            args = self.sample_args(op, resources)
            try:
                result = session.genop(op, *args)
            except Exception as exc:
                raise AssertionError(
                    f"{CATALOG[op].method}{_brief_args(args)}: valid arguments raised "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            check_result(op, result, args)

    @contextlib.contextmanager
    def _registry(self) -> Iterator[PluginRegistry]:
        registry = self.make_registry()
        try:
            yield registry
        finally:
            registry.shutdown()

    # Tests -------------------------------------------------------------------------------------
    def test_declaration(self) -> None:
        """Name, version, type flags, a cheap probe and at least one operation."""
        with self._registry() as registry:
            info = registry.backends[self.backend]
            cls = info.cls
            assert issubclass(cls, Backend), f"{cls!r} is not a vaccel_core.Backend"
            assert cls.name == self.backend, f"{cls!r}.name is {cls.name!r}"
            assert isinstance(cls.version, str) and cls.version, f"{cls!r}.version is empty"
            assert int(cls.type) != 0, f"backend {self.backend!r}: set its type flags"
            probe = cls.probe()
            assert probe is None or isinstance(probe, str), f"probe() returned {probe!r}"
            assert cls.operations(), f"backend {self.backend!r} implements no operation"

    def test_valid_arguments(self) -> None:
        """Every declared operation with valid arguments gives results the catalog expects;
        a backend that batches gives the same results in batches (:meth:`check_batching`)."""
        with self._registry() as registry, self.open_session(registry) as session:
            self.run_valid(session, self.declared(registry))
        self.check_batching()

    def test_invalid_arguments(self) -> None:
        """Each argument of the wrong kind in turn, missing arguments, a resource of another
        session, and the backend's own cases: a VaccelError, never another exception."""
        with (
            self._registry() as registry,
            self.open_session(registry) as session,
            self.open_session(registry) as other,
        ):
            resources = self.make_resources(session)
            foreign = self.make_resources(other)
            for op in self.declared(registry):
                spec = CATALOG[op]
                good = self.sample_args(op, resources)
                cases: list[tuple[Any, ...]] = []
                if spec.params:
                    cases.append(())
                for i in range(len(good)):
                    cases.append((*good[:i], _Wrong(), *good[i + 1 :]))
                if any(p.kind is Kind.RESOURCE for p in spec.params):
                    cases.append(self.sample_args(op, foreign))
                cases += self.invalid_args(op, resources)
                for args in cases:
                    check_call_refused(session, op, args)

    def test_lifecycle(self) -> None:
        """init/fini through the registry, session and resource hooks, a released session
        refusing calls, and a second start after fini."""
        with self._registry() as registry:
            cls = registry.backends[self.backend].cls
        instance = cls()
        for step in (instance.init, instance.fini):
            try:
                step()
            except Exception as exc:
                raise AssertionError(
                    f"backend {self.backend!r}: {step.__name__}() of a fresh instance raised "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        for _ in range(2):
            with self._registry() as registry:
                ops = self.declared(registry)
                session = self.open_session(registry)
                resources = self.make_resources(session)
                for res in resources.values():
                    res.unregister(session)
                session.release()
                session.release()
                for op in ops[:1]:
                    check_call_refused(session, op, self.sample_args(op, resources))
                with self.open_session(registry) as again:
                    self.run_valid(again, ops)

    def test_concurrent_sessions(self) -> None:
        """Several threads, each with its own session, run every declared operation."""
        with self._registry() as registry:
            ops = self.declared(registry)
            errors: list[BaseException] = []
            start = threading.Barrier(self.threads)

            def work() -> None:
                try:
                    with self.open_session(registry) as session:
                        start.wait(10)
                        for _ in range(self.rounds):
                            self.run_valid(session, ops)
                except BaseException as exc:
                    errors.append(exc)
                    start.abort()

            workers = [threading.Thread(target=work) for _ in range(self.threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(120)
            assert not any(w.is_alive() for w in workers), "a thread did not finish in 120 s"
            if errors:
                raise AssertionError(
                    f"{len(errors)} of {self.threads} threads failed; first: {errors[0]}"
                ) from errors[0]

    def check_batching(self) -> int:
        """For each operation in ``batch_operations``: distinct calls prepared
        (``prepare_batch``) and run as one batch (``run_batch``), in order and reversed, must
        each get a valid result equal to what the same call gets alone. Returns how many calls
        were batched (0 for a backend that does not batch). Part of
        :meth:`test_valid_arguments`."""
        with self._registry() as registry:
            cls = registry.backends[self.backend].cls
            batched = [op for op in self.declared(registry) if op in cls.batch_operations]
            if not batched:
                return 0
            with Session(config=self.config(), registry=registry, batcher=None) as session:
                session.batcher = None  # alone means alone, whatever VACCEL_BATCH_* says
                resources = self.make_resources(session)
                checked = 0
                for op in batched:
                    checked += self._check_batch(session, op, self.batch_args(op, resources))
            assert checked, (
                f"backend {self.backend!r} declares batch_operations but prepare_batch returned "
                f"None for every sample (override batch_args with calls that batch)"
            )
            return checked

    def _check_batch(self, session: Session, op: Op, calls: list[tuple[Any, ...]]) -> int:
        """Run ``calls`` alone and in batches; how many calls were batched."""
        from .validate import check_args

        spec = CATALOG[op]
        backend = session.backend_for(op)
        alone = [session.genop(op, *args) for args in calls]
        items, expected = [], []
        for args, result in zip(calls, alone, strict=True):
            try:
                item = backend.prepare_batch(session, op, check_args(spec, args, session))
            except Exception as exc:
                raise AssertionError(
                    f"backend {self.backend!r}: prepare_batch({spec.method}) of valid arguments "
                    f"{_brief_args(args)} raised {type(exc).__name__}: {exc}"
                ) from exc
            if item is not None:
                items.append(item)
                expected.append(result)
        if not items:
            return 0
        order = list(range(len(items)))
        for indices in (order, order[::-1]):
            results = backend.run_batch(op, [items[i] for i in indices])
            assert isinstance(results, (list, tuple)) and len(results) == len(indices), (
                f"backend {self.backend!r}: run_batch({spec.method}) of {len(indices)} calls "
                f"returned {_what(results)}, expected one result per call"
            )
            for position, (i, got) in enumerate(zip(indices, results, strict=True)):
                try:
                    check_result(op, got)
                except AssertionError as exc:
                    raise AssertionError(
                        f"backend {self.backend!r}: run_batch({spec.method}) result "
                        f"{position}: {exc}"
                    ) from exc
                why = _difference(got, expected[i])
                if why is not None:
                    raise AssertionError(
                        f"backend {self.backend!r}: run_batch({spec.method}) result "
                        f"{position} (call {i} of a batch of {len(indices)}) is not what the "
                        f"same call gets alone: {why}"
                    )
        return len(items)

    def test_behind_agent(self) -> None:
        """The same operations through a real agent process and the rpc backend."""
        pytest = _pytest()
        if not self.remote:
            pytest.skip(f"{type(self).__name__}.remote is False")
        reason = missing_remote_extra()
        if reason:
            pytest.skip(reason)
        if self.backend_class is not None or self.plugin is not None:
            pytest.skip("the agent finds backends by entry point; this one is registered by hand")
        with self._registry() as registry:
            ops = self.declared(registry)
        agent = start_agent(self.backend)
        try:
            remote = PluginRegistry()
            remote.load_entrypoints()
            try:
                config = self.config()
                config.plugins, config.rpc_address = ["rpc"], agent.address
                with Session(config=config, registry=remote) as session:
                    self.run_valid(session, ops)
            finally:
                remote.shutdown()
        except BaseException:
            print("\n".join(agent.lines[-30:]))  # the agent's log, in pytest's captured output
            raise
        finally:
            agent.stop()


# The project template ----------------------------------------------------------------------------
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def new_backend(name: str, dest: Path) -> Path:
    """Write a new backend project named ``name`` into the folder ``dest`` (created; it must
    not exist or be empty) from ``vaccel_core/templates/backend``; return ``dest``.

    The project is the pip package ``vaccel-NAME`` with the Python package ``vaccel_NAME``,
    whose ``vaccel.backends`` entry point registers the backend ``NAME``, and a
    ``tests/test_conformance.py`` running this kit. It passes the kit as written.
    """
    if not _NAME.match(name):
        raise ValueError(
            f"backend name {name!r}: use lower-case letters, digits and '_', starting with a letter"
        )
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not an empty folder")
    words = {
        "__NAME__": name,
        "__PACKAGE__": f"vaccel_{name}",
        "__DIST__": f"vaccel-{name.replace('_', '-')}",
        "__CLASS__": "".join(w.capitalize() for w in name.split("_")) + "Backend",
    }

    def fill(text: str) -> str:
        for key, value in words.items():
            text = text.replace(key, value)
        return text

    root = ir.files("vaccel_core") / "templates" / "backend"

    def copy(node: Any, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        for child in node.iterdir():
            if child.name in ("__pycache__",) or child.name.endswith(".pyc"):
                continue
            target = out / fill(child.name.removesuffix(".tmpl"))
            if child.is_dir():
                copy(child, target)
            else:
                target.write_text(fill(child.read_text(encoding="utf-8")), encoding="utf-8")

    copy(root, dest)
    return dest
