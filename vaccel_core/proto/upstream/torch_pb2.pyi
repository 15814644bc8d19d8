# ruff: noqa
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
    BYTE: _ClassVar[DataType]
    CHAR: _ClassVar[DataType]
    SHORT: _ClassVar[DataType]
    INT: _ClassVar[DataType]
    LONG: _ClassVar[DataType]
    HALF: _ClassVar[DataType]
    FLOAT: _ClassVar[DataType]
UNUSED: DataType
BYTE: DataType
CHAR: DataType
SHORT: DataType
INT: DataType
LONG: DataType
HALF: DataType
FLOAT: DataType

class Tensor(_message.Message):
    __slots__ = ("data", "dims", "type")
    DATA_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    dims: _containers.RepeatedScalarFieldContainer[int]
    type: DataType
    def __init__(self, data: _Optional[bytes] = ..., dims: _Optional[_Iterable[int]] = ..., type: _Optional[_Union[DataType, str]] = ...) -> None: ...

class ModelLoadRequest(_message.Message):
    __slots__ = ("session_id", "model_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: int
    model_id: int
    def __init__(self, session_id: _Optional[int] = ..., model_id: _Optional[int] = ...) -> None: ...

class ModelRunRequest(_message.Message):
    __slots__ = ("session_id", "model_id", "run_options", "in_tensors", "nr_out_tensors")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    IN_TENSORS_FIELD_NUMBER: _ClassVar[int]
    NR_OUT_TENSORS_FIELD_NUMBER: _ClassVar[int]
    session_id: int
    model_id: int
    run_options: bytes
    in_tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    nr_out_tensors: int
    def __init__(self, session_id: _Optional[int] = ..., model_id: _Optional[int] = ..., run_options: _Optional[bytes] = ..., in_tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., nr_out_tensors: _Optional[int] = ...) -> None: ...

class ModelRunResponse(_message.Message):
    __slots__ = ("out_tensors",)
    OUT_TENSORS_FIELD_NUMBER: _ClassVar[int]
    out_tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, out_tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...
