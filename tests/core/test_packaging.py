"""What pyvaccel installs: only vaccel_* import names, and every package folder of the repository.

The repository keeps its folders ``agent/`` and ``transports/``; they install as
``vaccel_agent`` and ``vaccel_transports`` (setuptools ``package-dir``), because ``agent`` and
``transports`` are other PyPI projects' names and two wheels with one top-level name overwrite
each other silently.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
IMPORT_NAMES = {"vaccel_core", "vaccel_plugins", "vaccel_agent", "vaccel_transports"}


def _setuptools_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _folder(package: str, package_dir: dict[str, str]) -> Path:
    top, _, rest = package.partition(".")
    base = ROOT / package_dir.get(top, top)
    return base.joinpath(*rest.split(".")) if rest else base


def test_every_package_folder_is_listed() -> None:
    """A new subpackage missing from ``packages`` would be left out of the wheel."""
    config = _setuptools_config()
    package_dir, listed = config["package-dir"], set(config["packages"])
    folders = {_folder(name, package_dir) for name in listed}
    tops = {name for name in listed if "." not in name}
    assert tops == IMPORT_NAMES
    for top in tops:
        for init in _folder(top, package_dir).rglob("*.py"):
            if "__pycache__" in init.parts or "templates" in init.parts:
                continue
            assert init.parent in folders, (
                f"{init.parent.relative_to(ROOT)} holds Python modules but no entry of "
                "[tool.setuptools] packages in pyproject.toml names it"
            )


_INSTALLED = """
import json
from importlib.metadata import distribution
dist = distribution("pyvaccel")
direct = dist.read_text("direct_url.json")
print(json.dumps({
    "editable": bool(direct and json.loads(direct).get("dir_info", {}).get("editable")),
    "top_level": (dist.read_text("top_level.txt") or "").split(),
    "files": [str(f) for f in dist.files or []],
}))
"""


def _run_outside_repo(code: str, cwd: Path) -> str:
    """Run ``code`` where the repository's folders are not on ``sys.path`` (nor its egg-info)."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout


def test_installed_import_names_are_all_vaccel(tmp_path: Path) -> None:
    found = json.loads(_run_outside_repo(_INSTALLED, tmp_path))
    assert set(found["top_level"]) == IMPORT_NAMES
    if not found["editable"]:
        installed = {
            f.split("/")[0] for f in found["files"] if f.endswith(".py") and not f.startswith("..")
        }
        assert installed == IMPORT_NAMES, f"the wheel installs {sorted(installed)}"


@pytest.mark.parametrize(
    ("plain", "ours"), [("agent", "vaccel_agent"), ("transports", "vaccel_transports")]
)
def test_plain_names_are_not_taken(tmp_path: Path, plain: str, ours: str) -> None:
    """Outside the repository, ``import agent`` is not ours; ``import vaccel_agent`` is."""
    code = (
        "import importlib.util, json; "
        f"print(json.dumps([importlib.util.find_spec({plain!r}) is None, "
        f"importlib.util.find_spec({ours!r}).origin]))"
    )
    plain_absent, origin = json.loads(_run_outside_repo(code, tmp_path))
    assert origin and origin.endswith("__init__.py")
    assert plain_absent, f"`import {plain}` still finds a module: pyvaccel would shadow {plain!r}"
