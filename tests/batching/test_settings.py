"""Batch settings: flags, --vaccel-config keys, VACCEL_BATCH_* variables and the per-model
TOML file, each checked with an error naming the setting; local sessions from the
environment."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from vaccel_core import InvalidArgumentError, Session
from vaccel_core.batching import (
    DEFAULT_DELAY_US,
    BatchSettings,
    batcher_for,
    policy_from_config,
    policy_from_values,
)
from vaccel_core.config import Config

SHA = hashlib.sha256(b"model").hexdigest()


@pytest.mark.parametrize(
    ("size", "delay", "message"),
    [
        ("x", None, "max_size: expected an integer, got 'x'"),
        ("257", None, "max_size: expected 0 to 256, got 257"),
        (-1, None, "max_size: expected 0 to 256, got -1"),
        ("8", "1000001", "max_delay_us: expected 0 to 1000000, got 1000001"),
        ("8", "2.5", "max_delay_us: expected an integer, got '2.5'"),
    ],
)
def test_bad_values_are_named(size: object, delay: object, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message.replace("(", r"\(")):
        policy_from_values(size, delay)


def test_defaults_are_off() -> None:
    policy = policy_from_values()
    assert not policy.enabled
    assert policy.default == BatchSettings(0, DEFAULT_DELAY_US)
    assert policy_from_values("1").enabled is False  # 1 item is no batch
    assert policy_from_values("8", "500").default == BatchSettings(8, 500)


def test_config_file_overrides_per_model(tmp_path: Path) -> None:
    path = tmp_path / "batch.toml"
    path.write_text(
        f"max_delay_us = 300\n[models.default]\nmax_size = 16\n[models.{SHA}]\nmax_size = 0\n"
    )
    policy = policy_from_values("4", None, path)
    assert policy.default == BatchSettings(4, 300)
    assert policy.for_model("default") == BatchSettings(16, 300)
    assert policy.for_model(SHA) == BatchSettings(0, 300)
    assert policy.for_model("0" * 64) == BatchSettings(4, 300)
    assert policy.enabled


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_sise = 4\n", "unknown key 'max_sise' (known: max_size, max_delay_us)"),
        ("[models.resnet]\nmax_size = 4\n", "expected a model named by the sha256 of its file"),
        (f"[models.{SHA.upper()}]\nmax_size = 4\n", "64 lower-case hex digits"),
        (f"[models.{SHA}]\nmax_size = 'many'\n", f"[models.{SHA}]: max_size: expected an integer"),
        ("models = 3\n", "'models' must be a table"),
        ("max_size = \n", "is not valid TOML"),
    ],
)
def test_bad_config_files_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "batch.toml"
    path.write_text(text)
    with pytest.raises(InvalidArgumentError) as err:
        policy_from_values(None, None, path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"cannot read .*nothing\.toml"):
        policy_from_values(None, None, tmp_path / "nothing.toml")


def test_config_keys_win_over_the_environment() -> None:
    config = Config()
    config.extra["batch_max_size"] = "6"
    env = {"VACCEL_BATCH_MAX_SIZE": "3", "VACCEL_BATCH_MAX_DELAY_US": "700"}
    assert policy_from_config(config, env).default == BatchSettings(6, 700)
    config.extra["batch_max_delay_us"] = "nope"
    with pytest.raises(InvalidArgumentError, match=r"--batch-max-delay-us \(batch_max_delay_us\)"):
        policy_from_config(config, env)


def test_local_session_with_a_bad_variable_fails_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VACCEL_BATCH_MAX_SIZE", "lots")
    with pytest.raises(InvalidArgumentError, match="VACCEL_BATCH_MAX_SIZE: expected an integer"):
        Session(config=Config(plugins=["noop"]))


def test_local_sessions_share_the_process_batcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VACCEL_BATCH_MAX_SIZE", "5")
    monkeypatch.setenv("VACCEL_BATCH_MAX_DELAY_US", "1234")
    with Session(config=Config(plugins=["noop"])) as a, Session(config=Config()) as b:
        assert a.batcher is not None and a.batcher is b.batcher
        assert a.batcher.policy.default == BatchSettings(5, 1234)
        a.noop()  # noop does not batch: runs as before
    monkeypatch.delenv("VACCEL_BATCH_MAX_SIZE")
    monkeypatch.delenv("VACCEL_BATCH_MAX_DELAY_US")
    assert batcher_for(Config()) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-max-size", "1000"], "--batch-max-size (batch_max_size): expected 0 to 256"),
        (["--batch-max-delay-us", "soon"], "--batch-max-delay-us (batch_max_delay_us): expected"),
        (["--vaccel-config", "batch_max_size=-2"], "expected 0 to 256, got -2"),
        (["--batch-config", "/nonexistent/batch.toml"], "cannot read /nonexistent/batch.toml"),
    ],
)
def test_agent_refuses_bad_settings_at_start(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vaccel_agent", "-a", "unix:///nonexistent/agent.sock", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "VACCEL_PLUGINS": "noop"},
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("vaccel-agent: error: ")
    assert message in done.stderr
    assert "Traceback" not in done.stderr
