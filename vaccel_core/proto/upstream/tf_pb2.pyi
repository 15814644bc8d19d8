# ruff: noqa
from vaccel_core.proto.upstream import vaccel_pb2 as _vaccel_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNUSED: _ClassVar[DataType]
    FLOAT: _ClassVar[DataType]
    DOUBLE: _ClassVar[DataType]
    INT32: _ClassVar[DataType]
    UINT8: _ClassVar[DataType]
    INT16: _ClassVar[DataType]
    INT8: _ClassVar[DataType]
    STRING: _ClassVar[DataType]
    COMPLEX: _ClassVar[DataType]
    INT64: _ClassVar[DataType]
    BOOL: _ClassVar[DataType]
    QINT8: _ClassVar[DataType]
    QUINT8: _ClassVar[DataType]
    QINT32: _ClassVar[DataType]
    BFLOAT16: _ClassVar[DataType]
    QINT16: _ClassVar[DataType]
    QUINT16: _ClassVar[DataType]
    UINT16: _ClassVar[DataType]
    COMPLEX128: _ClassVar[DataType]
    HALF: _ClassVar[DataType]
    RESOURCE: _ClassVar[DataType]
    VARIANT: _ClassVar[DataType]
    UINT32: _ClassVar[DataType]
    UINT64: _ClassVar[DataType]
UNUSED: DataType
FLOAT: DataType
DOUBLE: DataType
INT32: DataType
UINT8: DataType
INT16: DataType
INT8: DataType
STRING: DataType
COMPLEX: DataType
INT64: DataType
BOOL: DataType
QINT8: DataType
QUINT8: DataType
QINT32: DataType
BFLOAT16: DataType
QINT16: DataType
QUINT16: DataType
UINT16: DataType
COMPLEX128: DataType
HALF: DataType
RESOURCE: DataType
VARIANT: DataType
UINT32: DataType
UINT64: DataType

class Tensor(_message.Message):
    __slots__ = ("data", "dims", "type")
    DATA_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    dims: _containers.RepeatedScalarFieldContainer[int]
    type: DataType
    def __init__(self, data: _Optional[bytes] = ..., dims: _Optional[_Iterable[int]] = ..., type: _Optional[_Union[DataType, str]] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("name", "id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: int
    def __init__(self, name: _Optional[str] = ..., id: _Optional[int] = ...) -> None: ...

class ModelLoadRequest(_message.Message):
    __slots__ = ("session_id", "model_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: int
    model_id: int
    def __init__(self, session_id: _Optional[int] = ..., model_id: _Optional[int] = ...) -> None: ...

class ModelLoadResponse(_message.Message):
    __slots__ = ("graph_def", "status")
    GRAPH_DEF_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    graph_def: bytes
    status: _vaccel_pb2.Status
    def __init__(self, graph_def: _Optional[bytes] = ..., status: _Optional[_Union[_vaccel_pb2.Status, _Mapping]] = ...) -> None: ...

class ModelUnloadRequest(_message.Message):
    __slots__ = ("session_id", "model_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: int
    model_id: int
    def __init__(self, session_id: _Optional[int] = ..., model_id: _Optional[int] = ...) -> None: ...

class ModelUnloadResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _vaccel_pb2.Status
    def __init__(self, status: _Optional[_Union[_vaccel_pb2.Status, _Mapping]] = ...) -> None: ...

class ModelRunRequest(_message.Message):
    __slots__ = ("session_id", "model_id", "run_options", "in_nodes", "out_nodes", "in_tensors")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    IN_NODES_FIELD_NUMBER: _ClassVar[int]
    OUT_NODES_FIELD_NUMBER: _ClassVar[int]
    IN_TENSORS_FIELD_NUMBER: _ClassVar[int]
    session_id: int
    model_id: int
    run_options: bytes
    in_nodes: _containers.RepeatedCompositeFieldContainer[Node]
    out_nodes: _containers.RepeatedCompositeFieldContainer[Node]
    in_tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, session_id: _Optional[int] = ..., model_id: _Optional[int] = ..., run_options: _Optional[bytes] = ..., in_nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., out_nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., in_tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class ModelRunResponse(_message.Message):
    __slots__ = ("out_tensors", "status")
    OUT_TENSORS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    out_tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    status: _vaccel_pb2.Status
    def __init__(self, out_tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., status: _Optional[_Union[_vaccel_pb2.Status, _Mapping]] = ...) -> None: ...
