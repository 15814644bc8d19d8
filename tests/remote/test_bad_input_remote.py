"""Malformed and oversize requests get clear errors, and the agent keeps serving others."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vaccel_core import OutOfMemoryError
from vaccel_core.transport import CallError, Message, TransportOptions

from .conftest import AgentProcess, RawClient, remote_session, start_agent

pytestmark = pytest.mark.timeout(90)


def still_serving(address: str) -> None:
    with remote_session(address) as session:
        session.noop()


@pytest.mark.parametrize("method", ["CreateSession", "Run", "RegisterResource", "PutBlob"])
def test_garbage_bytes_get_invalid_argument(shared_agent: AgentProcess, method: str) -> None:
    raw = RawClient(shared_agent.address)
    try:
        with pytest.raises(CallError) as err:
            raw.channel.call(method, Message(b"\xff\xff\xff\xff garbage \x00\x01"), 5)
        assert err.value.status == "INVALID_ARGUMENT"
        assert f"{method}: malformed request: expected a vaccel.agent.v1." in err.value.message
        assert err.value.code == 22  # EINVAL travels as the upstream code
    finally:
        raw.close()
    still_serving(shared_agent.address)


def test_broken_out_of_band_framing_is_refused(shared_agent: AgentProcess) -> None:
    raw = RawClient(shared_agent.address)
    try:
        # A field-2047 header that claims more bytes than the message has.
        with pytest.raises(CallError) as err:
            raw.channel.call("Run", Message(b"\xfa\x7f\xff\xff\x03abc"), 5)
        assert err.value.status == "INVALID_ARGUMENT"
        assert "out-of-band buffer 0 claims" in err.value.message
    finally:
        raw.close()
    still_serving(shared_agent.address)


def test_unknown_method_is_unimplemented(shared_agent: AgentProcess) -> None:
    raw = RawClient(shared_agent.address)
    try:
        with pytest.raises(CallError) as err:
            raw.channel.call("Explode", Message(b""), 5)
        assert err.value.status == "UNIMPLEMENTED"
        assert "Explode: no such method" in err.value.message
    finally:
        raw.close()


def test_inconsistent_requests_name_what_is_wrong(shared_agent: AgentProcess) -> None:
    raw = RawClient(shared_agent.address)
    pb = raw.pb
    try:
        sid = raw.create_session()
        cases = []
        req = pb.OpRequest(session_id=sid, op="noop")
        cases.append((req, "Run: no operation given"))
        req = pb.OpRequest(session_id=sid, op="minmax")
        req.noop.SetInParent()
        cases.append((req, "operation name 'minmax' does not match the arguments given (noop)"))
        req = pb.OpRequest(session_id=sid, op="fpga_vectoradd")
        req.fpga_vectoradd.a.dtype = "float32"
        req.fpga_vectoradd.a.shape.append(4)
        req.fpga_vectoradd.a.inline = b"\x00" * 12
        req.fpga_vectoradd.b.CopyFrom(req.fpga_vectoradd.a)
        cases.append((req, "fpga_vectoradd: argument 'a': tensor data has 12 bytes, expected 16"))
        req = pb.OpRequest(session_id=sid, op="fpga_arraycopy")
        req.fpga_arraycopy.a.dtype = "object"
        cases.append((req, "argument 'a': expected a numeric tensor dtype"))
        req = pb.OpRequest(session_id=sid, op="fpga_arraycopy")
        req.fpga_arraycopy.a.dtype = "int32"
        req.fpga_arraycopy.a.buffer = 3
        cases.append((req, "argument 'a': refers to out-of-band buffer 3, but the message has 0"))
        req = pb.OpRequest(session_id=sid, op="fpga_arraycopy")
        req.fpga_arraycopy.a.dtype = "float64"
        req.fpga_arraycopy.a.shape.append(1)
        req.fpga_arraycopy.a.inline = b"\x00" * 8
        cases.append((req, "fpga_arraycopy: argument 'a': expected a int32 array"))
        req = pb.OpRequest(session_id=sid, op="model_load")
        req.model_load.resource = 12345
        cases.append((req, "model_load: resource 12345 is not registered with session"))
        for request, expected in cases:
            with pytest.raises(CallError) as err:
                raw.call("Run", request, pb.OpResponse)
            assert expected in err.value.message
            assert err.value.status in {"INVALID_ARGUMENT", "NOT_FOUND"}
        register = pb.RegisterResourceRequest(session_id=sid, type=2)
        register.files.add(name="../../etc/passwd", sha256="0" * 64, size=1)
        with pytest.raises(CallError, match="expected a plain file name"):
            raw.call("RegisterResource", register, pb.RegisterResourceResponse)
        register = pb.RegisterResourceRequest(session_id=sid, type=2)
        register.files.add(name="m", sha256="/etc/passwd", size=1)
        with pytest.raises(CallError, match="expected a lowercase hex sha256"):
            raw.call("RegisterResource", register, pb.RegisterResourceResponse)
        put = pb.PutBlobRequest(sha256="a" * 64, size=3, offset=0)
        put.data.inline = b"abc"
        with pytest.raises(CallError, match="blob content has sha256 ba7816bf"):
            raw.call("PutBlob", put, pb.PutBlobResponse)
        assert raw.noop(sid).WhichOneof("result") == "noop"
    finally:
        raw.close()


def test_oversize_request_gets_resource_exhausted(tmp_path: Path) -> None:
    limit = 1 << 20
    handle = start_agent([f"unix://{tmp_path / 'v.sock'}"], args=["--max-message-size", str(limit)])
    try:
        # A client whose own limit is higher: the agent refuses the message.
        big = RawClient(handle.address, TransportOptions(max_message_bytes=64 << 20))
        try:
            sid = big.create_session()
            request = big.pb.OpRequest(session_id=sid, op="fpga_arraycopy")
            request.fpga_arraycopy.a.dtype = "int32"
            request.fpga_arraycopy.a.shape.append(1 << 20)
            request.fpga_arraycopy.a.buffer = 0
            with pytest.raises(CallError) as err:
                big.call("Run", request, big.pb.OpResponse, [bytes(4 << 20)])
            assert err.value.status == "RESOURCE_EXHAUSTED"
            assert "refused the message" in err.value.message
            assert big.noop(sid).WhichOneof("result") == "noop", "same client still served"
        finally:
            big.close()
        # The rpc backend refuses before sending when its own limit is lower.
        import os

        os.environ["VACCEL_RPC_MAX_MESSAGE_BYTES"] = str(limit)
        try:
            from vaccel_plugins.rpc.backend import RpcBackend

            backend = RpcBackend()
            assert backend.max_message_bytes == limit
        finally:
            del os.environ["VACCEL_RPC_MAX_MESSAGE_BYTES"]
        small = RawClient(handle.address, TransportOptions(max_message_bytes=limit))
        try:
            with pytest.raises(CallError) as err:
                small.channel.call("Run", Message(b"", [bytes(2 * limit)]), 5)
            assert err.value.status == "RESOURCE_EXHAUSTED"
            assert f"exceeds the message size limit of {limit} bytes" in err.value.message
        finally:
            small.close()
        with remote_session(handle.address) as session:
            with pytest.raises(OutOfMemoryError, match="refused the message"):
                session.fpga_arraycopy(np.zeros(1 << 20, dtype=np.int32))
            session.noop()
    finally:
        handle.stop()


def test_agent_errors_come_back_as_the_same_exception_class(tmp_path: Path) -> None:
    import sys

    from tests.remote.slow_backend import LAUNCHER
    from vaccel_core import BackendError, NotFoundError, NotSupportedError, Resource, ResourceType

    handle = start_agent(
        [f"unix://{tmp_path / 'v.sock'}"],
        command=[sys.executable, "-c", LAUNCHER],
        env={"VACCEL_PLUGINS": "slow", "VACCEL_TEST_SLOW_SECONDS": "0"},
    )
    try:
        with remote_session(handle.address) as session:
            with pytest.raises(BackendError) as failed:
                session.classify(b"four")
            assert str(failed.value) == (
                "classify: backend 'slow' failed: RuntimeError: cannot classify 4 bytes here"
            )
            assert failed.value.code == 71  # EPROTO, as upstream
            with pytest.raises(NotSupportedError, match="no selected backend implements"):
                session.sgemm(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32))
            res = Resource.from_buffer(b"m", ResourceType.MODEL, name="m.onnx")
            res.register(session)
            backend = session.backends[0]
            remote = backend._remotes[session.id]  # type: ignore[attr-defined]
            remote.resources[res.id] = 999_999  # a resource id the agent never gave out
            with pytest.raises(NotFoundError, match="resource 999999 is not registered"):
                session.model_load(res)
            session.noop()
    finally:
        handle.stop()
