"""Shared pieces of the security tests: they need the 'remote' extra, and most talk to the
agent service in process through these helpers."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from tests.remote.conftest import missing_remote_extra, service_call
from vaccel_core.transport import Peer


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = missing_remote_extra()
    here = Path(__file__).resolve().parent
    for item in items:
        if here not in Path(item.path).resolve().parents:
            continue
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(120))


def pb() -> Any:
    """agent.proto's generated module."""
    from vaccel_core.proto import pb as load

    return load()


def create_session(svc: Any, peer: Peer) -> int:
    """A session of ``peer`` on the in-process service ``svc``."""
    reply = service_call(
        svc, "CreateSession", pb().CreateSessionRequest(), pb().CreateSessionResponse, peer
    )
    return int(reply.session_id)


def session_with_model(svc: Any, peer: Peer, data: bytes = b"model bytes") -> tuple[int, int]:
    """A session of ``peer`` and a MODEL resource ``model.onnx`` (``data``) registered with
    it, uploaded the way the rpc backend does."""
    sid = create_session(svc, peer)
    digest = hashlib.sha256(data).hexdigest()
    put = pb().PutBlobRequest(sha256=digest, size=len(data), offset=0)
    put.data.inline = data
    service_call(svc, "PutBlob", put, pb().PutBlobResponse, peer)
    register = pb().RegisterResourceRequest(session_id=sid, type=2)
    register.files.add(name="model.onnx", sha256=digest, size=len(data))
    reply = service_call(svc, "RegisterResource", register, pb().RegisterResourceResponse, peer)
    return sid, int(reply.resource_id)
