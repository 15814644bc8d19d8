"""Backends' fini at interpreter exit (once per process, with or without an explicit
shutdown), and VACCEL_PLUGINS_STRICT=1 reporting every failing plugin at once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from .test_plugins import _run, site  # noqa: F401  (site: the pip-installed plugin fixture)

ROOT = Path(__file__).resolve().parents[2]

# A demo backend whose init and fini append a line to the file named by FINI_LOG.
_PROGRAM = textwrap.dedent(
    """
    import os, sys, types
    from vaccel_core import Backend, Config, PluginRegistry, PluginType, Session, hookimpl
    from vaccel_core.plugins import get_registry, reset_registry

    class Demo(Backend):
        name = "fini-demo"
        type = PluginType.CPU

        def init(self):
            with open(os.environ["FINI_LOG"], "a") as f:
                f.write("init\\n")

        def fini(self):
            with open(os.environ["FINI_LOG"], "a") as f:
                f.write("fini\\n")

        def noop(self, session):
            pass

    module = types.ModuleType("fini_demo")

    @hookimpl
    def vaccel_register_backends(register):
        register(Demo)

    module.vaccel_register_backends = vaccel_register_backends
    mode = sys.argv[1]
    if mode == "private":  # a registry of the program's own, never made process-wide
        registry = PluginRegistry()
    else:
        registry = get_registry()
    registry.register_plugin(module, "fini_demo")
    session = Session(config=Config(plugins=["fini-demo"]), registry=registry)
    session.noop()
    if mode == "explicit":
        session.release()
        registry.shutdown()
    if mode == "reset":
        reset_registry()
    print("exiting", flush=True)
    """
)


def _exit_log(tmp_path: Path, mode: str) -> list[str]:
    log = tmp_path / f"{mode}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VACCEL_")}
    env["FINI_LOG"] = str(log)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM, mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "exiting\n"
    return log.read_text().splitlines()


def test_fini_runs_at_exit_without_an_explicit_shutdown(tmp_path: Path) -> None:
    assert _exit_log(tmp_path, "plain") == ["init", "fini"]


def test_fini_runs_at_exit_for_a_private_registry(tmp_path: Path) -> None:
    assert _exit_log(tmp_path, "private") == ["init", "fini"]


def test_fini_runs_once_with_an_explicit_shutdown(tmp_path: Path) -> None:
    assert _exit_log(tmp_path, "explicit") == ["init", "fini"]
    assert _exit_log(tmp_path, "reset") == ["init", "fini"]


def test_strict_mode_reports_every_failing_plugin(site: Path) -> None:  # noqa: F811
    code = (
        "from vaccel_core import PluginError\n"
        "from vaccel_core.plugins import get_registry\n"
        "try:\n"
        "    get_registry()\n"
        "except PluginError as exc:\n"
        "    print(exc)\n"
    )
    out = _run(site, "-c", code, VACCEL_PLUGINS_STRICT="1")
    assert out.returncode == 0, out.stderr
    message = out.stdout.strip()
    assert "\n" not in message
    assert message.startswith("3 plugins failed (VACCEL_PLUGINS_STRICT=1): ")
    assert (
        "vaccel.backends:broken-hook (vaccel-broken-plugins 0.0.1): "
        "RuntimeError: registration exploded" in message
    )
    assert (
        "vaccel.backends:broken-import (vaccel-broken-plugins 0.0.1): ModuleNotFoundError: "
        "No module named 'a_library_that_is_not_installed'" in message
    )
    assert "vaccel.backends:not-a-backend (vaccel-broken-plugins 0.0.1): PluginError: " in message
    assert "is not a vaccel_core.backend.Backend" in message


def test_strict_mode_on_the_command_line_lists_them_too(site: Path) -> None:  # noqa: F811
    out = _run(site, "-m", "vaccel_core.cli", "noop", VACCEL_PLUGINS_STRICT="1")
    assert out.returncode == 1
    for name in ("broken-hook", "broken-import", "not-a-backend"):
        assert f"vaccel.backends:{name} (vaccel-broken-plugins 0.0.1)" in out.stderr
    assert "Traceback" not in out.stderr
