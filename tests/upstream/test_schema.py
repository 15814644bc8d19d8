"""Our copy of upstream vAccel's wire schema (vaccel_core/proto/upstream) against a table of
upstream's packages, messages, field numbers and types, enum values and service methods,
written by hand from vaccel-rust 0.5.0 ``vaccel-rpc-proto/protos/*.proto``; and the generated
modules are current.

A field's type is written as in a .proto: ``int64``, ``repeated string``, ``optional bytes``,
a message or enum by full name (``vaccel.genop.ArgType``), or ``map<string, vaccel.X>``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("google.protobuf", reason="the schema needs protobuf (the remote extra)")

from vaccel_core.proto.generate import (
    UPSTREAM_DIR,
    UPSTREAM_PROTOS,
    module_path,
    proto_digest,
    recorded_digest,
)
from vaccel_core.proto.upstream import SERVICE_NAME, upstream

REPO = Path(__file__).resolve().parents[2]

Fields = dict[str, tuple[int, str]]

#: File (our module name) -> package.
PACKAGES = {
    "vaccel": "vaccel",
    "empty": "vaccel.empty",
    "session": "vaccel.session",
    "resource": "vaccel.resource",
    "image": "vaccel.image",
    "genop": "vaccel.genop",
    "tf": "vaccel.tf",
    "tflite": "vaccel.tflite",
    "torch": "vaccel.torch",
    "profiling": "vaccel.profiling",
    "sync_agent": "vaccel.sync.agent",
}

#: Full message name -> field name -> (number, type); every message of every file.
MESSAGES: dict[str, Fields] = {
    # vaccel.proto
    "vaccel.Status": {"code": (3, "uint32"), "message": (4, "string")},
    "vaccel.Error": {
        "type": (1, "vaccel.ErrorType"),
        "ffi_error": (2, "optional uint32"),
        "status": (3, "optional vaccel.Status"),
    },
    # empty.proto
    "vaccel.empty.Empty": {},
    # session.proto
    "vaccel.session.CreateRequest": {"flags": (1, "uint32")},
    "vaccel.session.CreateResponse": {"session_id": (1, "int64")},
    "vaccel.session.UpdateRequest": {"session_id": (1, "int64"), "flags": (2, "uint32")},
    "vaccel.session.DestroyRequest": {"session_id": (1, "int64")},
    # resource.proto
    "vaccel.resource.Blob": {
        "type_": (1, "vaccel.resource.BlobType"),
        "name": (2, "string"),
        "data": (3, "bytes"),
        "size": (4, "uint32"),
    },
    "vaccel.resource.RegisterRequest": {
        "paths": (1, "repeated string"),
        "blobs": (2, "repeated vaccel.resource.Blob"),
        "resource_type": (3, "vaccel.resource.ResourceType"),
        "resource_id": (4, "int64"),
        "session_id": (5, "int64"),
    },
    "vaccel.resource.RegisterResponse": {"resource_id": (1, "int64")},
    "vaccel.resource.UnregisterRequest": {"resource_id": (1, "int64"), "session_id": (2, "int64")},
    "vaccel.resource.SyncRequest": {"resource_id": (1, "int64")},
    "vaccel.resource.SyncResponse": {"blobs": (1, "repeated vaccel.resource.Blob")},
    # image.proto
    "vaccel.image.Request": {"session_id": (1, "int64"), "image": (2, "bytes")},
    "vaccel.image.Response": {"tags": (1, "bytes")},
    # genop.proto
    "vaccel.genop.Arg": {
        "buf": (1, "bytes"),
        "size": (2, "uint32"),
        "arg_type": (3, "vaccel.genop.ArgType"),
        "custom_type_id": (4, "uint32"),
        "parts": (5, "uint32"),
        "part_no": (6, "uint32"),
    },
    "vaccel.genop.Request": {
        "session_id": (1, "int64"),
        "read_args": (2, "repeated vaccel.genop.Arg"),
        "write_args": (3, "repeated vaccel.genop.Arg"),
    },
    "vaccel.genop.Response": {"write_args": (1, "repeated vaccel.genop.Arg")},
    # tf.proto
    "vaccel.tf.Tensor": {
        "data": (1, "bytes"),
        "dims": (2, "repeated int64"),
        "type": (3, "vaccel.tf.DataType"),
    },
    "vaccel.tf.Node": {"name": (1, "string"), "id": (2, "int32")},
    "vaccel.tf.ModelLoadRequest": {"session_id": (1, "int64"), "model_id": (2, "int64")},
    "vaccel.tf.ModelLoadResponse": {
        "graph_def": (1, "bytes"),
        "status": (2, "optional vaccel.Status"),
    },
    "vaccel.tf.ModelUnloadRequest": {"session_id": (1, "int64"), "model_id": (2, "int64")},
    "vaccel.tf.ModelUnloadResponse": {"status": (1, "optional vaccel.Status")},
    "vaccel.tf.ModelRunRequest": {
        "session_id": (1, "int64"),
        "model_id": (2, "int64"),
        "run_options": (3, "optional bytes"),
        "in_nodes": (4, "repeated vaccel.tf.Node"),
        "out_nodes": (5, "repeated vaccel.tf.Node"),
        "in_tensors": (6, "repeated vaccel.tf.Tensor"),
    },
    "vaccel.tf.ModelRunResponse": {
        "out_tensors": (1, "repeated vaccel.tf.Tensor"),
        "status": (2, "optional vaccel.Status"),
    },
    # tflite.proto
    "vaccel.tflite.Tensor": {
        "data": (1, "bytes"),
        "dims": (2, "repeated int32"),
        "type": (3, "vaccel.tflite.DataType"),
    },
    "vaccel.tflite.ModelRunRequest": {
        "session_id": (1, "int64"),
        "model_id": (2, "int64"),
        "in_tensors": (3, "repeated vaccel.tflite.Tensor"),
        "nr_out_tensors": (4, "uint64"),
    },
    "vaccel.tflite.ModelLoadRequest": {"session_id": (1, "int64"), "model_id": (2, "int64")},
    "vaccel.tflite.ModelUnloadRequest": {"session_id": (1, "int64"), "model_id": (2, "int64")},
    "vaccel.tflite.ModelRunResponse": {
        "out_tensors": (1, "repeated vaccel.tflite.Tensor"),
        "status": (2, "optional vaccel.Status"),
    },
    # torch.proto
    "vaccel.torch.Tensor": {
        "data": (1, "bytes"),
        "dims": (2, "repeated int64"),
        "type": (3, "vaccel.torch.DataType"),
    },
    "vaccel.torch.ModelLoadRequest": {"session_id": (1, "int64"), "model_id": (2, "int64")},
    "vaccel.torch.ModelRunRequest": {
        "session_id": (1, "int64"),
        "model_id": (2, "int64"),
        "run_options": (3, "optional bytes"),
        "in_tensors": (4, "repeated vaccel.torch.Tensor"),
        "nr_out_tensors": (5, "uint64"),
    },
    "vaccel.torch.ModelRunResponse": {"out_tensors": (1, "repeated vaccel.torch.Tensor")},
    # profiling.proto
    "vaccel.profiling.Sample": {"start": (1, "uint64"), "time": (2, "uint64")},
    "vaccel.profiling.Region": {"samples": (1, "repeated vaccel.profiling.Sample")},
    "vaccel.profiling.Profiler": {
        "component_name": (1, "string"),
        "regions": (2, "map<string, vaccel.profiling.Region>"),
    },
    "vaccel.profiling.Request": {"session_id": (1, "int64")},
    "vaccel.profiling.Response": {"profiler": (1, "vaccel.profiling.Profiler")},
}

#: Full enum name -> value name -> number; every enum of every file.
ENUMS: dict[str, dict[str, int]] = {
    "vaccel.ErrorType": {
        "FFI": 0,
        "FFI_WITH_STATUS": 1,
        "INVALID_ARGUMENT": 2,
        "UNINITIALIZED": 3,
        "OUT_OF_BOUNDS": 4,
        "EMPTY_VALUE": 5,
        "CONVERSION_FAILED": 6,
    },
    "vaccel.resource.BlobType": {"FILE": 0, "BUFFER": 1, "MAPPED": 2},
    "vaccel.resource.ResourceType": {"LIB": 0, "DATA": 1, "MODEL": 2},
    "vaccel.genop.ArgType": {
        "RAW": 0,
        "INT8": 1,
        "INT8_ARRAY": 2,
        "INT16": 3,
        "INT16_ARRAY": 4,
        "INT32": 5,
        "INT32_ARRAY": 6,
        "INT64": 7,
        "INT64_ARRAY": 8,
        "UINT8": 9,
        "UINT8_ARRAY": 10,
        "UINT16": 11,
        "UINT16_ARRAY": 12,
        "UINT32": 13,
        "UINT32_ARRAY": 14,
        "UINT64": 15,
        "UINT64_ARRAY": 16,
        "FLOAT32": 17,
        "FLOAT32_ARRAY": 18,
        "FLOAT64": 19,
        "FLOAT64_ARRAY": 20,
        "BOOL": 21,
        "BOOL_ARRAY": 22,
        "CHAR": 23,
        "CHAR_ARRAY": 24,
        "UCHAR": 25,
        "UCHAR_ARRAY": 26,
        "STRING": 27,
        "BUFFER": 28,
        "CUSTOM": 29,
    },
    "vaccel.tf.DataType": {
        "UNUSED": 0,
        "FLOAT": 1,
        "DOUBLE": 2,
        "INT32": 3,
        "UINT8": 4,
        "INT16": 5,
        "INT8": 6,
        "STRING": 7,
        "COMPLEX": 8,
        "INT64": 9,
        "BOOL": 10,
        "QINT8": 11,
        "QUINT8": 12,
        "QINT32": 13,
        "BFLOAT16": 14,
        "QINT16": 15,
        "QUINT16": 16,
        "UINT16": 17,
        "COMPLEX128": 18,
        "HALF": 19,
        "RESOURCE": 20,
        "VARIANT": 21,
        "UINT32": 22,
        "UINT64": 23,
    },
    "vaccel.tflite.DataType": {
        "UNUSED": 0,
        "NOTYPE": 1,
        "FLOAT32": 2,
        "INT32": 3,
        "UINT8": 4,
        "INT64": 5,
        "STRING": 6,
        "BOOL": 7,
        "INT16": 8,
        "COMPLEX64": 9,
        "INT8": 10,
        "FLOAT16": 11,
        "FLOAT64": 12,
        "COMPLEX128": 13,
        "UINT64": 14,
        "RESOURCE": 15,
        "VARIANT": 16,
        "UINT32": 17,
        "UINT16": 18,
        "INT4": 19,
    },
    "vaccel.torch.DataType": {
        "UNUSED": 0,
        "BYTE": 1,
        "CHAR": 2,
        "SHORT": 3,
        "INT": 4,
        "LONG": 5,
        "HALF": 6,
        "FLOAT": 7,
    },
}

#: AgentService method -> (request, response), in upstream's order; all unary.
METHODS: dict[str, tuple[str, str]] = {
    "CreateSession": ("vaccel.session.CreateRequest", "vaccel.session.CreateResponse"),
    "UpdateSession": ("vaccel.session.UpdateRequest", "vaccel.empty.Empty"),
    "DestroySession": ("vaccel.session.DestroyRequest", "vaccel.empty.Empty"),
    "RegisterResource": ("vaccel.resource.RegisterRequest", "vaccel.resource.RegisterResponse"),
    "UnregisterResource": ("vaccel.resource.UnregisterRequest", "vaccel.empty.Empty"),
    "SyncResource": ("vaccel.resource.SyncRequest", "vaccel.resource.SyncResponse"),
    "ImageClassification": ("vaccel.image.Request", "vaccel.image.Response"),
    "TensorflowModelLoad": ("vaccel.tf.ModelLoadRequest", "vaccel.tf.ModelLoadResponse"),
    "TensorflowModelUnload": ("vaccel.tf.ModelUnloadRequest", "vaccel.tf.ModelUnloadResponse"),
    "TensorflowModelRun": ("vaccel.tf.ModelRunRequest", "vaccel.tf.ModelRunResponse"),
    "TensorflowLiteModelLoad": ("vaccel.tflite.ModelLoadRequest", "vaccel.empty.Empty"),
    "TensorflowLiteModelUnload": ("vaccel.tflite.ModelUnloadRequest", "vaccel.empty.Empty"),
    "TensorflowLiteModelRun": ("vaccel.tflite.ModelRunRequest", "vaccel.tflite.ModelRunResponse"),
    "TorchModelLoad": ("vaccel.torch.ModelLoadRequest", "vaccel.empty.Empty"),
    "TorchModelRun": ("vaccel.torch.ModelRunRequest", "vaccel.torch.ModelRunResponse"),
    "Genop": ("vaccel.genop.Request", "vaccel.genop.Response"),
    "GetProfiler": ("vaccel.profiling.Request", "vaccel.profiling.Response"),
}


def _type_name(field: Any) -> str:
    """A field descriptor's type as the table writes it."""
    from google.protobuf.descriptor import FieldDescriptor as F

    if field.type == F.TYPE_MESSAGE:
        base = field.message_type.full_name
    elif field.type == F.TYPE_ENUM:
        base = field.enum_type.full_name
    else:
        names = {v: k for k, v in vars(F).items() if k.startswith("TYPE_")}
        base = names[field.type][len("TYPE_") :].lower()
    if field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        key, value = (field.message_type.fields_by_name[n] for n in ("key", "value"))
        return f"map<{_type_name(key)}, {_type_name(value)}>"
    if field.is_repeated:
        return f"repeated {base}"
    oneof = field.containing_oneof
    if oneof is not None and oneof.name == f"_{field.name}":  # proto3 optional
        return f"optional {base}"
    return base


def _files() -> dict[str, Any]:
    schema = upstream()
    return {name: getattr(schema, name).DESCRIPTOR for name in PACKAGES}


def _messages(file: Any) -> list[Any]:
    """Every message declared in a file, nested ones too, map entries excepted."""
    found: list[Any] = []
    pending = list(file.message_types_by_name.values())
    while pending:
        message = pending.pop(0)
        if not message.GetOptions().map_entry:
            found.append(message)
            pending += message.nested_types
    return found


def test_files_have_upstream_packages_under_our_own_names() -> None:
    assert sorted(PACKAGES) == sorted(UPSTREAM_PROTOS)
    for name, descriptor in _files().items():
        assert descriptor.package == PACKAGES[name], name
        assert descriptor.name == f"{UPSTREAM_DIR}/{name}.proto"
        from google.protobuf.descriptor_pb2 import FileDescriptorProto

        proto = FileDescriptorProto()
        descriptor.CopyToProto(proto)
        assert proto.syntax == "proto3", name


def test_every_message_matches_upstream_field_numbers_and_types() -> None:
    ours = {m.full_name: m for d in _files().values() for m in _messages(d)}
    assert sorted(ours) == sorted(MESSAGES), "messages differ from upstream's"
    for full_name, expected in MESSAGES.items():
        got = {f.name: (f.number, _type_name(f)) for f in ours[full_name].fields}
        assert got == expected, full_name


def test_every_enum_matches_upstream_values() -> None:
    ours = {}
    for descriptor in _files().values():
        enums = list(descriptor.enum_types_by_name.values())
        for message in _messages(descriptor):
            enums += message.enum_types
        ours.update({e.full_name: e for e in enums})
    assert sorted(ours) == sorted(ENUMS), "enums differ from upstream's"
    for full_name, expected in ENUMS.items():
        got = {v.name: v.number for v in ours[full_name].values}
        assert got == expected, full_name


def test_the_python_arg_type_enum_matches_upstream() -> None:
    """``ArgType``, which the agent and the guest side use without protobuf, is upstream's."""
    from vaccel_core.proto.upstream import ArgType

    assert {t.name: t.value for t in ArgType} == ENUMS["vaccel.genop.ArgType"]


def test_agent_service_methods_match_upstream() -> None:
    descriptor = _files()["sync_agent"]
    assert list(descriptor.services_by_name) == ["AgentService"]
    service = descriptor.services_by_name["AgentService"]
    assert service.full_name == SERVICE_NAME
    got = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods}
    assert got == METHODS
    assert [m.name for m in service.methods] == list(METHODS)
    assert not any(m.client_streaming or m.server_streaming for m in service.methods)


def test_the_table_would_catch_a_drift() -> None:
    """The comparison is not vacuous: a changed number or type reads differently."""
    field = upstream().genop.Arg.DESCRIPTOR.fields_by_name["size"]
    assert (field.number, _type_name(field)) == (2, "uint32")
    assert (field.number, _type_name(field)) != (2, "uint64")
    regions = upstream().profiling.Profiler.DESCRIPTOR.fields_by_name["regions"]
    assert _type_name(regions) == "map<string, vaccel.profiling.Region>"


def test_a_message_round_trips_with_upstream_wire_bytes() -> None:
    """Hand-encoded bytes (tag = number << 3 | wire type) parse as upstream's fields."""
    pb = upstream()
    # genop.Arg{buf=b"\x01", size=1, arg_type=UINT8(9)}
    raw = b"\x0a\x01\x01" + b"\x10\x01" + b"\x18\x09"
    arg = pb.genop.Arg.FromString(raw)
    assert (arg.buf, arg.size, arg.arg_type) == (b"\x01", 1, pb.genop.UINT8)
    assert arg.SerializeToString() == raw
    # vaccel.Error{type=FFI, ffi_error=95}: an explicit 0 for type is not written.
    error = pb.vaccel.Error(type=pb.vaccel.FFI, ffi_error=95)
    assert error.SerializeToString() == b"\x10\x5f"


def _descriptor_bytes(source: str) -> bytes:
    match = re.search(r"AddSerializedFile\((b'.*?')\)\n", source, re.S)
    assert match, "generated module has no serialized descriptor"
    value = eval(match.group(1))  # a bytes literal written by protoc
    assert isinstance(value, bytes)
    return value


@pytest.mark.parametrize("name", UPSTREAM_PROTOS)
def test_generated_module_records_the_current_proto(name: str) -> None:
    """Works without grpcio-tools: each *_pb2.py names the .proto digest it came from."""
    proto = f"{UPSTREAM_DIR}/{name}.proto"
    assert recorded_digest(module_path(proto), proto) == proto_digest(proto), (
        f"{UPSTREAM_DIR}/{name}_pb2.py was generated from another {name}.proto: "
        "run python -m vaccel_core.proto.generate"
    )


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a development tool) regenerates")
    from vaccel_core.proto.generate import generate

    generate(tmp_path)
    for name in UPSTREAM_PROTOS:
        committed = REPO / UPSTREAM_DIR / f"{name}_pb2.py"
        fresh = tmp_path / "upstream" / f"{name}_pb2.py"
        assert _descriptor_bytes(fresh.read_text()) == _descriptor_bytes(committed.read_text()), (
            f"{committed.relative_to(REPO)} is stale: run python -m vaccel_core.proto.generate"
        )
        assert fresh.with_suffix(".pyi").read_text() == committed.with_suffix(".pyi").read_text()


def test_importing_the_package_does_not_import_protobuf() -> None:
    code = (
        "import sys, vaccel_core.proto.upstream as u\n"
        "assert 'google.protobuf' not in sys.modules, 'eager protobuf import'\n"
        "u.upstream().genop.Arg()\n"
        "assert 'google.protobuf' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
