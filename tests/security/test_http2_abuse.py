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

import pytest

from tests.remote.conftest import (
    AgentProcess,
    RawClient,
    missing_remote_extra,
    start_agent,
)

pytestmark = [
    pytest.mark.skipif(missing_remote_extra() is not None, reason=str(missing_remote_extra())),
    pytest.mark.timeout(120),
]

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


def test_half_sent_bodies_of_an_oversized_message_are_refused(tcp_agent: AgentProcess) -> None:
    """Attack 4: streams announce a 1 GiB gRPC message and send 32 MiB of it. The agent took
    2.19 GB; now a message over --max-message-size (64 MiB) is refused as soon as its length
    is read."""
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
    assert result.numbers["reset"] == 32 and "larger than max" in result.got, result.got
    # What the attacker wrote before its streams were reset (flow control windows), not kept.
    assert result.numbers["accepted"] < 256 << 20, result.got
    assert max(peak) - before_rss < 256 << 20, f"agent grew by {(max(peak) - before_rss) >> 20} MiB"


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
