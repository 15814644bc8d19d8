"""Bounds on requests being received, with fair eviction of the slowest.

A request costs memory from its first body byte until it is complete, and how long that takes
is up to the sender. The gRPC listener therefore admits a call to its *receiving* phase (from
its headers until its request message is complete) only within two bounds: ``per_key`` calls
of one client and ``total`` calls of the listener, so partial requests hold at most
``total x max_message_bytes``. A call over a bound does not simply lose to whoever holds the
slots (a slow sender would hold them forever): it evicts the oldest receiving call of its own
client, or of the client receiving the most, when that call has been receiving for longer than
``grace`` seconds; legitimate requests complete in milliseconds, so what gets evicted is a
sender that dawdles. The gRPC listener uses it on its event loop (evicting a call cancels its
task); the ttrpc listener under its lock (evicting a request drops its buffers).

Each call refused or evicted, and each expired by :meth:`ReceiveSlots.expire`, is reported once
to ``rejected(limit)`` (the handler's rejection hook: ``max_client_calls``, ``max_calls``,
``receive_timeout``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field


class Refused(Exception):
    """No receiving slot for this call: the message says which bound and flag."""


@dataclass(eq=False)
class Slot:
    """One call receiving its request. ``evicted`` is set when another call took its place."""

    key: Hashable
    #: What evicting the call does (cancel its task, drop its buffers); None: not evictable.
    evict: Callable[[], object] | None
    since: float = field(default_factory=time.monotonic)
    evicted: str | None = None


class ReceiveSlots:
    """Receiving calls per key and in total, evicting the slowest over a bound."""

    def __init__(
        self,
        total: int,
        per_key: int,
        grace: float = 1.0,
        rejected: Callable[[str], None] = lambda limit: None,
    ) -> None:
        self.total = max(1, total)
        self.per_key = max(1, per_key)
        self.grace = grace
        self._rejected = rejected
        self._by_key: dict[Hashable, list[Slot]] = {}
        self._count = 0
        #: Calls refused or evicted, for tests and status.
        self.refused = 0
        self.evictions = 0

    def __len__(self) -> int:
        return self._count

    def enter(self, key: Hashable, what: str, evict: Callable[[], object] | None = None) -> Slot:
        """A slot for a call of ``key``, or Refused. ``what`` names the call in messages;
        ``evict`` is what evicting it does (default: cancel the current asyncio task)."""
        mine = self._by_key.get(key, [])
        if len(mine) >= self.per_key:
            self._rejected("max_client_calls")  # the new call or the evicted one
            self._evict_oldest(
                key,
                f"{what}: this client already has {len(mine)} requests being received "
                f"(limit {self.per_key}, --max-client-calls); its slowest was dropped",
                f"{what}: this client already has {len(mine)} requests being received "
                f"(limit {self.per_key}, --max-client-calls)",
            )
        elif self._count >= self.total:
            heaviest = max(self._by_key, key=lambda k: (len(self._by_key[k]), -self._oldest(k)))
            if len(self._by_key[heaviest]) <= len(mine):
                self.refused += 1
                self._rejected("max_calls")
                raise Refused(
                    f"{what}: the listener is receiving {self._count} requests "
                    f"(limit {self.total}, --max-calls); try again shortly"
                )
            self._rejected("max_calls")  # the new call or the evicted one
            self._evict_oldest(
                heaviest,
                f"{what}: the listener is receiving {self._count} requests "
                f"(limit {self.total}, --max-calls); this slow one made room for another "
                f"client's",
                f"{what}: the listener is receiving {self._count} requests "
                f"(limit {self.total}, --max-calls); try again shortly",
            )
        if evict is None:
            task = asyncio.current_task()
            evict = task.cancel if task is not None else None
        slot = Slot(key, evict)
        self._by_key.setdefault(key, []).append(slot)
        self._count += 1
        return slot

    def _oldest(self, key: Hashable) -> float:
        return min(s.since for s in self._by_key[key])

    def _evict_oldest(self, key: Hashable, evicted: str, refused: str) -> None:
        slots = self._by_key[key]
        oldest = min(slots, key=lambda s: s.since)
        if time.monotonic() - oldest.since < self.grace or oldest.evict is None:
            self.refused += 1
            raise Refused(refused)
        self.leave(oldest)
        oldest.evicted = evicted
        self.evictions += 1
        oldest.evict()

    def leave(self, slot: Slot) -> None:
        """The call's request is complete, or the call ended (idempotent)."""
        slots = self._by_key.get(slot.key)
        if slots is None or slot not in slots:
            return
        slots.remove(slot)
        self._count -= 1
        if not slots:
            del self._by_key[slot.key]

    def expire(self, started_before: float, why: str) -> int:
        """Evict every call receiving since before ``started_before`` (a monotonic time),
        saying ``why``; how many. For listeners whose calls cannot time out by themselves."""
        stale = [s for slots in self._by_key.values() for s in slots if s.since < started_before]
        for slot in stale:
            self.leave(slot)
            self._rejected("receive_timeout")
            slot.evicted = why
            if slot.evict is not None:
                slot.evict()
        return len(stale)
