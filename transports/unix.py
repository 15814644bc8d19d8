"""The unix transport: the agent protocol on a unix socket (``unix:///run/v.sock``).

Clients speak ttrpc by default (``grpc+unix://`` speaks gRPC); the agent's listener serves
both on the same socket (:mod:`.dual`; ``grpc+unix://`` or ``ttrpc+unix://`` serves only one).

The socket is created owner-only (mode 0600; ``TransportOptions.unix_socket_mode`` changes it)
without a window in which others could connect: it is bound inside a private folder, given its
mode, then renamed into place. A stale socket file left by a dead agent is replaced; a live one
is an error. The file is removed when the listener stops.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from vaccel_core import hookimpl
from vaccel_core.errors import InvalidArgumentError, RemoteError
from vaccel_core.transport import Address, Channel, Handler, Listener, Transport, TransportOptions

from . import protobuf_missing, require_grpc, serves_grpc

#: Longest unix socket path the kernel takes (sun_path is 108 bytes with the final NUL).
MAX_PATH_BYTES = 107

T = TypeVar("T")


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


def _check_stale(path: Path, address: str, kind: int = socket.SOCK_STREAM) -> None:
    """Remove a socket file nobody listens on; refuse a live one or a non-socket. ``kind``
    is the socket type to probe with; a listener of another type counts as live."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise RemoteError(f"cannot listen on {address}: the path exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, kind)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno != errno.EPROTOTYPE:  # EPROTOTYPE: alive, with another socket type
            path.unlink(missing_ok=True)  # stale: its agent is gone
            return
    finally:
        probe.close()
    raise RemoteError(f"cannot listen on {address}: another process is listening there")


def _cannot_listen(address: str, path: Path, exc: OSError) -> RemoteError:
    """The one-line error for a socket the agent may not create (a folder it cannot write,
    a read-only or full file system)."""
    reason = exc.strerror or str(exc)
    return RemoteError(
        f"cannot listen on {address}: cannot create a socket in {path.parent}: {reason}"
    )


def listen_at(
    path: Path,
    address: str,
    mode: int,
    bind: Callable[[str], T],
    undo: Callable[[T], None],
    kind: int = socket.SOCK_STREAM,
) -> T:
    """Create a listening unix socket at ``path`` with ``mode`` and no window in which it has
    another mode: check the folder, replace a stale socket (refuse a live one, see
    :func:`_check_stale`), then ``bind(staging_path)`` inside a private folder beside
    ``path``, give the socket its mode and rename it into place. ``undo`` gets what ``bind``
    returned when that last step fails. ``address`` names the listener in errors."""
    if not path.parent.is_dir():
        raise RemoteError(f"cannot listen on {address}: folder {path.parent} does not exist")
    _check_stale(path, address, kind)
    # Bound here first (same folder, so the rename stays atomic; a short name, so the
    # staging path fits wherever the final one does, give or take two bytes).
    try:
        private = Path(tempfile.mkdtemp(prefix=".v", dir=path.parent))
    except OSError as exc:
        raise _cannot_listen(address, path, exc) from None
    staging = private / "s"
    try:
        try:
            bound = bind(str(staging))
        except OSError as exc:
            raise _cannot_listen(address, path, exc) from None
        try:
            os.chmod(staging, mode)
            os.rename(staging, path)
        except OSError as exc:
            undo(bound)
            raise _cannot_listen(address, path, exc) from None
        except BaseException:
            undo(bound)
            raise
    finally:
        with contextlib.suppress(OSError):
            staging.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            private.rmdir()
    return bound


def check_socket_mode(options: TransportOptions, address: str) -> None:
    """Refuse a socket mode that lets any local user connect, unless ``options.insecure``."""
    mode = options.unix_socket_mode
    if mode & 0o002 and not options.insecure:
        raise RemoteError(
            f"refusing to listen on {address} with socket mode {mode:03o}: any local user "
            f"could connect (use 600, or 660 with a group for the VMM; --insecure allows it)"
        )


def bind_unix(path: str) -> socket.socket:
    """A unix stream socket bound at ``path`` and listening."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


class UnixTransport(Transport):
    """ttrpc (default) or gRPC over a unix domain socket."""

    scheme = "unix"
    name = "unix"
    version = "0.2.0"
    description = "agent protocol over ttrpc or gRPC on a unix socket (owner-only by default)"

    @classmethod
    def probe(cls) -> str | None:
        return protobuf_missing()

    def connect(self, address: Address, options: TransportOptions) -> Channel:
        path = socket_path(address)
        grpc = address.speaks("ttrpc") == "grpc"
        if grpc:
            require_grpc(address)
        if not path.exists():  # at once: gRPC would retry until connect_timeout
            raise RemoteError(
                f"cannot reach the vAccel agent at {address}: no socket at {path} (is "
                f"vaccel-agent listening there?)"
            )
        if grpc:
            from .grpc_client import GrpcChannel

            return GrpcChannel(f"unix:{path}", str(address), options)
        from .ttrpc.client import TtrpcChannel

        channel = TtrpcChannel.connect_unix(str(path), options, str(address))
        channel.hello(options.connect_timeout)
        return channel

    def listen(self, address: Address, handler: Handler, options: TransportOptions) -> Listener:
        path = socket_path(address)
        public = str(replace(address, target=str(path)))
        check_socket_mode(options, public)
        # TLS is for tcp: a unix socket is protected by its file permissions.
        options = replace(options, tls=None)

        def remove_socket() -> None:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()

        if address.protocol == "grpc":
            from .grpc_server import serve

            require_grpc(address)
            return listen_at(
                path,
                public,
                options.unix_socket_mode,
                lambda staging: serve(
                    f"unix:{staging}",
                    lambda _port: public,
                    handler,
                    options,
                    on_stopped=remove_socket,
                ),
                lambda listener: listener.stop(0),
            )
        from .dual import DualListener

        grpc = address.protocol != "ttrpc" and serves_grpc(address)
        sock = listen_at(path, public, options.unix_socket_mode, bind_unix, lambda s: s.close())
        try:
            return DualListener(sock, public, handler, options, grpc=grpc, on_stopped=remove_socket)
        except BaseException:
            sock.close()
            remove_socket()
            raise


@hookimpl
def vaccel_register_transports(register: Any) -> None:
    register(UnixTransport)
