"""The onnxruntime backend through real Sessions: classify on real photos, the model cache,
model_run checks, sgemm/minmax, resource release, bad images, providers and availability."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.catalog_samples import PNG_1PX
from vaccel_core import (
    Config,
    InvalidArgumentError,
    PluginRegistry,
    Resource,
    ResourceType,
    Session,
)
from vaccel_plugins.onnxruntime import inference
from vaccel_plugins.onnxruntime.backend import OnnxRuntimeBackend, model_key, output_image_name

from .ort_fixtures import (
    EXPECTED,
    photo,
    require_ort,
    require_weights,
    run_python,
    tag_name,
    tiny_image_model,
    tiny_matmul_model,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def default_ready(backend: OnnxRuntimeBackend, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Build the default model into a private cache and load it once for the module."""
    require_weights()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VACCEL_CACHE_DIR", str(tmp_path_factory.mktemp("models")))
        backend.default_model()


def new_session(registry: PluginRegistry) -> Session:
    return Session(config=Config(plugins=["onnxruntime"]), registry=registry)


@pytest.fixture
def session(registry: PluginRegistry) -> Iterator[Session]:
    with new_session(registry) as s:
        yield s


def model_resource(tmp_path: Path, data: bytes, name: str = "model.onnx") -> Resource:
    path = tmp_path / name
    path.write_bytes(data)
    return Resource(path, ResourceType.MODEL)


# --------------------------------------------------------------------------------------
# classify on real photos with the default model
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_classify_bundled_photos(name: str, session: Session, default_ready: None) -> None:
    image = photo(name)
    tags, imgname = session.classify(image)
    assert tag_name(tags) in EXPECTED[name], tags
    assert imgname == output_image_name(image)
    assert imgname.startswith("classified-") and imgname.endswith(Path(name).suffix)


def test_default_inference_session_is_built_once_and_reused(
    registry: PluginRegistry, backend: OnnxRuntimeBackend, default_ready: None
) -> None:
    first = backend.default_model()
    builds = backend.builds
    results = []
    for _ in range(2):
        with new_session(registry) as s:
            results.append(s.classify(photo("coffee.jpg")))
    assert backend.builds == builds
    assert backend.default_model() is first
    assert results[0] == results[1]


def test_concurrent_classify_in_threads(
    session: Session, backend: OnnxRuntimeBackend, default_ready: None
) -> None:
    image = photo("chelsea.png")
    expected = session.classify(image)
    builds = backend.builds
    results: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(session.classify(image))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and results == [expected] * 4
    assert backend.builds == builds


# --------------------------------------------------------------------------------------
# classify with a MODEL resource
# --------------------------------------------------------------------------------------


def test_classify_uses_the_sessions_model_resource(
    registry: PluginRegistry, backend: OnnxRuntimeBackend, default_ready: None, tmp_path: Path
) -> None:
    default_file = Path(backend.default_model().path)
    with new_session(registry) as plain:
        expected = plain.classify(photo("dog.jpg"))
    builds = backend.builds
    with new_session(registry) as a, new_session(registry) as b:
        for s in (a, b):
            Resource(default_file, ResourceType.MODEL).register(s)
        assert a.classify(photo("dog.jpg")) == expected
        assert b.classify(photo("dog.jpg")) == expected
        # one inference session for the same file content, shared by both sessions
        assert backend.builds == builds + 1
        assert len(backend._models) == 1
    assert backend._models == {} and backend._keys == {}


def test_classify_with_a_model_of_ten_classes_is_refused(session: Session, tmp_path: Path) -> None:
    model_resource(tmp_path, tiny_image_model(10), "ten.onnx").register(session)
    with pytest.raises(
        InvalidArgumentError,
        match=r"classify: MODEL resource \d+ \(ten\.onnx\):"
        r" output 'scores' is float32 of shape \[batch, 10\], expected 1000",
    ):
        session.classify(photo("coffee.jpg"))


def test_classify_with_a_non_image_model_is_refused(session: Session, tmp_path: Path) -> None:
    model_resource(tmp_path, tiny_matmul_model(), "tiny.onnx").register(session)
    with pytest.raises(InvalidArgumentError, match=r"has 2 inputs, expected 1 image input"):
        session.classify(photo("coffee.jpg"))


def test_classify_with_a_custom_1000_class_model(session: Session, tmp_path: Path) -> None:
    model_resource(tmp_path, tiny_image_model(1000), "linear.onnx").register(session)
    tags, _ = session.classify(photo("coffee.jpg"))
    assert tag_name(tags)  # a well-formed tag from the custom model, not the default one


# --------------------------------------------------------------------------------------
# bad images
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20, r"cannot decode 168 bytes as an image"),
        (b"this is not an image at all", r"cannot decode 27 bytes as an image"),
        (b"", r"expected a non-empty buffer, got 0 bytes"),
        (PNG_1PX, r"1x1 pixels is too small"),
        (None, r"cannot decode 2000 bytes as an image"),  # a truncated JPEG
    ],
    ids=["corrupt-png", "text", "empty", "1x1", "truncated-jpeg"],
)
def test_bad_images_get_clear_errors(
    data: bytes | None, message: str, session: Session, default_ready: None
) -> None:
    if data is None:
        data = photo("dog.jpg")[:2000]
    with pytest.raises(InvalidArgumentError, match=r"^classify: argument 'image': " + message):
        session.classify(data)
    assert not session.closed
    assert tag_name(session.classify(photo("coffee.jpg"))[0]) == "espresso"


# --------------------------------------------------------------------------------------
# model_load / model_run / model_unload
# --------------------------------------------------------------------------------------


@pytest.fixture
def tiny(session: Session, tmp_path: Path) -> Resource:
    pytest.importorskip("onnx", reason="onnx is not installed (pip install 'pyvaccel[onnx]')")
    res = model_resource(tmp_path, tiny_matmul_model(), "tiny.onnx")
    res.register(session)
    return res


def test_model_run_by_name_and_by_position(session: Session, tiny: Resource) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    w = np.linspace(0, 1, 6, dtype=np.float32).reshape(3, 2)
    out = session.model_run(tiny, {"x": x, "w": w})
    assert sorted(out) == ["d", "z"]
    np.testing.assert_allclose(out["z"], x @ w, rtol=1e-6)
    np.testing.assert_array_equal(out["d"], x + x)
    again = session.model_run(tiny, [x[:1], w])
    np.testing.assert_allclose(again["z"], x[:1] @ w, rtol=1e-6)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            {"x": np.zeros((1, 3)), "w": np.zeros((3, 2), np.float32)},
            r"model_run: input 'x': expected float32 of shape \[batch, 3\], got float64 \(1, 3\)",
        ),
        (
            {"x": np.zeros((2, 4), np.float32), "w": np.zeros((3, 2), np.float32)},
            r"input 'x': expected float32 of shape \[batch, 3\], got float32 \(2, 4\)",
        ),
        (
            {"x": np.zeros(3, np.float32), "w": np.zeros((3, 2), np.float32)},
            r"input 'x': expected float32 of shape \[batch, 3\], got float32 \(3,\)",
        ),
        (
            {"x": np.zeros((1, 3), np.float32), "w": np.zeros((2, 3), np.float32)},
            r"input 'w': expected float32 of shape \[3, 2\], got float32 \(2, 3\)",
        ),
        (
            {"x": np.zeros((1, 3), np.float32), "q": np.zeros(1, np.float32)},
            r"model_run: input 'q': not an input of MODEL resource \d+ \(tiny\.onnx\) "
            r"\(its inputs: 'x', 'w'\)",
        ),
        (
            {"x": np.zeros((1, 3), np.float32)},
            r"model_run: input 'w': missing, expected float32 of shape \[3, 2\]",
        ),
        (
            [np.zeros((1, 3), np.float32)],
            r"model_run: argument 'inputs': expected 2 arrays for the inputs of MODEL resource "
            r"\d+ \(tiny\.onnx\) \('x', 'w'\), got 1",
        ),
    ],
    ids=["dtype", "shape", "rank", "fixed-dim", "unknown-name", "missing", "count"],
)
def test_model_run_checks_inputs_against_the_model(
    inputs: object, message: str, session: Session, tiny: Resource
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        session.model_run(tiny, inputs)  # type: ignore[arg-type]


def test_model_load_unload_and_cache(
    session: Session, tiny: Resource, backend: OnnxRuntimeBackend
) -> None:
    builds = backend.builds
    session.model_load(tiny)
    session.model_load(tiny)
    assert backend.builds == builds + 1
    key = model_key(tiny)
    assert key in backend._models
    x, w = np.ones((1, 3), np.float32), np.ones((3, 2), np.float32)
    for _ in range(3):
        session.model_run(tiny, {"x": x, "w": w})
    assert backend.builds == builds + 1
    session.model_unload(tiny)
    assert key not in backend._models
    np.testing.assert_array_equal(session.model_run(tiny, [x, w])["z"], [[3.0, 3.0]])
    assert backend.builds == builds + 2


def test_resources_are_freed_on_unregister_and_release(
    registry: PluginRegistry, backend: OnnxRuntimeBackend, tmp_path: Path
) -> None:
    pytest.importorskip("onnx", reason="onnx is not installed (pip install 'pyvaccel[onnx]')")
    s = new_session(registry)
    kept = model_resource(tmp_path, tiny_matmul_model(), "kept.onnx")
    dropped = model_resource(tmp_path, tiny_image_model(1000), "dropped.onnx")
    for res in (kept, dropped):
        res.register(s)
        s.model_load(res)
    assert len(backend._models) == 2
    dropped.unregister(s)
    assert list(backend._models) == [model_key(kept)]
    s.release()
    assert backend._models == {} and backend._keys == {} and backend._users == {}


def test_a_file_that_is_not_onnx_is_refused(session: Session) -> None:
    res = Resource.from_buffer(b"not an onnx model", ResourceType.MODEL, name="bad.onnx")
    res.register(session)
    with pytest.raises(
        InvalidArgumentError,
        match=r"onnxruntime cannot load MODEL resource \d+ \(bad\.onnx\) as an ONNX model",
    ):
        session.model_load(res)
    assert not session.closed


# --------------------------------------------------------------------------------------
# sgemm and minmax, computed for real
# --------------------------------------------------------------------------------------


def test_sgemm_matches_numpy(session: Session) -> None:
    rng = np.random.default_rng(7)
    a = rng.standard_normal((4, 5), dtype=np.float32)
    b = rng.standard_normal((5, 3), dtype=np.float32)
    c = rng.standard_normal((4, 3), dtype=np.float32)
    out = session.sgemm(a, b, c, alpha=2.0, beta=0.5)
    assert out.dtype == np.float32 and out.shape == (4, 3)
    np.testing.assert_allclose(out, 2.0 * a @ b + 0.5 * c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(session.sgemm(a, b), a @ b, rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidArgumentError, match="sgemm: argument 'b'"):
        session.sgemm(a, a)


def test_minmax_matches_numpy(session: Session) -> None:
    data = np.array([-7.5, -1.0, 0.0, 2.5, 9.0, 4.0])
    out, low, high = session.minmax(data, -2, 3)
    np.testing.assert_array_equal(out, np.clip(data, -2, 3))
    assert (low, high) == (-7.5, 9.0)
    with pytest.raises(InvalidArgumentError, match="above 'high_threshold'"):
        session.minmax(data, 5, 1)


# --------------------------------------------------------------------------------------
# execution providers
# --------------------------------------------------------------------------------------

KNOWN = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_default_providers_keep_the_order_and_what_is_available() -> None:
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert inference.choose_providers(None, cuda, KNOWN) == cuda
    assert inference.choose_providers(None, ["CPUExecutionProvider"], KNOWN) == [
        "CPUExecutionProvider"
    ]
    assert inference.choose_providers(None, [*reversed(KNOWN)], KNOWN) == KNOWN


def test_configured_providers_accept_short_names_and_drop_missing_ones() -> None:
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert inference.choose_providers("cpu,cuda", available, KNOWN) == [
        "CPUExecutionProvider",
        "CUDAExecutionProvider",
    ]
    assert inference.choose_providers("tensorrt", available, KNOWN) == ["CPUExecutionProvider"]
    with pytest.raises(InvalidArgumentError, match=r"unknown execution provider 'warp'"):
        inference.choose_providers("warp", available, KNOWN)


def test_tensorrt_gets_an_engine_cache_beside_the_models(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VACCEL_CACHE_DIR", str(tmp_path / "models"))
    args = inference.provider_arguments(KNOWN)
    assert args[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert args[0] == (
        "TensorrtExecutionProvider",
        {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(tmp_path / "tensorrt")},
    )
    assert (tmp_path / "tensorrt").is_dir()


def test_settings_come_from_env_or_vaccel_config() -> None:
    require_ort()
    env = {"VACCEL_ORT_PROVIDERS": "CPUExecutionProvider", "VACCEL_ORT_THREADS": "2"}
    settings = inference.read_settings({}, env)
    assert settings.providers == ["CPUExecutionProvider"] and settings.intra_op_threads == 2
    settings = inference.read_settings({"ort_threads": "1", "ort_spinning": "0"}, {})
    assert settings.intra_op_threads == 1 and settings.spinning is False
    with pytest.raises(InvalidArgumentError, match=r"threads: expected an integer, got 'many'"):
        inference.read_settings({}, {"VACCEL_ORT_THREADS": "many"})


def test_settings_of_the_sessions_configuration_are_used(
    registry: PluginRegistry, tmp_path: Path
) -> None:
    pytest.importorskip("onnx", reason="onnx is not installed (pip install 'pyvaccel[onnx]')")
    config = Config(plugins=["onnxruntime"], extra={"ort_providers": "warp,cpu"})
    with Session(config=config, registry=registry) as s:
        res = model_resource(tmp_path, tiny_matmul_model(), "tiny.onnx")
        res.register(s)
        with pytest.raises(InvalidArgumentError, match=r"unknown execution provider 'warp'"):
            s.model_load(res)


def test_details_report_the_providers_read_from_the_inference_session(
    backend: OnnxRuntimeBackend, default_ready: None
) -> None:
    details = backend.details()
    actual = backend.default_model().session.get_providers()
    assert details["providers_in_use"] == actual == ["CPUExecutionProvider"]
    assert details["onnxruntime"] == require_ort().__version__


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("VACCEL_")}


def test_vaccel_plugins_json_reports_the_providers_in_use() -> None:
    require_ort()
    code = "import sys; from vaccel_core.cli import main; sys.exit(main(['plugins', '--json']))"
    proc = run_python(code, _env())
    assert proc.returncode == 0, proc.stderr
    entry = {b["name"]: b for b in json.loads(proc.stdout)["backends"]}["onnxruntime"]
    assert entry["status"] == "loaded" and entry["reason"] is None
    assert entry["type"] == ["CPU", "GPU"]
    assert entry["details"]["providers_in_use"] == ["CPUExecutionProvider"]
    assert {"image_classify", "model_run", "blas_sgemm", "minmax"} <= set(entry["operations"])


def test_without_onnxruntime_the_backend_is_unavailable_with_the_reason() -> None:
    # sys.modules[name] = None makes the import system treat onnxruntime as absent
    code = (
        "import sys, json; sys.modules['onnxruntime'] = None\n"
        "from vaccel_core.cli import main\n"
        "rc = main(['plugins', '--json'])\n"
        "from vaccel_core import Session, PluginError\n"
        "try:\n    Session()\nexcept PluginError as exc:\n    print('ERROR:', exc)\n"
        "assert 'onnxruntime' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    proc = run_python(code, {**_env(), "VACCEL_PLUGINS": "onnxruntime"})
    assert proc.returncode == 0, proc.stderr
    report, _, error = proc.stdout.rpartition("ERROR: ")
    entry = {b["name"]: b for b in json.loads(report)["backends"]}["onnxruntime"]
    reason = "onnxruntime is not installed (pip install 'pyvaccel[onnx]' or 'pyvaccel[onnx-gpu]')"
    assert entry["status"] == "unavailable" and entry["reason"] == reason
    assert error.strip() == f"no usable backend: onnxruntime ({reason})"


def test_importing_the_plugin_does_not_import_heavy_packages() -> None:
    code = (
        "import sys\n"
        "import vaccel_plugins.onnxruntime.plugin, vaccel_plugins.onnxruntime.backend\n"
        "heavy = [m for m in ('onnxruntime', 'onnx', 'PIL') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = run_python(code, _env())
    assert proc.returncode == 0, proc.stderr
