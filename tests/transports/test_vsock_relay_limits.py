"""The vsock relay's own limit (issue 9, attack 5 over vsock): every relayed connection costs
two threads and two descriptors, so the relay refuses connections beyond --max-connections
instead of relaying them to a gRPC server that would only close them."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from vaccel_transports._relay import Relay


def echo_server(path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(16)

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server


def test_connections_beyond_the_limit_are_closed_and_the_others_relayed(tmp_path: Path) -> None:
    server = echo_server(tmp_path / "inner.sock")
    front = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    front.bind(str(tmp_path / "front.sock"))
    front.listen(16)

    def dial() -> socket.socket:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(tmp_path / "inner.sock"))
        return conn

    relay = Relay(front, dial, "test relay", max_pairs=2)
    clients = []
    try:
        for _ in range(3):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.settimeout(5)
            c.connect(str(tmp_path / "front.sock"))
            clients.append(c)
            time.sleep(0.2)
        for c in clients[:2]:
            c.sendall(b"ping")
            assert c.recv(16) == b"ping"
        assert clients[2].recv(16) == b"", "the third connection was closed at once"
        clients[0].close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and sum(not p.closed.is_set() for p in relay.pairs) > 1:
            time.sleep(0.05)
        late = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        late.settimeout(5)
        late.connect(str(tmp_path / "front.sock"))
        clients.append(late)
        late.sendall(b"again")
        assert late.recv(16) == b"again", "a slot freed by a closed connection is reused"
    finally:
        for c in clients:
            c.close()
        relay.stop()
        server.close()
