"""``rpc-upstream`` (our guest in upstream mode) over several REAL agents: our agent serves
upstream's AgentService beside its own, so the same placement is checked on that protocol:
sessions spread and stay, resources go to their session's agent, a killed agent fails only
its own sessions."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.catalog_samples import PNG_1PX
from tests.fleet.conftest import guest_registry, status
from tests.remote.conftest import AgentProcess, start_agent
from vaccel_core import Config, PluginType, Resource, ResourceType, Session
from vaccel_core.errors import RemoteError, SessionError
from vaccel_core.plugins import PluginRegistry

pytest.importorskip("google.protobuf", reason="the upstream schema needs protobuf (remote extra)")


def upstream_guest(spec: str, registry: PluginRegistry) -> Session:
    return Session(
        PluginType.REMOTE,
        config=Config(plugins=["rpc-upstream"], rpc_address=spec),
        registry=registry,
    )


def placed_on(session: Session) -> str:
    backend: Any = session.backends[0]
    return str(backend._remotes[session.id].address)


def test_upstream_mode_places_sessions_and_resources_per_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agents: list[AgentProcess] = []
    try:
        for i in range(2):
            agents.append(start_agent([f"unix://{tmp_path}/agent{i}.sock"]))
        spec = ",".join(a.address for a in agents)
        with guest_registry(monkeypatch) as registry:
            sessions = [upstream_guest(spec, registry) for _ in range(4)]
            try:
                where = {s.id: placed_on(s) for s in sessions}
                assert Counter(where.values()) == {a.address: 2 for a in agents}
                assert [status(a).sessions for a in agents] == [2, 2]
                first = next(s for s in sessions if where[s.id] == agents[0].address)
                Resource.from_buffer(b"weights", ResourceType.MODEL).register(first)
                assert [status(a).resources for a in agents] == [1, 0]
                agents[1].kill()
                for session in sessions:
                    if where[session.id] == agents[1].address:
                        # the first call may be the one that finds the connection gone
                        with pytest.raises((RemoteError, SessionError)):
                            session.classify(PNG_1PX)
                        with pytest.raises(SessionError, match=re.escape(agents[1].address)):
                            session.classify(PNG_1PX)
                    else:
                        session.classify(PNG_1PX)
                later = upstream_guest(spec, registry)
                sessions.append(later)
                assert placed_on(later) == agents[0].address
            finally:
                for session in sessions:
                    session.release()
    finally:
        for agent in agents:
            agent.stop()
