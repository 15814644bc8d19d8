"""A resource file deleted after its Resource was made: NotFoundError, not a raw OSError."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vaccel_core import Config, Resource, ResourceType
from vaccel_core.errors import NotFoundError
from vaccel_plugins.rpc.backend import RpcBackend

from .conftest import remote_session

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def address(tmp_path: Path) -> Iterator[str]:
    from vaccel_agent.server import Agent

    with Agent([f"unix://{tmp_path / 'a.sock'}"], config=Config(plugins=["noop"])) as agent:
        yield agent.bound_addresses[0]


def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "gone.onnx"
    path.write_bytes(b"model" * 1000)
    return path


@pytest.mark.parametrize("hashed", [False, True], ids=["unhashed", "hash-cached"])
def test_file_deleted_before_register(address: str, tmp_path: Path, hashed: bool) -> None:
    path = model_file(tmp_path)
    res = Resource(path, ResourceType.MODEL)
    if hashed:
        res.sha256(0)  # the digest is cached: only the size lookup meets the missing file
    path.unlink()
    with remote_session(address) as session:
        with pytest.raises(NotFoundError) as err:
            res.register(session)
        message = err.value.message
        assert message.startswith(f"register resource: resource {res.id}: file 'gone.onnx'")
        assert str(path) in message and "No such file" in message


def test_file_deleted_while_register_asks_the_agent(
    address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = model_file(tmp_path)
    res = Resource(path, ResourceType.MODEL)
    real_call = RpcBackend._call

    def call_then_delete(self: RpcBackend, *args: Any, **kwargs: Any) -> Any:
        reply = real_call(self, *args, **kwargs)
        if "RegisterResource" in args:
            path.unlink(missing_ok=True)  # gone before its blob is uploaded
        return reply

    monkeypatch.setattr(RpcBackend, "_call", call_then_delete)
    with (
        remote_session(address) as session,
        pytest.raises(NotFoundError, match=f"resource {res.id}: file 'gone.onnx'"),
    ):
        res.register(session)
