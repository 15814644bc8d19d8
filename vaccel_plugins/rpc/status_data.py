"""What ``vaccel status`` shows, as plain data: an agent's StatusResponse turned into the
snapshot that ``--once --json`` prints (its keys are documented in docs/status.md and stable),
and the rates and latency quantiles of the calls made between two snapshots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: The quantiles the view shows (p50, p99).
QUANTILES = (0.5, 0.99)


def quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """The ``q`` quantile (0..1) of calls counted in latency buckets, or None when there are
    none. ``counts[i]`` calls took at most ``bounds[i]`` seconds and more than
    ``bounds[i - 1]`` (0 before the first); the last bound may be +Inf.

    As Prometheus' ``histogram_quantile``: linear within the bucket that holds the rank; a
    rank in the +Inf bucket gives the largest finite bound (all that is known)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile: expected q between 0 and 1, got {q}")
    if len(bounds) != len(counts):
        raise ValueError(
            f"quantile: expected one count per bucket bound ({len(bounds)}), got {len(counts)}"
        )
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    below = 0
    for i, count in enumerate(counts):
        if count > 0 and below + count >= rank:
            lower = bounds[i - 1] if i > 0 else 0.0
            upper = bounds[i]
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * max(rank - below, 0.0) / count
        below += count
    finite = [b for b in bounds if not math.isinf(b)]
    return finite[-1] if finite else None


def snapshot(reply: Any, address: str) -> dict[str, Any]:
    """A StatusResponse as plain data with stable keys (the ``--once --json`` output)."""
    bounds = list(reply.bucket_bounds)
    finite = [b for b in bounds if not math.isinf(b)]
    calls = []
    for c in reply.calls:
        buckets = [int(n) for n in c.buckets]
        entry: dict[str, Any] = {
            "method": c.method,
            "operation": c.operation,
            "backend": c.backend,
            "calls": int(c.calls),
            "errors": int(c.errors),
            "seconds": float(c.seconds),
            "buckets": buckets,
        }
        for q in QUANTILES:
            value = quantile(q, bounds, buckets) if len(buckets) == len(bounds) else None
            entry[f"p{round(q * 100)}_seconds"] = value
        calls.append(entry)
    clients = [
        {
            "id": c.id,
            "description": c.description,
            "transport": c.transport,
            "sessions": int(c.sessions),
            "calls": int(c.calls),
            "errors": int(c.errors),
            "in_flight": int(c.in_flight),
            "connected_at": float(c.connected_at),
            "caller": bool(c.caller),
        }
        for c in reply.clients
    ]
    return {
        "address": address,
        "view": "operator" if reply.view_all else "client",
        "version": reply.version,
        "uptime_seconds": float(reply.uptime),
        "backends": list(reply.backends),
        "sessions": int(reply.sessions),
        "resources": int(reply.resources),
        "blobs": int(reply.blobs),
        "blob_bytes": int(reply.blob_bytes),
        "clients_connected": int(reply.peers),
        "calls_in_flight": sum(c["in_flight"] for c in clients),
        "blob_uploads": int(reply.blob_uploads),
        "blob_hits": int(reply.blob_hits),
        "sessions_released": int(reply.sessions_released),
        "session_ttl_seconds": float(reply.session_ttl),
        "bucket_bounds_seconds": finite,
        "calls": calls,
        "clients": clients,
        "rejections": dict(sorted((k, int(v)) for k, v in reply.rejections.items())),
    }


@dataclass
class CallRate:
    """The calls of one (method, operation, backend) between two snapshots."""

    method: str
    operation: str
    backend: str
    calls: int  # since the agent started
    errors: int  # since the agent started
    per_second: float | None  # None: no earlier snapshot to compare with
    errors_per_second: float | None
    p50: float | None  # seconds, over the calls between the snapshots (None: no calls)
    p99: float | None


def _key(entry: dict[str, Any]) -> tuple[str, str, str]:
    return (entry["method"], entry["operation"], entry["backend"])


def _comparable(
    previous: dict[str, Any] | None, current: dict[str, Any]
) -> dict[tuple[str, str, str], dict[str, Any]] | None:
    """The earlier snapshot's calls by key, when ``current`` can be compared with it: the
    agent's uptime went on and no counter went back (else another agent answers there now)."""
    if previous is None or current["uptime_seconds"] <= previous["uptime_seconds"]:
        return None
    before = {_key(e): e for e in previous["calls"]}
    for entry in current["calls"]:
        old = before.get(_key(entry))
        if old is not None and (
            old["calls"] > entry["calls"] or len(old["buckets"]) != len(entry["buckets"])
        ):
            return None
    return before


def call_rates(previous: dict[str, Any] | None, current: dict[str, Any]) -> list[CallRate]:
    """Calls per second and latency quantiles between ``previous`` and ``current`` (by the
    agent's uptime, so the time the polls took does not count). Without a usable earlier
    snapshot (the first poll, or the agent restarted since) the rates are None and the
    quantiles cover every call since the agent started."""
    bounds = [*current["bucket_bounds_seconds"], math.inf]
    before = _comparable(previous, current)
    elapsed = current["uptime_seconds"] - previous["uptime_seconds"] if previous else 0.0
    rows = []
    for entry in current["calls"]:
        calls, errors, buckets = entry["calls"], entry["errors"], entry["buckets"]
        rate = errors_rate = None
        if before is not None:
            old = before.get(_key(entry))
            if old is not None:
                calls -= old["calls"]
                errors -= old["errors"]
                buckets = [n - m for n, m in zip(buckets, old["buckets"], strict=True)]
            rate, errors_rate = calls / elapsed, errors / elapsed
        usable = len(buckets) == len(bounds)
        p50, p99 = (quantile(q, bounds, buckets) if usable else None for q in QUANTILES)
        rows.append(
            CallRate(
                entry["method"],
                entry["operation"],
                entry["backend"],
                entry["calls"],
                entry["errors"],
                rate,
                errors_rate,
                p50,
                p99,
            )
        )
    return rows
