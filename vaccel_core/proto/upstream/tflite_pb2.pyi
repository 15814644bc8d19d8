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
    NOTYPE: _ClassVar[DataType]
    FLOAT32: _ClassVar[DataType]
    INT32: _ClassVar[DataType]
    UINT8: _ClassVar[DataType]
    INT64: _ClassVar[DataType]
    STRING: _ClassVar[DataType]
    BOOL: _ClassVar[DataType]
    INT16: _ClassVar[DataType]
    COMPLEX64: _ClassVar[DataType]
    INT8: _ClassVar[DataType]
    FLOAT16: _ClassVar[DataType]
    FLOAT64: _ClassVar[DataType]
    COMPLEX128: _ClassVar[DataType]
    UINT64: _ClassVar[DataType]
    RESOURCE: _ClassVar[DataType]
    VARIANT: _ClassVar[DataType]
    UINT32: _ClassVar[DataType]
    UINT16: _ClassVar[DataType]
    INT4: _ClassVar[DataType]
UNUSED: DataType
NOTYPE: DataType
FLOAT32: DataType
INT32: DataType
UINT8: DataType
INT64: DataType
STRING: DataType
BOOL: DataType
INT16: DataType
COMPLEX64: DataType
INT8: DataType
FLOAT16: DataType
FLOAT64: DataType
COMPLEX128: DataType
UINT64: DataType
RESOURCE: DataType
VARIANT: DataType
UINT32: DataType
UINT16: DataType
INT4: DataType

class Tensor(_message.Message):
    __slots__ = ("data", "dims", "type")
    DATA_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    dims: _containers.RepeatedScalarFieldContainer[int]
    type: DataType
    def __init__(self, data: _Optional[bytes] = ..., dims: _Optional[_Iterable[int]] = ..., type: _Optional[_Union[DataType, str]] = ...) -> None: ...

class ModelRunRequest(_message.Message):
    __slots__ = ("session_id", "model_id", "in_tensors", "nr_out_tensors")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    IN_TENSORS_FIELD_NUMBER: _ClassVar[int]
    NR_OUT_TENSORS_FIELD_NUMBER: _ClassVar[int]
    session_id: int
    model_id: int
    in_tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    nr_out_tensors: int
    def __init__(self, session_id: _Optional[int] = ..., model_id: _Optional[int] = ..., in_tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., nr_out_tensors: _Optional[int] = ...) -> None: ...

class ModelLoadRequest(_message.Message):
    __slots__ = ("session_id", "model_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: int
    model_id: int
    def __init__(self, session_id: _Optional[int] = ..., model_id: _Optional[int] = ...) -> None: ...

class ModelUnloadRequest(_message.Message):
    __slots__ = ("session_id", "model_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: int
    model_id: int
    def __init__(self, session_id: _Optional[int] = ..., model_id: _Optional[int] = ...) -> None: ...

class ModelRunResponse(_message.Message):
    __slots__ = ("out_tensors", "status")
    OUT_TENSORS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    out_tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    status: _vaccel_pb2.Status
    def __init__(self, out_tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., status: _Optional[_Union[_vaccel_pb2.Status, _Mapping]] = ...) -> None: ...
