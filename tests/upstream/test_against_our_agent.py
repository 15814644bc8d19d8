"""An upstream-style guest (tests/upstream/client.py: written from upstream's schema and C arg
layouts) against our real agent, over unix and over the vsock path (``vsock://2:PORT`` routed to
the agent's socket by the hybrid-vsock stand-in of tests/remote/conftest.py).

Expected answers are upstream's (vaccel-rust 0.5.0 agent on vAccel 0.8):

* unknown session / resource / model: NOT_FOUND; a RegisterRequest with neither paths nor
  blobs: INVALID_ARGUMENT;
* what the C library refuses: INTERNAL with a ``vaccel.Error`` detail of type FFI and the
  errno-style code (EINVAL 22 for a malformed genop, ENOTSUP 95 for an operation nobody
  implements), FFI_WITH_STATUS for the TensorFlow calls;
* an ``Arg`` whose ``size`` is not its buffer's length: INTERNAL, detail CONVERSION_FAILED
  (checked before the C library sees the args, after the session lookup).

Where upstream's C would read or write out of bounds (sgemm dimensions larger than the arrays,
minmax's unchecked args) upstream has no answer; we expect EINVAL in its form.
"""

from __future__ import annotations

import contextlib
import errno
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("google.protobuf", reason="the upstream schema needs protobuf (remote extra)")

from tests.onnxruntime.ort_fixtures import (
    model_cache_folder,
    photo,
    require_weights,
    tag_name,
)
from tests.remote.conftest import HYBRID_VSOCK, AgentProcess, start_agent
from vaccel_core import Config, Session

from . import genop_args as ga
from .client import UpstreamClient
from .pipe import ChannelPipe, RawPipe, UpstreamError

pytestmark = pytest.mark.timeout(120)

EINVAL, ENOTSUP, EPERM = errno.EINVAL, errno.ENOTSUP, errno.EPERM


# Fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache with the classifier built when its weights are installed (classify tests
    skip otherwise; the others need only onnxruntime)."""
    return model_cache_folder(tmp_path_factory, weights_required=False)


@pytest.fixture(scope="module")
def agent(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """Our agent with the onnxruntime backend only (classify, sgemm, minmax; nothing else)."""
    sock = tmp_path_factory.mktemp("agent") / "agent.sock"
    env = {"VACCEL_PLUGINS": "onnxruntime", "VACCEL_CACHE_DIR": str(model_cache)}
    handle = start_agent([f"unix://{sock}"], env=env)
    yield handle
    assert handle.stop() == 0, handle.log


@pytest.fixture(params=["unix", "vsock"])
def address(
    request: pytest.FixtureRequest, agent: AgentProcess, monkeypatch: pytest.MonkeyPatch
) -> str:
    """Where a guest dials the agent: its unix socket, or ``vsock://2:PORT`` (hybrid vsock)."""
    path = agent.addresses[0][len("unix://") :]
    if request.param == "unix":
        return f"unix://{path}"
    from vaccel_transports.vsock import VsockTransport

    monkeypatch.setattr(
        VsockTransport,
        "open_stream",
        lambda _self, t, timeout: HYBRID_VSOCK.open_stream(t, timeout),
    )
    return f"vsock://2:{HYBRID_VSOCK.port_of(path)}"


def raw_client(address: str) -> UpstreamClient:
    if address.startswith("unix://"):
        return UpstreamClient(RawPipe.unix(address[len("unix://") :]))
    return UpstreamClient(RawPipe.vsock(address))


@pytest.fixture
def guest(address: str) -> Iterator[UpstreamClient]:
    """One upstream-style guest connection (its own client on the agent)."""
    with raw_client(address) as client:
        yield client


@pytest.fixture
def session(guest: UpstreamClient) -> Iterator[int]:
    session_id = guest.create_session()
    yield session_id
    with contextlib.suppress(UpstreamError):  # unless a test destroyed it
        guest.destroy_session(session_id)


@pytest.fixture
def ours(agent: AgentProcess) -> Iterator[Session]:
    """Our own client (rpc backend) on the same agent, for comparisons."""
    with Session(config=Config(plugins=["rpc"], rpc_address=agent.addresses[0])) as s:
        yield s


def expect(
    call: Callable[[], Any],
    status: str,
    error_type: str | None = None,
    ffi_error: int | None = None,
) -> UpstreamError:
    """Run ``call``; it must fail in upstream's form."""
    with pytest.raises(UpstreamError) as info:
        call()
    err = info.value
    got = (err.status, err.error_type, err.ffi_error)
    assert got == (status, error_type, ffi_error), (
        f"upstream answers {status} {error_type} {ffi_error}; got {err}"
    )
    return err


def still_serving(guest: UpstreamClient, session_id: int) -> None:
    """The agent answers a good call on the same connection after a bad one."""
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.ones((3, 2), dtype=np.float32)
    np.testing.assert_allclose(guest.sgemm(session_id, a, b, np.zeros((2, 2), np.float32)), a @ b)


# Sessions ----------------------------------------------------------------------------------------
def test_session_lifecycle(guest: UpstreamClient) -> None:
    first, second = guest.create_session(), guest.create_session(flags=0x1)
    assert first > 0 and second > 0 and first != second
    guest.update_session(first, 0x2)
    guest.destroy_session(first)
    expect(lambda: guest.destroy_session(first), "NOT_FOUND")
    expect(lambda: guest.update_session(first, 0), "NOT_FOUND")
    expect(lambda: guest.noop(first), "NOT_FOUND")
    guest.destroy_session(second)


def test_sessions_belong_to_their_connection(guest: UpstreamClient, address: str) -> None:
    """Upstream's agent shares sessions between connections; ours keeps a client's sessions
    its own (an upstream guest is as untrusted as ours): another guest gets upstream's
    NOT_FOUND for them."""
    mine = guest.create_session()
    with raw_client(address) as other:
        expect(lambda: other.destroy_session(mine), "NOT_FOUND")
        expect(lambda: other.genop(mine, [ga.op(ga.OpType.BLAS_SGEMM)], []), "NOT_FOUND")
    still_serving(guest, mine)
    guest.destroy_session(mine)


# Resources ---------------------------------------------------------------------------------------
def test_resource_from_blobs(guest: UpstreamClient, session: int) -> None:
    files = [("labels.txt", b"cat\ndog\n"), ("extra.bin", bytes(range(256)))]
    resource_id = guest.register_resource(session, files, "data")
    assert resource_id > 0
    synced = guest.sync_resource(resource_id)
    assert [bytes(b.data) for b in synced] == [data for _, data in files]
    assert [b.size for b in synced] == [len(data) for _, data in files]
    # An existing resource registers with another session of the guest by its id.
    other = guest.create_session()
    assert guest.register_resource(other, resource_id=resource_id) == resource_id
    guest.unregister_resource(resource_id, other)
    guest.destroy_session(other)
    guest.unregister_resource(resource_id, session)
    expect(lambda: guest.unregister_resource(resource_id, session), "NOT_FOUND")
    expect(lambda: guest.sync_resource(resource_id), "NOT_FOUND")


def test_resource_errors(guest: UpstreamClient, session: int) -> None:
    expect(lambda: guest.register_resource(session), "INVALID_ARGUMENT")
    expect(lambda: guest.register_resource(session, resource_id=987654), "NOT_FOUND")
    expect(lambda: guest.register_resource(987654, [("a", b"x")], "data"), "NOT_FOUND")
    expect(lambda: guest.unregister_resource(987654, session), "NOT_FOUND")
    still_serving(guest, session)


# Classify ----------------------------------------------------------------------------------------
def test_classify_rpc_gives_our_clients_tags(
    guest: UpstreamClient, session: int, ours: Session
) -> None:
    require_weights()
    image = photo("dog.jpg")
    tags = guest.image_classification(session, image)
    # Upstream's agent classifies into a 1024-byte buffer and sends all of it; its guest then
    # copies tags[..len] into the caller's buffer, which panics on a shorter reply.
    assert len(tags) == 1024
    text = ga.c_string(tags)
    assert text == ours.classify(image)[0]
    tag_name(text)


def test_classify_genop_gives_our_clients_tags(
    guest: UpstreamClient, session: int, ours: Session
) -> None:
    require_weights()
    image = photo("dog.jpg")
    text, name, out = guest.classify(session, image)
    assert (text, name) == ours.classify(image)
    assert [(a.size, len(a.buf), a.arg_type) for a in out] == [
        (512, 512, ga.arg_type("UCHAR_ARRAY"))
    ] * 2


def test_classify_genop_truncates_like_snprintf(
    guest: UpstreamClient, session: int, ours: Session
) -> None:
    """Write args keep the guest's sizes; a text longer than its buffer is cut to size-1
    bytes and a NUL, as upstream's plugins write it (snprintf)."""
    require_weights()
    image = photo("dog.jpg")
    tags, imgname = ours.classify(image)
    _text, _name, out = guest.classify(session, image, text_size=8, name_size=4)
    assert [len(a.buf) for a in out] == [4, 8]
    assert bytes(out[1].buf) == (tags.encode()[:7] + b"\0").ljust(8, b"\0")
    assert bytes(out[0].buf) == (imgname.encode()[:3] + b"\0").ljust(4, b"\0")


# Sgemm, minmax, noop -----------------------------------------------------------------------------
def test_sgemm_matches_numpy(guest: UpstreamClient, session: int) -> None:
    rng = np.random.default_rng(11)
    a = rng.standard_normal((3, 4), dtype=np.float32)
    b = rng.standard_normal((4, 5), dtype=np.float32)
    c = rng.standard_normal((3, 5), dtype=np.float32)
    got = guest.sgemm(session, a, b, c, alpha=2.0, beta=0.5)
    np.testing.assert_allclose(got, 2.0 * (a @ b) + 0.5 * c, rtol=1e-5, atol=1e-5)
    read, write = ga.sgemm_args(a, b, c, 1.0, 0.0)
    out = guest.genop(session, read, write)
    assert [(o.size, len(o.buf), o.arg_type) for o in out] == [
        (60, 60, ga.arg_type("FLOAT32_ARRAY"))
    ]


def test_minmax_matches_our_client(guest: UpstreamClient, session: int, ours: Session) -> None:
    data = np.array([5.0, -3.0, 12.5, 7.0, 0.25])
    got, low, high = guest.minmax(session, data, 0, 10)
    want, want_low, want_high = ours.minmax(data, 0, 10)
    np.testing.assert_allclose(got, want)
    assert (low, high) == (want_low, want_high) == (-3.0, 12.5)


def test_noop_is_rejected_as_upstream_does(guest: UpstreamClient, session: int) -> None:
    """vaccel_genop refuses op type 0 (``!op_type``) with EINVAL before any dispatch."""
    expect(lambda: guest.noop(session), "INTERNAL", "FFI", EINVAL)
    still_serving(guest, session)


# Unsupported operations --------------------------------------------------------------------------
UNDISPATCHED = sorted(set(ga.OpType) - ga.DISPATCHED)


@pytest.mark.parametrize("op_type", UNDISPATCHED, ids=[o.name for o in UNDISPATCHED])
def test_ops_genop_does_not_dispatch_are_enotsup(
    guest: UpstreamClient, session: int, op_type: ga.OpType
) -> None:
    """The TF/TFLite/Torch ops and torch sgemm have no genop unpack function: ENOTSUP."""
    expect(lambda: guest.genop(session, [ga.op(op_type)], []), "INTERNAL", "FFI", ENOTSUP)
    still_serving(guest, session)


def test_op_no_backend_implements_is_enotsup(guest: UpstreamClient, session: int) -> None:
    """Dispatched by genop, well formed, but onnxruntime implements neither: ENOTSUP."""
    read, write = ga.image_args(ga.OpType.IMAGE_DETECT, b"\xff\xd8 some image", 64)
    expect(lambda: guest.genop(session, read, write), "INTERNAL", "FFI", ENOTSUP)
    ints = ga.arg(np.arange(4, dtype="<i4").tobytes(), "INT32_ARRAY")
    arraycopy = [ga.op(ga.OpType.FPGA_ARRAYCOPY), ints]
    expect(lambda: guest.genop(session, arraycopy, [ints]), "INTERNAL", "FFI", ENOTSUP)
    still_serving(guest, session)


def test_model_rpcs_no_backend_implements(guest: UpstreamClient, session: int) -> None:
    """Torch and TFLite load: FFI ENOTSUP; TF load: FFI_WITH_STATUS ENOTSUP (vaccel-bindings);
    before that the C library wants a MODEL resource (EINVAL) registered with the session
    (EPERM); an unknown model: NOT_FOUND."""
    model = guest.register_resource(session, [("model.pt", b"not really a model")], "model")
    expect(lambda: guest.torch_model_load(session, model), "INTERNAL", "FFI", ENOTSUP)
    expect(lambda: guest.tflite_model_load(session, model), "INTERNAL", "FFI", ENOTSUP)
    expect(lambda: guest.tf_model_load(session, model), "INTERNAL", "FFI_WITH_STATUS", ENOTSUP)
    expect(lambda: guest.torch_model_load(session, 987654), "NOT_FOUND")
    data = guest.register_resource(session, [("labels.txt", b"cat")], "data")
    expect(lambda: guest.torch_model_load(session, data), "INTERNAL", "FFI", EINVAL)
    other = guest.create_session()
    expect(lambda: guest.torch_model_load(other, model), "INTERNAL", "FFI", EPERM)
    guest.destroy_session(other)
    guest.unregister_resource(data, session)
    guest.unregister_resource(model, session)
    still_serving(guest, session)


def test_get_profiler_answers(guest: UpstreamClient, session: int) -> None:
    guest.get_profiler(session)


# Malformed genop args ----------------------------------------------------------------------------
def _sgemm(**change: Any) -> tuple[list[Any], list[Any]]:
    a = np.ones((2, 3), np.float32)
    b = np.ones((3, 2), np.float32)
    read, write = ga.sgemm_args(a, b, np.zeros((2, 2), np.float32), 1.0, 0.0)
    for index, value in change.items():
        where, i = (read, int(index[1:])) if index[0] == "r" else (write, int(index[1:]))
        if value is None:
            del where[i]
        else:
            where[i] = value
    return read, write


def _classify(**change: Any) -> tuple[list[Any], list[Any]]:
    read, write = ga.classify_args(b"\xff\xd8 an image", 64, 64)
    for index, value in change.items():
        where, i = (read, int(index[1:])) if index[0] == "r" else (write, int(index[1:]))
        if value is None:
            del where[i]
        else:
            where[i] = value
    return read, write


def _lying(buf: bytes, type_name: str, size: int) -> Any:
    return ga.arg(buf, type_name, size=size)


def _odd_type(buf: bytes, number: int) -> Any:
    out = ga.arg(buf, "RAW")
    out.arg_type = number  # proto3 enums are open: any number travels
    return out


FFI_EINVAL = ("INTERNAL", "FFI", EINVAL)
CONVERSION = ("INTERNAL", "CONVERSION_FAILED", None)

MALFORMED: dict[str, tuple[tuple[list[Any], list[Any]], tuple[str, str | None, int | None]]] = {
    "no read args (missing op type)": (([], []), FFI_EINVAL),
    "op type as UINT32": (([ga.arg(struct.pack("<I", 17), "UINT32")], []), FFI_EINVAL),
    "op type as RAW": (([ga.arg(bytes([17]), "RAW")], []), FFI_EINVAL),
    "op type UINT8 of 2 bytes": (([ga.arg(b"\x11\x00", "UINT8")], []), FFI_EINVAL),
    "op type with no bytes": (([ga.arg(b"", "UINT8")], []), FFI_EINVAL),
    "op type of an unknown ArgType": (([_odd_type(bytes([17]), 99)], []), FFI_EINVAL),
    "op type 24 (VACCEL_OP_MAX)": (([ga.op(24)], []), FFI_EINVAL),
    "op type 255": (([ga.op(255)], []), FFI_EINVAL),
    "op type size says 4, buffer has 1": (([_lying(bytes([17]), "UINT8", 4)], []), CONVERSION),
    "op type size says 0, buffer has 1": (([_lying(bytes([17]), "UINT8", 0)], []), CONVERSION),
    "sgemm: a's size says more than its buffer": (
        _sgemm(r5=_lying(bytes(24), "FLOAT32_ARRAY", 1 << 20)),
        CONVERSION,
    ),
    "sgemm: c's size says less than its buffer": (
        _sgemm(w0=_lying(bytes(16), "FLOAT32_ARRAY", 8)),
        CONVERSION,
    ),
    "sgemm: ldc missing": (_sgemm(r10=None), FFI_EINVAL),
    "sgemm: an extra read arg": (
        (_sgemm()[0] + [ga.int64(1)], _sgemm()[1]),
        FFI_EINVAL,
    ),
    "sgemm: no write arg": (_sgemm(w0=None), FFI_EINVAL),
    "sgemm: m as INT32": (_sgemm(r1=ga.int32(2)), FFI_EINVAL),
    "sgemm: alpha as FLOAT64": (_sgemm(r4=ga.float64(1.0)), FFI_EINVAL),
    "sgemm: a as FLOAT64_ARRAY": (_sgemm(r5=ga.float64_array(np.ones(6))), FFI_EINVAL),
    "sgemm: a of 23 bytes": (_sgemm(r5=ga.arg(bytes(23), "FLOAT32_ARRAY")), FFI_EINVAL),
    "sgemm: a shorter than m*k": (_sgemm(r5=ga.float32_array(np.ones(5))), FFI_EINVAL),
    "sgemm: c shorter than m*n": (_sgemm(w0=ga.float32_array(np.ones(3))), FFI_EINVAL),
    "sgemm: negative m": (_sgemm(r1=ga.int64(-2)), FFI_EINVAL),
    "sgemm: huge k": (_sgemm(r3=ga.int64(1 << 62)), FFI_EINVAL),
    "classify: image as UCHAR_ARRAY": (_classify(r1=ga.uchar_array(16)), FFI_EINVAL),
    "classify: empty image": (_classify(r1=ga.buffer(b"")), FFI_EINVAL),
    "classify: one write arg": (_classify(w1=None), FFI_EINVAL),
    "classify: out_text as BUFFER": (_classify(w1=ga.buffer(bytes(64))), FFI_EINVAL),
    "classify: out_imgname as CHAR_ARRAY": (
        _classify(w0=ga.arg(bytes(64), "CHAR_ARRAY")),
        FFI_EINVAL,
    ),
    "noop with args": (([ga.op(0), ga.int64(1)], [ga.uchar_array(4)]), FFI_EINVAL),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_genop_args_get_upstreams_errors(
    guest: UpstreamClient, session: int, case: str
) -> None:
    (read, write), want = MALFORMED[case]
    expect(lambda: guest.genop(session, read, write), *want)
    still_serving(guest, session)


def test_a_malformed_genop_on_an_unknown_session_is_not_found(guest: UpstreamClient) -> None:
    """Upstream looks the session up before it converts any arg."""
    lying = [ga.arg(bytes([17]), "UINT8", size=4)]
    expect(lambda: guest.genop(987654, lying, []), "NOT_FOUND")


@pytest.mark.parametrize("method", ["Genop", "CreateSession", "RegisterResource"])
def test_a_payload_that_is_no_message_fails_and_the_agent_serves_on(
    guest: UpstreamClient, session: int, method: str
) -> None:
    """Bytes that do not parse as the request (ttrpc-rust's decoding error; its exact status
    is not asserted): a failed call, never a crash or a lost connection."""
    with pytest.raises(UpstreamError):
        guest.pipe.call(method, b"\x0a\xff\xff\xff\xff\x0f", guest.timeout)
    still_serving(guest, session)


# Our TtrpcChannel as the pipe --------------------------------------------------------------------
def test_over_our_ttrpc_channel(address: str) -> None:
    """The same calls with our TtrpcChannel as the pipe (unix, or the vsock transport's own
    connect): statuses come through; details are not visible there."""
    with UpstreamClient(ChannelPipe.connect(address)) as guest:
        session_id = guest.create_session()
        still_serving(guest, session_id)
        err = expect(lambda: guest.noop(session_id), "INTERNAL")
        assert err.details is None
        guest.destroy_session(session_id)
        expect(lambda: guest.destroy_session(session_id), "NOT_FOUND")
