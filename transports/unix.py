"""The unix transport: the agent protocol over gRPC on a unix socket (``unix:///run/v.sock``).

The socket is created owner-only (mode 0600; ``TransportOptions.unix_socket_mode`` changes it)
without a window in which others could connect: it is bound inside a private folder, given its
mode, then renamed into place. A stale socket file left by a dead agent is replaced; a live one
is an error. The file is removed when the listener stops.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any

from vaccel_core import hookimpl
from vaccel_core.errors import InvalidArgumentError, RemoteError
from vaccel_core.transport import Address, Channel, Handler, Listener, Transport, TransportOptions

#: Longest unix socket path the kernel takes (sun_path is 108 bytes with the final NUL).
MAX_PATH_BYTES = 107


def socket_path(address: Address) -> Path:
    """``unix:///tmp/v.sock`` -> /tmp/v.sock (relative paths are made absolute)."""
    target = address.target
    if not target or target.endswith("/"):
        raise InvalidArgumentError(
            f"address: expected unix:///PATH/TO/SOCKET (e.g. unix:///run/vaccel.sock), "
            f"got '{address}'"
        )
    path = Path(target).absolute()
    size = len(os.fsencode(path))
    if size > MAX_PATH_BYTES:
        raise InvalidArgumentError(
            f"address: unix socket path '{path}' is {size} bytes long; the limit is "
            f"{MAX_PATH_BYTES}"
        )
    return path


def _check_stale(path: Path) -> None:
    """Remove a socket file nobody listens on; refuse a live one or a non-socket."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise RemoteError(f"cannot listen on unix://{path}: the path exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # stale: its agent is gone
        return
    finally:
        probe.close()
    raise RemoteError(f"cannot listen on unix://{path}: another process is listening there")


class UnixTransport(Transport):
    """gRPC over a unix domain socket."""

    scheme = "unix"
    name = "unix"
    version = "0.1.0"
    description = "agent protocol over gRPC on a unix socket (owner-only by default)"

    @classmethod
    def probe(cls) -> str | None:
        try:
            import grpc  # noqa: F401
        except ImportError:
            return "grpcio is not installed (pip install 'pyvaccel[remote]')"
        return None

    def connect(self, address: Address, options: TransportOptions) -> Channel:
        from .grpc_transport import GrpcChannel

        path = socket_path(address)
        return GrpcChannel(f"unix:{path}", f"unix://{path}", options)

    def listen(self, address: Address, handler: Handler, options: TransportOptions) -> Listener:
        from .grpc_transport import serve

        path = socket_path(address)
        if not path.parent.is_dir():
            raise RemoteError(
                f"cannot listen on unix://{path}: folder {path.parent} does not exist"
            )
        _check_stale(path)
        # Bound here first (same folder, so the rename stays atomic; a short name, so the
        # staging path fits wherever the final one does, give or take two bytes).
        private = Path(tempfile.mkdtemp(prefix=".v", dir=path.parent))
        staging = private / "s"

        def remove_socket() -> None:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()

        try:
            listener = serve(
                f"unix:{staging}",
                lambda _port: f"unix://{path}",
                handler,
                options,
                on_stopped=remove_socket,
            )
            try:
                os.chmod(staging, options.unix_socket_mode)
                os.rename(staging, path)
            except BaseException:
                listener.stop(0)
                raise
        finally:
            with contextlib.suppress(OSError):
                staging.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                private.rmdir()
        return listener


@hookimpl
def vaccel_register_transports(register: Any) -> None:
    register(UnixTransport)
