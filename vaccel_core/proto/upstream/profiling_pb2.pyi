# ruff: noqa
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Sample(_message.Message):
    __slots__ = ("start", "time")
    START_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    start: int
    time: int
    def __init__(self, start: _Optional[int] = ..., time: _Optional[int] = ...) -> None: ...

class Region(_message.Message):
    __slots__ = ("samples",)
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    samples: _containers.RepeatedCompositeFieldContainer[Sample]
    def __init__(self, samples: _Optional[_Iterable[_Union[Sample, _Mapping]]] = ...) -> None: ...

class Profiler(_message.Message):
    __slots__ = ("component_name", "regions")
    class RegionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Region
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Region, _Mapping]] = ...) -> None: ...
    COMPONENT_NAME_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    component_name: str
    regions: _containers.MessageMap[str, Region]
    def __init__(self, component_name: _Optional[str] = ..., regions: _Optional[_Mapping[str, Region]] = ...) -> None: ...

class Request(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: int
    def __init__(self, session_id: _Optional[int] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("profiler",)
    PROFILER_FIELD_NUMBER: _ClassVar[int]
    profiler: Profiler
    def __init__(self, profiler: _Optional[_Union[Profiler, _Mapping]] = ...) -> None: ...
