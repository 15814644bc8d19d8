"""The device side of virtio-mock, served by the agent.

The listener accepts guests on a unix control socket (``SOCK_SEQPACKET``). Each connection is
one device instance: it receives the guest's shared memory (a sealed memfd) and its kick/call
eventfds, maps the memory, and serves the split virtqueue in a thread of its own. Request
buffers reach the handler as read-only memoryviews straight into the shared memory (no copy);
replies are written into the chain's device-writable buffers.

Every descriptor is validated before use (index, address and length inside the data area,
flags, chain length and loops, readable-before-writable); a bad chain gets an error completion
and a ``chain_error`` event, never a crash, and other chains are unaffected. A guest that
closes its control socket (or dies) frees its device and disconnects its peer.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import mmap
import os
import select
import socket
import stat
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from vaccel_core.errors import RemoteError, VaccelError
from vaccel_core.log import logger
from vaccel_core.transport import (
    Address,
    Handler,
    Listener,
    Message,
    Peer,
    TransportOptions,
    status_for,
)

from .._accept import accept_loop
from ..unix import listen_at
from .layout import (
    DESC,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    RingLayout,
    SplitRing,
    check_queue_size,
)
from .protocol import (
    KIND_CALL,
    KIND_FETCH,
    MAX_METHOD_BYTES,
    MAX_REPLY_BUFFERS,
    PROTOCOL_VERSION,
    REP_HEADER,
    REP_MAGIC,
    REPLY_HEADER_BYTES,
    REPLY_OK,
    REQ_HEADER,
    REQ_MAGIC,
    ProtocolError,
    data_layout,
    pack_reply_error,
    pack_reply_need_space,
    pack_reply_ok,
    recv_control,
    send_control,
    unpack_request_header,
)

SETUP_TIMEOUT = 10.0
MAX_PENDING_REPLIES = 64
_BAD_FLAGS = ~(VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) & 0xFFFF


class ChainError(Exception):
    """A descriptor chain the device refuses (the guest gets an error completion)."""


def _is_eventfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return True  # no /proc: cannot tell, accept


class _Setup:
    """What the guest handed over during the vhost-user style handshake."""

    def __init__(self) -> None:
        self.mem: mmap.mmap | None = None
        self.size = 0
        self.num = 0
        self.layout: RingLayout | None = None
        self.data_start = 0
        self.kick = -1
        self.call = -1


class Device:
    """One guest's device instance: handshake, then serve its virtqueue until it goes."""

    def __init__(
        self,
        conn: socket.socket,
        handler: Handler,
        options: TransportOptions,
        stop_fd: int,
        where: str,
    ) -> None:
        self.conn = conn
        self.handler = handler
        self.options = options
        self.stop_fd = stop_fd
        self.where = where
        self.peer = Peer(f"virtio-mock-{uuid.uuid4().hex[:16]}", "")
        self.s = _Setup()
        self._pending: OrderedDict[int, Message] = OrderedDict()
        self._tokens = itertools.count(1)
        self._last_avail = 0
        self._used_idx = 0
        self._method = "?"
        self.thread = threading.Thread(
            target=self.run, name=f"virtio-mock {self.peer.id}", daemon=True
        )

    # Lifecycle --------------------------------------------------------------------------------
    def run(self) -> None:
        connected = False
        try:
            if not self._handshake():
                return
            self.handler.peer_connected(self.peer)
            connected = True
            logger.info(
                "virtio-mock %s: %s connected (%s)", self.where, self.peer.id, self.peer.description
            )
            self._serve()
        except Exception:
            logger.exception("virtio-mock %s: device %s failed", self.where, self.peer.id)
        finally:
            self._close()
            if connected:
                logger.info("virtio-mock %s: %s disconnected", self.where, self.peer.id)
                try:
                    self.handler.peer_disconnected(self.peer)
                except Exception:
                    logger.exception("virtio-mock: peer_disconnected(%s) failed", self.peer.id)

    def _close(self) -> None:
        self._pending.clear()
        with contextlib.suppress(OSError):
            self.conn.close()
        for fd in (self.s.kick, self.s.call):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.s.kick = self.s.call = -1
        if self.s.mem is not None:
            ring = getattr(self, "ring", None)
            if ring is not None:
                ring.close()
            try:
                self.s.mem.close()
            except BufferError:
                logger.warning(
                    "virtio-mock %s: %s: the handler still holds views of the guest memory; "
                    "the mapping is released when they go",
                    self.where,
                    self.peer.id,
                )
            self.s.mem = None

    # Handshake --------------------------------------------------------------------------------
    def _handshake(self) -> bool:
        setup_timeout = float(self.options.extra.get("virtio_mock_setup_timeout", SETUP_TIMEOUT))
        deadline = time.monotonic() + setup_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.warning(
                    "virtio-mock %s: guest did not finish set-up in %.1fs",
                    self.where,
                    setup_timeout,
                )
                return False
            self.conn.settimeout(remaining)
            try:
                message, fds = recv_control(self.conn)
            except TimeoutError:
                continue
            except (OSError, ProtocolError) as exc:
                logger.warning("virtio-mock %s: bad control message: %s", self.where, exc)
                return False
            if message is None:
                return False
            try:
                reply = self._setup_step(message, fds)
            except ProtocolError as exc:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                send_control(self.conn, {"ok": False, "error": str(exc)})
                continue
            send_control(self.conn, {"ok": True, **reply})
            if message.get("req") == "SET_VRING_ENABLE":
                self.conn.settimeout(None)
                self.conn.setblocking(False)
                return True

    def _expect_fds(self, req: str, fds: list[int], n: int) -> None:
        if len(fds) != n:
            raise ProtocolError(f"{req}: expected {n} file descriptor(s), got {len(fds)}")

    def _setup_step(self, message: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        req = message.get("req")
        s = self.s
        if req == "GET_FEATURES":
            self._expect_fds(req, fds, 0)
            return {"features": ["VERSION_1"], "protocol": 1}
        if req == "SET_MEM_TABLE":
            self._expect_fds(req, fds, 1)
            if s.mem is not None:
                raise ProtocolError("SET_MEM_TABLE: memory already set")
            fd = fds[0]
            try:
                size = _int(message, "size")
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_size < size or size <= 0:
                    raise ProtocolError(
                        f"SET_MEM_TABLE: expected a memory file of at least {size} bytes, "
                        f"got {st.st_size}"
                    )
                seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
                if not seals & fcntl.F_SEAL_SHRINK:
                    raise ProtocolError(
                        "SET_MEM_TABLE: the memory must be sealed against shrinking "
                        "(F_SEAL_SHRINK), or a truncation would crash the device"
                    )
                s.mem = mmap.mmap(fd, size)
                s.size = size
            except OSError as exc:
                raise ProtocolError(f"SET_MEM_TABLE: cannot map the memory: {exc}") from exc
            finally:
                os.close(fd)
            return {}
        if req == "SET_VRING_NUM":
            self._expect_fds(req, fds, 0)
            try:
                check_queue_size(message.get("num"))  # type: ignore[arg-type]
            except ValueError as exc:
                raise ProtocolError(f"SET_VRING_NUM: {exc}") from exc
            s.num = int(message["num"])
            return {}
        if req == "SET_VRING_ADDR":
            self._expect_fds(req, fds, 0)
            self._set_addr(message)
            return {}
        if req in ("SET_VRING_KICK", "SET_VRING_CALL"):
            self._expect_fds(req, fds, 1)
            if not _is_eventfd(fds[0]):
                os.close(fds[0])
                raise ProtocolError(f"{req}: the file descriptor is not an eventfd")
            if req == "SET_VRING_KICK":
                s.kick = fds[0]
            else:
                s.call = fds[0]
            return {}
        if req == "SET_VRING_ENABLE":
            self._expect_fds(req, fds, 0)
            missing = [
                name
                for name, ok in (
                    ("SET_MEM_TABLE", s.mem is not None),
                    ("SET_VRING_ADDR", s.layout is not None),
                    ("SET_VRING_KICK", s.kick >= 0),
                    ("SET_VRING_CALL", s.call >= 0),
                )
                if not ok
            ]
            if missing:
                raise ProtocolError(f"SET_VRING_ENABLE before {', '.join(missing)}")
            pid = message.get("pid")
            self.peer = Peer(self.peer.id, f"pid {pid} via {self.where}")
            return {"peer": self.peer.id}
        for fd in fds:
            os.close(fd)
        raise ProtocolError(f"unknown request {req!r}")

    def _set_addr(self, message: dict[str, Any]) -> None:
        s = self.s
        if s.mem is None or not s.num:
            raise ProtocolError("SET_VRING_ADDR before SET_MEM_TABLE and SET_VRING_NUM")
        desc, avail, used, data_start = (
            _int(message, k) for k in ("desc", "avail", "used", "data_start")
        )
        num = s.num
        areas = {
            "descriptor table": (desc, 16 * num, 16),
            "available ring": (avail, 6 + 2 * num, 2),
            "used ring": (used, 6 + 8 * num, 4),
        }
        for name, (off, length, alignment) in areas.items():
            if off % alignment or off < 0 or off + length > data_start:
                raise ProtocolError(
                    f"SET_VRING_ADDR: {name} at {off} (+{length}) must be {alignment}-byte "
                    f"aligned and end before the data area at {data_start}"
                )
        spans = sorted((off, off + length) for off, length, _ in areas.values())
        for (_, end), (start, _) in itertools.pairwise(spans):
            if start < end:
                raise ProtocolError("SET_VRING_ADDR: the ring areas overlap")
        if not 0 < data_start < s.size:
            raise ProtocolError(f"SET_VRING_ADDR: data area start {data_start} outside memory")
        s.layout = RingLayout(num, desc, avail, used, used + 6 + 8 * num)
        s.data_start = data_start

    # Serving ------------------------------------------------------------------------------------
    def _serve(self) -> None:
        """Serve the queue until the guest goes, the listener stops or the ring breaks.

        This thread blocks on the kick eventfd alone (one syscall per wake-up); a watcher
        thread polls the control socket and the stop signal and kicks this one when either
        ends the device.
        """
        s = self.s
        assert s.mem is not None and s.layout is not None
        self.ring = SplitRing(s.mem, s.layout)
        self.view = memoryview(s.mem)
        self._fast = (
            s.mem,
            s.num,
            s.layout.desc,
            s.data_start,
            s.size,
            self.options.max_message_bytes,
            DESC.unpack_from,
            REQ_HEADER.unpack_from,
        )
        self._gone = False
        self._done = os.eventfd(0, os.EFD_CLOEXEC)
        watcher = threading.Thread(
            target=self._watch, name=f"virtio-mock watch {self.peer.id}", daemon=True
        )
        watcher.start()
        kick = s.kick
        waiter = select.poll()
        waiter.register(kick, select.POLLIN)
        try:
            while not self._gone:
                try:
                    os.eventfd_read(kick)
                except BlockingIOError:  # the guest made its kick eventfd non-blocking
                    waiter.poll()
                    continue
                if self._gone or not self._process():
                    return
        finally:
            self._gone = True
            os.eventfd_write(self._done, 1)
            watcher.join()
            os.close(self._done)
            self.view.release()

    def _watch(self) -> None:
        """Watch the control socket and the stop signal; wake the serving thread to end."""
        poller = select.poll()
        for fd in (self.conn.fileno(), self.stop_fd, self._done):
            poller.register(fd, select.POLLIN)
        while True:
            ready = [fd for fd, _ev in poller.poll()]
            if self._done in ready:
                return
            if self.stop_fd in ready or not self._control():
                self._gone = True
                os.eventfd_write(self.s.kick, 1)
                return

    def _control(self) -> bool:
        """Read control messages after set-up; False when the guest went away."""
        while True:
            try:
                message, fds = recv_control(self.conn)
            except BlockingIOError:
                return True
            except (OSError, ProtocolError) as exc:
                logger.warning(
                    "virtio-mock %s: %s: control socket: %s", self.where, self.peer.id, exc
                )
                return False
            for fd in fds:
                os.close(fd)
            if message is None:
                return False
            logger.warning(
                "virtio-mock %s: %s: unexpected control message %r",
                self.where,
                self.peer.id,
                message,
            )

    def _event(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            send_control(self.conn, message)

    def _process(self) -> bool:
        """Serve every chain made available so far; False when the ring is corrupt."""
        ring = self.ring
        pending = (ring.avail_idx() - self._last_avail) & 0xFFFF  # the index first ...
        if pending > self.s.num:
            reason = (
                f"available ring index moved by {pending}, more than the queue size "
                f"{self.s.num}: ring corrupted, device stops"
            )
            logger.warning("virtio-mock %s: %s: %s", self.where, self.peer.id, reason)
            self._event({"event": "device_error", "reason": reason})
            return False
        for _ in range(pending):
            head = ring.avail_entry(self._last_avail)  # ... then the entries
            self._last_avail = (self._last_avail + 1) & 0xFFFF
            if not self._serve_fast(head):
                self._serve_chain(head)
        return True

    def _complete(self, head: int, length: int) -> None:
        ring = self.ring
        ring.set_used_entry(self._used_idx, head, length)  # the element first ...
        self._used_idx = idx = (self._used_idx + 1) & 0xFFFF
        ring.set_used_idx(idx)  # ... then the index
        os.eventfd_write(self.s.call, 1)

    def _reject(self, head: int, reason: str) -> None:
        logger.warning(
            "virtio-mock %s: %s: chain %d rejected: %s", self.where, self.peer.id, head, reason
        )
        self._event({"event": "chain_error", "head": head, "reason": reason})
        self._complete(head, 0)

    def walk(self, head: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Validate the chain at ``head``: (readable, writable) lists of (addr, len)."""
        num, lo, hi = self.s.num, self.s.data_start, self.s.size
        limit = self.options.max_message_bytes
        if head >= num:
            raise ChainError(f"head index {head} out of range (queue size {num})")
        readable: list[tuple[int, int]] = []
        writable: list[tuple[int, int]] = []
        seen: set[int] = set()
        unpack, mem, base = DESC.unpack_from, self.ring.mem, self.ring.layout.desc
        index = head
        while True:
            seen.add(index)
            addr, length, flags, nxt = unpack(mem, base + 16 * index)
            if flags & _BAD_FLAGS or length > limit or addr < lo or addr + length > hi:
                raise ChainError(self._bad_desc(index, addr, length, flags))
            if flags & VRING_DESC_F_WRITE:
                writable.append((addr, length))
            elif writable:
                raise ChainError(
                    f"descriptor {index}: device-readable buffer after a device-writable one"
                )
            else:
                readable.append((addr, length))
            if not flags & VRING_DESC_F_NEXT:
                return readable, writable
            if nxt >= num:
                raise ChainError(f"descriptor {index}: next {nxt} out of range (queue size {num})")
            if nxt in seen:
                raise ChainError(f"descriptor {index}: next {nxt} loops back into the chain")
            index = nxt

    def _bad_desc(self, index: int, addr: int, length: int, flags: int) -> str:
        lo, hi, limit = self.s.data_start, self.s.size, self.options.max_message_bytes
        if flags & VRING_DESC_F_INDIRECT:
            return f"descriptor {index}: INDIRECT descriptors not negotiated"
        if flags & _BAD_FLAGS:
            return f"descriptor {index}: unknown flags {flags:#x}"
        if length > limit:
            return f"descriptor {index}: length {length} exceeds the message limit {limit}"
        return (
            f"descriptor {index}: buffer [{addr:#x}, {addr + length:#x}) lies outside the "
            f"shared data area [{lo:#x}, {hi:#x})"
        )

    def _serve_fast(self, head: int) -> bool:
        """Serve the common chain (one readable request descriptor without buffers, one
        writable reply descriptor) with the checks inlined; False: not that shape (or not
        valid), left to :meth:`_serve_chain`, which names what is wrong."""
        mem, num, base, lo, hi, limit, unpack_desc, unpack_req = self._fast
        if head >= num:
            return False
        addr, length, flags, nxt = unpack_desc(mem, base + 16 * head)
        if flags != VRING_DESC_F_NEXT or nxt >= num or nxt == head:
            return False
        reply_addr, reply_len, reply_flags, _ = unpack_desc(mem, base + 16 * nxt)
        if (
            reply_flags != VRING_DESC_F_WRITE
            or reply_len < REPLY_HEADER_BYTES
            or length < REQ_HEADER.size
            or addr < lo
            or addr + length > hi
            or reply_addr < lo
            or reply_addr + reply_len > hi
            or length > limit
            or reply_len > limit
        ):
            return False
        magic, version, kind, method_len, nbuf, _token, payload_len = unpack_req(mem, addr)
        start = addr + REQ_HEADER.size + method_len
        if (
            magic != REQ_MAGIC
            or version != PROTOCOL_VERSION
            or kind != KIND_CALL
            or nbuf
            or method_len > MAX_METHOD_BYTES
            or start + payload_len > addr + length
        ):
            return False
        try:
            method = mem[addr + REQ_HEADER.size : start].decode()
        except UnicodeDecodeError:
            return False
        self._method = method
        payload = self.view[start : start + payload_len].toreadonly()
        reply = self._call_handler(method, Message(payload, ()))
        writable = (reply_addr, reply_len)
        try:
            written = self._write_reply(writable, reply)
        except Exception as exc:  # a reply the handler built badly
            logger.exception("virtio-mock %s: cannot write the reply", self.where)
            written = self._write_error(
                writable, ("INTERNAL", f"cannot send the reply: {exc}", errno.EIO)
            )
        finally:
            try:
                payload.release()
            except BufferError:
                self._release([payload])  # logs that the handler kept a view
        self._complete(head, written)
        return True

    def _serve_chain(self, head: int) -> None:
        try:
            readable, writable = self.walk(head)
            if len(writable) != 1 or writable[0][1] < REPLY_HEADER_BYTES:
                raise ChainError(
                    f"expected 1 device-writable descriptor of at least {REPLY_HEADER_BYTES} "
                    f"bytes (reply header and data), got {[n for _, n in writable]}"
                )
            if not readable:
                raise ChainError("expected a device-readable request header descriptor")
        except ChainError as exc:
            self._reject(head, str(exc))
            return
        views: list[memoryview] = []
        reply = self._run(readable, views)
        try:
            written = self._write_reply(writable[0], reply)
        except Exception as exc:  # a reply the handler built badly
            logger.exception("virtio-mock %s: cannot write the reply", self.where)
            written = self._write_error(
                writable[0], ("INTERNAL", f"cannot send the reply: {exc}", errno.EIO)
            )
        finally:
            self._release(views)
        self._complete(head, written)

    def _run(
        self, readable: list[tuple[int, int]], views: list[memoryview]
    ) -> Message | tuple[str, str, int]:
        """Decode and serve one request: the reply, or (status, message, code). The request
        views opened into guest memory are appended to ``views``."""
        try:
            addr, length = readable[0]
            header = unpack_request_header(self.s.mem, addr, length)
            method = self._method = header.method
            if len(readable) != 1 + header.nbuf:
                raise ProtocolError(
                    f"request header announces {header.nbuf} buffers, the chain has "
                    f"{len(readable) - 1}"
                )
            if header.kind == KIND_FETCH:
                try:
                    return self._pending.pop(header.token)
                except KeyError:
                    raise ProtocolError(f"no pending reply with token {header.token}") from None
        except ProtocolError as exc:
            return ("INVALID_ARGUMENT", f"virtio-mock request: {exc}", errno.EINVAL)
        start = addr + header.payload_offset
        view = self.view
        payload = view[start : start + header.payload_len].toreadonly()
        views.append(payload)
        buffers = []
        for a, n in readable[1:]:
            b = view[a : a + n].toreadonly()
            views.append(b)
            buffers.append(b)
        return self._call_handler(method, Message(payload, buffers))

    def _call_handler(self, method: str, request: Message) -> Message | tuple[str, str, int]:
        """The handler's reply, or (status, message, code) for a failed call."""
        try:
            return self.handler.handle(method, request, self.peer)
        except VaccelError as exc:
            return (status_for(exc), exc.message, exc.code)
        except Exception as exc:
            logger.exception("virtio-mock %s: %s failed", self.where, method)
            return ("INTERNAL", f"{method}: {type(exc).__name__}: {exc}", errno.EIO)

    def _release(self, views: list[memoryview]) -> None:
        for v in views:
            try:
                v.release()
            except BufferError:
                logger.warning(
                    "virtio-mock %s: %s kept a view of a request buffer after returning; its "
                    "contents change when the guest reuses that memory (copy what you keep)",
                    self.where,
                    self._method,
                )

    def _write_error(self, writable: tuple[int, int], error: tuple[str, str, int]) -> int:
        data = pack_reply_error(*error)
        addr = writable[0]
        self.view[addr : addr + len(data)] = data
        return len(data)

    def _write_reply(self, writable: tuple[int, int], reply: Message | tuple[str, str, int]) -> int:
        if isinstance(reply, tuple):
            return self._write_error(writable, reply)
        raw = reply.payload
        if not reply.buffers and type(raw) is bytes:  # the common small reply, kept short
            hdr, room = writable
            n = len(raw)
            if REPLY_HEADER_BYTES + n <= room:
                mem = self.ring.mem
                mem[hdr + REPLY_HEADER_BYTES : hdr + REPLY_HEADER_BYTES + n] = raw
                REP_HEADER.pack_into(mem, hdr, REP_MAGIC, PROTOCOL_VERSION, REPLY_OK, 0, 0, 0, n)
                return REPLY_HEADER_BYTES + n
        payload = _flat(raw)
        buffers = [_flat(b) for b in reply.buffers]
        if len(buffers) > MAX_REPLY_BUFFERS:
            return self._write_error(
                writable,
                (
                    "INTERNAL",
                    f"reply has {len(buffers)} buffers, at most {MAX_REPLY_BUFFERS}",
                    errno.EIO,
                ),
            )
        lens = [b.nbytes for b in buffers]
        offsets, total = data_layout(payload.nbytes, lens)
        hdr, room = writable
        view = self.view
        if REPLY_HEADER_BYTES + total > room:
            token = next(self._tokens)
            self._stash(token, payload, buffers)
            head = pack_reply_need_space(token, payload.nbytes, lens)
            view[hdr : hdr + len(head)] = head
            return len(head)
        data = hdr + REPLY_HEADER_BYTES
        view[data : data + payload.nbytes] = payload
        for off, b in zip(offsets, buffers, strict=True):
            view[data + off : data + off + b.nbytes] = b
        head = pack_reply_ok(payload.nbytes, lens)
        view[hdr : hdr + len(head)] = head
        return REPLY_HEADER_BYTES + total

    def _stash(self, token: int, payload: memoryview, buffers: list[memoryview]) -> None:
        """Keep a reply for the guest's FETCH; copies what aliases guest memory."""
        base = int(np.frombuffer(self.s.mem, dtype=np.uint8, count=1).ctypes.data)  # type: ignore[arg-type]
        size = self.s.size

        def owned(b: memoryview) -> memoryview | bytes:
            if b.nbytes and base <= int(np.frombuffer(b, np.uint8).ctypes.data) < base + size:
                return bytes(b)
            return b

        self._pending[token] = Message(owned(payload), [owned(b) for b in buffers])
        while len(self._pending) > MAX_PENDING_REPLIES:
            self._pending.popitem(last=False)


def _flat(buf: Any) -> memoryview:
    view = memoryview(buf)
    if view.format == "B" and view.ndim == 1 and view.c_contiguous:
        return view
    if not view.c_contiguous:
        view = np.ascontiguousarray(view).data
    return view.cast("B")


def _int(message: dict[str, Any], key: str) -> int:
    value = message.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(
            f"{message.get('req')}: {key!r} must be a non-negative integer, got {value!r}"
        )
    return value


class VirtioMockListener(Listener):
    """Accepts guests on the control socket; one :class:`Device` (and thread) per guest."""

    def __init__(self, address: Address, handler: Handler, options: TransportOptions) -> None:
        from .driver import control_path

        self.path = control_path(address)
        self.address = f"virtio-mock://{self.path}"
        self.handler = handler
        self.options = options
        self._devices: list[Device] = []
        self._lock = threading.Lock()
        self._stopped = False
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)

        def bind(staging: str) -> None:
            self._sock.bind(staging)
            self._sock.listen(64)

        try:
            listen_at(
                Path(self.path),
                self.address,
                options.unix_socket_mode,
                bind,
                lambda _: None,
                socket.SOCK_SEQPACKET,
            )
        except OSError as exc:
            self._sock.close()
            raise RemoteError(f"cannot listen on {self.address}: {exc}") from exc
        except BaseException:
            self._sock.close()
            raise
        self._stop_fd = os.eventfd(0, os.EFD_CLOEXEC)
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"virtio-mock accept {self.path}", daemon=True
        )
        self._thread.start()

    def _accept_loop(self) -> None:
        accept_loop(self._sock, self._stop_fd, self._start_device, f"virtio-mock {self.address}")

    def _start_device(self, conn: socket.socket) -> None:
        device = Device(conn, self.handler, self.options, self._stop_fd, self.address)
        with self._lock:
            self._devices = [d for d in self._devices if d.thread.is_alive()]
            self._devices.append(device)
        device.thread.start()

    @property
    def devices(self) -> list[Device]:
        with self._lock:
            return [d for d in self._devices if d.thread.is_alive()]

    def stop(self, grace: float = 5.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.eventfd_write(self._stop_fd, 1)
        deadline = time.monotonic() + grace
        self._thread.join(grace)
        self._sock.close()
        for device in self.devices:
            device.thread.join(max(0.0, deadline - time.monotonic()))
        os.close(self._stop_fd)
