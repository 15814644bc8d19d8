"""The accept loop shared by the listeners that accept sockets themselves (vsock's relay and
virtio-mock's control socket): wait for a connection or the stop signal, accept, hand over.

When accepting fails for want of resources (out of file descriptors: EMFILE, ENFILE; or of
kernel memory) the pending connection keeps the listening socket readable, so retrying at once
would spin at 100% CPU: the loop then waits ``backoff`` seconds (still woken by the stop
signal) and logs once per episode.

A failure of ``on_connection`` (it raised: out of threads, a bug) concerns that one connection:
the loop closes it, logs one line and goes on accepting; it never ends the loop.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
from collections.abc import Callable

from vaccel_core.log import logger

#: Pause between attempts while accepting fails for want of resources.
BACKOFF = 0.1
#: Failures that concern only the one connection being accepted: try the next one at once.
_TRANSIENT = {errno.ECONNABORTED, errno.EAGAIN, errno.EINTR, errno.EPROTO}


def accept_loop(
    listening: socket.socket,
    stop_fd: int,
    on_connection: Callable[[socket.socket], None],
    what: str,
    backoff: float = BACKOFF,
) -> None:
    """Accept on ``listening`` until ``stop_fd`` becomes readable; ``on_connection`` gets each
    accepted socket. ``what`` names the listener in log lines."""
    poller = select.poll()
    poller.register(listening.fileno(), select.POLLIN)
    poller.register(stop_fd, select.POLLIN)
    pause = select.poll()
    pause.register(stop_fd, select.POLLIN)
    failing = False
    while True:
        ready = [fd for fd, _ in poller.poll()]
        if stop_fd in ready:
            return
        try:
            conn, _ = listening.accept()
        except OSError as exc:
            if exc.errno in _TRANSIENT:
                logger.debug("%s: accept failed: %s", what, exc)
                continue
            if not failing:
                failing = True
                logger.warning(
                    "%s: cannot accept connections: %s (retrying every %.1fs)", what, exc, backoff
                )
            if pause.poll(backoff * 1000.0):
                return  # stopped while waiting
            continue
        if failing:
            failing = False
            logger.warning("%s: accepting connections again", what)
        try:
            on_connection(conn)
        except Exception as exc:  # that connection goes, the listener stays
            logger.warning("%s: dropped a new connection: %s: %s", what, type(exc).__name__, exc)
            with contextlib.suppress(OSError):
                conn.close()
