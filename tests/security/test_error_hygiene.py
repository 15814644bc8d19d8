"""Issue 9, attack 11: errors never echo more than a short prefix of client input and never
show a host path, even when a backend's own error names the file the agent gave it."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from tests.remote.conftest import service_call
from tests.security.conftest import pb, session_with_model
from vaccel_core import Backend, BackendError, Config, PluginType, hookimpl
from vaccel_core.transport import CallError, Peer


class LeakyBackend(Backend):
    """A backend whose errors name the agent's own path of the model file."""

    name = "leaky"
    type = PluginType.CPU

    def model_load(self, session: Any, resource: Any) -> None:
        path = resource.local_paths()[0]
        raise BackendError(f"cannot load {path}: bad header at '{path.parent}/'")


@hookimpl
def vaccel_register_backends(register: Any) -> None:
    register(LeakyBackend)


@pytest.fixture(scope="module")
def leaky_service() -> Any:
    from vaccel_agent.service import AgentService
    from vaccel_core.plugins import get_registry

    registry = get_registry()
    if "leaky" not in registry.backends:
        registry.register_plugin(sys.modules[__name__], "leaky")
    svc = AgentService(Config(plugins=["leaky"]), registry)
    yield svc
    svc.close()


def test_a_backend_error_naming_the_agents_file_reaches_the_client_without_the_path(
    leaky_service: Any,
) -> None:
    peer = Peer("p")
    sid, rid = session_with_model(leaky_service, peer)
    run = pb().OpRequest(session_id=sid, op="model_load")
    run.model_load.resource = rid
    with pytest.raises(CallError) as err:
        service_call(leaky_service, "Run", run, pb().OpResponse, peer)
    message = err.value.message
    assert "cannot load model.onnx" in message
    assert str(leaky_service.blobs.base) not in message and "/" not in message.split(":", 1)[1]


def test_messages_are_capped_even_when_a_backend_writes_a_novel() -> None:
    from vaccel_agent.service import MAX_ERROR_CHARS, call_error

    error = call_error(BackendError("x" * 100_000))
    assert len(error.message) <= MAX_ERROR_CHARS
    assert error.message.endswith("(100000 characters)")


@pytest.mark.parametrize("field", ["op", "dtype", "name"])
def test_client_strings_are_clipped_in_errors(field: str) -> None:
    from tests.remote.conftest import make_service

    svc = make_service()
    try:
        peer = Peer("p")
        sid, rid = session_with_model(svc, peer)
        huge = "z" * (1 << 20)
        run = pb().OpRequest(session_id=sid)
        if field == "op":
            run.op = huge
            run.noop.SetInParent()
        elif field == "dtype":
            run.blas_sgemm.a.dtype = huge
        else:
            run.model_run.resource = rid
            for _ in range(2):  # a duplicate name: the error names it
                item = run.model_run.inputs.items.add(name=huge)
                item.tensor.dtype = "float32"
        with pytest.raises(CallError) as err:
            service_call(svc, "Run", run, pb().OpResponse, peer)
        assert err.value.status == "INVALID_ARGUMENT"
        assert "zzz" in err.value.message and "(1048576 characters)" in err.value.message
        assert len(err.value.message) < 400, err.value.message[:200]
    finally:
        svc.close()
