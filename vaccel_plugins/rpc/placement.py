"""Several agents behind one ``VACCEL_RPC_ADDRESS``: which agents it names, and which of them a
new session goes to.

``VACCEL_RPC_ADDRESS`` is one address or a comma-separated list of them. A ``tcp://`` entry
whose host is a DNS name (a Kubernetes headless Service, say) stands for every address the
name resolves to, looked up again every ``VACCEL_RPC_DNS_REFRESH`` seconds (default 10), so
that agents added or removed are picked up. Each agent address is one agent.

A session is placed once, on one agent, and stays there (the agent holds its state and its
resources). The policy (``VACCEL_RPC_PLACEMENT``):

* ``least-calls`` (default): the agent with the fewest calls of this process in flight, then
  with the fewest of this process's live sessions, then the next in a rotation that starts at a
  random agent;
* ``round-robin``: the next agent in that rotation.

An agent that could not be reached is skipped for a short backoff (:class:`Backoff`: 1 s,
doubling up to 10 s) and then tried again; while every agent is backing off they are all tried,
soonest first. Guests do not see one another's load (an agent tells a client only about
itself), so separate guests spread by their random starting points.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vaccel_core.errors import InvalidArgumentError, RemoteError
from vaccel_core.log import logger as _vaccel_logger
from vaccel_core.transport import Address

logger = _vaccel_logger.getChild("rpc")

#: The variable the agents' addresses come from (errors name it).
VARIABLE = "VACCEL_RPC_ADDRESS"
LEAST_CALLS, ROUND_ROBIN = "least-calls", "round-robin"
POLICIES = (LEAST_CALLS, ROUND_ROBIN)
#: Seconds between DNS look-ups of a name in VACCEL_RPC_ADDRESS.
DEFAULT_DNS_REFRESH = 10.0


def resolve(host: str, port: int) -> list[str]:
    """The IP addresses ``host`` resolves to for a TCP connection, each once, in the
    resolver's order (raises OSError when it cannot be resolved)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))


def placement_policy() -> str:
    """``VACCEL_RPC_PLACEMENT``: ``least-calls`` (default) or ``round-robin``."""
    value = (os.environ.get("VACCEL_RPC_PLACEMENT") or LEAST_CALLS).strip().lower()
    if value not in POLICIES:
        raise InvalidArgumentError(
            f"VACCEL_RPC_PLACEMENT: expected {' or '.join(POLICIES)}, got {value!r}"
        )
    return value


@dataclass(frozen=True)
class Agent:
    """One agent: the address dialled, and the DNS name it was found under (the name its TLS
    certificate is checked against), if any."""

    address: str
    server_name: str | None = None


@dataclass(frozen=True)
class Entry:
    """One entry of the list: a fixed address, or a ``tcp://`` name to resolve."""

    text: str
    address: Address
    host: str | None = None  # a DNS name to resolve, else None
    port: int = 0


def _dns_name(address: Address) -> tuple[str, int] | None:
    """(host, port) when ``address`` is a tcp address whose host is a name, not an IP."""
    if address.scheme != "tcp":
        return None
    from vaccel_transports.tcp import split_host_port

    host, port = split_host_port(address)
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host, port
    return None


def parse_entries(
    value: str, parse: Callable[[str], Address], schemes: Callable[[], Sequence[str]]
) -> list[Entry]:
    """The entries of ``VACCEL_RPC_ADDRESS``, each checked with ``parse`` (the backend's own
    address check) and against the known transport ``schemes``. A single address is parsed
    only (its errors are the backend's, as they always were)."""
    texts = [part.strip() for part in value.split(",")]
    if len(texts) == 1:
        address = parse(texts[0])
        name = _dns_name(address)
        return [Entry(texts[0], address, *name) if name else Entry(texts[0], address)]
    entries: list[Entry] = []
    seen: set[str] = set()
    for index, text in enumerate(texts, 1):
        where = f"{VARIABLE}={value!r}: entry {index} of {len(texts)}"
        if not text:
            raise InvalidArgumentError(
                f"{where} is empty (expected addresses separated by single commas, e.g. "
                f"unix:///run/a.sock,unix:///run/b.sock)"
            )
        try:
            address = parse(text)
            name = _dns_name(address)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"{where} ({text!r}): {exc.message}") from None
        known = schemes()
        if address.scheme not in known:
            raise InvalidArgumentError(
                f"{where} ({text!r}): no transport for scheme {address.scheme!r} "
                f"(known: {', '.join(sorted(known)) or 'none'})"
            )
        key = str(address)
        if key in seen:
            raise InvalidArgumentError(f"{where} ({text!r}) names the same agent as an earlier one")
        seen.add(key)
        entries.append(Entry(text, address, *name) if name else Entry(text, address))
    return entries


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


@dataclass
class AgentList:
    """The agents of one ``VACCEL_RPC_ADDRESS`` value, DNS names resolved again once
    ``refresh`` seconds have passed (a failed look-up keeps the last answer)."""

    value: str
    entries: list[Entry]
    refresh: float = DEFAULT_DNS_REFRESH
    #: ``(host, port) -> IP addresses``; None: this module's :func:`resolve`, looked up at
    #: each use.
    resolver: Callable[[str, int], list[str]] | None = None
    clock: Callable[[], float] = time.monotonic
    _resolved: dict[str, list[Agent]] = field(default_factory=dict)
    _expires: float = float("-inf")
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def agents(self) -> list[Agent]:
        """Every agent now, in the list's order (no duplicates). Raises RemoteError when names
        resolve to nothing and no earlier answer is known."""
        with self._lock:
            if any(e.host for e in self.entries) and self.clock() >= self._expires:
                self._lookup()
            agents: list[Agent] = []
            seen: set[str] = set()
            errors: list[str] = []
            for entry in self.entries:
                found = (
                    [Agent(entry.text)] if entry.host is None else self._resolved.get(entry.text)
                )
                if not found:
                    errors.append(f"{entry.text}: {entry.host!r} resolved to no address")
                    continue
                for agent in found:
                    if agent.address not in seen:
                        seen.add(agent.address)
                        agents.append(agent)
            if not agents:
                raise RemoteError(f"{VARIABLE}={self.value!r}: no agent: {'; '.join(errors)}")
            return agents

    def _lookup(self) -> None:
        self._expires = self.clock() + self.refresh
        for entry in self.entries:
            if entry.host is None:
                continue
            try:
                ips = (self.resolver or resolve)(entry.host, entry.port)
            except OSError as exc:
                logger.warning(
                    "%s: cannot resolve %r (%s); keeping %d agents found before",
                    entry.text,
                    entry.host,
                    exc,
                    len(self._resolved.get(entry.text, [])),
                )
                continue
            agents = [
                Agent(
                    str(Address("tcp", f"{_host(ip)}:{entry.port}", entry.address.protocol)),
                    entry.host,
                )
                for ip in ips
            ]
            if [a.address for a in agents] != [
                a.address for a in self._resolved.get(entry.text, [])
            ]:
                logger.info(
                    "%s: %r resolves to %s", entry.text, entry.host, ", ".join(ips) or "nothing"
                )
            self._resolved[entry.text] = agents


class Backoff:
    """Agents that could not be reached, and until when they are skipped: 1 s after the first
    failure, doubling with each failure in a row, at most 10 s."""

    FIRST, LONGEST = 1.0, 10.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._until: dict[str, tuple[float, int]] = {}  # address -> (skip until, failures)

    def failed(self, address: str) -> None:
        with self._lock:
            _, failures = self._until.get(address, (0.0, 0))
            wait = min(self.FIRST * 2**failures, self.LONGEST)
            self._until[address] = (self.clock() + wait, failures + 1)

    def reached(self, address: str) -> None:
        if address in self._until:
            with self._lock:
                self._until.pop(address, None)

    def until(self, address: str) -> float:
        """When ``address`` may be tried again (in the past: now)."""
        return self._until.get(address, (float("-inf"), 0))[0]


class Placement:
    """Orders the agents for a new session: those not backing off by the policy, then those
    backing off, soonest first."""

    def __init__(self, policy: str, backoff: Backoff) -> None:
        self.policy = policy
        self.backoff = backoff
        self._turn = random.randrange(1 << 30)  # guests start at different agents
        self._lock = threading.Lock()

    def order(self, agents: Sequence[Agent], load: Callable[[str], tuple[int, int]]) -> list[Agent]:
        """``agents`` in the order to try them; ``load(address)`` is (calls in flight, live
        sessions) of this process on that agent."""
        with self._lock:
            turn = self._turn
            self._turn += 1
        count = len(agents)
        rotation = {a.address: (i - turn) % count for i, a in enumerate(agents)}
        now = self.backoff.clock()
        ready = [a for a in agents if self.backoff.until(a.address) <= now]
        waiting = sorted(
            (a for a in agents if self.backoff.until(a.address) > now),
            key=lambda a: self.backoff.until(a.address),
        )
        if self.policy == LEAST_CALLS:
            ready.sort(key=lambda a: (*load(a.address), rotation[a.address]))
        else:
            ready.sort(key=lambda a: rotation[a.address])
        return ready + waiting
