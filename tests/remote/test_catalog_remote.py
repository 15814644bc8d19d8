"""Every catalog operation through the noop backend gives the same results remote as local."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.catalog_samples import sample_args, sample_resources
from vaccel_core import CATALOG, Op, Session

from .conftest import AgentProcess, local_session, remote_session

pytestmark = pytest.mark.timeout(120)


def assert_same(local: Any, remote: Any, where: str) -> None:
    """Deep equality that also compares types, dtypes and shapes."""
    if isinstance(local, np.ndarray):
        assert isinstance(remote, np.ndarray), f"{where}: expected an array, got {type(remote)}"
        assert remote.dtype == local.dtype, f"{where}: dtype {remote.dtype} != {local.dtype}"
        assert remote.shape == local.shape, f"{where}: shape {remote.shape} != {local.shape}"
        np.testing.assert_array_equal(remote, local, err_msg=where)
    elif isinstance(local, dict):
        assert isinstance(remote, dict), f"{where}: expected a dict, got {type(remote)}"
        assert list(remote) == list(local), f"{where}: keys {list(remote)} != {list(local)}"
        for key in local:
            assert_same(local[key], remote[key], f"{where}[{key!r}]")
    elif isinstance(local, (list, tuple)):
        assert type(remote) is type(local), f"{where}: {type(remote)} != {type(local)}"
        assert len(remote) == len(local), f"{where}: length {len(remote)} != {len(local)}"
        for i, (a, b) in enumerate(zip(local, remote, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(local, (bytes, bytearray, memoryview)):
        assert bytes(remote) == bytes(local), f"{where}: bytes differ"
    else:
        assert type(remote) is type(local), f"{where}: {type(remote)} != {type(local)}"
        assert remote == local, f"{where}: {remote!r} != {local!r}"


def run_catalog(session: Session) -> dict[Op, Any]:
    resources = sample_resources(session)
    results = {}
    for op, spec in CATALOG.items():
        results[op] = getattr(session, spec.method)(*sample_args(op, resources))
    return results


def test_whole_catalog_remote_equals_local(agent: AgentProcess) -> None:
    with local_session() as local:
        expected = run_catalog(local)
    with remote_session(agent.address) as remote:
        assert [b.name for b in remote.backends] == ["rpc"]
        got = run_catalog(remote)
    assert set(got) == set(CATALOG), "every catalog operation ran remotely"
    for op in CATALOG:
        assert_same(expected[op], got[op], op.value)


def test_genop_by_name_and_upstream_code_remote(agent: AgentProcess) -> None:
    with remote_session(agent.address) as remote:
        assert remote.genop("image_classify", b"img") == remote.genop(3, b"img")
        assert remote.genop("noop") is None


@pytest.mark.parametrize("size", [1 << 10, 1 << 20], ids=["1KiB-inline", "1MiB-out-of-band"])
def test_tensor_sizes_inline_and_out_of_band(agent: AgentProcess, size: int) -> None:
    a = np.arange(size // 4, dtype=np.float32)
    with local_session() as local, remote_session(agent.address) as remote:
        assert_same(local.fpga_vectoradd(a, a), remote.fpga_vectoradd(a, a), "vectoradd")
        big = {"x": a.reshape(-1, 4), "y": np.ones((size // 8,), dtype=np.float64)}
        assert_same(
            local.model_run(*_model(local), big), remote.model_run(*_model(remote), big), "run"
        )
        blob = bytes(range(256)) * (size // 256)
        assert_same(
            local.exec("lib.so", "f", [blob], [size]),
            remote.exec("lib.so", "f", [blob], [size]),
            "exec",
        )


def _model(session: Session) -> tuple[Any]:
    from vaccel_core import Resource, ResourceType

    res = Resource.from_buffer(b"model", ResourceType.MODEL, name="m.onnx")
    res.register(session)
    return (res,)


def test_validation_errors_are_the_same_remote(agent: AgentProcess) -> None:
    with local_session() as local, remote_session(agent.address) as remote:
        for session in (local, remote):
            with pytest.raises(ValueError, match="sgemm: argument 'a': expected a float32 array"):
                session.sgemm(np.zeros((2, 2), dtype=np.float64), np.zeros((2, 2), np.float32))
