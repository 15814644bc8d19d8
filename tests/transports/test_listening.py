"""What the socket-owning listeners share: the accept loop (vaccel_transports._accept) and
the creation of a unix socket at its final mode with stale-socket replacement
(vaccel_transports.unix)."""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vaccel_core.errors import RemoteError
from vaccel_core.transport import Address, TransportOptions
from vaccel_transports._accept import accept_loop
from vaccel_transports._relay import Relay
from vaccel_transports.unix import UnixTransport
from vaccel_transports.virtio_mock.device import VirtioMockListener

from .echo_server import EchoHandler

pytestmark = pytest.mark.timeout(30)


class Starved(socket.socket):
    """A listening socket whose accept fails with EMFILE (out of file descriptors) while
    ``starved`` is set, as a process at its descriptor limit sees."""

    def __init__(self, path: Path) -> None:
        super().__init__(socket.AF_UNIX, socket.SOCK_STREAM)
        self.bind(str(path))
        self.listen()
        self.calls = 0
        self.starved = True

    def accept(self) -> tuple[socket.socket, Any]:
        self.calls += 1
        if self.starved:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return super().accept()


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """The warnings the vaccel logger emits meanwhile."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    log = logging.getLogger("vaccel")
    keep, level = Keep(logging.WARNING), log.level
    log.addHandler(keep)
    log.setLevel(logging.WARNING)
    yield lines
    log.removeHandler(keep)
    log.setLevel(level)


def pending_client(path: Path) -> socket.socket:
    """A connection waiting in the backlog: the listening socket stays readable."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(path))
    return client


# The accept loop ----------------------------------------------------------------------------
def test_accept_loop_backs_off_while_out_of_file_descriptors(
    tmp_path: Path, warnings: list[str]
) -> None:
    listening = Starved(tmp_path / "l.sock")
    stop_r, stop_w = socket.socketpair()
    accepted: list[socket.socket] = []
    thread = threading.Thread(
        target=accept_loop, args=(listening, stop_r.fileno(), accepted.append, "test listener")
    )
    client = pending_client(tmp_path / "l.sock")
    try:
        thread.start()
        time.sleep(0.3)
        assert 1 <= listening.calls <= 6  # every 0.1 s, not thousands of times
        assert warnings == [
            "test listener: cannot accept connections: [Errno 24] Too many open files "
            "(retrying every 0.1s)"
        ]  # once per episode, not once per attempt
        listening.starved = False  # descriptors free again: the waiting client gets in
        deadline = time.monotonic() + 5
        while not accepted and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(accepted) == 1
        assert warnings[-1] == "test listener: accepting connections again"
        listening.starved = True
        started = time.monotonic()
        stop_w.send(b"x")  # the stop signal ends the loop, even while it backs off
        thread.join(2)
        assert not thread.is_alive() and time.monotonic() - started < 1
    finally:
        stop_w.send(b"x")
        thread.join(2)
        for s in (client, listening, stop_r, stop_w, *accepted):
            s.close()


def test_vsock_relay_backs_off_while_out_of_file_descriptors(tmp_path: Path) -> None:
    listening = Starved(tmp_path / "front.sock")
    relay = Relay(listening, lambda: socket.socket(socket.AF_UNIX), "test relay")
    client = pending_client(tmp_path / "front.sock")
    try:
        time.sleep(0.3)
        assert 1 <= listening.calls <= 6
    finally:
        relay.stop(1)
        client.close()


def test_virtio_mock_listener_backs_off_while_out_of_file_descriptors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warnings: list[str]
) -> None:
    path = tmp_path / "vm.ctl"
    listener = VirtioMockListener(
        Address.parse(f"virtio-mock://{path}"), EchoHandler(), TransportOptions()
    )
    calls = []
    real_accept = socket.socket.accept

    def accept(self: socket.socket) -> tuple[socket.socket, Any]:
        if self is listener._sock:
            calls.append(1)
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_accept(self)

    monkeypatch.setattr(socket.socket, "accept", accept)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        client.connect(str(path))
        time.sleep(0.3)
        assert 1 <= len(calls) <= 6
        assert len([w for w in warnings if "cannot accept connections" in w]) == 1
    finally:
        listener.stop(1)
        client.close()


# A unix socket at its final mode, stale ones replaced ---------------------------------------
def listen_virtio_mock(path: Path) -> VirtioMockListener:
    return VirtioMockListener(
        Address.parse(f"virtio-mock://{path}"), EchoHandler(), TransportOptions()
    )


def test_virtio_mock_control_socket_never_has_another_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "vm.ctl"
    chmods: list[tuple[str, bool]] = []
    real_chmod = os.chmod

    def chmod(target: Any, mode: int, **kwargs: Any) -> None:
        chmods.append((str(target), path.exists()))
        real_chmod(target, mode, **kwargs)

    monkeypatch.setattr(os, "chmod", chmod)
    listener = listen_virtio_mock(path)
    try:
        # The mode is set before the socket appears at its path (bound in a private folder).
        assert len(chmods) == 1 and chmods[0][0] != str(path) and not chmods[0][1]
        assert stat.S_IMODE(path.lstat().st_mode) == 0o600
        assert [p.name for p in tmp_path.iterdir()] == ["vm.ctl"]  # no staging left
    finally:
        listener.stop(1)
    assert not path.exists()


def test_virtio_mock_replaces_a_stale_socket_and_refuses_a_live_or_other_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "vm.ctl"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    first = listen_virtio_mock(path)
    try:
        with pytest.raises(RemoteError, match="another process is listening there"):
            listen_virtio_mock(path)
    finally:
        first.stop(1)
    path.write_text("not a socket")
    with pytest.raises(
        RemoteError,
        match=re.escape(
            f"cannot listen on virtio-mock://{path}: the path exists and is not a socket"
        ),
    ):
        listen_virtio_mock(path)
    with pytest.raises(RemoteError, match=r"folder .* does not exist"):
        listen_virtio_mock(tmp_path / "missing" / "vm.ctl")


def test_a_live_listener_of_another_socket_type_is_not_taken_for_stale(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stream.bind(str(path))
    stream.listen()
    try:  # a unix (gRPC) agent lives there: virtio-mock must not delete its socket
        with pytest.raises(RemoteError, match="another process is listening there"):
            listen_virtio_mock(path)
        assert path.exists()
    finally:
        stream.close()
    path.unlink()
    seqpacket = listen_virtio_mock(path)
    try:  # and the other way round
        with pytest.raises(RemoteError, match="another process is listening there"):
            UnixTransport().listen(
                Address.parse(f"unix://{path}"), EchoHandler(), TransportOptions()
            )
        assert path.exists()
    finally:
        seqpacket.stop(1)
