"""Shared pieces of the batching tests: small ONNX models with and without a batch
dimension, a pure-numpy backend that batches (for the engine's failure paths), and running
calls on many threads at once."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vaccel_core import Backend, PluginType, hookimpl
from vaccel_core.batching import Batcher, BatchItem, BatchPolicy, BatchReport, BatchSettings
from vaccel_core.ops import Op


def affine_model(first: str | int = "batch", width: str | int = 4) -> bytes:
    """``y = 2 x + 1`` on float32 ``x [first, width]`` (a batch dimension when ``first`` is
    a name), and ``s = sum(x, axis=1)`` ``[first, 1]``."""
    from onnx import TensorProto, checker, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["x2"]),
            helper.make_node("Add", ["x2", "one"], ["y"]),
            helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1),
        ],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [first, width])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [first, width]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, [first, 1]),
        ],
        initializer=[
            numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    checker.check_model(model)
    return bytes(model.SerializeToString())


def recording_batcher(max_size: int, delay_us: int) -> tuple[Batcher, list[BatchReport]]:
    batcher = Batcher(BatchPolicy(BatchSettings(max_size, delay_us)))
    reports: list[BatchReport] = []
    batcher.add_observer(reports.append)
    return batcher, reports


def run_threads(work: Sequence[Callable[[], Any]], timeout: float = 60.0) -> list[Any]:
    """Run each callable on its own thread, all released together; each one's result or
    the exception it raised, in order."""
    results: list[Any] = [None] * len(work)
    start = threading.Barrier(len(work))

    def run(i: int) -> None:
        start.wait(timeout)
        try:
            results[i] = work[i]()
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(t.is_alive() for t in threads), f"a call did not finish within {timeout} s"
    return results


POISON = -1


class CopyBackend(Backend):
    """fpga_arraycopy in numpy that batches: a batch with a negative value fails as a whole
    (as a real accelerator's batch fails on one bad item); ``gate`` holds every batch until
    set, so that tests can fill the queue behind a running one."""

    name = "batchcopy"
    version = "1.0"
    type = PluginType.CPU
    batch_operations = frozenset({Op.FPGA_ARRAYCOPY})
    gate = threading.Event()
    runs: list[int] = []

    def fpga_arraycopy(self, session: Any, a: np.ndarray) -> np.ndarray:
        if (a < 0).any():
            raise ValueError("negative values are not copied")
        return a.copy()

    def prepare_batch(self, session: Any, op: Op, args: tuple[Any, ...]) -> BatchItem | None:
        (a,) = args
        if len(a) > 8:  # long arrays run alone
            return None
        return BatchItem((a.dtype.str, a.shape), "default", a)

    def run_batch(self, op: Op, items: Sequence[BatchItem]) -> list[Any]:
        self.gate.wait(30)
        type(self).runs.append(len(items))
        stacked = np.stack([item.data for item in items])
        if (stacked < 0).any():
            raise ValueError("negative values are not copied")
        return [row.copy() for row in stacked]


class CopyPlugin:
    @hookimpl
    def vaccel_register_backends(self, register: Any) -> None:
        register(CopyBackend)


def start_batching_agent(folder: Path, delay_us: int) -> Any:
    """A real onnxruntime agent on ``folder/agent.sock`` batching up to 8 calls, waiting at
    most ``delay_us``, with its metrics endpoint on a free port (skips without the remote
    extra or prometheus-client)."""
    from tests.metrics.scrape import free_port
    from tests.remote.conftest import start_agent
    from vaccel_core.testing import missing_remote_extra

    reason = missing_remote_extra()
    if reason:
        pytest.skip(reason)
    pytest.importorskip(
        "prometheus_client",
        reason="prometheus-client is not installed (pip install 'pyvaccel[remote]')",
    )
    return start_agent(
        [f"unix://{folder / 'agent.sock'}"],
        env={"VACCEL_PLUGINS": "onnxruntime"},
        args=[
            "--batch-max-size", "8",
            "--batch-max-delay-us", str(delay_us),
            "--metrics-address", f"tcp://127.0.0.1:{free_port()}",
        ],
    )  # fmt: skip
