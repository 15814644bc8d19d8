"""The agent's Prometheus endpoint: ``vaccel-agent --metrics-address tcp://HOST:PORT``.

Nothing here runs on the call path: a prometheus-client collector on a private
CollectorRegistry turns the service's call record (:mod:`vaccel_agent.telemetry`) and counts
into metrics when Prometheus scrapes. The names are listed in :data:`METRICS` and
documented in docs/metrics.md.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from vaccel_core import __version__
from vaccel_core.errors import InvalidArgumentError, VaccelError
from vaccel_core.log import logger as _vaccel_logger

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from .service import AgentService

logger = _vaccel_logger.getChild("agent.metrics")

#: The option that sets the address, named in every error about it.
FLAG = "--metrics-address"
#: The ``--vaccel-config`` key (and ``Config.extra`` key) of the same setting.
CONFIG_KEY = "metrics_address"

#: Every metric the agent's collector serves: name (as exposed, without sample suffixes such
#: as ``_bucket``) -> (type, labels, help). Extra histograms registered on the telemetry
#: (``vaccel_agent_batch_*``) and prometheus-client's ``process_*`` metrics come on top.
METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "vaccel_agent_calls_total": (
        "counter",
        ("method", "operation", "backend", "transport", "status"),
        "Calls served, by agent method, operation (Run), backend (Run), transport and status.",
    ),
    "vaccel_agent_call_duration_seconds": (
        "histogram",
        ("method", "operation", "backend"),
        "Seconds from a call's arrival at the agent's service to its reply.",
    ),
    "vaccel_agent_received_bytes_total": (
        "counter",
        ("transport",),
        "Request bytes received by the agent's service (messages and their buffers).",
    ),
    "vaccel_agent_sent_bytes_total": (
        "counter",
        ("transport",),
        "Reply bytes sent by the agent's service (messages and their buffers).",
    ),
    "vaccel_agent_sessions": ("gauge", (), "Sessions held, all clients together."),
    "vaccel_agent_resources": ("gauge", (), "Resources registered, all sessions together."),
    "vaccel_agent_clients": ("gauge", (), "Clients connected."),
    "vaccel_agent_blobs": ("gauge", (), "Blobs held (once per client holding one)."),
    "vaccel_agent_blob_bytes": (
        "gauge",
        (),
        "Bytes of blobs held plus bytes announced by uploads in progress.",
    ),
    "vaccel_agent_calls_in_flight": ("gauge", (), "Calls being served now."),
    "vaccel_agent_rejections_total": (
        "counter",
        ("limit",),
        "Calls refused by a limit, by the limit's name (see docs/security.md).",
    ),
    "vaccel_agent_backend_available": (
        "gauge",
        ("backend",),
        "1 when a registered backend can run on this host, else 0.",
    ),
    "vaccel_agent_backend_provider_info": (
        "gauge",
        ("backend", "provider"),
        "1 per execution provider a started backend runs on (e.g. CPUExecutionProvider).",
    ),
    "vaccel_agent_build_info": ("gauge", ("version",), "1, labelled with the agent's version."),
}


def _family(name: str, **kwargs: Any) -> Any:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    kind, labels, help_text = METRICS[name]
    if kind == "counter":
        return CounterMetricFamily(name.removesuffix("_total"), help_text, labels=labels)
    if kind == "histogram":
        return HistogramMetricFamily(name, help_text, labels=labels)
    if labels:
        return GaugeMetricFamily(name, help_text, labels=labels)
    return GaugeMetricFamily(name, help_text, **kwargs)


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    """Prometheus buckets (``le`` strings, cumulative counts) from per-bucket counts."""
    from prometheus_client.utils import floatToGoString

    out, total = [], 0
    for bound, count in zip(bounds, counts, strict=True):
        total += count
        out.append((floatToGoString(bound), float(total)))
    return out


def backend_providers(backend: Any) -> list[str]:
    """The execution providers a started backend runs on: its optional ``providers_in_use()``
    (see docs/plugins.md), or none when it has no such method or it fails."""
    method = getattr(backend, "providers_in_use", None)
    if not callable(method):
        return []
    try:
        return [str(p) for p in method()]
    except Exception as exc:  # a scrape must not fail because one backend cannot answer
        logger.debug("backend %s: providers_in_use failed: %s", backend.name, exc)
        return []


class AgentCollector:
    """A prometheus-client collector for one agent service (reads it at scrape time)."""

    def __init__(self, service: AgentService) -> None:
        self.service = service

    def collect(self) -> Iterator[Any]:
        from .telemetry import BUCKETS

        service, telemetry = self.service, self.service.telemetry

        calls = _family("vaccel_agent_calls_total")
        for labels, count in sorted(telemetry.outcomes().items()):
            calls.add_metric(labels, count)
        yield calls

        durations = _family("vaccel_agent_call_duration_seconds")
        for key, stats in sorted(telemetry.calls().items()):
            durations.add_metric(key, _cumulative(BUCKETS, stats.buckets), stats.seconds)
        yield durations

        received = _family("vaccel_agent_received_bytes_total")
        sent = _family("vaccel_agent_sent_bytes_total")
        for transport, (rx, tx) in sorted(telemetry.traffic().items()):
            received.add_metric((transport,), rx)
            sent.add_metric((transport,), tx)
        yield received
        yield sent

        counts = service.counts()
        for name, value in (
            ("vaccel_agent_sessions", counts["sessions"]),
            ("vaccel_agent_resources", counts["resources"]),
            ("vaccel_agent_clients", counts["peers"]),
            ("vaccel_agent_blobs", counts["blobs"]),
            ("vaccel_agent_blob_bytes", counts["blob_bytes"]),
            ("vaccel_agent_calls_in_flight", telemetry.in_flight()),
        ):
            yield _family(name, value=value)

        rejections = _family("vaccel_agent_rejections_total")
        for limit, count in sorted(telemetry.rejections().items()):
            rejections.add_metric((limit,), count)
        yield rejections

        available = _family("vaccel_agent_backend_available")
        providers = _family("vaccel_agent_backend_provider_info")
        for name, info in sorted(service.registry.backends.items()):
            available.add_metric((name,), 1 if info.available else 0)
            if info.instance is not None:  # started: never start a backend to answer a scrape
                for provider in backend_providers(info.instance):
                    providers.add_metric((name, provider), 1)
        yield available
        yield providers

        build = _family("vaccel_agent_build_info")
        build.add_metric((__version__,), 1)
        yield build

        yield from self._extra_histograms()

    def _extra_histograms(self) -> Iterator[Any]:
        """The histograms other parts registered on the telemetry (batching's)."""
        from prometheus_client.core import HistogramMetricFamily

        for name, hist in sorted(self.service.telemetry.histograms().items()):
            family = HistogramMetricFamily(name, hist.help, labels=hist.label_names)
            for labels, series in sorted(hist.series.items()):
                family.add_metric(labels, _cumulative(hist.buckets, series.buckets), series.sum)
            yield family


def metrics_registry(service: AgentService) -> CollectorRegistry:
    """A private registry with the agent's metrics and this process's (``process_*``)."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(service))
    ProcessCollector(registry=registry)
    return registry


def parse_metrics_address(text: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` (HOST an IP address or ``localhost``, ``[v6]`` in brackets; PORT
    0 for any free one) as (host, port), or InvalidArgumentError naming :data:`FLAG`."""
    expected = f"{FLAG}: expected tcp://HOST:PORT (e.g. tcp://127.0.0.1:9464), got {text!r}"
    scheme, sep, rest = text.partition("://")
    if scheme != "tcp" or not sep:
        raise InvalidArgumentError(f"{expected}: the scheme must be tcp")
    host, colon, port_text = rest.rpartition(":")
    if not colon:
        raise InvalidArgumentError(f"{expected}: no :PORT")
    if not host:
        raise InvalidArgumentError(f"{expected}: no HOST")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise InvalidArgumentError(f"{expected}: {host!r} is not an IP address") from None
    if not port_text.isdigit() or int(port_text) > 65535:
        raise InvalidArgumentError(f"{expected}: the port must be 0 to 65535")
    return host, int(port_text)


class MetricsServer:
    """The HTTP endpoint serving one agent's metrics (on its own daemon thread)."""

    def __init__(self, service: AgentService, address: str) -> None:
        host, port = parse_metrics_address(address)
        try:
            from prometheus_client import start_http_server
        except ImportError:
            raise VaccelError(
                f"{FLAG} needs prometheus-client (pip install 'pyvaccel[remote]')"
            ) from None
        try:
            self._httpd, self._thread = start_http_server(
                port, host, registry=metrics_registry(service)
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise VaccelError(f"{FLAG} {address}: cannot listen ({reason})") from None
        bound_host, bound_port = (str(part) for part in self._httpd.server_address[:2])
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        #: Where it listens, with the real port (``tcp://127.0.0.1:0`` gets one).
        self.address = f"tcp://{shown}:{bound_port}"
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        """What Prometheus scrapes."""
        return f"http://{self.address.removeprefix('tcp://')}/metrics"

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
