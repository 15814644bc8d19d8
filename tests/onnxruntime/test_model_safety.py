"""MODEL resources that guests upload: external data may only name the resource's own files,
sessions are cached by all of a resource's files, and building one model does not hold up
another."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from vaccel_core import (
    Config,
    InvalidArgumentError,
    PluginRegistry,
    Resource,
    ResourceType,
    Session,
)
from vaccel_plugins.onnxruntime import inference
from vaccel_plugins.onnxruntime.backend import OnnxRuntimeBackend, model_key

pytestmark = pytest.mark.timeout(60)

# Every test here builds models with onnx (and runs them through the registry fixture).
pytest.importorskip("onnx", reason="onnx is not installed (pip install 'pyvaccel[onnx]')")

X = np.array([1.0, 2.0, 3.0], dtype=np.float32)


@pytest.fixture
def session(registry: PluginRegistry) -> Iterator[Session]:
    with Session(config=Config(plugins=["onnxruntime"]), registry=registry) as s:
        yield s


def weights(values: list[float]) -> bytes:
    return np.asarray(values, dtype=np.float32).tobytes()


def add_model(location: str, *, in_constant: bool = False) -> bytes:
    """y = x + w (float32 [3]) where w keeps its 12 bytes in the external file ``location``:
    an initializer, or (``in_constant``) the value of a Constant node."""
    from onnx import TensorProto, helper

    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[3])
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "12")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    nodes = [helper.make_node("Add", ["x", "w"], ["y"])]
    if in_constant:
        nodes.insert(0, helper.make_node("Constant", [], ["w"], name="c1", value=w))
    graph = helper.make_graph(
        nodes,
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        initializer=[] if in_constant else [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return bytes(model.SerializeToString())


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A host file outside any resource folder that a model must not read."""
    path = tmp_path / "secret.bin"
    path.write_bytes(weights([7.0, 7.0, 7.0]))
    return path


def refused(what: str, location: str, names: str, op: str = "model_load") -> str:
    return (
        rf"{op}: MODEL resource \d+ \(m\.onnx\): {what} keeps its data in "
        rf"{re.escape(repr(location))}; external data must be one of the resource's own "
        rf"files: {re.escape(names)}$"
    )


def test_an_absolute_external_data_location_is_refused(session: Session, secret: Path) -> None:
    res = Resource.from_buffers([("m.onnx", add_model(str(secret)))], ResourceType.MODEL)
    res.register(session)
    with pytest.raises(
        InvalidArgumentError, match=refused("initializer 'w'", str(secret), "m.onnx")
    ):
        session.model_load(res)
    with pytest.raises(
        InvalidArgumentError, match=refused("initializer 'w'", str(secret), "m.onnx", "model_run")
    ):
        session.model_run(res, [X])


def test_a_parent_folder_location_is_refused(session: Session, tmp_path: Path) -> None:
    folder = tmp_path / "resource"
    folder.mkdir()
    (tmp_path / "w.bin").write_bytes(weights([7.0, 7.0, 7.0]))
    (folder / "m.onnx").write_bytes(add_model("../w.bin"))
    (folder / "w.bin").write_bytes(weights([1.0, 1.0, 1.0]))
    res = Resource(folder, ResourceType.MODEL)
    res.register(session)
    with pytest.raises(
        InvalidArgumentError, match=refused("initializer 'w'", "../w.bin", "m.onnx, w.bin")
    ):
        session.model_load(res)


def test_a_file_beside_the_model_that_is_not_the_resources_is_refused(
    session: Session, tmp_path: Path
) -> None:
    (tmp_path / "m.onnx").write_bytes(add_model("other.bin"))
    (tmp_path / "other.bin").write_bytes(weights([7.0, 7.0, 7.0]))
    res = Resource(tmp_path / "m.onnx", ResourceType.MODEL)
    res.register(session)
    with pytest.raises(
        InvalidArgumentError, match=refused("initializer 'w'", "other.bin", "m.onnx")
    ):
        session.model_load(res)


def test_external_data_of_a_constant_node_is_checked_too(session: Session, secret: Path) -> None:
    res = Resource.from_buffers(
        [("m.onnx", add_model(str(secret), in_constant=True)), ("w.bin", weights([1, 1, 1]))],
        ResourceType.MODEL,
    )
    res.register(session)
    with pytest.raises(
        InvalidArgumentError,
        match=refused("attribute 'value' of node 'c1'", str(secret), "m.onnx, w.bin"),
    ):
        session.model_load(res)


def test_weights_in_another_file_of_the_resource_are_used(session: Session) -> None:
    res = Resource.from_buffers(
        [("m.onnx", add_model("w.bin")), ("w.bin", weights([10.0, 20.0, 30.0]))],
        ResourceType.MODEL,
    )
    res.register(session)
    out = session.model_run(res, [X])
    np.testing.assert_array_equal(out["y"], [11.0, 22.0, 33.0])


def test_a_model_file_whose_weights_sit_in_another_folder_is_refused(
    session: Session, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "m.onnx").write_bytes(add_model("w.bin"))
    (tmp_path / "b" / "w.bin").write_bytes(weights([1.0, 1.0, 1.0]))
    res = Resource([tmp_path / "a" / "m.onnx", tmp_path / "b" / "w.bin"], ResourceType.MODEL)
    res.register(session)
    with pytest.raises(InvalidArgumentError, match=r"model_load: .*'w\.bin', which is not beside"):
        session.model_load(res)


def test_same_graph_with_other_weights_is_another_inference_session(
    session: Session, backend: OnnxRuntimeBackend
) -> None:
    graph = add_model("w.bin")
    first, second = (
        Resource.from_buffers([("m.onnx", graph), ("w.bin", weights(w))], ResourceType.MODEL)
        for w in ([1.0, 1.0, 1.0], [100.0, 100.0, 100.0])
    )
    builds = backend.builds
    for res in (first, second):
        res.register(session)
    np.testing.assert_array_equal(session.model_run(first, [X])["y"], [2.0, 3.0, 4.0])
    np.testing.assert_array_equal(session.model_run(second, [X])["y"], [101.0, 102.0, 103.0])
    assert backend.builds == builds + 2
    assert model_key(first) != model_key(second)
    assert {model_key(first), model_key(second)} <= set(backend._models)


def test_a_slow_build_holds_up_only_its_own_model(
    session: Session, backend: OnnxRuntimeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = Resource.from_buffers(
        [("m.onnx", add_model("w.bin")), ("w.bin", weights([5.0, 5.0, 5.0]))], ResourceType.MODEL
    )
    fast = Resource.from_buffers(
        [("m.onnx", add_model("w.bin")), ("w.bin", weights([9.0, 9.0, 9.0]))], ResourceType.MODEL
    )
    for res in (slow, fast):
        res.register(session)
    slow_key = model_key(slow)
    started, release = threading.Event(), threading.Event()
    real = inference.create_session

    def create_session(key: str, *args: object, **kwargs: object) -> inference.LoadedModel:
        if key == slow_key:
            started.set()
            assert release.wait(30), "the test never released the slow build"
        return real(key, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(inference, "create_session", create_session)
    results: dict[str, np.ndarray] = {}

    def run(name: str, res: Resource) -> None:
        results[name] = session.model_run(res, [X])["y"]

    slow_thread = threading.Thread(target=run, args=("slow", slow), daemon=True)
    slow_thread.start()
    try:
        assert started.wait(10)
        fast_thread = threading.Thread(target=run, args=("fast", fast), daemon=True)
        fast_thread.start()
        fast_thread.join(10)
        assert not fast_thread.is_alive(), "loading one model waited for another's build"
        # a second caller of the slow model waits for that build rather than starting one
        waiter = threading.Thread(target=run, args=("slow again", slow), daemon=True)
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive()
    finally:
        release.set()
    slow_thread.join(10)
    waiter.join(10)
    np.testing.assert_array_equal(results["fast"], [10.0, 11.0, 12.0])
    np.testing.assert_array_equal(results["slow"], [6.0, 7.0, 8.0])
    np.testing.assert_array_equal(results["slow again"], [6.0, 7.0, 8.0])
