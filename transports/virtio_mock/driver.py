"""The guest side of virtio-mock: a virtio driver living in the client process.

It allocates the shared memory (a sealed memfd) and two eventfds (kick: driver -> device,
call: device -> driver), hands them to the device over the unix control socket as vhost-user
does, and places every request in a split virtqueue inside that memory.

Two kinds of chains:

* small requests (no out-of-band buffers, header + payload within one slot) use one of the
  preallocated *slots*: two fixed descriptors over a fixed block, nothing to allocate;
* other requests take descriptors from the free list and blocks from the allocator. Request
  buffers that already lie in the shared memory (see :meth:`VirtioMockChannel.alloc`) are not
  copied at all; reply buffers are returned as views into the shared memory (no copy), and
  their block is freed once nothing refers to them any more.
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
from dataclasses import dataclass
from typing import Any

import numpy as np

from vaccel_core.errors import RemoteError
from vaccel_core.log import logger
from vaccel_core.transport import Address, Buffer, CallError, Channel, Message, TransportOptions

from .layout import (
    DEFAULT_QUEUE_SIZE,
    DESC,
    U16,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    RingLayout,
    SplitRing,
)
from .memory import ALLOC_ALIGN, Allocator, OutOfSharedMemory, block_size
from .protocol import (
    KIND_CALL,
    KIND_FETCH,
    REP_HEADER,
    REP_MAGIC,
    REPLY_ERROR,
    REPLY_HEADER_BYTES,
    REPLY_NEED_SPACE,
    REPLY_OK,
    ProtocolError,
    align,
    data_layout,
    pack_request,
    recv_control,
    send_control,
    unpack_reply_header,
)

#: Default size of the shared memory (a sparse memfd: pages cost nothing until touched).
DEFAULT_MEMORY_BYTES = 1 << 30
#: Smallest reply data area offered with a request that does not use a slot.
DEFAULT_REPLY_BYTES = 64 * 1024
#: A slot: request part, then reply header and reply data.
SLOT_REQUEST_BYTES = 4096
SLOT_BYTES = 16384
#: How long a caller polls the used ring before it sleeps on the call eventfd.
DEFAULT_SPIN_US = 50.0
_POLL_SLICE = 1.0
_U16 = (1 << 16) - 1


def control_path(address: Address) -> str:
    """The control socket path of ``virtio-mock:///path`` (the part after the scheme)."""
    path = address.target
    if not path or path.strip("/") == "":
        raise CallError(
            "INVALID_ARGUMENT",
            f"address {address}: expected virtio-mock:///path/to/control.sock",
            code=errno.EINVAL,
        )
    return path


@dataclass(slots=True)
class _InFlight:
    head: int
    descs: list[int]  # general chains: descriptors to free; slots: []
    block: int  # allocator offset of the request block (-1: none / slot)
    reply: int  # offset of the writable reply descriptor (header, then data)
    reply_len: int
    slot: int = -1
    held: int = 0  # shared memory the request's zero-copy buffers hold during the call
    abandoned: bool = False
    result: int | None = None  # bytes the device wrote, once complete


class VirtioMockChannel(Channel):
    """A client channel: one virtio-mock device instance with its own memory and queue."""

    def __init__(self, address: Address, options: TransportOptions) -> None:
        self.address = str(address)
        self._path = control_path(address)
        extra = options.extra
        self.queue_size = int(extra.get("virtio_mock_queue_size", DEFAULT_QUEUE_SIZE))
        self.memory_bytes = int(extra.get("virtio_mock_memory_bytes", DEFAULT_MEMORY_BYTES))
        self.reply_bytes = int(extra.get("virtio_mock_reply_bytes", DEFAULT_REPLY_BYTES))
        self.spin_seconds = float(extra.get("virtio_mock_spin_us", DEFAULT_SPIN_US)) / 1e6
        self.max_message_bytes = options.max_message_bytes
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._closed = False
        self._dead: str | None = None
        self._reaping = False
        self._waiters = 0
        self._inflight: dict[int, _InFlight] = {}
        self._chain_errors: dict[int, str] = {}
        self._avail_idx = 0
        self._last_used = 0
        self._fds: list[int] = []
        self._callers: list[None] = []
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
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            sock.settimeout(timeout)
            try:
                sock.connect(self._path)
                return sock
            except FileNotFoundError:
                sock.close()
                raise self._unreachable(f"no control socket at {self._path!r}") from None
            except BlockingIOError:  # the listen backlog is full: wait for room
                sock.close()
                if time.monotonic() >= deadline:
                    raise self._unreachable(
                        f"the device's listen backlog stayed full for {timeout}s"
                    ) from None
                time.sleep(0.01)
            except OSError as exc:
                sock.close()
                raise self._unreachable(os.strerror(exc.errno or 0) or str(exc)) from exc

    def _setup_memory(self) -> None:
        num = self.queue_size
        self.layout = RingLayout.at(0, num)
        self.data_start = align(self.layout.end, mmap.PAGESIZE)
        self._nslots = num // 4
        minimum = self.data_start + self._nslots * SLOT_BYTES + REPLY_HEADER_BYTES + 4096
        if self.memory_bytes < minimum:
            raise CallError(
                "INVALID_ARGUMENT",
                f"virtio_mock_memory_bytes: at least {minimum} for a {num}-entry queue, got "
                f"{self.memory_bytes}",
                code=errno.EINVAL,
            )
        self._memfd = os.memfd_create("vaccel-virtio-mock", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
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
        self._desc_base = self.layout.desc
        self._avail_ring = self.layout.avail + 4
        self.allocator = Allocator(self.data_start, self.memory_bytes)
        # Slots: descriptors 2i (request, readable) and 2i+1 (reply, writable), fixed blocks.
        self._slot_base = self.allocator.alloc(self._nslots * SLOT_BYTES)
        #: Where the blocks of general chains (and of alloc()) lie: after the slots.
        self._chain_start = self._slot_base + block_size(self._nslots * SLOT_BYTES)
        self._free_slots = list(range(self._nslots - 1, -1, -1))
        self._slot_records = [
            _InFlight(
                2 * i,
                [],
                -1,
                self._slot_base + i * SLOT_BYTES + SLOT_REQUEST_BYTES,
                SLOT_BYTES - SLOT_REQUEST_BYTES,
                i,
            )
            for i in range(self._nslots)
        ]
        for i in range(self._nslots):
            block = self._slot_base + i * SLOT_BYTES
            self.ring.write_desc(
                2 * i + 1,
                block + SLOT_REQUEST_BYTES,
                SLOT_BYTES - SLOT_REQUEST_BYTES,
                VRING_DESC_F_WRITE,
                0,
            )
        self._free_descs = list(range(num - 1, 2 * self._nslots - 1, -1))
        self._kick = os.eventfd(0, os.EFD_CLOEXEC)
        self._fds.append(self._kick)
        self._call = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._fds.append(self._call)

    def _request(self, message: dict[str, Any], fds: Sequence[int] = ()) -> dict[str, Any]:
        req = message["req"]
        try:
            send_control(self._ctl, message, fds)
        except OSError:
            # The device may have refused the connection (a limit) and closed it at once:
            # its reason is still queued here.
            refusal = self._queued_reply()
            if refusal is None:
                raise
            reply: dict[str, Any] | None = refusal
        else:
            try:
                reply, got = recv_control(self._ctl)
            except ConnectionResetError:
                # Closed with our request unread: the kernel reports the reset first, then
                # gives what the device sent before closing (a refusal).
                reply, got = self._queued_reply(), []
                if reply is None:
                    raise
            for fd in got:
                os.close(fd)
        if reply is None:
            raise self._unreachable(f"device closed the control socket during {req}")
        if not reply.get("ok"):
            error = str(reply.get("error"))
            status = reply.get("status")
            if isinstance(status, str):  # a limit: RESOURCE_EXHAUSTED and its errno
                code = reply.get("code")
                raise CallError(
                    status,
                    f"virtio-mock device at {self.address}: {error}",
                    code=code if isinstance(code, int) else errno.EIO,
                )
            raise self._unreachable(f"device refused {req}: {error}")
        return reply

    def _queued_reply(self) -> dict[str, Any] | None:
        """A control message already received (not waiting for one), or None."""
        timeout = self._ctl.gettimeout()
        self._ctl.settimeout(0.0)
        try:
            reply, got = recv_control(self._ctl)
        except (OSError, ProtocolError):
            return None
        finally:
            self._ctl.settimeout(timeout)
        for fd in got:
            os.close(fd)
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
        with self._lock:
            self._check_usable()
            try:
                off = self.allocator.alloc(max(1, nbytes))
            except OutOfSharedMemory as exc:
                raise CallError(
                    "RESOURCE_EXHAUSTED",
                    f"alloc({nbytes}): shared memory full: {exc}",
                    code=errno.ENOMEM,
                ) from None
        block = self._block_array(off, max(1, nbytes))
        weakref.finalize(block, self._free_block, off)
        return block[:nbytes]

    def _block_array(self, off: int, nbytes: int) -> np.ndarray:
        """An array over one block whose views all keep it alive: made straight from the
        mapping, because numpy makes a view of a view refer to the first array that is not
        itself a view of an array (a slice of ``_mem_u8`` would let the block go early)."""
        return np.frombuffer(self.mem, dtype=np.uint8, count=nbytes, offset=off)

    def _free_block(self, off: int) -> None:
        with self._lock:
            with contextlib.suppress(ValueError):
                self.allocator.free(off)
            if self._waiters:
                self._cv.notify_all()

    def _shm_offset(self, buf: memoryview) -> int | None:
        """The offset of ``buf`` in the shared memory, when it lies in our data area."""
        if buf.nbytes == 0:
            return None
        off = int(np.frombuffer(buf, dtype=np.uint8).ctypes.data) - self._base
        if self.data_start <= off and off + buf.nbytes <= self.memory_bytes:
            return off
        return None

    # Calls ----------------------------------------------------------------------------------
    def call(self, method: str, request: Message, timeout: float | None = None) -> Message:
        self._callers.append(None)  # atomic: close() waits for callers before unmapping
        try:
            return self._do_call(method, request, timeout)
        finally:
            self._callers.pop()

    def _do_call(self, method: str, request: Message, timeout: float | None) -> Message:
        deadline = None if timeout is None else time.monotonic() + timeout
        payload = request.payload
        if type(payload) is not bytes:
            payload = _as_bytes_view(payload, -1)
        try:
            if not request.buffers:
                first = pack_request(KIND_CALL, method, 0, payload)
                if len(first) <= SLOT_REQUEST_BYTES:
                    small = self._call_small(method, first, deadline)
                    if small is not None:
                        return small
                bufs: list[memoryview] = []
            else:
                bufs = [_as_bytes_view(b, i) for i, b in enumerate(request.buffers)]
                first = pack_request(KIND_CALL, method, len(bufs), payload)
        except ProtocolError as exc:
            raise CallError("INVALID_ARGUMENT", f"{method}: {exc}", code=errno.EINVAL) from exc
        total = len(first) + sum(b.nbytes for b in bufs)
        if total > self.max_message_bytes:
            raise CallError(
                "RESOURCE_EXHAUSTED",
                f"{method}: request of {total} bytes exceeds max_message_bytes "
                f"({self.max_message_bytes})",
                code=errno.ENOMEM,
            )
        reply_len = REPLY_HEADER_BYTES + max(self.reply_bytes, align(total) + self.reply_bytes)
        rec = self._submit(
            method, first, bufs, reply_len, deadline, REPLY_HEADER_BYTES + self.reply_bytes
        )
        return self._finish(method, rec, self._wait(method, rec, deadline), deadline)

    def _call_small(self, method: str, first: bytes, deadline: float | None) -> Message | None:
        """A request without buffers in a free slot (None: no slot free). The common case,
        kept short: two fixed descriptors, nothing to allocate, the reply copied out."""
        mem = self.mem
        with self._lock:
            if self._closed or self._dead is not None:
                self._check_usable()
            if not self._free_slots:
                return None
            slot = self._free_slots.pop()
            block = self._slot_base + slot * SLOT_BYTES
            head = 2 * slot
            mem[block : block + len(first)] = first
            DESC.pack_into(
                mem, self._desc_base + 16 * head, block, len(first), VRING_DESC_F_NEXT, head + 1
            )
            rec = self._slot_records[slot]
            rec.slot, rec.result, rec.abandoned = slot, None, False
            self._inflight[head] = rec
            idx = self._avail_idx
            U16.pack_into(mem, self._avail_ring + 2 * (idx % self.queue_size), head)
            self._avail_idx = idx = (idx + 1) & _U16
            self.ring.set_avail_idx(idx)  # the index after the entry
        try:
            os.eventfd_write(self._kick, 1)  # a syscall: also a full memory barrier
        except OSError as exc:
            raise self._gone(f"kick failed: {exc}") from exc
        used = self._wait(method, rec, deadline)
        reply = rec.reply
        if used >= REP_HEADER.size:
            magic, _v, kind, _c, nbuf, _t, plen = REP_HEADER.unpack_from(mem, reply)
            if (
                kind == REPLY_OK
                and nbuf == 0
                and magic == REP_MAGIC
                and REPLY_HEADER_BYTES + plen <= rec.reply_len
            ):
                data = reply + REPLY_HEADER_BYTES
                payload = mem[data : data + plen]  # an mmap slice is a copy
                with self._lock:
                    self._free_slots.append(slot)
                    rec.slot = -1
                return Message(payload, ())
        return self._finish(method, rec, used, deadline)

    def _submit(
        self,
        method: str,
        first: bytes,
        bufs: list[memoryview],
        reply_len: int,
        deadline: float | None,
        min_reply_len: int | None = None,
        held: int = 0,
    ) -> _InFlight:
        """Place a general chain (waiting for descriptors and shared memory until
        ``deadline``) with a reply area of ``reply_len`` bytes, or of ``min_reply_len`` when
        the request and ``reply_len`` could never fit together (a larger reply then comes by
        NEED_SPACE and FETCH). ``held``: shared memory the caller's buffers keep meanwhile."""
        ndesc = 2 + len(bufs)
        if ndesc > self.queue_size - 2 * self._nslots:
            raise CallError(
                "INVALID_ARGUMENT",
                f"{method}: request needs {ndesc} descriptors ({len(bufs)} buffers), the "
                f"virtqueue has {self.queue_size - 2 * self._nslots} for such requests",
                code=errno.EINVAL,
            )
        zero_copy = [self._shm_offset(b) for b in bufs]
        req_bytes = align(len(first)) + sum(
            align(b.nbytes) for b, z in zip(bufs, zero_copy, strict=True) if z is None
        )
        held += self._held_bytes(bufs, zero_copy)
        reply_len = self._fit(method, req_bytes, reply_len, min_reply_len, held)
        while True:
            with self._lock:
                self._check_usable()
                got = self._try_reserve(ndesc, req_bytes, reply_len)
            if got is not None:
                break
            self._progress(method, deadline, need=(ndesc, req_bytes + reply_len))
        descs, block, reply = got
        # Fill the request block (outside the lock: it is ours alone).
        chain: list[tuple[int, int, int]] = [(block, len(first), 0)]
        self.mem[block : block + len(first)] = first
        pos = block + align(len(first))
        for b, z in zip(bufs, zero_copy, strict=True):
            if z is not None:
                chain.append((z, b.nbytes, 0))
            else:
                self.mem[pos : pos + b.nbytes] = b
                chain.append((pos, b.nbytes, 0))
                pos += align(b.nbytes)
        chain.append((reply, reply_len, VRING_DESC_F_WRITE))
        last = len(chain) - 1
        for i, (addr, length, flags) in enumerate(chain):
            if i < last:
                self.ring.write_desc(
                    descs[i], addr, length, flags | VRING_DESC_F_NEXT, descs[i + 1]
                )
            else:
                self.ring.write_desc(descs[i], addr, length, flags, 0)
        rec = _InFlight(descs[0], descs, block, reply, reply_len, held=held)
        self._publish(rec)
        return rec

    def _held_bytes(self, bufs: list[memoryview], zero_copy: list[int | None]) -> int:
        """The least shared memory the blocks under the zero-copy buffers ``bufs`` occupy."""
        spans = sorted(
            (max(z & ~(ALLOC_ALIGN - 1), self._chain_start), align(z + b.nbytes, ALLOC_ALIGN))
            for b, z in zip(bufs, zero_copy, strict=True)
            if z is not None
        )
        total, end = 0, 0
        for lo, hi in spans:
            lo = max(lo, end)
            if hi > lo:
                total += hi - lo
                end = hi
        return total

    def _fit(
        self, method: str, req_bytes: int, reply_len: int, min_reply_len: int | None, held: int
    ) -> int:
        """The reply area to ask for: ``reply_len``, else ``min_reply_len``, whichever can fit
        beside the request in the data area (with ``held`` bytes taken); an error at once when
        neither can, rather than waiting for space that never comes."""
        room = self.memory_bytes - self._chain_start - held - block_size(req_bytes)
        if block_size(reply_len) <= room:
            return reply_len
        if min_reply_len is not None and block_size(min_reply_len) <= room:
            return min_reply_len
        least = reply_len if min_reply_len is None else min_reply_len
        kept = f", {held} of them held by the request's shared-memory buffers" if held else ""
        raise CallError(
            "RESOURCE_EXHAUSTED",
            f"{method}: needs {block_size(req_bytes) + block_size(least)} bytes of shared "
            f"memory ({req_bytes} for the request, {least} for the reply area), more than the "
            f"{self.memory_bytes - self._chain_start} bytes the data area has for such "
            f"requests{kept}; raise virtio_mock_memory_bytes (now {self.memory_bytes})",
            code=errno.ENOMEM,
        )

    def _try_reserve(
        self, ndesc: int, req_bytes: int, reply_len: int
    ) -> tuple[list[int], int, int] | None:
        """Called with the lock held: descriptors, request block and reply block, or None."""
        if len(self._free_descs) < ndesc:
            return None
        try:
            block = self.allocator.alloc(req_bytes)
        except OutOfSharedMemory:
            return None
        try:
            reply = self.allocator.alloc(reply_len)
        except OutOfSharedMemory:
            self.allocator.free(block)
            return None
        return [self._free_descs.pop() for _ in range(ndesc)], block, reply

    def _publish(self, rec: _InFlight) -> None:
        ring = self.ring
        with self._lock:
            if self._dead is not None or self._closed:
                self._release(rec)
                self._check_usable()
            self._inflight[rec.head] = rec
            slot = self._avail_idx
            ring.set_avail_entry(slot, rec.head)  # the entry first ...
            self._avail_idx = slot = (slot + 1) & _U16
            ring.set_avail_idx(slot)  # ... then the index
        try:
            os.eventfd_write(self._kick, 1)  # a syscall: also a full memory barrier
        except OSError as exc:
            raise self._gone(f"kick failed: {exc}") from exc

    def _wait(self, method: str, rec: _InFlight, deadline: float | None) -> int:
        # Poll the used ring for a short while before sleeping (as virtio drivers' busy
        # polling does), yielding the CPU each time so that a device on this CPU can run:
        # waking a sleeping thread costs more than a short request takes to serve. (The call
        # eventfd's count left by a completion seen this way is consumed by a later poll.)
        spin_until = time.perf_counter() + self.spin_seconds
        while True:
            with self._lock:
                if self._dead is None and not self._closed:
                    self._drain_used()
                if rec.result is not None:
                    return rec.result
            if time.perf_counter() >= spin_until:
                break
            os.sched_yield()
        while True:
            with self._lock:
                if rec.result is not None:
                    return rec.result
                if self._dead is not None or self._closed:
                    rec.abandoned = True
                    self._check_usable()
            try:
                self._progress(method, deadline)
            except CallError:
                with self._lock:
                    if rec.result is not None:
                        return rec.result
                    rec.abandoned = True  # the completion frees what it holds
                raise

    def _progress(
        self, method: str, deadline: float | None, need: tuple[int, int] | None = None
    ) -> None:
        """Wait a little for completions: become the reaper (poll the call eventfd and the
        control socket, then drain the used ring), or wait for the thread that is."""
        if deadline is None:
            slice_ = _POLL_SLICE
        else:
            slice_ = min(deadline - time.monotonic(), _POLL_SLICE)
            if slice_ <= 0:
                raise self._timeout_error(method, need)
        with self._lock:
            if self._reaping:
                self._waiters += 1
                self._cv.wait(slice_)
                self._waiters -= 1
                return
            self._reaping = True
        events: list[tuple[int, int]] = []
        try:
            events = self._poller.poll(slice_ * 1000.0)
            for fd, _ev in events:
                if fd == self._call:
                    try:  # noqa: SIM105 (hot path: contextlib.suppress costs more)
                        os.eventfd_read(self._call)
                    except BlockingIOError:
                        pass
                else:
                    self._read_control()
        except OSError as exc:
            if not self._closed:
                self._mark_dead(f"polling failed: {exc}")
        finally:
            with self._lock:
                self._reaping = False
                if self._dead is None and not self._closed:
                    self._drain_used()
                if self._waiters:
                    self._cv.notify_all()
        if need is not None and not events:
            gc.collect()  # reply views caught in reference cycles may hold shared memory

    def _read_control(self) -> None:
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
                with self._lock:
                    self._chain_errors[int(message.get("head", -1))] = str(message.get("reason"))
            elif message.get("event") == "device_error":
                self._mark_dead(f"device error: {message.get('reason')}")

    def _drain_used(self) -> None:
        """Called with the lock held: record every new used element."""
        ring = self.ring
        used = ring.used_idx()
        pending = (used - self._last_used) & _U16
        if pending > self.queue_size:
            self._dead = self._dead or (
                f"device broke the used ring (index moved by {pending} > {self.queue_size})"
            )
            return
        for _ in range(pending):
            head, length = ring.used_entry(self._last_used)
            self._last_used = (self._last_used + 1) & _U16
            rec = self._inflight.pop(head, None)
            if rec is None:
                logger.warning(
                    "virtio-mock %s: device completed unknown chain %d", self.address, head
                )
                continue
            if rec.abandoned:
                self._chain_errors.pop(head, None)
                self._release(rec)
            else:
                rec.result = length

    def _release(self, rec: _InFlight, *, keep_reply: bool = False) -> None:
        """Called with the lock held: give back what a chain holds."""
        if rec.slot >= 0:
            self._free_slots.append(rec.slot)
            rec.slot = -1
            return
        self._free_descs.extend(rec.descs)
        rec.descs = []
        if rec.block >= 0:
            self.allocator.free(rec.block)
            rec.block = -1
        if rec.reply >= 0 and not keep_reply:
            self.allocator.free(rec.reply)
        rec.reply = -1
        if self._waiters:
            self._cv.notify_all()

    def _finish(self, method: str, rec: _InFlight, used: int, deadline: float | None) -> Message:
        """Decode the reply of a completed chain and give back what it holds."""
        is_slot = rec.slot >= 0
        try:
            if used == 0:
                raise self._rejected(method, rec.head)
            if used > rec.reply_len:
                raise self._gone(f"device reported {used} bytes written, {rec.reply_len} offered")
            try:
                reply = unpack_reply_header(self.mem, rec.reply, used)
            except (ProtocolError, ValueError, KeyError) as exc:
                raise self._gone(f"malformed reply header: {exc}") from exc
            if reply.kind == REPLY_ERROR:
                raise CallError(reply.status or "UNKNOWN", reply.message, code=reply.code)
            if reply.kind not in (REPLY_OK, REPLY_NEED_SPACE):
                raise self._gone(f"unknown reply kind {reply.kind}")
            offsets, total = data_layout(reply.payload_len, reply.buffer_lens)
            if reply.kind == REPLY_OK and REPLY_HEADER_BYTES + total > rec.reply_len:
                raise self._gone(f"reply of {total} bytes overruns the {rec.reply_len}-byte area")
        except BaseException:
            with self._lock:
                self._release(rec)
            raise
        if reply.kind == REPLY_NEED_SPACE:
            with self._lock:
                self._release(rec)
            return self._fetch(method, reply.token, total, deadline, rec.held)
        data = rec.reply + REPLY_HEADER_BYTES
        payload = self.mem[data : data + reply.payload_len]  # mmap slices are copies
        if is_slot or not reply.buffer_lens:
            buffers: tuple[Any, ...] = tuple(
                self.mem[data + o : data + o + n]
                for o, n in zip(offsets, reply.buffer_lens, strict=True)
            )
            with self._lock:
                self._release(rec)
            return Message(payload, buffers)
        # Zero-copy: views into the reply block, freed when the last view goes.
        area = self._block_array(rec.reply, rec.reply_len)
        weakref.finalize(area, self._free_block, rec.reply)
        with self._lock:
            self._release(rec, keep_reply=True)
        buffers = tuple(
            area[REPLY_HEADER_BYTES + o : REPLY_HEADER_BYTES + o + n].data
            for o, n in zip(offsets, reply.buffer_lens, strict=True)
        )
        return Message(payload, buffers)

    def _fetch(
        self, method: str, token: int, total: int, deadline: float | None, held: int = 0
    ) -> Message:
        """Collect a reply the device kept because it did not fit (see protocol)."""
        if total > self.max_message_bytes:
            raise CallError(
                "RESOURCE_EXHAUSTED",
                f"{method}: reply of {total} bytes exceeds max_message_bytes "
                f"({self.max_message_bytes})",
                code=errno.ENOMEM,
            )
        first = pack_request(KIND_FETCH, method, 0, b"", token)
        rec = self._submit(
            method, first, [], REPLY_HEADER_BYTES + max(total, 1), deadline, held=held
        )
        return self._finish(method, rec, self._wait(method, rec, deadline), deadline)

    # Errors and state -----------------------------------------------------------------------
    def _rejected(self, method: str, head: int) -> CallError:
        with self._lock:
            reason = self._chain_errors.pop(head, None)
        if reason is None:
            self._read_control()  # the device sends the reason before the completion
            with self._lock:
                reason = self._chain_errors.pop(head, "no reason given")
        return CallError(
            "INVALID_ARGUMENT",
            f"{method}: virtio-mock device at {self.address} rejected the descriptor chain: "
            f"{reason}",
            code=errno.EINVAL,
        )

    def _timeout_error(self, method: str, need: tuple[int, int] | None) -> CallError:
        if need is not None:
            with self._lock:
                detail = (
                    f"virtqueue full or shared memory exhausted: need {need[0]} descriptors "
                    f"({len(self._free_descs)} free, {len(self._inflight)} requests in "
                    f"flight) and {need[1]} bytes (largest free block "
                    f"{self.allocator.largest_free()} of {self.allocator.capacity})"
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

    def _mark_dead(self, why: str) -> None:
        with self._lock:
            self._dead = self._dead or why
            self._cv.notify_all()

    @property
    def lost(self) -> str | None:
        """Why the device is gone (it closed the control socket, broke the ring), or None."""
        return self._dead

    def _check_usable(self) -> None:
        if self._closed:
            raise RemoteError(f"virtio-mock channel to {self.address} is closed")
        if self._dead is not None:
            raise RemoteError(f"virtio-mock device at {self.address}: {self._dead}")

    def close(self) -> None:
        """Close the channel: the device then frees its instance and the agent releases this
        client's sessions. Calls in flight in other threads end with RemoteError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._cv.notify_all()
        with contextlib.suppress(OSError):
            os.eventfd_write(self._call, 1)  # wake a caller sleeping in poll
        deadline = time.monotonic() + 2.0
        while self._callers and time.monotonic() < deadline:
            time.sleep(0.005)
        self._teardown(unmap=not self._callers)

    def _teardown(self, unmap: bool = True) -> None:
        ctl = getattr(self, "_ctl", None)
        if ctl is not None:
            ctl.close()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        mem = getattr(self, "mem", None)
        if mem is not None:
            ring = getattr(self, "ring", None)
            if ring is not None:
                ring.close()
            self._mem_u8 = np.empty(0, dtype=np.uint8)
            # Reply views still alive keep the mapping until the last of them goes.
            if unmap:
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
