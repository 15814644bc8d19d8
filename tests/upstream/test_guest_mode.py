"""Our guests on an upstream vAccel agent: the ``rpc-upstream`` backend against the
upstream-style agent stand-in (:mod:`tests.upstream.standin_agent`, labelled: upstream's Rust
agent cannot be built here), over unix and over the vsock path (hybrid-vsock routing, the
stand-in of tests/remote/conftest.py).

What is checked: sessions, resources, classify, sgemm and the other genop operations against
numpy, noop and the other operations upstream's plugin does not forward, a model operation
and a not-supported one, and upstream's error forms mapped to our exceptions. The guest packs
its arguments with :mod:`vaccel_plugins.rpc.genop_pack`; the stand-in unpacks them with its own
reading of upstream's C layouts, so each side is checked against upstream, not against the
other.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.remote.conftest import HYBRID_VSOCK
from tests.upstream.standin_agent import StandInAgent, serve
from tests.upstream.standin_core import IMAGE_NAME, IMAGE_TAG
from vaccel_core import (
    InvalidArgumentError,
    NotFoundError,
    NotSupportedError,
    PluginType,
    RemoteError,
    Resource,
    ResourceType,
    Session,
)
from vaccel_core.config import Config
from vaccel_core.errors import BackendError, VaccelError
from vaccel_core.plugins import get_registry
from vaccel_core.proto.upstream import SERVICE_NAME, upstream
from vaccel_core.transport import CallError, Message, TransportOptions
from vaccel_plugins.rpc import genop_pack
from vaccel_plugins.rpc.upstream import UpstreamRpcBackend, upstream_address
from vaccel_plugins.rpc.upstream_errors import upstream_error

pytestmark = pytest.mark.timeout(60)

IMAGE = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8  # any bytes: the stand-in does not decode


@pytest.fixture(params=["unix", "vsock"])
def wire(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How the guest reaches the agent: ``unix://`` or ``vsock://2:PORT`` (hybrid vsock: the
    VMM turns the guest's vsock connection into one to the agent's unix socket)."""
    if request.param == "vsock":
        from vaccel_transports.vsock import VsockTransport

        def open_stream(self: Any, target: Any, timeout: float) -> socket.socket:
            return HYBRID_VSOCK.open_stream(target, timeout)

        monkeypatch.setattr(VsockTransport, "open_stream", open_stream)
    return str(request.param)


@pytest.fixture
def standin(tmp_path: Path, wire: str) -> Iterator[tuple[StandInAgent, str]]:
    """A stand-in agent on a unix socket, and the address the guest dials for it."""
    path = tmp_path / "agent.sock"
    agent, listener = serve(f"unix://{path}")
    address = f"unix://{path}" if wire == "unix" else f"vsock://2:{HYBRID_VSOCK.port_of(str(path))}"
    try:
        yield agent, address
    finally:
        listener.stop(1)


@pytest.fixture
def agent(standin: tuple[StandInAgent, str]) -> StandInAgent:
    return standin[0]


def guest(address: str, flags: int = PluginType.REMOTE) -> Session:
    """A session of our Python API in upstream mode."""
    return Session(flags, config=Config(plugins=["rpc-upstream"], rpc_address=address))


@pytest.fixture
def session(standin: tuple[StandInAgent, str]) -> Iterator[Session]:
    with guest(standin[1]) as s:
        yield s


def backend() -> UpstreamRpcBackend:
    instance = get_registry().backend("rpc-upstream")
    assert isinstance(instance, UpstreamRpcBackend)
    return instance


def last(agent: StandInAgent, method: str) -> Any:
    """The last request of ``method`` the agent received."""
    return [request for name, request in agent.calls if name == method][-1]


# Sessions ---------------------------------------------------------------------------------------
def test_session_lifecycle(standin: tuple[StandInAgent, str]) -> None:
    agent, address = standin
    s = guest(address, PluginType.REMOTE | PluginType.GPU)
    assert [b.name for b in s.backends] == ["rpc-upstream"]
    assert agent.methods() == ["CreateSession"]
    assert last(agent, "CreateSession").flags == PluginType.GPU, "REMOTE is the guest's own bit"
    (remote_id,) = agent.sessions
    assert backend().session_update(s, PluginType.CPU) == []
    assert agent.sessions[remote_id].flags == PluginType.CPU
    s.release()
    assert agent.methods()[-1] == "DestroySession" and agent.sessions == {}


def test_two_sessions_get_their_own_agent_sessions(standin: tuple[StandInAgent, str]) -> None:
    agent, address = standin
    with guest(address) as a, guest(address) as b:
        assert len(agent.sessions) == 2
        assert a.classify(IMAGE)[0] == b.classify(IMAGE)[0]
        ids = {last_id.session_id for name, last_id in agent.calls if name == "Genop"}
        assert len(ids) == 2
    assert agent.sessions == {}


# Genop operations ---------------------------------------------------------------------------
def test_classify_goes_through_genop_with_upstream_layout(
    agent: StandInAgent, session: Session
) -> None:
    tags, imgname = session.classify(IMAGE)
    assert tags == IMAGE_TAG.format(size=len(IMAGE))
    assert imgname == IMAGE_NAME.format(op=3)
    request = last(agent, "Genop")
    pb = upstream().genop
    op, image = request.read_args
    assert (op.arg_type, op.size, op.buf) == (pb.UINT8, 1, b"\x03")
    assert (image.arg_type, image.buf) == (pb.BUFFER, IMAGE)
    assert [(w.arg_type, w.size) for w in request.write_args] == [
        (pb.UCHAR_ARRAY, genop_pack.TEXT_BYTES),
        (pb.UCHAR_ARRAY, genop_pack.TEXT_BYTES),
    ], "out_imgname, then out_text, sized by the guest"


@pytest.mark.parametrize("method", ["detect", "segment", "pose", "depth"])
def test_image_operations(session: Session, method: str) -> None:
    code = {"detect": 4, "segment": 5, "pose": 6, "depth": 7}[method]
    assert getattr(session, method)(IMAGE) == IMAGE_NAME.format(op=code)


def test_sgemm_matches_numpy(agent: StandInAgent, session: Session) -> None:
    rng = np.random.default_rng(7)
    a = rng.standard_normal((3, 4), dtype=np.float32)
    b = rng.standard_normal((4, 5), dtype=np.float32)
    c = rng.standard_normal((3, 5), dtype=np.float32)
    out = session.sgemm(a, b, c, alpha=1.5, beta=-0.5)
    assert out.shape == (3, 5) and out.dtype == np.float32
    np.testing.assert_allclose(out, 1.5 * a @ b - 0.5 * c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(session.sgemm(a, b), a @ b, rtol=1e-5, atol=1e-5)
    request = last(agent, "Genop")
    pb = upstream().genop
    assert [arg.arg_type for arg in request.read_args] == [
        pb.UINT8, pb.INT64, pb.INT64, pb.INT64, pb.FLOAT32, pb.FLOAT32_ARRAY,
        pb.INT64, pb.FLOAT32_ARRAY, pb.INT64, pb.FLOAT32, pb.INT64,
    ]  # fmt: skip
    assert [arg.arg_type for arg in request.write_args] == [pb.FLOAT32_ARRAY]


def test_minmax_and_fpga_operations(session: Session) -> None:
    data = np.array([3.0, -7.5, 12.25, 0.5])
    out, low, high = session.minmax(data, -1, 10)
    np.testing.assert_array_equal(out, np.clip(data, -1, 10))
    assert (low, high) == (-7.5, 12.25)
    ints = np.arange(5, dtype=np.int32)
    np.testing.assert_array_equal(session.fpga_arraycopy(ints), ints)
    x = np.arange(4, dtype=np.float32)
    y = np.full(4, 2.0, dtype=np.float32)
    np.testing.assert_array_equal(session.fpga_vectoradd(x, y), x + y)
    added, multiplied = session.fpga_parallel(x, y)
    np.testing.assert_array_equal(added, x + y)
    np.testing.assert_array_equal(multiplied, x * y)
    square = np.arange(9, dtype=np.float32).reshape(3, 3)
    np.testing.assert_allclose(session.fpga_mmult(square, square), square @ square)
    with pytest.raises(InvalidArgumentError, match="fpga_mmult: upstream's layout"):
        session.fpga_mmult(np.ones((2, 3), np.float32), np.ones((3, 2), np.float32))


def test_exec_raw_buffers(session: Session, tmp_path: Path) -> None:
    assert session.exec("libstandin.so", "reverse", [b"abcdef"], [6]) == [b"fedcba"]
    assert session.exec("libstandin.so", "reverse", [b"abcdef"], [3]) == [b"fed"]
    lib = tmp_path / "libstandin.so"
    lib.write_bytes(b"\x7fELF stand-in")
    resource = Resource(lib, ResourceType.LIB)
    resource.register(session)
    assert session.exec_with_resource(resource, "reverse", [b"xyz"], [3]) == [b"zyx"]


def test_exec_of_a_typed_upstream_function_is_refused(session: Session) -> None:
    """Our exec carries opaque bytes (RAW args); upstream's example function reads an INT32
    arg and refuses them: a known limit of our API on upstream agents (docs/upstream.md)."""
    with pytest.raises(InvalidArgumentError, match=r"exec: .*EINVAL: FFI error: 22"):
        session.exec("libmytestlib.so", "mytestfunc", [b"\x02\x00\x00\x00"], [4])


# What upstream's plugin does not forward ------------------------------------------------------
def test_noop_is_not_forwarded(agent: StandInAgent, session: Session) -> None:
    with pytest.raises(NotSupportedError, match="noop: no selected backend implements"):
        session.noop()
    assert "Genop" not in agent.methods(), "upstream's plugin does not forward noop"


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("torch_sgemm", (np.ones((2, 2), np.float32), np.ones((2, 2), np.float32))),
        ("opencv", ([b"x"], 1)),
    ],
)
def test_operations_without_an_upstream_layout(session: Session, method: str, args: Any) -> None:
    with pytest.raises(NotSupportedError, match=rf"{method}: no selected backend implements"):
        getattr(session, method)(*args)


def test_upstream_genop_refuses_noop_and_unknown_types(standin: tuple[StandInAgent, str]) -> None:
    """What the agent answers a guest that sends op type 0 or an op without a layout anyway
    (upstream's genop.c), mapped to our exceptions."""
    _, address = standin
    pb = upstream()
    channel = backend()._channel(address)
    session_id = pb.session.CreateResponse.FromString(
        channel.invoke(SERVICE_NAME, "CreateSession", Message(b""), 5).payload
    ).session_id
    for op, expected in ((0, InvalidArgumentError), (16, NotSupportedError), (99, Exception)):
        request = pb.genop.Request(session_id=session_id)
        request.read_args.add(buf=bytes([op]), size=1, arg_type=pb.genop.UINT8)
        with pytest.raises(CallError) as failed:
            channel.invoke(SERVICE_NAME, "Genop", Message(request.SerializeToString()), 5)
        mapped = upstream_error(failed.value, "Genop", "genop", address)
        assert isinstance(mapped, expected), (op, mapped)
        assert mapped.message.startswith("genop: the upstream vAccel agent at")


# Model operations -------------------------------------------------------------------------------
def test_torch_model_load_and_run(agent: StandInAgent, session: Session, tmp_path: Path) -> None:
    model = tmp_path / "cnn_trace.pt"
    model.write_bytes(b"torchscript stand-in")
    resource = Resource(model, ResourceType.MODEL)
    resource.register(session)
    session.torch_model_load(resource)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (out,) = session.torch_model_run(resource, [x])
    np.testing.assert_array_equal(out, x)
    run = last(agent, "TorchModelRun")
    assert (run.model_id, run.nr_out_tensors) == (session_resource_id(agent), 1)
    assert (list(run.in_tensors[0].dims), run.in_tensors[0].type) == ([2, 3], 7)  # FLOAT


def session_resource_id(agent: StandInAgent) -> int:
    (resource_id,) = agent.resources
    return resource_id


@pytest.mark.parametrize("framework", ["tf", "tflite"])
def test_model_operations_without_a_plugin_are_not_supported(
    session: Session, tmp_path: Path, framework: str
) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(b"model")
    resource = Resource(model, ResourceType.MODEL)
    resource.register(session)
    with pytest.raises(NotSupportedError, match=rf"{framework}_model_load: .* ENOTSUP"):
        getattr(session, f"{framework}_model_load")(resource)


def test_our_own_model_api_is_not_supported(session: Session, tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx")
    resource = Resource(model, ResourceType.MODEL)
    resource.register(session)
    with pytest.raises(NotSupportedError, match="model_load: no selected backend"):
        session.model_load(resource)


# Resources ----------------------------------------------------------------------------------------
def test_resource_register_share_sync_unregister(
    standin: tuple[StandInAgent, str], tmp_path: Path
) -> None:
    agent, address = standin
    data = tmp_path / "weights.bin"
    data.write_bytes(b"\x01\x02\x03" * 100)
    resource = Resource(data, ResourceType.DATA)
    with guest(address) as first, guest(address) as second:
        resource.register(first)
        request = last(agent, "RegisterResource")
        assert request.resource_id == 0 and request.resource_type == ResourceType.DATA
        assert [(b.name, b.data, b.size) for b in request.blobs] == [
            ("weights.bin", data.read_bytes(), 300)
        ]
        (resource_id,) = agent.resources
        resource.register(second)
        shared = last(agent, "RegisterResource")
        assert shared.resource_id == resource_id and not shared.blobs, "registered by id"
        assert agent.resources[resource_id].sessions == set(agent.sessions)
        assert backend().resource_sync(first, resource) == [("weights.bin", data.read_bytes())]
        resource.unregister(first)
        assert resource_id in agent.resources, "the second session still holds it"
    assert agent.resources == {}, "the last unregistration destroys it on the agent"


def test_buffer_resources_travel_as_buffer_blobs(agent: StandInAgent, session: Session) -> None:
    resource = Resource.from_buffer(b"abc", ResourceType.MODEL, "model.bin")
    resource.register(session)
    (blob,) = last(agent, "RegisterResource").blobs
    assert (blob.type_, blob.name, blob.data) == (1, "model.bin", b"abc")


# Errors -------------------------------------------------------------------------------------------
def test_unknown_session_is_not_found(agent: StandInAgent, session: Session) -> None:
    agent.sessions.clear()  # as after the agent restarted
    with pytest.raises(NotFoundError, match=r"classify: .* \(Genop\): Unknown session"):
        session.classify(IMAGE)


def test_unknown_resource_is_not_found(
    agent: StandInAgent, session: Session, tmp_path: Path
) -> None:
    model = tmp_path / "m.pt"
    model.write_bytes(b"m")
    resource = Resource(model, ResourceType.MODEL)
    resource.register(session)
    agent.resources.clear()
    with pytest.raises(NotFoundError, match=r"torch_model_load: .*Unknown PyTorch model"):
        session.torch_model_load(resource)


def test_unreachable_agent_names_the_address(tmp_path: Path) -> None:
    address = f"unix://{tmp_path}/nobody.sock"
    with pytest.raises(RemoteError, match=r"nobody\.sock"):
        guest(address)


def test_grpc_addresses_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="speak ttrpc only"):
        upstream_address("grpc+unix:///run/vaccel.sock")
    assert str(upstream_address("tcp://127.0.0.1:65500")) == "ttrpc+tcp://127.0.0.1:65500"


def test_tcp_means_ttrpc_as_upstream() -> None:
    """Upstream's default address, tcp://127.0.0.1:65500, is ttrpc over TCP."""
    _, listener = serve("ttrpc+tcp://127.0.0.1:0")
    try:
        port = listener.address.rpartition(":")[2]
        with guest(f"tcp://127.0.0.1:{port}") as s:
            assert s.classify(IMAGE)[1] == IMAGE_NAME.format(op=3)
    finally:
        listener.stop(1)


def _status_error(status: str, message: str, details: Any = ()) -> CallError:
    error = CallError(status, f"Genop: {message}", code=errno.EREMOTEIO)
    error.details = details  # type: ignore[attr-defined]
    return error


@pytest.mark.parametrize(
    ("status", "message", "expected", "code"),
    [
        ("INTERNAL", "FFI error: 95", NotSupportedError, errno.ENOTSUP),
        ("INTERNAL", "FFI error: 22 [bad input (3)]", InvalidArgumentError, errno.EINVAL),
        ("INTERNAL", "FFI error: 71", BackendError, errno.EPROTO),
        ("INTERNAL", "Invalid argument: Invalid ID: 0", InvalidArgumentError, errno.EINVAL),
        ("INTERNAL", "Conversion failed: size", InvalidArgumentError, errno.EINVAL),
        ("INTERNAL", "Uninitialized object", BackendError, errno.EPROTO),
        ("NOT_FOUND", "Unknown session 3", NotFoundError, errno.ENOENT),
        ("INVALID_ARGUMENT", "No paths or blobs provided", InvalidArgumentError, errno.EINVAL),
        ("UNIMPLEMENTED", "method not found", NotSupportedError, errno.ENOTSUP),
    ],
)
def test_upstream_error_forms_map_to_our_exceptions(
    status: str, message: str, expected: type[VaccelError], code: int
) -> None:
    mapped = upstream_error(_status_error(status, message), "Genop", "sgemm", "unix:///a.sock")
    assert type(mapped) is expected and mapped.code == code
    assert mapped.message.startswith("sgemm: the upstream vAccel agent at unix:///a.sock (Genop)")
    assert message in mapped.message


def test_the_vaccel_error_detail_wins_when_the_channel_gives_it() -> None:
    """The detail (``vaccel.Error``) is read when a CallError carries ``details``; otherwise
    the errno comes from the message text, which upstream's agent always sets."""
    pb = upstream().vaccel
    detail = pb.Error(type=0, ffi_error=errno.ENOTSUP).SerializeToString()
    error = _status_error(
        "INTERNAL", "something else", [("type.googleapis.com/vaccel.ProtoError", detail)]
    )
    mapped = upstream_error(error, "Genop", "classify", "vsock://2:2048")
    assert isinstance(mapped, NotSupportedError) and "ENOTSUP" in mapped.message


def test_malformed_args_get_upstream_error_forms(standin: tuple[StandInAgent, str]) -> None:
    """The stand-in answers lying sizes and empty buffers as upstream's agent does."""
    _, address = standin
    pb = upstream()
    channel = backend()._channel(address)
    session_id = pb.session.CreateResponse.FromString(
        channel.invoke(SERVICE_NAME, "CreateSession", Message(b""), 5).payload
    ).session_id
    cases = [
        (dict(buf=b"\x11", size=5, arg_type=pb.genop.UINT8), "Conversion failed"),
        (dict(buf=b"", size=0, arg_type=pb.genop.UINT8), "FFI error: 22"),
        (dict(buf=b"\x11\x00", size=2, arg_type=pb.genop.UINT8), "FFI error: 22"),
    ]
    for arg, text in cases:
        request = pb.genop.Request(session_id=session_id)
        request.read_args.add(**arg)
        with pytest.raises(CallError) as failed:
            channel.invoke(SERVICE_NAME, "Genop", Message(request.SerializeToString()), 5)
        assert failed.value.status == "INTERNAL" and text in failed.value.message
        assert isinstance(upstream_error(failed.value, "Genop", "x", address), InvalidArgumentError)


def test_agent_is_a_plain_ttrpc_server_to_the_guest(standin: tuple[StandInAgent, str]) -> None:
    """The guest's channel is our ttrpc client, used as a pipe (no tokens, no buffers)."""
    _, address = standin
    parsed = upstream_address(address)
    channel = get_registry().transport(parsed.scheme).connect(parsed, TransportOptions())
    try:
        assert type(channel).__name__ == "TtrpcChannel"
    finally:
        channel.close()
