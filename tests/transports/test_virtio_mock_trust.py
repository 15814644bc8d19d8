"""virtio-mock as a trust boundary: what a hostile guest tried, and what the device does now.

Each test reproduces one attack against a real device (a real listener in this process, real
memfds, eventfds and sockets, real device threads) and asserts that it no longer works:

(a) an error reply longer than the guest's reply buffer was written past its end;
(b) huge memory files exhausted the agent's address space, and a failed thread start killed the
    accept loop for good;
(c) replies parked for FETCH and never fetched held unbounded memory;
(d) a control message out of order (SET_VRING_NUM after the ring addresses) killed the device;
(e) connections that never finish set-up each cost a thread, with no connection or client cap.

:class:`RawGuest` is a guest driven by hand (the rings written directly), for the attacks the
real driver would never make; the property-based fuzz test (test_virtio_mock_fuzz.py) uses it
too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import select
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vaccel_core.errors import InvalidArgumentError
from vaccel_core.transport import Address, CallError, Message, Peer, TransportOptions
from vaccel_transports._accept import accept_loop
from vaccel_transports.virtio_mock import VirtioMockTransport
from vaccel_transports.virtio_mock.device import Device, VirtioMockListener
from vaccel_transports.virtio_mock.driver import VirtioMockChannel
from vaccel_transports.virtio_mock.layout import (
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    RingLayout,
    SplitRing,
)
from vaccel_transports.virtio_mock.protocol import (
    KIND_CALL,
    KIND_FETCH,
    REPLY_ERROR,
    REPLY_HEADER_BYTES,
    REPLY_NEED_SPACE,
    REPLY_OK,
    ReplyHeader,
    align,
    pack_request,
    recv_control,
    send_control,
    unpack_reply_header,
)

from .echo_server import EchoHandler

pytestmark = pytest.mark.timeout(60)

NEXT, WRITE = VRING_DESC_F_NEXT, VRING_DESC_F_WRITE
MiB = 1 << 20


# A guest driven by hand -------------------------------------------------------------------
class RawGuest:
    """A guest that owns a real sealed memfd, real eventfds and a real control socket, and
    writes descriptors and ring entries by hand: it can do what the real driver never does."""

    def __init__(
        self,
        path: str,
        memory: int = 1 * MiB,
        num: int = 16,
        *,
        file_size: int | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.memory, self.num = memory, num
        self.memfd = os.memfd_create("raw-guest", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(self.memfd, memory if file_size is None else file_size)
        fcntl.fcntl(self.memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        self.mem = mmap.mmap(self.memfd, memory)
        self.layout = RingLayout.at(0, num)
        self.data_start = align(self.layout.end, mmap.PAGESIZE)
        self.ring = SplitRing(self.mem, self.layout)
        self.kick = os.eventfd(0, os.EFD_CLOEXEC)
        self.call = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        self.avail = 0  # next free-running available index
        self.used = 0  # used entries consumed so far
        self.events: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []
        try:
            self.sock.connect(path)
        except BaseException:
            self.close()
            raise

    def setup_steps(self) -> list[tuple[dict[str, Any], list[int]]]:
        """The standard set-up, as the real driver sends it."""
        lay = self.layout
        return [
            ({"req": "GET_FEATURES"}, []),
            ({"req": "SET_MEM_TABLE", "size": self.memory}, [self.memfd]),
            ({"req": "SET_VRING_NUM", "num": self.num}, []),
            (
                {
                    "req": "SET_VRING_ADDR",
                    "desc": lay.desc,
                    "avail": lay.avail,
                    "used": lay.used,
                    "data_start": self.data_start,
                },
                [],
            ),
            ({"req": "SET_VRING_KICK"}, [self.kick]),
            ({"req": "SET_VRING_CALL"}, [self.call]),
            ({"req": "SET_VRING_ENABLE", "pid": os.getpid()}, []),
        ]

    def request(self, message: dict[str, Any], fds: Sequence[int] = ()) -> dict[str, Any] | None:
        """Send one control message; its reply (events that come first are kept aside), or
        None when the device closed the connection."""
        send_control(self.sock, message, fds)
        return self.reply()

    def reply(self) -> dict[str, Any] | None:
        while True:
            got, fds = recv_control(self.sock)
            for fd in fds:
                os.close(fd)
            if got is None:
                return None
            if "event" in got:
                self.events.append(got)
                continue
            self.replies.append(got)
            return got

    def setup(self) -> None:
        for message, fds in self.setup_steps():
            reply = self.request(message, fds)
            assert reply is not None and reply["ok"] is True, (message, reply)

    # Rings ----------------------------------------------------------------------------------
    def publish(self, heads: Sequence[int]) -> None:
        for head in heads:
            self.ring.set_avail_entry(self.avail, head)
            self.avail = (self.avail + 1) & 0xFFFF
        self.ring.set_avail_idx(self.avail)
        os.eventfd_write(self.kick, 1)

    def wait_used(self, n: int, timeout: float = 10.0) -> list[tuple[int, int]]:
        """The next ``n`` used elements (id, len), waiting for them."""
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self.call, select.POLLIN)
        while ((self.ring.used_idx() - self.used) & 0xFFFF) < n:
            left = deadline - time.monotonic()
            assert left > 0, f"the device completed {self.ring.used_idx() - self.used} of {n}"
            poller.poll(min(left, 0.05) * 1000)
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self.call)
        out = []
        for _ in range(n):
            out.append(self.ring.used_entry(self.used))
            self.used = (self.used + 1) & 0xFFFF
        return out

    def read_events(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        """Control packets the device sent (events and unsolicited replies) so far."""
        self.sock.settimeout(timeout)
        try:
            while True:
                got, fds = recv_control(self.sock)
                for fd in fds:
                    os.close(fd)
                if got is None:
                    break
                self.events.append(got)
                self.sock.settimeout(0.0)
        except (BlockingIOError, TimeoutError):
            pass
        finally:
            self.sock.settimeout(5.0)
        return self.events

    def put(self, offset: int, data: bytes) -> None:
        self.mem[offset : offset + len(data)] = data

    def call_chain(
        self,
        method: str,
        payload: bytes = b"",
        *,
        reply_len: int = REPLY_HEADER_BYTES + 4096,
        base: int | None = None,
        kind: int = KIND_CALL,
        token: int = 0,
        descs: tuple[int, int] = (0, 1),
    ) -> tuple[int, int]:
        """Write a call chain (request descriptor, reply descriptor) at ``base`` of the data
        area; returns (head, reply offset)."""
        base = self.data_start if base is None else base
        first = pack_request(kind, method, 0, payload, token)
        reply = align(base + len(first), 4096)
        self.put(base, first)
        self.ring.write_desc(descs[0], base, len(first), NEXT, descs[1])
        self.ring.write_desc(descs[1], reply, reply_len, WRITE, 0)
        return descs[0], reply

    def reply_at(self, offset: int, length: int) -> ReplyHeader:
        return unpack_reply_header(self.mem, offset, length)

    def roundtrip(self, method: str = "echo", payload: bytes = b"ok") -> ReplyHeader:
        head, reply = self.call_chain(method, payload)
        self.publish([head])
        ((done, length),) = self.wait_used(1)
        assert done == head and length > 0, (done, length, self.read_events())
        return self.reply_at(reply, length)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        self.ring.close()
        with contextlib.suppress(BufferError):
            self.mem.close()
        for fd in (self.memfd, self.kick, self.call):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> RawGuest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Fixtures -----------------------------------------------------------------------------------
class Handler(EchoHandler):
    """The echo handler, plus: ``long-error`` (an error quoting its payload, decoded, many
    times over), ``bytes`` (a reply of int(payload) bytes, no buffers)."""

    def __init__(self) -> None:
        super().__init__(out=open(os.devnull, "w"))  # noqa: SIM115 (closed in close())

    def handle(self, method: str, request: Message, peer: Peer) -> Message:
        if method == "long-error":
            text = bytes(request.payload).decode(errors="replace")
            raise InvalidArgumentError(f"long-error: {text * 8}")
        if method == "bytes":
            return Message(bytes(int(bytes(request.payload))))
        return super().handle(method, request, peer)

    def close(self) -> None:
        self.out.close()


class Served:
    """A real listener in this process, with its handler and control socket path."""

    def __init__(self, tmp_path: Path, options: TransportOptions) -> None:
        self.path = str(tmp_path / "vm.ctl")
        self.address = f"virtio-mock://{self.path}"
        self.handler = Handler()
        self.listener = VirtioMockListener(Address.parse(self.address), self.handler, options)

    def connect(self, **options: Any) -> VirtioMockChannel:
        extra = options.pop("extra", {})
        channel = VirtioMockTransport().connect(
            Address.parse(self.address),
            TransportOptions(
                connect_timeout=5, extra={"virtio_mock_memory_bytes": 8 * MiB, **extra}, **options
            ),
        )
        assert isinstance(channel, VirtioMockChannel)
        return channel

    def guest(self, **kwargs: Any) -> RawGuest:
        return RawGuest(self.path, **kwargs)

    def device(self, timeout: float = 5.0) -> Device:
        """The one device serving right now (waits for it to appear)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            devices = self.listener.devices
            if len(devices) == 1:
                return devices[0]
            time.sleep(0.01)
        raise AssertionError(f"expected one device, have {len(self.listener.devices)}")

    def wait_devices(self, n: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.listener.devices) != n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.listener.devices) == n

    def close(self) -> None:
        self.listener.stop(2)
        self.handler.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """``serve(**options)``: a listener with those TransportOptions fields (``extra=``)."""
    started: list[Served] = []

    def start(**options: Any) -> Served:
        served = Served(tmp_path, TransportOptions(**options))
        started.append(served)
        return served

    yield start
    for served in started:
        served.close()


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


# (a) Replies never overrun the guest's writable buffers -------------------------------------
CANARY = 0xA5


def test_error_reply_never_overruns_the_smallest_reply_buffer(serve: Any) -> None:
    served = serve()
    with served.guest() as guest:
        guest.setup()
        # A minimal (4096-byte) reply buffer with a canary right after it. The message
        # JSON-escapes to about 6 bytes per character: far more than 4096 bytes.
        head, reply = guest.call_chain(
            "long-error", ("\x01é" * 400).encode(), reply_len=REPLY_HEADER_BYTES
        )
        guest.put(reply, bytes(REPLY_HEADER_BYTES))
        guest.put(reply + REPLY_HEADER_BYTES, bytes([CANARY]) * 65536)
        guest.publish([head])
        ((done, length),) = guest.wait_used(1)
        assert done == head and 0 < length <= REPLY_HEADER_BYTES
        tail = guest.mem[reply + REPLY_HEADER_BYTES : reply + REPLY_HEADER_BYTES + 65536]
        assert tail == bytes([CANARY]) * 65536, "the device wrote past the reply buffer"
        error = guest.reply_at(reply, length)  # a valid, decodable error
        assert (error.kind, error.status, error.code) == (
            REPLY_ERROR,
            "INVALID_ARGUMENT",
            errno.EINVAL,
        )
        assert error.message.startswith("long-error: \x01é\x01é")
        assert error.message.endswith(" [truncated]")
        # The channel keeps working.
        assert guest.roundtrip("echo", b"after").kind == REPLY_OK


@pytest.mark.parametrize(
    ("method", "payload", "starts"),
    [
        ("fail", b"\xff" * 1500, "fail: asked to fail by b'\\xff\\xff"),
        ("\x01" * 1000, b"", "\x01\x01\x01"),  # 'no such method' quotes the name
    ],
    ids=["escaped-payload", "long-method-name"],
)
def test_long_error_through_the_real_driver_keeps_the_channel(
    serve: Any, method: str, payload: bytes, starts: str
) -> None:
    served = serve()
    with served.connect() as ch:
        with pytest.raises(CallError) as err:
            ch.call(method, Message(payload), 5)
        assert err.value.status == "INVALID_ARGUMENT" and err.value.code == errno.EINVAL
        assert err.value.message.startswith(starts) and err.value.message.endswith(" [truncated]")
        assert ch.lost is None
        assert bytes(ch.call("echo", Message(b"still"), 5).payload) == b"still"


# (b) Guest memory is capped; the accept loop survives any one connection --------------------
def test_memory_over_the_cap_is_refused_with_resource_exhausted(serve: Any) -> None:
    served = serve(extra={"virtio_mock_max_memory_bytes": 8 * MiB})
    with pytest.raises(CallError) as err:
        served.connect(extra={"virtio_mock_memory_bytes": 16 * MiB})
    assert err.value.status == "RESOURCE_EXHAUSTED" and err.value.code == errno.ENOMEM
    assert "16777216 bytes" in err.value.message
    assert "limit 8388608 bytes, virtio_mock_max_memory_bytes" in err.value.message
    with served.connect(extra={"virtio_mock_memory_bytes": 8 * MiB}) as ch:
        assert bytes(ch.call("echo", Message(b"fits"), 5).payload) == b"fits"


def test_sparse_64_tib_memory_is_refused_by_default(serve: Any) -> None:
    served = serve()
    fds = open_fds()
    guests = [served.guest(file_size=64 << 40) for _ in range(4)]
    try:
        for guest in guests:
            guest.request({"req": "GET_FEATURES"})
            reply = guest.request({"req": "SET_MEM_TABLE", "size": 64 << 40}, [guest.memfd])
            assert reply is not None and reply["ok"] is False
            assert reply["status"] == "RESOURCE_EXHAUSTED" and reply["code"] == errno.ENOMEM
            assert "virtio_mock_max_memory_bytes" in reply["error"]
            assert "1073741824" in reply["error"]  # the default: 1 GiB
            assert served.path not in reply["error"]  # no host path to a guest
    finally:
        for guest in guests:
            guest.close()
    with served.connect() as ch:
        assert bytes(ch.call("echo", Message(b"ok"), 5).payload) == b"ok"
    assert wait_until(lambda: open_fds() <= fds), open_fds() - fds


def test_accept_loop_survives_a_connection_handler_that_raises(tmp_path: Path) -> None:
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(tmp_path / "l.sock"))
    listening.listen()
    stop_r, stop_w = socket.socketpair()
    accepted: list[socket.socket] = []

    def on_connection(conn: socket.socket) -> None:
        if not accepted:
            accepted.append(conn)
            raise RuntimeError("can't start new thread")
        accepted.append(conn)

    thread = threading.Thread(
        target=accept_loop, args=(listening, stop_r.fileno(), on_connection, "test listener")
    )
    thread.start()
    clients = []
    try:
        for _ in range(2):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(str(tmp_path / "l.sock"))
            clients.append(client)
        assert wait_until(lambda: len(accepted) == 2)
        assert accepted[0].fileno() == -1  # the failed one was closed, not leaked
        clients[0].settimeout(2)
        assert clients[0].recv(1) == b""
        assert thread.is_alive()
    finally:
        stop_w.send(b"x")
        thread.join(2)
        for s in (listening, stop_r, stop_w, *clients, *accepted):
            s.close()
    assert not thread.is_alive()


def test_listener_keeps_accepting_after_thread_creation_fails(
    serve: Any, monkeypatch: pytest.MonkeyPatch, errors_logged: list[str]
) -> None:
    served = serve()
    real_start = threading.Thread.start
    failures = []

    def start(self: threading.Thread) -> None:
        if self.name.startswith("virtio-mock ") and not failures:
            failures.append(self.name)
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    started = time.monotonic()
    with pytest.raises(CallError) as err:
        served.connect()
    assert time.monotonic() - started < 3  # refused at once, no hang
    assert failures and err.value.status == "RESOURCE_EXHAUSTED"
    assert "cannot start the device" in err.value.message
    # Later guests are accepted and served.
    for _ in range(3):
        with served.connect() as ch:
            assert bytes(ch.call("echo", Message(b"later"), 5).payload) == b"later"
    assert errors_logged == []


# (c) What a guest can park for FETCH is bounded, and freed when it goes ----------------------
def park(guest: RawGuest, n: int, nbytes: int, first_desc: int = 0) -> list[ReplyHeader]:
    """``n`` calls whose ``nbytes`` replies do not fit the offered area (never fetched)."""
    heads, replies = [], []
    for i in range(n):
        head, reply = guest.call_chain(
            "bytes",
            str(nbytes).encode(),
            base=guest.data_start + i * 16384,
            descs=(first_desc + 2 * i, first_desc + 2 * i + 1),
        )
        heads.append(head)
        replies.append(reply)
    guest.publish(heads)
    used = guest.wait_used(n)
    assert [u[0] for u in used] == heads
    return [guest.reply_at(r, u[1]) for r, u in zip(replies, used, strict=True)]


def test_parked_replies_are_bounded_by_count(serve: Any) -> None:
    served = serve(extra={"virtio_mock_max_parked_replies": 3})
    with served.guest(num=16) as guest:
        guest.setup()
        got = park(guest, 5, 256 * 1024)
        assert [r.kind for r in got] == [REPLY_NEED_SPACE] * 3 + [REPLY_ERROR] * 2
        refused = got[3]
        assert (refused.status, refused.code) == ("RESOURCE_EXHAUSTED", errno.ENOMEM)
        assert "3 replies" in refused.message
        assert "virtio_mock_max_parked_replies" in refused.message
        device = served.device()
        assert len(device._parked) == 3
        # Fetching one frees its place.
        head, reply = guest.call_chain(
            "bytes",
            kind=KIND_FETCH,
            token=got[0].token,
            reply_len=REPLY_HEADER_BYTES + 256 * 1024,
            base=guest.data_start + 8 * 16384,
            descs=(12, 13),
        )
        guest.publish([head])
        ((_, length),) = guest.wait_used(1)
        fetched = guest.reply_at(reply, length)
        assert fetched.kind == REPLY_OK and fetched.payload_len == 256 * 1024
        assert len(device._parked) == 2
        assert park(guest, 1, 256 * 1024, first_desc=14)[0].kind == REPLY_NEED_SPACE
    # The guest went: its device ends and drops everything it kept.
    assert wait_until(lambda: not device.thread.is_alive())
    assert len(device._parked) == 0 and device._parked_bytes == 0


def test_parked_replies_are_bounded_by_bytes(serve: Any) -> None:
    served = serve(max_message_bytes=4 * MiB, extra={"virtio_mock_max_parked_bytes": 3 * MiB})
    with served.guest(memory=4 * MiB) as guest:
        guest.setup()
        got = park(guest, 4, 1 * MiB)
        assert [r.kind for r in got] == [REPLY_NEED_SPACE] * 3 + [REPLY_ERROR]
        assert got[3].status == "RESOURCE_EXHAUSTED" and got[3].code == errno.ENOMEM
        assert "virtio_mock_max_parked_bytes" in got[3].message
        device = served.device()
        assert device._parked_bytes == 3 * MiB


def test_parked_bytes_default_to_twice_the_message_limit(serve: Any) -> None:
    served = serve(max_message_bytes=1 * MiB)
    with served.guest() as guest:
        guest.setup()
        got = park(guest, 3, 1 * MiB - 64)
        assert [r.kind for r in got] == [REPLY_NEED_SPACE] * 2 + [REPLY_ERROR]
        assert "limit 2097152 bytes" in got[2].message


# (d) Any control message in any state: an answer, never a dead device ------------------------
STEP_NAMES = [
    "GET_FEATURES",
    "SET_MEM_TABLE",
    "SET_VRING_NUM",
    "SET_VRING_ADDR",
    "SET_VRING_KICK",
    "SET_VRING_CALL",
    "SET_VRING_ENABLE",
]
EXTRA_MESSAGES = ["UNKNOWN", "NOT_JSON", "NOT_AN_OBJECT", "REQ_NOT_A_STRING", "FIVE_FDS"]


@pytest.mark.parametrize("message", STEP_NAMES + EXTRA_MESSAGES)
@pytest.mark.parametrize("state", range(len(STEP_NAMES) + 1), ids=lambda s: f"after{s}")
def test_every_control_message_in_every_state(
    serve: Any, errors_logged: list[str], state: int, message: str
) -> None:
    """``state``: how many set-up steps the guest has done (7: the device serves). The guest
    then sends ``message`` (a set-up step with its usual values and duplicated descriptors,
    or junk) and gets an answer: a step already done is refused ("already ..."), junk is
    refused, a later step may be taken early. Then the guest finishes the set-up and is
    served, unless the early step took the place of a later one, which the device then
    refuses saying why. The device thread never dies, nothing leaks, and the listener serves
    the next guest."""
    served = serve()
    fds = open_fds()
    with served.guest() as guest:
        steps = guest.setup_steps()
        for step, step_fds in steps[:state]:
            reply = guest.request(step, step_fds)
            assert reply is not None and reply["ok"] is True, (step, reply)
        send_junk_or_step(guest, message, steps)
        answer = guest.reply()
        assert answer is not None, "the device hung up instead of answering"
        assert isinstance(answer["ok"], bool)
        if not answer["ok"]:
            assert isinstance(answer["error"], str) and 0 < len(answer["error"]) <= 400
        done = state == len(STEP_NAMES)
        index = STEP_NAMES.index(message) if message in STEP_NAMES else -1
        if done:
            assert answer["ok"] is False
            assert index < 0 or "after SET_VRING_ENABLE" in answer["error"], answer
        elif index < 0:
            assert answer["ok"] is False, answer
        elif message == "GET_FEATURES":
            assert answer["ok"] is True
        elif index < state:
            assert answer["ok"] is False and "already" in answer["error"], answer
        enabled = done or (message == "SET_VRING_ENABLE" and answer["ok"])
        refused = []
        for step, step_fds in steps[state:]:  # finish the set-up
            reply = guest.request(step, step_fds)
            assert reply is not None, f"the device hung up at {step['req']}"
            if reply["ok"]:
                enabled = enabled or step["req"] == "SET_VRING_ENABLE"
            else:
                refused.append(reply["error"])
        if refused:  # only an early step may spoil the set-up, and the device says why
            assert index >= state and not done, (message, state, refused)
            assert all("already" in e or "SET_VRING_ENABLE" in e for e in refused), refused
        if enabled:
            for _ in range(2):
                assert guest.roundtrip("echo", b"served").kind == REPLY_OK
        else:
            assert refused
    served.wait_devices(0)
    assert errors_logged == []
    with served.connect() as ch:
        assert bytes(ch.call("echo", Message(b"next"), 5).payload) == b"next"
    served.wait_devices(0)
    assert wait_until(lambda: open_fds() <= fds), open_fds() - fds


def send_junk_or_step(
    guest: RawGuest, message: str, steps: list[tuple[dict[str, Any], list[int]]]
) -> None:
    if message in STEP_NAMES:
        injected, inj_fds = steps[STEP_NAMES.index(message)]
        dups = [os.dup(fd) for fd in inj_fds]
        try:
            send_control(guest.sock, injected, dups)
        finally:
            for fd in dups:
                os.close(fd)
    elif message == "UNKNOWN":
        send_control(guest.sock, {"req": "SET_LOG_BASE" + "x" * 5000})
    elif message == "NOT_JSON":
        guest.sock.send(b"\xff{not json")
    elif message == "NOT_AN_OBJECT":
        guest.sock.send(b"[1, 2, 3]")
    elif message == "REQ_NOT_A_STRING":
        send_control(guest.sock, {"req": ["SET_VRING_NUM"], "num": {"a": 1}})
    else:  # more descriptors than a control message may carry
        pipes = [os.pipe() for _ in range(3)]
        ends = [fd for pair in pipes for fd in pair][:5]
        try:
            socket.send_fds(guest.sock, [b'{"req": "SET_VRING_KICK"}'], ends)
        finally:
            for pair in pipes:
                for fd in pair:
                    os.close(fd)


def test_set_vring_num_after_the_ring_addresses_is_refused(
    serve: Any, errors_logged: list[str]
) -> None:
    served = serve()
    with served.guest() as guest:
        steps = guest.setup_steps()
        for step, fds in steps[:4]:  # through SET_VRING_ADDR
            assert guest.request(step, fds)["ok"]  # type: ignore[index]
        reply = guest.request({"req": "SET_VRING_NUM", "num": 32768})
        assert reply is not None and reply["ok"] is False
        assert "SET_VRING_NUM after SET_VRING_ADDR" in reply["error"]
        for step, fds in steps[4:]:
            assert guest.request(step, fds)["ok"]  # type: ignore[index]
        for _ in range(3):
            assert guest.roundtrip("echo", b"x").kind == REPLY_OK
        # And once serving: refused, the device goes on.
        reply = guest.request({"req": "SET_VRING_NUM", "num": 4})
        assert reply is not None and reply["ok"] is False
        assert "after SET_VRING_ENABLE" in reply["error"]
        assert guest.roundtrip("echo", b"y").kind == REPLY_OK
    assert errors_logged == []


# (e) Connection limits, set-up timeout, no thread per pending connection ---------------------
def silent(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.connect(path)  # blocking: waits while the listen backlog is full
    sock.settimeout(5)
    return sock


def test_max_connections_refuses_more_at_once(serve: Any) -> None:
    served = serve(max_connections=4)
    held = [silent(served.path) for _ in range(4)]
    try:
        assert wait_until(lambda: served.listener.open_connections == 4)
        extra = silent(served.path)
        try:
            message, _ = recv_control(extra)
            assert message is not None and message["ok"] is False
            assert message["status"] == "RESOURCE_EXHAUSTED" and message["code"] == errno.ENOMEM
            assert message["error"].endswith(", --max-connections)")
            assert "4 open connections" in message["error"]
            assert extra.recv(100) == b""  # closed at once
        finally:
            extra.close()
        with pytest.raises(CallError) as err:  # the real driver says why
            served.connect()
        assert err.value.status == "RESOURCE_EXHAUSTED" and err.value.code == errno.ENOMEM
        assert err.value.message.endswith("(limit 4, --max-connections)")
        held.pop().close()  # one goes: room for one more
        assert wait_until(lambda: served.listener.open_connections == 3)
        with served.connect() as ch:
            assert bytes(ch.call("echo", Message(b"in"), 5).payload) == b"in"
    finally:
        for sock in held:
            sock.close()


def test_a_new_guest_replaces_a_connection_stalled_in_set_up(serve: Any) -> None:
    """Connections that never set up fill --max-connections: a new guest then takes the place
    of the one that has been setting up the longest (after a second), instead of being kept
    out until --handshake-timeout frees a place."""
    served = serve(max_connections=4, handshake_timeout=30)
    held = [silent(served.path) for _ in range(4)]
    try:
        assert wait_until(lambda: served.listener.open_connections == 4)
        time.sleep(1.2)
        with served.connect() as ch:
            assert bytes(ch.call("echo", Message(b"in"), 5).payload) == b"in"
        assert held[0].recv(100) == b"", "the oldest stalled connection was closed for it"
        assert served.listener.open_connections <= 4
    finally:
        for sock in held:
            sock.close()


def test_max_clients_counts_devices_that_finished_set_up(serve: Any) -> None:
    served = serve(max_clients=2)
    first, second = served.connect(), served.connect()
    try:
        with pytest.raises(CallError) as err:
            served.connect()
        assert err.value.status == "RESOURCE_EXHAUSTED" and err.value.code == errno.ENOMEM
        assert err.value.message.endswith(", --max-clients)")
        assert "2 guests" in err.value.message
        first.close()
        served.wait_devices(1)
        with served.connect() as third:
            assert bytes(third.call("echo", Message(b"3"), 5).payload) == b"3"
        assert bytes(second.call("echo", Message(b"2"), 5).payload) == b"2"
    finally:
        first.close()
        second.close()


def test_handshake_timeout_closes_a_silent_connection(serve: Any) -> None:
    served = serve(handshake_timeout=0.5)
    sock = silent(served.path)
    try:
        started = time.monotonic()
        assert sock.recv(100) == b""
        assert 0.3 < time.monotonic() - started < 3
    finally:
        sock.close()
    # A guest that stalls half-way through is dropped as well.
    with served.guest() as guest:
        assert guest.request({"req": "GET_FEATURES"})["ok"]  # type: ignore[index]
        started = time.monotonic()
        assert guest.reply() is None
        assert 0.3 < time.monotonic() - started < 3
    assert wait_until(lambda: served.listener.open_connections == 0)


def test_pending_connections_cost_no_thread_each(serve: Any) -> None:
    served = serve(max_connections=300, handshake_timeout=1.0)
    before = threading.active_count()
    socks = [silent(served.path) for _ in range(200)]
    try:
        assert wait_until(lambda: served.listener.open_connections == 200)
        assert threading.active_count() - before <= 2
        # Meanwhile a real guest is served.
        with served.connect() as ch:
            assert bytes(ch.call("echo", Message(b"x"), 5).payload) == b"x"
        assert wait_until(lambda: served.listener.open_connections == 0, 5)
    finally:
        for sock in socks:
            sock.close()


def test_max_message_bytes_bounds_one_request_and_one_reply(serve: Any) -> None:
    served = serve(max_message_bytes=1 * MiB)
    with served.connect(max_message_bytes=8 * MiB) as ch:
        half = bytes(600 * 1024)
        with pytest.raises(CallError) as err:  # each buffer fits, the request does not
            ch.call("echo", Message(b"", [half, half]), 5)
        assert err.value.status == "RESOURCE_EXHAUSTED" and err.value.code == errno.ENOMEM
        assert "1228800 bytes exceeds the message size limit of 1048576 bytes" in str(err.value)
        assert err.value.message.endswith("(--max-message-size)")
        with pytest.raises(CallError) as err:
            ch.call("zeros", Message(str(2 * MiB).encode()), 5)
        assert err.value.status == "RESOURCE_EXHAUSTED"
        assert "reply of 2097153 bytes exceeds the message size limit" in err.value.message
        # Up to the limit, a reply larger than the offered area still comes by FETCH.
        reply = ch.call("zeros", Message(str(MiB - 64).encode()), 5)
        assert reply.buffers[0].nbytes == MiB - 64
        assert bytes(ch.call("echo", Message(b"", [half]), 5).buffers[0]) == half


def test_no_thread_or_fd_left_after_many_guests(serve: Any) -> None:
    served = serve()
    fds, threads = open_fds(), threading.active_count()
    for _ in range(20):
        with served.connect() as ch:
            ch.call("echo", Message(b"x", [np.ones(10)]), 5)
    served.wait_devices(0)
    assert wait_until(lambda: threading.active_count() <= threads)
    assert wait_until(lambda: open_fds() <= fds), open_fds() - fds
