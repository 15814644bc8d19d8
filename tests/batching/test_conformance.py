"""The conformance kit's batching check: a backend that batches correctly passes; one that
hands calls each other's results, or too few results, fails with a message saying so."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from tests.conformance import test_builtin
from vaccel_core import Op, Resource, ResourceType
from vaccel_core.batching import BatchItem
from vaccel_core.testing import BackendConformance

from .helpers import CopyBackend


class _CopyKit(BackendConformance):
    backend = "batchcopy"
    backend_class = CopyBackend

    def batch_args(
        self, op: Op, resources: Mapping[ResourceType, Resource]
    ) -> list[tuple[Any, ...]]:
        return [(np.arange(4, dtype=np.int32) * k,) for k in range(1, 5)]


class _ShortCopy(CopyBackend):
    name = "shortcopy"

    def run_batch(self, op: Op, items: Sequence[BatchItem]) -> list[Any]:
        return list(super().run_batch(op, items))[:-1] or [None]


class _ShortKit(_CopyKit):
    backend = "shortcopy"
    backend_class = _ShortCopy


def _swapped_onnxruntime() -> type:
    pytest.importorskip(
        "onnxruntime", reason="onnxruntime is not installed (pip install 'pyvaccel[onnx]')"
    )
    from vaccel_plugins.onnxruntime.backend import OnnxRuntimeBackend

    class Swapped(OnnxRuntimeBackend):
        """Batches for real, then hands each call its neighbour's result."""

        name = "ortswap"

        def run_batch(self, op: Op, items: Sequence[BatchItem]) -> list[Any]:
            results = super().run_batch(op, items)
            return results[1:] + results[:1]

    return Swapped


def test_a_correct_batching_backend_passes() -> None:
    CopyBackend.gate.set()
    assert _CopyKit().check_batching() == 4


def test_results_of_other_calls_fail_the_kit() -> None:
    class Kit(test_builtin.TestOnnxruntime):
        backend = "ortswap"
        backend_class = _swapped_onnxruntime()

    with pytest.raises(AssertionError) as err:
        Kit().check_batching()
    message = str(err.value)
    assert "backend 'ortswap': run_batch(classify) result 0 (call 0 of a batch of 4)" in message
    assert "is not what the same call gets alone" in message


def test_too_few_results_fail_the_kit() -> None:
    CopyBackend.gate.set()
    with pytest.raises(AssertionError, match=r"run_batch\(fpga_arraycopy\) of 4 calls returned"):
        _ShortKit().check_batching()


def test_the_builtin_onnxruntime_passes() -> None:
    """(Also run by tests/conformance; here with the classify samples shown to give
    different results, so that a swap could not go unseen.)"""
    kit = test_builtin.TestOnnxruntime()
    with kit._registry() as registry:
        from vaccel_core import Session

        with Session(config=kit.config(), registry=registry) as session:
            session.batcher = None
            samples = kit.batch_args(Op.IMAGE_CLASSIFY, kit.make_resources(session))
            results = {session.classify(*args) for args in samples}
    assert len(results) == len(samples)
    assert kit.check_batching() == len(samples) + 1  # and one model_run
