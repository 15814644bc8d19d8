"""The connections an rpc-style backend keeps to its agents, one per address, and the settings
they are opened with: shared by the ``rpc`` backend (our agent) and ``rpc-upstream``
(upstream's).

A channel is reused while it is up; one found lost is closed and replaced on the next call
(what it held on the agent is gone, and the backends say so through :meth:`current`).
"""

from __future__ import annotations

import threading

from vaccel_core.log import logger as _vaccel_logger
from vaccel_core.transport import DEFAULT_MAX_MESSAGE_BYTES, Address, Channel

from .settings import client_options, env_float

logger = _vaccel_logger.getChild("rpc")


class AgentChannels:
    """Channels by agent address, with ``VACCEL_RPC_TIMEOUT``, ``VACCEL_RPC_CONNECT_TIMEOUT``
    and ``VACCEL_RPC_MAX_MESSAGE_BYTES``. Subclasses say how an address is parsed and name the
    agent in log lines; ``_lock`` also guards their own connection state."""

    #: The message limit when VACCEL_RPC_MAX_MESSAGE_BYTES is not set.
    default_max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES
    #: The far end, in log lines.
    agent_name = "vAccel agent"

    def _init_channels(self) -> None:
        self.op_timeout = env_float("VACCEL_RPC_TIMEOUT", 300.0)
        self.control_timeout = min(self.op_timeout, 30.0)
        self.connect_timeout = env_float("VACCEL_RPC_CONNECT_TIMEOUT", 5.0)
        self.max_message_bytes = int(
            env_float("VACCEL_RPC_MAX_MESSAGE_BYTES", self.default_max_message_bytes)
        )
        self._lock = threading.Lock()
        self._channels: dict[str, Channel] = {}

    def _address(self, address: str) -> Address:
        """The parsed address (the subclass's checks of what it can speak go here)."""
        return Address.parse(address)

    def _channel(self, address: str) -> Channel:
        """The channel to ``address``: the open one, or a new one if there is none or it was
        lost."""
        with self._lock:
            channel = self._channels.get(address)
            if channel is not None and getattr(channel, "lost", None):
                del self._channels[address]
                channel.close()
                channel = None
            if channel is None:
                from vaccel_core.plugins import get_registry

                parsed = self._address(address)
                options = client_options(
                    max_message_bytes=self.max_message_bytes,
                    connect_timeout=self.connect_timeout,
                )
                channel = get_registry().transport(parsed.scheme).connect(parsed, options)
                self._channels[address] = channel
                logger.info("connected to the %s at %s", self.agent_name, address)
            return channel

    def _current(self, address: str) -> Channel | None:
        """The channel to ``address`` now, if any (without connecting)."""
        with self._lock:
            return self._channels.get(address)

    def _forget(self, address: str, channel: Channel) -> None:
        """Drop and close ``channel`` (if it is still the one for ``address``)."""
        with self._lock:
            if self._channels.get(address) is channel:
                del self._channels[address]
        channel.close()

    def _close_channels(self) -> None:
        with self._lock:
            channels = list(self._channels.values())
            self._channels.clear()
        for channel in channels:
            channel.close()
