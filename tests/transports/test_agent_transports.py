"""All four transports in ``vaccel plugins``, and one agent process listening on several."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vaccel_transports.vsock.address import unavailable_reason

from .conftest import REPO, clean_env

pytestmark = pytest.mark.timeout(90)


def test_vaccel_plugins_lists_all_four_transports() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vaccel_core.cli", "plugins", "--json"],
        env=clean_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    transports = {t["name"]: t for t in json.loads(out)["transports"]}
    assert {"tcp", "unix", "vsock", "virtio-mock"} <= set(transports)
    assert transports["virtio-mock"]["status"] == "loaded"
    # vsock reports honestly: loaded where the kernel has AF_VSOCK, else the reason.
    assert transports["vsock"]["reason"] == unavailable_reason()


def test_one_agent_serves_unix_virtio_mock_and_vsock_at_once(tmp_path: Path) -> None:
    pytest.importorskip("grpc", reason="the agent needs the 'remote' extra (grpcio)")
    from tests.remote.conftest import remote_session, start_agent

    wanted = [f"unix://{tmp_path / 'a.sock'}", f"virtio-mock://{tmp_path / 'a.ctl'}"]
    if unavailable_reason() is None:
        wanted.append("vsock://-1:-1")  # a real AF_VSOCK listener (no peer needed to listen)
    handle = start_agent(wanted)
    try:
        assert handle.addresses[:2] == wanted[:2]
        if len(wanted) == 3:
            assert handle.addresses[2].startswith("vsock://-1:")
            assert handle.addresses[2] != "vsock://-1:-1"  # the real port
        for address in handle.addresses[:2]:
            with remote_session(address) as session:
                session.noop()
                assert session.classify(b"img")[0]
    finally:
        assert handle.stop() == 0
    assert not (tmp_path / "a.ctl").exists() and not (tmp_path / "a.sock").exists()


@pytest.mark.parametrize("module", ["vaccel_transports.vsock", "vaccel_transports.virtio_mock"])
def test_importing_the_transport_plugins_stays_cheap(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "from vaccel_core.plugins import PluginRegistry\n"
        "heavy = [m for m in ('grpc', 'onnxruntime') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert out == "", f"importing {module} pulled in {out}"
