"""The collector on its own (in process): extra histograms registered on the telemetry are
exported with cumulative buckets, and a backend that cannot name its providers does not
break a scrape."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

from tests.remote.conftest import make_service, missing_remote_extra

pytestmark = pytest.mark.skipif(
    missing_remote_extra() is not None, reason=str(missing_remote_extra())
)


@pytest.fixture
def service() -> Iterator[Any]:
    svc = make_service()
    yield svc
    svc.close()


def _families(service: Any) -> dict[str, Any]:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from vaccel_agent.metrics import metrics_registry

    text = generate_latest(metrics_registry(service)).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_extra_histograms_are_exported_with_cumulative_buckets(service: Any) -> None:
    t = service.telemetry
    t.histogram("vaccel_agent_test_items", ("operation",), "Items.", (1, 4, 16))
    for value in (1, 2, 3, 20):
        t.observe("vaccel_agent_test_items", ("image_classify",), value)
    t.observe("vaccel_agent_test_items", ("noop",), 5)
    family = _families(service)["vaccel_agent_test_items"]
    assert family.type == "histogram"
    assert family.documentation == "Items."
    got = {(s.name, s.labels["operation"], s.labels.get("le")): s.value for s in family.samples}
    assert got == {
        ("vaccel_agent_test_items_bucket", "image_classify", "1.0"): 1,
        ("vaccel_agent_test_items_bucket", "image_classify", "4.0"): 3,
        ("vaccel_agent_test_items_bucket", "image_classify", "16.0"): 3,
        ("vaccel_agent_test_items_bucket", "image_classify", "+Inf"): 4,
        ("vaccel_agent_test_items_count", "image_classify", None): 4,
        ("vaccel_agent_test_items_sum", "image_classify", None): 26,
        ("vaccel_agent_test_items_bucket", "noop", "1.0"): 0,
        ("vaccel_agent_test_items_bucket", "noop", "4.0"): 0,
        ("vaccel_agent_test_items_bucket", "noop", "16.0"): 1,
        ("vaccel_agent_test_items_bucket", "noop", "+Inf"): 1,
        ("vaccel_agent_test_items_count", "noop", None): 1,
        ("vaccel_agent_test_items_sum", "noop", None): 5,
    }


def test_call_durations_fall_in_their_buckets(service: Any) -> None:
    from vaccel_agent.telemetry import BUCKETS

    t = service.telemetry
    call = t.begin("Run", "p", "unix", 1)
    call.operation, call.backend = "noop", "noop"
    t.end(call, "OK", 1)
    family = _families(service)["vaccel_agent_call_duration_seconds"]
    buckets = sorted(
        (float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket")
    )
    assert [b for b, _ in buckets] == list(BUCKETS)
    assert buckets[-1] == (math.inf, 1)
    (seconds,) = [s.value for s in family.samples if s.name.endswith("_sum")]
    first = next(i for i, (_, count) in enumerate(buckets) if count == 1)
    assert all(count == 1 for _, count in buckets[first:]), "cumulative"
    assert seconds <= buckets[first][0], "the call's bucket bounds its duration"
    assert first == 0 or seconds > buckets[first - 1][0]


class _Backend:
    name = "broken"

    def providers_in_use(self) -> list[str]:
        raise RuntimeError("the device went away")


class _Plain:
    name = "plain"


def test_a_backend_that_cannot_name_its_providers_reports_none() -> None:
    from vaccel_agent.metrics import backend_providers

    assert backend_providers(_Backend()) == []
    assert backend_providers(_Plain()) == []
