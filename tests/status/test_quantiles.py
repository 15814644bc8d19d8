"""Latency quantiles and call rates of ``vaccel status``, on known bucket counts."""

from __future__ import annotations

import math
from typing import Any

import pytest

from vaccel_plugins.rpc.status_data import call_rates, quantile

INF = math.inf
BOUNDS = (0.001, 0.01, 0.1, INF)


def test_quantile_interpolates_within_the_bucket_that_holds_the_rank() -> None:
    # 10 calls under 1 ms, 10 between 1 and 10 ms: the median is the last of the first half.
    assert quantile(0.5, BOUNDS, [10, 10, 0, 0]) == pytest.approx(0.001)
    # rank 15 of 20: halfway through the second bucket.
    assert quantile(0.75, BOUNDS, [10, 10, 0, 0]) == pytest.approx(0.0055)
    # p99 of 100 calls all in (10 ms, 100 ms]: 99% of the way through that bucket.
    assert quantile(0.99, BOUNDS, [0, 0, 100, 0]) == pytest.approx(0.01 + 0.09 * 0.99)
    # the first bucket starts at 0
    assert quantile(0.5, BOUNDS, [4, 0, 0, 0]) == pytest.approx(0.0005)


def test_quantile_in_the_infinite_bucket_is_the_largest_finite_bound() -> None:
    assert quantile(0.99, BOUNDS, [1, 0, 0, 99]) == 0.1
    assert quantile(0.5, BOUNDS, [0, 0, 0, 3]) == 0.1


def test_quantile_of_no_calls_is_none_and_bad_input_is_named() -> None:
    assert quantile(0.5, BOUNDS, [0, 0, 0, 0]) is None
    with pytest.raises(ValueError, match=r"between 0 and 1, got 1\.5"):
        quantile(1.5, BOUNDS, [1, 0, 0, 0])
    with pytest.raises(ValueError, match=r"one count per bucket bound \(4\), got 3"):
        quantile(0.5, BOUNDS, [1, 0, 0])


def _snap(uptime: float, *calls: tuple[str, str, int, int, list[int]]) -> dict[str, Any]:
    return {
        "uptime_seconds": uptime,
        "bucket_bounds_seconds": [b for b in BOUNDS if b != INF],
        "calls": [
            {
                "method": method,
                "operation": op,
                "backend": "noop" if op else "",
                "calls": n,
                "errors": errors,
                "buckets": buckets,
            }
            for method, op, n, errors, buckets in calls
        ],
    }


def test_rates_and_quantiles_come_from_the_deltas_between_two_polls() -> None:
    before = _snap(
        10.0, ("Run", "noop", 100, 1, [100, 0, 0, 0]), ("GetStatus", "", 5, 0, [5, 0, 0, 0])
    )
    # Two seconds later: 40 more noops, all between 10 and 100 ms (slower than before), 4 failed;
    # a new key appeared with 6 calls; GetStatus did nothing.
    after = _snap(
        12.0,
        ("Run", "noop", 140, 5, [100, 0, 40, 0]),
        ("GetStatus", "", 5, 0, [5, 0, 0, 0]),
        ("Run", "sgemm", 6, 0, [0, 6, 0, 0]),
    )
    rows = {(r.method, r.operation): r for r in call_rates(before, after)}
    noop = rows["Run", "noop"]
    assert (noop.calls, noop.errors) == (140, 5), "totals since start"
    assert noop.per_second == pytest.approx(20.0)
    assert noop.errors_per_second == pytest.approx(2.0)
    # The quantiles describe the last interval only: the 100 fast calls before it do not count.
    assert noop.p50 == pytest.approx(0.01 + 0.09 * 0.5)
    assert noop.p99 == pytest.approx(0.01 + 0.09 * 0.99)
    idle = rows["GetStatus", ""]
    assert (idle.per_second, idle.p50, idle.p99) == (0.0, None, None)
    new = rows["Run", "sgemm"]
    assert new.per_second == pytest.approx(3.0)
    assert new.p50 == pytest.approx(0.001 + 0.009 * 0.5)


def test_without_an_earlier_poll_there_is_no_rate_and_quantiles_cover_every_call() -> None:
    only = _snap(5.0, ("Run", "noop", 10, 0, [10, 0, 0, 0]))
    (row,) = call_rates(None, only)
    assert (row.per_second, row.errors_per_second) == (None, None)
    assert row.p50 == pytest.approx(0.0005)


@pytest.mark.parametrize(
    "later",
    [
        _snap(3.0, ("Run", "noop", 50, 0, [50, 0, 0, 0])),  # uptime went back: a new agent
        _snap(20.0, ("Run", "noop", 5, 0, [5, 0, 0, 0])),  # a counter went back: a new agent
    ],
)
def test_an_agent_restarted_between_polls_gives_no_rate_rather_than_a_negative_one(
    later: dict[str, Any],
) -> None:
    before = _snap(10.0, ("Run", "noop", 100, 0, [100, 0, 0, 0]))
    (row,) = call_rates(before, later)
    assert row.per_second is None
    assert row.p50 is not None and row.p50 > 0
