# ruff: noqa
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorDetail(_message.Message):
    __slots__ = ("status", "code", "message")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    status: str
    code: int
    message: str
    def __init__(self, status: _Optional[str] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class Data(_message.Message):
    __slots__ = ("inline", "buffer")
    INLINE_FIELD_NUMBER: _ClassVar[int]
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    inline: bytes
    buffer: int
    def __init__(self, inline: _Optional[bytes] = ..., buffer: _Optional[int] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "inline", "buffer")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    INLINE_FIELD_NUMBER: _ClassVar[int]
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    inline: bytes
    buffer: int
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., inline: _Optional[bytes] = ..., buffer: _Optional[int] = ...) -> None: ...

class NamedTensor(_message.Message):
    __slots__ = ("name", "tensor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensor: Tensor
    def __init__(self, name: _Optional[str] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class NamedTensors(_message.Message):
    __slots__ = ("by_position", "items")
    BY_POSITION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    by_position: bool
    items: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    def __init__(self, by_position: _Optional[bool] = ..., items: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ...) -> None: ...

class Region(_message.Message):
    __slots__ = ("name", "total_ns", "entries")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_NS_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    total_ns: int
    entries: int
    def __init__(self, name: _Optional[str] = ..., total_ns: _Optional[int] = ..., entries: _Optional[int] = ...) -> None: ...

class AttachRequest(_message.Message):
    __slots__ = ("client",)
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    client: str
    def __init__(self, client: _Optional[str] = ...) -> None: ...

class AttachEvent(_message.Message):
    __slots__ = ("agent_version", "peer_id", "capability")
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    peer_id: str
    capability: str
    def __init__(self, agent_version: _Optional[str] = ..., peer_id: _Optional[str] = ..., capability: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("version", "sessions", "resources", "blobs", "blob_bytes", "peers", "backends", "blob_uploads", "blob_hits", "session_ttl", "sessions_released", "view_all", "uptime", "bucket_bounds", "calls", "clients", "rejections")
    class RejectionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    BLOB_BYTES_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    BLOB_UPLOADS_FIELD_NUMBER: _ClassVar[int]
    BLOB_HITS_FIELD_NUMBER: _ClassVar[int]
    SESSION_TTL_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_RELEASED_FIELD_NUMBER: _ClassVar[int]
    VIEW_ALL_FIELD_NUMBER: _ClassVar[int]
    UPTIME_FIELD_NUMBER: _ClassVar[int]
    BUCKET_BOUNDS_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    version: str
    sessions: int
    resources: int
    blobs: int
    blob_bytes: int
    peers: int
    backends: _containers.RepeatedScalarFieldContainer[str]
    blob_uploads: int
    blob_hits: int
    session_ttl: float
    sessions_released: int
    view_all: bool
    uptime: float
    bucket_bounds: _containers.RepeatedScalarFieldContainer[float]
    calls: _containers.RepeatedCompositeFieldContainer[CallStats]
    clients: _containers.RepeatedCompositeFieldContainer[ClientStatus]
    rejections: _containers.ScalarMap[str, int]
    def __init__(self, version: _Optional[str] = ..., sessions: _Optional[int] = ..., resources: _Optional[int] = ..., blobs: _Optional[int] = ..., blob_bytes: _Optional[int] = ..., peers: _Optional[int] = ..., backends: _Optional[_Iterable[str]] = ..., blob_uploads: _Optional[int] = ..., blob_hits: _Optional[int] = ..., session_ttl: _Optional[float] = ..., sessions_released: _Optional[int] = ..., view_all: _Optional[bool] = ..., uptime: _Optional[float] = ..., bucket_bounds: _Optional[_Iterable[float]] = ..., calls: _Optional[_Iterable[_Union[CallStats, _Mapping]]] = ..., clients: _Optional[_Iterable[_Union[ClientStatus, _Mapping]]] = ..., rejections: _Optional[_Mapping[str, int]] = ...) -> None: ...

class CallStats(_message.Message):
    __slots__ = ("method", "operation", "backend", "calls", "errors", "seconds", "buckets")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    method: str
    operation: str
    backend: str
    calls: int
    errors: int
    seconds: float
    buckets: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, method: _Optional[str] = ..., operation: _Optional[str] = ..., backend: _Optional[str] = ..., calls: _Optional[int] = ..., errors: _Optional[int] = ..., seconds: _Optional[float] = ..., buckets: _Optional[_Iterable[int]] = ...) -> None: ...

class ClientStatus(_message.Message):
    __slots__ = ("id", "description", "transport", "sessions", "calls", "errors", "in_flight", "connected_at", "caller")
    ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_AT_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    id: str
    description: str
    transport: str
    sessions: int
    calls: int
    errors: int
    in_flight: int
    connected_at: float
    caller: bool
    def __init__(self, id: _Optional[str] = ..., description: _Optional[str] = ..., transport: _Optional[str] = ..., sessions: _Optional[int] = ..., calls: _Optional[int] = ..., errors: _Optional[int] = ..., in_flight: _Optional[int] = ..., connected_at: _Optional[float] = ..., caller: _Optional[bool] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("flags",)
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    flags: int
    def __init__(self, flags: _Optional[int] = ...) -> None: ...

class CreateSessionResponse(_message.Message):
    __slots__ = ("session_id", "backends")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    session_id: int
    backends: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_id: _Optional[int] = ..., backends: _Optional[_Iterable[str]] = ...) -> None: ...

class UpdateSessionRequest(_message.Message):
    __slots__ = ("session_id", "flags")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    session_id: int
    flags: int
    def __init__(self, session_id: _Optional[int] = ..., flags: _Optional[int] = ...) -> None: ...

class UpdateSessionResponse(_message.Message):
    __slots__ = ("backends",)
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    backends: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, backends: _Optional[_Iterable[str]] = ...) -> None: ...

class DestroySessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: int
    def __init__(self, session_id: _Optional[int] = ...) -> None: ...

class DestroySessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PutBlobRequest(_message.Message):
    __slots__ = ("sha256", "size", "offset", "data")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size: int
    offset: int
    data: Data
    def __init__(self, sha256: _Optional[str] = ..., size: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[_Union[Data, _Mapping]] = ...) -> None: ...

class PutBlobResponse(_message.Message):
    __slots__ = ("complete", "received")
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    complete: bool
    received: int
    def __init__(self, complete: _Optional[bool] = ..., received: _Optional[int] = ...) -> None: ...

class ResourceFileRef(_message.Message):
    __slots__ = ("name", "sha256", "size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    size: int
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class RegisterResourceRequest(_message.Message):
    __slots__ = ("session_id", "type", "files")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    session_id: int
    type: int
    files: _containers.RepeatedCompositeFieldContainer[ResourceFileRef]
    def __init__(self, session_id: _Optional[int] = ..., type: _Optional[int] = ..., files: _Optional[_Iterable[_Union[ResourceFileRef, _Mapping]]] = ...) -> None: ...

class RegisterResourceResponse(_message.Message):
    __slots__ = ("resource_id", "missing_blobs")
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    MISSING_BLOBS_FIELD_NUMBER: _ClassVar[int]
    resource_id: int
    missing_blobs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, resource_id: _Optional[int] = ..., missing_blobs: _Optional[_Iterable[str]] = ...) -> None: ...

class UnregisterResourceRequest(_message.Message):
    __slots__ = ("session_id", "resource_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: int
    resource_id: int
    def __init__(self, session_id: _Optional[int] = ..., resource_id: _Optional[int] = ...) -> None: ...

class UnregisterResourceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SyncResourceRequest(_message.Message):
    __slots__ = ("session_id", "resource_id", "piece")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    PIECE_FIELD_NUMBER: _ClassVar[int]
    session_id: int
    resource_id: int
    piece: SyncPiece
    def __init__(self, session_id: _Optional[int] = ..., resource_id: _Optional[int] = ..., piece: _Optional[_Union[SyncPiece, _Mapping]] = ...) -> None: ...

class SyncPiece(_message.Message):
    __slots__ = ("file", "offset", "length")
    FILE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    file: int
    offset: int
    length: int
    def __init__(self, file: _Optional[int] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class SyncResourceFile(_message.Message):
    __slots__ = ("name", "sha256", "data", "size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    data: Data
    size: int
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ..., data: _Optional[_Union[Data, _Mapping]] = ..., size: _Optional[int] = ...) -> None: ...

class SyncResourceResponse(_message.Message):
    __slots__ = ("files",)
    FILES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[SyncResourceFile]
    def __init__(self, files: _Optional[_Iterable[_Union[SyncResourceFile, _Mapping]]] = ...) -> None: ...

class NoopArgs(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NoopResult(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExecArgs(_message.Message):
    __slots__ = ("library", "fn_symbol", "read", "write_sizes")
    LIBRARY_FIELD_NUMBER: _ClassVar[int]
    FN_SYMBOL_FIELD_NUMBER: _ClassVar[int]
    READ_FIELD_NUMBER: _ClassVar[int]
    WRITE_SIZES_FIELD_NUMBER: _ClassVar[int]
    library: str
    fn_symbol: str
    read: _containers.RepeatedCompositeFieldContainer[Data]
    write_sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, library: _Optional[str] = ..., fn_symbol: _Optional[str] = ..., read: _Optional[_Iterable[_Union[Data, _Mapping]]] = ..., write_sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class ExecResult(_message.Message):
    __slots__ = ("write",)
    WRITE_FIELD_NUMBER: _ClassVar[int]
    write: _containers.RepeatedCompositeFieldContainer[Data]
    def __init__(self, write: _Optional[_Iterable[_Union[Data, _Mapping]]] = ...) -> None: ...

class ExecWithResourceArgs(_message.Message):
    __slots__ = ("resource", "fn_symbol", "read", "write_sizes")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    FN_SYMBOL_FIELD_NUMBER: _ClassVar[int]
    READ_FIELD_NUMBER: _ClassVar[int]
    WRITE_SIZES_FIELD_NUMBER: _ClassVar[int]
    resource: int
    fn_symbol: str
    read: _containers.RepeatedCompositeFieldContainer[Data]
    write_sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, resource: _Optional[int] = ..., fn_symbol: _Optional[str] = ..., read: _Optional[_Iterable[_Union[Data, _Mapping]]] = ..., write_sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class ExecWithResourceResult(_message.Message):
    __slots__ = ("write",)
    WRITE_FIELD_NUMBER: _ClassVar[int]
    write: _containers.RepeatedCompositeFieldContainer[Data]
    def __init__(self, write: _Optional[_Iterable[_Union[Data, _Mapping]]] = ...) -> None: ...

class ImageClassifyArgs(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: Data
    def __init__(self, image: _Optional[_Union[Data, _Mapping]] = ...) -> None: ...

class ImageClassifyResult(_message.Message):
    __slots__ = ("tags", "imgname")
    TAGS_FIELD_NUMBER: _ClassVar[int]
    IMGNAME_FIELD_NUMBER: _ClassVar[int]
    tags: str
    imgname: str
    def __init__(self, tags: _Optional[str] = ..., imgname: _Optional[str] = ...) -> None: ...

class ImageDetectArgs(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: Data
    def __init__(self, image: _Optional[_Union[Data, _Mapping]] = ...) -> None: ...

class ImageDetectResult(_message.Message):
    __slots__ = ("imgname",)
    IMGNAME_FIELD_NUMBER: _ClassVar[int]
    imgname: str
    def __init__(self, imgname: _Optional[str] = ...) -> None: ...

class ImageSegmentArgs(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: Data
    def __init__(self, image: _Optional[_Union[Data, _Mapping]] = ...) -> None: ...

class ImageSegmentResult(_message.Message):
    __slots__ = ("imgname",)
    IMGNAME_FIELD_NUMBER: _ClassVar[int]
    imgname: str
    def __init__(self, imgname: _Optional[str] = ...) -> None: ...

class ImagePoseArgs(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: Data
    def __init__(self, image: _Optional[_Union[Data, _Mapping]] = ...) -> None: ...

class ImagePoseResult(_message.Message):
    __slots__ = ("imgname",)
    IMGNAME_FIELD_NUMBER: _ClassVar[int]
    imgname: str
    def __init__(self, imgname: _Optional[str] = ...) -> None: ...

class ImageDepthArgs(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: Data
    def __init__(self, image: _Optional[_Union[Data, _Mapping]] = ...) -> None: ...

class ImageDepthResult(_message.Message):
    __slots__ = ("imgname",)
    IMGNAME_FIELD_NUMBER: _ClassVar[int]
    imgname: str
    def __init__(self, imgname: _Optional[str] = ...) -> None: ...

class TfModelLoadArgs(_message.Message):
    __slots__ = ("resource",)
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    resource: int
    def __init__(self, resource: _Optional[int] = ...) -> None: ...

class TfModelLoadResult(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TfModelUnloadArgs(_message.Message):
    __slots__ = ("resource",)
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    resource: int
    def __init__(self, resource: _Optional[int] = ...) -> None: ...

class TfModelUnloadResult(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TfModelRunArgs(_message.Message):
    __slots__ = ("resource", "in_nodes", "in_tensors", "out_nodes")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    IN_NODES_FIELD_NUMBER: _ClassVar[int]
    IN_TENSORS_FIELD_NUMBER: _ClassVar[int]
    OUT_NODES_FIELD_NUMBER: _ClassVar[int]
    resource: int
    in_nodes: _containers.RepeatedScalarFieldContainer[str]
    in_tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    out_nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, resource: _Optional[int] = ..., in_nodes: _Optional[_Iterable[str]] = ..., in_tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., out_nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class TfModelRunResult(_message.Message):
    __slots__ = ("out_tensors",)
    OUT_TENSORS_FIELD_NUMBER: _ClassVar[int]
    out_tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, out_tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class TfliteModelLoadArgs(_message.Message):
    __slots__ = ("resource",)
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    resource: int
    def __init__(self, resource: _Optional[int] = ...) -> None: ...

class TfliteModelLoadResult(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TfliteModelUnloadArgs(_message.Message):
    __slots__ = ("resource",)
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    resource: int
    def __init__(self, resource: _Optional[int] = ...) -> None: ...

class TfliteModelUnloadResult(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TfliteModelRunArgs(_message.Message):
    __slots__ = ("resource", "in_tensors")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    IN_TENSORS_FIELD_NUMBER: _ClassVar[int]
    resource: int
    in_tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, resource: _Optional[int] = ..., in_tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class TfliteModelRunResult(_message.Message):
    __slots__ = ("out_tensors",)
    OUT_TENSORS_FIELD_NUMBER: _ClassVar[int]
    out_tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, out_tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class TorchModelLoadArgs(_message.Message):
    __slots__ = ("resource",)
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    resource: int
    def __init__(self, resource: _Optional[int] = ...) -> None: ...

class TorchModelLoadResult(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TorchModelRunArgs(_message.Message):
    __slots__ = ("resource", "in_tensors")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    IN_TENSORS_FIELD_NUMBER: _ClassVar[int]
    resource: int
    in_tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, resource: _Optional[int] = ..., in_tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class TorchModelRunResult(_message.Message):
    __slots__ = ("out_tensors",)
    OUT_TENSORS_FIELD_NUMBER: _ClassVar[int]
    out_tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, out_tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class TorchSgemmArgs(_message.Message):
    __slots__ = ("a", "b", "c")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    C_FIELD_NUMBER: _ClassVar[int]
    a: Tensor
    b: Tensor
    c: Tensor
    def __init__(self, a: _Optional[_Union[Tensor, _Mapping]] = ..., b: _Optional[_Union[Tensor, _Mapping]] = ..., c: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class TorchSgemmResult(_message.Message):
    __slots__ = ("out",)
    OUT_FIELD_NUMBER: _ClassVar[int]
    out: Tensor
    def __init__(self, out: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class BlasSgemmArgs(_message.Message):
    __slots__ = ("a", "b", "c", "alpha", "beta")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    C_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    a: Tensor
    b: Tensor
    c: Tensor
    alpha: float
    beta: float
    def __init__(self, a: _Optional[_Union[Tensor, _Mapping]] = ..., b: _Optional[_Union[Tensor, _Mapping]] = ..., c: _Optional[_Union[Tensor, _Mapping]] = ..., alpha: _Optional[float] = ..., beta: _Optional[float] = ...) -> None: ...

class BlasSgemmResult(_message.Message):
    __slots__ = ("out",)
    OUT_FIELD_NUMBER: _ClassVar[int]
    out: Tensor
    def __init__(self, out: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class FpgaArraycopyArgs(_message.Message):
    __slots__ = ("a",)
    A_FIELD_NUMBER: _ClassVar[int]
    a: Tensor
    def __init__(self, a: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class FpgaArraycopyResult(_message.Message):
    __slots__ = ("out",)
    OUT_FIELD_NUMBER: _ClassVar[int]
    out: Tensor
    def __init__(self, out: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class FpgaMmultArgs(_message.Message):
    __slots__ = ("a", "b")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    a: Tensor
    b: Tensor
    def __init__(self, a: _Optional[_Union[Tensor, _Mapping]] = ..., b: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class FpgaMmultResult(_message.Message):
    __slots__ = ("out",)
    OUT_FIELD_NUMBER: _ClassVar[int]
    out: Tensor
    def __init__(self, out: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class FpgaParallelArgs(_message.Message):
    __slots__ = ("a", "b")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    a: Tensor
    b: Tensor
    def __init__(self, a: _Optional[_Union[Tensor, _Mapping]] = ..., b: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class FpgaParallelResult(_message.Message):
    __slots__ = ("add", "mult")
    ADD_FIELD_NUMBER: _ClassVar[int]
    MULT_FIELD_NUMBER: _ClassVar[int]
    add: Tensor
    mult: Tensor
    def __init__(self, add: _Optional[_Union[Tensor, _Mapping]] = ..., mult: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class FpgaVectoraddArgs(_message.Message):
    __slots__ = ("a", "b")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    a: Tensor
    b: Tensor
    def __init__(self, a: _Optional[_Union[Tensor, _Mapping]] = ..., b: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class FpgaVectoraddResult(_message.Message):
    __slots__ = ("out",)
    OUT_FIELD_NUMBER: _ClassVar[int]
    out: Tensor
    def __init__(self, out: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class MinmaxArgs(_message.Message):
    __slots__ = ("data", "low_threshold", "high_threshold")
    DATA_FIELD_NUMBER: _ClassVar[int]
    LOW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    HIGH_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    data: Tensor
    low_threshold: int
    high_threshold: int
    def __init__(self, data: _Optional[_Union[Tensor, _Mapping]] = ..., low_threshold: _Optional[int] = ..., high_threshold: _Optional[int] = ...) -> None: ...

class MinmaxResult(_message.Message):
    __slots__ = ("out", "min", "max")
    OUT_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    out: Tensor
    min: float
    max: float
    def __init__(self, out: _Optional[_Union[Tensor, _Mapping]] = ..., min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class OpencvArgs(_message.Message):
    __slots__ = ("args", "nr_outputs")
    ARGS_FIELD_NUMBER: _ClassVar[int]
    NR_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    args: _containers.RepeatedCompositeFieldContainer[Data]
    nr_outputs: int
    def __init__(self, args: _Optional[_Iterable[_Union[Data, _Mapping]]] = ..., nr_outputs: _Optional[int] = ...) -> None: ...

class OpencvResult(_message.Message):
    __slots__ = ("outputs",)
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[Data]
    def __init__(self, outputs: _Optional[_Iterable[_Union[Data, _Mapping]]] = ...) -> None: ...

class ModelLoadArgs(_message.Message):
    __slots__ = ("resource",)
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    resource: int
    def __init__(self, resource: _Optional[int] = ...) -> None: ...

class ModelLoadResult(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelUnloadArgs(_message.Message):
    __slots__ = ("resource",)
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    resource: int
    def __init__(self, resource: _Optional[int] = ...) -> None: ...

class ModelUnloadResult(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelRunArgs(_message.Message):
    __slots__ = ("resource", "inputs")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    resource: int
    inputs: NamedTensors
    def __init__(self, resource: _Optional[int] = ..., inputs: _Optional[_Union[NamedTensors, _Mapping]] = ...) -> None: ...

class ModelRunResult(_message.Message):
    __slots__ = ("outputs",)
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    outputs: NamedTensors
    def __init__(self, outputs: _Optional[_Union[NamedTensors, _Mapping]] = ...) -> None: ...

class OpRequest(_message.Message):
    __slots__ = ("session_id", "op", "profile", "noop", "exec", "exec_with_resource", "image_classify", "image_detect", "image_segment", "image_pose", "image_depth", "tf_model_load", "tf_model_unload", "tf_model_run", "tflite_model_load", "tflite_model_unload", "tflite_model_run", "torch_model_load", "torch_model_run", "torch_sgemm", "blas_sgemm", "fpga_arraycopy", "fpga_mmult", "fpga_parallel", "fpga_vectoradd", "minmax", "opencv", "model_load", "model_unload", "model_run")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    NOOP_FIELD_NUMBER: _ClassVar[int]
    EXEC_FIELD_NUMBER: _ClassVar[int]
    EXEC_WITH_RESOURCE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_CLASSIFY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DETECT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_POSE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    TF_MODEL_LOAD_FIELD_NUMBER: _ClassVar[int]
    TF_MODEL_UNLOAD_FIELD_NUMBER: _ClassVar[int]
    TF_MODEL_RUN_FIELD_NUMBER: _ClassVar[int]
    TFLITE_MODEL_LOAD_FIELD_NUMBER: _ClassVar[int]
    TFLITE_MODEL_UNLOAD_FIELD_NUMBER: _ClassVar[int]
    TFLITE_MODEL_RUN_FIELD_NUMBER: _ClassVar[int]
    TORCH_MODEL_LOAD_FIELD_NUMBER: _ClassVar[int]
    TORCH_MODEL_RUN_FIELD_NUMBER: _ClassVar[int]
    TORCH_SGEMM_FIELD_NUMBER: _ClassVar[int]
    BLAS_SGEMM_FIELD_NUMBER: _ClassVar[int]
    FPGA_ARRAYCOPY_FIELD_NUMBER: _ClassVar[int]
    FPGA_MMULT_FIELD_NUMBER: _ClassVar[int]
    FPGA_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    FPGA_VECTORADD_FIELD_NUMBER: _ClassVar[int]
    MINMAX_FIELD_NUMBER: _ClassVar[int]
    OPENCV_FIELD_NUMBER: _ClassVar[int]
    MODEL_LOAD_FIELD_NUMBER: _ClassVar[int]
    MODEL_UNLOAD_FIELD_NUMBER: _ClassVar[int]
    MODEL_RUN_FIELD_NUMBER: _ClassVar[int]
    session_id: int
    op: str
    profile: bool
    noop: NoopArgs
    exec: ExecArgs
    exec_with_resource: ExecWithResourceArgs
    image_classify: ImageClassifyArgs
    image_detect: ImageDetectArgs
    image_segment: ImageSegmentArgs
    image_pose: ImagePoseArgs
    image_depth: ImageDepthArgs
    tf_model_load: TfModelLoadArgs
    tf_model_unload: TfModelUnloadArgs
    tf_model_run: TfModelRunArgs
    tflite_model_load: TfliteModelLoadArgs
    tflite_model_unload: TfliteModelUnloadArgs
    tflite_model_run: TfliteModelRunArgs
    torch_model_load: TorchModelLoadArgs
    torch_model_run: TorchModelRunArgs
    torch_sgemm: TorchSgemmArgs
    blas_sgemm: BlasSgemmArgs
    fpga_arraycopy: FpgaArraycopyArgs
    fpga_mmult: FpgaMmultArgs
    fpga_parallel: FpgaParallelArgs
    fpga_vectoradd: FpgaVectoraddArgs
    minmax: MinmaxArgs
    opencv: OpencvArgs
    model_load: ModelLoadArgs
    model_unload: ModelUnloadArgs
    model_run: ModelRunArgs
    def __init__(self, session_id: _Optional[int] = ..., op: _Optional[str] = ..., profile: _Optional[bool] = ..., noop: _Optional[_Union[NoopArgs, _Mapping]] = ..., exec: _Optional[_Union[ExecArgs, _Mapping]] = ..., exec_with_resource: _Optional[_Union[ExecWithResourceArgs, _Mapping]] = ..., image_classify: _Optional[_Union[ImageClassifyArgs, _Mapping]] = ..., image_detect: _Optional[_Union[ImageDetectArgs, _Mapping]] = ..., image_segment: _Optional[_Union[ImageSegmentArgs, _Mapping]] = ..., image_pose: _Optional[_Union[ImagePoseArgs, _Mapping]] = ..., image_depth: _Optional[_Union[ImageDepthArgs, _Mapping]] = ..., tf_model_load: _Optional[_Union[TfModelLoadArgs, _Mapping]] = ..., tf_model_unload: _Optional[_Union[TfModelUnloadArgs, _Mapping]] = ..., tf_model_run: _Optional[_Union[TfModelRunArgs, _Mapping]] = ..., tflite_model_load: _Optional[_Union[TfliteModelLoadArgs, _Mapping]] = ..., tflite_model_unload: _Optional[_Union[TfliteModelUnloadArgs, _Mapping]] = ..., tflite_model_run: _Optional[_Union[TfliteModelRunArgs, _Mapping]] = ..., torch_model_load: _Optional[_Union[TorchModelLoadArgs, _Mapping]] = ..., torch_model_run: _Optional[_Union[TorchModelRunArgs, _Mapping]] = ..., torch_sgemm: _Optional[_Union[TorchSgemmArgs, _Mapping]] = ..., blas_sgemm: _Optional[_Union[BlasSgemmArgs, _Mapping]] = ..., fpga_arraycopy: _Optional[_Union[FpgaArraycopyArgs, _Mapping]] = ..., fpga_mmult: _Optional[_Union[FpgaMmultArgs, _Mapping]] = ..., fpga_parallel: _Optional[_Union[FpgaParallelArgs, _Mapping]] = ..., fpga_vectoradd: _Optional[_Union[FpgaVectoraddArgs, _Mapping]] = ..., minmax: _Optional[_Union[MinmaxArgs, _Mapping]] = ..., opencv: _Optional[_Union[OpencvArgs, _Mapping]] = ..., model_load: _Optional[_Union[ModelLoadArgs, _Mapping]] = ..., model_unload: _Optional[_Union[ModelUnloadArgs, _Mapping]] = ..., model_run: _Optional[_Union[ModelRunArgs, _Mapping]] = ...) -> None: ...

class OpResponse(_message.Message):
    __slots__ = ("op", "regions", "noop", "exec", "exec_with_resource", "image_classify", "image_detect", "image_segment", "image_pose", "image_depth", "tf_model_load", "tf_model_unload", "tf_model_run", "tflite_model_load", "tflite_model_unload", "tflite_model_run", "torch_model_load", "torch_model_run", "torch_sgemm", "blas_sgemm", "fpga_arraycopy", "fpga_mmult", "fpga_parallel", "fpga_vectoradd", "minmax", "opencv", "model_load", "model_unload", "model_run")
    OP_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    NOOP_FIELD_NUMBER: _ClassVar[int]
    EXEC_FIELD_NUMBER: _ClassVar[int]
    EXEC_WITH_RESOURCE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_CLASSIFY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DETECT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_POSE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    TF_MODEL_LOAD_FIELD_NUMBER: _ClassVar[int]
    TF_MODEL_UNLOAD_FIELD_NUMBER: _ClassVar[int]
    TF_MODEL_RUN_FIELD_NUMBER: _ClassVar[int]
    TFLITE_MODEL_LOAD_FIELD_NUMBER: _ClassVar[int]
    TFLITE_MODEL_UNLOAD_FIELD_NUMBER: _ClassVar[int]
    TFLITE_MODEL_RUN_FIELD_NUMBER: _ClassVar[int]
    TORCH_MODEL_LOAD_FIELD_NUMBER: _ClassVar[int]
    TORCH_MODEL_RUN_FIELD_NUMBER: _ClassVar[int]
    TORCH_SGEMM_FIELD_NUMBER: _ClassVar[int]
    BLAS_SGEMM_FIELD_NUMBER: _ClassVar[int]
    FPGA_ARRAYCOPY_FIELD_NUMBER: _ClassVar[int]
    FPGA_MMULT_FIELD_NUMBER: _ClassVar[int]
    FPGA_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    FPGA_VECTORADD_FIELD_NUMBER: _ClassVar[int]
    MINMAX_FIELD_NUMBER: _ClassVar[int]
    OPENCV_FIELD_NUMBER: _ClassVar[int]
    MODEL_LOAD_FIELD_NUMBER: _ClassVar[int]
    MODEL_UNLOAD_FIELD_NUMBER: _ClassVar[int]
    MODEL_RUN_FIELD_NUMBER: _ClassVar[int]
    op: str
    regions: _containers.RepeatedCompositeFieldContainer[Region]
    noop: NoopResult
    exec: ExecResult
    exec_with_resource: ExecWithResourceResult
    image_classify: ImageClassifyResult
    image_detect: ImageDetectResult
    image_segment: ImageSegmentResult
    image_pose: ImagePoseResult
    image_depth: ImageDepthResult
    tf_model_load: TfModelLoadResult
    tf_model_unload: TfModelUnloadResult
    tf_model_run: TfModelRunResult
    tflite_model_load: TfliteModelLoadResult
    tflite_model_unload: TfliteModelUnloadResult
    tflite_model_run: TfliteModelRunResult
    torch_model_load: TorchModelLoadResult
    torch_model_run: TorchModelRunResult
    torch_sgemm: TorchSgemmResult
    blas_sgemm: BlasSgemmResult
    fpga_arraycopy: FpgaArraycopyResult
    fpga_mmult: FpgaMmultResult
    fpga_parallel: FpgaParallelResult
    fpga_vectoradd: FpgaVectoraddResult
    minmax: MinmaxResult
    opencv: OpencvResult
    model_load: ModelLoadResult
    model_unload: ModelUnloadResult
    model_run: ModelRunResult
    def __init__(self, op: _Optional[str] = ..., regions: _Optional[_Iterable[_Union[Region, _Mapping]]] = ..., noop: _Optional[_Union[NoopResult, _Mapping]] = ..., exec: _Optional[_Union[ExecResult, _Mapping]] = ..., exec_with_resource: _Optional[_Union[ExecWithResourceResult, _Mapping]] = ..., image_classify: _Optional[_Union[ImageClassifyResult, _Mapping]] = ..., image_detect: _Optional[_Union[ImageDetectResult, _Mapping]] = ..., image_segment: _Optional[_Union[ImageSegmentResult, _Mapping]] = ..., image_pose: _Optional[_Union[ImagePoseResult, _Mapping]] = ..., image_depth: _Optional[_Union[ImageDepthResult, _Mapping]] = ..., tf_model_load: _Optional[_Union[TfModelLoadResult, _Mapping]] = ..., tf_model_unload: _Optional[_Union[TfModelUnloadResult, _Mapping]] = ..., tf_model_run: _Optional[_Union[TfModelRunResult, _Mapping]] = ..., tflite_model_load: _Optional[_Union[TfliteModelLoadResult, _Mapping]] = ..., tflite_model_unload: _Optional[_Union[TfliteModelUnloadResult, _Mapping]] = ..., tflite_model_run: _Optional[_Union[TfliteModelRunResult, _Mapping]] = ..., torch_model_load: _Optional[_Union[TorchModelLoadResult, _Mapping]] = ..., torch_model_run: _Optional[_Union[TorchModelRunResult, _Mapping]] = ..., torch_sgemm: _Optional[_Union[TorchSgemmResult, _Mapping]] = ..., blas_sgemm: _Optional[_Union[BlasSgemmResult, _Mapping]] = ..., fpga_arraycopy: _Optional[_Union[FpgaArraycopyResult, _Mapping]] = ..., fpga_mmult: _Optional[_Union[FpgaMmultResult, _Mapping]] = ..., fpga_parallel: _Optional[_Union[FpgaParallelResult, _Mapping]] = ..., fpga_vectoradd: _Optional[_Union[FpgaVectoraddResult, _Mapping]] = ..., minmax: _Optional[_Union[MinmaxResult, _Mapping]] = ..., opencv: _Optional[_Union[OpencvResult, _Mapping]] = ..., model_load: _Optional[_Union[ModelLoadResult, _Mapping]] = ..., model_unload: _Optional[_Union[ModelUnloadResult, _Mapping]] = ..., model_run: _Optional[_Union[ModelRunResult, _Mapping]] = ...) -> None: ...
