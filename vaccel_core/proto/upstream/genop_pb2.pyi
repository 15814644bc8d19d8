# ruff: noqa
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ArgType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RAW: _ClassVar[ArgType]
    INT8: _ClassVar[ArgType]
    INT8_ARRAY: _ClassVar[ArgType]
    INT16: _ClassVar[ArgType]
    INT16_ARRAY: _ClassVar[ArgType]
    INT32: _ClassVar[ArgType]
    INT32_ARRAY: _ClassVar[ArgType]
    INT64: _ClassVar[ArgType]
    INT64_ARRAY: _ClassVar[ArgType]
    UINT8: _ClassVar[ArgType]
    UINT8_ARRAY: _ClassVar[ArgType]
    UINT16: _ClassVar[ArgType]
    UINT16_ARRAY: _ClassVar[ArgType]
    UINT32: _ClassVar[ArgType]
    UINT32_ARRAY: _ClassVar[ArgType]
    UINT64: _ClassVar[ArgType]
    UINT64_ARRAY: _ClassVar[ArgType]
    FLOAT32: _ClassVar[ArgType]
    FLOAT32_ARRAY: _ClassVar[ArgType]
    FLOAT64: _ClassVar[ArgType]
    FLOAT64_ARRAY: _ClassVar[ArgType]
    BOOL: _ClassVar[ArgType]
    BOOL_ARRAY: _ClassVar[ArgType]
    CHAR: _ClassVar[ArgType]
    CHAR_ARRAY: _ClassVar[ArgType]
    UCHAR: _ClassVar[ArgType]
    UCHAR_ARRAY: _ClassVar[ArgType]
    STRING: _ClassVar[ArgType]
    BUFFER: _ClassVar[ArgType]
    CUSTOM: _ClassVar[ArgType]
RAW: ArgType
INT8: ArgType
INT8_ARRAY: ArgType
INT16: ArgType
INT16_ARRAY: ArgType
INT32: ArgType
INT32_ARRAY: ArgType
INT64: ArgType
INT64_ARRAY: ArgType
UINT8: ArgType
UINT8_ARRAY: ArgType
UINT16: ArgType
UINT16_ARRAY: ArgType
UINT32: ArgType
UINT32_ARRAY: ArgType
UINT64: ArgType
UINT64_ARRAY: ArgType
FLOAT32: ArgType
FLOAT32_ARRAY: ArgType
FLOAT64: ArgType
FLOAT64_ARRAY: ArgType
BOOL: ArgType
BOOL_ARRAY: ArgType
CHAR: ArgType
CHAR_ARRAY: ArgType
UCHAR: ArgType
UCHAR_ARRAY: ArgType
STRING: ArgType
BUFFER: ArgType
CUSTOM: ArgType

class Arg(_message.Message):
    __slots__ = ("buf", "size", "arg_type", "custom_type_id", "parts", "part_no")
    BUF_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ARG_TYPE_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_TYPE_ID_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    PART_NO_FIELD_NUMBER: _ClassVar[int]
    buf: bytes
    size: int
    arg_type: ArgType
    custom_type_id: int
    parts: int
    part_no: int
    def __init__(self, buf: _Optional[bytes] = ..., size: _Optional[int] = ..., arg_type: _Optional[_Union[ArgType, str]] = ..., custom_type_id: _Optional[int] = ..., parts: _Optional[int] = ..., part_no: _Optional[int] = ...) -> None: ...

class Request(_message.Message):
    __slots__ = ("session_id", "read_args", "write_args")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    READ_ARGS_FIELD_NUMBER: _ClassVar[int]
    WRITE_ARGS_FIELD_NUMBER: _ClassVar[int]
    session_id: int
    read_args: _containers.RepeatedCompositeFieldContainer[Arg]
    write_args: _containers.RepeatedCompositeFieldContainer[Arg]
    def __init__(self, session_id: _Optional[int] = ..., read_args: _Optional[_Iterable[_Union[Arg, _Mapping]]] = ..., write_args: _Optional[_Iterable[_Union[Arg, _Mapping]]] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("write_args",)
    WRITE_ARGS_FIELD_NUMBER: _ClassVar[int]
    write_args: _containers.RepeatedCompositeFieldContainer[Arg]
    def __init__(self, write_args: _Optional[_Iterable[_Union[Arg, _Mapping]]] = ...) -> None: ...
