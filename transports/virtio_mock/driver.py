"""The guest side of virtio-mock: a virtio driver living in the client process.

It allocates the shared memory (a sealed memfd) and two eventfds (kick: driver -> device,
call: device -> driver), hands them to the device over the unix control socket as vhost-user
does, and places every request in a split virtqueue inside that memory. Request buffers that
already lie in the shared memory (see :meth:`VirtioMockChannel.alloc`) are not copied at all;
reply buffers are returned as views into the shared memory (no copy) and their block is freed
once nothing refers to them any more.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import mmap
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vaccel_core.errors import RemoteError
from vaccel_core.log import logger
from vaccel_core.transport import Address, Buffer, CallError, Channel, Message, TransportOptions

from .layout import (
    DEFAULT_QUEUE_SIZE,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    RingLayout,
    SplitRing,
)
from .memory import Allocator, OutOfSharedMemory
from .protocol import (
    KIND_CALL,
    KIND_FETCH,
    REPLY_ERROR,
    REPLY_HEADER_BYTES,
    REPLY_NEED_SPACE,
    REPLY_OK,
    ProtocolError,
    align,
    data_layout,
    pack_request_header,
    recv_control,
    send_control,
    unpack_reply_header,
)

#: Default size of the shared memory (a sparse memfd: pages cost nothing until touched).
DEFAULT_MEMORY_BYTES = 1 << 30
#: Smallest reply data area offered with each request.
DEFAULT_REPLY_BYTES = 64 * 1024
_POLL_SLICE = 1.0


def control_path(address: Address) -> str:
    """The control socket path of ``virtio-mock:///path`` (the part after the scheme)."""
    path = address.target
    if not path or path in ("/", "//"):
        raise CallError(
            "INVALID_ARGUMENT",
            f"address {address}: expected virtio-mock:///path/to/control.sock",
            code=errno.EINVAL,
        )
    return path


@dataclass
class _InFlight:
    head: int
    descs: list[int]
    blocks: list[int]  # allocator offsets freed on completion
    reply_header: int  # offset of the reply header
    data: int  # offset of the reply data area (-1: none)
    data_len: int
    abandoned: bool = False
    result: int | None = None  # used length once complete
    extra: dict[str, Any] = field(default_factory=dict)


class VirtioMockChannel(Channel):
    """A client channel: one virtio-mock device instance with its own memory and queue."""

    def __init__(self, address: Address, options: TransportOptions) -> None:
        self.address = str(address)
        self._path = control_path(address)
        extra = options.extra
        self.queue_size = int(extra.get("virtio_mock_queue_size", DEFAULT_QUEUE_SIZE))
        self.memory_bytes = int(extra.get("virtio_mock_memory_bytes", DEFAULT_MEMORY_BYTES))
        self.reply_bytes = int(extra.get("virtio_mock_reply_bytes", DEFAULT_REPLY_BYTES))
        self.max_message_bytes = options.max_message_bytes
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._closed = False
        self._dead: str | None = None
        self._reaping = False
        self._inflight: dict[int, _InFlight] = {}
        self._chain_errors: dict[int, str] = {}
        self._avail_idx = 0
        self._last_used = 0
        self._fds: list[int] = []

        self._ctl = self._connect(options.connect_timeout)
        try:
            self._setup_memory()
            self.peer_id = self._handshake(options.connect_timeout)
        except BaseException:
            self._teardown()
            raise
        self._ctl.setblocking(False)
        self._poller = select.poll()
        self._poller.register(self._call, select.POLLIN)
        self._poller.register(self._ctl.fileno(), select.POLLIN)

    # Set-up ---------------------------------------------------------------------------------
    def _unreachable(self, why: str) -> RemoteError:
        return RemoteError(f"virtio-mock device at {self.address} is unreachable: {why}")

    def _connect(self, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(self._path)
        except FileNotFoundError:
            sock.close()
            raise self._unreachable(f"no control socket at {self._path!r}") from None
        except OSError as exc:
            sock.close()
            raise self._unreachable(os.strerror(exc.errno or 0) or str(exc)) from exc
        return sock

    def _setup_memory(self) -> None:
        num = self.queue_size
        self.layout = RingLayout.at(0, num)
        self.data_start = align(self.layout.end, mmap.PAGESIZE)
        if self.memory_bytes < self.data_start + REPLY_HEADER_BYTES + 4096:
            raise CallError(
                "INVALID_ARGUMENT",
                f"virtio_mock_memory_bytes: at least {self.data_start + 8192} for a "
                f"{num}-entry queue, got {self.memory_bytes}",
                code=errno.EINVAL,
            )
        flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
        self._memfd = os.memfd_create("vaccel-virtio-mock", flags)
        self._fds.append(self._memfd)
        os.ftruncate(self._memfd, self.memory_bytes)
        # Sealed: neither side can shrink the file under the other's mapping (SIGBUS).
        fcntl.fcntl(
            self._memfd,
            fcntl.F_ADD_SEALS,
            fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL,
        )
        self.mem = mmap.mmap(self._memfd, self.memory_bytes)
        self._mem_u8 = np.frombuffer(self.mem, dtype=np.uint8)
        self._base = int(self._mem_u8.ctypes.data)
        self.ring = SplitRing(self.mem, self.layout)
        self.allocator = Allocator(self.data_start, self.memory_bytes)
        self._free_descs = list(range(num - 1, -1, -1))
        self._kick = os.eventfd(0, os.EFD_CLOEXEC)
        self._fds.append(self._kick)
        self._call = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._fds.append(self._call)

    def _request(self, message: dict[str, Any], fds: Sequence[int] = ()) -> dict[str, Any]:
        send_control(self._ctl, message, fds)
        reply, got = recv_control(self._ctl)
        for fd in got:
            os.close(fd)
        if reply is None:
            raise self._unreachable(f"device closed the control socket during {message['req']}")
        if not reply.get("ok"):
            raise self._unreachable(f"device refused {message['req']}: {reply.get('error')}")
        return reply

    def _handshake(self, timeout: float) -> str:
        try:
            self._request({"req": "GET_FEATURES"})
            self._request({"req": "SET_MEM_TABLE", "size": self.memory_bytes}, [self._memfd])
            self._request({"req": "SET_VRING_NUM", "num": self.queue_size})
            self._request(
                {
                    "req": "SET_VRING_ADDR",
                    "desc": self.layout.desc,
                    "avail": self.layout.avail,
                    "used": self.layout.used,
                    "data_start": self.data_start,
                }
            )
            self._request({"req": "SET_VRING_KICK"}, [self._kick])
            self._request({"req": "SET_VRING_CALL"}, [self._call])
            reply = self._request({"req": "SET_VRING_ENABLE", "pid": os.getpid()})
        except TimeoutError:
            raise self._unreachable(f"no answer to the handshake within {timeout}s") from None
        except (ProtocolError, OSError) as exc:
            raise self._unreachable(f"handshake failed: {exc}") from exc
        return str(reply.get("peer", ""))

    # Shared memory helpers --------------------------------------------------------------------
    def alloc(self, nbytes: int) -> np.ndarray:
        """A uint8 array of ``nbytes`` inside the shared memory: fill it and pass it (or a
        view of it) as a request buffer, and the device reads it where it lies, without any
        copy. The block is freed when the array (and every view of it) is gone."""
        with self._cv:
            self._check_usable()
            off = self.allocator.alloc(max(1, nbytes))
        return self._owned_view(off, nbytes)

    def _owned_view(self, off: int, nbytes: int) -> np.ndarray:
        block: np.ndarray = self._mem_u8[off : off + max(1, nbytes)]
        weakref.finalize(block, self._free_block, off)
        return block[:nbytes]

    def _free_block(self, off: int) -> None:
        with contextlib.suppress(ValueError):
            self.allocator.free(off)
        with self._cv:
            self._cv.notify_all()

    def _shm_offset(self, buf: memoryview) -> int | None:
        """The offset of ``buf`` in the shared memory, when it lies in our data area."""
        if buf.nbytes == 0:
            return None
        addr = int(np.frombuffer(buf, dtype=np.uint8).ctypes.data)
        off = addr - self._base
        if self.data_start <= off and off + buf.nbytes <= self.memory_bytes:
            return off
        return None

    # Calls ----------------------------------------------------------------------------------
    def call(self, method: str, request: Message, timeout: float | None = None) -> Message:
        deadline = None if timeout is None else time.monotonic() + timeout
        bufs = [_as_bytes_view(b, i) for i, b in enumerate(request.buffers)]
        payload = _as_bytes_view(request.payload, -1)
        total = payload.nbytes + sum(b.nbytes for b in bufs)
        if total > self.max_message_bytes:
            raise CallError(
                "RESOURCE_EXHAUSTED",
                f"{method}: request of {total} bytes exceeds max_message_bytes "
                f"({self.max_message_bytes})",
                code=errno.ENOMEM,
            )
        try:
            header = pack_request_header(KIND_CALL, method, len(bufs))
        except ProtocolError as exc:
            raise CallError("INVALID_ARGUMENT", f"{method}: {exc}", code=errno.EINVAL) from exc
        reply_data = max(self.reply_bytes, align(total) + self.reply_bytes)
        rec = self._submit(method, header, payload, bufs, reply_data, deadline)
        used = self._wait(method, rec, deadline)
        return self._finish(method, rec, used, deadline)

    def _submit(
        self,
        method: str,
        header: bytes,
        payload: memoryview,
        bufs: list[memoryview],
        reply_data: int,
        deadline: float | None,
    ) -> _InFlight:
        ndesc = 2 + len(bufs) + 2
        if ndesc > self.queue_size:
            raise CallError(
                "INVALID_ARGUMENT",
                f"{method}: request needs {ndesc} descriptors ({len(bufs)} buffers), the "
                f"virtqueue holds {self.queue_size}",
                code=errno.EINVAL,
            )
        # Readable parts that must be copied in: header, payload, buffers outside the memory.
        zero_copy = [self._shm_offset(b) for b in bufs]
        sizes = [len(header), payload.nbytes] + [
            b.nbytes if z is None else 0 for b, z in zip(bufs, zero_copy, strict=True)
        ]
        req_bytes = sum(align(n) for n in sizes) + REPLY_HEADER_BYTES
        while True:
            with self._cv:
                self._check_usable()
                got = self._try_reserve(ndesc, req_bytes, reply_data)
                if got is not None:
                    descs, block, data = got
                    break
            self._make_progress(
                method,
                deadline,
                waiting_for="space in the virtqueue",
                need=(ndesc, req_bytes + reply_data),
            )
        # Fill the request block (outside the lock: it is ours alone).
        chain: list[tuple[int, int, int]] = []  # (addr, len, flags)
        pos = block
        for part in (memoryview(header), payload):
            self.mem[pos : pos + part.nbytes] = part
            chain.append((pos, part.nbytes, 0))
            pos += align(part.nbytes)
        for b, z in zip(bufs, zero_copy, strict=True):
            if z is not None:
                chain.append((z, b.nbytes, 0))
            else:
                self.mem[pos : pos + b.nbytes] = b
                chain.append((pos, b.nbytes, 0))
                pos += align(b.nbytes)
        reply_header = pos
        chain.append((reply_header, REPLY_HEADER_BYTES, VRING_DESC_F_WRITE))
        chain.append((data, reply_data, VRING_DESC_F_WRITE))
        for i, (addr, length, flags) in enumerate(chain):
            last = i == len(chain) - 1
            self.ring.write_desc(
                descs[i],
                addr,
                length,
                flags | (0 if last else VRING_DESC_F_NEXT),
                0 if last else descs[i + 1],
            )
        rec = _InFlight(descs[0], descs, [block], reply_header, data, reply_data)
        self._publish(rec)
        return rec

    def _try_reserve(
        self, ndesc: int, req_bytes: int, reply_data: int
    ) -> tuple[list[int], int, int] | None:
        if len(self._free_descs) < ndesc:
            return None
        try:
            block = self.allocator.alloc(req_bytes)
        except OutOfSharedMemory:
            return None
        try:
            data = self.allocator.alloc(reply_data)
        except OutOfSharedMemory:
            self.allocator.free(block)
            return None
        descs = [self._free_descs.pop() for _ in range(ndesc)]
        return descs, block, data

    def _publish(self, rec: _InFlight) -> None:
        with self._cv:
            self._check_usable()
            self._inflight[rec.head] = rec
            slot = self._avail_idx
            self.ring.set_avail_entry(slot, rec.head)  # the entry first ...
            self._avail_idx = (slot + 1) & 0xFFFF
            self.ring.set_avail_idx(self._avail_idx)  # ... then the index
        try:
            os.eventfd_write(self._kick, 1)  # a syscall: also a full memory barrier
        except OSError as exc:
            raise self._gone(f"kick failed: {exc}") from exc

    def _wait(self, method: str, rec: _InFlight, deadline: float | None) -> int:
        while True:
            with self._cv:
                if rec.result is not None:
                    return rec.result
                if self._dead is not None or self._closed:
                    self._abandon(rec)
                    self._check_usable()
            try:
                self._make_progress(method, deadline, waiting_for="the reply")
            except CallError:
                with self._cv:
                    if rec.result is not None:
                        return rec.result
                    self._abandon(rec)
                raise

    def _abandon(self, rec: _InFlight) -> None:
        """Called with the lock held: the caller gives up; the completion frees the rest."""
        if rec.head in self._inflight:
            rec.abandoned = True

    def _make_progress(
        self,
        method: str,
        deadline: float | None,
        *,
        waiting_for: str,
        need: tuple[int, int] | None = None,
    ) -> None:
        """Wait a little for completions: become the reaper (poll the eventfd and the control
        socket, then drain the used ring), or wait for the thread that is."""
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise self._timeout_error(method, waiting_for, need)
        slice_ = _POLL_SLICE if remaining is None else min(remaining, _POLL_SLICE)
        with self._cv:
            if self._reaping:
                self._cv.wait(slice_)
                return
            self._reaping = True
        events: list[tuple[int, int]] = []
        try:
            events = self._poller.poll(slice_ * 1000.0)
            for fd, ev in events:
                if fd == self._call:
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(self._call)
                else:
                    self._read_control(ev)
        except OSError as exc:
            if not self._closed:
                self._mark_dead(f"polling failed: {exc}")
        finally:
            with self._cv:
                self._reaping = False
                if self._dead is None and not self._closed:
                    self._drain_used()
                self._cv.notify_all()
        if need is not None and events == []:
            gc.collect()  # reply views in reference cycles may hold shared memory

    def _read_control(self, events: int) -> None:
        while True:
            try:
                message, fds = recv_control(self._ctl)
            except BlockingIOError:
                return
            except (OSError, ProtocolError) as exc:
                self._mark_dead(f"control socket failed: {exc}")
                return
            for fd in fds:
                os.close(fd)
            if message is None:
                self._mark_dead("the device closed the control socket (agent stopped or died)")
                return
            if message.get("event") == "chain_error":
                with self._cv:
                    self._chain_errors[int(message.get("head", -1))] = str(message.get("reason"))

    def _drain_used(self) -> None:
        """Called with the lock held: record every new used element."""
        used = self.ring.used_idx()
        pending = (used - self._last_used) & 0xFFFF
        if pending > self.queue_size:
            self._mark_dead(
                f"device broke the used ring (index moved by {pending} > {self.queue_size})",
                locked=True,
            )
            return
        for _ in range(pending):
            head, length = self.ring.used_entry(self._last_used)
            self._last_used = (self._last_used + 1) & 0xFFFF
            rec = self._inflight.pop(head, None)
            if rec is None:
                logger.warning(
                    "virtio-mock %s: device completed unknown chain %d", self.address, head
                )
                continue
            self._free_descs.extend(rec.descs)
            if rec.abandoned:
                for block in rec.blocks:
                    self.allocator.free(block)
                if rec.data >= 0:
                    self.allocator.free(rec.data)
            else:
                rec.result = length
            if rec.abandoned:
                self._chain_errors.pop(head, None)

    def _finish(self, method: str, rec: _InFlight, used: int, deadline: float | None) -> Message:
        try:
            if used == 0:
                with self._cv:
                    reason = self._chain_errors.pop(rec.head, None)
                if reason is None:
                    self._read_control(0)
                    with self._cv:
                        reason = self._chain_errors.pop(rec.head, "no reason given")
                raise CallError(
                    "INVALID_ARGUMENT",
                    f"{method}: virtio-mock device at {self.address} rejected the descriptor "
                    f"chain: {reason}",
                    code=errno.EINVAL,
                )
            if used > REPLY_HEADER_BYTES + rec.data_len:
                raise self._gone(f"device reported {used} bytes written, more than offered")
            raw = bytes(
                self.mem[rec.reply_header : rec.reply_header + min(used, REPLY_HEADER_BYTES)]
            )
            try:
                reply = unpack_reply_header(raw, len(raw))
            except (ProtocolError, ValueError, KeyError) as exc:
                raise self._gone(f"malformed reply header: {exc}") from exc
        except BaseException:
            self._release(rec, keep_data=False)
            raise
        if reply.kind == REPLY_ERROR:
            self._release(rec, keep_data=False)
            raise CallError(reply.status or "UNKNOWN", reply.message, code=reply.code)
        if reply.kind == REPLY_NEED_SPACE:
            self._release(rec, keep_data=False)
            return self._fetch(method, reply.token, reply.payload_len, reply.buffer_lens, deadline)
        if reply.kind != REPLY_OK:
            self._release(rec, keep_data=False)
            raise self._gone(f"unknown reply kind {reply.kind}")
        return self._unpack(rec, reply.payload_len, reply.buffer_lens)

    def _unpack(self, rec: _InFlight, payload_len: int, lens: Sequence[int]) -> Message:
        offsets, total = data_layout(payload_len, lens)
        if total > rec.data_len:
            self._release(rec, keep_data=False)
            raise self._gone(f"reply of {total} bytes overruns the {rec.data_len}-byte area")
        payload = bytes(self.mem[rec.data : rec.data + payload_len])
        self._release(rec, keep_data=bool(lens))
        if not lens:
            return Message(payload, ())
        area: np.ndarray = self._mem_u8[rec.data : rec.data + rec.data_len]
        weakref.finalize(area, self._free_block, rec.data)
        buffers = tuple(area[o : o + n].data for o, n in zip(offsets, lens, strict=True))
        return Message(payload, buffers)

    def _release(self, rec: _InFlight, *, keep_data: bool) -> None:
        for block in rec.blocks:
            self.allocator.free(block)
        rec.blocks = []
        if rec.data >= 0 and not keep_data:
            self.allocator.free(rec.data)
        rec.data = -1 if not keep_data else rec.data
        with self._cv:
            self._cv.notify_all()

    def _fetch(
        self,
        method: str,
        token: int,
        payload_len: int,
        lens: Sequence[int],
        deadline: float | None,
    ) -> Message:
        _offsets, total = data_layout(payload_len, lens)
        if total > self.max_message_bytes:
            raise CallError(
                "RESOURCE_EXHAUSTED",
                f"{method}: reply of {total} bytes exceeds max_message_bytes "
                f"({self.max_message_bytes})",
                code=errno.ENOMEM,
            )
        header = pack_request_header(KIND_FETCH, method, 0, token)
        rec = self._submit(method, header, memoryview(b""), [], max(total, 1), deadline)
        used = self._wait(method, rec, deadline)
        result = self._finish(method, rec, used, deadline)
        return result

    # Errors and state -----------------------------------------------------------------------
    def _timeout_error(
        self, method: str, waiting_for: str, need: tuple[int, int] | None
    ) -> CallError:
        if need is not None:
            with self._cv:
                detail = (
                    f"virtqueue full or shared memory exhausted: need {need[0]} descriptors "
                    f"({len(self._free_descs)} free of {self.queue_size}, "
                    f"{len(self._inflight)} requests in flight) and {need[1]} bytes (largest "
                    f"free block {self.allocator.largest_free()} of {self.allocator.capacity})"
                )
            return CallError("RESOURCE_EXHAUSTED", f"{method}: {detail}", code=errno.ENOMEM)
        return CallError(
            "DEADLINE_EXCEEDED",
            f"{method}: no reply from virtio-mock device at {self.address} in time",
            code=errno.ETIMEDOUT,
        )

    def _gone(self, why: str) -> RemoteError:
        self._mark_dead(why)
        return RemoteError(f"virtio-mock device at {self.address}: {why}")

    def _mark_dead(self, why: str, *, locked: bool = False) -> None:
        if locked:
            self._dead = self._dead or why
            self._cv.notify_all()
            return
        with self._cv:
            self._dead = self._dead or why
            self._cv.notify_all()

    def _check_usable(self) -> None:
        if self._closed:
            raise RemoteError(f"virtio-mock channel to {self.address} is closed")
        if self._dead is not None:
            raise RemoteError(f"virtio-mock device at {self.address}: {self._dead}")

    def close(self) -> None:
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._cv.notify_all()
        self._teardown()

    def _teardown(self) -> None:
        ctl = getattr(self, "_ctl", None)
        if ctl is not None:
            ctl.close()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        mem = getattr(self, "mem", None)
        if mem is not None:
            self._mem_u8 = np.empty(0, dtype=np.uint8)
            # Reply views still alive keep the mapping until the last of them goes.
            with contextlib.suppress(BufferError):
                mem.close()

    def __enter__(self) -> VirtioMockChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_bytes_view(buf: Buffer | Any, index: int) -> memoryview:
    """A flat byte view of a buffer (bytes, bytearray, memoryview, numpy array)."""
    view = memoryview(buf)
    if view.format == "B" and view.ndim == 1 and view.c_contiguous:
        return view
    if not view.c_contiguous:
        what = "payload" if index < 0 else f"buffer {index}"
        raise CallError(
            "INVALID_ARGUMENT",
            f"{what}: expected a C-contiguous buffer, got shape {view.shape} strides "
            f"{view.strides}",
            code=errno.EINVAL,
        )
    return view.cast("B")
