"""The kit as backend authors run it: the example package (tests/plugins/vaccel-demo-backend) and
a project generated from the template (vaccel_core.testing.new_backend) are pip-installed into a
private folder (not the venv), and pytest runs each one's own kit test in a fresh process with
that folder on its path, outside this repository (no conftest, no pyproject of ours)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugin_packages import pip_install_into
from vaccel_core.testing import new_backend

DEMO = Path(__file__).resolve().parents[1] / "plugins" / "vaccel-demo-backend"


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("hatchling", reason="hatchling (test extra) builds the packages")
    root = tmp_path_factory.mktemp("kit")
    demo = root / "vaccel-demo-backend"
    shutil.copytree(DEMO, demo, ignore=shutil.ignore_patterns("__pycache__"))
    generated = new_backend("kit_sample", root / "vaccel-kit-sample")
    site = root / "site"
    pip_install_into(site, demo, generated)
    return {"site": site, "demo": demo, "template": generated}


def _pytest(site: Path, project: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VACCEL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, sys.path)])
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.parametrize("name", ["demo", "template"])
def test_package_passes_the_kit(projects: dict[str, Path], name: str) -> None:
    out = _pytest(projects["site"], projects[name])
    assert out.returncode == 0, out.stdout + out.stderr
    summary = out.stdout.strip().splitlines()[-1]
    assert "6 passed" in summary, out.stdout
    assert "skipped" not in summary or "remote" in out.stdout, out.stdout


def test_template_is_complete(tmp_path: Path) -> None:
    project = new_backend("abc_1", tmp_path / "p")
    files = sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "pyproject.toml",
        "tests/test_conformance.py",
        "vaccel_abc_1/__init__.py",
    ]
    for path in files:
        text = (project / path).read_text()
        assert "__NAME__" not in text and "__PACKAGE__" not in text and "__CLASS__" not in text
    pyproject = (project / "pyproject.toml").read_text()
    assert 'name = "vaccel-abc-1"' in pyproject
    assert 'abc_1 = "vaccel_abc_1"' in pyproject
    assert "class Abc1Backend(Backend)" in (project / "vaccel_abc_1/__init__.py").read_text()
    with pytest.raises(FileExistsError):
        new_backend("abc_1", project)
    with pytest.raises(ValueError, match="lower-case"):
        new_backend("Bad-Name", tmp_path / "q")
