"""Backend results are checked against the catalog: a wrong dtype, shape, type or count is a
BackendError naming the backend, the operation, what was expected and what was got."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from vaccel_core import Backend, PluginType, Session
from vaccel_core.errors import BackendError
from vaccel_core.ops import CATALOG, Op, check_result
from vaccel_plugins.noop import NoopBackend

from .helpers import make_registry, session


class WrongBackend(Backend):
    """Returns something the catalog does not describe for every operation it implements."""

    name = "wrong"
    type = PluginType.CPU

    def sgemm(self, session: Session, a: Any, b: Any, c: Any, alpha: float, beta: float) -> Any:
        return (a @ b).astype(np.float64)  # float64 instead of float32

    def fpga_vectoradd(self, session: Session, a: Any, b: Any) -> Any:
        return (a + b).reshape(1, -1)  # 2 dimensions instead of 1

    def classify(self, session: Session, image: bytes) -> Any:
        return "just the tags"  # a str instead of (tags, imgname)

    def minmax(self, session: Session, data: Any, low: int, high: int) -> Any:
        return np.clip(data, low, high), float(data.min())  # 2 results instead of 3

    def detect(self, session: Session, image: bytes) -> Any:
        return b"out.png"  # bytes instead of str

    def noop(self, session: Session) -> Any:
        return 0  # a result where there is none

    def fpga_parallel(self, session: Session, a: Any, b: Any) -> Any:
        return a + b, [1.0]  # second result is a list, not an array

    def pose(self, session: Session, image: bytes) -> Any:
        raise RuntimeError("device on fire")  # not a result problem: any exception

    def exec(self, session: Session, library: str, fn: str, read: Any, sizes: Any) -> Any:
        return ["not bytes"]


@pytest.fixture
def wrong() -> Session:
    return session(make_registry(WrongBackend, with_noop=False), ["wrong"])


def _f32(*shape: int) -> np.ndarray:
    return np.ones(shape, dtype=np.float32)


def test_wrong_dtype(wrong: Session) -> None:
    with pytest.raises(BackendError) as info:
        wrong.sgemm(_f32(2, 3), _f32(3, 2))
    assert str(info.value) == (
        "sgemm: backend 'wrong' returned an invalid result 'out': expected a float32 numpy "
        "array of 2 dimensions, got float64 array of shape (2, 2)"
    )


def test_wrong_shape(wrong: Session) -> None:
    with pytest.raises(BackendError) as info:
        wrong.fpga_vectoradd(_f32(4), _f32(4))
    assert str(info.value) == (
        "fpga_vectoradd: backend 'wrong' returned an invalid result 'out': expected a float32 "
        "numpy array of 1 dimensions, got float32 array of shape (1, 4)"
    )


def test_str_where_a_tuple_is_expected(wrong: Session) -> None:
    with pytest.raises(BackendError) as info:
        wrong.classify(b"image")
    assert str(info.value) == (
        "classify: backend 'wrong' returned an invalid result: expected a tuple of 2 results "
        "(tags, imgname), got str 'just the tags'"
    )


def test_wrong_count(wrong: Session) -> None:
    with pytest.raises(BackendError) as info:
        wrong.minmax(np.arange(4, dtype=np.float64), 1, 2)
    assert str(info.value) == (
        "minmax: backend 'wrong' returned an invalid result: expected a tuple of 3 results "
        "(out, min, max), got tuple of 2 (float64 array of shape (4,), float)"
    )


def test_wrong_type_of_one_result(wrong: Session) -> None:
    with pytest.raises(BackendError) as info:
        wrong.detect(b"image")
    assert str(info.value) == (
        "detect: backend 'wrong' returned an invalid result 'imgname': expected a str, "
        "got bytes of 7 bytes"
    )
    with pytest.raises(BackendError, match=r"fpga_parallel: backend 'wrong' .* 'mult': "):
        wrong.fpga_parallel(_f32(2), _f32(2))
    with pytest.raises(BackendError, match=r"exec: .* 'write': expected a list \(or tuple\) of"):
        wrong.exec("lib", "fn", [b"x"], [1])


def test_a_result_where_none_is_expected(wrong: Session) -> None:
    with pytest.raises(BackendError) as info:
        wrong.noop()
    assert str(info.value) == (
        "noop: backend 'wrong' returned an invalid result: expected None (the operation has "
        "no result), got int"
    )


def test_the_error_is_internal_on_the_wire(wrong: Session) -> None:
    from vaccel_core.transport import status_for

    with pytest.raises(BackendError) as info:
        wrong.classify(b"image")
    assert status_for(info.value) == "INTERNAL"


def test_check_result_is_public_and_accepts_what_the_catalog_describes() -> None:
    spec = CATALOG[Op.IMAGE_CLASSIFY]
    check_result(spec, ("tags", "img"), "mine")
    check_result(spec, ["tags", "img"], "mine")
    with pytest.raises(BackendError, match="backend 'mine'"):
        check_result(spec, ("tags",), "mine")
    check_result(CATALOG[Op.MINMAX], (np.zeros(2), np.float64(0), 1), "mine")
    check_result(CATALOG[Op.MODEL_RUN], {"out": np.zeros(1)}, "mine")
    check_result(CATALOG[Op.MODEL_RUN], [np.zeros(1)], "mine")
    check_result(CATALOG[Op.EXEC], [b"a", bytearray(2), memoryview(b"c")], "mine")
    with pytest.raises(BackendError, match="'outputs'"):
        check_result(CATALOG[Op.MODEL_RUN], {"out": [1.0]}, "mine")
    with pytest.raises(BackendError, match="'min'"):
        check_result(CATALOG[Op.MINMAX], (np.zeros(2), True, 1.0), "mine")


def test_the_noop_backend_passes_every_check() -> None:
    """Every operation of the noop backend, through the dispatcher (which checks results)."""
    from tests.catalog_samples import sample_args, sample_resources

    with session(make_registry(), ["noop"]) as s:
        resources = sample_resources(s)
        for op in Op:
            assert op in NoopBackend.operations()
            s.genop(op, *sample_args(op, resources))


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        ("detect", "detect: backend 'wrong' returned an invalid result 'imgname': expected a str"),
        ("classify", "classify: backend 'wrong' returned an invalid result: expected a tuple"),
        ("pose", "pose: backend 'wrong' failed: RuntimeError: device on fire"),
    ],
)
def test_through_the_agent_a_wrong_result_is_internal(op: str, expected: str) -> None:
    """The agent's service, straight (no transport): the guest gets INTERNAL + EPROTO with the
    message naming the backend, the operation and what was expected (or, for any exception a
    backend raises, the exception; docs/plugins.md says so)."""
    import errno

    pytest.importorskip("google.protobuf", reason="the agent needs the remote extra")
    from tests.catalog_samples import PNG_1PX
    from vaccel_agent.service import AgentService
    from vaccel_core import Config
    from vaccel_core.transport import CallError, Message, Peer

    svc = AgentService(
        Config(plugins=["wrong"]),
        make_registry(WrongBackend, with_noop=False),
        session_ttl=None,
    )
    try:
        pb, peer = svc.pb, Peer("p")
        created = svc.handle(
            "CreateSession", Message(pb.CreateSessionRequest().SerializeToString()), peer
        )
        sid = pb.CreateSessionResponse.FromString(bytes(created.payload)).session_id
        wire = CATALOG[Op(f"image_{op}")].name
        request = pb.OpRequest(session_id=sid, op=wire)
        getattr(request, wire).image.inline = PNG_1PX
        with pytest.raises(CallError) as info:
            svc.handle("Run", Message(request.SerializeToString()), peer)
        assert info.value.status == "INTERNAL"
        assert info.value.code == errno.EPROTO
        assert expected in info.value.message
    finally:
        svc.close()
