"""Issue 9, attacks 3-6: what a client that writes its own HTTP/2 frames can make the agent's
gRPC listeners hold. Each attack runs against a real agent process while a victim client that
connected before keeps calling; the attacks come from ``benchmarks/abuse/h2raw.py`` (the same
code the abuse benchmark runs)."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.remote.conftest import (
    AgentProcess,
    RawClient,
    start_agent,
)

h2raw = pytest.importorskip("benchmarks.abuse.h2raw", reason="needs the h2 package (test extra)")


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Victim:
    """A client attached before the attack that times a call every 20 ms."""

    def __init__(self, agent: AgentProcess) -> None:
        self.client = RawClient(agent.address)
        self.session = self.client.create_session()
        self.times: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def call(self) -> float:
        start = time.perf_counter()
        self.client.noop(self.session)
        return time.perf_counter() - start

    def __enter__(self) -> Victim:
        def loop() -> None:
            while not self._stop.wait(0.02):
                try:
                    self.times.append(self.call())
                except Exception as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.client.close()

    def check(self, baseline: float) -> None:
        assert not self.errors, f"the victim failed during the attack: {self.errors[:3]}"
        assert len(self.times) >= 5, "the victim made calls during the attack"
        median = statistics.median(self.times)
        assert median < max(10 * baseline, 0.05), (
            f"victim median {median * 1e3:.1f} ms under attack vs {baseline * 1e3:.1f} ms before"
        )


def baseline(agent: AgentProcess) -> float:
    probe = RawClient(agent.address)
    sid = probe.create_session()
    times = []
    for _ in range(20):
        start = time.perf_counter()
        probe.noop(sid)
        times.append(time.perf_counter() - start)
    probe.close()
    return statistics.median(times)


def new_client_works(agent: AgentProcess) -> None:
    late = RawClient(agent.address)
    try:
        assert late.noop(late.create_session()) is not None
    finally:
        late.close()


@pytest.fixture
def tcp_agent() -> Iterator[AgentProcess]:
    handle = start_agent(["tcp://127.0.0.1:0"], args=["--log-level", "3"])
    yield handle
    handle.stop()


def test_half_sent_request_headers_hold_no_thread(tcp_agent: AgentProcess) -> None:
    """Attack 3: 4 connections x 64 request HEADERS that never get a body. The threaded
    server gave each a worker thread: every other client, new or attached, got
    DEADLINE_EXCEEDED."""
    before = baseline(tcp_agent)
    results = []
    with Victim(tcp_agent) as victim:

        def hold() -> None:
            time.sleep(1.5)

        attackers = [
            threading.Thread(
                target=lambda: results.append(
                    h2raw.attack_half_headers(tcp_agent.address, hold, streams=64)
                )
            )
            for _ in range(4)
        ]
        for attacker in attackers:
            attacker.start()
        time.sleep(0.7)
        new_client_works(tcp_agent)
        for attacker in attackers:
            attacker.join(30)
    victim.check(before)
    assert len(results) == 4
    for result in results:
        assert not result.succeeded, result.got  # at most --max-streams open per connection
        assert result.numbers["open"] <= 16


def test_half_sent_bodies_without_a_capability_are_never_read(tcp_agent: AgentProcess) -> None:
    """Attack 4 as in the issue: streams announce a 1 GiB gRPC message and send 32 MiB of it.
    The agent took 2.19 GB; now a call is admitted when its headers arrive, before gRPC reads
    its body, and one without a capability is refused right there: it never gets more than
    HTTP/2's initial 64 KiB window."""
    before_rss = rss(tcp_agent.pid)
    before = baseline(tcp_agent)
    peak = [before_rss]
    with Victim(tcp_agent) as victim:

        def hold() -> None:
            peak.append(rss(tcp_agent.pid))

        result = h2raw.attack_half_bodies(
            tcp_agent.address,
            hold,
            connections=2,
            streams=16,
            announce=1 << 30,
            per_stream=32 << 20,
            budget_seconds=20,
        )
    victim.check(before)
    assert not result.succeeded, result.got
    assert result.numbers["reset"] == 32 and "no client capability" in result.got, result.got
    assert result.numbers["accepted"] <= 32 * 65535, result.got
    assert max(peak) - before_rss < 64 << 20, f"agent grew by {(max(peak) - before_rss) >> 20} MiB"


def attached_streams(address: str, capability: str, count: int, announce: int) -> Any:
    """An HTTP/2 connection with ``count`` Run calls of a client (its capability), each
    announcing ``announce`` bytes of request and sending none yet."""
    client = h2raw.H2Client(address)
    sids = []
    for _ in range(count):
        sid = client.conn.get_next_available_stream_id()
        client.conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/vaccel.agent.v1.Agent/Run"),
                (":authority", "localhost"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("vaccel-capability", capability),
            ],
        )
        client.streams[sid] = h2raw.StreamState()
        client.send(sid, b"\x00" + announce.to_bytes(4, "big"))
        sids.append(sid)
    client.flush()
    return client, sids


def feed(clients: list[Any], per_stream: int, seconds: float) -> int:
    """Send up to ``per_stream`` bytes on every open stream for ``seconds``; bytes sent."""
    block = bytes(1 << 20)
    sent: dict[tuple[int, int], int] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        progress = False
        for i, (client, sids) in enumerate(clients):
            client.pump(0.0)
            for sid in sids:
                done = sent.get((i, sid), 0)
                if done < per_stream:
                    n = client.send(sid, block[: min(len(block), per_stream - done)])
                    sent[(i, sid)] = done + n
                    progress = progress or n > 0
        if not progress:
            time.sleep(0.05)
    return sum(sent.values())


def test_half_sent_bodies_of_attached_clients_are_bounded_by_the_receiving_slots(
    tmp_path: Path,
) -> None:
    """Attack 4 by clients that did attach: 4 capabilities x 16 streams, each announcing a
    message just under --max-message-size (16 MiB) and sending 15 MiB of it. At most
    --max-client-calls (8) of a client's calls are read at once, and a body that does not
    arrive within --receive-timeout is dropped, so the agent holds at most 4 x 8 x 16 MiB."""
    agent = start_agent([f"grpc+unix://{tmp_path / 'a.sock'}"], args=["--receive-timeout", "3"])
    attackers = [RawClient(agent.address) for _ in range(4)]
    conns = []
    try:
        before_rss = rss(agent.pid)
        before = baseline(agent)
        with Victim(agent) as victim:
            for attacker in attackers:
                capability = attacker.channel._metadata[0][1]  # type: ignore[attr-defined]
                conns.append(attached_streams(agent.address, capability, 16, (16 << 20) - 64))
            sent = feed(conns, 15 << 20, 2.0)
            held = rss(agent.pid) - before_rss
            time.sleep(2.5)  # past --receive-timeout: the partial requests are dropped
            for client, _ in conns:
                client.pump(0.2)
        victim.check(before)
        assert sent <= 4 * 8 * (16 << 20) + 4 * 16 * 65535, sent
        assert held < 4 * 8 * (16 << 20) + (64 << 20), f"agent grew by {held >> 20} MiB"
        statuses = [st.grpc_status for client, _ in conns for st in client.streams.values()]
        assert statuses.count("8") == 4 * 8, statuses  # RESOURCE_EXHAUSTED at the headers
        assert statuses.count("4") == 4 * 8, statuses  # DEADLINE_EXCEEDED: never completed
    finally:
        for client, _ in conns:
            client.close()
        for attacker in attackers:
            attacker.close()
        agent.stop()


def test_a_slow_sender_holding_every_slot_is_evicted_for_another_client(tmp_path: Path) -> None:
    """--max-calls 8: one client holds all 8 receiving slots with bodies it never finishes;
    another client's call takes the place of the attacker's oldest instead of waiting."""
    agent = start_agent([f"grpc+unix://{tmp_path / 'a.sock'}"], args=["--max-calls", "8"])
    attacker, victim = RawClient(agent.address), RawClient(agent.address)
    try:
        sid = victim.create_session()
        capability = attacker.channel._metadata[0][1]  # type: ignore[attr-defined]
        client, _ = attached_streams(agent.address, capability, 8, 1 << 20)
        client.pump(0.5)
        time.sleep(1.2)  # older than the eviction grace
        start = time.perf_counter()
        assert victim.noop(sid) is not None
        assert time.perf_counter() - start < 1.0
        client.pump(0.5)
        messages = [st.grpc_message for st in client.streams.values()]
        assert any("made room for another client" in m for m in messages), messages
        client.close()
    finally:
        attacker.close()
        victim.close()
        agent.stop()


def test_idle_connections_are_capped_and_closed(tmp_path: Path) -> None:
    """Attack 5: 300 connections that send the HTTP/2 preface and nothing else. They stayed
    open until the agent ran out of file descriptors; now at most --max-connections are
    accepted and each is closed after --idle-timeout."""
    agent = start_agent(
        [f"unix://{tmp_path / 'a.sock'}"],
        args=["--max-connections", "32", "--idle-timeout", "1", "--handshake-timeout", "1"],
    )
    try:
        before = baseline(agent)
        with Victim(agent) as victim:
            result = h2raw.attack_idle_prefaces(
                agent.address, lambda: time.sleep(2.5), count=300, max_connections=32
            )
        victim.check(before)
        assert not result.succeeded, result.got
        assert result.numbers["open"] == 0, result.got  # all closed by the idle timeout
        new_client_works(agent)
    finally:
        agent.stop()


def test_one_connection_cannot_take_every_client_slot(tmp_path: Path) -> None:
    """Attack 6: one connection opened 55 Attach streams and took every client slot."""
    agent = start_agent([f"unix://{tmp_path / 'a.sock'}"], args=["--max-clients", "24"])
    try:
        before = baseline(agent)
        with Victim(agent) as victim:
            attached = []

            def hold() -> None:
                # Another connection still attaches: the first took at most --max-streams.
                new_client_works(agent)

            result = h2raw.attack_attach_streams(agent.address, hold, streams=64)
            attached.append(result)
        victim.check(before)
        assert not result.succeeded, result.got
        assert result.numbers["attached"] <= 16, result.got
    finally:
        agent.stop()
