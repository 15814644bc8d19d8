"""A unix address whose socket file does not exist fails at once, on either wire (gRPC used to
retry for the whole connect timeout, 5 s by default, before saying so)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from vaccel_core import RemoteError
from vaccel_core.transport import Address, TransportOptions
from vaccel_transports.unix import UnixTransport


@pytest.mark.parametrize("scheme", ["unix", "grpc+unix"])
def test_a_missing_socket_fails_at_once(tmp_path: Path, scheme: str) -> None:
    address = Address.parse(f"{scheme}://{tmp_path / 'none.sock'}")
    start = time.monotonic()
    with pytest.raises(RemoteError, match=r"cannot reach the vAccel agent at .*no socket at"):
        UnixTransport().connect(address, TransportOptions(connect_timeout=5))
    assert time.monotonic() - start < 1.0
