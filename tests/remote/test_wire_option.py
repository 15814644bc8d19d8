"""The ``--wire`` option of this suite: the clients really take the wire asked for, and the
hybrid-vsock stand-in behaves as the VMM it stands for (see conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vaccel_core import RemoteError
from vaccel_transports.vsock import VsockTransport

from .conftest import HYBRID_VSOCK, AgentProcess, RawClient, remote_config

pytestmark = pytest.mark.timeout(60)


def test_clients_take_the_selected_wire(shared_agent: AgentProcess, wire: str) -> None:
    """RawClient, remote sessions and the observer dial the agent over ``--wire``."""
    listening = shared_agent.addresses[0]
    assert listening.startswith("unix://")
    path = listening[len("unix://") :]
    expected = {
        "unix": (listening, "TtrpcChannel"),
        "vsock": (f"vsock://2:{HYBRID_VSOCK.port_of(path)}", "TtrpcChannel"),
        "grpc": (f"grpc+{listening}", "GrpcChannel"),
    }[wire]
    assert shared_agent.address == expected[0]
    assert remote_config(listening).rpc_address == expected[0]
    for client in (RawClient(listening), shared_agent.observer()):
        try:
            assert client.address == expected[0]
            assert type(client.channel).__name__ == expected[1]
            assert "noop" in client.status().backends
        finally:
            client.close()


def test_hybrid_vsock_stand_in_resets_where_nobody_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As Firecracker does: no host socket for the port -> the guest's connect is reset."""
    monkeypatch.setattr(
        VsockTransport,
        "open_stream",
        lambda _self, t, timeout: HYBRID_VSOCK.open_stream(t, timeout),
    )
    port = HYBRID_VSOCK.port_of(str(tmp_path / "nobody.sock"))
    assert HYBRID_VSOCK.port_of(str(tmp_path / "nobody.sock")) == port, "one port per socket"
    with pytest.raises(RemoteError, match=rf"CID 2 reset the connection to port {port}"):
        RawClient(f"vsock://2:{port}")
    with pytest.raises(RemoteError, match="cannot reach the vAccel agent at vsock://3:"):
        RawClient(f"vsock://3:{port}")
