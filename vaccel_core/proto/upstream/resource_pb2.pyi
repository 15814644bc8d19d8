# ruff: noqa
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BlobType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FILE: _ClassVar[BlobType]
    BUFFER: _ClassVar[BlobType]
    MAPPED: _ClassVar[BlobType]

class ResourceType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIB: _ClassVar[ResourceType]
    DATA: _ClassVar[ResourceType]
    MODEL: _ClassVar[ResourceType]
FILE: BlobType
BUFFER: BlobType
MAPPED: BlobType
LIB: ResourceType
DATA: ResourceType
MODEL: ResourceType

class Blob(_message.Message):
    __slots__ = ("type_", "name", "data", "size")
    TYPE__FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    type_: BlobType
    name: str
    data: bytes
    size: int
    def __init__(self, type_: _Optional[_Union[BlobType, str]] = ..., name: _Optional[str] = ..., data: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("paths", "blobs", "resource_type", "resource_id", "session_id")
    PATHS_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    paths: _containers.RepeatedScalarFieldContainer[str]
    blobs: _containers.RepeatedCompositeFieldContainer[Blob]
    resource_type: ResourceType
    resource_id: int
    session_id: int
    def __init__(self, paths: _Optional[_Iterable[str]] = ..., blobs: _Optional[_Iterable[_Union[Blob, _Mapping]]] = ..., resource_type: _Optional[_Union[ResourceType, str]] = ..., resource_id: _Optional[int] = ..., session_id: _Optional[int] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("resource_id",)
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    resource_id: int
    def __init__(self, resource_id: _Optional[int] = ...) -> None: ...

class UnregisterRequest(_message.Message):
    __slots__ = ("resource_id", "session_id")
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    resource_id: int
    session_id: int
    def __init__(self, resource_id: _Optional[int] = ..., session_id: _Optional[int] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ("resource_id",)
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    resource_id: int
    def __init__(self, resource_id: _Optional[int] = ...) -> None: ...

class SyncResponse(_message.Message):
    __slots__ = ("blobs",)
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    blobs: _containers.RepeatedCompositeFieldContainer[Blob]
    def __init__(self, blobs: _Optional[_Iterable[_Union[Blob, _Mapping]]] = ...) -> None: ...
