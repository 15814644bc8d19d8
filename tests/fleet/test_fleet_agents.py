"""One guest, several REAL agent processes behind one VACCEL_RPC_ADDRESS: sessions spread over
them and stay, resources follow their session, an agent killed mid-run costs only its own
sessions, a restarted one is used again, and each agent's call record shows its share."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.fleet.conftest import (
    guest,
    guest_registry,
    placed_on,
    run_calls,
    scraped_run_calls,
    spec_of,
    start_fleet_agent,
    status,
)
from tests.remote.conftest import AgentProcess, start_agent, wait_until
from vaccel_core import Resource, ResourceType
from vaccel_core.errors import InvalidArgumentError, RemoteError, SessionError


@pytest.mark.parametrize("policy", ["least-calls", "round-robin"])
def test_sessions_spread_evenly_and_stay(
    three_agents: list[AgentProcess], policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no calls in flight both policies give each of 3 agents 3 of 9 sessions; every call
    of a session goes to the agent it was placed on."""
    spec = spec_of(three_agents)
    with guest_registry(monkeypatch, VACCEL_RPC_PLACEMENT=policy) as registry:
        sessions = [guest(spec, registry) for _ in range(9)]
        try:
            where = [placed_on(s) for s in sessions]
            assert Counter(where) == {a.address: 3 for a in three_agents}
            for i, session in enumerate(sessions):
                for _ in range(i + 1):
                    session.noop()
            for agent in three_agents:
                mine = [i for i, w in enumerate(where) if w == agent.address]
                assert status(agent).sessions == 3
                share = sum(i + 1 for i in mine)
                assert run_calls(agent) == share
                assert scraped_run_calls(agent) == share
        finally:
            for session in sessions:
                session.release()
    for agent in three_agents:
        wait_until(lambda a=agent: status(a).sessions == 0, what=f"{agent.address} released")


def test_resources_go_to_their_sessions_agent_only(
    three_agents: list[AgentProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights" * 1000)
    spec = spec_of(three_agents)
    with guest_registry(monkeypatch) as registry:
        sessions = [guest(spec, registry) for _ in range(3)]
        try:
            by_agent = {placed_on(s): s for s in sessions}
            assert set(by_agent) == {a.address for a in three_agents}
            first, second, third = three_agents
            resource = Resource(str(model), ResourceType.MODEL)
            resource.register(by_agent[first.address])
            other = Resource.from_buffer(b"labels\n", ResourceType.DATA)
            other.register(by_agent[second.address])
            counts = {a.address: (status(a).resources, status(a).blobs) for a in three_agents}
            assert counts == {
                first.address: (1, 1),
                second.address: (1, 1),
                third.address: (0, 0),
            }
            resource.unregister(by_agent[first.address])
            assert status(first).resources == 0
        finally:
            for session in sessions:
                session.release()


def test_killed_agent_fails_only_its_sessions_and_is_used_again_once_back(
    three_agents: list[AgentProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = spec_of(three_agents)
    victim = three_agents[1]
    survivors = [three_agents[0], three_agents[2]]
    with guest_registry(monkeypatch) as registry:
        backend: Any = registry.backend("rpc")
        sessions = [guest(spec, registry) for _ in range(6)]
        where = {s.id: placed_on(s) for s in sessions}
        assert Counter(where.values()) == {a.address: 2 for a in three_agents}
        done: Counter[str] = Counter()  # successful noops per agent address
        failures: dict[int, BaseException] = {}
        stop = threading.Event()
        lock = threading.Lock()

        def work(session: Any) -> None:
            while not stop.is_set():
                try:
                    session.noop()
                except BaseException as exc:
                    failures[session.id] = exc
                    return
                with lock:
                    done[where[session.id]] += 1

        threads = [threading.Thread(target=work, args=(s,), daemon=True) for s in sessions]
        new: list[Any] = []
        try:
            for thread in threads:
                thread.start()
            wait_until(lambda: min(done[a.address] for a in three_agents) >= 20, what="calls")
            victim.kill()  # SIGKILL, mid-run
            victims = [s for s in sessions if where[s.id] == victim.address]
            wait_until(lambda: all(s.id in failures for s in victims), what="victims failing")
            before = {a.address: done[a.address] for a in survivors}
            wait_until(
                lambda: all(done[a] >= n + 20 for a, n in before.items()),
                what="the surviving agents serving on",
            )
            stop.set()
            for thread in threads:
                thread.join(10)
            assert all(s.id not in failures for s in sessions if s not in victims), failures
            for session in victims:  # every later call: a SessionError naming the agent
                with pytest.raises(
                    SessionError, match=rf"session {session.id}: .*{re.escape(victim.address)}"
                ):
                    session.noop()
            # New sessions go to the live agents only, evenly (no calls in flight now).
            new = [guest(spec, registry) for _ in range(4)]
            assert Counter(placed_on(s) for s in new) == {a.address: 2 for a in survivors}
            # Restarted at the same address: used again once its backoff is over.
            three_agents[1] = start_fleet_agent(victim.addresses[0])
            wait_until(
                lambda: backend.backoff.until(victim.address) <= backend.backoff.clock(),
                timeout=15,
                what="the backoff of the restarted agent",
            )
            back = guest(spec, registry)
            new.append(back)
            assert placed_on(back) == victim.address
            back.noop()
            back.noop()
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
            for session in sessions + new:
                session.release()
        # Each agent's call record and metrics show exactly its sessions' calls.
        for agent in survivors:
            assert run_calls(agent) == scraped_run_calls(agent) == done[agent.address]
        assert run_calls(three_agents[1]) == scraped_run_calls(three_agents[1]) == 2
        assert status(three_agents[1]).sessions == 0


def test_unreachable_agents_are_skipped_and_all_down_names_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = start_agent([f"unix://{tmp_path}/live.sock"])
    dead = f"unix://{tmp_path}/nobody.sock"
    try:
        with guest_registry(monkeypatch) as registry:
            sessions = [guest(f"{dead},{live.address}", registry) for _ in range(3)]
            try:
                assert {placed_on(s) for s in sessions} == {live.address}
            finally:
                for session in sessions:
                    session.release()
    finally:
        live.stop()
    with guest_registry(monkeypatch) as registry, pytest.raises(RemoteError) as info:
        guest(f"{dead},{live.address}", registry)
    message = info.value.message
    assert message.startswith("create session: none of the 2 agents of VACCEL_RPC_ADDRESS=")
    for address in (dead, live.address):  # each, with its reason (in the order tried)
        assert f"cannot reach the vAccel agent at {address}: no socket at" in message


def test_a_bad_list_is_refused_before_anything_is_dialled(monkeypatch: pytest.MonkeyPatch) -> None:
    with (
        guest_registry(monkeypatch) as registry,
        pytest.raises(
            InvalidArgumentError,
            match=r"VACCEL_RPC_ADDRESS='unix:///a.sock,,unix:///b.sock': entry 2 of 3 is empty",
        ),
    ):
        guest("unix:///a.sock,,unix:///b.sock", registry)


# DNS names ---------------------------------------------------------------------------------------
def _tcp_agents(hosts: list[str]) -> list[AgentProcess]:
    """Agents on the same tcp port of each of ``hosts`` (as a headless Service's pods)."""
    first = start_agent([f"tcp://{hosts[0]}:0"])
    port = first.addresses[0].rpartition(":")[2]
    agents = [first]
    try:
        for host in hosts[1:]:
            agents.append(start_agent([f"tcp://{host}:{port}"]))
    except BaseException:
        for agent in agents:
            agent.stop()
        raise
    return agents


def test_a_name_is_resolved_and_each_address_is_an_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    """``tcp://localhost:PORT``, through the real resolver: sessions go to the addresses it
    resolves to."""
    from vaccel_plugins.rpc.placement import resolve

    ips = resolve("localhost", 0)
    hosts = [f"[{ip}]" if ":" in ip else ip for ip in ips]
    agents = _tcp_agents(hosts)
    port = agents[0].addresses[0].rpartition(":")[2]
    try:
        with guest_registry(monkeypatch) as registry:
            sessions = [guest(f"tcp://localhost:{port}", registry) for _ in range(2 * len(ips))]
            try:
                assert Counter(placed_on(s) for s in sessions) == {
                    f"tcp://{host}:{port}": 2 for host in hosts
                }
                for session in sessions:
                    session.noop()
            finally:
                for session in sessions:
                    session.release()
    finally:
        for agent in agents:
            agent.stop()


def test_localhost_with_two_addresses_is_two_agents() -> None:
    """Where ``localhost`` resolves to 127.0.0.1 and ::1, the test above runs two agents on
    one port; say so when it does not here."""
    from vaccel_plugins.rpc.placement import resolve

    ips = resolve("localhost", 0)
    if len(ips) < 2:
        pytest.skip(
            f"localhost resolves to {', '.join(ips)} only on this machine (getent ahosts "
            f"localhost; /etc/hosts has no ::1 localhost line): the name stands for one agent "
            f"here; test_a_dns_name_picks_up_agents_added_and_removed covers several"
        )
    assert set(ips) == {"127.0.0.1", "::1"}


def test_a_dns_name_picks_up_agents_added_and_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    """REAL agents on 127.0.0.1, .2 and .3, one port, behind a name whose answers come from a
    LABELLED STAND-IN resolver (the test changes them as a headless Service's would change)."""
    from vaccel_plugins.rpc import placement

    agents = _tcp_agents(["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    port = agents[0].addresses[0].rpartition(":")[2]
    answer = ["127.0.0.1", "127.0.0.2"]

    def stand_in(host: str, port_: int) -> list[str]:
        assert (host, port_) == ("agents.fleet.invalid", int(port))
        return list(answer)

    monkeypatch.setattr(placement, "resolve", stand_in)
    spec = f"tcp://agents.fleet.invalid:{port}"
    sessions: list[Any] = []
    try:
        with guest_registry(monkeypatch, VACCEL_RPC_DNS_REFRESH="0.2") as registry:
            try:
                sessions += [guest(spec, registry) for _ in range(4)]
                assert Counter(placed_on(s) for s in sessions) == {
                    f"tcp://127.0.0.1:{port}": 2,
                    f"tcp://127.0.0.2:{port}": 2,
                }
                answer[:] = ["127.0.0.2", "127.0.0.3"]  # .3 added, .1 removed
                time.sleep(0.3)
                later = [guest(spec, registry) for _ in range(2)]
                sessions += later
                assert [placed_on(s) for s in later] == [f"tcp://127.0.0.3:{port}"] * 2
                for session in sessions:  # those on .1 still work: out of DNS is not dead
                    session.noop()
                assert [status(a).sessions for a in agents] == [2, 2, 2]
            finally:
                for session in sessions:
                    session.release()
    finally:
        for agent in agents:
            agent.stop()
