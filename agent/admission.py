"""Admission of calls: how many calls, and how many request and reply bytes, each client and
all clients together may have in flight in the agent.

A call is admitted with the size of its request (:meth:`Admission.admit`); before its operation
runs, the size of its reply is reserved too when the request tells it (an sgemm's output is
``m x n`` float32, an exec's outputs are the sizes the guest asked for), so a 56-byte request
cannot make the agent build a 1 GiB reply. Over a limit, the client gets RESOURCE_EXHAUSTED
naming the limit and its flag; nothing waits, so a client over its share never delays others.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .limits import Limits, limit_error


@dataclass
class _Usage:
    calls: int = 0
    nbytes: int = 0


@dataclass
class Ticket:
    """One admitted call; :meth:`reserve` adds bytes, :meth:`release` ends it (idempotent)."""

    admission: Admission
    client: str
    what: str
    nbytes: int = 0
    released: bool = field(default=False)

    def reserve(self, nbytes: int, why: str, copies: int = 1) -> None:
        """Hold ``nbytes`` more for this call (its reply), or raise RESOURCE_EXHAUSTED.
        ``copies``: how many times the agent holds those bytes at once (a result array and
        the message that carries it: 2); a reply itself may be at most one message."""
        self.admission._reserve(self, nbytes, why, copies)

    def release(self) -> None:
        self.admission._release(self)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Admission:
    """Counts of calls and bytes in flight, per client and in total, against ``limits``."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._total = _Usage()
        self._clients: dict[str, _Usage] = {}
        #: Calls refused, by limit name (for status and metrics).
        self.rejections: dict[str, int] = {}

    def admit(self, client: str, what: str, nbytes: int) -> Ticket:
        """Admit one call of ``client`` carrying ``nbytes`` of request."""
        limits = self.limits
        with self._lock:
            usage = self._clients.get(client) or _Usage()
            if usage.calls >= limits.max_client_calls:
                self._refuse("max_client_calls")
                raise limit_error(
                    what,
                    "max_client_calls",
                    f"this client already has {usage.calls} calls in flight "
                    f"(limit {limits.max_client_calls})",
                )
            if self._total.calls >= limits.max_calls:
                self._refuse("max_calls")
                raise limit_error(
                    what,
                    "max_calls",
                    f"the agent is serving {self._total.calls} calls "
                    f"(limit {limits.max_calls}); try again shortly",
                )
            self._check_bytes(client, usage, nbytes, what, "request")
            usage.calls += 1
            usage.nbytes += nbytes
            self._clients[client] = usage
            self._total.calls += 1
            self._total.nbytes += nbytes
        return Ticket(self, client, what, nbytes)

    def _check_bytes(self, client: str, usage: _Usage, nbytes: int, what: str, kind: str) -> None:
        """Caller holds the lock."""
        limits = self.limits
        if usage.nbytes + nbytes > limits.max_client_inflight_bytes:
            self._refuse("max_client_inflight_bytes")
            raise limit_error(
                what,
                "max_client_inflight_bytes",
                f"a {kind} of {nbytes} bytes would bring this client's calls in flight to "
                f"{usage.nbytes + nbytes} bytes (limit {limits.max_client_inflight_bytes})",
            )
        if self._total.nbytes + nbytes > limits.max_inflight_bytes:
            self._refuse("max_inflight_bytes")
            raise limit_error(
                what,
                "max_inflight_bytes",
                f"a {kind} of {nbytes} bytes would bring the calls in flight to "
                f"{self._total.nbytes + nbytes} bytes (limit {limits.max_inflight_bytes}); "
                f"try again shortly",
            )

    def _refuse(self, name: str) -> None:
        self.rejections[name] = self.rejections.get(name, 0) + 1

    def _reserve(self, ticket: Ticket, nbytes: int, why: str, copies: int = 1) -> None:
        if nbytes <= 0:
            return
        if nbytes > self.limits.max_message_bytes:
            with self._lock:
                self._refuse("max_message_bytes")
            raise limit_error(
                ticket.what,
                "max_message_bytes",
                f"{why} would be {nbytes} bytes, more than the message size limit "
                f"({self.limits.max_message_bytes} bytes)",
            )
        held = nbytes * max(1, copies)
        with self._lock:
            if ticket.released:
                return
            usage = self._clients.setdefault(ticket.client, _Usage())
            self._check_bytes(ticket.client, usage, held, ticket.what, why)
            usage.nbytes += held
            self._total.nbytes += held
            ticket.nbytes += held

    def _release(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket.released:
                return
            ticket.released = True
            self._total.calls -= 1
            self._total.nbytes -= ticket.nbytes
            usage = self._clients.get(ticket.client)
            if usage is not None:
                usage.calls -= 1
                usage.nbytes -= ticket.nbytes
                if usage.calls <= 0:
                    del self._clients[ticket.client]

    def in_flight(self, client: str | None = None) -> tuple[int, int]:
        """(calls, bytes) in flight for ``client``, or in total."""
        with self._lock:
            usage = self._total if client is None else self._clients.get(client, _Usage())
            return usage.calls, usage.nbytes
