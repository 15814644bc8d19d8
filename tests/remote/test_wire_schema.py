"""The wire schema: generated code is current, every catalog operation has typed messages,
framing and codec round trips, and cheap imports."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vaccel_core import CATALOG, Kind
from vaccel_core.errors import InvalidArgumentError
from vaccel_core.proto import OOB_FIELD, SERVICE_NAME, pb
from vaccel_core.transport import Message
from vaccel_plugins.rpc import codec

from .conftest import REPO, clean_env

PROTO_DIR = REPO / "vaccel_core" / "proto"

_TYPES = {
    Kind.BYTES: ("TYPE_MESSAGE", "Data", False),
    Kind.STR: ("TYPE_STRING", None, False),
    Kind.INT: ("TYPE_INT64", None, False),
    Kind.FLOAT: ("TYPE_DOUBLE", None, False),
    Kind.TENSOR: ("TYPE_MESSAGE", "Tensor", False),
    Kind.TENSORS: ("TYPE_MESSAGE", "Tensor", True),
    Kind.NAMED_TENSORS: ("TYPE_MESSAGE", "NamedTensors", False),
    Kind.BYTES_LIST: ("TYPE_MESSAGE", "Data", True),
    Kind.INT_LIST: ("TYPE_INT64", None, True),
    Kind.STR_LIST: ("TYPE_STRING", None, True),
    Kind.RESOURCE: ("TYPE_UINT64", None, False),
}


def _descriptor_bytes(source: str) -> bytes:
    match = re.search(r"AddSerializedFile\((b'.*?')\)\n", source, re.S)
    assert match, "generated module has no serialized descriptor"
    value = eval(match.group(1))  # a bytes literal written by protoc
    assert isinstance(value, bytes)
    return value


def test_generated_module_records_the_current_proto() -> None:
    """Works without grpcio-tools: agent_pb2.py names the agent.proto it came from."""
    from vaccel_core.proto.generate import proto_digest, recorded_digest

    assert recorded_digest() == proto_digest(), (
        "vaccel_core/proto/agent_pb2.py was generated from another agent.proto: "
        "run python -m vaccel_core.proto.generate"
    )


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    pytest.importorskip(
        "grpc_tools", reason="grpcio-tools (a development tool) regenerates agent_pb2"
    )
    from vaccel_core.proto.generate import generate

    generate(tmp_path)
    committed = (PROTO_DIR / "agent_pb2.py").read_text()
    fresh = (tmp_path / "agent_pb2.py").read_text()
    assert _descriptor_bytes(fresh) == _descriptor_bytes(committed), (
        "vaccel_core/proto/agent_pb2.py is stale: run python -m vaccel_core.proto.generate"
    )
    assert (tmp_path / "agent_pb2.pyi").read_text() == (PROTO_DIR / "agent_pb2.pyi").read_text()


def test_every_catalog_operation_has_typed_messages() -> None:
    from google.protobuf.descriptor import FieldDescriptor

    names = {v: k for k, v in vars(FieldDescriptor).items() if k.startswith("TYPE_")}
    request = pb().OpRequest.DESCRIPTOR.oneofs_by_name["args"]
    response = pb().OpResponse.DESCRIPTOR.oneofs_by_name["result"]
    assert [f.name for f in request.fields] == [spec.name for spec in CATALOG.values()]
    assert [f.name for f in response.fields] == [spec.name for spec in CATALOG.values()]
    for spec in CATALOG.values():
        for oneof, message_name, params in (
            (request, codec.args_message_name(spec), spec.params),
            (response, codec.result_message_name(spec), spec.results),
        ):
            message = oneof.containing_type.fields_by_name[spec.name].message_type
            assert message.name == message_name
            assert [f.name for f in message.fields] == [p.name for p in params], message_name
            for field, param in zip(message.fields, params, strict=True):
                type_name, message_type, repeated = _TYPES[param.kind]
                where = f"{message_name}.{field.name}"
                assert names[field.type] == type_name, where
                if message_type:
                    assert field.message_type.name == message_type, where
                assert field.is_repeated == repeated, where


def test_service_name_and_out_of_band_field_are_reserved() -> None:
    from google.protobuf import descriptor_pb2

    service = pb().DESCRIPTOR.services_by_name["Agent"]
    assert service.full_name == SERVICE_NAME
    for method in service.methods:
        for message in (method.input_type, method.output_type):
            dp = descriptor_pb2.DescriptorProto()
            message.CopyToProto(dp)
            assert any(r.start <= OOB_FIELD < r.end for r in dp.reserved_range), message.name


def test_framing_round_trip_without_copies() -> None:
    from vaccel_transports import grpc_framing

    big = np.arange(1 << 20, dtype=np.uint8).tobytes()
    frame = grpc_framing.encode(Message(b"payload", [b"small", big]))
    decoded = grpc_framing.decode(frame)
    assert bytes(decoded.payload) == b"payload"
    assert [bytes(b) for b in decoded.buffers] == [b"small", big]
    for buf in decoded.buffers:
        assert isinstance(buf, memoryview) and buf.obj is frame, "a view into the frame"
    plain = b"no buffers"
    assert grpc_framing.decode(plain).payload is plain
    with pytest.raises(InvalidArgumentError, match="truncated"):
        grpc_framing.decode(b"\xfa\x7f\xff")


@pytest.mark.parametrize("inline_limit", [1 << 30, 0], ids=["inline", "out-of-band"])
def test_codec_round_trips_every_kind(inline_limit: int) -> None:
    from tests.catalog_samples import sample_args, sample_resources
    from vaccel_core import Config, Session

    with Session(config=Config(plugins=["noop"])) as session:
        resources = sample_resources(session)
        ids = {id(r): n for n, r in enumerate(resources.values(), 1)}
        by_id = {n: r for n, r in enumerate(resources.values(), 1)}
        for op, spec in CATALOG.items():
            args = sample_args(op, resources)
            encoder = codec.Encoder(inline_limit)
            msg = getattr(pb().OpRequest(), spec.name)
            codec.encode_args(spec, args, msg, encoder, lambda r: ids[id(r)])
            wire = type(msg).FromString(msg.SerializeToString())
            back = codec.decode_args(
                spec, wire, codec.Decoder(encoder.buffers, spec.method), by_id.__getitem__
            )
            for param, a, b in zip(spec.params, args, back, strict=True):
                if isinstance(a, np.ndarray):
                    assert b.dtype == a.dtype and np.array_equal(a, b), (op, param.name)
                    if inline_limit == 0 and a.nbytes:
                        assert np.shares_memory(a, b), "out of band: no copy on either side"
                elif param.kind in (Kind.TENSORS,):
                    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
                elif param.kind is Kind.NAMED_TENSORS:
                    assert list(a) == list(b)
                elif param.kind is Kind.BYTES_LIST:
                    assert [bytes(x) for x in b] == list(a)
                elif param.kind is Kind.BYTES:
                    assert bytes(b) == a
                else:
                    assert b == a, (op, param.name)


@pytest.mark.parametrize(
    "module",
    [
        "vaccel_core.proto",
        "vaccel_plugins.rpc.plugin",
        "vaccel_transports.tcp",
        "vaccel_transports.unix",
    ],
)
def test_importing_plugins_stays_cheap(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "heavy = [m for m in ('grpc', 'google.protobuf') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing {module} imported {out.stdout.strip()}"
