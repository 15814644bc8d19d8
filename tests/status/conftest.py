"""Fixtures of the ``vaccel status`` tests: a real agent (noop backend) on a unix socket, its
admin token in a file, and a way to run the command as a real process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.remote.conftest import AgentProcess, clean_env, missing_remote_extra, start_agent


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    """A fresh agent for each test: its counts start at zero."""
    reason = missing_remote_extra()
    if reason is not None:
        pytest.skip(reason)
    handle = start_agent([f"unix://{tmp_path / 'agent.sock'}"])
    yield handle
    handle.stop()


@pytest.fixture
def admin_token_file(agent: AgentProcess, tmp_path: Path) -> Path:
    """A file holding the agent's admin token (what an operator passes)."""
    assert agent.admin_token is not None
    path = tmp_path / "admin-token"
    path.write_bytes(agent.admin_token + b"\n")
    path.chmod(0o600)
    return path


def run_status(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """``vaccel status ARGS`` as a process (with this interpreter), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "vaccel_core.cli", "status", *args],
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
