"""The batching engine with real onnxruntime sessions: calls of many threads join one batch,
each gets its own result, and what cannot batch runs alone; its failure paths (a failed batch,
a bad input, a deadline in the queue) with a numpy backend that batches."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from vaccel_core import (
    BackendError,
    InvalidArgumentError,
    PluginRegistry,
    Resource,
    ResourceType,
    Session,
)
from vaccel_core.batching import Batcher, DeadlineExceeded
from vaccel_core.config import Config
from vaccel_core.transport import deadline_scope

from ..onnxruntime.ort_fixtures import PHOTOS, photo, require_ort, require_weights
from .helpers import CopyBackend, CopyPlugin, affine_model, recording_batcher, run_threads

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def registry() -> Iterator[PluginRegistry]:
    require_ort()
    pytest.importorskip("onnx", reason="onnx is not installed (pip install 'pyvaccel[onnx]')")
    from vaccel_plugins.onnxruntime import plugin

    reg = PluginRegistry()
    reg.register_plugin(plugin, "onnxruntime")
    reg.register_plugin(CopyPlugin(), "batchcopy")
    yield reg
    reg.shutdown()


def session(registry: PluginRegistry, batcher: Batcher | None, backend: str) -> Session:
    made = Session(config=Config(plugins=[backend]), registry=registry, batcher=batcher)
    made.batcher = batcher  # None means alone here, whatever VACCEL_BATCH_* says
    return made


def model_run(registry: PluginRegistry, batcher: Batcher | None, model: bytes, x: np.ndarray):
    with session(registry, batcher, "onnxruntime") as s:
        resource = Resource.from_buffer(model, ResourceType.MODEL, name="m.onnx")
        resource.register(s)
        return s.model_run(resource, {"x": x})


def test_model_run_calls_join_one_batch_and_each_gets_its_rows(registry: PluginRegistry) -> None:
    model = affine_model()
    # Six callers, 1 to 3 rows each (12 rows): one batch of 12 once all have joined.
    inputs = [(np.full((1 + k % 3, 4), k) + np.arange(4)).astype(np.float32) for k in range(6)]
    batcher, reports = recording_batcher(sum(len(x) for x in inputs), 5_000_000)
    results = run_threads([lambda x=x: model_run(registry, batcher, model, x) for x in inputs])
    for x, out in zip(inputs, results, strict=True):
        assert not isinstance(out, BaseException), out
        np.testing.assert_array_equal(out["y"], 2 * x + 1)
        np.testing.assert_array_equal(out["s"], x.sum(axis=1, keepdims=True))
    assert [(r.size, r.calls) for r in reports] == [(12, 6)]
    assert len(reports[0].queue_seconds) == 6


def test_model_without_batch_dimension_runs_alone(registry: PluginRegistry) -> None:
    model = affine_model(first=1)
    inputs = [np.full((1, 4), k, dtype=np.float32) for k in range(4)]
    batcher, reports = recording_batcher(4, 5_000_000)
    results = run_threads([lambda x=x: model_run(registry, batcher, model, x) for x in inputs])
    for x, out in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(out["y"], 2 * x + 1)
    assert reports == []  # no batch formed, and nobody waited 5 s for one


def test_different_per_item_shapes_never_join(registry: PluginRegistry) -> None:
    model = affine_model(width="n")
    inputs = [np.full((1, width), k, dtype=np.float32) for k, width in enumerate((3, 5, 3, 5))]
    batcher, reports = recording_batcher(2, 5_000_000)
    results = run_threads([lambda x=x: model_run(registry, batcher, model, x) for x in inputs])
    for x, out in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(out["y"], 2 * x + 1)
    assert sorted((r.size, r.calls) for r in reports) == [(2, 2), (2, 2)]


def test_a_bad_input_fails_alone_before_joining(registry: PluginRegistry) -> None:
    model = affine_model()
    good = [np.full((1, 4), k, dtype=np.float32) for k in range(3)]
    bad = np.ones((1, 5), dtype=np.float32)  # wrong width: refused while preparing
    batcher, reports = recording_batcher(3, 5_000_000)
    work = [lambda x=x: model_run(registry, batcher, model, x) for x in [*good, bad]]
    results = run_threads(work)
    assert isinstance(results[3], InvalidArgumentError)
    assert "input 'x': expected float32 of shape [batch, 4], got float32 (1, 5)" in str(results[3])
    for x, out in zip(good, results[:3], strict=True):
        np.testing.assert_array_equal(out["y"], 2 * x + 1)
    assert [(r.size, r.calls) for r in reports] == [(3, 3)]  # full without the bad one


def test_classify_in_batches_matches_alone(registry: PluginRegistry) -> None:
    """The bundled photos, each twice, from 8 threads at once: the tags of unbatched runs,
    and the logits of a batched model_run within 1e-5 of unbatched ones."""
    require_weights()
    from vaccel_plugins.onnxruntime import imagenet, models

    names = sorted(p.name for p in PHOTOS.iterdir() if p.suffix in {".jpg", ".png"})
    images = [photo(n) for n in names]
    with session(registry, None, "onnxruntime") as alone:
        expected = [alone.classify(image) for image in images]
    batcher, reports = recording_batcher(2 * len(images), 5_000_000)

    def classify(image: bytes) -> tuple[str, str]:
        with session(registry, batcher, "onnxruntime") as s:
            return s.classify(image)

    results = run_threads([lambda i=i: classify(i) for i in images * 2])
    assert results == expected * 2
    assert [r.calls for r in reports] == [2 * len(images)]

    weights = models.ensure_model(models.DEFAULT_MODEL).read_bytes()
    inputs = [imagenet.preprocess(image) for image in images]
    with session(registry, None, "onnxruntime") as alone:
        resource = Resource.from_buffer(weights, ResourceType.MODEL, name="lite0.onnx")
        resource.register(alone)
        single = [alone.model_run(resource, {"input": x})["logits"] for x in inputs]
    batcher, reports = recording_batcher(len(images), 5_000_000)

    def logits(x: np.ndarray) -> np.ndarray:
        with session(registry, batcher, "onnxruntime") as s:
            resource = Resource.from_buffer(weights, ResourceType.MODEL, name="lite0.onnx")
            resource.register(s)
            return s.model_run(resource, {"input": x})["logits"]

    batched = run_threads([lambda x=x: logits(x) for x in inputs])
    assert [r.calls for r in reports] == [len(images)]
    for one, many in zip(single, batched, strict=True):
        np.testing.assert_allclose(many, one, rtol=0, atol=1e-5)


# Failure paths, with the numpy backend -------------------------------------------------------
@pytest.fixture
def copy_backend() -> Iterator[None]:
    CopyBackend.gate.set()
    CopyBackend.runs.clear()
    yield
    CopyBackend.gate.set()


def arraycopy(registry: PluginRegistry, batcher: Batcher, a: np.ndarray) -> np.ndarray:
    with session(registry, batcher, "batchcopy") as s:
        return s.fpga_arraycopy(a)


def test_a_failed_batch_reruns_each_call_alone(registry: PluginRegistry, copy_backend) -> None:
    arrays = [np.full(3, k, dtype=np.int32) for k in range(4)]
    arrays[2] = np.array([1, -1, 1], dtype=np.int32)  # the culprit
    batcher, reports = recording_batcher(4, 5_000_000)
    results = run_threads([lambda a=a: arraycopy(registry, batcher, a) for a in arrays])
    assert isinstance(results[2], BackendError)
    assert "negative values are not copied" in str(results[2])
    for k in (0, 1, 3):
        np.testing.assert_array_equal(results[k], arrays[k])
    assert CopyBackend.runs[0] == 4 and sorted(CopyBackend.runs[1:]) == [1, 1, 1, 1]
    assert [r.calls for r in reports] == [4]  # the reruns alone are not batches


def test_a_deadline_passing_in_the_queue_fails_only_that_call(
    registry: PluginRegistry, copy_backend
) -> None:
    """A runs (held); B (deadline 0.3 s) then C queue behind it in one batch. B leaves at its
    deadline with DEADLINE_EXCEEDED, handing the batch to C; A and C get their results."""
    batcher, _ = recording_batcher(2, 0)
    CopyBackend.gate.clear()
    arrays = [np.full(2, k, dtype=np.int32) for k in range(3)]
    results: list[object] = [None] * 3
    took: list[float] = [0.0] * 3

    def call(k: int, deadline: float | None) -> None:
        start = time.monotonic()
        try:
            with deadline_scope(deadline):
                results[k] = arraycopy(registry, batcher, arrays[k])
        except BaseException as exc:
            results[k] = exc
        took[k] = time.monotonic() - start

    threads = [threading.Thread(target=call, args=(0, None))]
    threads[0].start()
    while not batcher._queues:  # A is running (holding the gate)
        time.sleep(0.005)
    time.sleep(0.05)
    threads.append(threading.Thread(target=call, args=(1, time.monotonic() + 0.3)))
    threads[1].start()
    time.sleep(0.1)
    threads.append(threading.Thread(target=call, args=(2, None)))
    threads[2].start()
    threads[1].join(10)
    assert isinstance(results[1], DeadlineExceeded), results[1]
    assert results[1].code == errno.ETIMEDOUT
    assert "deadline passed while it waited" in str(results[1])
    assert 0.2 < took[1] < 5
    CopyBackend.gate.set()
    for thread in threads:
        thread.join(10)
    np.testing.assert_array_equal(results[0], arrays[0])
    np.testing.assert_array_equal(results[2], arrays[2])
    assert not batcher._queues  # nothing left behind


def test_unbatchable_call_of_a_batching_backend_runs_alone(
    registry: PluginRegistry, copy_backend
) -> None:
    batcher, reports = recording_batcher(4, 5_000_000)
    a = np.arange(10, dtype=np.int32)  # prepare_batch: None (longer than 8)
    np.testing.assert_array_equal(arraycopy(registry, batcher, a), a)
    assert reports == [] and CopyBackend.runs == []


def test_local_sessions_batch_from_the_environment(
    registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VACCEL_BATCH_* alone (no batcher given): four local sessions on four threads share
    the process's batcher and one batch."""
    monkeypatch.setenv("VACCEL_BATCH_MAX_SIZE", "4")
    monkeypatch.setenv("VACCEL_BATCH_MAX_DELAY_US", "1000000")
    model = affine_model()
    inputs = [np.full((1, 4), k, dtype=np.float32) for k in range(4)]
    reports: list[object] = []
    with Session(config=Config(plugins=["onnxruntime"]), registry=registry) as probe:
        assert probe.batcher is not None
        probe.batcher.add_observer(reports.append)

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        with Session(config=Config(plugins=["onnxruntime"]), registry=registry) as s:
            resource = Resource.from_buffer(model, ResourceType.MODEL, name="m.onnx")
            resource.register(s)
            return s.model_run(resource, {"x": x})

    results = run_threads([lambda x=x: run(x) for x in inputs])
    for x, out in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(out["y"], 2 * x + 1)
    assert [(r.size, r.calls) for r in reports] == [(4, 4)]  # type: ignore[attr-defined]
