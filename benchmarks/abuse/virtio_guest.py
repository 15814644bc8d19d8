"""A raw virtio-mock guest: its own memory, split ring and eventfds, every step by hand.

The transport's driver (``transports/virtio_mock/driver.py``) is a well-behaved guest; an
attacker is not. :class:`RawGuest` speaks the control protocol
(``transports/virtio_mock/protocol.py``) and places descriptor chains itself, so it can hand
over a memory file of any size, send set-up requests in any order, offer reply buffers of any
length and never fetch what the device keeps for it. Every wait has a timeout.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import select
import socket
import time
from typing import Any

from vaccel_transports.virtio_mock.layout import (
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    RingLayout,
    SplitRing,
)
from vaccel_transports.virtio_mock.protocol import (
    CONTROL_PACKET_BYTES,
    KIND_CALL,
    PROTOCOL_VERSION,
    REP_HEADER,
    REPLY_ERROR,
    REPLY_HEADER_BYTES,
    REPLY_NEED_SPACE,
    REPLY_OK,
    REQ_HEADER,
    REQ_MAGIC,
)


class GuestError(Exception):
    """The device refused a step, closed the socket, or did not answer in time."""


def control_socket(path: str, timeout: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def sealed_memfd(size: int) -> int:
    """A memfd of ``size`` bytes (sparse), sealed against shrinking and growing."""
    fd = os.memfd_create("bench-abuse-guest", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    except BaseException:
        os.close(fd)
        raise
    return fd


class RawGuest:
    """One guest connection. ``memory`` bytes of shared memory (mapped here only when
    ``map_memory``), a queue of ``num`` entries at offset 0, data after it."""

    def __init__(
        self,
        path: str,
        *,
        memory: int = 16 << 20,
        num: int = 64,
        map_memory: bool = True,
        timeout: float = 5.0,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.sock = control_socket(path, timeout)
        self.memory = memory
        self.num = num
        self.memfd = sealed_memfd(memory)
        self.mem: mmap.mmap | None = mmap.mmap(self.memfd, memory) if map_memory else None
        self.layout = RingLayout.at(0, num)
        self.data_start = (self.layout.end + mmap.PAGESIZE - 1) & ~(mmap.PAGESIZE - 1)
        self.ring: SplitRing | None = SplitRing(self.mem, self.layout) if self.mem else None
        self.kick = os.eventfd(0, os.EFD_CLOEXEC)
        self.call = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._next_free = self.data_start
        self._avail = 0
        self._used = 0
        self._next_desc = 0
        self.peer = ""

    # Control socket ----------------------------------------------------------------------------
    def request(self, message: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
        """Send one control request, return the device's answer (``{"ok": ...}``)."""
        data = json.dumps(message).encode()
        try:
            if fds:
                socket.send_fds(self.sock, [data], fds)
            else:
                self.sock.send(data)
            deadline = time.monotonic() + self.timeout
            while True:
                self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
                raw, got, _flags, _addr = socket.recv_fds(self.sock, CONTROL_PACKET_BYTES, 4)
                for fd in got:
                    os.close(fd)
                if not raw:
                    raise GuestError(f"{message.get('req')}: the device closed the socket")
                reply = json.loads(raw.decode())
                if "event" in reply:  # an event before the answer
                    continue
                return dict(reply)
        except TimeoutError:
            raise GuestError(f"{message.get('req')}: no answer within {self.timeout} s") from None
        except (OSError, ValueError) as exc:
            raise GuestError(f"{message.get('req')}: {exc}") from exc

    def step(self, message: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
        reply = self.request(message, fds)
        if not reply.get("ok"):
            raise GuestError(f"{message.get('req')} refused: {reply.get('error')}")
        return reply

    def set_memory(self) -> dict[str, Any]:
        return self.request({"req": "SET_MEM_TABLE", "size": self.memory}, [self.memfd])

    def set_addr(self) -> dict[str, Any]:
        return self.request(
            {
                "req": "SET_VRING_ADDR",
                "desc": self.layout.desc,
                "avail": self.layout.avail,
                "used": self.layout.used,
                "data_start": self.data_start,
            }
        )

    def handshake(self) -> str:
        """The whole set-up, in order; returns the peer name the device gave."""
        self.step({"req": "GET_FEATURES"})
        self.step({"req": "SET_MEM_TABLE", "size": self.memory}, [self.memfd])
        self.step({"req": "SET_VRING_NUM", "num": self.num})
        reply = self.set_addr()
        if not reply.get("ok"):
            raise GuestError(f"SET_VRING_ADDR refused: {reply.get('error')}")
        self.finish_handshake()
        return self.peer

    def finish_handshake(self) -> None:
        self.step({"req": "SET_VRING_KICK"}, [self.kick])
        self.step({"req": "SET_VRING_CALL"}, [self.call])
        reply = self.step({"req": "SET_VRING_ENABLE", "pid": os.getpid()})
        self.peer = str(reply.get("peer", ""))

    # Ring --------------------------------------------------------------------------------------
    def alloc(self, nbytes: int) -> int:
        off = (self._next_free + 63) & ~63
        if off + nbytes > self.memory:
            raise GuestError(f"guest memory full ({nbytes} bytes wanted)")
        self._next_free = off + nbytes
        return off

    def submit(
        self,
        method: str | bytes,
        payload: bytes,
        reply_len: int = REPLY_HEADER_BYTES + 65536,
        *,
        head: int | None = None,
    ) -> tuple[int, int]:
        """Place a request chain (request descriptor, then one writable reply descriptor of
        ``reply_len`` bytes) and kick; returns (head, reply offset)."""
        assert self.mem is not None and self.ring is not None
        name = method.encode() if isinstance(method, str) else method
        first = REQ_HEADER.pack(
            REQ_MAGIC, PROTOCOL_VERSION, KIND_CALL, len(name), 0, 0, len(payload)
        ) + name + payload  # fmt: skip
        req = self.alloc(len(first))
        self.mem[req : req + len(first)] = first
        reply = self.alloc(reply_len)
        if head is None:
            head = self._next_desc
            self._next_desc = (self._next_desc + 2) % self.num
        nxt = (head + 1) % self.num
        self.ring.write_desc(head, req, len(first), VRING_DESC_F_NEXT, nxt)
        self.ring.write_desc(nxt, reply, reply_len, VRING_DESC_F_WRITE, 0)
        self.publish(head)
        return head, reply

    def publish(self, head: int) -> None:
        """Make the chain at ``head`` (any index the caller likes) available, and kick."""
        assert self.ring is not None
        self.ring.set_avail_entry(self._avail, head)
        self._avail = (self._avail + 1) & 0xFFFF
        self.ring.set_avail_idx(self._avail)
        os.eventfd_write(self.kick, 1)

    def wait_used(self, count: int = 1, timeout: float | None = None) -> list[tuple[int, int]]:
        """The next ``count`` completions (head, bytes written); fewer on timeout or when the
        device closes the control socket."""
        assert self.ring is not None
        out: list[tuple[int, int]] = []
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(out) < count:
            while self._used != self.ring.used_idx() and len(out) < count:
                out.append(self.ring.used_entry(self._used))
                self._used = (self._used + 1) & 0xFFFF
            if len(out) >= count:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([self.call, self.sock], [], [], min(left, 0.2))
            if self.call in ready:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(self.call)
            if self.sock in ready and self.control_closed():
                break
        return out

    def control_closed(self) -> bool:
        """Whether the device closed the control socket (reads pending events)."""
        try:
            self.sock.setblocking(False)
            while True:
                raw = self.sock.recv(CONTROL_PACKET_BYTES)
                if not raw:
                    return True
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            with contextlib.suppress(OSError):
                self.sock.settimeout(self.timeout)

    def reply(self, offset: int, written: int) -> tuple[int, bytes, str]:
        """(kind, payload, error text) of the reply the device wrote at ``offset``."""
        assert self.mem is not None
        if written < REP_HEADER.size:
            return -1, b"", f"device wrote {written} bytes"
        _magic, _v, kind, _code, _nbuf, _token, plen = REP_HEADER.unpack_from(self.mem, offset)
        if kind == REPLY_ERROR:
            start = offset + REP_HEADER.size
            text = bytes(self.mem[start : start + plen]).decode("utf-8", "replace")
            return kind, b"", text
        if kind == REPLY_OK:
            start = offset + REPLY_HEADER_BYTES
            return kind, bytes(self.mem[start : start + plen]), ""
        if kind == REPLY_NEED_SPACE:
            return kind, b"", ""
        return kind, b"", f"unknown reply kind {kind}"

    def call_method(self, method: str, payload: bytes, timeout: float = 10.0) -> bytes:
        """One call; the reply payload, or GuestError."""
        _head, off = self.submit(method, payload)
        done = self.wait_used(1, timeout)
        if not done:
            raise GuestError(f"{method}: no completion within {timeout} s")
        kind, data, error = self.reply(off, done[0][1])
        if kind != REPLY_OK:
            raise GuestError(f"{method}: {error or f'reply kind {kind}'}")
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        for fd in (self.kick, self.call, self.memfd):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.ring is not None:
            self.ring.close()
        if self.mem is not None:
            with contextlib.suppress(BufferError):
                self.mem.close()
            self.mem = None
