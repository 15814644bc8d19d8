"""The device side of virtio-mock, served by the agent: a trust boundary.

The listener accepts guests on a unix control socket (``SOCK_SEQPACKET``). Each connection is
one device instance: it receives the guest's shared memory (a sealed memfd) and its kick/call
eventfds, maps the memory, and then serves the split virtqueue in a thread of its own. Request
buffers reach the handler as read-only memoryviews straight into the shared memory (no copy);
replies are written into the chain's device-writable buffers.

Guests are untrusted, so everything a guest controls is checked or bounded:

* connections that have not finished set-up cost no thread: one set-up thread per listener
  polls them all, and drops those that do not finish within ``handshake_timeout``; at most
  ``max_connections`` control connections are open at once (more are refused at once) and at
  most ``max_clients`` devices serve at once;
* the set-up accepts each request only in the state where it makes sense and answers every
  other one (any state, junk included) with an error; the memory a device maps is capped
  (``virtio_mock_max_memory_bytes``);
* every descriptor is validated before use (index, address and length inside the data area,
  flags, chain length and loops, readable-before-writable); a bad chain gets an error
  completion and a ``chain_error`` event, never a crash, and other chains are unaffected;
* a reply, an error included, is never written past the device-writable buffer the guest
  gave; a request or reply over ``max_message_bytes`` gets RESOURCE_EXHAUSTED, and so does a
  reply that would pass the bounds on what a guest may leave parked for FETCH;
* a guest that closes its control socket (or dies) frees its device and disconnects its peer.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vaccel_core.errors import CLIP_CHARS, InvalidArgumentError, RemoteError, VaccelError, clip
from vaccel_core.log import logger
from vaccel_core.transport import (
    Address,
    Handler,
    Listener,
    Message,
    Peer,
    TransportOptions,
    rejection_hook,
    status_for,
)

from .._accept import accept_loop
from ..unix import check_socket_mode, listen_at
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

#: Connections accepted over --max-connections at once, waiting to replace a stalled set-up.
OVERFLOW_CONNECTIONS = 16
#: A connection setting up for longer than this (seconds) may be closed for a new one.
EVICTION_GRACE = 1.0
#: Largest guest memory a device maps (``virtio_mock_max_memory_bytes``): the driver's default.
DEFAULT_MAX_MEMORY_BYTES = 1 << 30
#: Replies one guest may leave parked for FETCH (``virtio_mock_max_parked_replies``).
DEFAULT_MAX_PARKED_REPLIES = 16
#: Bytes of parked replies per guest, as a multiple of ``max_message_bytes``
#: (``virtio_mock_max_parked_bytes``; default: two replies of the largest size).
DEFAULT_PARKED_MESSAGES = 2
_BAD_FLAGS = ~(VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) & 0xFFFF
_SETUP_REQUESTS = (
    "GET_FEATURES",
    "SET_MEM_TABLE",
    "SET_VRING_NUM",
    "SET_VRING_ADDR",
    "SET_VRING_KICK",
    "SET_VRING_CALL",
    "SET_VRING_ENABLE",
)

Failure = tuple[str, str, int]  # status, message, errno


class ChainError(Exception):
    """A descriptor chain the device refuses (the guest gets an error completion);
    ``too_large``: for a buffer over ``max_message_bytes``."""

    def __init__(self, message: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


class SetupError(ProtocolError):
    """A set-up request the device refuses; ``status``/``code`` are set for a limit."""

    def __init__(self, message: str, status: str | None = None, code: int = errno.EINVAL):
        super().__init__(message)
        self.status = status
        self.code = code

    def reply(self) -> dict[str, Any]:
        if self.status is None:
            return {"ok": False, "error": str(self)}
        return {"ok": False, "error": str(self), "status": self.status, "code": self.code}


def _limit_error(text: str) -> SetupError:
    """A set-up refusal for a limit (``text`` names the limit's flag or option)."""
    return SetupError(text, "RESOURCE_EXHAUSTED", errno.ENOMEM)


def _over_limit(text: str) -> Failure:
    """A call refused for a limit (``text`` names the limit's flag or option)."""
    return ("RESOURCE_EXHAUSTED", text, errno.ENOMEM)


def _name(method: str) -> str:
    """A method name as an error quotes it: as is when short and printable, else clipped."""
    if len(method) <= CLIP_CHARS and method.isprintable():
        return method
    return clip(method)


def _is_eventfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return True  # no /proc: cannot tell, accept


@dataclass(frozen=True)
class DeviceLimits:
    """What one listener lets its guests make it hold (from :class:`TransportOptions`)."""

    max_connections: int
    max_clients: int
    handshake_timeout: float
    max_message_bytes: int
    max_memory_bytes: int
    max_parked_replies: int
    max_parked_bytes: int

    @classmethod
    def from_options(cls, options: TransportOptions) -> DeviceLimits:
        extra = options.extra
        message = _positive("max_message_bytes", options.max_message_bytes)
        return cls(
            max_connections=_positive("max_connections", options.max_connections),
            max_clients=_positive("max_clients", options.max_clients),
            # virtio_mock_setup_timeout: the older, transport-specific name.
            handshake_timeout=_positive(
                "handshake_timeout",
                extra.get("virtio_mock_setup_timeout", options.handshake_timeout),
                float,
            ),
            max_message_bytes=message,
            max_memory_bytes=_positive(
                "virtio_mock_max_memory_bytes",
                extra.get("virtio_mock_max_memory_bytes", DEFAULT_MAX_MEMORY_BYTES),
            ),
            max_parked_replies=_positive(
                "virtio_mock_max_parked_replies",
                extra.get("virtio_mock_max_parked_replies", DEFAULT_MAX_PARKED_REPLIES),
            ),
            max_parked_bytes=_positive(
                "virtio_mock_max_parked_bytes",
                extra.get("virtio_mock_max_parked_bytes", DEFAULT_PARKED_MESSAGES * message),
            ),
        )


def _positive(name: str, value: Any, kind: type = int) -> Any:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not isinstance(value, int))
        or not value > 0
    ):
        raise InvalidArgumentError(
            f"virtio-mock option {name}: expected a positive "
            f"{'integer' if kind is int else 'number'}, got {value!r}"
        )
    return kind(value)


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
    """One guest's device instance: set up by the listener's set-up thread (:meth:`setup`,
    one control message at a time), then served in a thread of its own (:meth:`start`)."""

    def __init__(
        self,
        conn: socket.socket,
        handler: Handler,
        limits: DeviceLimits,
        stop_fd: int,
        where: str,
        on_exit: Callable[[Device], None] = lambda device: None,
    ) -> None:
        self.conn = conn
        self.handler = handler
        self.rejected = rejection_hook(handler)
        self.limits = limits
        self.stop_fd = stop_fd
        self.where = where
        self.on_exit = on_exit
        self.peer = Peer(f"virtio-mock-{uuid.uuid4().hex[:16]}", "")
        self.s = _Setup()
        self.deadline = time.monotonic() + limits.handshake_timeout
        self.fd = conn.fileno()  # its key in the set-up loop (stays valid after close)
        self.enabled = False
        #: Replies kept for the guest's FETCH (token -> reply), and their bytes.
        self._parked: OrderedDict[int, Message] = OrderedDict()
        self._parked_bytes = 0
        self._tokens = itertools.count(1)
        self._last_avail = 0
        self._used_idx = 0
        self._method = "?"
        self._noted_control = False
        #: Set once the guest has its SET_VRING_ENABLE answer: only then does serving start.
        self.admitted = threading.Event()
        self.thread = threading.Thread(
            target=self.run, name=f"virtio-mock {self.peer.id}", daemon=True
        )

    # Lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Serve the queue in a new thread (raises RuntimeError when no thread can start)."""
        self.thread.start()

    def run(self) -> None:
        connected = False
        try:
            self.admitted.wait()
            self.handler.peer_connected(self.peer)
            connected = True
            logger.info(
                "virtio-mock %s: %s connected (%s)", self.where, self.peer.id, self.peer.description
            )
            self._serve()
        except Exception:
            logger.exception("virtio-mock %s: device %s failed", self.where, self.peer.id)
        finally:
            self.close()
            if connected:
                logger.info("virtio-mock %s: %s disconnected", self.where, self.peer.id)
                try:
                    self.handler.peer_disconnected(self.peer)
                except Exception:
                    logger.exception("virtio-mock: peer_disconnected(%s) failed", self.peer.id)
            self.on_exit(self)

    def close(self) -> None:
        """Free what this device holds: parked replies, the socket, eventfds, the mapping."""
        self._parked.clear()
        self._parked_bytes = 0
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

    # Set-up -----------------------------------------------------------------------------------
    def setup(self, message: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        """Answer one set-up request. Never raises for what a guest sends; closes every
        received descriptor the device does not keep."""
        try:
            return {"ok": True, **self._setup_step(message, fds)}
        except SetupError as exc:
            return exc.reply()
        except ProtocolError as exc:
            return {"ok": False, "error": str(exc)}
        finally:
            for fd in fds:
                if fd not in (self.s.kick, self.s.call):
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def _expect_fds(self, req: str, fds: list[int], n: int) -> None:
        if len(fds) != n:
            raise SetupError(f"{req}: expected {n} file descriptor(s), got {len(fds)}")

    def _setup_step(self, message: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        req = message.get("req")
        if not isinstance(req, str) or req not in _SETUP_REQUESTS:
            raise SetupError(
                f"unknown request {clip(req)} (expected one of {', '.join(_SETUP_REQUESTS)})"
            )
        if self.enabled:
            raise SetupError(f"{req}: not accepted after SET_VRING_ENABLE (the device runs)")
        s = self.s
        if req == "GET_FEATURES":
            self._expect_fds(req, fds, 0)
            return {"features": ["VERSION_1"], "protocol": 1}
        if req == "SET_MEM_TABLE":
            self._expect_fds(req, fds, 1)
            if s.mem is not None:
                raise SetupError("SET_MEM_TABLE: memory already set (it is set once)")
            self._map(_int(message, "size"), fds[0])
            return {}
        if req == "SET_VRING_NUM":
            self._expect_fds(req, fds, 0)
            if s.layout is not None:
                raise SetupError(
                    f"SET_VRING_NUM after SET_VRING_ADDR: the ring addresses are already laid "
                    f"out for {s.num} entries"
                )
            if s.num:
                raise SetupError(f"SET_VRING_NUM: the queue size is already set ({s.num})")
            try:
                check_queue_size(message.get("num"))  # type: ignore[arg-type]
            except ValueError as exc:
                raise SetupError(f"SET_VRING_NUM: {clip(str(exc), 200)}") from None
            s.num = int(message["num"])
            return {}
        if req == "SET_VRING_ADDR":
            self._expect_fds(req, fds, 0)
            if s.layout is not None:
                raise SetupError("SET_VRING_ADDR: the ring addresses are already set")
            self._set_addr(message)
            return {}
        if req in ("SET_VRING_KICK", "SET_VRING_CALL"):
            self._expect_fds(req, fds, 1)
            if (s.kick if req == "SET_VRING_KICK" else s.call) >= 0:
                raise SetupError(f"{req}: the eventfd is already set")
            if not _is_eventfd(fds[0]):
                raise SetupError(f"{req}: the file descriptor is not an eventfd")
            if req == "SET_VRING_KICK":
                s.kick = fds[0]
            else:
                s.call = fds[0]
            return {}
        # SET_VRING_ENABLE
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
            raise SetupError(f"SET_VRING_ENABLE before {', '.join(missing)}")
        pid = message.get("pid")
        pid_text = str(pid) if isinstance(pid, int) and not isinstance(pid, bool) else "?"
        self.peer = Peer(self.peer.id, f"pid {pid_text} via {self.where}")
        self.enabled = True
        return {"peer": self.peer.id}

    def _map(self, size: int, fd: int) -> None:
        s, cap = self.s, self.limits.max_memory_bytes
        if size > cap:
            raise _limit_error(
                f"SET_MEM_TABLE: guest memory of {size} bytes is more than this device maps "
                f"(limit {cap} bytes, virtio_mock_max_memory_bytes); give the guest less "
                f"(its virtio_mock_memory_bytes)"
            )
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size < size or size <= 0:
                raise SetupError(
                    f"SET_MEM_TABLE: expected a memory file of at least {size} bytes, "
                    f"got {st.st_size}"
                )
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            if not seals & fcntl.F_SEAL_SHRINK:
                raise SetupError(
                    "SET_MEM_TABLE: the memory must be sealed against shrinking "
                    "(F_SEAL_SHRINK), or a truncation would crash the device"
                )
            s.mem = mmap.mmap(fd, size)
            s.size = size
        except OSError as exc:
            raise SetupError(
                f"SET_MEM_TABLE: cannot map the memory: {os.strerror(exc.errno or 0)}"
            ) from None

    def _set_addr(self, message: dict[str, Any]) -> None:
        s = self.s
        if s.mem is None or not s.num:
            raise SetupError("SET_VRING_ADDR before SET_MEM_TABLE and SET_VRING_NUM")
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
                raise SetupError(
                    f"SET_VRING_ADDR: {name} at {off} (+{length}) must be {alignment}-byte "
                    f"aligned and end before the data area at {data_start}"
                )
        spans = sorted((off, off + length) for off, length, _ in areas.values())
        for (_, end), (start, _) in itertools.pairwise(spans):
            if start < end:
                raise SetupError("SET_VRING_ADDR: the ring areas overlap")
        if not 0 < data_start < s.size:
            raise SetupError(f"SET_VRING_ADDR: data area start {data_start} outside memory")
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
            self.limits.max_message_bytes,
            DESC.unpack_from,
            REQ_HEADER.unpack_from,
        )
        self._gone = False
        self._done = os.eventfd(0, os.EFD_CLOEXEC)
        try:
            watcher = threading.Thread(
                target=self._watch, name=f"virtio-mock watch {self.peer.id}", daemon=True
            )
            watcher.start()
        except RuntimeError as exc:  # out of threads: this guest goes, the agent goes on
            logger.warning(
                "virtio-mock %s: %s: cannot start the watcher thread (%s); device stops",
                self.where,
                self.peer.id,
                exc,
            )
            os.close(self._done)
            self.view.release()
            return
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
        """Answer control messages after set-up (each with an error); False when the guest
        went away."""
        while True:
            try:
                message, fds = recv_control(self.conn)
            except BlockingIOError:
                return True
            except ProtocolError as exc:  # junk: answered, the device goes on
                self._note_control(str(exc))
                self._event({"ok": False, "error": str(exc)})
                continue
            except OSError as exc:
                logger.info("virtio-mock %s: %s: control socket: %s", self.where, self.peer.id, exc)
                return False
            if message is None:
                return False
            reply = self.setup(message, fds)  # refused: the device already runs
            self._note_control(reply.get("error", ""))
            self._event(reply)

    def _note_control(self, what: str) -> None:
        """Log the first control message after set-up (a guest could send millions)."""
        if not self._noted_control:
            self._noted_control = True
            logger.warning(
                "virtio-mock %s: %s: control message after set-up refused: %s (further ones "
                "are refused without a log line)",
                self.where,
                self.peer.id,
                what,
            )

    def _event(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):  # gone, or not reading: its loss
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
        try:  # noqa: SIM105 (hot path: contextlib.suppress costs more)
            os.eventfd_write(self.s.call, 1)
        except OSError:  # the guest saturated its call counter (EAGAIN): it is signalled
            pass

    def _reject(self, head: int, reason: str) -> None:
        logger.info(
            "virtio-mock %s: %s: chain %d rejected: %s", self.where, self.peer.id, head, reason
        )
        self._event({"event": "chain_error", "head": head, "reason": reason})
        self._complete(head, 0)

    def walk(self, head: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Validate the chain at ``head``: (readable, writable) lists of (addr, len)."""
        num, lo, hi = self.s.num, self.s.data_start, self.s.size
        limit = self.limits.max_message_bytes
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
            if (
                flags & _BAD_FLAGS
                or addr < lo
                or addr + length > hi
                or (length > limit and not flags & VRING_DESC_F_WRITE)
            ):
                over = not flags & _BAD_FLAGS and length > limit and not flags & VRING_DESC_F_WRITE
                raise ChainError(
                    self._bad_desc(index, addr, length, flags),
                    too_large=over,
                )
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
        lo, hi, limit = self.s.data_start, self.s.size, self.limits.max_message_bytes
        if flags & VRING_DESC_F_INDIRECT:
            return f"descriptor {index}: INDIRECT descriptors not negotiated"
        if flags & _BAD_FLAGS:
            return f"descriptor {index}: unknown flags {flags:#x}"
        if length > limit and not flags & VRING_DESC_F_WRITE:
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
            written = self._write_failed(writable, exc)
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
                    f"bytes (reply header and data), got {[n for _, n in writable][:8]}"
                )
            if not readable:
                raise ChainError("expected a device-readable request header descriptor")
        except ChainError as exc:
            if exc.too_large:
                self.rejected("max_message_bytes")
            self._reject(head, str(exc))
            return
        views: list[memoryview] = []
        reply = self._run(readable, views)
        try:
            written = self._write_reply(writable[0], reply)
        except Exception as exc:  # a reply the handler built badly
            written = self._write_failed(writable[0], exc)
        finally:
            self._release(views)
        self._complete(head, written)

    def _run(self, readable: list[tuple[int, int]], views: list[memoryview]) -> Message | Failure:
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
                    reply = self._parked.pop(header.token)
                except KeyError:
                    raise ProtocolError(f"no pending reply with token {header.token}") from None
                self._parked_bytes -= reply.nbytes
                return reply
        except ProtocolError as exc:
            return ("INVALID_ARGUMENT", f"virtio-mock request: {exc}", errno.EINVAL)
        limit = self.limits.max_message_bytes
        size = header.payload_len + sum(n for _, n in readable[1:])
        if size > limit:
            self.rejected("max_message_bytes")
            return _over_limit(
                f"{_name(method)}: request of {size} bytes exceeds the message size limit of "
                f"{limit} bytes (--max-message-size)"
            )
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

    def _call_handler(self, method: str, request: Message) -> Message | Failure:
        """The handler's reply, or (status, message, code) for a failed call."""
        try:
            return self.handler.handle(method, request, self.peer)
        except VaccelError as exc:
            return (status_for(exc), exc.message, exc.code)
        except Exception as exc:
            logger.exception("virtio-mock %s: %s failed", self.where, _name(method))
            # The exception's text may name host paths: the guest gets its type only.
            return (
                "INTERNAL",
                f"{_name(method)}: internal error ({type(exc).__name__}); see the agent's log",
                errno.EIO,
            )

    def _release(self, views: list[memoryview]) -> None:
        for v in views:
            try:
                v.release()
            except BufferError:
                logger.warning(
                    "virtio-mock %s: %s kept a view of a request buffer after returning; its "
                    "contents change when the guest reuses that memory (copy what you keep)",
                    self.where,
                    _name(self._method),
                )

    def _write_failed(self, writable: tuple[int, int], exc: Exception) -> int:
        logger.error(
            "virtio-mock %s: cannot write the reply of %s: %s: %s",
            self.where,
            _name(self._method),
            type(exc).__name__,
            exc,
        )
        error = (
            "INTERNAL",
            f"{_name(self._method)}: cannot send the reply ({type(exc).__name__}); see the "
            "agent's log",
            errno.EIO,
        )
        return self._write_error(writable, error)

    def _write_error(self, writable: tuple[int, int], error: Failure) -> int:
        """Write an error reply, cut to fit the writable buffer (never past its end)."""
        addr, room = writable
        data = pack_reply_error(*error, room=min(room, REPLY_HEADER_BYTES))
        self.view[addr : addr + len(data)] = data
        return len(data)

    def _write_reply(self, writable: tuple[int, int], reply: Message | Failure) -> int:
        if isinstance(reply, tuple):
            return self._write_error(writable, reply)
        raw = reply.payload
        limit = self.limits.max_message_bytes
        if not reply.buffers and type(raw) is bytes:  # the common small reply, kept short
            hdr, room = writable
            n = len(raw)
            if REPLY_HEADER_BYTES + n <= room and n <= limit:
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
        size = payload.nbytes + sum(lens)
        if size > limit:
            self.rejected("max_message_bytes")
            return self._write_error(
                writable,
                _over_limit(
                    f"{_name(self._method)}: reply of {size} bytes exceeds the message size "
                    f"limit of {limit} bytes (--max-message-size)"
                ),
            )
        offsets, total = data_layout(payload.nbytes, lens)
        hdr, room = writable
        view = self.view
        if REPLY_HEADER_BYTES + total > room:
            refused = self._park(payload, buffers, size, room - REPLY_HEADER_BYTES)
            if refused is not None:
                return self._write_error(writable, refused)
            head = pack_reply_need_space(next(reversed(self._parked)), payload.nbytes, lens)
            view[hdr : hdr + len(head)] = head
            return len(head)
        data = hdr + REPLY_HEADER_BYTES
        view[data : data + payload.nbytes] = payload
        for off, b in zip(offsets, buffers, strict=True):
            view[data + off : data + off + b.nbytes] = b
        head = pack_reply_ok(payload.nbytes, lens)
        view[hdr : hdr + len(head)] = head
        return REPLY_HEADER_BYTES + total

    def _park(
        self, payload: memoryview, buffers: list[memoryview], size: int, room: int
    ) -> Failure | None:
        """Keep a reply for the guest's FETCH (copying what aliases guest memory), or the
        error when that would pass what one guest may leave parked."""
        lim, count, held = self.limits, len(self._parked), self._parked_bytes
        what = (
            f"{_name(self._method)}: the reply of {size} bytes does not fit the {room}-byte "
            f"reply area and cannot be kept for FETCH"
        )
        if count >= lim.max_parked_replies:
            return _over_limit(
                f"{what}: this guest already has {count} replies awaiting FETCH (limit "
                f"{lim.max_parked_replies} replies, virtio_mock_max_parked_replies)"
            )
        if held + size > lim.max_parked_bytes:
            return _over_limit(
                f"{what}: this guest already has {held} bytes of replies awaiting FETCH (limit "
                f"{lim.max_parked_bytes} bytes, virtio_mock_max_parked_bytes)"
            )
        base = int(np.frombuffer(self.s.mem, dtype=np.uint8, count=1).ctypes.data)  # type: ignore[arg-type]
        end = base + self.s.size

        def owned(b: memoryview) -> memoryview | bytes:
            if b.nbytes and base <= int(np.frombuffer(b, np.uint8).ctypes.data) < end:
                return bytes(b)
            return b

        self._parked[next(self._tokens)] = Message(owned(payload), [owned(b) for b in buffers])
        self._parked_bytes += size
        return None


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
        raise SetupError(
            f"{message.get('req')}: {key!r} must be a non-negative integer, got {clip(value)}"
        )
    return value


class VirtioMockListener(Listener):
    """Accepts guests on the control socket.

    Three kinds of threads: one accepts (refusing connections over ``max_connections`` at
    once), one sets up every guest that has not finished its set-up (a poll loop: a pending
    connection costs no thread; those past ``handshake_timeout`` are closed), and each device
    that finished set-up (at most ``max_clients``) serves its queue in its own thread (and a
    watcher thread). A failure that concerns one connection, thread creation included, ends
    that connection only."""

    def __init__(self, address: Address, handler: Handler, options: TransportOptions) -> None:
        from .driver import control_path

        self.path = control_path(address)
        self.address = f"virtio-mock://{self.path}"
        check_socket_mode(options, self.address)
        self.handler = handler
        self.rejected = rejection_hook(handler)
        self.options = options
        self.limits = DeviceLimits.from_options(options)
        self._lock = threading.Lock()
        self._devices: set[Device] = set()  # serving
        self._incoming: list[socket.socket] = []  # accepted, not yet with the set-up thread
        #: Accepted over --max-connections: each takes the place of a stalled set-up, or goes.
        self._overflow: list[socket.socket] = []
        self._open = 0  # control connections accepted and not yet closed
        self._refusing = False
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
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._setup_thread = threading.Thread(
            target=self._setup_loop, name=f"virtio-mock setup {self.path}", daemon=True
        )
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"virtio-mock accept {self.path}", daemon=True
        )
        try:
            self._setup_thread.start()
            self._thread.start()
        except BaseException:
            self.stop(1)
            raise

    @property
    def devices(self) -> list[Device]:
        """The devices serving now (set-up finished)."""
        with self._lock:
            return list(self._devices)

    @property
    def open_connections(self) -> int:
        """Control connections open now (in set-up or serving)."""
        with self._lock:
            return self._open

    # Accepting ----------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        accept_loop(self._sock, self._stop_fd, self._accepted, f"virtio-mock {self.address}")

    def _accepted(self, conn: socket.socket) -> None:
        limit = self.limits.max_connections
        with self._lock:
            full = self._open >= limit
            # At the limit, a new connection may still take the place of one that has been
            # setting up for too long (the set-up thread decides): connections that never set
            # up must not keep every new guest out.
            overflow = full and len(self._overflow) < OVERFLOW_CONNECTIONS
            if not full or overflow:
                self._open += 1
                (self._overflow if full else self._incoming).append(conn)
                refusing, self._refusing = self._refusing, False
        if full and not overflow:
            self._refuse_connection(conn, limit)
            return
        if refusing:
            logger.warning("virtio-mock %s: accepting connections again", self.address)
        os.eventfd_write(self._wake, 1)

    def _refuse_connection(self, conn: socket.socket, limit: int) -> None:
        self.rejected("max_connections")
        error = _limit_error(
            f"this listener already has {limit} open connections (limit {limit}, --max-connections)"
        )
        with self._lock:
            first, self._refusing = not self._refusing, True
        if first:
            logger.warning(
                "virtio-mock %s: refusing connections: %d open (--max-connections)",
                self.address,
                limit,
            )
        with contextlib.suppress(OSError):
            conn.setblocking(False)
            send_control(conn, error.reply())
        conn.close()

    # Set-up -------------------------------------------------------------------------------------
    def _setup_loop(self) -> None:
        """Set up every pending guest, one control message at a time, in this one thread."""
        poller = select.poll()
        poller.register(self._stop_fd, select.POLLIN)
        poller.register(self._wake, select.POLLIN)
        pending: dict[int, Device] = {}
        try:
            while True:
                timeout: float | None = None
                if pending:
                    soonest = min(d.deadline for d in pending.values())
                    timeout = max(0.0, soonest - time.monotonic()) * 1000.0
                events = poller.poll(timeout)
                for fd, _ev in events:
                    if fd == self._stop_fd:
                        return
                    if fd == self._wake:
                        self._take_incoming(poller, pending)
                        continue
                    device = pending.get(fd)
                    if device is None:
                        continue
                    try:
                        self._setup_input(device, poller, pending)
                    except Exception:  # a bug: this guest goes, the others stay
                        logger.exception(
                            "virtio-mock %s: set-up of %s failed", self.address, device.peer.id
                        )
                        self._drop(device, poller, pending)
                now = time.monotonic()
                for device in [d for d in pending.values() if d.deadline <= now]:
                    self.rejected("handshake_timeout")
                    logger.warning(
                        "virtio-mock %s: %s did not finish set-up in %.1fs (--handshake-timeout)",
                        self.address,
                        device.peer.id,
                        self.limits.handshake_timeout,
                    )
                    self._drop(device, poller, pending)
        finally:
            for device in list(pending.values()):
                self._drop(device, poller, pending)

    def _take_incoming(self, poller: select.poll, pending: dict[int, Device]) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._wake)
        with self._lock:
            conns, self._incoming = self._incoming, []
            overflow, self._overflow = self._overflow, []
        for conn in overflow:
            if self._evict_slowest_setup(poller, pending):
                conns.append(conn)
            else:
                self._closed_one()
                self._refuse_connection(conn, self.limits.max_connections)
        for conn in conns:
            device = Device(
                conn, self.handler, self.limits, self._stop_fd, self.address, self._device_exited
            )
            try:
                conn.setblocking(False)
                fd = conn.fileno()
                poller.register(fd, select.POLLIN)
            except (OSError, ValueError):
                device.close()
                self._closed_one()
                continue
            pending[fd] = device

    def _setup_input(self, device: Device, poller: select.poll, pending: dict[int, Device]) -> None:
        """Read and answer one control message of a guest in set-up."""
        try:
            message, fds = recv_control(device.conn)
        except BlockingIOError:
            return
        except ProtocolError as exc:  # junk: answered, the guest may go on
            self._answer(device, {"ok": False, "error": str(exc)}, poller, pending)
            return
        except OSError as exc:
            logger.info("virtio-mock %s: %s: control socket: %s", self.address, device.peer.id, exc)
            self._drop(device, poller, pending)
            return
        if message is None:  # the guest hung up
            self._drop(device, poller, pending)
            return
        reply = device.setup(message, fds)
        if not device.enabled:
            self._answer(device, reply, poller, pending)
            return
        # Set-up finished: the device leaves this loop, and serves in its own thread.
        poller.unregister(device.fd)
        del pending[device.fd]
        refusal = self._admit(device)
        if refusal is not None:
            with contextlib.suppress(OSError):
                send_control(device.conn, refusal)
            device.close()
            self._closed_one()
            return
        try:
            with contextlib.suppress(OSError):  # a guest gone meanwhile: its device sees it
                send_control(device.conn, reply)
        finally:
            device.admitted.set()

    def _answer(
        self,
        device: Device,
        reply: dict[str, Any],
        poller: select.poll,
        pending: dict[int, Device],
    ) -> None:
        try:
            send_control(device.conn, reply)
        except BlockingIOError:
            logger.warning(
                "virtio-mock %s: %s does not read the set-up replies; dropped",
                self.address,
                device.peer.id,
            )
            self._drop(device, poller, pending)
        except OSError:
            self._drop(device, poller, pending)

    def _admit(self, device: Device) -> dict[str, Any] | None:
        """Start serving ``device``; the refusal to send instead, when it may not."""
        limit = self.limits.max_clients
        with self._lock:
            if self._stopped:
                return {"ok": False, "error": "the agent is stopping"}
            if len(self._devices) >= limit:
                self.rejected("max_clients")
                return _limit_error(
                    f"SET_VRING_ENABLE: this listener already serves {limit} guests (limit "
                    f"{limit}, --max-clients)"
                ).reply()
            self._devices.add(device)
        try:
            device.start()
        except RuntimeError as exc:  # can't start new thread
            with self._lock:
                self._devices.discard(device)
            logger.warning(
                "virtio-mock %s: cannot start a device thread for %s: %s",
                self.address,
                device.peer.id,
                exc,
            )
            return SetupError(
                "SET_VRING_ENABLE: cannot start the device: the agent cannot start a thread "
                "now; try again later",
                "RESOURCE_EXHAUSTED",
                errno.ENOMEM,
            ).reply()
        return None

    def _evict_slowest_setup(self, poller: select.poll, pending: dict[int, Device]) -> bool:
        """Close the connection that has been setting up the longest, if for more than
        :data:`EVICTION_GRACE` seconds (a guest sets up in milliseconds); whether one was."""
        if not pending:
            return False
        oldest = min(pending.values(), key=lambda d: d.deadline)
        started = oldest.deadline - self.limits.handshake_timeout
        if time.monotonic() - started < EVICTION_GRACE:
            return False
        self.rejected("max_connections")
        logger.info(
            "virtio-mock %s: %s was still setting up after %.1f s: closed to make room "
            "(--max-connections)",
            self.address,
            oldest.peer.id,
            time.monotonic() - started,
        )
        self._drop(oldest, poller, pending)
        return True

    def _drop(self, device: Device, poller: select.poll, pending: dict[int, Device]) -> None:
        """Close a connection still in set-up."""
        if pending.pop(device.fd, None) is not None:
            with contextlib.suppress(KeyError, ValueError):
                poller.unregister(device.fd)
        device.close()
        self._closed_one()

    def _closed_one(self) -> None:
        with self._lock:
            self._open -= 1

    def _device_exited(self, device: Device) -> None:
        with self._lock:
            self._devices.discard(device)
            self._open -= 1

    # Stopping -----------------------------------------------------------------------------------
    def stop(self, grace: float = 5.0) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.eventfd_write(self._stop_fd, 1)
        deadline = time.monotonic() + grace
        for thread in (self._thread, self._setup_thread):
            if thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        self._sock.close()
        with self._lock:
            leftover, self._incoming = self._incoming, []
        for conn in leftover:
            conn.close()
            self._closed_one()
        for device in self.devices:
            if device.thread.ident is not None:  # (one admitted as we stopped may not run yet)
                device.thread.join(max(0.0, deadline - time.monotonic()))
        if not self._thread.is_alive() and not self._setup_thread.is_alive():
            os.close(self._wake)
        os.close(self._stop_fd)
