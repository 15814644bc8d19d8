"""Sessions released while a call on them is still running (no transport)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from vaccel_core.resource import Resource
from vaccel_core.session import Session
from vaccel_core.transport import CallError, Peer

from .conftest import service_call

pytestmark = pytest.mark.timeout(60)


def test_resource_registered_while_its_session_is_released_leaks_nothing(
    service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pb = service.pb
    peer = Peer("p")
    service.peer_connected(peer)
    sid = service_call(
        service, "CreateSession", pb.CreateSessionRequest(), pb.CreateSessionResponse, peer
    ).session_id
    data = b"model bytes"
    digest = hashlib.sha256(data).hexdigest()
    put = pb.PutBlobRequest(sha256=digest, size=len(data), offset=0)
    put.data.inline = data
    service_call(service, "PutBlob", put, pb.PutBlobResponse, peer)

    real_register = Resource.register

    def register_then_disconnect(self: Resource, session: Session) -> None:
        real_register(self, session)
        service.peer_disconnected(peer)  # the client goes away mid-registration

    monkeypatch.setattr(Resource, "register", register_then_disconnect)
    reg = pb.RegisterResourceRequest(session_id=sid, type=2)
    reg.files.add(name="m.onnx", sha256=digest, size=len(data))
    with pytest.raises(CallError, match=f"session {sid} not found") as err:
        service_call(service, "RegisterResource", reg, pb.RegisterResourceResponse, peer)
    assert err.value.status == "NOT_FOUND"
    assert service.counts()["sessions"] == 0
    assert service.counts()["resources"] == 0
    assert not any(p.name.startswith("resource-") for p in service.blobs.root.iterdir())
    service.blobs.drop_unused(owner=peer.id)
    assert service.counts()["blobs"] == 0, "the blob reference was given back"


def test_session_created_while_the_agent_closes_is_released(
    service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pb = service.pb
    made: list[Session] = []
    real_new_session = service._new_session

    def new_session_then_close(flags: int) -> Session:
        session = real_new_session(flags)
        made.append(session)
        service.close()  # the agent stops while the session is being made
        return session

    monkeypatch.setattr(service, "_new_session", new_session_then_close)
    with pytest.raises(CallError, match="the agent is stopping") as err:
        service_call(
            service, "CreateSession", pb.CreateSessionRequest(), pb.CreateSessionResponse, Peer("p")
        )
    assert err.value.status == "UNAVAILABLE"
    assert service.counts()["sessions"] == 0
    assert made and made[0].closed
