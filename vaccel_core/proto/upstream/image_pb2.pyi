# ruff: noqa
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Request(_message.Message):
    __slots__ = ("session_id", "image")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    session_id: int
    image: bytes
    def __init__(self, session_id: _Optional[int] = ..., image: _Optional[bytes] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("tags",)
    TAGS_FIELD_NUMBER: _ClassVar[int]
    tags: bytes
    def __init__(self, tags: _Optional[bytes] = ...) -> None: ...
