"""The connections an rpc-style backend keeps to its agents, one per address, and the settings
they are opened with: shared by the ``rpc`` backend (our agent) and ``rpc-upstream``
(upstream's).

A channel is reused while it is up; one found lost is closed and replaced on the next call
(what it held on the agent is gone, and the backends say so through :meth:`current`).

``VACCEL_RPC_ADDRESS`` may name several agents (:mod:`.placement`): :meth:`_place` puts a new
session on one of them, trying the next when one cannot be reached.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from vaccel_core.errors import RemoteError
from vaccel_core.log import logger as _vaccel_logger
from vaccel_core.transport import DEFAULT_MAX_MESSAGE_BYTES, Address, Channel

from .placement import (
    DEFAULT_DNS_REFRESH,
    VARIABLE,
    Agent,
    AgentList,
    Backoff,
    Placement,
    parse_entries,
    placement_policy,
)
from .settings import client_options, env_float

logger = _vaccel_logger.getChild("rpc")

T = TypeVar("T")


class AgentChannels:
    """Channels by agent address, with ``VACCEL_RPC_TIMEOUT``, ``VACCEL_RPC_CONNECT_TIMEOUT``
    and ``VACCEL_RPC_MAX_MESSAGE_BYTES``. Subclasses say how an address is parsed and name the
    agent in log lines; ``_lock`` also guards their own connection state."""

    #: The message limit when VACCEL_RPC_MAX_MESSAGE_BYTES is not set.
    default_max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES
    #: The far end, in log lines.
    agent_name = "vAccel agent"
    #: The subclass's sessions by local id; each has ``address`` and ``channel``.
    _remotes: dict[int, Any]

    def _init_channels(self) -> None:
        self.op_timeout = env_float("VACCEL_RPC_TIMEOUT", 300.0)
        self.control_timeout = min(self.op_timeout, 30.0)
        self.connect_timeout = env_float("VACCEL_RPC_CONNECT_TIMEOUT", 5.0)
        self.max_message_bytes = int(
            env_float("VACCEL_RPC_MAX_MESSAGE_BYTES", self.default_max_message_bytes)
        )
        self.dns_refresh = env_float("VACCEL_RPC_DNS_REFRESH", DEFAULT_DNS_REFRESH)
        self._lock = threading.Lock()
        self._channels: dict[str, Channel] = {}
        self._connecting: dict[str, threading.Lock] = {}
        self._dns_names: dict[str, str] = {}  # agent address -> the name it was found under
        self._agent_lists: dict[str, AgentList] = {}
        self._in_flight: dict[str, int] = {}
        self.backoff = Backoff()
        self.placement = Placement(placement_policy(), self.backoff)

    def _address(self, address: str) -> Address:
        """The parsed address (the subclass's checks of what it can speak go here)."""
        return Address.parse(address)

    def _channel(self, address: str) -> Channel:
        """The channel to ``address``: the open one, or a new one if there is none or it was
        lost. Connecting holds up only callers of the same address."""
        with self._lock:
            channel = self._open(address)
            if channel is not None:
                return channel
            connecting = self._connecting.setdefault(address, threading.Lock())
        with connecting:
            with self._lock:
                channel = self._open(address)
                if channel is not None:
                    return channel
                dns_name = self._dns_names.get(address)
            from vaccel_core.plugins import get_registry

            parsed = self._address(address)
            options = client_options(
                dns_name,
                max_message_bytes=self.max_message_bytes,
                connect_timeout=self.connect_timeout,
            )
            channel = get_registry().transport(parsed.scheme).connect(parsed, options)
            with self._lock:
                self._channels[address] = channel
            logger.info("connected to the %s at %s", self.agent_name, address)
            return channel

    def _open(self, address: str) -> Channel | None:
        """The channel to ``address`` if it is up (one found lost is closed); under _lock."""
        channel = self._channels.get(address)
        if channel is not None and getattr(channel, "lost", None):
            del self._channels[address]
            channel.close()
            channel = None
        return channel

    def _current(self, address: str) -> Channel | None:
        """The channel to ``address`` now, if any (without connecting)."""
        with self._lock:
            return self._channels.get(address)

    def _forget(self, address: str, channel: Channel) -> None:
        """Drop and close ``channel`` (if it is still the one for ``address``), and skip its
        agent for a while when placing new sessions."""
        with self._lock:
            if self._channels.get(address) is channel:
                del self._channels[address]
        channel.close()
        self.backoff.failed(address)

    # Several agents ------------------------------------------------------------------------
    def agents(self, value: str) -> list[Agent]:
        """The agents ``value`` (a VACCEL_RPC_ADDRESS) names now, DNS names resolved."""
        with self._lock:
            agents = self._agent_lists.get(value)
        if agents is None:
            from vaccel_core.plugins import get_registry

            entries = parse_entries(value, self._address, lambda: list(get_registry().transports))
            agents = AgentList(value, entries, refresh=self.dns_refresh)
            with self._lock:
                agents = self._agent_lists.setdefault(value, agents)
        found = agents.agents()
        with self._lock:
            for agent in found:
                if agent.server_name:
                    self._dns_names[agent.address] = agent.server_name
        return found

    def _load(self, address: str) -> tuple[int, int]:
        """(calls in flight, live sessions) of this process on the agent at ``address``."""
        with self._lock:
            channel = self._channels.get(address)
            in_flight = self._in_flight.get(address, 0)
        sessions = sum(
            1 for r in list(self._remotes.values()) if r.address == address and r.channel is channel
        )
        return in_flight, sessions

    def _place(self, value: str, start: Callable[[str, Channel], T]) -> tuple[str, Channel, T]:
        """Start a session on one of the agents ``value`` names: ``start(address, channel)``
        on each in :class:`~.placement.Placement`'s order until one is reached. With one
        agent its error is raised as it is; with several, one RemoteError names each."""
        agents = self.placement.order(self.agents(value), self._load)
        failures: list[str] = []
        for agent in agents:
            try:
                channel = self._channel(agent.address)
                result = start(agent.address, channel)
            except RemoteError as exc:
                self.backoff.failed(agent.address)
                if len(agents) == 1:
                    raise
                logger.warning("%s unreachable, trying the next agent: %s", agent.address, exc)
                failures.append(exc.message)
                continue
            self.backoff.reached(agent.address)
            return agent.address, channel, result
        raise RemoteError(
            f"create session: none of the {len(agents)} agents of {VARIABLE}={value!r} could "
            f"be reached: {'; '.join(failures)}"
        )

    def _begin(self, address: str) -> None:
        """A call to ``address`` starts (counted for least-calls placement)."""
        with self._lock:
            self._in_flight[address] = self._in_flight.get(address, 0) + 1

    def _end(self, address: str) -> None:
        with self._lock:
            self._in_flight[address] -= 1

    def _close_channels(self) -> None:
        with self._lock:
            channels = list(self._channels.values())
            self._channels.clear()
        for channel in channels:
            channel.close()
