"""The agent starts from the exact command line and environment each Kata runtime uses.

Each case builds the command the way the runtime's source does, with the values of our
``deploy/kata`` files, runs our real ``vaccel-agent`` in a subprocess on a real unix socket (the
host end of Firecracker/Dragonball hybrid vsock), runs the seed's ``classify`` through the rpc
backend against it, and stops it the way the runtime does.

* Go runtime (``virtcontainers/vaccel``): ``<vaccel_path>/bin/vaccelrt-agent --server-address
  unix://<uds>_<port>`` with VACCEL_BACKENDS=<vaccel_path>/lib/libvaccel-X.so:...,
  LD_LIBRARY_PATH, VACCEL_IMAGENET_NETWORKS and CUDA_CACHE_PATH for jetson; SIGTERM, then SIGKILL
  after 5 s.
* Rust runtime (runtime-rs ``vaccel`` agent, 2023): ``<agent_path> -a unix://<uds>_<port>`` with
  VACCEL_DEBUG_LEVEL and VACCEL_BACKENDS=<backends_library>libvaccel-X.so:...
* Rust runtime, newer spelling: VACCEL_PLUGINS, VACCEL_LOG_LEVEL, VACCEL_PROFILING_ENABLED.

jetson is listed first everywhere and is unavailable on a machine without JetPack: the agent
must skip it and serve with noop ("This is a dummy classification tag!").
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_files import exec_start_argv, load_toml

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
PHOTO = ROOT / "examples" / "photos" / "dog.jpg"
DUMMY_TAG = "This is a dummy classification tag!"
START_DEADLINE_S = 30.0
STOP_DEADLINE_S = 5.0  # what both runtimes give the agent before SIGKILL


def _agent_program() -> Path:
    """The installed vaccel-agent console script (what Kata would run)."""
    if not (ROOT / "agent" / "cli.py").exists():
        pytest.skip("agent/cli.py (vaccel-agent) is not written yet")
    script = Path(sys.executable).parent / "vaccel-agent"
    if not script.exists():
        found = shutil.which("vaccel-agent")
        if found is None:
            pytest.skip("the vaccel-agent console script is not installed (pip install -e .)")
        script = Path(found)
    try:
        import grpc  # noqa: F401
    except ImportError:
        pytest.skip("grpcio is not installed (extra 'remote')")
    return script


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short folder: unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="vk-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VACCEL_")}
    env.update(extra)
    return env


class Agent:
    """A spawned agent process, its log, and its unix socket."""

    def __init__(self, argv: list[str], env: dict[str, str], socket_path: Path, cwd: Path):
        self.socket_path = socket_path
        self.log_path = cwd / "agent.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            if self.socket_path.exists():
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    try:
                        sock.connect(str(self.socket_path))
                        return
                    except OSError:
                        pass
            time.sleep(0.05)
        pytest.fail(f"agent not listening on {self.socket_path} after {START_DEADLINE_S}s")

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, float]:
        """Signal the agent the way Kata does; returns (exit status, seconds to exit)."""
        start = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            pytest.fail(f"agent ignored SIGTERM for {STOP_DEADLINE_S}s:\n{self.log()}")
        return code, time.monotonic() - start

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


def _classify_through(address: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The seed's guest command, `classify IMAGE 1`, with the rpc backend to the agent."""
    code = (
        "import sys; from vaccel_core.examples.classify import main; sys.exit(main(sys.argv[1:]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(PHOTO), "1"],
        env=_clean_env(VACCEL_PLUGINS="rpc", VACCEL_RPC_ADDRESS=address),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _serve_and_stop(agent: Agent, address: str, cwd: Path) -> None:
    try:
        agent.wait_ready()
        result = _classify_through(address, cwd)
        assert result.returncode == 0, result.stderr + agent.log()
        assert "Initialized session with id:" in result.stdout
        assert f"Image size: {PHOTO.stat().st_size}B" in result.stdout
        assert f"classification tags: {DUMMY_TAG}" in result.stdout  # noop served, jetson skipped
        code, seconds = agent.stop(signal.SIGTERM)
        assert code in (0, -signal.SIGTERM, 128 + signal.SIGTERM), agent.log()
        assert seconds < STOP_DEADLINE_S
    finally:
        agent.close()


def test_go_runtime_spawns_the_agent(short_tmp: Path):
    """configuration-go-vaccel.toml, as the Go runtime turns it into a process."""
    program = _agent_program()
    fc = load_toml("configuration-go-vaccel.toml")["hypervisor"]["firecracker"]
    vaccel_path = short_tmp / "vaccel"  # stands for fc["vaccel_path"] (/usr/local)
    (vaccel_path / "bin").mkdir(parents=True)
    (vaccel_path / "lib").mkdir()
    binary = vaccel_path / "bin" / "vaccelrt-agent"
    binary.symlink_to(program)  # the guide's `ln -s vaccel-agent vaccelrt-agent`
    libs = vaccel_path / "lib"
    backends = ":".join(
        str(libs / f"libvaccel-{b.strip()}.so") for b in fc["vaccel_host_backends"].split(",")
    )
    uds = short_tmp / "kata.hvsock"
    address = f"unix://{uds}_{fc['vaccel_vsock_port']}"
    env = _clean_env(
        VACCEL_BACKENDS=backends,
        LD_LIBRARY_PATH=str(libs),
        VACCEL_IMAGENET_NETWORKS=str(vaccel_path / "share" / "data" / "networks"),
        CUDA_CACHE_PATH=str(short_tmp),
    )
    assert backends.endswith("libvaccel-jetson.so:" + str(libs / "libvaccel-noop.so"))
    agent = Agent([str(binary), "--server-address", address], env, Path(f"{uds}_2048"), short_tmp)
    _serve_and_stop(agent, address, short_tmp)


@pytest.mark.parametrize("spelling", ["2023", "newer"])
def test_rust_runtime_spawns_the_agent(short_tmp: Path, spelling: str):
    """configuration-rs-vaccel-exec.toml, as runtime-rs turns it into a process."""
    program = _agent_program()
    db = load_toml("configuration-rs-vaccel-exec.toml")["hypervisor"]["dragonball"]
    assert db["agent_path"].endswith(program.name)
    uds = short_tmp / "kata.hvsock"
    address = f"unix://{uds}_{db['endpoint_port']}"
    libs = "".join(f"{db['backends_library']}libvaccel-{b}.so:" for b in db["backends"].split(","))
    if spelling == "2023":
        env = _clean_env(VACCEL_DEBUG_LEVEL=db["debug"], VACCEL_BACKENDS=libs.rstrip(":"))
    else:
        env = _clean_env(
            VACCEL_PLUGINS=libs.rstrip(":"),
            VACCEL_LOG_LEVEL=db["debug"],
            VACCEL_PROFILING_ENABLED="1",
        )
    agent = Agent([str(program), "-a", address], env, Path(f"{uds}_2048"), short_tmp)
    _serve_and_stop(agent, address, short_tmp)


def test_systemd_exec_start_runs(short_tmp: Path):
    """The unit's ExecStart, with its folder and port moved to free ones, starts and serves."""
    program = _agent_program()
    argv = exec_start_argv()
    run_dir = short_tmp / "run"
    run_dir.mkdir()
    moved = [
        a.replace("/run/vaccel", str(run_dir)).replace("127.0.0.1:65500", "127.0.0.1:0")
        for a in argv
    ]
    moved[0] = str(program)
    assert moved != argv
    sock = run_dir / "agent.sock"
    env = _clean_env(VACCEL_PLUGINS="jetson:noop", VACCEL_RUNDIR=str(run_dir))
    agent = Agent(moved, env, sock, short_tmp)
    _serve_and_stop(agent, f"unix://{sock}", short_tmp)
    assert shlex.join(argv).startswith("/usr/local/bin/vaccel-agent -a unix://")
