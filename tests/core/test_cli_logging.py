"""The ``vaccel`` command and env-driven logging, run as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _vaccel(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VACCEL_")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "vaccel_core.cli", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        cwd=ROOT,
    )


def test_plugins_json_lists_backends_and_transports_with_status() -> None:
    out = _vaccel("plugins", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    noop = next(b for b in report["backends"] if b["name"] == "noop")
    assert noop["status"] == "loaded" and noop["reason"] is None
    assert noop["distribution"] == "pyvaccel" and noop["type"] == ["DEBUG"]
    assert noop["type_flags"] == 0x100 and "image_classify" in noop["operations"]
    for entry in report["backends"] + report["transports"]:
        assert entry["status"] in {"loaded", "unavailable"}
        assert (entry["reason"] is None) == (entry["status"] == "loaded")


def test_plugins_table_is_human_readable() -> None:
    out = _vaccel("plugins")
    assert out.returncode == 0, out.stderr
    assert "Backends" in out.stdout and "noop" in out.stdout and "loaded" in out.stdout


def test_noop_command_runs_one_noop() -> None:
    out = _vaccel("noop", VACCEL_PLUGINS="libvaccel-noop.so")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["Initialized session with id: 1", "noop: ok (backend noop)"]


def test_noop_command_error_is_one_clear_line() -> None:
    out = _vaccel("noop", VACCEL_PLUGINS="nosuchbackend")
    assert out.returncode == 1
    assert "unknown backend 'nosuchbackend'" in out.stderr
    assert "Traceback" not in out.stderr


def test_debug_log_level_and_log_file(tmp_path: Path) -> None:
    log = tmp_path / "vaccel.log"
    out = _vaccel("noop", VACCEL_PLUGINS="noop", VACCEL_DEBUG_LEVEL="4", VACCEL_LOG_FILE=str(log))
    assert out.returncode == 0, out.stderr
    text = log.read_text()
    assert "<DEBUG> [noop] noop in session 1" in text
    assert "<INFO> session 1 created with backends noop" in text
    quiet = _vaccel("noop", VACCEL_PLUGINS="noop", VACCEL_LOG_LEVEL="1")
    assert "[noop]" not in quiet.stderr
