"""A real backend behind the agent: onnxruntime runs a model registered by a remote client."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vaccel_core import Config, Resource, ResourceType, Session

from .conftest import remote_session, start_agent

pytestmark = pytest.mark.timeout(120)


def add_model() -> bytes:
    """A one-node ONNX graph: y = x + x, float32 [N, 4]."""
    pytest.importorskip("onnxruntime", reason="needs the 'onnx' extra (onnxruntime)")
    onnx = pytest.importorskip("onnx", reason="needs the 'onnx' extra (onnx)")
    helper, tp = onnx.helper, onnx.TensorProto
    x = helper.make_tensor_value_info("x", tp.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", tp.FLOAT, [None, 4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "add", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def test_model_run_on_onnxruntime_remote_equals_local(tmp_path: Path) -> None:
    model = add_model()
    inputs = {"x": np.arange(4 * 50_000, dtype=np.float32).reshape(-1, 4)}  # out of band
    with Session(config=Config(plugins=["onnxruntime"])) as local:
        res = Resource.from_buffer(model, ResourceType.MODEL, name="add.onnx")
        res.register(local)
        expected = local.model_run(res, inputs)
    handle = start_agent([f"unix://{tmp_path / 'v.sock'}"], env={"VACCEL_PLUGINS": "onnxruntime"})
    try:
        with remote_session(handle.address) as remote:
            res = Resource.from_buffer(model, ResourceType.MODEL, name="add.onnx")
            res.register(remote)
            remote.model_load(res)
            got = remote.model_run(res, inputs)
            with pytest.raises(ValueError, match="model_run: input 'nope': not an input"):
                remote.model_run(res, {"nope": inputs["x"]})
    finally:
        handle.stop()
    assert list(got) == list(expected) == ["y"]
    np.testing.assert_array_equal(got["y"], expected["y"])
    np.testing.assert_array_equal(got["y"], inputs["x"] * 2)
