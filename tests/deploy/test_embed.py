"""vaccel_agent.embed: the agent inside this process (Kata's integrated mode, for Python)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("grpc", reason="grpcio is not installed (extra 'remote')")

from vaccel_agent.embed import IntegratedSettings, integrated, serve_in_background
from vaccel_core import Config, InvalidArgumentError, Session

from .test_files import KATA, load_toml

pytestmark = pytest.mark.timeout(60)

PHOTO = Path(__file__).resolve().parents[2] / "examples" / "photos" / "dog.jpg"
DUMMY_TAG = "This is a dummy classification tag!"
HELPER = KATA / "containerd-shim-kata-rs-vaccel-integrated-v2"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ve-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def classify_remote(address: str) -> str:
    """A guest's classify through the rpc backend (a real gRPC client in this process)."""
    with Session(config=Config(plugins=["rpc"], rpc_address=address)) as session:
        tags, _ = session.classify(PHOTO.read_bytes())
    return tags


def helper_environment() -> dict[str, str]:
    """The environment the integrated shim helper exports."""
    env = {}
    for line in HELPER.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            env[key] = value
    return env


def test_serve_in_background_serves_and_stops(short_tmp: Path):
    sock = short_tmp / "agent.sock"
    agent = serve_in_background(f"unix://{sock}", plugins="noop", log_level=1)
    try:
        assert agent.bound_addresses == [f"unix://{sock}"]
        assert sock.exists()
        assert classify_remote(f"unix://{sock}") == DUMMY_TAG
        assert agent.wait(0) is False  # still serving
    finally:
        agent.stop(grace=1.0)
    assert agent.wait(0) is True
    assert not sock.exists()


def test_integrated_reads_the_kata_configuration_and_the_helper_environment(short_tmp: Path):
    uds = short_tmp / "kata.hvsock"
    env = helper_environment()
    assert "VACCEL_BACKENDS" in env
    with integrated(
        uds, kata_config=KATA / "configuration-rs-vaccel-integrated.toml", environ=env
    ) as agent:
        address = f"unix://{uds}_2048"
        assert agent.bound_addresses == [address]
        assert agent.config.plugins == ["jetson", "noop"]
        assert agent.config.log_level == 1
        # jetson is unavailable here: skipped, noop serves
        assert classify_remote(address) == DUMMY_TAG
    assert agent.wait(0) is True
    assert not Path(f"{uds}_2048").exists()


def test_settings_from_the_exec_configuration():
    settings = IntegratedSettings.from_kata(KATA / "configuration-rs-vaccel-exec.toml", {})
    assert settings == IntegratedSettings(2048, ("jetson", "noop"), 1)
    assert settings.address("/run/vc/sb/kata.hvsock") == "unix:///run/vc/sb/kata.hvsock_2048"
    assert settings.address(None) == "vsock://-1:2048"


def test_settings_from_parsed_data_and_newer_keys():
    data = {"runtime": {"agent_port": 3000, "log_level": 4, "backends": ""}}
    settings = IntegratedSettings.from_kata(data, {"VACCEL_PLUGINS": "noop"})
    assert settings == IntegratedSettings(3000, ("noop",), 4)
    assert IntegratedSettings.from_kata(None, {}) == IntegratedSettings(2048, None, None)


def test_go_configuration_has_no_integrated_keys_and_defaults_apply():
    data = load_toml("configuration-go-vaccel.toml")
    settings = IntegratedSettings.from_kata(data, {"VACCEL_BACKENDS": "libvaccel-noop.so"})
    assert settings.endpoint_port == 2048 and settings.backends == ("noop",)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"hypervisor": {"dragonball": {"endpoint_port": "vsock"}}}, "endpoint_port"),
        ({"hypervisor": {"dragonball": {"endpoint_port": "70000"}}}, "1-65535"),
        ({"hypervisor": {"dragonball": {"debug": "loud"}}}, "debug: expected a level 1-4"),
    ],
)
def test_bad_settings_are_clear_errors(data: dict, match: str):
    with pytest.raises(InvalidArgumentError, match=match):
        IntegratedSettings.from_kata(data, {})


def test_unreadable_configuration_is_a_clear_error(tmp_path: Path):
    with pytest.raises(InvalidArgumentError, match="integrated: Kata configuration: cannot read "):
        IntegratedSettings.from_kata(tmp_path / "missing.toml", {})
    bad = tmp_path / "bad.toml"
    bad.write_text("[hypervisor\n")
    with pytest.raises(InvalidArgumentError, match="not valid TOML"):
        IntegratedSettings.from_kata(bad, {})


def test_failed_start_leaves_nothing_listening(short_tmp: Path):
    with pytest.raises(Exception, match="no-such-backend"):
        serve_in_background(f"unix://{short_tmp / 'x.sock'}", plugins="no-such-backend")
    assert not (short_tmp / "x.sock").exists()
