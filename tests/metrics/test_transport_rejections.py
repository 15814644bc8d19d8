"""``vaccel_agent_rejections_total`` counts what the transports refuse, not only the service.

Real agent processes with ``--metrics-address``; each refusal is provoked for real over real
sockets (raw ttrpc frames, raw HTTP/2 streams, raw virtio-mock guests, silent connections),
then the endpoint is scraped over HTTP and parsed with prometheus-client's parser: every
count must match exactly. Without the transports' ``rejected(limit)`` hook every one of these
counts is missing from the scrape.
"""

from __future__ import annotations

import ast
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from tests.remote.conftest import (
    AgentProcess,
    RawClient,
    missing_remote_extra,
    start_agent,
)
from tests.transports.test_ttrpc_wire import (
    DATA,
    REMOTE_OPEN,
    REQUEST,
    RESOURCE_EXHAUSTED,
    Raw,
    _sizes,
    closed_within,
)
from vaccel_agent.limits import LIMITS
from vaccel_core import RemoteError
from vaccel_core.transport import CallError

from .scrape import free_port, metrics_url, scrape

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(missing_remote_extra() is not None, reason=str(missing_remote_extra())),
]

REPO = Path(__file__).resolve().parents[2]


class Agent:
    """An agent process on ``addresses`` with ``args``, serving its metrics."""

    def __init__(self, addresses: list[str], args: list[str], **start: Any) -> None:
        port = free_port()
        self.process: AgentProcess = start_agent(
            addresses, args=["--metrics-address", f"tcp://127.0.0.1:{port}", *args], **start
        )
        self.url = metrics_url(self.process)

    @property
    def path(self) -> str:
        """The socket file of the first (unix or virtio-mock) address."""
        return self.process.addresses[0].split("://", 1)[1]

    def rejections(self) -> dict[str, float]:
        """``vaccel_agent_rejections_total`` by limit, from a real scrape."""
        values = scrape(self.url).values("vaccel_agent_rejections_total")
        return {labels[0]: value for labels, value in values.items()}

    def wait_for(self, expected: dict[str, float], timeout: float = 10.0) -> None:
        """Scrape until the rejections are exactly ``expected`` (refusals after a timeout
        land a moment later), then once more a little later: nothing more came."""
        deadline = time.monotonic() + timeout
        got = self.rejections()
        while got != expected and time.monotonic() < deadline:
            time.sleep(0.1)
            got = self.rejections()
        assert got == expected, f"rejections {got}, expected {expected}"
        time.sleep(0.3)
        assert self.rejections() == expected


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for agent in started:
        assert agent.process.stop() == 0, agent.process.log


def unix_socket(path: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, kind)
    sock.settimeout(5)
    sock.connect(path)
    return sock


# Connections (the listener that serves ttrpc and gRPC on one socket) -----------------------------
def test_connections_over_max_connections_count_once_each(
    agents: list[Agent], tmp_path: Path
) -> None:
    """A ttrpc and a gRPC client hold both of --max-connections 2: three more connections are
    closed at once, three rejections."""
    agent = Agent([f"unix://{tmp_path / 'a.sock'}"], ["--max-connections", "2"])
    agents.append(agent)
    ttrpc, grpc = (
        RawClient(agent.process.addresses[0]),
        RawClient("grpc+" + agent.process.addresses[0]),
    )
    try:
        ttrpc.noop(ttrpc.create_session())
        grpc.noop(grpc.create_session())
        extra = [unix_socket(agent.path) for _ in range(3)]
        for sock in extra:
            assert closed_within(sock, 5), "a connection over --max-connections is closed"
            sock.close()
        agent.wait_for({"max_connections": 3})
        ttrpc.noop(ttrpc.create_session())  # the clients inside the limit go on
        grpc.noop(grpc.create_session())
    finally:
        ttrpc.close()
        grpc.close()


def test_connections_silent_past_the_handshake_timeout_count_once_each(
    agents: list[Agent], tmp_path: Path
) -> None:
    agent = Agent([f"unix://{tmp_path / 'a.sock'}"], ["--handshake-timeout", "1"])
    agents.append(agent)
    client = RawClient(agent.process.addresses[0])  # speaks at once: never refused
    try:
        client.noop(client.create_session())
        silent = [unix_socket(agent.path) for _ in range(3)]
        for sock in silent:
            assert closed_within(sock, 5), "a silent connection is closed"
            sock.close()
        agent.wait_for({"handshake_timeout": 3})
    finally:
        client.close()


# Clients --------------------------------------------------------------------------------------
@pytest.mark.parametrize("wire", ["ttrpc", "grpc"])
def test_clients_over_max_clients_count(agents: list[Agent], tmp_path: Path, wire: str) -> None:
    agent = Agent([f"unix://{tmp_path / 'a.sock'}"], ["--max-clients", "1"])
    agents.append(agent)
    address = ("grpc+" if wire == "grpc" else "") + agent.process.addresses[0]
    first = RawClient(address)
    try:
        first.create_session()
        for _ in range(2):
            with pytest.raises((CallError, RemoteError)) as refused:
                second = RawClient(address)
                try:
                    second.create_session()
                finally:
                    second.close()
            assert "--max-clients" in str(refused.value)
        agent.wait_for({"max_clients": 2})
    finally:
        first.close()


# ttrpc streams, frames and requests ----------------------------------------------------------
def test_ttrpc_streams_over_max_streams_count(agents: list[Agent], tmp_path: Path) -> None:
    """Two requests still receiving their buffers fill --max-streams 2: the third is refused."""
    agent = Agent([f"unix://{tmp_path / 'a.sock'}"], ["--max-streams", "2"])
    agents.append(agent)
    raw = Raw(agent.path)
    try:
        raw.request(1, "Run", flags=REMOTE_OPEN)
        raw.request(3, "Run", flags=REMOTE_OPEN)
        raw.request(5, "Run")
        raw.expect(5, RESOURCE_EXHAUSTED, "--max-streams")
        agent.wait_for({"max_streams": 1})
    finally:
        raw.close()


def test_ttrpc_oversized_frames_and_buffers_and_slow_frames_count(
    agents: list[Agent], tmp_path: Path
) -> None:
    """A frame header claiming more than --max-message-size (the connection closes), buffers
    announced over it (the stream is refused) and a frame that does not arrive in full within
    --receive-timeout (the connection closes)."""
    agent = Agent(
        [f"unix://{tmp_path / 'a.sock'}"],
        ["--max-message-size", "64K", "--receive-timeout", "1"],
    )
    agents.append(agent)
    oversized, announced, trickled = (Raw(agent.path) for _ in range(3))
    try:
        oversized.send(1, REQUEST, 0, b"", length=1 << 30)
        oversized.expect(1, RESOURCE_EXHAUSTED, "exceeds the limit")
        assert oversized.closed_within(5)

        announced.request(1, "Run", flags=REMOTE_OPEN)
        announced.send(1, DATA, 0, _sizes(1 << 20))
        announced.expect(1, RESOURCE_EXHAUSTED, "max_message_bytes")

        trickled.send(1, REQUEST, 0, b"\x0a\x03", length=100)  # 2 of 100 bytes, then nothing
        assert trickled.closed_within(5)
        agent.wait_for({"max_message_bytes": 2, "receive_timeout": 1})
    finally:
        for raw in (oversized, announced, trickled):
            raw.close()


# Requests receiving their bodies (both wires) -----------------------------------------------------
def _ttrpc_receiving(agent: Agent, calls: int) -> Raw:
    """``calls`` requests that announce buffers and never send them."""
    raw = Raw(agent.path)
    for i in range(calls):
        raw.request(2 * i + 1, "Run", flags=REMOTE_OPEN)
    return raw


def _grpc_receiving(agent: Agent, calls: int) -> Any:
    """An attached client's ``calls`` Run streams that announce 1 MiB and send none of it."""
    h2raw = pytest.importorskip("benchmarks.abuse.h2raw", reason="needs the h2 package (test)")
    client = h2raw.H2Client("unix://" + agent.path)
    assert client.attach(), "the raw HTTP/2 client attached"
    for _ in range(calls):
        sid = client.open_stream("Run")
        client.send(sid, b"\x00" + (1 << 20).to_bytes(4, "big"))
    client.pump(0.2)
    return client


@pytest.mark.parametrize("wire", ["ttrpc", "grpc"])
def test_requests_over_max_client_calls_and_past_the_receive_timeout_count(
    agents: list[Agent], tmp_path: Path, wire: str
) -> None:
    """Three requests of one client whose bodies never come, --max-client-calls 2: the third
    is refused at once, the other two are dropped after --receive-timeout."""
    agent = Agent(
        [f"unix://{tmp_path / 'a.sock'}"],
        ["--max-client-calls", "2", "--receive-timeout", "1", "--max-streams", "8"],
    )
    agents.append(agent)
    attacker = (_ttrpc_receiving if wire == "ttrpc" else _grpc_receiving)(agent, 3)
    try:
        agent.wait_for({"max_client_calls": 1, "receive_timeout": 2})
    finally:
        attacker.close()


@pytest.mark.parametrize("wire", ["ttrpc", "grpc"])
def test_requests_over_max_calls_count(agents: list[Agent], tmp_path: Path, wire: str) -> None:
    """One client's two requests whose bodies never come fill --max-calls 2: another client's
    request is refused (the slow ones are younger than the eviction grace), and the two are
    dropped after --receive-timeout."""
    agent = Agent(
        [f"unix://{tmp_path / 'a.sock'}"],
        ["--max-calls", "2", "--receive-timeout", "1", "--max-streams", "8"],
    )
    agents.append(agent)
    receiving = _ttrpc_receiving if wire == "ttrpc" else _grpc_receiving
    first = receiving(agent, 2)
    other = receiving(agent, 1)
    try:
        agent.wait_for({"max_calls": 1, "receive_timeout": 2})
    finally:
        first.close()
        other.close()


def test_grpc_calls_over_max_streams_count(agents: list[Agent], tmp_path: Path) -> None:
    """A client's calls queued or running in the gRPC listener are bounded by --max-streams
    (over all its connections): with two slow calls running, a third is refused."""
    h2raw = pytest.importorskip("benchmarks.abuse.h2raw", reason="needs the h2 package (test)")
    from tests.remote.slow_backend import LAUNCHER

    agent = Agent(
        [f"unix://{tmp_path / 'a.sock'}"],
        ["--max-streams", "2"],
        command=[sys.executable, "-c", LAUNCHER],
        env={"VACCEL_PLUGINS": "slow", "VACCEL_TEST_SLOW_SECONDS": "3"},
    )
    agents.append(agent)
    client = RawClient("grpc+" + agent.process.addresses[0])
    capability = client.channel._metadata[0][1]  # type: ignore[attr-defined]
    run = client.pb.OpRequest(session_id=client.create_session(), op="noop")
    run.noop.SetInParent()
    connections = []
    try:
        for _ in range(3):  # one call per connection: HTTP/2's own stream cap stays out
            conn = h2raw.H2Client("unix://" + agent.path)
            conn.metadata = [("vaccel-capability", capability)]
            conn.send(conn.open_stream("Run"), h2raw.grpc_frame(run.SerializeToString()), True)
            connections.append(conn)
            if len(connections) < 3:
                time.sleep(0.3)  # running before the next one comes
        last = connections[-1]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
            st.grpc_status for st in last.streams.values()
        ):
            last.pump(0.1)
        (refused,) = last.streams.values()
        assert refused.grpc_status == "8", refused.grpc_message  # RESOURCE_EXHAUSTED
        assert "--max-streams" in h2raw.unquote(refused.grpc_message)
        agent.wait_for({"max_streams": 1})
    finally:
        for conn in connections:
            conn.close()
        client.close()


# A refusal by the service is counted once -----------------------------------------------------
@pytest.mark.parametrize("wire", ["ttrpc", "grpc"])
def test_a_service_refusal_is_counted_once(agents: list[Agent], tmp_path: Path, wire: str) -> None:
    """The service refuses a session over --max-sessions; the transport carries the
    RESOURCE_EXHAUSTED back without counting it again."""
    agent = Agent([f"unix://{tmp_path / 'a.sock'}"], ["--max-sessions", "1"])
    agents.append(agent)
    client = RawClient(("grpc+" if wire == "grpc" else "") + agent.process.addresses[0])
    try:
        client.create_session()
        with pytest.raises(CallError, match="--max-sessions") as refused:
            client.create_session()
        assert refused.value.status == "RESOURCE_EXHAUSTED"
        agent.wait_for({"max_sessions": 1})
    finally:
        client.close()


# virtio-mock --------------------------------------------------------------------------------------
def test_virtio_mock_refusals_count(agents: list[Agent], tmp_path: Path) -> None:
    """A request over --max-message-size, a guest over --max-clients, a connection over
    --max-connections and connections that never set up within --handshake-timeout."""
    from benchmarks.abuse.virtio_guest import GuestError, RawGuest

    agent = Agent(
        [f"virtio-mock://{tmp_path / 'v.ctl'}"],
        [
            "--max-message-size",
            "4K",
            "--max-clients",
            "1",
            "--max-connections",
            "2",
            "--handshake-timeout",
            "1",
        ],
    )
    agents.append(agent)
    path = agent.path
    guest = RawGuest(path)
    try:
        guest.handshake()
        head, _ = guest.submit("Run", bytes(8 << 10))
        assert [h for h, _ in guest.wait_used(1)] == [head], "the chain was completed"
        agent.wait_for({"max_message_bytes": 1})

        second = RawGuest(path)
        try:
            with pytest.raises(GuestError, match="--max-clients"):
                second.handshake()
        finally:
            second.close()
        agent.wait_for({"max_message_bytes": 1, "max_clients": 1})

        silent = unix_socket(path, socket.SOCK_SEQPACKET)  # the second of 2 connections
        late = unix_socket(path, socket.SOCK_SEQPACKET)  # over the limit, no stalled set-up
        assert closed_within(late, 5)
        assert closed_within(silent, 5)
        for sock in (silent, late):
            sock.close()
        agent.wait_for(
            {
                "max_message_bytes": 1,
                "max_clients": 1,
                "max_connections": 1,
                "handshake_timeout": 1,
            }
        )
    finally:
        guest.close()


# The names the transports pass -----------------------------------------------------------------
#: The modules of transports/ that report refusals: they look the hook up, or take it.
REPORTERS = {
    "_receiving.py",
    "_relay.py",
    "dual.py",
    "grpc_server.py",
    "server.py",
    "device.py",
}


def _reported_limits() -> list[tuple[str, int, object]]:
    """Every ``rejected(...)`` / ``_rejected(...)`` call in the modules of transports/ that
    get the hook (``rejection_hook(handler)`` or a ``rejected`` argument): (file, line, arg)."""
    found = []
    reporters = set()
    for path in sorted((REPO / "transports").rglob("*.py")):
        text = path.read_text()
        if "rejection_hook(" not in text and "rejected: Callable[[str], None]" not in text:
            continue
        reporters.add(path.name)
        tree = ast.parse(text, str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("rejected", "_rejected"):
                arg = node.args[0] if len(node.args) == 1 and not node.keywords else None
                value = arg.value if isinstance(arg, ast.Constant) else ast.dump(node)
                found.append((path.name, node.lineno, value))
    assert reporters == REPORTERS, reporters
    return found


def test_every_limit_a_transport_reports_is_a_limit_of_the_agent() -> None:
    names = {spec.name for spec in LIMITS}
    reported = _reported_limits()
    wrong = [(f, line, v) for f, line, v in reported if v not in names]
    assert not wrong, f"not a literal name of vaccel_agent.limits.LIMITS: {wrong}"
    assert {v for _, _, v in reported} == {
        "max_connections",
        "max_clients",
        "max_streams",
        "handshake_timeout",
        "receive_timeout",
        "max_message_bytes",
        "max_calls",
        "max_client_calls",
    }


def test_transports_do_not_import_the_agent() -> None:
    for path in (REPO / "transports").rglob("*.py"):
        assert "vaccel_agent" not in path.read_text(), f"{path.name} imports vaccel_agent"


def test_the_hook_is_optional_and_counts_only_known_limits() -> None:
    """A handler without ``rejected`` gets a no-op hook; the agent's counts known limits and
    ignores (and logs once) a name it does not know: labels stay bounded."""
    from unittest import mock

    from vaccel_agent import telemetry as telemetry_module
    from vaccel_core.transport import rejection_hook

    class Plain:  # a third-party handler: handle, peer_connected, peer_disconnected only
        pass

    rejection_hook(cast(Any, Plain()))("max_connections")  # a no-op, not an AttributeError
    telemetry = telemetry_module.Telemetry()

    class Counting:
        rejected = telemetry.reject

    hook = rejection_hook(cast(Any, Counting()))
    with mock.patch.object(telemetry_module.logger, "warning") as warning:
        for limit in ("max_connections", "max_connections", "max_streams", "bogus", "bogus"):
            hook(limit)
    assert telemetry.rejections() == {"max_connections": 2, "max_streams": 1}
    assert warning.call_count == 1 and "bogus" in repr(warning.call_args)
