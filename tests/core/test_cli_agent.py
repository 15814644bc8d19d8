"""``vaccel-agent`` command-line errors name the option the user wrote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _agent(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VACCEL_")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        cwd=ROOT,
    )


def test_unknown_backend_in_plugins_flag_names_the_flag(tmp_path: Path) -> None:
    out = _agent("-a", f"unix://{tmp_path / 'v.sock'}", "--plugins", "foo")
    assert out.returncode == 2
    assert "--plugins names unknown backend 'foo'" in out.stderr
    assert "VACCEL_PLUGINS" not in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "v.sock").exists()


def test_unknown_backend_in_vaccel_config_names_the_option(tmp_path: Path) -> None:
    out = _agent("-a", f"unix://{tmp_path / 'v.sock'}", "--vaccel-config", "plugins=libvaccel-x.so")
    assert out.returncode == 2
    assert "--vaccel-config plugins= names unknown backend 'x'" in out.stderr


def test_unknown_backend_in_environment_still_names_the_variable(tmp_path: Path) -> None:
    out = _agent("-a", f"unix://{tmp_path / 'v.sock'}", VACCEL_PLUGINS="foo")
    assert out.returncode == 1
    assert "VACCEL_PLUGINS names unknown backend 'foo'" in out.stderr
