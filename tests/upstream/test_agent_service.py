"""Upstream's ``vaccel.sync.agent.AgentService`` served by our real agent (agent/upstream/),
driven over ttrpc on its unix socket with requests built by hand from the generated upstream
messages; every failure is checked in upstream's form (status, ``vaccel.ProtoError`` detail).

Independent of tests/upstream/client.py (another engineer's upstream-style guest, which runs
the same agent from upstream's C layouts): this file is the agent side's own account of
sessions, ownership, resources, every genop op, malformed arguments and limits.
"""

from __future__ import annotations

import contextlib
import errno
import math
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("google.protobuf", reason="the upstream schema needs protobuf (remote extra)")

from tests.onnxruntime.ort_fixtures import DOG_NAMES, require_ort, require_weights, tag_name
from tests.remote.conftest import AgentProcess, start_agent, wait_until
from vaccel_core import Config, Session
from vaccel_core.proto.upstream import SERVICE_NAME, upstream

pytestmark = pytest.mark.timeout(120)

pb = upstream()
EINVAL, ENOENT, ENOMEM, ENOTSUP, EPERM = (
    errno.EINVAL,
    errno.ENOENT,
    errno.ENOMEM,
    errno.ENOTSUP,
    errno.EPERM,
)
DETAIL_URL = "type.googleapis.com/vaccel.ProtoError"
INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, INTERNAL = 3, 5, 8, 13
PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "photos"


# A guest: one ttrpc connection, framed by hand --------------------------------------------------
class Failed(Exception):
    """A failed call: ttrpc status code, message, and the ``vaccel.Error`` detail if any."""

    def __init__(self, code: int, message: str, details: list[tuple[str, bytes]]) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details
        self.error = None
        if details:
            assert [url for url, _ in details] == [DETAIL_URL], details
            self.error = pb.vaccel.Error.FromString(details[0][1])

    @property
    def form(self) -> tuple[int, str | None, int | None]:
        """(status code, error type name, ffi_error) for comparisons."""
        if self.error is None:
            return self.code, None, None
        kind = pb.vaccel.ErrorType.Name(self.error.type)
        return self.code, kind, self.error.ffi_error if self.error.HasField("ffi_error") else None


_HEADER = struct.Struct(">IIBB")


class Guest:
    """One upstream-style client connection (ttrpc Request frames, Response frames)."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.stream = 1

    def raw(self, method: str, payload: bytes, service: str = SERVICE_NAME) -> Any:
        """One call; the ttrpc Response message."""
        from vaccel_transports.ttrpc import wire

        body = wire.Request(service=service, method=method, payload=payload).SerializeToString()
        # A frame refused from its header: the answer waits, the rest is never read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.sock.sendall(_HEADER.pack(len(body), self.stream, 1, 0) + body)
        self.stream += 2
        length, _, kind, _ = _HEADER.unpack(self._read(_HEADER.size))
        assert kind == 2, f"frame type {kind}"
        return wire.Response.FromString(self._read(length))

    def call(self, method: str, msg: Any, reply_type: Any) -> Any:
        response = self.raw(method, msg.SerializeToString())
        if response.status.code:
            details = [(d.type_url, d.value) for d in response.status.details]
            raise Failed(response.status.code, response.status.message, details)
        return reply_type.FromString(response.payload)

    def _read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("the agent closed the connection")
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()

    # RPCs ------------------------------------------------------------------------------------
    def create(self, flags: int = 0) -> int:
        reply = self.call("CreateSession", pb.session.CreateRequest(flags=flags), CreateResponse)
        return int(reply.session_id)

    def destroy(self, session_id: int) -> None:
        self.call("DestroySession", pb.session.DestroyRequest(session_id=session_id), Empty)

    def register(self, session_id: int, files: dict[str, bytes], rtype: int = 2) -> int:
        blobs = [pb.resource.Blob(name=n, data=d, size=len(d)) for n, d in files.items()]
        request = pb.resource.RegisterRequest(
            session_id=session_id, blobs=blobs, resource_type=rtype
        )
        return int(self.call("RegisterResource", request, pb.resource.RegisterResponse).resource_id)

    def genop(self, session_id: int, read: list[Any], write: list[Any] = ()) -> list[bytes]:
        request = pb.genop.Request(session_id=session_id, read_args=read, write_args=list(write))
        reply = self.call("Genop", request, pb.genop.Response)
        return [bytes(a.buf) for a in reply.write_args]


CreateResponse = pb.session.CreateResponse
Empty = pb.empty.Empty


def expect_failure(call: Any, form: tuple[int, str | None, int | None]) -> Failed:
    with pytest.raises(Failed) as info:
        call()
    assert info.value.form == form, f"{info.value} {info.value.error}"
    return info.value


def ffi(code: int) -> tuple[int, str, int]:
    return INTERNAL, "FFI", code


# Typed args, as upstream's vaccel_arg_array_add_* make them ---------------------------------------
T = pb.genop.ArgType


def arg(buf: bytes, arg_type: int, size: int | None = None) -> Any:
    return pb.genop.Arg(buf=buf, size=len(buf) if size is None else size, arg_type=arg_type)


def op(number: int) -> Any:
    return arg(bytes([number]), T.UINT8)


def i64(value: int) -> Any:
    return arg(struct.pack("<q", value), T.INT64)


def f32(value: float) -> Any:
    return arg(struct.pack("<f", value), T.FLOAT32)


def floats(values: np.ndarray) -> Any:
    return arg(np.ascontiguousarray(values, dtype="<f4").tobytes(), T.FLOAT32_ARRAY)


def string(text: str) -> Any:
    return arg(text.encode() + b"\0", T.STRING)


def uchars(size: int, fill: int = 0) -> Any:
    return arg(bytes([fill]) * size, T.UCHAR_ARRAY)


def raw(data: bytes) -> Any:
    return arg(data, T.RAW)


def sgemm_args(
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
    alpha: float,
    beta: float,
    *,
    lda: int | None = None,
    ldc: int | None = None,
) -> tuple[list[Any], list[Any]]:
    """sgemm's layout (blas.c): m, n, k, alpha, a, lda, b, ldb, beta, ldc; write c."""
    m, k = a.shape
    n = b.shape[1]
    lda = lda or k
    ldc = ldc or n
    a_flat = np.zeros((m, lda), np.float32)
    a_flat[:, :k] = a
    c_flat = np.full((m, ldc), -7.0, np.float32)
    c_flat[:, :n] = c
    read = [
        op(17),
        i64(m),
        i64(n),
        i64(k),
        f32(alpha),
        floats(a_flat),
        i64(lda),
        floats(b),
        i64(n),
        f32(beta),
        i64(ldc),
    ]
    return read, [floats(c_flat)]


def text_of(buf: bytes) -> str:
    return buf.split(b"\0", 1)[0].decode()


# Agents -------------------------------------------------------------------------------------------
def _agent(factory: pytest.TempPathFactory, env: dict[str, str], *args: str) -> AgentProcess:
    sock = factory.mktemp("up") / "a.sock"
    return start_agent([f"unix://{sock}"], env=env, args=list(args))


def socket_of(agent: AgentProcess) -> str:
    return agent.addresses[0][len("unix://") :]


@pytest.fixture(scope="module")
def noop_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """The noop backend (every operation, dummy results), with profiling on."""
    env = {"VACCEL_PLUGINS": "noop", "VACCEL_PROFILING_ENABLED": "1"}
    handle = _agent(tmp_path_factory, env, "--max-sessions", "4")
    yield handle
    assert handle.stop() == 0, handle.log


@pytest.fixture(scope="module")
def ort_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """The onnxruntime backend only: classify, sgemm, minmax, models; nothing else."""
    require_ort()
    require_weights()
    from vaccel_plugins.onnxruntime import models

    cache = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VACCEL_CACHE_DIR", str(cache))
        models.ensure_model(models.DEFAULT_MODEL, quiet=True)
    env = {"VACCEL_PLUGINS": "onnxruntime", "VACCEL_CACHE_DIR": str(cache)}
    handle = _agent(tmp_path_factory, env)
    yield handle
    assert handle.stop() == 0, handle.log


@pytest.fixture
def guest(noop_agent: AgentProcess) -> Iterator[Guest]:
    g = Guest(socket_of(noop_agent))
    yield g
    g.close()


@pytest.fixture
def session(guest: Guest) -> int:
    return guest.create()


def held(agent: AgentProcess) -> tuple[int, int]:
    """(sessions, resources) the whole agent holds (the operator's view)."""
    observer = agent.observer()
    try:
        status = observer.status()
        return int(status.sessions), int(status.resources)
    finally:
        observer.close()


# Sessions and ownership ---------------------------------------------------------------------------
def test_sessions_are_created_updated_and_destroyed(guest: Guest) -> None:
    session_id = guest.create(flags=0)
    assert session_id > 0
    update = pb.session.UpdateRequest(session_id=session_id, flags=0x100)  # DEBUG: noop
    guest.call("UpdateSession", update, Empty)
    assert guest.genop(session_id, [op(3), arg(b"img", T.BUFFER)], [uchars(8), uchars(8)])
    guest.destroy(session_id)
    expect_failure(lambda: guest.destroy(session_id), (NOT_FOUND, None, None))
    err = expect_failure(lambda: guest.destroy(0), (INTERNAL, "INVALID_ARGUMENT", None))
    assert err.message == "Invalid argument: Invalid ID: 0"
    assert err.error.status.message == "Invalid ID: 0"
    err = expect_failure(lambda: guest.genop(424242, [op(17)]), (NOT_FOUND, None, None))
    assert err.message == "Unknown session 424242"


def test_sessions_belong_to_their_connection(noop_agent: AgentProcess) -> None:
    alice, mallory = Guest(socket_of(noop_agent)), Guest(socket_of(noop_agent))
    try:
        session_id = alice.create()
        model = alice.register(session_id, {"model.bin": b"weights"})
        not_found = (NOT_FOUND, None, None)
        image = pb.image.Request(session_id=session_id, image=b"img")
        for call in (
            lambda: mallory.destroy(session_id),
            lambda: mallory.genop(session_id, [op(3), arg(b"i", T.BUFFER)], [uchars(4)] * 2),
            lambda: mallory.call("ImageClassification", image, pb.image.Response),
            lambda: mallory.register(session_id, {"x": b"y"}),
            lambda: mallory.call(
                "SyncResource", pb.resource.SyncRequest(resource_id=model), pb.resource.SyncResponse
            ),
            lambda: mallory.call(
                "UnregisterResource",
                pb.resource.UnregisterRequest(resource_id=model, session_id=session_id),
                Empty,
            ),
        ):
            expect_failure(call, not_found)
        # Nothing a stranger did touched them.
        alice.call("ImageClassification", image, pb.image.Response)
        synced = alice.call(
            "SyncResource", pb.resource.SyncRequest(resource_id=model), pb.resource.SyncResponse
        )
        assert [b.data for b in synced.blobs] == [b"weights"]
    finally:
        alice.close()
        mallory.close()


def test_a_disconnect_releases_the_clients_sessions_and_resources(
    noop_agent: AgentProcess,
) -> None:
    before = held(noop_agent)
    g = Guest(socket_of(noop_agent))
    sessions = [g.create() for _ in range(3)]
    g.register(sessions[0], {"a.bin": b"a" * 1000, "b.bin": b"b"})
    g.register(sessions[1], {"c.bin": b"c"}, rtype=1)
    assert held(noop_agent) == (before[0] + 3, before[1] + 2)
    g.close()
    wait_until(lambda: held(noop_agent) == before, what="the client's state released")


def test_session_limit_is_upstream_form_with_enomem(noop_agent: AgentProcess) -> None:
    g = Guest(socket_of(noop_agent))  # --max-sessions 4
    try:
        for _ in range(4):
            g.create()
        err = expect_failure(g.create, (RESOURCE_EXHAUSTED, "FFI", ENOMEM))
        assert "--max-sessions" in err.message
    finally:
        g.close()


# Resources ----------------------------------------------------------------------------------------
def test_resources_register_sync_reregister_unregister(guest: Guest, session: int) -> None:
    files = {"model.onnx": b"\x08\x07 model", "labels.txt": b"cat\ndog\n"}
    rid = guest.register(session, files)
    sync = pb.resource.SyncRequest(resource_id=rid)
    reply = guest.call("SyncResource", sync, pb.resource.SyncResponse)
    assert [(b.data, b.size) for b in reply.blobs] == [(d, len(d)) for d in files.values()]
    # Registered again with another session: the same id works there.
    other = guest.create()
    again = pb.resource.RegisterRequest(session_id=other, resource_id=rid)
    assert guest.call("RegisterResource", again, pb.resource.RegisterResponse).resource_id == rid
    assert guest.call("RegisterResource", again, pb.resource.RegisterResponse).resource_id == rid
    guest.call(
        "TensorflowModelLoad",
        pb.tf.ModelLoadRequest(session_id=other, model_id=rid),
        pb.tf.ModelLoadResponse,
    )
    unregister = pb.resource.UnregisterRequest
    guest.call("UnregisterResource", unregister(resource_id=rid, session_id=session), Empty)
    expect_failure(
        lambda: guest.call(
            "UnregisterResource", unregister(resource_id=rid, session_id=session), Empty
        ),
        ffi(EINVAL),  # known (the other session holds it), not registered with this one
    )
    assert (
        guest.call("SyncResource", sync, pb.resource.SyncResponse).blobs[0].data
        == files["model.onnx"]
    )
    guest.call("UnregisterResource", unregister(resource_id=rid, session_id=other), Empty)
    err = expect_failure(
        lambda: guest.call("SyncResource", sync, pb.resource.SyncResponse), (NOT_FOUND, None, None)
    )
    assert err.message == f"Unknown resource {rid}"
    expect_failure(
        lambda: guest.call(
            "RegisterResource",
            pb.resource.RegisterRequest(session_id=session, resource_id=rid),
            pb.resource.RegisterResponse,
        ),
        (NOT_FOUND, None, None),
    )


@pytest.mark.parametrize(
    ("request_fields", "form"),
    [
        ({"paths": ["/etc/shadow"]}, ffi(ENOTSUP)),  # a host path: never opened
        ({}, (INVALID_ARGUMENT, None, None)),  # "No paths or blobs provided"
        ({"blobs": [{"name": "empty.bin", "data": b""}]}, ffi(EINVAL)),
        ({"blobs": [{"name": "../escape", "data": b"x"}]}, ffi(EINVAL)),
        ({"blobs": [{"name": "", "data": b"x"}]}, ffi(EINVAL)),
        ({"blobs": [{"name": "a", "data": b"x"}, {"name": "a", "data": b"y"}]}, ffi(EINVAL)),
        ({"blobs": [{"name": "a", "data": b"x", "type_": 7}]}, ffi(EINVAL)),
        ({"blobs": [{"name": "a", "data": b"x"}], "resource_type": 9}, ffi(EINVAL)),
        ({"resource_id": -3}, (INTERNAL, "INVALID_ARGUMENT", None)),
        ({"resource_id": 987654}, (NOT_FOUND, None, None)),
    ],
)
def test_resource_refusals(
    guest: Guest, session: int, request_fields: dict[str, Any], form: tuple[Any, ...]
) -> None:
    request = pb.resource.RegisterRequest(session_id=session, **request_fields)
    expect_failure(
        lambda: guest.call("RegisterResource", request, pb.resource.RegisterResponse), form
    )


# Genop: the image ops, truncation and fill --------------------------------------------------------
def test_image_ops_write_imgname_then_text_truncated_as_snprintf(
    guest: Guest, session: int
) -> None:
    img = arg(b"\xff\xd8 not really a jpeg", T.BUFFER)
    imgname, text = guest.genop(session, [op(3), img], [uchars(64), uchars(10, fill=0xEE)])
    assert text_of(imgname) == "This is a dummy imgname!"
    assert text == b"This is a\0"  # 9 bytes and NUL, as snprintf into 10
    # What the text does not cover keeps the guest's bytes (upstream writes in place).
    _, text = guest.genop(session, [op(3), img], [uchars(4), uchars(64, fill=0xEE)])
    tag = b"This is a dummy classification tag!"
    assert text == tag + b"\0" + b"\xee" * (64 - len(tag) - 1)
    for number in (4, 5, 6, 7):  # detect, segment, pose, depth: out_imgname only
        (name,) = guest.genop(session, [op(number), img], [uchars(32)])
        assert text_of(name) == "This is a dummy imgname!"
        expect_failure(
            lambda n=number: guest.genop(session, [op(n), img], [uchars(8)] * 2), ffi(EINVAL)
        )


def test_image_classification_rpc_answers_1024_bytes_of_tags(guest: Guest, session: int) -> None:
    reply = guest.call(
        "ImageClassification", pb.image.Request(session_id=session, image=b"img"), pb.image.Response
    )
    assert len(reply.tags) == 1024
    assert text_of(reply.tags) == "This is a dummy classification tag!"
    expect_failure(
        lambda: guest.call(
            "ImageClassification", pb.image.Request(session_id=session), pb.image.Response
        ),
        ffi(EINVAL),  # no image
    )


def test_noop_is_rejected_as_upstreams_genop_does(guest: Guest, session: int) -> None:
    expect_failure(lambda: guest.genop(session, [op(0)]), ffi(EINVAL))


def test_exec_and_exec_with_resource(guest: Guest, session: int) -> None:
    read = [op(1), string("libmytestlib.so"), string("mytestfunc"), raw(b"\x01\0\0\0")]
    out = guest.genop(session, read, [raw(b"\xff" * 8), raw(b"\xff" * 3)])
    assert out == [bytes(8), bytes(3)]  # our noop: zero-filled outputs of the asked sizes
    lib = guest.register(session, {"libmytestlib.so": b"\x7fELF"}, rtype=0)
    out = guest.genop(session, [op(2), i64(lib), string("mytestfunc"), raw(b"x")], [raw(b"zz")])
    assert out == [bytes(2)]
    model = guest.register(session, {"m.bin": b"m"}, rtype=2)
    other = guest.create()
    elsewhere = guest.register(other, {"lib2.so": b"\x7fELF2"}, rtype=0)
    for resource_id, code in ((model, EINVAL), (987654, ENOENT), (elsewhere, EPERM)):
        expect_failure(
            lambda r=resource_id: guest.genop(session, [op(2), i64(r), string("f")]), ffi(code)
        )


def test_fpga_and_minmax_layouts_are_bounds_checked(guest: Guest, session: int) -> None:
    a = np.arange(4, dtype="<f4")
    vector = arg(a.tobytes(), T.RAW)
    assert guest.genop(
        session, [op(18), arg(np.arange(3, dtype="<i4").tobytes(), T.RAW)], [raw(bytes(12))]
    ) == [bytes(12)]
    assert len(guest.genop(session, [op(19), vector, vector], [raw(bytes(16))])[0]) == 16
    assert len(guest.genop(session, [op(20), vector, vector], [raw(bytes(16))] * 2)) == 2
    assert len(guest.genop(session, [op(21), vector, vector], [raw(bytes(16))])[0]) == 16
    small = [raw(bytes(8))]
    for read, write in (
        ([op(18), arg(bytes(12), T.RAW)], small),  # the copy needs 12 bytes
        ([op(19), arg(bytes(12), T.RAW), vector], [raw(bytes(12))]),  # 3 floats: not square
        ([op(21), vector, arg(bytes(8), T.RAW)], [raw(bytes(16))]),  # b shorter than a
        ([op(20), vector, vector], [raw(bytes(16)), raw(bytes(8))]),
    ):
        expect_failure(lambda r=read, w=write: guest.genop(session, r, w), ffi(EINVAL))
    data = arg(np.array([3.0, -1.0, 8.0], "<f8").tobytes(), T.RAW)
    ints = [arg(struct.pack("<i", v), T.RAW) for v in (3, 0, 5)]
    outputs = [raw(bytes(24)), raw(bytes(8)), raw(bytes(8))]
    assert [len(b) for b in guest.genop(session, [op(22), data, *ints], outputs)] == [24, 8, 8]
    too_many = [arg(struct.pack("<i", 4), T.RAW), *ints[1:]]
    expect_failure(lambda: guest.genop(session, [op(22), data, *too_many], outputs), ffi(EINVAL))


def test_opencv_passes_its_args_through(guest: Guest, session: int) -> None:
    out = guest.genop(session, [op(23), raw(b"\x01"), raw(b"abc")], [raw(b"\x09" * 8)])
    assert out == [b"\x09" * 8]  # the noop backend returns empty outputs: nothing written


# Genop: malformed args --------------------------------------------------------------------------
SGEMM_OK = sgemm_args(
    np.ones((2, 3), np.float32), np.ones((3, 2), np.float32), np.zeros((2, 2), np.float32), 1.0, 0.0
)


def _sgemm_with(read_changes: dict[int, Any] = {}, write: list[Any] | None = None) -> Any:  # noqa: B006
    read = list(SGEMM_OK[0])
    for index, value in sorted(read_changes.items(), reverse=True):
        if value is None:
            del read[index]
        else:
            read[index] = value
    return read, SGEMM_OK[1] if write is None else write


CONVERSION = (INTERNAL, "CONVERSION_FAILED", None)
MALFORMED = {
    "no op type": (([], []), ffi(EINVAL)),
    "op type as INT8": (([arg(b"\x11", T.INT8)], []), ffi(EINVAL)),
    "op type of two bytes": (([arg(b"\x11\x00", T.UINT8)], []), ffi(EINVAL)),
    "op 24 (past the last)": (([op(24)], []), ffi(EINVAL)),
    "op 255": (([op(255)], []), ffi(EINVAL)),
    "TF load by genop": (([op(8)], []), ffi(ENOTSUP)),
    "torch sgemm by genop": (([op(16)], []), ffi(ENOTSUP)),
    "sgemm with 9 read args": (_sgemm_with({10: None}), ffi(EINVAL)),
    "sgemm with no write arg": (_sgemm_with(write=[]), ffi(EINVAL)),
    "sgemm m as INT32": (_sgemm_with({1: arg(struct.pack("<i", 2), T.INT32)}), ffi(EINVAL)),
    "sgemm a as FLOAT64_ARRAY": (_sgemm_with({5: arg(bytes(48), T.FLOAT64_ARRAY)}), ffi(EINVAL)),
    "sgemm a of 5 bytes": (_sgemm_with({5: arg(bytes(5), T.FLOAT32_ARRAY)}), ffi(EINVAL)),
    "sgemm a shorter than m x k": (_sgemm_with({5: floats(np.ones(5))}), ffi(EINVAL)),
    "sgemm m of 1000 (arrays too short)": (_sgemm_with({1: i64(1000)}), ffi(EINVAL)),
    "sgemm negative k": (_sgemm_with({3: i64(-3)}), ffi(EINVAL)),
    "sgemm lda below k": (_sgemm_with({6: i64(1)}), ffi(EINVAL)),
    "sgemm c too short": (_sgemm_with(write=[floats(np.zeros(3))]), ffi(EINVAL)),
    "a lying size": (_sgemm_with({5: arg(bytes(24), T.FLOAT32_ARRAY, size=4096)}), CONVERSION),
    "a size of 0 with bytes": (_sgemm_with({1: arg(bytes(8), T.INT64, size=0)}), CONVERSION),
    "an empty arg": (_sgemm_with({2: arg(b"", T.INT64)}), ffi(EINVAL)),
    "a write arg claiming 3 GiB": (
        _sgemm_with(write=[arg(b"", T.FLOAT32_ARRAY, size=3 << 30)]),
        CONVERSION,
    ),
    "unknown arg type": (_sgemm_with({1: arg(struct.pack("<q", 2), 99)}), ffi(EINVAL)),
    "classify without out_text": (([op(3), arg(b"i", T.BUFFER)], [uchars(8)]), ffi(EINVAL)),
    "classify image as RAW": (([op(3), raw(b"i")], [uchars(8)] * 2), ffi(EINVAL)),
    "classify out_text as CHAR_ARRAY": (
        ([op(3), arg(b"i", T.BUFFER)], [uchars(8), arg(bytes(8), T.CHAR_ARRAY)]),
        ffi(EINVAL),
    ),
    "exec without fn_symbol": (([op(1), string("lib.so")], []), ffi(EINVAL)),
    "exec library not NUL-terminated": (
        ([op(1), arg(b"lib", T.STRING), string("f")], []),
        ffi(EINVAL),
    ),
    "exec library not UTF-8": (([op(1), arg(b"\xff\0", T.STRING), string("f")], []), ffi(EINVAL)),
    "minmax int of 2 bytes": (
        ([op(22), raw(bytes(8)), raw(b"\1\0"), raw(bytes(4)), raw(bytes(4))], [raw(bytes(8))] * 3),
        ffi(EINVAL),
    ),
    "minmax ndata 0": (
        ([op(22), raw(bytes(8)), raw(bytes(4)), raw(bytes(4)), raw(bytes(4))], [raw(bytes(8))] * 3),
        ffi(EINVAL),
    ),
    "bool arg of 2": (([op(1), string("l"), string("f"), arg(b"\x02", T.BOOL)], []), None),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_genop_args_get_upstreams_codes(guest: Guest, session: int, case: str) -> None:
    (read, write), form = MALFORMED[case]
    if form is None:  # exec hands extra args to the backend unread: upstream accepts them too
        guest.genop(session, read, write)
    else:
        expect_failure(lambda: guest.genop(session, read, write), form)
    # The agent and the session go on.
    assert guest.genop(session, *SGEMM_OK)[0]


def test_huge_counts_are_refused_before_parsing(guest: Guest, session: int) -> None:
    many = [raw(b"x")] * 1025
    expect_failure(lambda: guest.genop(session, [op(23), *many]), ffi(EINVAL))
    # 70 000 empty args: 140 KB on the wire, millions of bytes as parsed messages.
    request = pb.genop.Request(session_id=session)
    payload = request.SerializeToString() + b"\x12\x00" * 70_000
    response = guest.raw("Genop", payload)
    assert response.status.code == INTERNAL
    error = pb.vaccel.Error.FromString(response.status.details[0].value)
    assert error.ffi_error == EINVAL and "more than" in response.status.message
    assert guest.genop(session, *SGEMM_OK)[0]


def test_unparseable_requests_and_unknown_methods(guest: Guest, session: int) -> None:
    response = guest.raw("Genop", b"\x0a\xff\xff\xff\xff\x0f")  # a length past the end
    assert response.status.code == INVALID_ARGUMENT
    assert not response.status.details
    response = guest.raw("Frobnicate", b"")
    assert response.status.code == INVALID_ARGUMENT
    assert response.status.message == f"/{SERVICE_NAME}/Frobnicate does not exist"


# Limits -------------------------------------------------------------------------------------------
def test_limits_bound_upstream_requests(tmp_path_factory: pytest.TempPathFactory) -> None:
    agent = _agent(
        tmp_path_factory,
        {"VACCEL_PLUGINS": "noop"},
        "--max-message-size",
        "1M",
        "--max-client-inflight-bytes",
        "2M",
        "--max-blob-size",
        "4K",
        "--max-resource-files",
        "2",
    )
    g = Guest(socket_of(agent))
    try:
        session_id = g.create()
        # Write args come back in the reply: 700 KB of them is held twice more, over 2M.
        read, _ = SGEMM_OK
        big = floats(np.zeros(175_000))
        err = expect_failure(
            lambda: g.genop(session_id, read, [big]), (RESOURCE_EXHAUSTED, "FFI", ENOMEM)
        )
        assert "--max-client-inflight-bytes" in err.message
        # A file over --max-blob-size.
        err = expect_failure(
            lambda: g.register(session_id, {"big.bin": bytes(5000)}),
            (RESOURCE_EXHAUSTED, "FFI", ENOMEM),
        )
        assert "--max-blob-size" in err.message
        three = {"a": b"1", "b": b"2", "c": b"3"}
        err = expect_failure(
            lambda: g.register(session_id, three), (RESOURCE_EXHAUSTED, "FFI", ENOMEM)
        )
        assert "--max-resource-files" in err.message
        # A request over --max-message-size never reaches the service (the transport says so).
        huge = pb.genop.Request(session_id=session_id, read_args=[op(23), raw(bytes(2 << 20))])
        response = g.raw("Genop", huge.SerializeToString())
        assert response.status.code == RESOURCE_EXHAUSTED
    finally:
        g.close()
        assert agent.stop() == 0, agent.log


# Models and profiling -----------------------------------------------------------------------------
def test_model_rpcs_map_to_the_catalog(guest: Guest, session: int) -> None:
    model = guest.register(session, {"model.pb": b"graph"})
    tensor = pb.tf.Tensor(data=np.ones((2, 2), "<f4").tobytes(), dims=[2, 2], type=1)
    run = pb.tf.ModelRunRequest(
        session_id=session,
        model_id=model,
        in_nodes=[pb.tf.Node(name="x", id=0)],
        out_nodes=[pb.tf.Node(name="y", id=0)],
        in_tensors=[tensor],
    )
    guest.call(
        "TensorflowModelLoad",
        pb.tf.ModelLoadRequest(session_id=session, model_id=model),
        pb.tf.ModelLoadResponse,
    )
    reply = guest.call("TensorflowModelRun", run, pb.tf.ModelRunResponse)
    assert [list(t.dims) for t in reply.out_tensors] == [[1]] and reply.status.code == 0
    bad = pb.tf.Tensor(data=b"\0" * 15, dims=[2, 2], type=1)
    run.in_tensors[0].CopyFrom(bad)
    expect_failure(
        lambda: guest.call("TensorflowModelRun", run, pb.tf.ModelRunResponse),
        (INTERNAL, "INVALID_ARGUMENT", None),
    )
    lite = pb.tflite.ModelRunRequest(
        session_id=session,
        model_id=model,
        in_tensors=[pb.tflite.Tensor(data=bytes(12), dims=[3], type=3)],
        nr_out_tensors=1,
    )
    guest.call(
        "TensorflowLiteModelLoad",
        pb.tflite.ModelLoadRequest(session_id=session, model_id=model),
        Empty,
    )
    out = guest.call("TensorflowLiteModelRun", lite, pb.tflite.ModelRunResponse).out_tensors
    assert [(list(t.dims), t.type) for t in out] == [([3], 3)]
    torch = pb.torch.ModelRunRequest(
        session_id=session,
        model_id=model,
        in_tensors=[pb.torch.Tensor(data=bytes(8), dims=[2], type=7)],
        nr_out_tensors=0,
    )
    assert not guest.call("TorchModelRun", torch, pb.torch.ModelRunResponse).out_tensors
    err = expect_failure(
        lambda: guest.call(
            "TorchModelLoad", pb.torch.ModelLoadRequest(session_id=session, model_id=424242), Empty
        ),
        (NOT_FOUND, None, None),
    )
    assert err.message == "Unknown PyTorch model 424242"


def test_get_profiler_returns_the_sessions_regions(guest: Guest, session: int) -> None:
    for _ in range(3):
        guest.genop(session, *SGEMM_OK)
    reply = guest.call(
        "GetProfiler", pb.profiling.Request(session_id=session), pb.profiling.Response
    )
    assert reply.profiler.component_name == "vaccel-rpc-agent"
    samples = reply.profiler.regions["blas_sgemm"].samples
    assert len(samples) == 3 and all(s.time > 0 for s in samples)
    # Another client's (or no) session: an empty answer, as upstream's for a session it has
    # no profile of.
    empty = guest.call("GetProfiler", pb.profiling.Request(session_id=12345), pb.profiling.Response)
    assert not empty.HasField("profiler")


# With the onnxruntime backend --------------------------------------------------------------------
def test_classify_gives_our_clients_tags(ort_agent: AgentProcess) -> None:
    image = (PHOTOS / "dog.jpg").read_bytes()
    with Session(config=Config(plugins=["rpc"], rpc_address=ort_agent.addresses[0])) as ours:
        tags, _ = ours.classify(image)
    g = Guest(socket_of(ort_agent))
    try:
        session_id = g.create()
        reply = g.call(
            "ImageClassification",
            pb.image.Request(session_id=session_id, image=image),
            pb.image.Response,
        )
        assert text_of(reply.tags) == tags
        imgname, text = g.genop(
            session_id, [op(3), arg(image, T.BUFFER)], [uchars(256), uchars(256)]
        )
        assert text_of(text) == tags
        assert tag_name(tags) in DOG_NAMES
        assert imgname[0] == 0 or text_of(imgname)  # whatever name the backend gives
    finally:
        g.close()


def test_sgemm_matches_numpy(ort_agent: AgentProcess) -> None:
    rng = np.random.default_rng(11)
    a = rng.standard_normal((5, 7)).astype(np.float32)
    b = rng.standard_normal((7, 3)).astype(np.float32)
    c = rng.standard_normal((5, 3)).astype(np.float32)
    g = Guest(socket_of(ort_agent))
    try:
        session_id = g.create()
        read, write = sgemm_args(a, b, c, 1.5, 0.5, lda=9, ldc=4)
        (out,) = g.genop(session_id, read, write)
        got = np.frombuffer(out, "<f4").reshape(5, 4)
        np.testing.assert_allclose(got[:, :3], 1.5 * a @ b + 0.5 * c, rtol=1e-5, atol=1e-5)
        assert (got[:, 3] == -7.0).all(), "the padding between rows keeps the guest's values"
        # minmax on the same backend, and what it does not implement.
        data = np.array([4.0, -2.0, 9.5, 1.0])
        outputs = [raw(bytes(32)), raw(bytes(8)), raw(bytes(8))]
        ints = [arg(struct.pack("<i", v), T.RAW) for v in (4, 0, 5)]
        clipped, low, high = g.genop(
            session_id, [op(22), arg(data.tobytes(), T.RAW), *ints], outputs
        )
        assert np.frombuffer(clipped, "<f8").tolist() == np.clip(data, 0, 5).tolist()
        assert (struct.unpack("<d", low)[0], struct.unpack("<d", high)[0]) == (-2.0, 9.5)
        vector = raw(np.ones(4, "<f4").tobytes())
        for read_args, write_args in (
            ([op(21), vector, vector], [raw(bytes(16))]),
            ([op(1), string("lib.so"), string("f")], []),
            ([op(4), arg(b"img", T.BUFFER)], [uchars(8)]),
        ):
            expect_failure(
                lambda r=read_args, w=write_args: g.genop(session_id, r, w), ffi(ENOTSUP)
            )
        model = g.register(session_id, {"model.pt": b"torch"})
        expect_failure(
            lambda: g.call(
                "TorchModelLoad",
                pb.torch.ModelLoadRequest(session_id=session_id, model_id=model),
                Empty,
            ),
            ffi(ENOTSUP),
        )
        expect_failure(
            lambda: g.call(
                "TensorflowModelLoad",
                pb.tf.ModelLoadRequest(session_id=session_id, model_id=model),
                pb.tf.ModelLoadResponse,
            ),
            (INTERNAL, "FFI_WITH_STATUS", ENOTSUP),
        )
        assert math.isfinite(float(got[0, 0]))
    finally:
        g.close()


# Never a crash ------------------------------------------------------------------------------------
def test_random_genop_args_never_crash_the_service() -> None:
    """Random op numbers, arg types, sizes (some lying) and counts, straight into the service
    (fixed seed): every call succeeds or fails in upstream's form, none with an agent bug."""
    import random

    from tests.remote.conftest import make_service
    from vaccel_core.transport import Peer, StatusError

    service = make_service()
    upstream_service = service.services[SERVICE_NAME]
    peer = Peer("client-fuzz")
    session_id = CreateResponse.FromString(upstream_service("CreateSession", b"", peer)).session_id
    rng = random.Random(11)

    def random_arg() -> Any:
        size = rng.choice([0, 1, 2, 4, 8, 12, 16, 33])
        data = bytes(rng.randrange(256) for _ in range(size))
        told = size if rng.random() < 0.95 else rng.randrange(100)
        return arg(data, rng.choice([0, 1, 5, 7, 9, 10, 17, 18, 20, 26, 27, 28, 29, 99]), told)

    try:
        for _ in range(3000):
            read = [
                op(rng.choice([*range(26), 255])),
                *(random_arg() for _ in range(rng.randrange(12))),
            ]
            write = [random_arg() for _ in range(rng.randrange(4))]
            request = pb.genop.Request(session_id=session_id, read_args=read, write_args=write)
            try:
                upstream_service("Genop", request.SerializeToString(), peer)
            except StatusError as exc:
                assert exc.code == INTERNAL, exc.message
                assert "unexpected" not in exc.message, exc.message
                assert [url for url, _ in exc.details] == [DETAIL_URL]
    finally:
        service.close()
