"""ttrpc on the agent's unix sockets, against bad and hostile peers.

A real in-process listener (``UnixTransport().listen``: the DualListener that serves ttrpc and
gRPC on one socket) with a small handler, real sockets. Bad input is written by hand: frame
headers packed here with struct (``>IIBB``: length, stream id, type, flags), never through our
client. After every attack a second client, connected before it, must still be served.
The last tests use a real agent process (sessions, ownership, its method names).
"""

from __future__ import annotations

import hashlib
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.remote.conftest import AgentProcess, start_agent, wait_until
from vaccel_core import RemoteError
from vaccel_core.transport import Address, CallError, Message, Peer, TransportOptions
from vaccel_transports.ttrpc import wire
from vaccel_transports.ttrpc.client import TtrpcChannel
from vaccel_transports.unix import UnixTransport

pytestmark = pytest.mark.timeout(60)

#: A frame header, written here by hand: data length, stream id, type, flags.
HEADER = struct.Struct(">IIBB")
REQUEST, RESPONSE, DATA = 1, 2, 3
REMOTE_CLOSED, REMOTE_OPEN = 0x01, 0x02
AGENT = "vaccel.agent.v1.Agent"
HEALTH = "grpc.health.v1.Health"
#: google.rpc.Code numbers.
OK, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = 0, 3, 4, 5
RESOURCE_EXHAUSTED, UNIMPLEMENTED, UNAUTHENTICATED = 8, 12, 16
LIMIT = 64 << 10  # max_message_bytes of the listeners here (the frame limit adds 64 KiB)


class EchoHandler:
    """Echo (payload and buffers), Who (the peer id), Sleep (payload: seconds, then echo)."""

    def __init__(self) -> None:
        self.connected: list[str] = []
        self.disconnected: list[str] = []
        self.lock = threading.Lock()

    def handle(self, method: str, request: Message, peer: Peer) -> Message:
        if method == "Who":
            return Message(peer.id.encode())
        if method == "Sleep":
            time.sleep(float(bytes(request.payload)))
        return Message(bytes(request.payload), [bytes(b) for b in request.buffers])

    def peer_connected(self, peer: Peer) -> None:
        with self.lock:
            self.connected.append(peer.id)

    def peer_disconnected(self, peer: Peer) -> None:
        with self.lock:
            self.disconnected.append(peer.id)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the other end closes ``sock`` within ``seconds`` (anything it sends is
    dropped)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            if not sock.recv(1 << 16):
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


class Raw:
    """A hand-written ttrpc peer: frames packed with struct, sent as given."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)

    def send(
        self, stream: int, kind: int, flags: int, data: bytes, length: int | None = None
    ) -> None:
        """One frame; ``length`` (when given) is what the header claims instead."""
        size = len(data) if length is None else length
        self.sock.sendall(HEADER.pack(size, stream, kind, flags) + data)

    def request(
        self,
        stream: int,
        method: str = "Echo",
        payload: bytes = b"",
        *,
        service: str = AGENT,
        flags: int = REMOTE_CLOSED,
        timeout_nano: int = 0,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        envelope = wire.Request(
            service=service, method=method, payload=payload, timeout_nano=timeout_nano
        )
        for key, value in metadata:
            envelope.metadata.add(key=key, value=value)
        self.send(stream, REQUEST, flags, envelope.SerializeToString())

    def _exactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError(f"closed after {len(out)} of {n} bytes")
            out += chunk
        return bytes(out)

    def frame(self) -> tuple[int, int, int, bytes]:
        """The next frame: (stream, type, flags, data)."""
        length, stream, kind, flags = HEADER.unpack(self._exactly(HEADER.size))
        return stream, kind, flags, self._exactly(length)

    def response(self) -> tuple[int, Any]:
        """The next frame, which must be a Response: (stream, parsed Response)."""
        stream, kind, _, data = self.frame()
        assert kind == RESPONSE, f"expected a Response frame, got type {kind}"
        return stream, wire.Response.FromString(data)

    def expect(self, stream: int, code: int, *texts: str) -> Any:
        """The next frame is the Response of ``stream`` with status ``code`` and a message
        that contains ``texts``; returns it."""
        got, response = self.response()
        assert (got, response.status.code) == (stream, code), response.status.message
        for text in texts:
            assert text in response.status.message
        return response

    def echo(self, stream: int, payload: bytes = b"still here") -> None:
        """A call on this connection is served (after an error on another stream)."""
        self.request(stream, "Echo", payload)
        assert self.expect(stream, OK).payload == payload

    def closed_within(self, seconds: float) -> bool:
        """Whether the other end closes the connection within ``seconds`` (data is dropped)."""
        return closed_within(self.sock, seconds)

    def close(self) -> None:
        self.sock.close()


@dataclass
class Served:
    """A listener, its handler, and a client connected before any attack."""

    path: str
    listener: Any
    handler: EchoHandler
    options: TransportOptions
    healthy: TtrpcChannel
    raws: list[Raw] = field(default_factory=list)

    def raw(self, timeout: float = 5.0) -> Raw:
        peer = Raw(self.path, timeout)
        self.raws.append(peer)
        return peer

    def channel(self, **options: Any) -> TtrpcChannel:
        return TtrpcChannel.connect_unix(self.path, replace(self.options, **options))

    def still_serving(self) -> None:
        """The client connected before the attack is served."""
        nonce = str(time.monotonic_ns()).encode()
        assert self.healthy.call("Echo", Message(nonce), 5).payload == nonce


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """``serve(**options)``: a listener on a fresh unix socket, with a healthy client."""
    started: list[Served] = []

    def start(**options: Any) -> Served:
        opts = TransportOptions(**{"max_message_bytes": LIMIT, "receive_timeout": 0.5, **options})
        handler = EchoHandler()
        path = str(tmp_path / f"t{len(started)}.sock")
        listener = UnixTransport().listen(Address.parse(f"unix://{path}"), handler, opts)
        healthy = TtrpcChannel.connect_unix(path, opts)
        served = Served(path, listener, handler, opts, healthy)
        started.append(served)
        served.still_serving()
        return served

    yield start
    for served in started:
        for raw in served.raws:
            raw.close()
        served.healthy.close()
        begin = time.monotonic()
        served.listener.stop(1)
        assert time.monotonic() - begin < 5, "the listener stopped promptly"


def _disconnects(served: Served, n: int) -> None:
    wait_until(lambda: len(served.handler.disconnected) >= n, 5, f"{n} client(s) released")


# Broken framing ends that connection only ------------------------------------------------------
@pytest.mark.parametrize("sent", [4, HEADER.size + 3], ids=["mid-header", "mid-data"])
def test_peer_closing_mid_frame_is_dropped(serve: Any, sent: int) -> None:
    served = serve()
    raw = served.raw()
    raw.echo(1)  # a client the agent has registered
    whole = HEADER.pack(20, 3, REQUEST, REMOTE_CLOSED) + bytes(20)
    raw.sock.sendall(whole[:sent])
    raw.close()
    _disconnects(served, 1)
    served.still_serving()


@pytest.mark.parametrize("sent", [4, HEADER.size + 3], ids=["mid-header", "mid-data"])
def test_lying_length_then_silence_is_closed_after_the_receive_timeout(
    serve: Any, sent: int
) -> None:
    """The header claims more than is sent, then nothing: closed after --receive-timeout."""
    served = serve()
    raw = served.raw()
    raw.echo(1)
    raw.sock.sendall((HEADER.pack(1000, 3, REQUEST, REMOTE_CLOSED) + bytes(1000))[:sent])
    start = time.monotonic()
    assert raw.closed_within(5), "the agent closed the stalled connection"
    assert 0.4 <= time.monotonic() - start < 3, "after receive_timeout (0.5 s), not before"
    _disconnects(served, 1)
    served.still_serving()


def test_frame_over_the_limit_gets_resource_exhausted_then_close(serve: Any) -> None:
    served = serve()
    raw = served.raw()
    raw.send(1, REQUEST, REMOTE_CLOSED, b"", length=1 << 30)  # claims 1 GiB, sends nothing
    raw.expect(1, RESOURCE_EXHAUSTED, f"exceeds the limit of {LIMIT + (64 << 10)} bytes")
    assert raw.closed_within(3)
    served.still_serving()


def test_a_frame_just_within_the_limit_is_read(serve: Any) -> None:
    """The limit is on frames, with room for the envelope: a payload of the message limit fits."""
    served = serve()
    raw = served.raw()
    payload = bytes(LIMIT - 100)
    raw.request(1, "Echo", payload)
    assert raw.expect(1, OK).payload == payload


# Errors on one stream; the connection goes on ----------------------------------------------------
def test_unknown_service_is_unimplemented(serve: Any) -> None:
    served = serve()
    raw = served.raw()
    raw.request(1, "Echo", service="vaccel.agent.v1.Nope")
    raw.expect(1, UNIMPLEMENTED, "vaccel.agent.v1.Nope", "is not served here")
    raw.request(3, "Watch", service=HEALTH)
    raw.expect(3, UNIMPLEMENTED, "serves only Check over ttrpc")
    raw.request(5, "Attach")
    raw.expect(5, UNIMPLEMENTED, "the connection itself is the client")
    raw.echo(7)
    served.still_serving()


@pytest.mark.parametrize(
    ("first", "second"), [(2, 1), (5, 3), (5, 5)], ids=["even", "decreasing", "repeated"]
)
def test_bad_stream_ids_are_invalid_argument(serve: Any, first: int, second: int) -> None:
    served = serve()
    raw = served.raw()
    if first % 2:
        raw.echo(first)
        bad = second
    else:
        bad = first
    raw.request(bad, "Echo", b"x")
    raw.expect(bad, INVALID_ARGUMENT, f"stream id {bad} is not valid")
    raw.echo(9)  # the next odd id above those used
    served.still_serving()


def test_data_for_an_unknown_stream_is_invalid_argument(serve: Any) -> None:
    served = serve()
    raw = served.raw()
    raw.send(9, DATA, REMOTE_CLOSED, b"orphan bytes")
    raw.expect(9, INVALID_ARGUMENT, "stream 9 is not receiving data")
    raw.echo(11)
    served.still_serving()


def test_malformed_request_envelope_is_invalid_argument(serve: Any) -> None:
    served = serve()
    raw = served.raw()
    raw.send(1, REQUEST, REMOTE_CLOSED, b"\xff\xff\xff\xff\x0f not protobuf")
    raw.expect(1, INVALID_ARGUMENT, "malformed ttrpc Request")
    raw.echo(3)
    served.still_serving()


def test_frames_of_unknown_types_are_ignored(serve: Any) -> None:
    served = serve()
    raw = served.raw()
    raw.send(1, 9, 0, b"from a future protocol")
    raw.send(1, RESPONSE, 0, b"a client does not send these")
    raw.echo(1)
    served.still_serving()


# Out-of-band buffers -------------------------------------------------------------------------
def _sizes(*sizes: int) -> bytes:
    return bytes(wire.Buffers(sizes=list(sizes)).SerializeToString())


def test_buffers_announced_over_the_limit_are_refused_and_skipped(serve: Any) -> None:
    served = serve()
    raw = served.raw()
    raw.request(1, "Echo", b"p", flags=REMOTE_OPEN)
    raw.send(1, DATA, 0, _sizes(LIMIT, LIMIT))
    raw.expect(1, RESOURCE_EXHAUSTED, "out-of-band buffers exceed")
    # The client had already sent some of them: dropped quietly, no answer for them.
    raw.send(1, DATA, 0, bytes(LIMIT))
    raw.send(1, DATA, REMOTE_CLOSED, bytes(1000))
    raw.echo(3)  # the next frame is stream 3's answer: nothing came for the skipped data
    served.still_serving()


def test_buffers_ending_short_of_their_sizes_are_invalid_argument(serve: Any) -> None:
    served = serve()
    raw = served.raw()
    raw.request(1, "Echo", b"p", flags=REMOTE_OPEN)
    raw.send(1, DATA, 0, _sizes(100, 50))
    raw.send(1, DATA, REMOTE_CLOSED, bytes(120))
    raw.expect(1, INVALID_ARGUMENT, "ended short of their announced sizes")
    raw.echo(3)
    served.still_serving()


def test_buffers_longer_than_announced_end_the_connection(serve: Any) -> None:
    served = serve()
    raw = served.raw()
    raw.request(1, "Echo", b"p", flags=REMOTE_OPEN)
    raw.send(1, DATA, 0, _sizes(10))
    raw.send(1, DATA, REMOTE_CLOSED, bytes(20))
    assert raw.closed_within(3), "the byte stream cannot be trusted after that"
    served.still_serving()


def test_buffers_received_in_order_make_the_call(serve: Any) -> None:
    """The framing the bad cases above break, done right by hand: sizes, then the bytes."""
    served = serve()
    raw = served.raw()
    raw.request(1, "Echo", b"p", flags=REMOTE_OPEN)
    raw.send(1, DATA, 0, _sizes(3, 0, 5))
    raw.send(1, DATA, 0, b"abcde")
    raw.send(1, DATA, REMOTE_CLOSED, b"fgh")
    stream, kind, _, data = raw.frame()  # our client flagged it: buffers come back as Data
    assert (stream, kind, wire.Buffers.FromString(data).sizes) == (1, DATA, [3, 0, 5])
    body = b""
    while True:
        stream, kind, _, data = raw.frame()
        if kind == RESPONSE:
            break
        body += data
    assert body == b"abcdefgh" and wire.Response.FromString(data).payload == b"p"


# Slow senders --------------------------------------------------------------------------------
def test_a_frame_trickled_byte_by_byte_is_bounded_by_the_receive_timeout(serve: Any) -> None:
    """The whole frame must arrive within --receive-timeout of its first byte, however
    steadily the bytes keep coming."""
    served = serve()
    raw = served.raw()
    start = time.monotonic()
    raw.sock.sendall(HEADER.pack(200, 1, REQUEST, REMOTE_CLOSED))
    for _ in range(30):
        time.sleep(0.1)
        try:
            raw.sock.sendall(b"\x00")
        except OSError:
            break
    assert raw.closed_within(3)
    assert time.monotonic() - start < 2.5, "closed about receive_timeout (0.5 s) after the start"
    served.still_serving()


def test_a_request_trickled_frame_by_frame_is_bounded_by_the_receive_timeout(serve: Any) -> None:
    """A request must arrive in full within --receive-timeout of its Request frame (the
    option's meaning, docs/security.md), also when its buffers come in many small Data frames,
    each on time: otherwise a slow sender holds its receiving slot and buffers for good."""
    served = serve()
    raw = served.raw()
    raw.request(1, "Echo", b"p", flags=REMOTE_OPEN)
    raw.send(1, DATA, 0, _sizes(1000))
    start = time.monotonic()
    outcome = "still receiving"
    for _ in range(25):  # 10 bytes every 0.1 s: the whole request would take 10 s
        time.sleep(0.1)
        try:
            raw.send(1, DATA, 0, bytes(10))
        except OSError:
            outcome = "closed"
            break
        if not select.select([raw.sock], [], [], 0)[0]:
            continue
        try:
            stream, kind, _, data = raw.frame()
            outcome = f"answered: stream {stream} type {kind} {wire.Response.FromString(data)}"
        except OSError:  # ConnectionError included: closed
            outcome = "closed"
        break
    assert outcome != "still receiving", "the request was still being received after 2.5 s"
    assert time.monotonic() - start < 2.0
    served.still_serving()


def test_slow_senders_cannot_hold_every_receiving_slot(serve: Any) -> None:
    """Requests receiving buffers are bounded per listener (--max-calls); requests that take
    longer than --receive-timeout to arrive must not keep other clients' buffers out."""
    served = serve(max_calls=2, max_client_calls=2)
    raw = served.raw()
    for stream in (1, 3):
        raw.request(stream, "Echo", flags=REMOTE_OPEN)
        raw.send(stream, DATA, 0, _sizes(1000))
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.1):
            try:
                for stream in (1, 3):
                    raw.send(stream, DATA, 0, bytes(1))
            except OSError:
                return

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    try:
        time.sleep(1.5)  # three receive timeouts
        reply = served.healthy.call("Echo", Message(b"", [b"mine"]), 5)
        assert [bytes(b) for b in reply.buffers] == [b"mine"]
    finally:
        stop.set()
        sender.join(5)


@pytest.mark.parametrize("receive_timeout", [0.5, 1.5])
def test_a_client_that_does_not_read_its_replies_is_closed(
    serve: Any, receive_timeout: float
) -> None:
    """Its replies fill the socket; the agent's blocked write gives up after --receive-timeout
    and the connection is closed (no thread stays blocked on it)."""
    served = serve(receive_timeout=receive_timeout, max_message_bytes=1 << 20)
    raw = served.raw()
    raw.echo(1)
    envelope = wire.Request(service=AGENT, method="Echo", payload=bytes(512 << 10))
    body = envelope.SerializeToString()
    raw.sock.settimeout(0.5)
    stream = 3
    try:
        for _ in range(64):  # 32 MiB of replies, far more than the socket buffers hold
            raw.sock.sendall(HEADER.pack(len(body), stream, REQUEST, REMOTE_CLOSED) + body)
            stream += 2
    except OSError:
        pass  # the agent stopped reading: it is blocked writing replies we do not read
    _disconnects_within(served, 1, receive_timeout + 3)
    served.still_serving()


def _disconnects_within(served: Served, n: int, seconds: float) -> None:
    wait_until(lambda: len(served.handler.disconnected) >= n, seconds, f"{n} client(s) released")


# Stalled peers hold no thread for long ---------------------------------------------------------
def test_peers_stalled_mid_frame_leave_no_thread_behind(serve: Any) -> None:
    served = serve()
    baseline = threading.active_count()
    raws = [served.raw() for _ in range(6)]
    for i, raw in enumerate(raws):
        raw.echo(1)
        if i % 2:
            raw.sock.sendall(HEADER.pack(100, 3, REQUEST, REMOTE_CLOSED) + bytes(10))
        else:
            raw.request(3, "Echo", flags=REMOTE_OPEN)
            raw.send(3, DATA, 0, _sizes(1000))
            raw.sock.sendall(HEADER.pack(1000, 3, DATA, REMOTE_CLOSED) + bytes(10))
    assert threading.active_count() > baseline
    _disconnects(served, 6)
    wait_until(lambda: threading.active_count() <= baseline, 5, "threads back to the baseline")
    served.still_serving()


def test_stop_returns_promptly_with_stalled_peers(serve: Any) -> None:
    served = serve(receive_timeout=30.0)
    raws = [served.raw() for _ in range(4)]
    for raw in raws:
        raw.sock.sendall(HEADER.pack(100, 1, REQUEST, REMOTE_CLOSED) + bytes(10))
    silent = served.raw()  # connected, never sends a byte
    silent.sock.getpeername()
    time.sleep(0.2)
    start = time.monotonic()
    served.listener.stop(0.5)
    assert time.monotonic() - start < 3
    for raw in [*raws, silent]:
        assert raw.closed_within(2)


# Calls ---------------------------------------------------------------------------------------
def test_concurrent_calls_on_one_connection_get_their_own_replies(serve: Any) -> None:
    served = serve()
    channel = served.channel()
    replies: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            delay = (7 - i) * 0.03  # later threads answer first
            replies[i] = bytes(channel.call("Sleep", Message(f"{delay:.2f}".encode()), 10).payload)
            echoed = channel.call("Echo", Message(b"", [bytes([i]) * (1000 * i + 1)]), 10)
            assert bytes(echoed.buffers[0]) == bytes([i]) * (1000 * i + 1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    channel.close()
    assert not errors, errors
    assert replies == {i: f"{(7 - i) * 0.03:.2f}".encode() for i in range(8)}


@pytest.mark.parametrize("gap", [0.0, 0.05], ids=["one-write", "two-writes"])
def test_calls_of_one_connection_run_concurrently(serve: Any, gap: float) -> None:
    """A slow call does not hold up the next one on the same connection, whether the two
    requests reach the agent in one write (so in one read) or apart."""
    served = serve()
    raw = served.raw()
    slow = wire.Request(service=AGENT, method="Sleep", payload=b"0.5").SerializeToString()
    quick = wire.Request(service=AGENT, method="Echo", payload=b"quick").SerializeToString()
    first = HEADER.pack(len(slow), 1, REQUEST, REMOTE_CLOSED) + slow
    second = HEADER.pack(len(quick), 3, REQUEST, REMOTE_CLOSED) + quick
    if gap:
        raw.sock.sendall(first)
        time.sleep(gap)
        raw.sock.sendall(second)
    else:
        raw.sock.sendall(first + second)
    start = time.monotonic()
    assert raw.expect(3, OK).payload == b"quick", "the quick call answered first"
    assert time.monotonic() - start < 0.3
    assert raw.expect(1, OK).payload == b"0.5"


def test_too_many_calls_in_progress_on_one_connection(serve: Any) -> None:
    served = serve(max_streams=2)
    raw = served.raw()
    raw.request(1, "Sleep", b"0.5")
    raw.request(3, "Sleep", b"0.5")
    time.sleep(0.1)
    raw.request(5, "Echo")
    raw.expect(5, RESOURCE_EXHAUSTED, "--max-streams")
    raw.request(7, "Echo", flags=REMOTE_OPEN)  # refused too; its buffers are skipped
    raw.expect(7, RESOURCE_EXHAUSTED, "--max-streams")
    raw.send(7, DATA, 0, _sizes(5))
    raw.send(7, DATA, REMOTE_CLOSED, b"12345")
    assert {raw.response()[0], raw.response()[0]} == {1, 3}
    raw.echo(9)
    served.still_serving()


def test_a_64_mib_buffer_round_trip_is_byte_exact(serve: Any) -> None:
    served = serve(max_message_bytes=128 << 20)
    channel = served.channel()
    data = np.random.default_rng(64).bytes(64 << 20)
    reply = channel.call("Echo", Message(b"hdr", [data, b"tail"]), 60)
    assert bytes(reply.payload) == b"hdr"
    assert [memoryview(b).nbytes for b in reply.buffers] == [64 << 20, 4]
    assert hashlib.sha256(reply.buffers[0]).digest() == hashlib.sha256(data).digest()
    assert bytes(reply.buffers[1]) == b"tail"
    channel.close()


# Deadlines -----------------------------------------------------------------------------------
def test_a_call_whose_deadline_passed_before_it_ran_is_deadline_exceeded(serve: Any) -> None:
    served = serve()
    raw = served.raw()
    raw.request(1, "Echo", timeout_nano=1)  # passed by the time the call can run
    raw.expect(1, DEADLINE_EXCEEDED, "deadline passed before it could run")
    # The deadline runs from the request; its buffers arrive too late.
    raw.request(3, "Echo", flags=REMOTE_OPEN, timeout_nano=100_000_000)
    raw.send(3, DATA, 0, _sizes(4))
    time.sleep(0.3)
    raw.send(3, DATA, REMOTE_CLOSED, b"late")
    raw.expect(3, DEADLINE_EXCEEDED)
    raw.request(5, "Echo", b"in time", timeout_nano=5_000_000_000)
    assert raw.expect(5, OK).payload == b"in time"
    served.still_serving()


def test_the_client_gives_up_at_its_timeout_and_the_connection_stays(serve: Any) -> None:
    served = serve()
    channel = served.channel()
    start = time.monotonic()
    with pytest.raises(RemoteError, match=r"Sleep: no answer from the vAccel agent .* 0\.2 s"):
        channel.call("Sleep", Message(b"0.6"), 0.2)
    assert time.monotonic() - start < 0.5
    assert channel.lost is None
    assert channel.call("Echo", Message(b"after"), 5).payload == b"after"
    time.sleep(0.6)  # the abandoned reply arrives and is skipped
    assert channel.call("Echo", Message(b"again"), 5).payload == b"again"
    channel.close()


def test_a_call_without_timeout_after_one_with_a_short_timeout(serve: Any) -> None:
    """A call that may wait as long as it takes, on a connection whose earlier call had a
    short timeout: the earlier bound must not stay on the socket."""
    served = serve()
    channel = served.channel()
    assert channel.call("Echo", Message(b"quick"), 0.3).payload == b"quick"
    assert channel.call("Sleep", Message(b"0.8"), None).payload == b"0.8"
    assert channel.lost is None
    channel.close()


# Health, gRPC on the same socket, token --------------------------------------------------------
def _health(channel: TtrpcChannel, service: str = "") -> int:
    request = wire.HealthCheckRequest(service=service).SerializeToString()
    reply = channel.invoke(HEALTH, "Check", Message(request), 5)
    return int(wire.HealthCheckResponse.FromString(bytes(reply.payload)).status)


def test_health_check_over_ttrpc(serve: Any) -> None:
    served = serve()
    assert _health(served.healthy) == 1  # SERVING
    assert _health(served.healthy, AGENT) == 1
    with pytest.raises(CallError) as err:
        _health(served.healthy, "no.such.Service")
    assert err.value.status == "NOT_FOUND"
    served.listener.set_not_serving()
    assert _health(served.healthy) == 2  # NOT_SERVING
    served.still_serving()


def test_grpc_health_probe_and_ttrpc_client_on_the_same_socket(serve: Any) -> None:
    grpc = pytest.importorskip("grpc", reason="the gRPC half needs the 'remote' extra (grpcio)")
    health = pytest.importorskip(
        "grpc_health.v1.health_pb2", reason="needs grpcio-health-checking ('remote' extra)"
    )
    health_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc")
    served = serve()
    with grpc.insecure_channel(f"unix:{served.path}") as channel:
        stub = health_grpc.HealthStub(channel)
        reply = stub.Check(health.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health.HealthCheckResponse.SERVING
        served.still_serving()  # ttrpc, meanwhile, on the same socket
        assert _health(served.healthy) == 1
        served.listener.set_not_serving()
        reply = stub.Check(health.HealthCheckRequest(service=AGENT), timeout=5)
        assert reply.status == health.HealthCheckResponse.NOT_SERVING
    assert _health(served.healthy) == 2


def test_token_is_required_over_ttrpc(serve: Any) -> None:
    served = serve(token=b"s3cret-token")  # the healthy client has it
    for token in (None, b"wrong"):
        anonymous = served.channel(token=token)
        try:
            with pytest.raises(CallError) as err:
                anonymous.call("Echo", Message(b"x"), 5)
            assert err.value.status == "UNAUTHENTICATED"
            assert "missing or wrong token" in err.value.message
        finally:
            anonymous.close()
    raw = served.raw()
    raw.request(1, "Echo", b"y", metadata=[("authorization", "Bearer s3cret-token")])
    assert raw.expect(1, OK).payload == b"y"
    served.still_serving()


def test_a_silent_connection_is_closed_after_the_handshake_timeout(serve: Any) -> None:
    served = serve(handshake_timeout=0.3)
    silent = served.raw()
    assert silent.closed_within(3)
    served.still_serving()


# A real agent ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    path = tmp_path_factory.mktemp("ttrpc") / "agent.sock"
    handle = start_agent([f"unix://{path}"])
    yield handle
    handle.stop()


def _agent_channel(agent: AgentProcess) -> TtrpcChannel:
    return TtrpcChannel.connect_unix(agent.addresses[0][len("unix://") :], TransportOptions())


def _pb() -> Any:
    from vaccel_core.proto import pb

    return pb()


def _create_session(channel: TtrpcChannel) -> int:
    reply = channel.call(
        "CreateSession", Message(_pb().CreateSessionRequest().SerializeToString()), 5
    )
    return int(_pb().CreateSessionResponse.FromString(bytes(reply.payload)).session_id)


def _noop(channel: TtrpcChannel, session_id: int) -> Any:
    request = _pb().OpRequest(session_id=session_id, op="noop")
    request.noop.SetInParent()
    reply = channel.call("Run", Message(request.SerializeToString()), 5)
    return _pb().OpResponse.FromString(bytes(reply.payload))


def test_agent_answers_unknown_go_style_names(agent: AgentProcess) -> None:
    """What a Go ttrpc client sends: service and method apart (``vaccel.agent.v1.Agent``,
    ``Nope``)."""
    raw = Raw(agent.addresses[0][len("unix://") :])
    try:
        raw.request(1, "Nope", service=AGENT)
        raw.expect(1, UNIMPLEMENTED, "Nope: no such method", "GetStatus")
        raw.request(3, "GetStatus", service="vaccel.agent.v2.Agent")
        raw.expect(3, UNIMPLEMENTED, "vaccel.agent.v2.Agent", "is not served here")
        # gRPC's spelling in the wrong place: the method named with its service, or a path.
        raw.request(5, f"{AGENT}/GetStatus", service=AGENT)
        raw.expect(5, UNIMPLEMENTED, f"{AGENT}/GetStatus: no such method")
        raw.request(7, f"/{AGENT}/GetStatus", service="")
        raw.expect(7, UNIMPLEMENTED, "is not served here")
        raw.request(9, "GetStatus", service=AGENT)
        status = _pb().StatusResponse.FromString(raw.expect(9, OK).payload)
        assert "noop" in status.backends
    finally:
        raw.close()


def test_sessions_are_released_when_the_connection_closes(agent: AgentProcess) -> None:
    observer = agent.observer()
    channel = _agent_channel(agent)
    try:
        sessions = [_create_session(channel) for _ in range(3)]
        assert _noop(channel, sessions[0]).WhichOneof("result") == "noop"
        assert observer.status().sessions >= 3
        channel.close()
        wait_until(
            lambda: observer.status().sessions == 0, 5, "the closed client's sessions released"
        )
    finally:
        channel.close()
        observer.close()


def test_another_connection_cannot_use_a_sessions_id(agent: AgentProcess) -> None:
    owner, other = _agent_channel(agent), _agent_channel(agent)
    try:
        sid = _create_session(owner)
        with pytest.raises(CallError) as err:
            _noop(other, sid)
        assert err.value.status == "NOT_FOUND"
        assert _noop(owner, sid).WhichOneof("result") == "noop", "still the owner's"
    finally:
        owner.close()
        other.close()


def test_a_request_quiet_between_frames_loses_its_slot_and_buffers(serve: Any) -> None:
    """A request that goes quiet between two of its frames (no byte arrives, so nothing wakes
    its reader) still loses its receiving slot and its buffers after --receive-timeout: the
    listener sweeps such requests once a second. Another client's request then gets the slot,
    and the stalled stream is answered DEADLINE_EXCEEDED when it speaks again."""
    served = serve(max_calls=1, max_client_calls=1, receive_timeout=0.5)
    slots = served.listener.ttrpc.slots
    raw = served.raw()
    raw.request(1, "Echo", flags=REMOTE_OPEN)
    raw.send(1, DATA, 0, _sizes(20_000))
    raw.send(1, DATA, 0, bytes(1000))  # then nothing more
    wait_until(lambda: len(slots) == 1, 2, "the stalled request holds the only slot")
    wait_until(lambda: len(slots) == 0, 3, "the stalled request's slot is taken back")
    assert slots.evictions == 0 and slots.refused == 0
    reply = served.healthy.call("Echo", Message(b"", [b"mine"]), 5)
    assert [bytes(b) for b in reply.buffers] == [b"mine"]
    raw.send(1, DATA, 0, bytes(10))
    raw.expect(1, DEADLINE_EXCEEDED, "did not arrive within 0.5 s", "--receive-timeout")
    raw.echo(3)
