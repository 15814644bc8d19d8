# ruff: noqa
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FFI: _ClassVar[ErrorType]
    FFI_WITH_STATUS: _ClassVar[ErrorType]
    INVALID_ARGUMENT: _ClassVar[ErrorType]
    UNINITIALIZED: _ClassVar[ErrorType]
    OUT_OF_BOUNDS: _ClassVar[ErrorType]
    EMPTY_VALUE: _ClassVar[ErrorType]
    CONVERSION_FAILED: _ClassVar[ErrorType]
FFI: ErrorType
FFI_WITH_STATUS: ErrorType
INVALID_ARGUMENT: ErrorType
UNINITIALIZED: ErrorType
OUT_OF_BOUNDS: ErrorType
EMPTY_VALUE: ErrorType
CONVERSION_FAILED: ErrorType

class Status(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("type", "ffi_error", "status")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    FFI_ERROR_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    type: ErrorType
    ffi_error: int
    status: Status
    def __init__(self, type: _Optional[_Union[ErrorType, str]] = ..., ffi_error: _Optional[int] = ..., status: _Optional[_Union[Status, _Mapping]] = ...) -> None: ...
