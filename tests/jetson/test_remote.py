"""The seed's story with the stand-in: a guest classifies through the agent's jetson backend.

The agent is a real ``vaccel-agent`` process with the stand-in jetson modules on its
PYTHONPATH (they exist only on a Jetson); the guest is a real rpc client over a unix socket.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vaccel_core import Config, Session

from .conftest import STANDIN_DIR, png

pytest.importorskip("grpc", reason="grpcio is not installed (extra 'remote')")
pytest.importorskip("PIL", reason="Pillow is needed to decode images (extra 'onnx')")

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def agent_with_standin(networks: Path) -> Iterator[tuple[str, Path]]:
    """A vaccel-agent process whose jetson backend runs on the stand-in modules."""
    short = Path(tempfile.mkdtemp(prefix="vj-"))
    sock = short / "kata.hvsock_2048"
    rundir = short / "run"
    rundir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VACCEL_")}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(STANDIN_DIR), env.get("PYTHONPATH")])),
        VACCEL_BACKENDS="/usr/local/lib/libvaccel-jetson.so:/usr/local/lib/libvaccel-noop.so",
        VACCEL_IMAGENET_NETWORKS=str(networks),
        VACCEL_RUNDIR=str(rundir),
    )
    code = "import sys; from vaccel_agent.cli import main; sys.exit(main(sys.argv[1:]))"
    log = (short / "agent.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--server-address", f"unix://{sock}"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"agent exited: {(short / 'agent.log').read_text()}")
            if sock.exists():
                with socket.socket(socket.AF_UNIX) as probe:
                    if probe.connect_ex(str(sock)) == 0:
                        break
            if time.monotonic() > deadline:
                pytest.fail("agent did not start listening")
            time.sleep(0.05)
        yield f"unix://{sock}", rundir
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(short, ignore_errors=True)


def test_remote_classify_runs_on_the_agents_jetson_backend(agent_with_standin: tuple[str, Path]):
    address, rundir = agent_with_standin
    with Session(config=Config(plugins=["rpc"], rpc_address=address)) as session:
        tags, imgname = session.classify(png(2))
        assert tags == "86.768% golden retriever"  # the seed's line, through the agent
        output = Path(imgname)
        assert output.is_relative_to(rundir)  # on the host, in the session's own run folder
        assert output.is_file()
        detected = Path(session.detect(png(7)))
        assert detected.parent == output.parent and detected.is_file()
    # the guest released its session: the agent released the host session and its folder
    deadline = time.monotonic() + 5
    while output.parent.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not output.parent.exists()


def test_bad_image_through_the_agent_is_a_clear_error(agent_with_standin: tuple[str, Path]):
    from vaccel_core import InvalidArgumentError

    address, _ = agent_with_standin
    with Session(config=Config(plugins=["rpc"], rpc_address=address)) as session:
        with pytest.raises(InvalidArgumentError, match="classify: argument 'image'"):
            session.classify(b"not an image at all")
        assert session.classify(png(3))[0] == "86.768% tabby, tabby cat"
