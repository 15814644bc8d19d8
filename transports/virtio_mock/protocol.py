"""What travels over the control socket and inside descriptor chains.

Control socket (``SOCK_SEQPACKET``, unix): vhost-user style requests, one JSON object per
packet, file descriptors attached with ``SCM_RIGHTS``; the device answers each with
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``; a refusal for a limit adds
``"status": "RESOURCE_EXHAUSTED"`` and ``"code"`` (an errno), and may come unasked, right
before the device closes the connection (too many connections). After set-up the device may
send ``{"event": "chain_error", "head": H, "reason": "..."}`` before completing a chain it
rejected, and answers any further request with ``{"ok": false, ...}``.

A request is one descriptor chain::

    device-readable:  [request header | method name | payload] [buffer 0] ... [buffer n-1]
    device-writable:  [reply header (REPLY_HEADER_BYTES) | reply data area]

The reply data area receives the reply payload at offset 0 and each reply buffer after it,
64-byte aligned (:func:`data_layout`). When the reply does not fit, the device keeps it and
answers ``NEED_SPACE`` with the sizes and a token; the driver then sends a ``FETCH`` chain with
a large enough data area (the operation is not run twice).
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

from vaccel_core.errors import clip

PROTOCOL_VERSION = 1
CONTROL_PACKET_BYTES = 65536
MAX_CONTROL_FDS = 4

# Request header -------------------------------------------------------------------------------
REQ_MAGIC = b"VMRQ"
REQ_HEADER = struct.Struct(
    "<4sHHIIQQ"
)  # magic, version, kind, method_len, nbuf, token, payload_len
KIND_CALL = 1
KIND_FETCH = 2
MAX_METHOD_BYTES = 1024

# Reply header ---------------------------------------------------------------------------------
REP_MAGIC = b"VMRP"
REP_HEADER = struct.Struct("<4sHHiIQQ")  # magic, version, kind, errno, nbuf, token, payload_len
REP_LEN = struct.Struct("<Q")
REPLY_OK = 0
REPLY_ERROR = 1
REPLY_NEED_SPACE = 2
REPLY_HEADER_BYTES = 4096
MAX_REPLY_BUFFERS = (REPLY_HEADER_BYTES - REP_HEADER.size) // REP_LEN.size

DATA_ALIGN = 64


class ProtocolError(Exception):
    """A control message, chain or header that does not follow the protocol."""


def align(value: int, alignment: int = DATA_ALIGN) -> int:
    return (value + alignment - 1) & ~(alignment - 1)


def data_layout(payload_len: int, buffer_lens: Sequence[int]) -> tuple[list[int], int]:
    """Offsets of each buffer in a reply data area (payload first, at 0) and the total size."""
    offsets = []
    end = payload_len
    for n in buffer_lens:
        start = align(end)
        offsets.append(start)
        end = start + n
    return offsets, end


# Request header ---------------------------------------------------------------------------
def pack_request(
    kind: int, method: str, nbuf: int, payload: bytes | memoryview = b"", token: int = 0
) -> bytes:
    """The first (device-readable) descriptor's contents: header, method name, payload."""
    name = method.encode()
    if len(name) > MAX_METHOD_BYTES:
        raise ProtocolError(f"method name: at most {MAX_METHOD_BYTES} bytes, got {len(name)}")
    head = REQ_HEADER.pack(REQ_MAGIC, PROTOCOL_VERSION, kind, len(name), nbuf, token, len(payload))
    return b"".join((head, name, payload))


class RequestHeader(NamedTuple):
    kind: int
    method: str
    nbuf: int
    token: int
    payload_offset: int  # from the start of the descriptor
    payload_len: int


def unpack_request_header(mem: Any, addr: int, length: int) -> RequestHeader:
    """Parse the request header of the descriptor ``[addr, addr + length)`` of ``mem``."""
    if length < REQ_HEADER.size:
        raise ProtocolError(
            f"request header: expected at least {REQ_HEADER.size} bytes, got {length}"
        )
    magic, version, kind, method_len, nbuf, token, payload_len = REQ_HEADER.unpack_from(mem, addr)
    if magic != REQ_MAGIC:
        raise ProtocolError(f"request header: bad magic {bytes(magic)!r} (expected {REQ_MAGIC!r})")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"request header: version {version}, this device speaks 1")
    if kind not in (KIND_CALL, KIND_FETCH):
        raise ProtocolError(f"request header: unknown kind {kind}")
    start = REQ_HEADER.size + method_len
    if method_len > MAX_METHOD_BYTES or start + payload_len > length:
        raise ProtocolError(
            f"request header: method name ({method_len} bytes) and payload ({payload_len} "
            f"bytes) do not fit the {length}-byte descriptor"
        )
    raw = mem[addr + REQ_HEADER.size : addr + start]
    try:
        method = bytes(raw).decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            f"request header: method name is not UTF-8: {clip(bytes(raw))}"
        ) from exc
    return RequestHeader(kind, method, nbuf, token, start, payload_len)


# Reply header -----------------------------------------------------------------------------
def pack_reply_ok(payload_len: int, buffer_lens: Sequence[int]) -> bytes:
    head = REP_HEADER.pack(
        REP_MAGIC, PROTOCOL_VERSION, REPLY_OK, 0, len(buffer_lens), 0, payload_len
    )
    if not buffer_lens:
        return head
    return head + struct.pack(f"<{len(buffer_lens)}Q", *buffer_lens)


def pack_reply_need_space(token: int, payload_len: int, buffer_lens: Sequence[int]) -> bytes:
    head = REP_HEADER.pack(
        REP_MAGIC, PROTOCOL_VERSION, REPLY_NEED_SPACE, 0, len(buffer_lens), token, payload_len
    )
    return head + b"".join(REP_LEN.pack(n) for n in buffer_lens)


#: Ends an error message cut to fit the reply header.
TRUNCATED = " [truncated]"
_STATUS_CHARS = 64


def _error_text(status: str, message: str) -> bytes:
    return json.dumps({"status": status, "message": message}).encode()


def pack_reply_error(status: str, message: str, code: int, room: int = REPLY_HEADER_BYTES) -> bytes:
    """An error reply (header and JSON text) of at most ``room`` bytes, always decodable: a
    message whose JSON form (escapes included: a control character takes 6 bytes, a
    non-ASCII one 6 or 12) does not fit is cut to the longest prefix that fits with
    ``" [truncated]"`` after it."""
    if room < REP_HEADER.size + 256:
        raise ValueError(
            f"error reply: {room} bytes of room, need at least {REP_HEADER.size + 256}"
        )
    room -= REP_HEADER.size
    status = str(status)[:_STATUS_CHARS]
    text = _error_text(status, message)
    if len(text) > room:
        lo, hi = 0, min(len(message), room)  # every character takes at least one byte
        while lo < hi:  # the longest prefix that fits, marker included
            mid = (lo + hi + 1) // 2
            if len(_error_text(status, message[:mid] + TRUNCATED)) <= room:
                lo = mid
            else:
                hi = mid - 1
        text = _error_text(status, message[:lo] + TRUNCATED)
    return REP_HEADER.pack(REP_MAGIC, PROTOCOL_VERSION, REPLY_ERROR, code, 0, 0, len(text)) + text


class ReplyHeader(NamedTuple):
    kind: int
    code: int
    token: int
    payload_len: int
    buffer_lens: tuple[int, ...]
    status: str = ""
    message: str = ""


def unpack_reply_header(mem: Any, addr: int, written: int) -> ReplyHeader:
    """Parse the reply header the device wrote at ``addr`` (``written`` bytes in all)."""
    if written < REP_HEADER.size:
        raise ProtocolError(f"reply header: device wrote {written} bytes, need {REP_HEADER.size}")
    magic, version, kind, code, nbuf, token, payload_len = REP_HEADER.unpack_from(mem, addr)
    if magic != REP_MAGIC or version != PROTOCOL_VERSION:
        raise ProtocolError(f"reply header: bad magic/version {bytes(magic)!r}/{version}")
    if kind == REPLY_ERROR:
        if payload_len > REPLY_HEADER_BYTES - REP_HEADER.size:
            raise ProtocolError(f"reply header: error text of {payload_len} bytes")
        start = addr + REP_HEADER.size
        info = json.loads(bytes(mem[start : start + payload_len]).decode())
        return ReplyHeader(kind, code, 0, 0, (), str(info["status"]), str(info["message"]))
    if nbuf > MAX_REPLY_BUFFERS:
        raise ProtocolError(f"reply header: {nbuf} buffers > {MAX_REPLY_BUFFERS}")
    lens = struct.unpack_from(f"<{nbuf}Q", mem, addr + REP_HEADER.size) if nbuf else ()
    return ReplyHeader(kind, code, token, payload_len, tuple(lens))


# Control socket -----------------------------------------------------------------------------
def send_control(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def recv_control(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One control packet: (message, fds), or (None, []) at end of stream."""
    data, fds, flags, _addr = socket.recv_fds(sock, CONTROL_PACKET_BYTES, MAX_CONTROL_FDS)
    if not data:
        for fd in fds:
            _close_quietly(fd)
        return None, []
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            _close_quietly(fd)
        raise ProtocolError("control message truncated (too large or too many fds)")
    try:
        message = json.loads(data.decode())
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested too deep
        for fd in fds:
            _close_quietly(fd)
        raise ProtocolError(f"control message is not JSON: {clip(data)}") from exc
    if not isinstance(message, dict):
        for fd in fds:
            _close_quietly(fd)
        raise ProtocolError(f"control message: expected a JSON object, got {clip(data)}")
    return message, list(fds)


def _close_quietly(fd: int) -> None:
    import os

    with contextlib.suppress(OSError):
        os.close(fd)
