"""docs/metrics.md lists exactly the metrics a real agent serves, with their types and labels."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.remote.conftest import (
    AgentProcess,
    RawClient,
    missing_remote_extra,
    start_agent,
)
from vaccel_core.transport import CallError

from .scrape import metrics_url, scrape

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(missing_remote_extra() is not None, reason=str(missing_remote_extra())),
]

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
ROW = re.compile(
    r"^\| `(?P<name>(?:vaccel_agent|process)_\w+)` \| (?P<type>\w+) \|(?P<labels>[^|]*)\|"
)


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (type, labels) from the doc's tables."""
    rows: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in DOC.read_text().splitlines():
        match = ROW.match(line)
        if match:
            name = match.group("name")
            assert name not in rows, f"{name} is listed twice in docs/metrics.md"
            labels = tuple(re.findall(r"`(\w+)`", match.group("labels")))
            rows[name] = (match.group("type"), labels)
    return rows


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    """An agent with metrics and batching on (so that its batch histograms are registered)."""
    handle = start_agent(
        [f"unix://{tmp_path / 'agent.sock'}"],
        args=["--metrics-address", "tcp://127.0.0.1:0", "--batch-max-size", "4"],
    )
    yield handle
    assert handle.stop() == 0, handle.log


def test_the_doc_lists_exactly_the_served_metrics(agent: AgentProcess) -> None:
    raw = RawClient(agent.addresses[0])
    try:  # a call of each kind, so that every labelled family has a sample
        session = raw.create_session()
        raw.noop(session)
        with pytest.raises(CallError):
            raw.noop(session + 1)
        got = scrape(metrics_url(agent))
    finally:
        raw.close()
    docs = documented()
    assert set(got.types) == set(docs), (
        f"served but not documented: {sorted(set(got.types) - set(docs))}; "
        f"documented but not served: {sorted(set(docs) - set(got.types))}"
    )
    for name, kind in got.types.items():
        assert docs[name][0] == kind, f"{name}: documented as {docs[name][0]}, served as {kind}"
    labelled = 0
    for name, (_, labels) in docs.items():
        suffix = "_count" if docs[name][0] == "histogram" else ""
        for sample_labels in got.samples.get(name + suffix, {}):
            assert tuple(sorted(k for k, _ in sample_labels)) == tuple(sorted(labels)), name
            labelled += 1
    assert labelled >= 10, "the calls above left samples of most families"


def test_the_doc_gives_the_collectors_labels_and_the_batch_histograms() -> None:
    """Families without samples in a scrape show no labels: checked at their source."""
    from vaccel_agent.metrics import METRICS

    docs = documented()
    for name, (kind, labels, _help) in METRICS.items():
        assert docs[name] == (kind, labels), name
    from vaccel_agent.service import AgentService
    from vaccel_core import Config
    from vaccel_core.plugins import get_registry

    svc = AgentService(Config(plugins=["noop"], extra={"batch_max_size": "4"}), get_registry())
    try:
        histograms = svc.telemetry.histograms()
    finally:
        svc.close()
    assert histograms, "batching on registers its histograms"
    for name, hist in histograms.items():
        assert docs[name] == ("histogram", hist.label_names), name
