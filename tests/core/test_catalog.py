"""The catalog: upstream compatibility, validation with named errors, noop results."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.catalog_samples import PNG_1PX, sample_args, sample_resources
from vaccel_core import CATALOG, InvalidArgumentError, Kind, Op, Session

from .helpers import make_registry, session

# Newest upstream enum, in order (design.md section 4).
UPSTREAM = [
    "NOOP",
    "EXEC",
    "EXEC_WITH_RESOURCE",
    "IMAGE_CLASSIFY",
    "IMAGE_DETECT",
    "IMAGE_SEGMENT",
    "IMAGE_POSE",
    "IMAGE_DEPTH",
    "TF_MODEL_LOAD",
    "TF_MODEL_UNLOAD",
    "TF_MODEL_RUN",
    "TFLITE_MODEL_LOAD",
    "TFLITE_MODEL_UNLOAD",
    "TFLITE_MODEL_RUN",
    "TORCH_MODEL_LOAD",
    "TORCH_MODEL_RUN",
    "TORCH_SGEMM",
    "BLAS_SGEMM",
    "FPGA_ARRAYCOPY",
    "FPGA_MMULT",
    "FPGA_PARALLEL",
    "FPGA_VECTORADD",
    "MINMAX",
    "OPENCV",
]


def test_catalog_has_every_upstream_operation_with_its_code() -> None:
    for code, name in enumerate(UPSTREAM):
        assert Op[name].code == code
    assert {op.name for op in Op} == {*UPSTREAM, "MODEL_LOAD", "MODEL_RUN", "MODEL_UNLOAD"}


def test_every_op_has_a_session_method_and_a_noop_implementation() -> None:
    from vaccel_plugins.noop import NoopBackend

    assert NoopBackend.operations() == frozenset(Op)
    for spec in CATALOG.values():
        assert callable(getattr(Session, spec.method)), spec.method


def _check_result(kind: Kind, value: Any) -> None:
    expected = {
        Kind.STR: str,
        Kind.FLOAT: float,
        Kind.TENSOR: np.ndarray,
        Kind.TENSORS: list,
        Kind.NAMED_TENSORS: dict,
        Kind.BYTES_LIST: list,
    }[kind]
    assert isinstance(value, expected), (kind, value)


@pytest.mark.parametrize("op", list(Op), ids=lambda op: op.value)
def test_noop_returns_results_of_the_right_kind(op: Op) -> None:
    registry = make_registry()
    with session(registry) as s:
        resources = sample_resources(s)
        args = sample_args(op, resources)
        result = getattr(s, op.spec.method)(*args)
        results = op.spec.results
        if not results:
            assert result is None
        elif len(results) == 1:
            _check_result(results[0].kind, result)
        else:
            assert len(result) == len(results)
            for param, value in zip(results, result, strict=True):
                _check_result(param.kind, value)


def test_noop_result_shapes_follow_arguments() -> None:
    registry = make_registry()
    with session(registry) as s:
        a = np.ones((4, 3), np.float32)
        b = np.ones((3, 5), np.float32)
        assert s.sgemm(a, b).shape == (4, 5)
        assert s.exec("lib.so", "f", [b"x"], [3, 0]) == [b"\0\0\0", b""]
        out, lo, hi = s.minmax(np.arange(4.0), 0, 2)
        assert (lo, hi) == (0.0, 0.0)
        assert out.dtype == np.float64 and out.shape == (4,)


BAD_CALLS = [
    ("classify", (b"",), "classify: argument 'image': expected a non-empty buffer, got 0 bytes"),
    ("classify", ("a.jpg",), "classify: argument 'image': expected bytes, got str"),
    (
        "sgemm",
        (np.ones((2, 3)), np.ones((3, 2), np.float32)),
        "sgemm: argument 'a': expected a float32 array, got float64 array of shape (2, 3)",
    ),
    (
        "sgemm",
        (np.ones(3, np.float32), np.ones((3, 2), np.float32)),
        "sgemm: argument 'a': expected a 2-D array, got shape (3,)",
    ),
    (
        "sgemm",
        (np.ones((2, 3), np.float32), np.ones((2, 2), np.float32)),
        "sgemm: argument 'b': expected 3 rows",
    ),
    (
        "sgemm",
        (np.ones((2, 3), np.float32), np.ones((3, 2), np.float32), np.ones((3, 3), np.float32)),
        "sgemm: argument 'c': expected shape (2, 2), got (3, 3)",
    ),
    (
        "sgemm",
        (np.ones((1, 1), np.float32), np.ones((1, 1), np.float32), None, "2"),
        "sgemm: argument 'alpha': expected a number, got str",
    ),
    ("minmax", (np.arange(3.0), 5, 1), "minmax: argument 'low_threshold' (5) is above"),
    ("minmax", (np.arange(3.0), 1.5, 2), "minmax: argument 'low_threshold': expected an integer"),
    ("minmax", (np.array([]), 0, 1), "minmax: argument 'data': expected at least 1 value"),
    (
        "fpga_vectoradd",
        (np.ones(2, np.float32), np.ones(3, np.float32)),
        "fpga_vectoradd: argument 'b': expected shape (2,)",
    ),
    (
        "exec",
        ("lib.so", "f", [b"x", "y"], [1]),
        "exec: argument 'read': expected a list of bytes, got str at index 1",
    ),
    ("exec", ("lib.so", "f", [b"x"], [-1]), "exec: argument 'write_sizes'[0]: expected a size"),
    ("genop", ("opencv", [b"x"]), "opencv: missing argument 'nr_outputs'"),
    ("opencv", ([b"x"], 10**10), "opencv: argument 'nr_outputs': expected 0..4096, got"),
    ("opencv", ([b"x"], -1), "opencv: argument 'nr_outputs': expected 0..4096, got -1"),
    ("exec", ("lib.so", "f", [], [8 << 30]),
     "exec: argument 'write_sizes': expected at most 4096 buffers of 1073741824 bytes in all"),
    ("exec_with_resource", (None, "f", [], [1] * 5000), "exec_with_resource: argument"),
    ("genop", ("detect", PNG_1PX, 1), "detect: expected at most 1 arguments, got 2"),
    ("fpga_arraycopy", (["a", "b"],), "fpga_arraycopy: argument 'a': expected an array of int32"),
]


@pytest.mark.parametrize(
    ("method", "args", "message"),
    BAD_CALLS,
    ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(BAD_CALLS)],
)
def test_bad_arguments_name_operation_argument_and_expectation(
    method: str, args: tuple[Any, ...], message: str
) -> None:
    registry = make_registry()
    with session(registry) as s, pytest.raises(InvalidArgumentError) as info:
        getattr(s, method)(*args)
    assert message in str(info.value)


def test_lists_are_converted_to_arrays_of_the_required_dtype() -> None:
    registry = make_registry()
    with session(registry) as s:
        out = s.fpga_vectoradd([1, 2], [3, 4])
        assert out.dtype == np.float32


def test_genop_rejects_unknown_operations() -> None:
    registry = make_registry()
    with session(registry) as s:
        with pytest.raises(InvalidArgumentError, match="unknown operation 'teleport'"):
            s.genop("teleport")
        with pytest.raises(InvalidArgumentError, match="unknown upstream operation code 99"):
            s.genop(99)
        with pytest.raises(InvalidArgumentError, match="expected an operation name or code"):
            s.genop(1.5)


def test_classification_tags_follow_upstream_format() -> None:
    from vaccel_core.ops import classification_tag

    assert classification_tag(0.86768, "golden retriever") == "86.768% golden retriever"
    assert classification_tag(1, "espresso") == "100.000% espresso"
