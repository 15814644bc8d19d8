"""The ttrpc wire: frames, the envelope messages, and the buffered reading both sides share.

A frame is a 10-byte header (data length and stream id, both 4-byte big-endian, then a 1-byte
type and a 1-byte flags field) followed by its data (containerd's ttrpc PROTOCOL.md). A call is
a stream with an odd id: the client sends a Request frame (a ``Request`` message naming service
and method, with the serialized agent message as payload) and gets a Response frame (a
``Response``: a google.rpc.Status and the reply payload).

Out-of-band buffers (large tensors) never go into an envelope message: they travel as Data
frames on the call's stream, sent straight from the caller's memory and received straight into
their final buffer (one copy per side, by the kernel). The first Data frame is a ``Buffers``
message with their sizes, so that the receiver checks the total against its limit and allocates
once, before reading a byte of them; then come the bytes, in frames of at most
:data:`DATA_CHUNK`. A client sends them after a Request flagged ``remote open`` and ends with a
frame flagged ``remote closed``; the agent sends them before its Response, only to a client
that flagged its Request (a plain ttrpc client, e.g. containerd's, gets them inline in the
payload, as field 2047, like over gRPC).

The envelope messages are built at import from a descriptor of our own (wire-compatible with
ttrpc's ``ttrpc.Request``/``ttrpc.Response`` and ``google.rpc.Status``: the same field numbers
and types), in a private descriptor pool so they cannot clash with other protobuf modules.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from vaccel_core.errors import VaccelError
from vaccel_core.transport import Buffer, CallError

HEADER = struct.Struct(">IIBB")
HEADER_BYTES = HEADER.size  # 10

TYPE_REQUEST = 1
TYPE_RESPONSE = 2
TYPE_DATA = 3
TYPE_NAMES = {TYPE_REQUEST: "Request", TYPE_RESPONSE: "Response", TYPE_DATA: "Data"}

#: Request and Data flag: the sender sends nothing more on this stream.
FLAG_REMOTE_CLOSED = 0x01
#: Request flag: Data frames follow (our out-of-band buffers).
FLAG_REMOTE_OPEN = 0x02
#: Data flag: the frame carries no data.
FLAG_NO_DATA = 0x04

#: containerd's limit on one frame's data; our Data frames never exceed it.
DATA_CHUNK = 4 << 20
#: Room for the envelope (service, method, metadata) around a payload of the message limit.
ENVELOPE_SLACK = 64 << 10
#: Metadata key of the bearer token (as over gRPC).
TOKEN_KEY = "authorization"
#: Type URL of the ErrorDetail (agent.proto) carried in a failed call's Status details.
ERROR_DETAIL_TYPE = "type.googleapis.com/vaccel.agent.v1.ErrorDetail"

#: gRPC status codes by number (google.rpc.Code), and back.
STATUS_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
STATUS_CODES = {name: code for code, name in enumerate(STATUS_NAMES)}


def status_name(code: int) -> str:
    return STATUS_NAMES[code] if 0 <= code < len(STATUS_NAMES) else "UNKNOWN"


# Schema -----------------------------------------------------------------------------------------
_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_BYTES = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
_INT64 = descriptor_pb2.FieldDescriptorProto.TYPE_INT64
_INT32 = descriptor_pb2.FieldDescriptorProto.TYPE_INT32
_UINT64 = descriptor_pb2.FieldDescriptorProto.TYPE_UINT64
_MESSAGE = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
_REPEATED = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED

#: Our wire schema: message -> fields (name, number, type, repeated, message type).
SCHEMA: dict[str, tuple[tuple[str, int, int, bool, str], ...]] = {
    "KeyValue": (("key", 1, _STRING, False, ""), ("value", 2, _STRING, False, "")),
    "Request": (
        ("service", 1, _STRING, False, ""),
        ("method", 2, _STRING, False, ""),
        ("payload", 3, _BYTES, False, ""),
        ("timeout_nano", 4, _INT64, False, ""),
        ("metadata", 5, _MESSAGE, True, "KeyValue"),
    ),
    # google.protobuf.Any and google.rpc.Status, field for field.
    "Any": (("type_url", 1, _STRING, False, ""), ("value", 2, _BYTES, False, "")),
    "Status": (
        ("code", 1, _INT32, False, ""),
        ("message", 2, _STRING, False, ""),
        ("details", 3, _MESSAGE, True, "Any"),
    ),
    "Response": (("status", 1, _MESSAGE, False, "Status"), ("payload", 2, _BYTES, False, "")),
    # Sizes of the out-of-band buffers that follow on the stream (first Data frame).
    "Buffers": (("sizes", 1, _UINT64, True, ""),),
    # grpc.health.v1, field for field.
    "HealthCheckRequest": (("service", 1, _STRING, False, ""),),
    "HealthCheckResponse": (("status", 1, _INT32, False, ""),),
}
PACKAGE = "vaccel.ttrpc.v1"


def _build() -> dict[str, Any]:
    file = descriptor_pb2.FileDescriptorProto(
        name="vaccel_ttrpc_wire.proto", package=PACKAGE, syntax="proto3"
    )
    for name, fields in SCHEMA.items():
        message = file.message_type.add(name=name)
        for field_name, number, kind, repeated, type_name in fields:
            message.field.add(
                name=field_name,
                number=number,
                type=kind,
                label=_REPEATED if repeated else _OPTIONAL,
                type_name=f".{PACKAGE}.{type_name}" if type_name else None,
            )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
        for name in SCHEMA
    }


_MESSAGES = _build()
Request: Any = _MESSAGES["Request"]
Response: Any = _MESSAGES["Response"]
Status: Any = _MESSAGES["Status"]
Buffers: Any = _MESSAGES["Buffers"]
HealthCheckRequest: Any = _MESSAGES["HealthCheckRequest"]
HealthCheckResponse: Any = _MESSAGES["HealthCheckResponse"]


# Errors -----------------------------------------------------------------------------------------
class ConnectionClosed(Exception):
    """The peer closed the connection (at a frame boundary when ``clean``)."""

    def __init__(self, clean: bool) -> None:
        super().__init__("connection closed" if clean else "connection closed mid-frame")
        self.clean = clean


class FrameTimeout(Exception):
    """A frame did not arrive in full in time."""


class ProtocolError(VaccelError):
    """The peer broke the protocol: the connection cannot go on."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=errno.EPROTO)


def error_status(exc: CallError) -> Any:
    """The Status of a failed call, with its ErrorDetail (status name, errno, message)."""
    from vaccel_core.proto import pb

    detail = pb().ErrorDetail(status=exc.status, code=exc.code, message=exc.message)
    status = Status(code=STATUS_CODES.get(exc.status, 2), message=exc.message)
    status.details.add(type_url=ERROR_DETAIL_TYPE, value=detail.SerializeToString())
    return status


def call_error(status: Any, method: str) -> CallError:
    """The CallError a non-OK Status stands for (its ErrorDetail when there is one)."""
    for detail in status.details:
        if detail.type_url == ERROR_DETAIL_TYPE:
            from vaccel_core.proto import pb

            parsed = pb().ErrorDetail()
            try:
                parsed.ParseFromString(detail.value)
            except Exception:
                break
            return CallError(parsed.status, parsed.message, code=parsed.code)
    name = status_name(status.code)
    code = {"DEADLINE_EXCEEDED": errno.ETIMEDOUT, "RESOURCE_EXHAUSTED": errno.ENOMEM}
    return CallError(
        name,
        f"{method}: {status.message}",
        code=code.get(name, errno.EREMOTEIO),
        details=[(d.type_url, bytes(d.value)) for d in status.details],
    )


# Frames -----------------------------------------------------------------------------------------
class Header(NamedTuple):
    length: int
    stream: int
    type: int
    flags: int


def frame(stream: int, kind: int, flags: int, data: bytes) -> bytes:
    """One whole frame as bytes (for small frames)."""
    return HEADER.pack(len(data), stream, kind, flags) + data


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(0x80)]


def request_prefix(service: str, method: str, metadata: Sequence[tuple[str, str]]) -> bytes:
    """The fields of a ``Request`` that are the same on every call of a method: service,
    method and metadata (:func:`request_body` adds the rest)."""
    request = Request(service=service, method=method)
    for key, value in metadata:
        request.metadata.add(key=key, value=value)
    return bytes(request.SerializeToString())


def request_body(prefix: bytes, payload: Buffer, timeout_nano: int) -> bytes:
    """A ``Request`` from its :func:`request_prefix`, payload and timeout: the bytes protobuf
    would write, in another field order (which protobuf parsers accept); on every call's
    path, so encoded by hand (a test compares it with protobuf's)."""
    n = memoryview(payload).nbytes
    tail = b"\x20" + _varint(timeout_nano) if timeout_nano > 0 else b""
    if not n:
        return prefix + tail
    return b"".join((prefix, b"\x1a", _varint(n), payload, tail))


def ok_payload(data: bytes) -> bytes | None:
    """The payload of a successful ``Response`` as our agent and containerd's servers write it
    (an empty status, then the payload), or None for anything else (parse it with protobuf)."""
    if data == b"\x0a\x00":
        return b""
    if data[:3] != b"\x0a\x00\x12":
        return None
    n, shift, pos = 0, 0, 3
    while pos < len(data) and shift < 35:
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return data[pos:] if pos + n == len(data) else None
        shift += 7
    return None


def ok_response(stream: int, payload: Buffer) -> list[Buffer]:
    """The Response frame of a successful call, as parts to send (``payload`` not copied):
    ``Response{status: {}, payload}`` encoded by hand, since it is on every call's path
    (the same bytes protobuf writes; a test compares them)."""
    view = memoryview(payload)
    n = view.nbytes
    if not n:  # proto3 writes no empty bytes field
        return [HEADER.pack(2, stream, TYPE_RESPONSE, 0) + b"\x0a\x00", b""]
    body_head = b"\x0a\x00\x12" + _varint(n)  # status (empty = OK), then the payload field
    return [HEADER.pack(len(body_head) + n, stream, TYPE_RESPONSE, 0) + body_head, view]


def buffer_frames(stream: int, buffers: Sequence[Buffer], last_flags: int) -> list[Buffer]:
    """The Data frames that carry ``buffers`` on ``stream`` (sizes first, then the bytes,
    each chunk a view into the caller's memory); the last frame gets ``last_flags``."""
    views = [_flat(b) for b in buffers]
    sizes = Buffers(sizes=[v.nbytes for v in views]).SerializeToString()
    chunks = [memoryview(sizes)]
    for view in views:
        chunks.extend(view[i : i + DATA_CHUNK] for i in range(0, view.nbytes, DATA_CHUNK))
    out: list[Buffer] = []
    for i, chunk in enumerate(chunks):
        flags = last_flags if i == len(chunks) - 1 else 0
        out.append(HEADER.pack(chunk.nbytes, stream, TYPE_DATA, flags))
        if chunk.nbytes:
            out.append(chunk)
    return out


def _flat(buf: Buffer) -> memoryview:
    view = memoryview(buf)
    if view.ndim != 1 or view.itemsize != 1 or not view.c_contiguous:
        view = view.cast("B") if view.c_contiguous else memoryview(view.tobytes())
    return view


#: Socket send buffer asked for (the kernel caps it at net.core.wmem_max): a 64 MiB tensor
#: then crosses in a few dozen fills instead of hundreds, each a wake-up of the receiver.
SEND_BUFFER = 1 << 20


def widen_send_buffer(sock: socket.socket) -> None:
    """Ask for :data:`SEND_BUFFER` bytes of send buffer (memory the kernel uses only while
    data is in flight; bounded per connection like everything else)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


def send_all(sock: socket.socket, parts: Sequence[Buffer]) -> None:
    """Write ``parts`` in order with as few system calls as possible (no copies)."""
    pending = [memoryview(p) for p in parts]
    while pending:
        sent = sock.sendmsg(pending[:512])
        while sent:
            first = pending[0]
            if sent >= first.nbytes:
                sent -= first.nbytes
                pending.pop(0)
            else:
                pending[0] = first[sent:]
                sent = 0
        while pending and not pending[0].nbytes:
            pending.pop(0)


def receive_sizes(data: bytes, limit: int, what: str, receiver: str = "agent") -> list[int]:
    """The buffer sizes a ``Buffers`` frame announces, checked against ``limit`` bytes
    (``receiver`` names who refuses them)."""
    try:
        sizes = list(Buffers.FromString(data).sizes)
    except Exception:
        raise ProtocolError(f"{what}: malformed out-of-band buffer sizes") from None
    total = sum(sizes)
    if total > limit:
        raise CallError(
            "RESOURCE_EXHAUSTED",
            f"{what}: the {receiver} refused the message: {total} bytes of out-of-band "
            f"buffers exceed what its message size limit leaves ({limit} bytes, "
            f"max_message_bytes)",
            code=errno.ENOMEM,
        )
    return sizes


class Incoming:
    """Out-of-band buffers being received: allocated once, filled in place by Data frames."""

    def __init__(self, sizes: Sequence[int]) -> None:
        # Uninitialized memory (np.empty): every byte is about to be received into it, and
        # zeroing 64 MiB first would cost as much as receiving it.
        self.buffers = [memoryview(np.empty(n, dtype=np.uint8).data) for n in sizes]
        self._index = 0
        self._offset = 0
        self._skip_empty()

    def _skip_empty(self) -> None:
        while self._index < len(self.buffers) and self._offset == len(self.buffers[self._index]):
            self._index += 1
            self._offset = 0

    @property
    def complete(self) -> bool:
        return self._index >= len(self.buffers)

    def fill(self, reader: FrameReader, length: int) -> None:
        """Read ``length`` bytes of a Data frame into the buffers (ProtocolError past them)."""
        while length:
            if self.complete:
                raise ProtocolError("more out-of-band bytes than announced")
            target = self.buffers[self._index][self._offset :]
            n = min(length, target.nbytes)
            reader.read_into(target[:n])
            self._offset += n
            length -= n
            self._skip_empty()


class FrameReader:
    """Frames from a stream socket through one reusable buffer: a small frame costs one
    ``recv`` (often together with the frames after it); a large body is received straight
    into its destination.

    Waiting for a frame may take as long as the caller allows (an idle client is fine); once
    its first byte is in, the whole frame must follow within ``frame_timeout`` seconds (a
    peer that stops mid-frame raises FrameTimeout instead of holding the reader)."""

    def __init__(
        self,
        sock: socket.socket,
        limit: int,
        frame_timeout: float | None = None,
        size: int = 256 << 10,
    ) -> None:
        self.sock = sock
        #: Largest frame data accepted.
        self.limit = limit
        self.frame_timeout = frame_timeout
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._deadline: float | None = None  # of the frame being read
        self._kernel_timeout: float | None = None  # SO_RCVTIMEO as last set
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed."""
        return self._end - self._start

    def _recv(self, into: memoryview, deadline: float | None, started: bool) -> int:
        while True:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not self._poll.poll(left * 1000.0):
                    raise FrameTimeout
            try:
                n = self.sock.recv_into(into)
            except BlockingIOError:
                # The kernel's receive timeout, left from an earlier wait (_first_bytes):
                # wait for the bytes here instead.
                if deadline is None:
                    self._poll.poll()
                continue
            except (ConnectionResetError, BrokenPipeError):
                raise ConnectionClosed(not started) from None
            if not n:
                raise ConnectionClosed(not started)
            return n

    def _started(self) -> None:
        """The current frame's first byte is in: its deadline starts."""
        if self._deadline is None and self.frame_timeout is not None:
            self._deadline = time.monotonic() + self.frame_timeout

    def _fill(self, need: int, deadline: float | None) -> None:
        """Make ``need`` bytes available in the buffer (need <= its size)."""
        if self._end - self._start >= need:
            return
        if self._start:
            # Compact: what is left goes to the front.
            left = self._end - self._start
            self._buf[:left] = self._view[self._start : self._end]
            self._start, self._end = 0, left
        while self._end - self._start < need:
            started = self._end > 0
            if started:
                self._started()
            if self._deadline is not None:
                deadline = self._deadline if deadline is None else min(deadline, self._deadline)
            self._end += self._recv(self._view[self._end :], deadline, started)

    def wait(self, timeout: float | None) -> bool:
        """Whether bytes are available within ``timeout`` seconds (None: wait for them)."""
        if self._end > self._start:
            return True
        return bool(self._poll.poll(None if timeout is None else max(timeout, 0.0) * 1000.0))

    def _first_bytes(self, deadline: float) -> None:
        """Wait for the next bytes until ``deadline`` (the buffer is empty) in one blocking
        ``recv`` bounded by the kernel (SO_RCVTIMEO, changed only when the wait is not about
        the same as the last one): one system call where poll + recv would be two."""
        self._start = self._end = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FrameTimeout
            if self._kernel_timeout is None or abs(self._kernel_timeout - left) > max(
                0.05, left / 10
            ):
                seconds = int(left)
                value = struct.pack("ll", seconds, max(int((left - seconds) * 1e6), 1))
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
                self._kernel_timeout = left
            try:
                n = self.sock.recv_into(self._view)
            except BlockingIOError:
                continue  # the kernel's timeout: check the deadline
            except (ConnectionResetError, BrokenPipeError):
                raise ConnectionClosed(True) from None
            if not n:
                raise ConnectionClosed(True)
            self._end = n
            return

    def header(self, deadline: float | None = None) -> Header:
        """The next frame's header; ``deadline`` bounds the wait for it. Raises
        ConnectionClosed(clean=True) at the end of the stream."""
        self._deadline = None
        start = self._start
        if self._end - start >= HEADER_BYTES:  # already here: no wait, no deadline yet
            self._start = start + HEADER_BYTES
            self._started()
            return Header._make(HEADER.unpack_from(self._buf, start))
        if deadline is not None and self._end == self._start:
            self._first_bytes(deadline)
        self._fill(HEADER_BYTES, deadline)
        self._started()
        head = Header._make(HEADER.unpack_from(self._buf, self._start))
        self._start += HEADER_BYTES
        return head

    def read(self, n: int) -> bytes:
        """``n`` bytes of frame data as a bytes object."""
        if n <= len(self._buf):
            self._fill(n, None)
            data = bytes(self._view[self._start : self._start + n])
            self._start += n
            return data
        out = bytearray(n)
        self.read_into(memoryview(out))
        return bytes(out)

    def read_into(self, target: memoryview) -> None:
        """Fill ``target`` with frame data: what is buffered, then straight from the socket."""
        n = target.nbytes
        have = min(self._end - self._start, n)
        if have:
            target[:have] = self._view[self._start : self._start + have]
            self._start += have
        pos = have
        while pos < n:
            pos += self._recv(target[pos:], self._deadline, True)

    def skip(self, n: int) -> None:
        """Read and drop ``n`` bytes of frame data."""
        while n:
            have = min(self._end - self._start, n)
            self._start += have
            n -= have
            if n:
                self._fill(min(n, len(self._buf)), None)
