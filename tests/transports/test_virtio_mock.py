"""virtio-mock end to end: a real second process serves an echo Handler as the device.

Every failure case (bad descriptors, a corrupt ring, a dead guest, a dead device, a full queue)
must give a clear error, leave other requests and guests untouched, and never crash the
serving process.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vaccel_core.errors import BackendError, NotFoundError, RemoteError, VaccelError
from vaccel_core.transport import Address, CallError, Message, TransportOptions, status_for
from vaccel_transports.virtio_mock import VirtioMockTransport
from vaccel_transports.virtio_mock.driver import VirtioMockChannel, _InFlight
from vaccel_transports.virtio_mock.layout import (
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
)
from vaccel_transports.virtio_mock.protocol import (
    KIND_CALL,
    pack_request,
    recv_control,
    send_control,
)

from .conftest import REPO, EchoServer, clean_env

pytestmark = pytest.mark.timeout(60)

NEXT, WRITE = VRING_DESC_F_NEXT, VRING_DESC_F_WRITE


def connect(address: str, **extra: Any) -> VirtioMockChannel:
    channel = VirtioMockTransport().connect(
        Address.parse(address), TransportOptions(connect_timeout=5, extra=extra)
    )
    assert isinstance(channel, VirtioMockChannel)
    return channel


@pytest.fixture
def server(tmp_path: Path, echo_server_factory: Any) -> EchoServer:
    started: EchoServer = echo_server_factory(f"virtio-mock://{tmp_path / 'vm.ctl'}")
    return started


def echo(channel: VirtioMockChannel, payload: bytes = b"ping", *bufs: Any) -> Message:
    return channel.call("echo", Message(payload, bufs), timeout=10)


# Normal operation ---------------------------------------------------------------------------
def test_round_trip_payload_and_buffers(server: EchoServer) -> None:
    with connect(server.address) as ch:
        tensor = np.arange(1000, dtype=np.float32)
        reply = echo(ch, b"hello", b"abc", tensor, bytearray(b"\x00" * 7))
        assert bytes(reply.payload) == b"hello"
        assert [bytes(b) for b in reply.buffers] == [b"abc", tensor.tobytes(), b"\x00" * 7]
        assert bytes(echo(ch, b"").payload) == b""
        assert bytes(echo(ch, b"x" * 100_000).payload) == b"x" * 100_000  # beyond a slot


def test_each_connection_is_one_device_with_its_own_peer(server: EchoServer) -> None:
    a, b = connect(server.address), connect(server.address)
    try:
        assert a.peer_id != b.peer_id and a.peer_id.startswith("virtio-mock-")
        server.wait_for(f"connected {a.peer_id}")
        server.wait_for(f"connected {b.peer_id}")
        assert bytes(a.call("peers", Message(b""), 5).payload) == b"2"
    finally:
        a.close()
        b.close()
    server.wait_for(f"disconnected {a.peer_id}")
    server.wait_for(f"disconnected {b.peer_id}")


def test_device_reads_request_buffers_in_shared_memory(server: EchoServer) -> None:
    with connect(server.address) as ch:
        copied = np.ones(1 << 16, np.uint8)
        in_place = ch.alloc(1 << 16)
        in_place[:] = 7
        reply = ch.call("where", Message(b"", [copied, in_place]), 5)
        # Both reach the handler as views of the shared mapping, not as socket copies.
        assert json.loads(bytes(reply.payload)) == [True, True]
        before = ch.allocator.in_use()
        back = echo(ch, b"", in_place).buffers[0]
        assert np.all(np.frombuffer(back, np.uint8) == 7)
        address = np.frombuffer(back, np.uint8).ctypes.data - ch._base
        assert ch.data_start <= address < ch.memory_bytes  # the reply is a view, not a copy
        assert ch.allocator.in_use() == before + 1
        del back
        assert ch.allocator.in_use() == before  # freed once the last view went


def test_large_tensor_round_trip(server: EchoServer) -> None:
    with connect(server.address) as ch:
        big = np.random.default_rng(0).integers(0, 255, 12 << 20, dtype=np.uint8)
        reply = echo(ch, b"big", big)
        assert np.array_equal(np.frombuffer(reply.buffers[0], np.uint8), big)


def test_reply_larger_than_offered_is_fetched_without_running_twice(server: EchoServer) -> None:
    with connect(server.address) as ch:
        for expected in (1, 2):
            reply = ch.call("counted", Message(str(3 << 20).encode()), 10)
            assert bytes(reply.payload) == str(expected).encode()
            assert reply.buffers[0].nbytes == 3 << 20 and not any(bytes(reply.buffers[0]))


def test_handler_error_keeps_status_and_code(server: EchoServer) -> None:
    with connect(server.address) as ch:
        with pytest.raises(CallError) as err:
            ch.call("fail", Message(b"please"), 5)
        assert err.value.status == "INVALID_ARGUMENT" and err.value.code == errno.EINVAL
        assert "fail: asked to fail by b'please'" in err.value.message
        assert bytes(echo(ch).payload) == b"ping"


def test_concurrent_callers_on_one_channel(server: EchoServer) -> None:
    errors: list[BaseException] = []
    with connect(server.address) as ch:

        def worker(seed: int) -> None:
            rng = np.random.default_rng(seed)
            try:
                for i in range(40):
                    payload = f"{seed}-{i}".encode() * int(rng.integers(1, 3000))
                    bufs = [rng.bytes(int(rng.integers(0, 100_000)))] if i % 3 else []
                    reply = ch.call("echo", Message(payload, bufs), 20)
                    assert bytes(reply.payload) == payload
                    assert [bytes(b) for b in reply.buffers] == bufs
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(50)
    assert not errors, errors


# Errors at the edges ------------------------------------------------------------------------
def test_no_device_names_the_address(tmp_path: Path) -> None:
    address = f"virtio-mock://{tmp_path / 'nobody.ctl'}"
    with pytest.raises(RemoteError, match=re.escape(f"device at {address} is unreachable: no ")):
        connect(address)
    with pytest.raises(CallError, match=r"expected virtio-mock:///path/to/control\.sock"):
        connect("virtio-mock:///")


def test_full_queue_times_out_with_a_clear_error(server: EchoServer) -> None:
    # 8 entries: 2 slots use 4 descriptors; the 4 others fit one request with a buffer.
    with connect(server.address, virtio_mock_queue_size=8) as ch:
        slow = threading.Thread(
            target=lambda: ch.call("sleep", Message(b"1.5", [b"held"]), 10), daemon=True
        )
        slow.start()
        # Wait until the slow request really is in the queue (a fixed sleep was flaky under
        # load), bounded.
        deadline = time.monotonic() + 5
        while not ch._inflight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ch._inflight, "the slow request never reached the queue"
        started = time.monotonic()
        with pytest.raises(CallError) as err:
            ch.call("echo", Message(b"x", [b"buffer"]), 0.5)
        assert time.monotonic() - started < 3
        assert err.value.status == "RESOURCE_EXHAUSTED"
        assert (
            "virtqueue full or shared memory exhausted: need 3 descriptors (1 free, "
            "1 requests in flight)" in str(err.value)
        )
        slow.join(10)
        assert bytes(echo(ch, b"x", b"buffer").payload) == b"x"  # usable again


def test_request_too_large_for_the_shared_memory_never_waits_for_space(
    server: EchoServer,
) -> None:
    with connect(server.address, virtio_mock_memory_bytes=16 << 20) as ch:
        # Half the memory: the reply area shrinks so that the request fits, and the large
        # reply comes by NEED_SPACE/FETCH.
        half = np.random.default_rng(1).integers(0, 255, 8 << 20, dtype=np.uint8)
        started = time.monotonic()
        reply = ch.call("echo", Message(b"half", [half]), 10)
        assert time.monotonic() - started < 2
        assert np.array_equal(np.frombuffer(reply.buffers[0], np.uint8), half)
        del reply
        # More than the data area can ever hold: an error at once, not at the deadline.
        for bufs in ([bytes(15 << 20)], [ch.alloc(8 << 20)]):  # copied in / held in place
            started = time.monotonic()
            with pytest.raises(CallError) as err:
                ch.call("echo", Message(b"big", bufs), 10)
            assert time.monotonic() - started < 0.5
            assert err.value.status == "RESOURCE_EXHAUSTED" and err.value.code == errno.ENOMEM
            assert re.search(
                r"^echo: needs \d+ bytes of shared memory \(\d+ for the request, \d+ for the "
                r"reply area\), more than the \d+ bytes the data area has for such requests"
                r".*; raise virtio_mock_memory_bytes "
                r"\(now 16777216\)$",
                err.value.message,
            ), err.value.message
        assert "8388608 of them held by the request's shared-memory buffers" in err.value.message
        assert bytes(echo(ch).payload) == b"ping"  # usable again


def test_fast_path_completes_through_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vaccel_transports.virtio_mock.device import Device, VirtioMockListener

    from .echo_server import EchoHandler

    completed: list[tuple[int, int]] = []
    real = Device._complete

    def complete(self: Device, head: int, length: int) -> None:
        completed.append((head, length))
        real(self, head, length)

    monkeypatch.setattr(Device, "_complete", complete)
    address = Address.parse(f"virtio-mock://{tmp_path / 'vm.ctl'}")
    listener = VirtioMockListener(address, EchoHandler(), TransportOptions())
    try:
        with connect(str(address)) as ch:
            assert bytes(echo(ch, b"fast").payload) == b"fast"  # one slot: the fast path
        assert len(completed) == 1 and completed[0][1] > 0
    finally:
        listener.stop(1)


@pytest.mark.parametrize(
    "exc",
    [
        NotFoundError("gone"),
        BackendError("backend broke"),  # EPROTO
        VaccelError("timed out", code=errno.ETIMEDOUT),
        VaccelError("odd", code=errno.EPERM),
        CallError("ABORTED", "stopped", code=errno.ECANCELED),
    ],
)
def test_handler_errors_get_the_status_every_transport_gives(
    tmp_path: Path, exc: VaccelError
) -> None:
    from vaccel_transports.virtio_mock.device import VirtioMockListener

    from .echo_server import EchoHandler

    class Raising(EchoHandler):
        def handle(self, method: str, request: Message, peer: Any) -> Message:
            raise exc

    address = Address.parse(f"virtio-mock://{tmp_path / 'vm.ctl'}")
    listener = VirtioMockListener(address, Raising(), TransportOptions())
    try:
        with connect(str(address)) as ch, pytest.raises(CallError) as err:
            ch.call("raise", Message(b""), 5)
        assert (err.value.status, err.value.code) == (status_for(exc), exc.code)
        assert err.value.message == exc.message
    finally:
        listener.stop(1)


def test_deadline_while_the_device_works(server: EchoServer) -> None:
    with connect(server.address) as ch:
        with pytest.raises(CallError) as err:
            ch.call("sleep", Message(b"1.0"), 0.2)
        assert err.value.status == "DEADLINE_EXCEEDED"
        assert bytes(echo(ch).payload) == b"ping"  # the late completion was absorbed


def test_guest_that_dies_frees_its_device(server: EchoServer) -> None:
    script = (
        "import sys, time\n"
        "from vaccel_transports.virtio_mock import VirtioMockTransport\n"
        "from vaccel_core.transport import Address, Message, TransportOptions\n"
        "ch = VirtioMockTransport().connect(Address.parse(sys.argv[1]), TransportOptions())\n"
        "ch.call('echo', Message(b'hi'), 5)\n"
        "print(ch.peer_id, flush=True)\n"
        "ch.call('sleep', Message(b'2'), 60)\n"
    )
    guest = subprocess.Popen(
        [sys.executable, "-c", script, server.address],
        env=clean_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert guest.stdout is not None
        peer = guest.stdout.readline().strip()
        assert peer.startswith("virtio-mock-")
        time.sleep(0.2)
        guest.kill()
        guest.wait(10)
    finally:
        if guest.poll() is None:
            guest.kill()
    # The device notices the control socket's end (after the in-flight sleep returns).
    server.wait_for(f"disconnected {peer}", 20)
    with connect(server.address) as ch:
        assert bytes(ch.call("peers", Message(b""), 5).payload) == b"1"


def test_device_that_dies_gives_remote_error_not_a_hang(server: EchoServer) -> None:
    with connect(server.address) as ch:
        threading.Timer(0.3, server.kill).start()
        started = time.monotonic()
        with pytest.raises(RemoteError) as err:
            ch.call("sleep", Message(b"20"), 30)
        assert time.monotonic() - started < 5
        assert server.address in str(err.value) and "closed the control socket" in str(err.value)
        assert ch.lost is not None
        with pytest.raises(RemoteError):
            echo(ch)


# Malformed descriptor chains --------------------------------------------------------------
def submit_raw(
    ch: VirtioMockChannel, chain: list[tuple[int, int, int, int | None]], head: int | None = None
) -> CallError:
    """Publish a hand-made chain; ``next`` is an index into ``chain`` (None: raw 0) or, when
    >= 1000, a raw descriptor index. Returns the error the guest gets."""
    with ch._lock:
        idx = [ch._free_descs.pop() for _ in chain]
    for i, (addr, length, flags, nxt) in enumerate(chain):
        raw_next = 0 if nxt is None else (nxt - 1000 if nxt >= 1000 else idx[nxt])
        ch.ring.write_desc(idx[i], addr, length, flags, raw_next)
    reply = next((addr for addr, _n, flags, _x in chain if flags & WRITE), -1)
    rec = _InFlight(idx[0] if head is None else head, idx, -1, reply, 8192)
    ch._publish(rec)
    used = ch._wait("raw", rec, time.monotonic() + 10)
    with pytest.raises(CallError) as err:
        ch._finish("raw", rec, used, time.monotonic() + 10)
    return err.value


def good_parts(ch: VirtioMockChannel) -> tuple[int, int, int]:
    """A request block holding a valid header, and a reply block."""
    first = pack_request(KIND_CALL, "echo", 0, b"ok")
    block = ch.allocator.alloc(4096)
    ch.mem[block : block + len(first)] = first
    return block, len(first), ch.allocator.alloc(8192)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("beyond-memory", "lies outside the shared data area"),
        ("inside-rings", "lies outside the shared data area"),
        ("huge-length", "exceeds the message limit"),
        ("loop", "loops back into the chain"),
        ("next-out-of-range", "next 4000 out of range (queue size 256)"),
        ("indirect", "INDIRECT descriptors not negotiated"),
        ("readable-after-writable", "device-readable buffer after a device-writable one"),
        ("no-reply-buffer", "expected 1 device-writable descriptor"),
        ("head-out-of-range", "head index 999 out of range"),
    ],
)
def test_malformed_chain_is_rejected_and_harms_nobody(
    server: EchoServer, case: str, reason: str
) -> None:
    other = connect(server.address)
    ch = connect(server.address)
    try:
        block, n, reply = good_parts(ch)
        chains: dict[str, list[tuple[int, int, int, int | None]]] = {
            "beyond-memory": [(ch.memory_bytes - 8, 64, NEXT, 1), (reply, 8192, WRITE, None)],
            "inside-rings": [(0, 64, NEXT, 1), (reply, 8192, WRITE, None)],
            "huge-length": [(block, 0xFFFFFFFF, NEXT, 1), (reply, 8192, WRITE, None)],
            "loop": [(block, n, NEXT, 1), (block, n, NEXT, 0)],
            "next-out-of-range": [(block, n, NEXT, 1000 + 4000)],
            "indirect": [(block, n, VRING_DESC_F_INDIRECT, None)],
            "readable-after-writable": [(reply, 8192, WRITE | NEXT, 1), (block, n, 0, None)],
            "no-reply-buffer": [(block, n, 0, None)],
            "head-out-of-range": [(block, n, NEXT, 1), (reply, 8192, WRITE, None)],
        }
        err = submit_raw(ch, chains[case], head=999 if case == "head-out-of-range" else None)
        assert err.status == "INVALID_ARGUMENT" and err.code == errno.EINVAL
        assert "rejected the descriptor chain" in err.message and reason in err.message
        # The same guest, another guest and the serving process are all fine.
        assert bytes(echo(ch, b"after").payload) == b"after"
        assert bytes(echo(other, b"other", b"buf").buffers[0]) == b"buf"
        assert server.proc.poll() is None
    finally:
        ch.close()
        other.close()


def test_bad_header_in_a_valid_chain_gets_an_error_reply(server: EchoServer) -> None:
    with connect(server.address) as ch:
        block, n, reply = good_parts(ch)
        ch.mem[block : block + 4] = b"JUNK"
        err = submit_raw(ch, [(block, n, NEXT, 1), (reply, 8192, WRITE, None)])
        assert err.status == "INVALID_ARGUMENT" and "bad magic b'JUNK'" in err.message
        block, n, reply = good_parts(ch)  # header says 0 buffers, chain carries one
        err = submit_raw(
            ch, [(block, n, NEXT, 1), (block, 16, NEXT, 2), (reply, 8192, WRITE, None)]
        )
        assert "announces 0 buffers, the chain has 1" in err.message
        assert bytes(echo(ch).payload) == b"ping"


def test_corrupt_available_index_stops_only_that_device(server: EchoServer) -> None:
    other = connect(server.address)
    ch = connect(server.address)
    try:
        ch.ring.set_avail_idx(ch._avail_idx + 1000)
        os.eventfd_write(ch._kick, 1)
        server.wait_for(f"disconnected {ch.peer_id}")
        with pytest.raises(RemoteError, match="ring corrupted, device stops"):
            echo(ch)
        assert bytes(echo(other, b"still").payload) == b"still"
        assert server.proc.poll() is None
    finally:
        ch.close()
        other.close()


# The vhost-user style set-up refuses what would endanger the device -----------------------
def handshake(address: str, memfd: int, kick: int) -> dict[str, Any]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(5)
    sock.connect(address.removeprefix("virtio-mock://"))
    try:
        replies = []
        for message, fds in (
            ({"req": "GET_FEATURES"}, []),
            ({"req": "SET_MEM_TABLE", "size": 1 << 20}, [memfd]),
            ({"req": "SET_VRING_KICK"}, [kick]),
        ):
            send_control(sock, message, fds)
            reply, _ = recv_control(sock)
            assert reply is not None
            replies.append(reply)
        return {"mem": replies[1], "kick": replies[2]}
    finally:
        sock.close()


def test_unsealed_memory_and_non_eventfds_are_refused(server: EchoServer) -> None:
    memfd = os.memfd_create("unsealed")
    os.ftruncate(memfd, 1 << 20)
    r, w = os.pipe()
    try:
        replies = handshake(server.address, memfd, r)
        assert (
            replies["mem"]["ok"] is False and "sealed against shrinking" in replies["mem"]["error"]
        )
        assert replies["kick"]["ok"] is False and "not an eventfd" in replies["kick"]["error"]
    finally:
        for fd in (memfd, r, w):
            os.close(fd)
    with connect(server.address) as ch:
        assert bytes(echo(ch).payload) == b"ping"


def test_close_while_another_thread_waits(server: EchoServer) -> None:
    ch = connect(server.address)
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            ch.call("sleep", Message(b"3"), 10)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    ch.close()
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - started < 3
    assert len(errors) == 1 and isinstance(errors[0], RemoteError)
    assert "is closed" in str(errors[0])
    with pytest.raises(RemoteError, match="is closed"):
        echo(ch)


def test_guest_that_never_finishes_set_up_is_dropped(
    tmp_path: Path, echo_server_factory: Any
) -> None:
    server = echo_server_factory(
        f"virtio-mock://{tmp_path / 'vm.ctl'}", {"virtio_mock_setup_timeout": 0.5}
    )
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    silent.settimeout(5)
    try:
        silent.connect(server.address.removeprefix("virtio-mock://"))
        started = time.monotonic()
        assert silent.recv(100) == b""  # the device hung up on us
        assert 0.3 < time.monotonic() - started < 3
    finally:
        silent.close()
    with connect(server.address) as ch:
        assert bytes(echo(ch).payload) == b"ping"
