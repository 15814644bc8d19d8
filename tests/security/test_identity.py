"""Issue 9, attack 2: ownership rests on a capability the agent issued, never on what a client
says about itself (an id in metadata) or where it connects from (every unix client looks the
same to gRPC; tcp ports can be enumerated)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.remote.conftest import (
    AgentProcess,
    RawClient,
    start_agent,
    wait_until,
)
from vaccel_core.transport import CallError

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["unix", "tcp"])
def agent(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AgentProcess]:
    address = f"unix://{tmp_path / 'a.sock'}" if request.param == "unix" else "tcp://127.0.0.1:0"
    handle = start_agent([address], args=["--log-level", "4"])
    yield handle
    handle.stop()


def grpc_target(address: str) -> str:
    return "unix:" + address[len("unix://") :] if address.startswith("unix://") else address[6:]


def test_another_client_cannot_use_a_session(agent: AgentProcess) -> None:
    victim, attacker = RawClient(agent.address), RawClient(agent.address)
    try:
        sid = victim.create_session()
        with pytest.raises(CallError) as err:
            attacker.noop(sid)
        assert err.value.status == "NOT_FOUND" and f"session {sid} not found" in err.value.message
        assert victim.noop(sid) is not None
    finally:
        victim.close()
        attacker.close()


def test_a_forged_peer_id_neither_reaches_nor_releases_a_session(agent: AgentProcess) -> None:
    """What released every unix client's sessions before: an Attach carrying the victim's
    name in ``vaccel-peer-id``, then cancelled; and calls carrying that name."""
    import grpc

    from vaccel_core.proto import pb

    victim = RawClient(agent.address)
    sid = victim.create_session()
    name = victim.channel.peer_id  # type: ignore[attr-defined]
    forged = (("vaccel-peer-id", name), ("vaccel-peer-id", "anonymous:unix:"))
    with grpc.insecure_channel(grpc_target(agent.address)) as channel:
        attach = channel.unary_stream("/vaccel.agent.v1.Agent/Attach")(b"", metadata=forged)
        event = pb().AttachEvent.FromString(next(attach))
        assert event.peer_id != name and event.capability
        run = pb().OpRequest(session_id=sid, op="noop")
        run.noop.SetInParent()
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary("/vaccel.agent.v1.Agent/Run")(
                run.SerializeToString(), timeout=5, metadata=forged
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary("/vaccel.agent.v1.Agent/Run")(
                run.SerializeToString(),
                timeout=5,
                metadata=(("vaccel-capability", event.capability),),
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        attach.cancel()
    agent.wait_for_log(rf"client {event.peer_id} disconnected")
    assert victim.noop(sid) is not None, "the victim's session survived"
    victim.close()


def test_unknown_and_guessed_capabilities_are_refused(agent: AgentProcess) -> None:
    import grpc

    victim = RawClient(agent.address)
    victim.create_session()
    with grpc.insecure_channel(grpc_target(agent.address)) as channel:
        for capability in ("", secrets.token_urlsafe(32), "x" * 5000):
            metadata = (("vaccel-capability", capability),) if capability else ()
            with pytest.raises(grpc.RpcError) as err:
                channel.unary_unary("/vaccel.agent.v1.Agent/CreateSession")(
                    b"", timeout=5, metadata=metadata
                )
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert len(err.value.details() or "") < 300, "the capability is not echoed"
    victim.close()


def test_a_capability_dies_with_its_attach_stream(agent: AgentProcess) -> None:
    import grpc

    from vaccel_core.proto import pb

    with grpc.insecure_channel(grpc_target(agent.address)) as channel:
        attach = channel.unary_stream("/vaccel.agent.v1.Agent/Attach")(b"")
        capability = pb().AttachEvent.FromString(next(attach)).capability
        create = channel.unary_unary("/vaccel.agent.v1.Agent/CreateSession")
        create(b"", timeout=5, metadata=(("vaccel-capability", capability),))
        attach.cancel()
        agent.wait_for_log(r"client \S+ disconnected .*released 1 session")
        with pytest.raises(grpc.RpcError) as err:
            create(b"", timeout=5, metadata=(("vaccel-capability", capability),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "attach again" in (err.value.details() or "")


def test_status_shows_a_client_its_own_counts_and_the_operator_all(agent: AgentProcess) -> None:
    a, b, operator = RawClient(agent.address), RawClient(agent.address), agent.observer()
    try:
        a.create_session()
        a.create_session()
        b.create_session()
        assert (a.status().sessions, b.status().sessions) == (2, 1)
        assert a.status().peers == 1
        wait_until(lambda: operator.status().sessions == 3, 5, "the operator sees all")
        assert operator.status().peers == 3
    finally:
        for client in (a, b, operator):
            client.close()
