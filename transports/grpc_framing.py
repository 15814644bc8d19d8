"""How a transport :class:`~vaccel_core.transport.Message` travels as one gRPC message.

The out-of-band buffers go first, each as one occurrence of protobuf field 2047 (``bytes``),
then the payload (the serialized agent message) as is. Every request and reply of agent.proto
reserves field 2047, so the whole frame is still a valid message of the method's type: a plain
gRPC client (grpcurl, with reflection) can call the agent and read its replies. Splitting a
frame reads only the leading field-2047 headers and slices the rest (no copy).
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

from vaccel_core.errors import InvalidArgumentError
from vaccel_core.transport import Buffer, CallError, Message

#: Field number (wire type 2, length-delimited) that carries out-of-band buffers.
OOB_FIELD = 2047


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


_TAG = _varint((OOB_FIELD << 3) | 2)  # two bytes: 0xFA 0x7F


class FrameError(InvalidArgumentError):
    """A received frame is not well formed."""


def frame_size(payload_len: int, buffers: Sequence[Buffer]) -> int:
    """Size of the frame :func:`encode` would build, without building it."""
    size = payload_len
    for buf in buffers:
        n = memoryview(buf).nbytes
        size += len(_TAG) + len(_varint(n)) + n
    return size


def check_size(message: Message, limit: int, what: str) -> int:
    """The frame size of ``message``; a CallError (RESOURCE_EXHAUSTED) past ``limit``.

    ``what`` names the message in the error, e.g. ``"noop: request"``."""
    size = frame_size(len(message.payload), message.buffers)
    if size > limit:
        raise CallError(
            "RESOURCE_EXHAUSTED",
            f"{what} of {size} bytes exceeds the message size limit of {limit} bytes "
            f"(max_message_bytes)",
            code=errno.ENOMEM,
        )
    return size


def encode(message: Message) -> bytes:
    """One gRPC message: buffer headers and buffers, then the payload (one copy of each)."""
    if not message.buffers:
        payload = message.payload
        return payload if isinstance(payload, bytes) else bytes(payload)
    parts: list[Buffer] = []
    for buf in message.buffers:
        view = memoryview(buf)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        parts.append(_TAG)
        parts.append(_varint(view.nbytes))
        parts.append(view)
    parts.append(message.payload)
    return b"".join(parts)


def _read_varint(view: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    end = len(view)
    while pos < end and shift < 64:
        byte = view[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise FrameError("malformed message: truncated out-of-band buffer header")


def decode(data: Buffer) -> Message:
    """Split a received frame into payload and buffers (memoryview slices, no copy)."""
    if isinstance(data, bytes) and data[:1] != _TAG[:1]:
        return Message(data)  # no buffers (the common case, on every call's path)
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    tag = _TAG
    n = len(view)
    pos = 0
    buffers: list[memoryview] = []
    while pos + 2 <= n and view[pos] == tag[0] and view[pos + 1] == tag[1]:
        length, pos = _read_varint(view, pos + 2)
        if pos + length > n:
            raise FrameError(
                f"malformed message: out-of-band buffer {len(buffers)} claims {length} bytes, "
                f"only {n - pos} left"
            )
        buffers.append(view[pos : pos + length])
        pos += length
    return Message(view[pos:] if buffers else data, tuple(buffers))
