"""The agent's call record: what it served, for whom, how fast, and what it refused.

Always on and cheap: one :class:`Telemetry` per agent service (``service.telemetry``) counts
every call under one lock (a dict lookup and a few integer adds), with no dependency on
prometheus-client. Readers (``vaccel_agent.metrics`` at scrape time, ``GetStatus``) take
snapshots: copies, safe to read from any thread.

Every key is bounded: methods are the service's own names (anything else counts as
:data:`UNKNOWN_METHOD`), operations are catalog names, backends are the registry's, transports
are address schemes and statuses are gRPC status names. Peers are kept only while connected.
"""

from __future__ import annotations

import functools
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from vaccel_core.log import logger
from vaccel_core.transport import Message, Peer, StatusError, status_for

from .limits import LIMITS

#: Histogram upper bounds in seconds (the last is +Inf): from a ttrpc noop (~50 us) to a
#: large model on a CPU.
BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    float("inf"),
)

#: The method label of a call to a method the service does not have (the name a client sent
#: is never a label: it could be anything).
UNKNOWN_METHOD = "unknown"

#: Limit names by the flag their RESOURCE_EXHAUSTED message ends with (``(--max-sessions)``).
_LIMIT_BY_FLAG = {spec.flag: spec.name for spec in LIMITS}
#: The names :meth:`Telemetry.reject` counts (any other would be an unbounded label).
_LIMIT_NAMES = frozenset(spec.name for spec in LIMITS)


def _empty_buckets(buckets: tuple[float, ...]) -> list[int]:
    return [0] * len(buckets)


@dataclass
class CallStats:
    """Calls of one (method, operation, backend): how many, how many failed, their total
    seconds and how many fell in each of :data:`BUCKETS` (non-cumulative counts)."""

    calls: int = 0
    errors: int = 0
    seconds: float = 0.0
    buckets: list[int] = field(default_factory=lambda: _empty_buckets(BUCKETS))


@dataclass
class PeerStats:
    """One connected client: what it is (not an id: its address or process), its transport,
    its calls and failures so far, its calls in flight, and when it connected
    (``time.time()``)."""

    description: str
    transport: str
    calls: int = 0
    errors: int = 0
    in_flight: int = 0
    connected_at: float = field(default_factory=time.time)


@dataclass
class HistogramSeries:
    """One label set of an extra histogram: observations, their sum, non-cumulative counts per
    bucket of its histogram."""

    count: int
    sum: float
    buckets: list[int]


@dataclass
class Histogram:
    """An extra histogram registered with :meth:`Telemetry.histogram` (e.g. batch sizes)."""

    name: str
    label_names: tuple[str, ...]
    help: str
    buckets: tuple[float, ...]
    series: dict[tuple[str, ...], HistogramSeries] = field(default_factory=dict)


class Call:
    """One call in flight (made by :meth:`Telemetry.begin`, ended by :meth:`Telemetry.end`).
    The service fills ``operation`` and ``backend`` once it knows them (a Run)."""

    __slots__ = ("backend", "method", "operation", "peer", "received", "start", "transport")

    def __init__(self, method: str, transport: str, peer: PeerStats | None, received: int) -> None:
        self.method = method
        self.operation = ""
        self.backend = ""
        self.transport = transport
        self.peer = peer
        self.received = received
        self.start = time.perf_counter()


def limit_named(message: str) -> str | None:
    """The limit a RESOURCE_EXHAUSTED message names: :func:`vaccel_agent.limits.limit_error`
    ends every such message with the limit's flag, e.g. ``(... --max-sessions)``."""
    _, sep, tail = message.rpartition("(")
    if not sep or not tail.endswith(")"):
        return None
    return _LIMIT_BY_FLAG.get(tail[:-1].rsplit(" ", 1)[-1])


class _Record:
    """The calls of one (method, operation, backend, transport, status)."""

    __slots__ = ("buckets", "calls", "received", "seconds", "sent")

    def __init__(self) -> None:
        self.calls = 0
        self.seconds = 0.0
        self.buckets = _empty_buckets(BUCKETS)
        self.received = 0
        self.sent = 0


#: ``in_flight(peer_id)``: calls of that peer being served now; ``in_flight(None)``: of all.
InFlight = Callable[[str | None], int]


class Telemetry:
    """Counts of the agent's calls, peers and refusals (thread-safe; snapshots are copies).

    ``in_flight`` tells how many calls are being served (the agent's admission counts them
    already; the call path does not count them twice)."""

    def __init__(self, in_flight: InFlight | None = None) -> None:
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str, str, str, str], _Record] = {}
        self._peers: dict[str, PeerStats] = {}
        self._rejections: dict[str, int] = {}
        self._histograms: dict[str, Histogram] = {}
        self._in_flight = in_flight
        self._unknown_limits: set[str] = set()

    # The call path -------------------------------------------------------------------------
    def begin(self, method: str, peer_id: str, transport: str, received: int) -> Call:
        """A call of ``method`` by ``peer_id`` has arrived with ``received`` bytes of request.
        ``transport`` may be empty: a connected peer's own transport is used then."""
        peer = self._peers.get(peer_id)  # no lock: one dict read
        if peer is not None and not transport:
            transport = peer.transport
        return Call(method, transport, peer, received)

    def end(self, call: Call, status: str, sent: int = 0, message: str = "") -> None:
        """``call`` ended with ``status`` (a gRPC status name; "OK" when it succeeded) and
        ``sent`` bytes of reply; a RESOURCE_EXHAUSTED ``message`` naming a limit counts as a
        rejection by that limit."""
        seconds = time.perf_counter() - call.start
        index = bisect_left(BUCKETS, seconds)
        key = (call.method, call.operation, call.backend, call.transport, status)
        peer = call.peer
        with self._lock:
            record = self._records.get(key)
            if record is None:
                record = self._records[key] = _Record()
            record.calls += 1
            record.seconds += seconds
            record.buckets[index] += 1
            record.received += call.received
            record.sent += sent
            if peer is not None:
                peer.calls += 1
                if status != "OK":
                    peer.errors += 1
        if status == "RESOURCE_EXHAUSTED":
            limit = limit_named(message)
            if limit is not None:
                with self._lock:
                    self._rejections[limit] = self._rejections.get(limit, 0) + 1

    def reject(self, limit: str) -> None:
        """A transport refused a connection, stream or request by ``limit`` (a name of
        :data:`~vaccel_agent.limits.LIMITS`) before it became a call; other names are
        ignored (logged once each: a transport's bug, never a client's input)."""
        if limit not in _LIMIT_NAMES:
            if limit not in self._unknown_limits:
                self._unknown_limits.add(limit)
                logger.warning("a transport reported a refusal by unknown limit %r", limit)
            return
        with self._lock:
            self._rejections[limit] = self._rejections.get(limit, 0) + 1

    def failed(self, call: Call, exc: BaseException) -> None:
        """``call`` ended with ``exc``: a CallError or VaccelError by its status, a ttrpc
        :class:`~vaccel_core.transport.StatusError` by its code, anything else INTERNAL."""
        if isinstance(exc, StatusError):
            from vaccel_transports.ttrpc.wire import status_name

            self.end(call, status_name(exc.code), 0, exc.message)
        else:
            self.end(call, status_for(exc), 0, getattr(exc, "message", ""))

    def connected(self, peer_id: str, description: str, transport: str) -> None:
        """A client connected (kept until :meth:`disconnected`)."""
        with self._lock:
            self._peers[peer_id] = PeerStats(description, transport)

    def disconnected(self, peer_id: str) -> None:
        with self._lock:
            self._peers.pop(peer_id, None)

    # Extra histograms ----------------------------------------------------------------------
    def histogram(
        self,
        name: str,
        label_names: tuple[str, ...],
        help: str,
        buckets: tuple[float, ...] = BUCKETS,
    ) -> None:
        """Register histogram ``name`` (a full metric name, e.g. ``vaccel_agent_batch_size``)
        for :meth:`observe`; registering the same name again with the same labels is a no-op."""
        buckets = tuple(float(b) for b in buckets)
        if not buckets or buckets[-1] != float("inf"):
            buckets = (*buckets, float("inf"))
        if list(buckets) != sorted(set(buckets)):
            raise ValueError(f"histogram {name}: buckets must increase, got {buckets}")
        with self._lock:
            known = self._histograms.get(name)
            if known is not None:
                if known.label_names != tuple(label_names):
                    raise ValueError(
                        f"histogram {name}: registered with labels {known.label_names}, "
                        f"not {tuple(label_names)}"
                    )
                return
            self._histograms[name] = Histogram(name, tuple(label_names), help, buckets)

    def observe(self, name: str, labels: tuple[str, ...], value: float) -> None:
        """Add ``value`` to registered histogram ``name`` under ``labels`` (one value per
        label name, bounded values only: never an id)."""
        with self._lock:
            hist = self._histograms.get(name)
            if hist is None:
                raise KeyError(f"histogram {name} is not registered (Telemetry.histogram)")
            if len(labels) != len(hist.label_names):
                raise ValueError(
                    f"histogram {name}: expected {len(hist.label_names)} label values "
                    f"{hist.label_names}, got {labels!r}"
                )
            series = hist.series.get(labels)
            if series is None:
                series = hist.series[labels] = HistogramSeries(0, 0.0, _empty_buckets(hist.buckets))
            series.count += 1
            series.sum += value
            series.buckets[bisect_left(hist.buckets, value)] += 1

    # Snapshots -----------------------------------------------------------------------------
    def calls(self) -> dict[tuple[str, str, str], CallStats]:
        """Calls by (method, operation, backend)."""
        out: dict[tuple[str, str, str], CallStats] = {}
        with self._lock:
            for (method, operation, backend, _, status), r in self._records.items():
                stats = out.get((method, operation, backend))
                if stats is None:
                    stats = out[(method, operation, backend)] = CallStats()
                stats.calls += r.calls
                stats.errors += r.calls if status != "OK" else 0
                stats.seconds += r.seconds
                stats.buckets = [a + b for a, b in zip(stats.buckets, r.buckets, strict=True)]
        return out

    def outcomes(self) -> dict[tuple[str, str, str, str, str], int]:
        """Calls by (method, operation, backend, transport, status)."""
        with self._lock:
            return {key: r.calls for key, r in self._records.items()}

    def traffic(self) -> dict[str, tuple[int, int]]:
        """(received, sent) message bytes by transport."""
        out: dict[str, tuple[int, int]] = {}
        with self._lock:
            for (_, _, _, transport, _), r in self._records.items():
                received, sent = out.get(transport, (0, 0))
                out[transport] = (received + r.received, sent + r.sent)
        return out

    def peers(self) -> dict[str, PeerStats]:
        """Connected peers by peer id."""
        with self._lock:
            peers = {pid: self._copy(p) for pid, p in self._peers.items()}
        if self._in_flight is not None:
            for pid, stats in peers.items():
                stats.in_flight = self._in_flight(pid)
        return peers

    def peer(self, peer_id: str) -> PeerStats | None:
        """One connected peer (a copy), or None: a client's own status without copying
        every peer's."""
        with self._lock:
            found = self._peers.get(peer_id)
            stats = self._copy(found) if found is not None else None
        if stats is not None and self._in_flight is not None:
            stats.in_flight = self._in_flight(peer_id)
        return stats

    @staticmethod
    def _copy(p: PeerStats) -> PeerStats:
        return PeerStats(p.description, p.transport, p.calls, p.errors, 0, p.connected_at)

    def rejections(self) -> dict[str, int]:
        """Requests refused, by limit name."""
        with self._lock:
            return dict(self._rejections)

    def in_flight(self) -> int:
        """Calls being served now (0 without an ``in_flight`` source)."""
        return self._in_flight(None) if self._in_flight is not None else 0

    def histograms(self) -> dict[str, Histogram]:
        """The extra histograms with their series, by name."""
        with self._lock:
            return {
                name: Histogram(
                    h.name,
                    h.label_names,
                    h.help,
                    h.buckets,
                    {
                        labels: HistogramSeries(s.count, s.sum, list(s.buckets))
                        for labels, s in h.series.items()
                    },
                )
                for name, h in self._histograms.items()
            }


class _Service(Protocol):
    @property
    def services(self) -> Mapping[str, Any]: ...

    @property
    def telemetry(self) -> Telemetry: ...

    def handle(self, method: str, request: Message, peer: Peer, transport: str = "") -> Message: ...

    def peer_connected(self, peer: Peer, transport: str = "") -> None: ...

    def peer_disconnected(self, peer: Peer) -> None: ...


class TransportHandler:
    """The agent service as one listener sees it: its calls and peers carry the listener's
    transport (``unix``, ``vsock``, ``tcp``, ``virtio-mock``) into the telemetry."""

    def __init__(self, service: _Service, transport: str) -> None:
        self.service = service
        self.transport = transport
        #: Other ttrpc services on the same connections (their calls take the transport of
        #: the peer that makes them).
        self.services = service.services
        #: ``handle(method, request, peer)``: the service's, with the transport (a partial:
        #: no extra Python frame on every call).
        self.handle: Callable[[str, Message, Peer], Message] = functools.partial(
            service.handle, transport=transport
        )

        #: ``rejected(limit)``: the listener refused something by one of its limits (the
        #: telemetry's own method: no extra frame).
        self.rejected: Callable[[str], None] = service.telemetry.reject

    def peer_connected(self, peer: Peer) -> None:
        self.service.peer_connected(peer, self.transport)

    def peer_disconnected(self, peer: Peer) -> None:
        self.service.peer_disconnected(peer)
