"""Errors about resources and blobs quote client input only clipped, and never carry a path
of the agent's (issue 9, attack 11)."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from vaccel_core.transport import CallError, Peer

from .conftest import RawClient, start_agent
from .test_agent_blobs import blob, new_session, put, register, upload

pytestmark = pytest.mark.timeout(60)


def test_a_huge_invalid_digest_is_not_echoed(service: Any) -> None:
    p = Peer("p")
    sid = new_session(service, p)
    huge = "z" * (64 << 20)
    with pytest.raises(CallError) as err:
        register(service, p, sid, [("m", huge, 1)])
    assert err.value.status == "INVALID_ARGUMENT"
    assert len(err.value.message) < 300 and "(67108864 characters)" in err.value.message
    with pytest.raises(CallError) as err:
        put(service, p, huge, 1, 0, b"x")
    assert err.value.status == "INVALID_ARGUMENT"
    assert len(err.value.message) < 300 and "(67108864 characters)" in err.value.message


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("é" * 128, "256 bytes long (at most 255)"),
        ("a" * 100_000, "100000 bytes long (at most 255)"),
        ("a/b", "contains '/'"),
        ("a\0b", "contains NUL"),
        ("", "is empty"),
        (".", "is '.' or '..'"),
        ("..", "is '.' or '..'"),
    ],
)
def test_file_names_are_checked_with_a_clear_error(service: Any, name: str, reason: str) -> None:
    p = Peer("p")
    sid = new_session(service, p)
    data, digest = blob(10, 1)
    assert upload(service, p, data).complete
    with pytest.raises(CallError) as err:
        register(service, p, sid, [(name, digest, len(data))])
    message = err.value.message
    assert err.value.status == "INVALID_ARGUMENT"
    assert "RegisterResource: argument 'files'" in message and reason in message
    assert len(message) < 400
    assert str(service.blobs.root) not in message


def test_the_longest_allowed_name_registers(service: Any) -> None:
    p = Peer("p")
    sid = new_session(service, p)
    data, digest = blob(10, 2)
    assert upload(service, p, data).complete
    assert register(service, p, sid, [("é" * 127 + "a", digest, len(data))]).resource_id


def test_an_os_error_never_carries_the_agents_path(
    service: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import vaccel_agent.service

    p = Peer("p")
    sid = new_session(service, p)
    data, digest = blob(10, 3)
    assert upload(service, p, data).complete

    def failing(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(src), None, str(dst))

    monkeypatch.setattr(vaccel_agent.service.os, "link", failing)
    monkeypatch.setattr(vaccel_agent.service.shutil, "copyfile", failing)
    with caplog.at_level(logging.DEBUG, logger="vaccel.agent"), pytest.raises(CallError) as err:
        register(service, p, sid, [("m.onnx", digest, len(data))])
    message = err.value.message
    assert "RegisterResource" in message and "'m.onnx'" in message
    assert "Input/output error" in message
    assert str(service.blobs.root) not in message and str(service.blobs.base) not in message
    assert str(service.blobs.root) in caplog.text, "the agent's own log keeps the path"
    monkeypatch.undo()
    assert service.counts()["resources"] == 0
    assert not list(service.blobs.root.glob("resource-*")), "nothing left behind"


def test_a_failed_chunk_write_never_carries_the_agents_path(
    service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vaccel_agent.blobs

    def full(path: Any, *args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(vaccel_agent.blobs, "open", full, raising=False)
    data, digest = blob(10, 4)
    with pytest.raises(CallError) as err:
        put(service, Peer("p"), digest, len(data), 0, data)
    assert err.value.status == "RESOURCE_EXHAUSTED"
    assert "No space left on device" in err.value.message
    assert str(service.blobs.root) not in err.value.message


def test_a_long_name_through_a_real_agent(tmp_path: Path) -> None:
    blob_dir = tmp_path / "blobs"
    handle = start_agent([f"unix://{tmp_path / 'v.sock'}"], args=["--blob-dir", str(blob_dir)])
    client = RawClient(handle.address)
    try:
        pb = client.pb
        sid = client.create_session()
        data, digest = blob(10, 5)
        req = pb.PutBlobRequest(sha256=digest, size=len(data), offset=0)
        req.data.inline = data
        assert client.call("PutBlob", req, pb.PutBlobResponse).complete
        reg = pb.RegisterResourceRequest(session_id=sid, type=2)
        reg.files.add(name="n" * 256, sha256=digest, size=len(data))
        with pytest.raises(CallError) as err:
            client.call("RegisterResource", reg, pb.RegisterResourceResponse)
        assert err.value.status == "INVALID_ARGUMENT"
        assert "256 bytes long (at most 255)" in err.value.message
        assert str(blob_dir) not in err.value.message and "n" * 100 not in err.value.message
        assert client.noop(sid).WhichOneof("result") == "noop"
    finally:
        client.close()
        handle.stop()
