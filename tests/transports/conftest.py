"""Helpers for transport tests: a real second process serving an echo Handler, and the
hybrid-vsock stand-in.

Stand-in (labelled): this machine is a Firecracker guest whose vsock has no loopback and no
host listener we control, so no AF_VSOCK peer exists here. :class:`HybridVsockStandIn` does
what Firecracker's vsock device does for a guest connection to ``vsock://2:PORT`` (connect to
the host unix socket ``<uds_path>_PORT``) and what a vsock listener would accept, with AF_UNIX
sockets; everything above the socket (the relay, gRPC, the agent) is the real code.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment without inherited VACCEL_* settings, with this checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VACCEL_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


class EchoServer:
    """``tests.transports.echo_server`` running as a real process."""

    def __init__(self, address: str, extra: dict[str, Any] | None = None) -> None:
        cmd = [sys.executable, "-m", "tests.transports.echo_server", address]
        if extra:
            cmd.append(json.dumps(extra))
        self.proc = subprocess.Popen(
            cmd,
            env=clean_env(),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        line = self.wait_for(r"^Listening on '([^']+)'$", 20)
        match = re.match(r"^Listening on '([^']+)'$", line)
        assert match is not None
        self.address = match.group(1)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 10.0) -> str:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if rx.search(line):
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"echo server never printed /{pattern}/; log:\n{self.log}")

    def count(self, pattern: str) -> int:
        rx = re.compile(pattern)
        return sum(1 for line in list(self.lines) if rx.search(line))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(f"echo server did not stop; log:\n{self.log}") from None
        self._reader.join(5)
        return self.proc.returncode


@pytest.fixture
def echo_server_factory() -> Iterator[Any]:
    servers: list[EchoServer] = []

    def start(address: str, extra: dict[str, Any] | None = None) -> EchoServer:
        server = EchoServer(address, extra)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()


# Hybrid vsock stand-in --------------------------------------------------------------------
def standin_open_stream(uds_path: str) -> Any:
    """``VsockTransport.open_stream`` as a hybrid-vsock VMM would route it: to the host unix
    socket ``<uds_path>_PORT``."""
    from vaccel_transports.vsock import hybrid_vsock_path

    def open_stream(self: Any, target: Any, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(hybrid_vsock_path(uds_path, target.port))
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return sock

    return open_stream


def standin_open_listener(uds_path: str) -> Any:
    """``VsockTransport.open_listener`` on the unix socket ``<uds_path>_PORT`` instead."""
    from vaccel_transports.vsock import VsockAddress, hybrid_vsock_path

    def open_listener(self: Any, where: Any) -> tuple[socket.socket, Any]:
        port = 2048 if where.port == 0xFFFFFFFF else where.port
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(hybrid_vsock_path(uds_path, port))
        sock.listen(16)
        return sock, VsockAddress(where.cid, port)

    return open_listener


@pytest.fixture
def hybrid_vsock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Route this process's vsock connections as Firecracker would; returns the uds_path."""
    from vaccel_transports.vsock import VsockTransport

    uds_path = str(tmp_path / "kata.hvsock")
    monkeypatch.setattr(VsockTransport, "open_stream", standin_open_stream(uds_path))
    monkeypatch.setattr(VsockTransport, "open_listener", standin_open_listener(uds_path))
    return uds_path


@pytest.fixture
def errors_logged() -> Iterator[list[str]]:
    """Log records at ERROR or above (a device thread that died logs one, with traceback)."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    log = logging.getLogger("vaccel")
    keep, level = Keep(logging.ERROR), log.level
    log.addHandler(keep)
    if log.level > logging.ERROR or log.level == logging.NOTSET:
        log.setLevel(logging.ERROR)
    yield records
    log.removeHandler(keep)
    log.setLevel(level)
