"""The ``virtio-mock`` transport: a virtio device emulated between two processes on one host.

The guest side (the client channel) is a virtio driver: it owns a sealed memfd with a split
virtqueue and a data area, and two eventfds; it hands them to the device over a unix control
socket as vhost-user does. The device side is served by the agent (one device instance per
guest connection). Large tensors are placed in the shared memory and read there by the
backend, without a copy through a socket. Address: ``virtio-mock:///path/to/control.sock``.

Transport-specific options (``TransportOptions.extra``): guest side,
``virtio_mock_memory_bytes`` (default 1 GiB, sparse), ``virtio_mock_queue_size`` (256),
``virtio_mock_reply_bytes`` (smallest reply data area, 64 KiB), ``virtio_mock_spin_us`` (50);
device side, ``virtio_mock_max_memory_bytes`` (largest guest memory mapped, 1 GiB),
``virtio_mock_max_parked_replies`` (16) and ``virtio_mock_max_parked_bytes``
(2 x ``max_message_bytes``): replies a guest may leave for FETCH, ``virtio_mock_setup_timeout``
(overrides ``handshake_timeout``). The listener also enforces ``max_connections``,
``max_clients``, ``handshake_timeout`` and ``max_message_bytes`` (see docs/transports.md).
"""

from __future__ import annotations

import os
import socket
import sys
from typing import TYPE_CHECKING

from vaccel_core import hookimpl
from vaccel_core.transport import Address, Channel, Handler, Listener, Transport, TransportOptions

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


class VirtioMockTransport(Transport):
    """Shared-memory virtqueue transport (emulated virtio device, vhost-user style set-up)."""

    scheme = "virtio-mock"
    name = "virtio-mock"
    version = "0.1.0"
    description = "split virtqueue in shared memory (memfd + eventfds), zero-copy tensors"

    @classmethod
    def probe(cls) -> str | None:
        if not sys.platform.startswith("linux"):
            return f"needs Linux (memfd, eventfd, SCM_RIGHTS), this is {sys.platform}"
        missing = [
            name
            for name, ok in (
                ("os.memfd_create", hasattr(os, "memfd_create")),
                ("os.eventfd", hasattr(os, "eventfd")),
                ("socket.send_fds", hasattr(socket, "send_fds")),
                ("AF_UNIX SOCK_SEQPACKET", hasattr(socket, "SOCK_SEQPACKET")),
            )
            if not ok
        ]
        if missing:
            return f"this Python lacks {', '.join(missing)}"
        return None

    def connect(self, address: Address, options: TransportOptions) -> Channel:
        from .driver import VirtioMockChannel

        return VirtioMockChannel(address, options)

    def listen(self, address: Address, handler: Handler, options: TransportOptions) -> Listener:
        from .device import VirtioMockListener

        return VirtioMockListener(address, handler, options)


@hookimpl
def vaccel_register_transports(register: Callable[[type[Any]], None]) -> None:
    register(VirtioMockTransport)
