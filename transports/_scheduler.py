"""A fair thread pool: calls of many clients share a few worker threads in round robin.

A plain FIFO pool lets one client that queues many calls delay everyone queued after it. Here
each client (any hashable key) has its own queue, bounded in length, and workers take one call
from each client with work in turn, so a client's wait depends on how many *clients* are busy,
not on how many calls the busiest one sent. Calls are awaited from asyncio (the gRPC server's
loop) and run in threads (backends block); a call cancelled while still queued never runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """The client already has ``max_queued`` calls waiting or running."""


@dataclass
class _Work:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    started: bool = False
    cancelled: bool = False


@dataclass
class _Client:
    queue: deque[_Work] = field(default_factory=deque)
    running: int = 0


class FairExecutor:
    """``workers`` threads serving per-key queues in round robin."""

    def __init__(self, workers: int, max_queued: int, name: str = "vaccel-call") -> None:
        self.max_queued = max_queued
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        #: Clients with queued work, in service order (round robin: served ones go last).
        self._turns: OrderedDict[Hashable, _Client] = OrderedDict()
        self._clients: dict[Hashable, _Client] = {}
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    async def run(self, key: Hashable, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in a worker, in ``key``'s turn; raises QueueFull when ``key``
        already has ``max_queued`` calls queued or running."""
        loop = asyncio.get_running_loop()
        work = _Work(fn, args, loop, loop.create_future())
        with self._lock:
            if self._closed:
                raise RuntimeError("the executor is shut down")
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = _Client()
            if len(client.queue) + client.running >= self.max_queued:
                raise QueueFull(len(client.queue) + client.running)
            client.queue.append(work)
            self._turns.setdefault(key, client)
            self._ready.notify()
        try:
            return await work.future
        except asyncio.CancelledError:
            with self._lock:
                work.cancelled = True  # a worker that has not started it skips it
            raise

    def _next(self) -> tuple[Hashable, _Client, _Work] | None:
        """The next call to run (caller holds the lock), or None when there is none."""
        while self._turns:
            key, client = self._turns.popitem(last=False)
            while client.queue:
                work = client.queue.popleft()
                if work.cancelled:
                    continue
                if client.queue:
                    self._turns[key] = client  # more work: back of the line
                work.started = True
                client.running += 1
                return key, client, work
            self._forget_if_idle(key, client)
        return None

    def _forget_if_idle(self, key: Hashable, client: _Client) -> None:
        if not client.queue and not client.running:
            self._clients.pop(key, None)

    def _work(self) -> None:
        while True:
            with self._lock:
                picked = self._next()
                while picked is None:
                    if self._closed:
                        return
                    self._ready.wait()
                    picked = self._next()
            key, client, work = picked
            try:
                value = work.fn(*work.args)
            except BaseException as exc:
                _settle(work, None, exc)
            else:
                _settle(work, value, None)
            finally:
                with self._lock:
                    client.running -= 1
                    self._forget_if_idle(key, client)

    def shutdown(self) -> None:
        """Stop the workers once the queued calls are done (does not wait)."""
        with self._lock:
            self._closed = True
            self._ready.notify_all()


def _settle(work: _Work, value: Any, exc: BaseException | None) -> None:
    def settle() -> None:
        if work.future.done():
            return
        if exc is not None:
            work.future.set_exception(exc)
        else:
            work.future.set_result(value)

    # A closed loop (RuntimeError) has nobody awaiting the result any more.
    with contextlib.suppress(RuntimeError):
        work.loop.call_soon_threadsafe(settle)
