"""vsock: addresses, the relay over ordinary sockets, real AF_VSOCK errors, and the whole
path guest -> (hybrid vsock) -> agent.

No AF_VSOCK peer exists on this machine (a Firecracker guest without vsock loopback), so the
end-to-end tests route the guest's vsock connection the way Firecracker's hybrid vsock does,
to the host unix socket ``<uds_path>_PORT`` (the ``hybrid_vsock`` fixture, a labelled
stand-in). The test with a real AF_VSOCK peer runs where one exists.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from vaccel_core.errors import InvalidArgumentError, RemoteError
from vaccel_core.transport import Address, Message, TransportOptions
from vaccel_transports._relay import Relay
from vaccel_transports.vsock import (
    CID_ANY,
    PORT_ANY,
    VsockAddress,
    VsockTransport,
    hybrid_agent_address,
    hybrid_vsock_path,
)
from vaccel_transports.vsock.address import local_cid, unavailable_reason

from .echo_server import EchoHandler

pytestmark = pytest.mark.timeout(60)


# Addresses ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "cid", "port", "canonical"),
    [
        ("vsock://2:2048", 2, 2048, "vsock://2:2048"),
        ("vsock://-1:2048", CID_ANY, 2048, "vsock://-1:2048"),
        ("vsock://any:2048", CID_ANY, 2048, "vsock://-1:2048"),
        ("vsock://2048", 2, 2048, "vsock://2:2048"),
        ("VSOCK://3:-1", 3, PORT_ANY, "vsock://3:-1"),
        ("vsock://4294967294:1/", 4294967294, 1, "vsock://4294967294:1"),
    ],
)
def test_addresses_parse(text: str, cid: int, port: int, canonical: str) -> None:
    parsed = VsockAddress.parse(text)
    assert (parsed.cid, parsed.port, str(parsed)) == (cid, port, canonical)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("vsock://two:2048", "expected vsock://CID:PORT with decimal numbers.*'vsock://two:2048'"),
        ("vsock://2:", "expected vsock://CID:PORT"),
        ("vsock://2:4294967296", "port must be in 0..4294967295"),
        ("vsock://-7:1", "CID must be in 0..4294967295"),
    ],
)
def test_bad_addresses_are_named(text: str, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        VsockAddress.parse(text)


def test_connect_needs_a_cid_and_port() -> None:
    with pytest.raises(InvalidArgumentError, match=r"to connect, name a CID and a port"):
        VsockTransport().connect(Address.parse("vsock://-1:2048"), TransportOptions())


def test_hybrid_vsock_rule() -> None:
    # Firecracker / Cloud Hypervisor / Dragonball: guest vsock://2:PORT -> host <uds_path>_PORT
    uds = "/run/vc/firecracker/abc/root/kata.hvsock"
    assert hybrid_vsock_path(uds, 2048) == f"{uds}_2048"
    assert hybrid_agent_address(uds) == f"unix://{uds}_2048"
    with pytest.raises(InvalidArgumentError, match="expected the VMM's vsock uds_path"):
        hybrid_vsock_path("")


# The relay over ordinary sockets ------------------------------------------------------------
@pytest.fixture
def relay_to_echo(tmp_path: Path) -> Any:
    """A relay from a unix 'front' socket to an echo server; yields (front path, relay)."""
    backend = socket.socket(socket.AF_UNIX)
    backend.bind(str(tmp_path / "back.sock"))
    backend.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = backend.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(1 << 16):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)  # answer EOF with EOF

    threading.Thread(target=serve, daemon=True).start()
    front = socket.socket(socket.AF_UNIX)
    front.bind(str(tmp_path / "front.sock"))
    front.listen()

    def dial() -> socket.socket:
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(tmp_path / "back.sock"))
        return s

    relay = Relay(front, dial, "test relay")
    yield str(tmp_path / "front.sock"), relay
    relay.stop(1)
    backend.close()


def test_relay_carries_bytes_both_ways_and_end_of_stream(relay_to_echo: Any) -> None:
    path, relay = relay_to_echo
    data = os.urandom(8 << 20)
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(path)
        sender = threading.Thread(target=lambda: (client.sendall(data), client.shutdown(1)))
        sender.start()
        got = bytearray()
        while chunk := client.recv(1 << 20):
            got += chunk
        sender.join(10)
    assert bytes(got) == data  # every byte, in order, then EOF relayed back
    deadline = time.monotonic() + 5
    while any(not p.closed.is_set() for p in relay.pairs) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert all(p.closed.is_set() for p in relay.pairs)


def test_relay_drops_a_connection_it_cannot_forward(tmp_path: Path) -> None:
    front = socket.socket(socket.AF_UNIX)
    front.bind(str(tmp_path / "front.sock"))
    front.listen()

    def dial() -> socket.socket:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")

    relay = Relay(front, dial, "test relay")
    try:
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(5)
            client.connect(str(tmp_path / "front.sock"))
            assert client.recv(10) == b""  # closed, not left hanging
        assert isinstance(relay.last_error, ConnectionRefusedError)
    finally:
        relay.stop(1)


# Real AF_VSOCK on this machine ----------------------------------------------------------------
needs_vsock = pytest.mark.skipif(
    unavailable_reason() is not None, reason=f"no vsock here: {unavailable_reason()}"
)


@needs_vsock
def test_dialling_a_cid_without_a_route_names_the_address() -> None:
    mine = local_cid()
    assert mine is not None
    address = f"vsock://{mine}:2048"
    started = time.monotonic()
    with pytest.raises(RemoteError) as err:
        VsockTransport().connect(Address.parse(address), TransportOptions(connect_timeout=3))
    assert time.monotonic() - started < 5
    text = str(err.value)
    assert text.startswith(f"cannot reach the vAccel agent at {address}: ")
    # Here (no loopback) the kernel says ENODEV; with loopback nobody listens: refused.
    assert "ENODEV" in text or "nothing listens on port 2048" in text


@needs_vsock
def test_listening_on_a_real_vsock_port(tmp_path: Path) -> None:
    listener = VsockTransport().listen(
        Address.parse("vsock://-1:-1"), EchoHandler(io.StringIO()), TransportOptions()
    )
    try:
        bound = VsockAddress.parse(listener.address)
        assert bound.cid == CID_ANY and bound.port != PORT_ANY
        with pytest.raises(RemoteError, match="the port is already in use"):
            VsockTransport().listen(
                Address.parse(listener.address), EchoHandler(), TransportOptions()
            )
    finally:
        listener.stop(1)


def real_peer_reason() -> str | None:
    """None when this machine can reach its own vsock listener (loopback); else why not."""
    reason = unavailable_reason()
    if reason is not None:
        return reason
    server = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    try:
        server.bind((CID_ANY, PORT_ANY))
        server.listen()
        port = server.getsockname()[1]
        failures = []
        for cid in (1, local_cid()):
            client = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            client.settimeout(1)
            try:
                client.connect((cid, port))
                return None
            except OSError as exc:
                name = errno.errorcode.get(exc.errno or 0, "timeout")
                failures.append(f"CID {cid}: {name}")
            finally:
                client.close()
        return (
            "no vsock peer: connecting to this machine's own listener fails ("
            + ", ".join(failures)
            + "; no vsock loopback in this VM)"
        )
    finally:
        server.close()


def test_real_vsock_peer_round_trip() -> None:
    reason = real_peer_reason()
    if reason is not None:
        pytest.skip(reason)
    listener = VsockTransport().listen(
        Address.parse("vsock://-1:-1"), EchoHandler(io.StringIO()), TransportOptions()
    )
    try:
        port = VsockAddress.parse(listener.address).port
        for cid in (1, local_cid()):
            try:
                channel = VsockTransport().connect(
                    Address.parse(f"vsock://{cid}:{port}"), TransportOptions(connect_timeout=2)
                )
                break
            except RemoteError:
                continue
        else:
            pytest.fail("a vsock peer was detected but no CID answered")
        try:
            reply = channel.call("echo", Message(b"over vsock", [b"buf"]), 10)
            assert bytes(reply.payload) == b"over vsock" and bytes(reply.buffers[0]) == b"buf"
        finally:
            channel.close()
    finally:
        listener.stop(1)


# The whole path through the relay, hybrid-vsock style (stand-in for the VMM) -----------------
def test_vsock_listener_and_channel_through_the_relay(hybrid_vsock: str) -> None:
    lines: list[str] = []

    class Out:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None:
            pass

    listener = VsockTransport().listen(
        Address.parse("vsock://-1:2048"), EchoHandler(Out()), TransportOptions()
    )
    try:
        assert listener.address == "vsock://-1:2048"
        channel = VsockTransport().connect(Address.parse("vsock://2:2048"), TransportOptions())
        try:
            big = os.urandom(3 << 20)
            reply = channel.call("echo", Message(b"hi", [big]), 10)
            assert bytes(reply.payload) == b"hi" and bytes(reply.buffers[0]) == big
        finally:
            channel.close()
        deadline = time.monotonic() + 10
        while not any("disconnected" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any("connected" in line for line in lines)
        assert any("disconnected" in line for line in lines)  # peer release works through it
    finally:
        listener.stop(1)


def test_nobody_listening_names_the_vsock_address(hybrid_vsock: str) -> None:
    with pytest.raises(RemoteError) as err:
        VsockTransport().connect(Address.parse("vsock://2:2049"), TransportOptions())
    assert str(err.value).startswith("cannot reach the vAccel agent at vsock://2:2049: ")


def test_agent_on_hybrid_unix_path_serves_a_vsock_guest(
    hybrid_vsock: str, echo_server_factory: Any
) -> None:
    # The host agent listens where Firecracker delivers the guest's vsock://2:2048.
    server = echo_server_factory(hybrid_agent_address(hybrid_vsock))
    assert server.address == f"unix://{hybrid_vsock}_2048"
    channel = VsockTransport().connect(Address.parse("vsock://2:2048"), TransportOptions())
    try:
        assert bytes(channel.call("echo", Message(b"from the guest"), 10).payload) == (
            b"from the guest"
        )
        server.wait_for("connected ")
        server.kill()
        with pytest.raises(RemoteError) as err:
            for _ in range(100):
                channel.call("echo", Message(b"again"), 5)
                time.sleep(0.05)
        assert "vsock://2:2048" in str(err.value)
    finally:
        channel.close()


def test_stopping_the_vsock_listener_ends_its_clients_cleanly(hybrid_vsock: str) -> None:
    listener = VsockTransport().listen(
        Address.parse("vsock://-1:2048"), EchoHandler(io.StringIO()), TransportOptions()
    )
    channel = VsockTransport().connect(Address.parse("vsock://2:2048"), TransportOptions())
    try:
        assert bytes(channel.call("echo", Message(b"up"), 10).payload) == b"up"
        started = time.monotonic()
        listener.stop(1.0)
        assert time.monotonic() - started < 5
        with pytest.raises(RemoteError) as err:
            for _ in range(100):
                channel.call("echo", Message(b"down"), 5)
                time.sleep(0.05)
        assert "vsock://2:2048" in str(err.value) and "relay.sock" not in str(err.value)
    finally:
        channel.close()
