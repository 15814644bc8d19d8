"""Shared helpers of the onnxruntime backend tests: photos, expected classes, tiny models."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vaccel_plugins.onnxruntime import imagenet

PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "photos"
TAG = re.compile(r"^(?P<pct>\d{1,3}\.\d{3})% (?P<name>.+)$")
CAT_NAMES = {"tiger cat", "Egyptian cat", "tabby"}
DOG_NAMES = {imagenet.short_name(i) for i in range(151, 269)}
#: What each bundled photo must be classified as (top-1 short names).
EXPECTED = {"chelsea.png": CAT_NAMES, "coffee.jpg": {"espresso"}, "dog.jpg": DOG_NAMES}
NO_ORT_REASON = "onnxruntime is not installed (pip install 'pyvaccel[onnx]')"


def require_ort() -> Any:
    """Import onnxruntime or skip; fail if a test folder shadows the real package."""
    ort = pytest.importorskip("onnxruntime", reason=NO_ORT_REASON)
    if not hasattr(ort, "InferenceSession"):
        pytest.fail(f"'import onnxruntime' found {ort.__file__}, not the real package")
    pytest.importorskip("PIL", reason="Pillow is not installed (pip install 'pyvaccel[onnx]')")
    return ort


def require_weights() -> None:
    """Skip unless the weights of the default model are installed."""
    from vaccel_plugins.onnxruntime import models

    try:
        models.source_path(models.DEFAULT_MODEL)
    except models.ModelUnavailableError as exc:
        pytest.skip(f"default model weights are not installed: {exc}")
    pytest.importorskip("onnx", reason="onnx is not installed (pip install 'pyvaccel[onnx]')")


def model_cache_folder(factory: pytest.TempPathFactory, *, weights_required: bool = True) -> Path:
    """A fresh model cache folder with the default classifier built, for an agent's
    ``VACCEL_CACHE_DIR`` (skips without onnxruntime; without the classifier's weights it skips,
    or returns the folder empty when ``weights_required`` is false)."""
    require_ort()
    from vaccel_plugins.onnxruntime import models

    if weights_required:
        require_weights()
    folder = factory.mktemp("models")
    try:
        models.source_path(models.DEFAULT_MODEL)
    except models.ModelUnavailableError:
        return folder
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VACCEL_CACHE_DIR", str(folder))
        models.ensure_model(models.DEFAULT_MODEL, quiet=True)
    return folder


def photo(name: str) -> bytes:
    return (PHOTOS / name).read_bytes()


def tag_name(tag: str) -> str:
    match = TAG.match(tag)
    assert match, f"tag {tag!r} is not in upstream's '%.3f%% name' format"
    assert 0.0 < float(match["pct"]) <= 100.0
    return match["name"]


def tiny_matmul_model() -> bytes:
    """inputs x: float32 [batch, 3], w: float32 [3, 2]; outputs z = x @ w, d = x + x."""
    from onnx import TensorProto, checker, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Add", ["x", "x"], ["d"])],
        "tiny",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 2]),
        ],
        [
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("d", TensorProto.FLOAT, ["batch", 3]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    checker.check_model(model)
    return bytes(model.SerializeToString())


def tiny_image_model(classes: int) -> bytes:
    """An image 'classifier' with the right input [batch, 3, 224, 224] and ``classes`` outputs
    (global average pool, then a fixed linear layer)."""
    import numpy as np
    from onnx import TensorProto, checker, helper, numpy_helper

    weights = np.linspace(-1, 1, 3 * classes, dtype=np.float32).reshape(3, classes)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "weights"], ["scores"]),
        ],
        "tiny_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(weights, "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    checker.check_model(model)
    return bytes(model.SerializeToString())


def run_python(code: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``python -c code`` in a fresh interpreter (bounded)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
