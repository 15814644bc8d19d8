"""``vaccel-agent`` command-line errors name the option the user wrote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _agent(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VACCEL_")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "vaccel_agent", *args],
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


def test_busy_port_is_one_line_with_the_scheme_and_no_grpc_log() -> None:
    pytest.importorskip("grpc", reason="the agent needs the remote extra")
    from tests.remote.conftest import start_agent

    first = start_agent(["tcp://127.0.0.1:0"])
    try:
        port = first.addresses[0].rsplit(":", 1)[1]
        second = _agent("-a", f"tcp://127.0.0.1:{port}", VACCEL_PLUGINS="noop")
    finally:
        first.stop()
    assert second.returncode == 1
    assert second.stderr.splitlines() == [
        f"vaccel-agent: error: cannot listen on tcp://127.0.0.1:{port}: "
        "the address is in use or cannot be bound"
    ], second.stderr


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, "NONE"),
        ([], {"GRPC_VERBOSITY": "DEBUG"}, "DEBUG"),
        (["--log-level", "4"], {}, None),
        ([], {"VACCEL_LOG_LEVEL": "4"}, None),
        (["--vaccel-config", "log_level=4"], {}, None),
    ],
)
def test_grpc_core_logging_is_quiet_unless_asked_for(
    argv: list[str], env: dict[str, str], expected: str | None
) -> None:
    from vaccel_agent.cli import build_parser, quiet_grpc_core

    quiet_grpc_core(build_parser().parse_args(argv), env)
    assert env.get("GRPC_VERBOSITY") == expected
