"""Dynamic batching: concurrent calls for the same model run as one batch.

Calls arrive on many threads at once (the agent serves each client's call on a thread of its
own; a program may share sessions between threads). When batching is on, a call whose backend
can batch it (:attr:`vaccel_core.backend.Backend.batch_operations`) is first *prepared* in its
caller's thread (:meth:`~vaccel_core.backend.Backend.prepare_batch`: arguments checked, image
decoded), so that a bad input fails that call alone before it meets any other. Prepared calls
with the same key (same model, same input names, dtypes and per-item shapes) then join one
batch: up to ``max_size`` items along the batch dimension, waiting at most ``max_delay_us``
after the first arrived; one batch of a key runs at a time and the next one fills meanwhile
(as Triton's dynamic batcher with one model instance). The thread of the batch's first call
runs it (:meth:`~vaccel_core.backend.Backend.run_batch`) and hands each caller its own result.

- A failed batch is run again call by call, each in its own caller's thread: only the culprit
  fails.
- A call whose deadline (:func:`vaccel_core.transport.deadline_scope`, set by the transport
  that serves it) passes while it waits leaves the queue with DEADLINE_EXCEEDED; the others go
  on.
- Nothing new is held: a batch holds the calls in flight, which the agent's admission bounds.

Settings: :class:`BatchPolicy` (off by default), from the agent's flags
(``--batch-max-size``, ``--batch-max-delay-us``, ``--batch-config``), ``--vaccel-config`` keys
``batch_max_size``, ``batch_max_delay_us``, ``batch_config``, or, for local sessions, the
variables ``VACCEL_BATCH_MAX_SIZE``, ``VACCEL_BATCH_MAX_DELAY_US``, ``VACCEL_BATCH_CONFIG``.
See docs/batching.md.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import load_toml
from .errors import BackendError, InvalidArgumentError, VaccelError
from .log import logger as _vaccel_logger
from .transport import current_deadline

if TYPE_CHECKING:
    from .backend import Backend
    from .config import Config
    from .ops import Op
    from .session import Session

logger = _vaccel_logger.getChild("batching")

#: Largest batch (items along the batch dimension) a setting may ask for.
MAX_BATCH_SIZE = 256
#: Longest delay a setting may ask for: one second.
MAX_DELAY_US = 1_000_000
#: Delay when only a size is given: none. One batch of a model runs at a time and the calls
#: that arrive meanwhile form the next, so batches grow with the load while a lone caller never
#: waits (measured in BENCHMARKS.md: 1 guest 1.00x with 0 us vs 0.79x with 2000 us, 8 guests
#: alike). Raise it when batches stay small on a device whose runs are short.
DEFAULT_DELAY_US = 0
#: Name of the default classifier in a batch config file (classify with no MODEL resource).
DEFAULT_MODEL = "default"

SIZE_ENV = "VACCEL_BATCH_MAX_SIZE"
DELAY_ENV = "VACCEL_BATCH_MAX_DELAY_US"
CONFIG_ENV = "VACCEL_BATCH_CONFIG"
#: ``Config.extra`` keys (``--vaccel-config``; the agent's flags are written there too).
SIZE_KEY, DELAY_KEY, CONFIG_KEY = "batch_max_size", "batch_max_delay_us", "batch_config"


# Settings -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchSettings:
    """How calls of one model batch: at most ``max_size`` items (below 2: never), waiting at
    most ``max_delay_us`` microseconds for more after the first."""

    max_size: int = 0
    max_delay_us: int = DEFAULT_DELAY_US

    @property
    def enabled(self) -> bool:
        return self.max_size >= 2

    @property
    def max_delay(self) -> float:
        """The delay in seconds."""
        return self.max_delay_us / 1e6


def _integer(value: Any, what: str, low: int, high: int) -> int:
    """``value`` (an int, or a string of one) within [low, high], or a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidArgumentError(f"{what}: expected an integer, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise InvalidArgumentError(f"{what}: expected an integer, got {value!r}") from None
    if not low <= number <= high:
        raise InvalidArgumentError(f"{what}: expected {low} to {high}, got {number}")
    return number


def check_size(value: Any, what: str) -> int:
    """A maximum batch size: 0 (off) to :data:`MAX_BATCH_SIZE`."""
    return _integer(value, what, 0, MAX_BATCH_SIZE)


def check_delay(value: Any, what: str) -> int:
    """A maximum delay in microseconds: 0 to :data:`MAX_DELAY_US`."""
    return _integer(value, what, 0, MAX_DELAY_US)


@dataclass(frozen=True)
class BatchPolicy:
    """The settings in force: ``default`` for every model, ``models`` by model name (the
    sha256 of the model file, lower-case hex, or :data:`DEFAULT_MODEL`)."""

    default: BatchSettings = BatchSettings()
    models: Mapping[str, BatchSettings] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        """Whether any model batches."""
        return self.default.enabled or any(s.enabled for s in self.models.values())

    def for_model(self, model: str) -> BatchSettings:
        return self.models.get(model, self.default)




_SETTING_KEYS = ("max_size", "max_delay_us")


def _settings(table: Mapping[str, Any], base: BatchSettings, where: str) -> BatchSettings:
    unknown = [k for k in table if k not in _SETTING_KEYS]
    if unknown:
        raise InvalidArgumentError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(_SETTING_KEYS)})"
        )
    size = table.get("max_size", base.max_size)
    delay = table.get("max_delay_us", base.max_delay_us)
    return BatchSettings(
        check_size(size, f"{where}: max_size"), check_delay(delay, f"{where}: max_delay_us")
    )


def _is_sha256(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def parse_config(data: Mapping[str, Any], base: BatchSettings, what: str) -> BatchPolicy:
    """A policy from a batch config file's data: top-level ``max_size`` / ``max_delay_us``
    override ``base``; ``[models.NAME]`` tables override those for one model (NAME: the
    sha256 of its model file, or ``default``)."""
    top = {k: v for k, v in data.items() if k != "models"}
    default = _settings(top, base, what)
    models_table = data.get("models", {})
    if not isinstance(models_table, Mapping):
        raise InvalidArgumentError(f"{what}: 'models' must be a table of [models.NAME] tables")
    models: dict[str, BatchSettings] = {}
    for name, table in models_table.items():
        where = f"{what}: [models.{name}]"
        if name != DEFAULT_MODEL and not _is_sha256(name):
            raise InvalidArgumentError(
                f"{where}: expected a model named by the sha256 of its file (64 lower-case "
                f"hex digits, as sha256sum prints it) or {DEFAULT_MODEL!r} (the built-in "
                f"classifier), got {name!r}"
            )
        if not isinstance(table, Mapping):
            raise InvalidArgumentError(f"{where}: expected a table of settings")
        models[name] = _settings(table, default, where)
    return BatchPolicy(default, models)


def policy_from_values(
    max_size: Any = None,
    max_delay_us: Any = None,
    config_file: str | os.PathLike[str] | None = None,
    *,
    names: tuple[str, str, str] = ("max_size", "max_delay_us", "config"),
) -> BatchPolicy:
    """A checked policy; ``names`` name the settings in errors (flags or variables)."""
    size = check_size(max_size, names[0]) if max_size not in (None, "") else 0
    delay = DEFAULT_DELAY_US
    if max_delay_us not in (None, ""):
        delay = check_delay(max_delay_us, names[1])
    base = BatchSettings(size, delay)
    if not config_file:
        return BatchPolicy(base)
    path = Path(config_file)
    return parse_config(load_toml(path, f"{names[2]} {path}"), base, f"{names[2]} {path}")


def policy_from_config(config: Config, environ: Mapping[str, str] | None = None) -> BatchPolicy:
    """The policy of ``config``: its ``batch_*`` keys (the agent's flags, ``--vaccel-config``),
    else the ``VACCEL_BATCH_*`` variables."""
    env = os.environ if environ is None else environ
    chosen: list[Any] = []
    names: list[str] = []
    for key, var in ((SIZE_KEY, SIZE_ENV), (DELAY_KEY, DELAY_ENV), (CONFIG_KEY, CONFIG_ENV)):
        if config.extra.get(key) not in (None, ""):
            chosen.append(config.extra[key])
            names.append(f"--{key.replace('_', '-')} ({key})")
        else:
            chosen.append(env.get(var))
            names.append(var)
    return policy_from_values(*chosen, names=(names[0], names[1], names[2]))


class DeadlineExceeded(VaccelError):
    """A call's deadline passed while it waited for its batch (ETIMEDOUT: DEADLINE_EXCEEDED
    through the agent)."""

    code = errno.ETIMEDOUT


# The contract's data --------------------------------------------------------------------------
@dataclass
class BatchItem:
    """One call prepared for a batch by :meth:`Backend.prepare_batch`.

    ``key``: calls with equal keys can run as one batch (the model and the per-item input
    signature); ``model``: the model's name for settings (the sha256 of its file, or
    :data:`DEFAULT_MODEL`); ``size``: items it adds along the batch dimension; ``data``:
    whatever the backend's :meth:`~Backend.run_batch` needs (e.g. the preprocessed arrays).
    """

    key: Hashable
    model: str
    data: Any
    size: int = 1


@dataclass(frozen=True)
class BatchReport:
    """What one executed batch was: the operation, its size along the batch dimension, how
    many calls it served and how long each waited in the queue (seconds)."""

    operation: str
    size: int
    calls: int
    queue_seconds: tuple[float, ...]


# The engine -----------------------------------------------------------------------------------
_WAITING, _DONE, _FAILED, _ALONE = range(4)


@dataclass(eq=False)
class _Request:
    item: BatchItem
    enqueued: float
    state: int = _WAITING
    value: Any = None
    error: BaseException | None = None


@dataclass(eq=False)
class _Batch:
    key: Hashable
    max_size: int
    due: float
    requests: list[_Request] = field(default_factory=list)
    size: int = 0
    started: bool = False

    @property
    def leader(self) -> _Request | None:
        return self.requests[0] if self.requests else None


@dataclass(eq=False)
class _Queue:
    """The batches of one key waiting to run, oldest first, and whether one is running."""

    batches: deque[_Batch] = field(default_factory=deque)
    running: bool = False


class Batcher:
    """Joins concurrent prepared calls into batches according to a :class:`BatchPolicy`."""

    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy
        self._cond = threading.Condition(threading.Lock())
        self._queues: dict[Hashable, _Queue] = {}
        self._observers: list[Callable[[BatchReport], None]] = []

    @classmethod
    def from_config(cls, config: Config) -> Batcher | None:
        """A batcher for ``config``'s policy, or None when batching is off."""
        policy = policy_from_config(config)
        return cls(policy) if policy.enabled else None

    def add_observer(self, observer: Callable[[BatchReport], None]) -> None:
        """Call ``observer`` after each batch (it must be cheap and must not raise)."""
        self._observers.append(observer)

    # Entry point ---------------------------------------------------------------------------
    def call(
        self,
        session: Session,
        backend: Backend,
        op: Op,
        args: Sequence[Any],
        alone: Callable[[], Any],
    ) -> Any:
        """Run ``op`` for ``session``: in a batch when ``backend`` can batch it, else
        ``alone()`` (the backend's ordinary method)."""
        if op not in backend.batch_operations:
            return alone()
        item = backend.prepare_batch(session, op, tuple(args))  # bad input fails here, alone
        if item is None:
            return alone()
        settings = self.policy.for_model(item.model)
        if not settings.enabled or item.size > settings.max_size:
            return self._run_one(backend, op, item)
        return self._join(backend, op, item, settings)

    @staticmethod
    def _run_one(backend: Backend, op: Op, item: BatchItem) -> Any:
        results = backend.run_batch(op, [item])
        _check_count(backend, op, results, 1)
        return results[0]

    # Queueing ------------------------------------------------------------------------------
    def _join(self, backend: Backend, op: Op, item: BatchItem, settings: BatchSettings) -> Any:
        key = (backend.name, op, item.key)
        deadline = current_deadline()
        now = time.monotonic()
        request = _Request(item, now)
        cond = self._cond
        with cond:
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue()
            batch = queue.batches[-1] if queue.batches else None
            if batch is None or batch.size + item.size > batch.max_size:
                batch = _Batch(key, settings.max_size, now + settings.max_delay)
                queue.batches.append(batch)
            batch.requests.append(request)
            batch.size += item.size
            if batch.size >= batch.max_size:
                cond.notify_all()  # its leader may start it now
            while request.state == _WAITING and not batch.started:
                now = time.monotonic()
                if (
                    batch.leader is request
                    and not queue.running
                    and queue.batches[0] is batch
                    and (batch.size >= batch.max_size or now >= batch.due)
                ):
                    batch.started = True
                    queue.running = True
                    queue.batches.popleft()
                    break
                if deadline is not None and now >= deadline:
                    self._leave(key, queue, batch, request)
                    raise DeadlineExceeded(
                        f"{op.spec.method}: the call's deadline passed while it waited "
                        f"{now - request.enqueued:.3f} s for a batch"
                    )
                wake = deadline
                if batch.leader is request and not queue.running and queue.batches[0] is batch:
                    wake = batch.due if wake is None else min(wake, batch.due)
                cond.wait(None if wake is None else max(wake - now, 0.0))
            leader = batch.started and request.state == _WAITING and batch.leader is request
            while not leader and request.state == _WAITING:
                cond.wait()
        if leader:
            self._execute(backend, op, key, queue, batch)
        if request.state == _ALONE:
            return self._run_one(backend, op, item)
        if request.state == _FAILED:
            assert request.error is not None
            raise request.error
        return request.value

    def _leave(self, key: Hashable, queue: _Queue, batch: _Batch, request: _Request) -> None:
        """Take a waiting ``request`` out of its batch (the caller holds the lock)."""
        batch.requests.remove(request)
        batch.size -= request.item.size
        if not batch.requests:
            queue.batches.remove(batch)
        if not queue.batches and not queue.running:
            self._queues.pop(key, None)
        self._cond.notify_all()

    # Running -------------------------------------------------------------------------------
    def _execute(
        self, backend: Backend, op: Op, key: Hashable, queue: _Queue, batch: _Batch
    ) -> None:
        requests = list(batch.requests)
        started = time.monotonic()
        states: list[tuple[int, Any, BaseException | None]]
        try:
            try:
                results = backend.run_batch(op, [r.item for r in requests])
                _check_count(backend, op, results, len(requests))
            except Exception as exc:
                if len(requests) == 1:
                    states = [(_FAILED, None, exc)]
                else:
                    logger.info(
                        "%s: a batch of %d calls failed (%s: %s); running each alone",
                        op.spec.method,
                        len(requests),
                        type(exc).__name__,
                        exc,
                    )
                    states = [(_ALONE, None, None)] * len(requests)
            else:
                states = [(_DONE, value, None) for value in results]
        except BaseException as exc:  # KeyboardInterrupt and the like: nobody waits forever
            states = [(_FAILED, None, exc)] * len(requests)
            raise
        finally:
            with self._cond:
                for request, (state, value, error) in zip(requests, states, strict=True):
                    request.value, request.error, request.state = value, error, state
                queue.running = False
                if not queue.batches:
                    self._queues.pop(key, None)
                self._cond.notify_all()
        report = BatchReport(
            op.value,
            sum(r.item.size for r in requests),
            len(requests),
            tuple(started - r.enqueued for r in requests),
        )
        for observer in self._observers:
            try:
                observer(report)
            except Exception:
                logger.exception("a batch observer failed")


def _check_count(backend: Backend, op: Op, results: Any, expected: int) -> None:
    if not isinstance(results, (list, tuple)) or len(results) != expected:
        got = f"{len(results)} results" if isinstance(results, (list, tuple)) else repr(results)
        raise BackendError(
            f"{op.spec.method}: backend {backend.name!r}: run_batch returned {got} for "
            f"{expected} calls (expected one result per call, in order)"
        )


# One batcher per process and settings ---------------------------------------------------------
_shared: dict[tuple[Any, ...], Batcher | None] = {}
_shared_lock = threading.Lock()


def batcher_for(config: Config, environ: Mapping[str, str] | None = None) -> Batcher | None:
    """The process's batcher for ``config``'s settings (None when batching is off): local
    sessions with the same settings share it, so that their calls batch together."""
    env = os.environ if environ is None else environ
    key = tuple(
        config.extra.get(k) or env.get(v) or ""
        for k, v in ((SIZE_KEY, SIZE_ENV), (DELAY_KEY, DELAY_ENV), (CONFIG_KEY, CONFIG_ENV))
    )
    with _shared_lock:
        if key not in _shared:
            _shared[key] = Batcher.from_config(config) if any(key) else None
        return _shared[key]


# Metrics --------------------------------------------------------------------------------------
#: Upper bounds of the batch size histogram (items along the batch dimension).
SIZE_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, float("inf"))
#: Upper bounds of the queue time histogram, in seconds.
QUEUE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    float("inf"),
)  # fmt: skip


def report_to(batcher: Batcher, telemetry: Any) -> None:
    """Record each batch in ``telemetry`` (the agent's call record: ``histogram`` and
    ``observe``): ``vaccel_agent_batch_size{operation}`` per batch and
    ``vaccel_agent_batch_queue_seconds{operation}`` per call."""
    size, queue = "vaccel_agent_batch_size", "vaccel_agent_batch_queue_seconds"
    telemetry.histogram(size, ("operation",), "Items per executed batch", SIZE_BUCKETS)
    telemetry.histogram(
        queue, ("operation",), "Seconds a call waited for its batch to start", QUEUE_BUCKETS
    )

    def observe(report: BatchReport) -> None:
        labels = (report.operation,)
        telemetry.observe(size, labels, float(report.size))
        for seconds in report.queue_seconds:
            telemetry.observe(queue, labels, seconds)

    batcher.add_observer(observe)


# Command line ---------------------------------------------------------------------------------
def add_arguments(parser: Any) -> None:
    """The agent's batching flags (an ``argparse`` parser); values go to ``Config.extra``
    through :func:`from_arguments` and are checked by :func:`policy_from_config`."""
    group = parser.add_argument_group(
        "batching", "join concurrent calls of one model into batches (see docs/batching.md)"
    )
    group.add_argument(
        "--batch-max-size",
        metavar="N",
        help=f"most items in one batch, 2 to {MAX_BATCH_SIZE}; 0 or 1: off (default: off; "
        f"also {SIZE_ENV}, --vaccel-config {SIZE_KEY}=N)",
    )
    group.add_argument(
        "--batch-max-delay-us",
        metavar="US",
        help=f"most microseconds a call waits for others to join its batch (default "
        f"{DEFAULT_DELAY_US}; also {DELAY_ENV})",
    )
    group.add_argument(
        "--batch-config",
        metavar="FILE",
        help="TOML file with per-model settings ([models.<sha256 of the model file>] or "
        f"[models.default]: max_size, max_delay_us; also {CONFIG_ENV})",
    )


def from_arguments(args: Any) -> dict[str, str]:
    """The batching flags given, as ``Config.extra`` keys."""
    given = {
        SIZE_KEY: args.batch_max_size,
        DELAY_KEY: args.batch_max_delay_us,
        CONFIG_KEY: args.batch_config,
    }
    return {key: str(value) for key, value in given.items() if value is not None}
