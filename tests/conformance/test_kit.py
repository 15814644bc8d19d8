"""The conformance kit fails backends that break the contract, with a clear message."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from vaccel_core import Backend, InvalidArgumentError, PluginType, Session
from vaccel_core.testing import PNG_1PX, BackendConformance, check_result


class _Good(Backend):
    name = "kitgood"
    version = "1"
    type = PluginType.CPU

    def sgemm(self, session: Session, a: Any, b: Any, c: Any, alpha: float, beta: float) -> Any:
        out = alpha * (a @ b)
        return out + beta * c if c is not None else out

    def classify(self, session: Session, image: bytes) -> tuple[str, str]:
        if not bytes(image).startswith(b"\x89PNG"):
            raise InvalidArgumentError("classify: argument 'image': not a PNG image")
        return "a pixel", "out.png"


class _WrongDtype(_Good):
    name = "kitdtype"

    def sgemm(self, session: Session, *args: Any) -> Any:
        return super().sgemm(session, *args).astype(np.float64)


class _WrongShape(_Good):
    name = "kitshape"

    def sgemm(self, session: Session, *args: Any) -> Any:
        return super().sgemm(session, *args).T


class _WrongArity(_Good):
    name = "kitarity"

    def classify(self, session: Session, image: bytes) -> Any:
        return "just tags"


class _Crashes(_Good):
    name = "kitcrash"

    def classify(self, session: Session, image: bytes) -> tuple[str, str]:
        return {b"\x89PNG": "tags"}[bytes(image)[:4]], "out.png"  # KeyError on non-PNG


class _OneSessionAtATime(_Good):
    name = "kitsingle"

    def init(self) -> None:
        self.lock = threading.Lock()
        self.active: int | None = None

    def session_init(self, session: Session) -> None:
        with self.lock:
            if self.active is not None:
                raise RuntimeError("one session at a time")
            self.active = session.id

    def session_release(self, session: Session) -> None:
        with self.lock:
            self.active = None

    def sgemm(self, session: Session, *args: Any) -> Any:
        time.sleep(0.001)
        return super().sgemm(session, *args)


class _FiniFails(_Good):
    name = "kitfini"

    def fini(self) -> None:
        raise OSError("device busy")


def _kit(cls: type[Backend]) -> BackendConformance:
    class Kit(BackendConformance):
        backend = cls.name
        backend_class = cls

        def invalid_args(self, op: Any, resources: Any) -> list[tuple[Any, ...]]:
            return [(b"not an image",)] if op.value == "image_classify" else []

    return Kit()


class TestGood(BackendConformance):
    """A correct backend registered by class passes the whole kit (the agent part skips)."""

    backend = "kitgood"
    backend_class = _Good

    def invalid_args(self, op: Any, resources: Any) -> list[tuple[Any, ...]]:
        return [(b"not an image",)] if op.value == "image_classify" else []


def test_wrong_dtype_fails_clearly() -> None:
    # The kit's own message, or the session's result check (BackendError) it reports.
    with pytest.raises(AssertionError, match=r"sgemm.*'out'.*float32.*float64"):
        _kit(_WrongDtype).test_valid_arguments()


def test_wrong_shape_fails_clearly() -> None:
    with pytest.raises(
        AssertionError,
        match=r"sgemm: result 'out': expected shape \(2, 4\) "
        r"\(from the arguments\), got float32 array of shape \(2, 2\)",
    ):
        check_result(
            "blas_sgemm", np.zeros((2, 2), np.float32), (np.zeros((2, 3)), np.zeros((3, 4)))
        )
    with pytest.raises(AssertionError, match=r"expected shape"):
        kit = _kit(_WrongShape)
        kit.sample_args = lambda op, res: (  # type: ignore[method-assign]
            (np.ones((2, 3), np.float32), np.ones((3, 4), np.float32), None, 1.0, 0.0)
            if op.value == "blas_sgemm"
            else (PNG_1PX,)
        )
        kit.test_valid_arguments()


def test_wrong_arity_fails_clearly() -> None:
    with pytest.raises(
        AssertionError,
        match=r"classify.*expected a tuple of 2 results "
        r"\(tags, imgname\), got str",
    ):
        _kit(_WrongArity).test_valid_arguments()


def test_crash_on_invalid_arguments_fails_clearly() -> None:
    with pytest.raises(
        AssertionError,
        match=r"classify\(bytes\): the backend crashed with "
        r"KeyError: .* raise a VaccelError",
    ):
        _kit(_Crashes).test_invalid_arguments()


def test_one_session_at_a_time_fails_the_thread_test() -> None:
    kit = _kit(_OneSessionAtATime)
    kit.test_valid_arguments()
    with pytest.raises(AssertionError, match=r"threads failed; first: .*one session at a time"):
        kit.test_concurrent_sessions()


def test_failing_fini_fails_the_lifecycle_test() -> None:
    with pytest.raises(AssertionError, match=r"fini\(\) of a fresh instance raised OSError"):
        _kit(_FiniFails).test_lifecycle()


def test_check_result_types() -> None:
    check_result("noop", None)
    check_result("minmax", (np.zeros(3), 0.0, 1.0), (np.zeros(3), 0, 1))
    with pytest.raises(AssertionError, match=r"noop: expected no result \(None\), got int"):
        check_result("noop", 0)
    with pytest.raises(AssertionError, match=r"opencv: result 'outputs': expected nr_outputs=2"):
        check_result("opencv", [b"x"], ([b"a"], 2))
    with pytest.raises(AssertionError, match=r"result 'outputs'\['y'\]: expected str -> numpy"):
        check_result("model_run", {"y": [1.0]})


def test_agent_part_skips_without_the_remote_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from vaccel_core import testing

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "grpc" else real(name, *a)
    )
    assert testing.missing_remote_extra() == (
        "grpc is not installed: the agent part needs pip install 'pyvaccel[remote]'"
    )

    class Kit(BackendConformance):
        backend = "noop"

    with pytest.raises(pytest.skip.Exception, match=r"pyvaccel\[remote\]"):
        Kit().test_behind_agent()
