"""The ``classify`` example and ``vaccel models``, run as a user runs them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vaccel_core import cli as vaccel_cli
from vaccel_core.examples import classify
from vaccel_plugins.onnxruntime import models

from .ort_fixtures import EXPECTED, PHOTOS, require_ort, require_weights, tag_name

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_ort()
    require_weights()
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def local(monkeypatch: pytest.MonkeyPatch, model_cache: Path) -> Path:
    monkeypatch.setenv("VACCEL_PLUGINS", "onnxruntime")
    monkeypatch.setenv("VACCEL_CACHE_DIR", str(model_cache))
    return model_cache


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def check_seed_output(stdout: str, photo: str) -> str:
    """The three lines of upstream's example; returns the tag."""
    lines = _lines(stdout)
    assert len(lines) == 3, stdout
    assert re.fullmatch(r"Initialized session with id: \d+", lines[0])
    assert lines[1] == f"Image size: {(PHOTOS / photo).stat().st_size}B"
    prefix = "classification tags: "
    assert lines[2].startswith(prefix)
    tag = lines[2][len(prefix) :]
    assert tag_name(tag) in EXPECTED[photo]
    return tag


@pytest.mark.parametrize("photo", ["dog.jpg", "coffee.jpg"])
def test_prints_the_seed_lines(photo: str, local: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert classify.main([str(PHOTOS / photo), "3"]) == 0
    check_seed_output(capsys.readouterr().out, photo)


def test_model_argument_registers_that_model(
    local: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = str(PHOTOS / "chelsea.png")
    assert classify.main([image]) == 0
    default_tag = check_seed_output(capsys.readouterr().out, "chelsea.png")
    model = models.ensure_model(models.DEFAULT_MODEL, quiet=True)
    assert classify.main([image, "1", str(model)]) == 0
    assert check_seed_output(capsys.readouterr().out, "chelsea.png") == default_tag


def test_profiling_prints_the_regions(
    local: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VACCEL_PROFILING_ENABLED", "1")
    assert classify.main([str(PHOTOS / "coffee.jpg"), "2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\[prof\] image_classify: total_time: \d+ nsec nr_entries: 2$", out, re.M)
    assert re.search(
        r"^\[prof\] onnxruntime_inference: total_time: \d+ nsec nr_entries: 2$", out, re.M
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.jpg"], r"IMAGE: 'missing\.jpg' does not exist or is not a file"),
        (["{photo}", "x"], r"ITERATIONS: expected a positive integer, got 'x'"),
        (["{photo}", "0"], r"ITERATIONS: expected a positive integer, got 0"),
        (["{photo}", "1", "nomodel.onnx"], r"MODEL: 'nomodel\.onnx' does not exist"),
        (["{text}"], r"classify: argument 'image': cannot decode \d+ bytes as an image"),
    ],
    ids=["missing-image", "iterations-text", "iterations-zero", "missing-model", "not-an-image"],
)
def test_errors_are_one_clear_line_with_status_1(
    args: list[str],
    message: str,
    local: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    argv = [a.format(photo=PHOTOS / "coffee.jpg", text=text) for a in args]
    monkeypatch.chdir(tmp_path)
    assert classify.main(argv) == 1
    err = capsys.readouterr().err
    assert re.search(r"^classify: error: " + message, err, re.M), err
    assert "Traceback" not in err


def _console_script(name: str) -> list[str]:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", f"vaccel_core.examples.{name}"]


def test_console_script(model_cache: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VACCEL_")}
    env.update(VACCEL_PLUGINS="onnxruntime", VACCEL_CACHE_DIR=str(model_cache))
    proc = subprocess.run(
        [*_console_script("classify"), str(PHOTOS / "dog.jpg"), "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    check_seed_output(proc.stdout, "dog.jpg")


# --------------------------------------------------------------------------------------
# vaccel models
# --------------------------------------------------------------------------------------


def test_vaccel_models_list_build_verify(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_ort()
    require_weights()
    monkeypatch.setenv("VACCEL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    assert vaccel_cli.main(["models", "list"]) == 0
    assert "not built" in capsys.readouterr().out
    assert vaccel_cli.main(["models", "verify"]) == 1
    assert "efficientnet-lite0: FAILED: not built yet" in capsys.readouterr().out
    assert vaccel_cli.main(["models", "build", "efficientnet-lite0"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"efficientnet-lite0: {tmp_path / 'efficientnet-lite0.onnx'}"
    assert "building efficientnet-lite0 ONNX model" in captured.err
    assert vaccel_cli.main(["models", "verify"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet-lite0: ok:" in out and "output [1, 1000]" in out
    assert vaccel_cli.main(["models"]) == 0
    assert "built, verified" in capsys.readouterr().out
    (tmp_path / "efficientnet-lite0.onnx").write_bytes(b"tampered")
    assert vaccel_cli.main(["models", "verify"]) == 1
    assert "FAILED: sha256 mismatch" in capsys.readouterr().out


def test_vaccel_models_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert vaccel_cli.main(["models", "build", "resnet-9000"]) == 1
    err = capsys.readouterr().err
    assert "vaccel models build: error: unknown model 'resnet-9000'" in err
