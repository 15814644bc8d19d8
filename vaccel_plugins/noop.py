"""The noop backend: every operation, dummy results of the right type and shape.

It is the debugging backend of upstream vAccel: it logs its arguments at debug level and
returns fixed, deterministic results, so a remote run can be compared with a local one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vaccel_core import Backend, PluginType, Resource, Session, hookimpl
from vaccel_core.log import logger

DUMMY_TAG = "This is a dummy classification tag!"
DUMMY_IMGNAME = "This is a dummy imgname!"


def _log(session: Session, what: str, **args: Any) -> None:
    if logger.isEnabledFor(10):  # DEBUG; skip formatting otherwise
        shown = ", ".join(f"{k}={_brief(v)}" for k, v in args.items())
        logger.debug("[noop] %s in session %d: %s", what, session.id, shown)


def _brief(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array{value.shape}:{value.dtype}"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, Resource):
        return f"resource {value.id}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_brief(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_brief(v)}" for k, v in value.items()) + "}"
    return repr(value)


class NoopBackend(Backend):
    """Implements every operation with dummy results; logs arguments at debug level."""

    name = "noop"
    version = "0.1.0"
    type = PluginType.DEBUG
    description = "debugging backend: dummy results for every operation"

    def noop(self, session: Session) -> None:
        _log(session, "noop")

    def exec(
        self,
        session: Session,
        library: str,
        fn_symbol: str,
        read: Sequence[bytes],
        write_sizes: Sequence[int],
    ) -> list[bytes]:
        _log(
            session,
            "exec",
            library=library,
            fn_symbol=fn_symbol,
            read=read,
            write_sizes=write_sizes,
        )
        return _echo(read, write_sizes)

    def exec_with_resource(
        self,
        session: Session,
        resource: Resource,
        fn_symbol: str,
        read: Sequence[bytes],
        write_sizes: Sequence[int],
    ) -> list[bytes]:
        _log(
            session,
            "exec_with_resource",
            resource=resource,
            fn_symbol=fn_symbol,
            read=read,
            write_sizes=write_sizes,
        )
        return _echo(read, write_sizes)

    def classify(self, session: Session, image: bytes) -> tuple[str, str]:
        _log(session, "classify", image=image)
        return DUMMY_TAG, DUMMY_IMGNAME

    def detect(self, session: Session, image: bytes) -> str:
        _log(session, "detect", image=image)
        return DUMMY_IMGNAME

    def segment(self, session: Session, image: bytes) -> str:
        _log(session, "segment", image=image)
        return DUMMY_IMGNAME

    def pose(self, session: Session, image: bytes) -> str:
        _log(session, "pose", image=image)
        return DUMMY_IMGNAME

    def depth(self, session: Session, image: bytes) -> str:
        _log(session, "depth", image=image)
        return DUMMY_IMGNAME

    def _load(self, session: Session, what: str, resource: Resource) -> None:
        _log(session, what, resource=resource)

    def tf_model_load(self, session: Session, resource: Resource) -> None:
        self._load(session, "tf_model_load", resource)

    def tf_model_unload(self, session: Session, resource: Resource) -> None:
        self._load(session, "tf_model_unload", resource)

    def tf_model_run(
        self,
        session: Session,
        resource: Resource,
        in_nodes: Sequence[str],
        in_tensors: Sequence[np.ndarray],
        out_nodes: Sequence[str],
    ) -> list[np.ndarray]:
        _log(
            session,
            "tf_model_run",
            resource=resource,
            in_nodes=in_nodes,
            in_tensors=in_tensors,
            out_nodes=out_nodes,
        )
        return [np.zeros(1, dtype=np.float32) for _ in out_nodes]

    def tflite_model_load(self, session: Session, resource: Resource) -> None:
        self._load(session, "tflite_model_load", resource)

    def tflite_model_unload(self, session: Session, resource: Resource) -> None:
        self._load(session, "tflite_model_unload", resource)

    def tflite_model_run(
        self, session: Session, resource: Resource, in_tensors: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        _log(session, "tflite_model_run", resource=resource, in_tensors=in_tensors)
        return [np.zeros_like(t) for t in in_tensors]

    def torch_model_load(self, session: Session, resource: Resource) -> None:
        self._load(session, "torch_model_load", resource)

    def torch_model_run(
        self, session: Session, resource: Resource, in_tensors: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        _log(session, "torch_model_run", resource=resource, in_tensors=in_tensors)
        return [np.zeros_like(t) for t in in_tensors]

    def torch_sgemm(
        self, session: Session, a: np.ndarray, b: np.ndarray, c: np.ndarray | None
    ) -> np.ndarray:
        _log(session, "torch_sgemm", a=a, b=b, c=c)
        return np.zeros((a.shape[0], b.shape[1]), dtype=np.float32)

    def sgemm(
        self,
        session: Session,
        a: np.ndarray,
        b: np.ndarray,
        c: np.ndarray | None,
        alpha: float,
        beta: float,
    ) -> np.ndarray:
        _log(session, "sgemm", a=a, b=b, c=c, alpha=alpha, beta=beta)
        return np.zeros((a.shape[0], b.shape[1]), dtype=np.float32)

    def fpga_arraycopy(self, session: Session, a: np.ndarray) -> np.ndarray:
        _log(session, "fpga_arraycopy", a=a)
        return np.zeros_like(a)

    def fpga_mmult(self, session: Session, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        _log(session, "fpga_mmult", a=a, b=b)
        return np.zeros((a.shape[0], b.shape[1]), dtype=np.float32)

    def fpga_parallel(
        self, session: Session, a: np.ndarray, b: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        _log(session, "fpga_parallel", a=a, b=b)
        return np.zeros_like(a), np.zeros_like(a)

    def fpga_vectoradd(self, session: Session, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        _log(session, "fpga_vectoradd", a=a, b=b)
        return np.zeros_like(a)

    def minmax(
        self, session: Session, data: np.ndarray, low_threshold: int, high_threshold: int
    ) -> tuple[np.ndarray, float, float]:
        _log(
            session, "minmax", data=data, low_threshold=low_threshold, high_threshold=high_threshold
        )
        return np.zeros_like(data), 0.0, 0.0

    def opencv(self, session: Session, args: Sequence[bytes], nr_outputs: int) -> list[bytes]:
        _log(session, "opencv", args=args, nr_outputs=nr_outputs)
        return [b"" for _ in range(nr_outputs)]

    def model_load(self, session: Session, resource: Resource) -> None:
        self._load(session, "model_load", resource)

    def model_unload(self, session: Session, resource: Resource) -> None:
        self._load(session, "model_unload", resource)

    def model_run(
        self,
        session: Session,
        resource: Resource,
        inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    ) -> dict[str, np.ndarray]:
        _log(session, "model_run", resource=resource, inputs=inputs)
        items = (
            inputs.items()
            if isinstance(inputs, Mapping)
            else ((f"output_{i}", t) for i, t in enumerate(inputs))
        )
        return {name: np.zeros_like(t) for name, t in items}


def _echo(read: Sequence[bytes], write_sizes: Sequence[int]) -> list[bytes]:
    """Upstream's noop exec returns dummy output: zero-filled buffers of the asked sizes."""
    return [bytes(size) for size in write_sizes]


@hookimpl
def vaccel_register_backends(register: Any) -> None:
    register(NoopBackend)
