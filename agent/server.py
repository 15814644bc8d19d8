"""The embeddable agent: serve the agent service on one or more addresses at once.

Used by ``vaccel-agent`` and by runtimes that host the agent in their own process (Kata's
"integrated" mode)::

    with Agent(["unix:///run/vaccel.sock", "tcp://127.0.0.1:0"]) as agent:
        print(agent.bound_addresses)
        agent.wait()
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from vaccel_core.config import Config, get_config
from vaccel_core.dispatch import candidate_infos
from vaccel_core.errors import InvalidArgumentError
from vaccel_core.log import ensure_logging
from vaccel_core.plugins import get_registry
from vaccel_core.transport import Address, Listener, TransportOptions

from .limits import BY_NAME, LIMITS, Limits, parse_size
from .metrics import CONFIG_KEY as METRICS_CONFIG_KEY
from .metrics import MetricsServer
from .service import AgentService, logger
from .telemetry import TransportHandler

#: The limits transports enforce, each a TransportOptions field of the same name.
TRANSPORT_LIMITS = tuple(spec for spec in LIMITS if spec.transport)

#: ``--vaccel-config`` keys of earlier releases, by the limit they set.
_CONFIG_ALIASES = {"max_blob_size": "max_blob_bytes", "blob_quota": "blob_quota_bytes"}


def limits_from_config(config: Config, base: Limits | None = None) -> Limits:
    """``base`` (default: the defaults) with the limits named in ``config.extra`` (keys are
    limit names such as ``max_sessions``, or the older ``max_blob_size`` / ``blob_quota``)."""
    values = {}
    for key, value in config.extra.items():
        name = _CONFIG_ALIASES.get(key, key)
        if name in BY_NAME:
            values[name] = value
    return (base or Limits()).with_values(values)


#: ``--vaccel-config`` keys with these prefixes go to the transports (TransportOptions.extra),
#: e.g. ``virtio_mock_max_memory_bytes=512M``.
TRANSPORT_CONFIG_PREFIXES = ("virtio_mock_",)


def _transport_value(key: str, value: Any) -> Any:
    """A ``--vaccel-config`` string as the number a transport option takes (sizes may have a
    K/M/G/T suffix when the key ends in ``_bytes``)."""
    if not isinstance(value, str):
        return value
    if key.endswith("_bytes"):
        return parse_size(value, key)
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _explicit_limits(options: TransportOptions) -> dict[str, Any]:
    """The limits ``options`` sets to something other than TransportOptions' defaults."""
    defaults = TransportOptions()
    return {
        spec.name: getattr(options, spec.name)
        for spec in TRANSPORT_LIMITS
        if getattr(options, spec.name) != getattr(defaults, spec.name)
    }


def transport_options(
    limits: Limits, options: TransportOptions | None = None, config: Config | None = None
) -> TransportOptions:
    """``options`` (or the defaults) with the connection-level limits of ``limits`` and the
    transport settings of ``config`` (keys starting with :data:`TRANSPORT_CONFIG_PREFIXES`)."""
    options = options or TransportOptions()
    extra = dict(options.extra)
    if config is not None:
        for key, value in config.extra.items():
            if key.startswith(TRANSPORT_CONFIG_PREFIXES) and key not in extra:
                extra[key] = _transport_value(key, value)
    connection_limits = {spec.name: getattr(limits, spec.name) for spec in TRANSPORT_LIMITS}
    return replace(options, extra=extra, **connection_limits)


class Agent:
    """The vAccel agent on ``addresses`` (``unix://``, ``tcp://``, ``vsock://``, ...)."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        config: Config | None = None,
        options: TransportOptions | None = None,
        session_ttl: float | None = None,
        limits: Limits | None = None,
    ) -> None:
        if isinstance(addresses, str):
            addresses = [addresses]
        if not addresses:
            raise InvalidArgumentError("Agent: expected at least one address to listen on")
        self.addresses = [Address.parse(a) for a in addresses]
        self.config = config or get_config()
        if limits is None:
            limits = limits_from_config(self.config)
            if options is not None:  # an embedder's explicit transport settings win
                limits = limits.with_values(_explicit_limits(options))
        self.limits = limits
        self.options = transport_options(self.limits, options, self.config)
        self.session_ttl = session_ttl
        self.service: AgentService | None = None
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._started = False
        self._stopping = False
        self._reaper: threading.Thread | None = None
        #: The Prometheus endpoint (``metrics_address`` in the configuration), once started.
        self.metrics: MetricsServer | None = None

    # Lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Listen on every address; returns when all accept connections (logging
        ``Listening on '<address>'`` for each). On any failure nothing is left listening."""
        with self._lock:
            if self._started:
                raise InvalidArgumentError("Agent.start: the agent is already started")
            self._started = True
        ensure_logging(self.config)
        registry = get_registry()
        candidate_infos(registry, self.config)  # fail now if the backends are unusable
        blob_dir = self.config.extra.get("blob_dir")
        self.service = AgentService(
            self.config,
            registry,
            session_ttl=self.session_ttl,
            blob_root=Path(blob_dir) if blob_dir else None,
            limits=self.limits,
        )
        try:
            for address in self.addresses:
                transport = registry.transport(address.scheme)
                handler = TransportHandler(self.service, address.scheme)
                listener = transport.listen(address, handler, self.options)
                self._listeners.append(listener)
                logger.info("Listening on '%s'", listener.address)
            metrics_address = self.config.extra.get(METRICS_CONFIG_KEY)
            if metrics_address:
                self.metrics = MetricsServer(self.service, str(metrics_address))
                logger.info("Serving metrics on '%s'", self.metrics.url)
        except BaseException:
            self._shutdown(0.0)
            raise
        self._reaper = threading.Thread(
            target=self._reap_loop, name="vaccel-agent-reaper", daemon=True
        )
        self._reaper.start()

    def _reap_loop(self) -> None:
        assert self.service is not None
        period = self.service.reap_period
        while not self._stopped.wait(period):
            try:
                self.service.reap()
            except Exception:
                logger.exception("releasing idle sessions failed")

    @property
    def bound_addresses(self) -> list[str]:
        """The addresses actually listened on (``tcp://127.0.0.1:0`` gets its real port)."""
        return [listener.address for listener in self._listeners]

    def stop(self, grace: float = 5.0) -> None:
        """Report NOT_SERVING, let in-flight calls finish (within ``grace`` seconds), release
        every session and remove socket files. Idempotent."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        self._shutdown(grace)

    def _shutdown(self, grace: float) -> None:
        if self.metrics is not None:
            self.metrics.stop()
        listeners = list(self._listeners)
        for listener in listeners:
            not_serving: Any = getattr(listener, "set_not_serving", None)
            if not_serving is not None:
                not_serving()
        if listeners:
            with ThreadPoolExecutor(max_workers=len(listeners)) as pool:
                for future in [pool.submit(lst.stop, grace) for lst in listeners]:
                    try:
                        future.result()
                    except Exception:
                        logger.exception("stopping a listener failed")
        if self.service is not None:
            self.service.close()
        self._stopped.set()
        logger.info("agent stopped")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the agent is stopped (by :meth:`stop`, from another thread); with a
        ``timeout``, give up after that many seconds. Returns whether it is stopped."""
        return self._stopped.wait(timeout)

    @property
    def stopped(self) -> bool:
        """Whether the agent has stopped."""
        return self._stopped.is_set()

    def __enter__(self) -> Agent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
