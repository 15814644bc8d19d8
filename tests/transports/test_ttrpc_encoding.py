"""The hand-written encodings on ttrpc's hot path agree with protobuf's own, byte for byte or
field for field, for any payload and timeout."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vaccel_transports.ttrpc import wire

payloads = st.binary(max_size=300) | st.sampled_from([b"", bytes(127), bytes(128), bytes(70000)])


@settings(max_examples=200, derandomize=True, database=None)
@given(
    payload=payloads,
    timeout=st.integers(min_value=0, max_value=(1 << 63) - 1),
    metadata=st.lists(st.tuples(st.text(max_size=20), st.text(max_size=20)), max_size=3),
)
def test_request_body_parses_as_the_request_protobuf_writes(
    payload: bytes, timeout: int, metadata: list[tuple[str, str]]
) -> None:
    prefix = wire.request_prefix("vaccel.agent.v1.Agent", "Run", metadata)
    parsed = wire.Request.FromString(wire.request_body(prefix, payload, timeout))
    expected = wire.Request(
        service="vaccel.agent.v1.Agent",
        method="Run",
        payload=payload,
        timeout_nano=timeout,
        metadata=[{"key": k, "value": v} for k, v in metadata],
    )
    assert parsed == expected


@settings(max_examples=200, derandomize=True, database=None)
@given(payload=payloads, stream=st.integers(min_value=1, max_value=(1 << 32) - 1))
def test_ok_response_is_the_bytes_protobuf_writes(payload: bytes, stream: int) -> None:
    head, body = wire.ok_response(stream, payload)
    framed = bytes(head) + bytes(body)
    expected = wire.Response(status=wire.Status(), payload=payload).SerializeToString()
    assert framed == wire.frame(stream, wire.TYPE_RESPONSE, 0, expected)


@settings(max_examples=200, derandomize=True, database=None)
@given(payload=payloads)
def test_ok_payload_reads_what_protobuf_writes(payload: bytes) -> None:
    data = wire.Response(status=wire.Status(), payload=payload).SerializeToString()
    assert wire.ok_payload(data) == payload


def test_ok_payload_leaves_everything_else_to_protobuf() -> None:
    failed = wire.Response(status=wire.Status(code=5, message="gone")).SerializeToString()
    no_status = wire.Response(payload=b"x").SerializeToString()
    trailing = wire.Response(status=wire.Status(), payload=b"x").SerializeToString() + b"\x18\x01"
    for data in (failed, no_status, trailing, b"\x0a\x00\x12\xff"):
        assert wire.ok_payload(data) is None, data
