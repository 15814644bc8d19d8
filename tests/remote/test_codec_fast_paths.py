"""The per-call shortcuts of the rpc codec and the profiler give what the generic paths give:
results that are plain fields are read straight from the message, operations are found by wire
name without ``Op(name)``, and the agent's regions are merged straight from its reply."""

from __future__ import annotations

from typing import Any

import pytest

from vaccel_core.errors import InvalidArgumentError
from vaccel_core.ops import CATALOG, Kind, Op, OpSpec
from vaccel_core.profiling import Profiler, Region
from vaccel_core.proto import pb
from vaccel_plugins.rpc import codec

pytestmark = pytest.mark.timeout(60)

PLAIN = [spec for spec in CATALOG.values() if spec.method in codec._PLAIN_RESULTS]


def _sample(kind: Kind, index: int) -> Any:
    return f"value {index}: 12.5% tabby" if kind is Kind.STR else 1000 + index


def _generic(spec: OpSpec, msg: Any) -> Any:
    decoder = codec.Decoder((), spec.method)
    values = [decoder.value(msg, param) for param in spec.results]
    return values[0] if len(values) == 1 else tuple(values)


def test_plain_results_cover_the_image_operations() -> None:
    assert {spec.op for spec in PLAIN} >= {Op.IMAGE_CLASSIFY, Op.IMAGE_DETECT, Op.IMAGE_POSE}
    for spec in PLAIN:
        assert all(p.kind in (Kind.STR, Kind.INT) and not p.optional for p in spec.results)


@pytest.mark.parametrize("spec", PLAIN, ids=lambda s: s.method)
@pytest.mark.parametrize("empty", [False, True], ids=["set", "unset"])
def test_plain_results_decode_as_the_generic_decoder_does(spec: OpSpec, empty: bool) -> None:
    msg = getattr(pb(), codec.result_message_name(spec))()
    if not empty:
        values = [_sample(p.kind, i) for i, p in enumerate(spec.results)]
        codec.encode_results(
            spec, values[0] if len(values) == 1 else tuple(values), msg, codec.Encoder()
        )
    wire = type(msg).FromString(msg.SerializeToString())
    got = codec.decode_results(spec, wire, codec.Decoder((), spec.method))
    assert got == _generic(spec, wire)
    assert type(got) is type(_generic(spec, wire))


@pytest.mark.parametrize("spec", list(CATALOG.values()), ids=lambda s: s.method)
def test_operations_are_found_by_wire_name(spec: OpSpec) -> None:
    assert codec.spec_by_name(spec.name) is spec
    assert codec.op_by_name(spec.name) is spec.op


@pytest.mark.parametrize("name", ["", "IMAGE_CLASSIFY", "classify", "x" * 500])
def test_unknown_wire_names_are_invalid_arguments(name: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^Run: unknown operation"):
        codec.spec_by_name(name)
    with pytest.raises(InvalidArgumentError, match=r"^Run: unknown operation"):
        codec.op_by_name(name)


def test_profiler_merges_regions_straight_from_a_reply() -> None:
    reply = pb().OpResponse(op="noop")
    reply.regions.add(name="agent:noop", total_ns=700, entries=2)
    reply.regions.add(name="agent:other", total_ns=5, entries=1)
    profiler = Profiler()
    profiler.record("agent:noop", 300)
    profiler.merge(reply.regions)
    profiler.merge([Region("agent:other", 10, 3)])
    assert {r.name: (r.total_ns, r.entries) for r in profiler.regions()} == {
        "agent:noop": (1000, 3),
        "agent:other": (15, 4),
    }
