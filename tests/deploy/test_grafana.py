"""deploy/grafana/vaccel-agent.json: a dashboard Grafana can import, built only on metrics the
agent really serves (scraped from a real agent with metrics and batching on)."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "vaccel-agent.json"
#: What an operator must see (issue 13): each of these is used by at least one panel.
REQUIRED = {
    "vaccel_agent_calls_total",  # request rate by operation, errors by status
    "vaccel_agent_call_duration_seconds_bucket",  # latency quantiles per operation
    "vaccel_agent_sessions",
    "vaccel_agent_clients",
    "vaccel_agent_rejections_total",
    "vaccel_agent_received_bytes_total",
    "vaccel_agent_sent_bytes_total",
    "process_resident_memory_bytes",
    "vaccel_agent_batch_size_bucket",
    "vaccel_agent_batch_queue_seconds_bucket",
}
#: Names in PromQL that are not metrics.
PROMQL_WORDS = {"by", "on", "and", "or", "unless", "without", "ignoring", "group_left", "le"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too; rows themselves hold no query."""
    found = []
    for panel in dashboard["panels"]:
        found += panel.get("panels", []) if panel["type"] == "row" else [panel]
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    bare = re.sub(r'"[^"]*"', '""', expr)  # label values
    bare = re.sub(r"\b(by|on|without|ignoring)\s*\([^)]*\)", " ", bare)  # label lists
    bare = re.sub(r"\{[^}]*\}", "{}", bare)
    bare = re.sub(r"\[[^\]]*\]", "[]", bare)
    names = set()
    for match in re.finditer(r"(?<![\w$])([a-zA-Z_:][\w:]*)\b(\s*\()?", bare):
        if match[2] is None and match[1] not in PROMQL_WORDS:  # not a function call
            names.add(match[1])
    return names


def used_metrics(dashboard: dict[str, Any]) -> set[str]:
    """Metrics of every query, the instance variable's included."""
    names = {n for p in panels(dashboard) for t in p["targets"] for n in metric_names(t["expr"])}
    for variable in dashboard["templating"]["list"]:
        names |= set(re.findall(r"label_values\((\w+),", variable.get("definition", "")))
    return names


def test_metric_names_are_found_in_expressions():
    expr = (
        "histogram_quantile(0.99, sum by (le, method) (rate(vaccel_agent_call_duration_seconds"
        '_bucket{instance=~"$instance",method="Run"}[$__rate_interval]))) / '
        "process_resident_memory_bytes and on (instance) vaccel_agent_build_info"
    )
    assert metric_names(expr) == {
        "vaccel_agent_call_duration_seconds_bucket",
        "process_resident_memory_bytes",
        "vaccel_agent_build_info",
    }


def test_dashboard_is_importable(dashboard: dict[str, Any]):
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["type"] == "query" and instance["includeAll"] and instance["multi"]
    assert instance["datasource"]["uid"] == "${datasource}"
    assert re.fullmatch(r"label_values\(vaccel_agent_\w+, instance\)", instance["definition"])
    ids = [p["id"] for p in dashboard["panels"]] + [
        p["id"] for r in dashboard["panels"] for p in r.get("panels", [])
    ]
    assert len(ids) == len(set(ids)), "panel ids repeat"


def test_every_panel_queries_the_chosen_agents(dashboard: dict[str, Any]):
    assert panels(dashboard)
    for panel in panels(dashboard):
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert metric_names(target["expr"]), f"{panel['title']}: {target['expr']}"
            assert 'instance=~"$instance"' in target["expr"], f"{panel['title']}: not filtered"
    refs = [(p["title"], t["refId"]) for p in panels(dashboard) for t in p["targets"]]
    assert len(refs) == len(set(refs)), "a refId repeats within a panel"


def test_panels_do_not_overlap(dashboard: dict[str, Any]):
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_dashboard_shows_what_operators_need(dashboard: dict[str, Any]):
    assert used_metrics(dashboard) >= REQUIRED
    exprs = " ".join(t["expr"] for p in panels(dashboard) for t in p["targets"])
    assert "histogram_quantile(0.99, sum by (le, method, operation)" in exprs
    assert "sum by (status)" in exprs and "sum by (limit)" in exprs


# The metrics a real agent serves ---------------------------------------------------------------
@pytest.fixture(scope="module")
def served() -> Iterator[set[str]]:
    """Sample names a real agent serves, with metrics and batching on, after a few calls."""
    pytest.importorskip("grpc", reason="the agent needs the remote extra")
    parser = pytest.importorskip("prometheus_client.parser", reason="the remote extra")
    from tests.remote.conftest import clean_env, start_agent

    folder = Path(tempfile.mkdtemp(prefix="vg-"))
    address = f"unix://{folder}/agent.sock"
    agent = start_agent(
        [address],
        args=["--metrics-address", "tcp://127.0.0.1:0", "--batch-max-size", "4"],
    )
    try:
        url = re.search(r"Serving metrics on '([^']+)'", agent.wait_for_log("Serving metrics on"))
        assert url is not None
        env = {"VACCEL_PLUGINS": "rpc", "VACCEL_RPC_ADDRESS": address}
        for _ in range(2):
            out = subprocess.run(
                [sys.executable, "-m", "vaccel_core.cli", "noop", "--remote"],
                capture_output=True,
                text=True,
                timeout=60,
                env=clean_env(env),
            )
            assert out.returncode == 0, out.stderr
        with urllib.request.urlopen(url[1], timeout=10) as reply:
            text = reply.read().decode()
    finally:
        agent.stop()
    names: set[str] = set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    for family in parser.text_string_to_metric_families(text):
        names |= {family.name + s for s in suffixes.get(family.type, [""])}
        names |= {sample.name for sample in family.samples}
    yield names


def test_dashboard_uses_only_metrics_the_agent_serves(dashboard: dict[str, Any], served: set[str]):
    assert {"vaccel_agent_batch_size_bucket", "vaccel_agent_batch_queue_seconds_bucket"} <= served
    unknown = used_metrics(dashboard) - served
    assert not unknown, f"the dashboard reads metrics no agent serves: {sorted(unknown)}"


def test_a_misspelt_metric_is_caught(dashboard: dict[str, Any], served: set[str]):
    broken = copy.deepcopy(dashboard)
    target = panels(broken)[0]["targets"][0]
    target["expr"] = target["expr"].replace("vaccel_agent_", "vaccel_agnet_", 1)
    assert used_metrics(broken) - served
