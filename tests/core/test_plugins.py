"""Plugin discovery through real pip-installed distributions, good and broken."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugin_packages import pip_install_into
from vaccel_core import PluginError, PluginRegistry

from .helpers import FailingBackend, plugin_module

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Install the demo and broken plugin packages with pip into a private folder."""
    pytest.importorskip("hatchling", reason="hatchling (test extra) builds the plugin fixtures")
    target = tmp_path_factory.mktemp("site")
    pip_install_into(target, PLUGINS / "vaccel-demo-backend", PLUGINS / "vaccel-broken-plugins")
    assert (target / "vaccel_demo_backend").is_dir()
    return target


def _run(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VACCEL_")}
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(site), str(Path(__file__).resolve().parents[2]), environ.get("PYTHONPATH", "")]
    )
    environ.update(env)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=environ, timeout=60
    )


def test_third_party_backend_is_discovered_and_used(site: Path) -> None:
    out = _run(site, "-m", "vaccel_core.cli", "plugins", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    demo = next(b for b in report["backends"] if b["name"] == "demo")
    assert demo["distribution"] == "vaccel-demo-backend"
    assert demo["version"] == "1.2.3"
    assert demo["status"] == "loaded"
    assert demo["type"] == ["CPU", "GENERIC"]
    assert demo["operations"] == ["image_classify", "noop"]
    assert any(b["name"] == "noop" and b["status"] == "loaded" for b in report["backends"])

    code = (
        "from vaccel_core import Session\n"
        "with Session() as s:\n"
        "    print(s.classify(b'12345')[0]); s.noop(); print(s.meta['demo_noops'])\n"
    )
    used = _run(site, "-c", code, VACCEL_PLUGINS="demo:noop")
    assert used.returncode == 0, used.stderr
    assert used.stdout.split("\n")[:2] == ["demo saw 5 bytes", "1"]


def test_broken_plugins_are_recorded_and_the_others_still_load(site: Path) -> None:
    out = _run(site, "-m", "vaccel_core.cli", "plugins", "--json")
    report = json.loads(out.stdout)
    failures = {f["name"]: f for f in report["failures"]}
    assert (
        "No module named 'a_library_that_is_not_installed'" in (failures["broken-import"]["error"])
    )
    assert failures["broken-import"]["distribution"] == "vaccel-broken-plugins"
    assert failures["broken-import"]["version"] == "0.0.1"
    assert failures["broken-hook"]["error"] == "RuntimeError: registration exploded"
    assert "is not a vaccel_core.backend.Backend" in failures["not-a-backend"]["error"]
    names = {b["name"] for b in report["backends"]}
    assert {"demo", "noop"} <= names and "impostor" not in names


def test_strict_mode_turns_a_broken_plugin_into_an_error(site: Path) -> None:
    out = _run(site, "-m", "vaccel_core.cli", "noop", VACCEL_PLUGINS_STRICT="1")
    assert out.returncode == 1
    assert "VACCEL_PLUGINS_STRICT=1" in out.stderr
    assert "vaccel-broken-plugins" in out.stderr
    assert "Traceback" not in out.stderr


def test_registering_the_same_name_twice_is_a_recorded_failure() -> None:
    registry = PluginRegistry()
    registry.register_plugin(plugin_module("a", FailingBackend), "a")
    clone = type("FailingBackend", (FailingBackend,), {})
    registry.register_plugin(plugin_module("b", clone), "b")
    assert registry.backends["failing"].plugin == "a"
    assert "already registered by plugin 'a'" in registry.failures[0].error
    strict = PluginRegistry(strict=True)
    strict.register_plugin(plugin_module("a", FailingBackend), "a")
    with pytest.raises(PluginError, match="already registered"):
        strict.register_plugin(plugin_module("b", clone), "b")


def test_misspelt_hook_is_reported_by_check_pending() -> None:
    import types

    from vaccel_core import hookimpl

    module = types.ModuleType("typo")

    @hookimpl
    def vaccel_register_backend(register):  # type: ignore[no-untyped-def]  # missing "s"
        pass

    module.vaccel_register_backend = vaccel_register_backend  # type: ignore[attr-defined]
    registry = PluginRegistry()
    registry.register_plugin(module, "typo")
    registry.load_entrypoints(groups=())
    assert any("vaccel_register_backend" in f.error for f in registry.failures)


def test_importing_vaccel_core_loads_no_heavy_dependency() -> None:
    code = (
        "import sys, vaccel_core\n"
        "heavy = {'grpc', 'onnxruntime', 'onnx', 'google.protobuf', 'PIL', 'torch'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_noop_session_does_not_load_grpc() -> None:
    """Discovering the gRPC transports looks grpcio up without importing it."""
    code = (
        "import sys\n"
        "from vaccel_core import Config, Session, get_registry\n"
        "with Session(config=Config(plugins=['noop'])) as s:\n"
        "    s.noop()\n"
        "print(sorted(get_registry().transports), 'grpc' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['tcp', 'unix', 'virtio-mock', 'vsock'] False"


def test_grpc_transports_report_a_missing_grpcio(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from vaccel_transports import GRPC_MISSING
    from vaccel_transports.tcp import TcpTransport
    from vaccel_transports.unix import UnixTransport

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "grpc" else real(name, *a)
    )
    assert TcpTransport.probe() == GRPC_MISSING
    assert GRPC_MISSING == "grpcio is not installed (pip install 'pyvaccel[remote]')"
    # unix speaks ttrpc by default, which needs protobuf only; asking it for gRPC says why not.
    assert UnixTransport.probe() is None
    from vaccel_core.errors import RemoteError
    from vaccel_core.transport import Address, TransportOptions

    with pytest.raises(RemoteError, match=r"grpc\+unix:///tmp/v.sock: gRPC was asked for"):
        UnixTransport().connect(Address.parse("grpc+unix:///tmp/v.sock"), TransportOptions())
