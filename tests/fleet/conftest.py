"""Fixtures for the fleet tests: several REAL agent processes behind one VACCEL_RPC_ADDRESS,
and guests (sessions of a fresh rpc backend) placed on them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.remote.conftest import AgentProcess, missing_remote_extra, start_agent
from vaccel_core import Config, Session
from vaccel_core.flags import PluginType
from vaccel_core.plugins import PluginRegistry


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    reason = missing_remote_extra()
    if reason is None:
        return
    for item in items:
        if here in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=reason))


@contextlib.contextmanager
def guest_registry(monkeypatch: pytest.MonkeyPatch, **env: str) -> Iterator[PluginRegistry]:
    """A registry of its own (so a fresh rpc backend that reads ``env``), shut down after."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    registry = PluginRegistry()
    registry.load_entrypoints()
    try:
        yield registry
    finally:
        registry.shutdown()


def guest(spec: str, registry: PluginRegistry) -> Session:
    """A remote session of ``registry``'s rpc backend, placed by VACCEL_RPC_ADDRESS=``spec``."""
    return Session(
        PluginType.REMOTE, config=Config(plugins=["rpc"], rpc_address=spec), registry=registry
    )


def placed_on(session: Session) -> str:
    """The agent address the session's remote twin lives on."""
    backend: Any = session.backends[0]
    return str(backend._remotes[session.id].address)


def status(agent: AgentProcess) -> Any:
    """The agent's GetStatus as its operator sees it (every client's counts)."""
    observer = agent.observer()
    try:
        return observer.status()
    finally:
        observer.close()


def run_calls(agent: AgentProcess) -> int:
    """How many Run calls the agent has served (all clients, from its call record)."""
    return sum(int(c.calls) for c in status(agent).calls if c.method == "Run")


def scraped_run_calls(agent: AgentProcess) -> int:
    """The same count from the agent's Prometheus endpoint (``--metrics-address``):
    ``vaccel_agent_calls_total{method="Run"}`` over every other label."""
    from tests.metrics.scrape import metrics_url, scrape

    samples = scrape(metrics_url(agent)).samples.get("vaccel_agent_calls_total", {})
    return int(sum(value for labels, value in samples.items() if ("method", "Run") in labels))


def start_fleet_agent(address: str) -> AgentProcess:
    """An agent (noop backend) at ``address`` with its metrics on a free loopback port."""
    return start_agent([address], args=["--metrics-address", "tcp://127.0.0.1:0"])


@pytest.fixture
def three_agents(tmp_path: Path) -> Iterator[list[AgentProcess]]:
    """Three agents (noop backend) on unix sockets in ``tmp_path``, serving metrics."""
    started: list[AgentProcess] = []
    try:
        for i in range(3):
            started.append(start_fleet_agent(f"unix://{tmp_path}/agent{i}.sock"))
        yield started
    finally:
        for agent in started:
            agent.stop()


def spec_of(agents: list[AgentProcess]) -> str:
    return ",".join(a.address for a in agents)
