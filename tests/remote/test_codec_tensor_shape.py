"""Tensor shapes that do not fit their data are refused with InvalidArgumentError."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vaccel_core import Config
from vaccel_core.errors import InvalidArgumentError
from vaccel_core.proto import pb
from vaccel_core.transport import CallError
from vaccel_plugins.rpc import codec

from .conftest import RawClient

pytestmark = pytest.mark.timeout(60)


def tensor(shape: list[int], data: bytes, dtype: str = "float32") -> Any:
    msg = pb().Tensor(dtype=dtype, shape=shape)
    msg.inline = data
    return msg


@pytest.mark.parametrize(
    ("shape", "data", "message"),
    [
        # int64 product wraps to 0: must not pass the byte check with no data
        ([2**32, 2**32], b"", "tensor data has 0 bytes, expected 73786976294838206464"),
        ([2**62, 4], b"", "tensor data has 0 bytes, expected 73786976294838206464"),
        ([-1, 4], b"\0" * 16, "negative dimension"),
        ([1] * 70, b"\0" * 4, "at most 32 dimensions, got 70"),
        ([3], b"\0" * 8, "tensor data has 8 bytes, expected 12 for float32 shape (3,)"),
    ],
)
def test_codec_refuses_shapes_that_do_not_fit(shape: list[int], data: bytes, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^blas_sgemm: argument 'a': ") as err:
        codec.Decoder((), "blas_sgemm").tensor(tensor(shape, data), "a")
    assert message in err.value.message


def test_codec_still_decodes_good_tensors() -> None:
    decoder = codec.Decoder((), "blas_sgemm")
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = decoder.tensor(tensor([2, 3], arr.tobytes()), "a")
    assert out.shape == (2, 3) and (out == arr).all()
    assert decoder.tensor(tensor([0, 5], b""), "a").shape == (0, 5)
    assert decoder.tensor(tensor([], b"\0" * 4), "a").shape == ()


def test_agent_answers_invalid_argument_for_an_overflowing_shape(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from vaccel_agent.server import Agent

    with Agent([f"unix://{tmp_path / 'a.sock'}"], config=Config(plugins=["noop"])) as agent:
        raw = RawClient(agent.bound_addresses[0])
        try:
            sid = raw.create_session()
            req = raw.pb.OpRequest(session_id=sid, op="blas_sgemm")
            args = req.blas_sgemm
            args.a.CopyFrom(tensor([2**32, 2**32], b""))
            args.b.CopyFrom(tensor([1, 1], b"\0" * 4))
            with (
                caplog.at_level(logging.ERROR, logger="vaccel"),
                pytest.raises(CallError) as err,
            ):
                raw.call("Run", req, raw.pb.OpResponse)
            assert err.value.status == "INVALID_ARGUMENT"
            # the operation's method name (sgemm) and the argument
            assert "sgemm: argument 'a': tensor data has 0 bytes" in err.value.message
            assert "unexpected agent error" not in caplog.text
        finally:
            raw.channel.close()
