"""classify through a real agent process running the onnxruntime backend (unix and tcp):
the tags are identical to a local run; models, bad images and model_run cross the wire."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from vaccel_core import Config, InvalidArgumentError, Resource, ResourceType, Session

from .ort_fixtures import (
    EXPECTED,
    PHOTOS,
    model_cache_folder,
    photo,
    tag_name,
    tiny_matmul_model,
)

pytest.importorskip("grpc", reason="the remote tests need the 'remote' extra (grpcio)")

from tests.remote.conftest import AgentProcess, start_agent

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache with the classifier built (skips without onnxruntime or its weights)."""
    return model_cache_folder(tmp_path_factory)


@pytest.fixture(scope="module")
def agent(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One agent with the onnxruntime backend on a unix socket and a tcp port."""
    sock = tmp_path_factory.mktemp("agent") / "agent.sock"
    env = {"VACCEL_PLUGINS": "onnxruntime", "VACCEL_CACHE_DIR": str(model_cache)}
    handle = start_agent([f"unix://{sock}", "tcp://127.0.0.1:0"], env=env)
    yield handle
    assert handle.stop() == 0


@pytest.fixture(params=["unix", "tcp"])
def address(request: pytest.FixtureRequest, agent: AgentProcess) -> str:
    return next(a for a in agent.addresses if a.startswith(f"{request.param}://"))


@pytest.fixture
def local(monkeypatch: pytest.MonkeyPatch, model_cache: Path) -> Iterator[Session]:
    monkeypatch.setenv("VACCEL_CACHE_DIR", str(model_cache))
    with Session(config=Config(plugins=["onnxruntime"])) as s:
        yield s


def remote(address: str) -> Session:
    return Session(config=Config(plugins=["rpc"], rpc_address=address))


def test_remote_tags_are_identical_to_local(address: str, local: Session) -> None:
    with remote(address) as s:
        assert [b.name for b in s.backends] == ["rpc"]
        for name in sorted(EXPECTED):
            image = photo(name)
            got = s.classify(image)
            assert got == local.classify(image)
            assert tag_name(got[0]) in EXPECTED[name]


def test_remote_classify_with_a_model_resource(address: str, local: Session) -> None:
    from vaccel_plugins.onnxruntime import models

    image = photo("chelsea.png")
    with remote(address) as s:
        Resource(models.default_model_path(), ResourceType.MODEL).register(s)
        assert s.classify(image) == local.classify(image)


def test_remote_bad_image_error_crosses_the_wire(address: str) -> None:
    with remote(address) as s:
        with pytest.raises(
            InvalidArgumentError, match=r"classify: argument 'image': cannot decode"
        ):
            s.classify(b"definitely not an image")
        assert tag_name(s.classify(photo("coffee.jpg"))[0]) == "espresso"


def test_remote_model_run(address: str, tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="onnx is not installed (pip install 'pyvaccel[onnx]')")
    path = tmp_path / "tiny.onnx"
    path.write_bytes(tiny_matmul_model())
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    w = np.ones((3, 2), dtype=np.float32)
    with remote(address) as s:
        model = Resource(path, ResourceType.MODEL)
        model.register(s)
        out = s.model_run(model, {"x": x, "w": w})
        np.testing.assert_allclose(out["z"], x @ w)
        with pytest.raises(
            InvalidArgumentError,
            match=r"input 'x': expected float32 of shape \[batch, 3\], got float64 \(2, 3\)",
        ):
            s.model_run(model, {"x": x.astype(np.float64), "w": w})


def test_classify_cli_remote_prints_the_same_as_local(
    agent: AgentProcess, model_cache: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VACCEL_")}
    env["VACCEL_CACHE_DIR"] = str(model_cache)
    cmd = [sys.executable, "-m", "vaccel_core.examples.classify", str(PHOTOS / "dog.jpg"), "2"]
    outputs = {}
    for mode, extra in {
        "local": {"VACCEL_PLUGINS": "onnxruntime"},
        "remote": {"VACCEL_PLUGINS": "rpc", "VACCEL_RPC_ADDRESS": agent.address},
    }.items():
        proc = subprocess.run(
            cmd, env={**env, **extra}, capture_output=True, text=True, timeout=90, check=False
        )
        assert proc.returncode == 0, proc.stderr
        outputs[mode] = proc.stdout.splitlines()
    assert outputs["local"] == outputs["remote"]
    assert outputs["remote"][0] == "Initialized session with id: 1"
    assert outputs["remote"][1] == f"Image size: {(PHOTOS / 'dog.jpg').stat().st_size}B"
    assert (
        tag_name(outputs["remote"][2].removeprefix("classification tags: ")) in EXPECTED["dog.jpg"]
    )
