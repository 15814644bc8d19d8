"""Help and version output of ``vaccel``, ``vaccel-agent`` and ``classify``, and the commands
plugins add through the ``vaccel_register_commands`` hook."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from vaccel_core import PluginRegistry, __version__, hookimpl
from vaccel_core import cli as vaccel_cli

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VACCEL_")}
    environ.update(env, COLUMNS="100")
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=environ, timeout=60, cwd=ROOT
    )


def _help(parser: argparse.ArgumentParser, *args: str) -> None:
    with pytest.raises(SystemExit) as exited:
        parser.parse_args([*args, "--help"])
    assert exited.value.code == 0


def test_vaccel_help_has_no_restructuredtext_and_names_the_variables() -> None:
    out = _run("-m", "vaccel_core.cli", "--help")
    assert out.returncode == 0, out.stderr
    assert "``" not in out.stdout
    assert "VACCEL_PLUGINS" in out.stdout and "VACCEL_RPC_ADDRESS" in out.stdout
    for command in ("plugins", "noop", "models"):
        assert command in out.stdout


def test_every_command_has_version() -> None:
    for args in (
        ["-m", "vaccel_core.cli"],
        ["-m", "vaccel_agent"],
        ["-m", "vaccel_core.examples.classify"],
    ):
        out = _run(*args, "--version")
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[-1] == __version__, (args, out.stdout)


def test_models_help_explains_its_arguments() -> None:
    out = _run("-m", "vaccel_core.cli", "models", "--help")
    assert out.returncode == 0, out.stderr
    assert "{list,build,verify}" in out.stdout and "NAME" in out.stdout
    assert "re-hash" in out.stdout and "default every" in out.stdout
    assert "VACCEL_CACHE_DIR" in out.stdout


def test_agent_address_help_mentions_every_transport() -> None:
    out = _run("-m", "vaccel_agent", "--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for scheme in ("unix:///PATH", "tcp://HOST:PORT", "vsock://CID:PORT", "virtio-mock:///PATH"):
        assert scheme in text
    assert "grpc+" in text and "ttrpc+" in text and "``" not in text


def test_classify_help_names_the_configuration_variables() -> None:
    out = _run("-m", "vaccel_core.examples.classify", "--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "VACCEL_PLUGINS" in text and "VACCEL_RPC_ADDRESS" in text


def test_noop_help_says_what_remote_needs() -> None:
    out = _run("-m", "vaccel_core.cli", "noop", "--help")
    text = " ".join(out.stdout.split())
    assert "--remote" in text and "VACCEL_PLUGINS=rpc" in text


# Commands from plugins ---------------------------------------------------------------------


def _commands_plugin(name: str, hook: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.vaccel_register_commands = hookimpl(hook)  # type: ignore[attr-defined]
    return module


def _greet_hook(register: Any) -> None:
    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("who", help="whom to greet")

    def run(args: argparse.Namespace) -> int:
        print(f"hello {args.who}")
        return 3

    register("greet", "say hello", configure, run)


def _registry(*plugins: tuple[str, Any]) -> PluginRegistry:
    registry = PluginRegistry()
    for name, hook in plugins:
        registry.register_plugin(_commands_plugin(name, hook), name)
    return registry


def test_a_plugin_command_appears_and_runs(capsys: pytest.CaptureFixture[str]) -> None:
    parser = vaccel_cli.build_parser(_registry(("greeter", _greet_hook)))
    _help(parser)
    shown = capsys.readouterr().out
    assert "greet" in shown and "say hello" in shown
    args = parser.parse_args(["greet", "world"])
    assert args.func(args) == 3
    assert capsys.readouterr().out == "hello world\n"


def test_broken_plugin_commands_do_not_break_vaccel(capsys: pytest.CaptureFixture[str]) -> None:
    def raising_hook(register: Any) -> None:
        raise RuntimeError("commands exploded")

    def raising_configure(register: Any) -> None:
        def configure(parser: argparse.ArgumentParser) -> None:
            raise ValueError("bad arguments")

        register("bad", "never shown", configure, lambda args: 0)

    def duplicate(register: Any) -> None:
        register("noop", "steals a built-in", None, lambda args: 0)

    def no_run(register: Any) -> None:
        register("norun", "nothing to run")

    registry = _registry(
        ("greeter", _greet_hook),
        ("raising", raising_hook),
        ("configure", raising_configure),
        ("duplicate", duplicate),
        ("norun", no_run),
    )
    parser = vaccel_cli.build_parser(registry)
    _help(parser)
    shown = capsys.readouterr().out
    assert "greet" in shown and "never shown" not in shown and "steals" not in shown
    assert "norun" not in shown
    errors = {f.name: f.error for f in registry.failures}
    assert errors["raising"] == "RuntimeError: commands exploded"
    assert errors["configure"] == "ValueError: bad arguments"
    assert "already registered by 'vaccel'" in errors["duplicate"]
    assert "has no run function" in errors["norun"]
    assert all(f.group == "vaccel.commands" for f in registry.failures)
    args = parser.parse_args(["noop"])
    assert args.func is vaccel_cli.cmd_noop
    with pytest.raises(SystemExit):
        parser.parse_args(["bad"])


def test_the_core_cli_does_not_import_the_onnxruntime_plugin() -> None:
    code = (
        "import sys, vaccel_core.cli\n"
        "print(sorted(m for m in sys.modules if m.startswith('vaccel_plugins')))\n"
    )
    out = _run("-c", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    source = (ROOT / "vaccel_core" / "cli.py").read_text()
    assert "vaccel_plugins" not in source


def test_models_comes_from_the_onnxruntime_plugin() -> None:
    from vaccel_plugins.onnxruntime import plugin

    registry = PluginRegistry()
    registry.register_plugin(plugin, "onnxruntime")
    commands = {c.name: c for c in vaccel_cli.plugin_commands(registry)}
    assert commands["models"].plugin == "onnxruntime"


def test_new_backend_writes_a_project_from_the_template(tmp_path: Path) -> None:
    out = _run("-m", "vaccel_core.cli", "new-backend", "my_gpu", str(tmp_path / "p"))
    assert out.returncode == 0, out.stderr
    assert "wrote backend project 'my_gpu'" in out.stdout
    pyproject = (tmp_path / "p" / "pyproject.toml").read_text()
    assert "vaccel-my-gpu" in pyproject and "__NAME__" not in pyproject
    assert (tmp_path / "p" / "vaccel_my_gpu" / "__init__.py").is_file()
    again = _run("-m", "vaccel_core.cli", "new-backend", "my_gpu", str(tmp_path / "p"))
    assert again.returncode == 1
    assert "exists and is not an empty folder" in again.stderr and "Traceback" not in again.stderr
    bad = _run("-m", "vaccel_core.cli", "new-backend", "Bad-Name", str(tmp_path / "q"))
    assert bad.returncode == 1 and "backend name 'Bad-Name'" in bad.stderr


def test_new_backend_default_folder_is_named_after_the_package(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VACCEL_")}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-m", "vaccel_core.cli", "new-backend", "fpga2"],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "vaccel-fpga2" / "vaccel_fpga2").is_dir()
