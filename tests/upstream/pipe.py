"""How the upstream-style test client reaches an agent: a ttrpc pipe that sends one request of
upstream's service and returns the reply bytes, and upstream's error form.

Upstream's Rust agent fails a call with a ttrpc status: NOT_FOUND or INVALID_ARGUMENT with a
message, or INTERNAL with one detail, a ``google.protobuf.Any`` whose type URL is
``type.googleapis.com/vaccel.ProtoError`` and whose value is a serialized ``vaccel.Error``
(vaccel-rust ``vaccel-rpc-agent/src/agent_service.rs``).

Two pipes:

* :class:`RawPipe` frames ttrpc itself on a connected socket (unix, or the vsock path's socket)
  so that it sees the whole status, details included;
* :class:`ChannelPipe` uses our :class:`~vaccel_transports.ttrpc.client.TtrpcChannel` as a
  plain pipe; its errors (``CallError``) carry the status name and message but not the details.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Any, Protocol

from vaccel_core.proto.upstream import SERVICE_NAME, upstream

#: The Any type URL upstream's agent gives its ``vaccel.Error`` detail.
ERROR_TYPE_URL = "type.googleapis.com/vaccel.ProtoError"

_HEADER = struct.Struct(">IIBB")  # length, stream id, type, flags (containerd's PROTOCOL.md)
_TYPE_REQUEST, _TYPE_RESPONSE = 1, 2
_STATUS_NAMES = {
    0: "OK",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    8: "RESOURCE_EXHAUSTED",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    16: "UNAUTHENTICATED",
}


@dataclass
class UpstreamError(Exception):
    """A failed call in upstream's form: the ttrpc status, its message, and the
    ``vaccel.Error`` detail (None when there was none, or the pipe cannot see details)."""

    status: str
    message: str
    error: Any = None
    #: Every detail as (type URL, bytes); None when the pipe cannot see details.
    details: tuple[tuple[str, bytes], ...] | None = None

    def __str__(self) -> str:
        return f"{self.status}: {self.message} (detail: {self.describe_error()})"

    def describe_error(self) -> str:
        """The ``vaccel.Error`` detail in words (``FFI 22``, ``CONVERSION_FAILED '...'``)."""
        if self.error is None:
            return "none"
        kind = upstream().vaccel.ErrorType.Name(self.error.type)
        parts = [kind]
        if self.error.HasField("ffi_error"):
            parts.append(str(self.error.ffi_error))
        if self.error.HasField("status"):
            parts.append(repr(self.error.status.message))
        return " ".join(parts)

    @property
    def ffi_error(self) -> int | None:
        """The errno-style code of an FFI / FFI_WITH_STATUS detail."""
        if self.error is None or not self.error.HasField("ffi_error"):
            return None
        return int(self.error.ffi_error)

    @property
    def error_type(self) -> str | None:
        """The detail's ErrorType name (``FFI``, ``CONVERSION_FAILED``, ...)."""
        if self.error is None:
            return None
        return str(upstream().vaccel.ErrorType.Name(self.error.type))


class Pipe(Protocol):
    """One connection that carries calls of upstream's AgentService."""

    def call(self, method: str, payload: bytes, timeout: float) -> bytes:
        """Send ``method`` with a serialized request; the reply bytes, or UpstreamError."""
        ...

    def close(self) -> None: ...


def _decode_error(status: Any) -> UpstreamError:
    details = tuple((d.type_url, bytes(d.value)) for d in status.details)
    error = None
    for type_url, value in details:
        if type_url == ERROR_TYPE_URL:
            error = upstream().vaccel.Error.FromString(value)
    name = _STATUS_NAMES.get(status.code, f"CODE_{status.code}")
    return UpstreamError(name, status.message, error, details)


class RawPipe:
    """ttrpc framed by hand on a connected stream socket, one call at a time: a Request
    frame on an odd stream id, then the Response frame of that stream."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._next_stream = 1

    @classmethod
    def unix(cls, path: str, timeout: float = 10.0) -> RawPipe:
        """Connect to the agent's unix socket."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(path)
        return cls(sock)

    @classmethod
    def vsock(cls, address: str, timeout: float = 10.0) -> RawPipe:
        """Connect to ``vsock://CID:PORT`` through the vsock transport's socket opening (the
        hybrid-vsock stand-in in tests)."""
        from vaccel_transports.vsock import VsockAddress, VsockTransport

        sock = VsockTransport().open_stream(VsockAddress.parse(address), timeout)
        sock.settimeout(timeout)
        return cls(sock)

    def call(self, method: str, payload: bytes, timeout: float) -> bytes:
        from vaccel_transports.ttrpc import wire  # ttrpc's envelope messages (containerd's schema)

        stream = self._next_stream
        self._next_stream += 2
        body = wire.Request(
            service=SERVICE_NAME, method=method, payload=payload, timeout_nano=int(timeout * 1e9)
        ).SerializeToString()
        self._sock.settimeout(timeout)
        self._sock.sendall(_HEADER.pack(len(body), stream, _TYPE_REQUEST, 0) + body)
        while True:
            length, got_stream, kind, _flags = _HEADER.unpack(self._recv(_HEADER.size))
            data = self._recv(length)
            if got_stream == stream and kind == _TYPE_RESPONSE:
                break
        response = wire.Response.FromString(data)
        if response.HasField("status") and response.status.code != 0:
            raise _decode_error(response.status)
        return bytes(response.payload)

    def _recv(self, size: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            chunk = self._sock.recv(size - len(chunks))
            if not chunk:
                raise ConnectionError("the agent closed the connection")
            chunks += chunk
        return bytes(chunks)

    def close(self) -> None:
        self._sock.close()


class ChannelPipe:
    """Our TtrpcChannel as a pipe (``invoke`` of upstream's service; opaque payloads)."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    @classmethod
    def connect(cls, address: str) -> ChannelPipe:
        """A TtrpcChannel to ``unix://PATH`` or ``vsock://CID:PORT`` (the transports' own
        connect: for vsock the real client path, hello included)."""
        from vaccel_core.plugins import get_registry
        from vaccel_core.transport import Address, TransportOptions

        parsed = Address.parse(address)
        transport = get_registry().transport(parsed.scheme)
        return cls(transport.connect(parsed, TransportOptions(connect_timeout=10)))

    def call(self, method: str, payload: bytes, timeout: float) -> bytes:
        from vaccel_core.transport import CallError, Message

        try:
            reply = self.channel.invoke(SERVICE_NAME, method, Message(payload), timeout)
        except CallError as exc:
            raise UpstreamError(exc.status, exc.message) from None
        return bytes(reply.payload)

    def close(self) -> None:
        self.channel.close()
