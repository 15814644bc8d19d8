"""``vaccel-agent --metrics-address``: a real agent process, a known mix of calls through the
real rpc backend (ttrpc and gRPC), scraped over HTTP and parsed with prometheus-client's
parser; every count must match exactly."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.remote.conftest import (
    AgentProcess,
    RawClient,
    agent_command,
    clean_env,
    missing_remote_extra,
    start_agent,
)
from vaccel_core import Config, Session, __version__
from vaccel_core.flags import PluginType
from vaccel_core.transport import CallError

from .scrape import free_port, listening_tcp_ports, metrics_url, scrape

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(missing_remote_extra() is not None, reason=str(missing_remote_extra())),
]

NOOPS, SGEMMS, BAD_SGEMMS = 4, 3, 2
#: Each client may hold this many sessions: the raw client's third CreateSession is refused.
MAX_SESSIONS = 2

#: How the clients of each case reach the agent (it listens on unix and tcp): the wire the
#: calls travel on, and the transport label they must carry.
WIRES = {
    "ttrpc+unix": ("unix", "unix"),
    "grpc+unix": ("grpc+unix", "unix"),
    "grpc+tcp": ("tcp", "tcp"),
}


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[AgentProcess, int]]:
    """An agent (noop backend) on unix and tcp, serving metrics on a free port."""
    port = free_port()
    handle = start_agent(
        [f"unix://{tmp_path / 'agent.sock'}", "tcp://127.0.0.1:0"],
        args=[
            "--metrics-address",
            f"tcp://127.0.0.1:{port}",
            "--max-sessions",
            str(MAX_SESSIONS),
        ],
    )
    yield handle, port
    assert handle.stop() == 0, handle.log


def _address(agent: AgentProcess, scheme: str) -> str:
    if scheme == "grpc+unix":
        return "grpc+" + next(a for a in agent.addresses if a.startswith("unix://"))
    return next(a for a in agent.addresses if a.startswith(f"{scheme}://"))


def _bad_sgemm(raw: RawClient, session_id: int) -> None:
    """A Run the agent refuses with INVALID_ARGUMENT: b's shape does not match its bytes."""
    req = raw.pb.OpRequest(session_id=session_id, op="blas_sgemm")
    eye = np.eye(2, dtype=np.float32)
    for name, shape in (("a", [2, 2]), ("b", [3, 2])):
        tensor = getattr(req.blas_sgemm, name)
        tensor.dtype, tensor.inline = "float32", eye.tobytes()
        tensor.shape.extend(shape)
    with pytest.raises(CallError) as failed:
        raw.call("Run", req, raw.pb.OpResponse)
    assert failed.value.status == "INVALID_ARGUMENT", failed.value


def _known_mix(address: str) -> tuple[Session, RawClient, list[int]]:
    """NOOPS noops and SGEMMS sgemms through the rpc backend; a raw client's two sessions,
    its refused third one and BAD_SGEMMS failing Runs. Returns what stays open."""
    guest = Session(PluginType.REMOTE, config=Config(plugins=["rpc"], rpc_address=address))
    for _ in range(NOOPS):
        guest.noop()
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.arange(12, dtype=np.float32).reshape(3, 4)
    for _ in range(SGEMMS):
        assert guest.sgemm(a, b).shape == (2, 4)
    raw = RawClient(address)
    sessions = [raw.create_session() for _ in range(MAX_SESSIONS)]
    with pytest.raises(CallError) as refused:
        raw.create_session()
    assert refused.value.status == "RESOURCE_EXHAUSTED"
    assert "--max-sessions" in refused.value.message
    for _ in range(BAD_SGEMMS):
        _bad_sgemm(raw, sessions[0])
    return guest, raw, sessions


@pytest.mark.parametrize("wire", list(WIRES))
def test_counts_match_a_known_mix_of_calls_exactly(
    agent: tuple[AgentProcess, int], wire: str
) -> None:
    handle, port = agent
    scheme, transport = WIRES[wire]
    url = metrics_url(handle)
    assert url == f"http://127.0.0.1:{port}/metrics"
    guest, raw, sessions = _known_mix(_address(handle, scheme))
    try:
        got = scrape(url)
    finally:
        guest.release()
        raw.close()

    calls = got.values("vaccel_agent_calls_total")
    expected = {
        ("", "CreateSession", "", "OK", transport): 1 + MAX_SESSIONS,
        ("", "CreateSession", "", "RESOURCE_EXHAUSTED", transport): 1,
        ("noop", "Run", "noop", "OK", transport): NOOPS,
        ("noop", "Run", "blas_sgemm", "OK", transport): SGEMMS,
        ("noop", "Run", "blas_sgemm", "INVALID_ARGUMENT", transport): BAD_SGEMMS,
    }
    if scheme == "unix":  # a ttrpc channel checks the agent with one GetStatus per connection
        expected[("", "GetStatus", "", "OK", transport)] = 2
    assert calls == expected  # labels in name order: backend, method, operation, status, transport

    # The histogram counts every call once, per (method, operation, backend).
    counts = got.values("vaccel_agent_call_duration_seconds_count")
    per_key: dict[tuple[str, ...], float] = {}
    for (backend, method, operation, _status, _transport), n in calls.items():
        per_key[(backend, method, operation)] = per_key.get((backend, method, operation), 0) + n
    assert counts == per_key
    buckets = got.samples["vaccel_agent_call_duration_seconds_bucket"]
    for key, n in per_key.items():
        series = sorted(
            (float(dict(labels)["le"]), value)
            for labels, value in buckets.items()
            if tuple(v for k, v in labels if k != "le") == key
        )
        assert series[-1] == (float("inf"), n), "the +Inf bucket holds every call"
        assert [v for _, v in series] == sorted(v for _, v in series), "cumulative"
    sums = got.values("vaccel_agent_call_duration_seconds_sum")
    assert all(0 < s < 60 for s in sums.values())

    received = got.value("vaccel_agent_received_bytes_total", transport=transport)
    sent = got.value("vaccel_agent_sent_bytes_total", transport=transport)
    assert received > SGEMMS * (6 + 12) * 4, "the sgemms' a and b travelled in"
    assert sent > SGEMMS * 8 * 4, "their 2x4 results travelled out"
    assert set(got.values("vaccel_agent_received_bytes_total")) == {(transport,)}

    assert got.value("vaccel_agent_sessions") == 1 + MAX_SESSIONS
    assert got.value("vaccel_agent_clients") == 2
    assert got.value("vaccel_agent_resources") == 0
    assert got.value("vaccel_agent_calls_in_flight") == 0
    assert got.values("vaccel_agent_rejections_total") == {("max_sessions",): 1}
    assert got.value("vaccel_agent_backend_available", backend="noop") == 1
    assert got.value("vaccel_agent_build_info", version=__version__) == 1
    assert got.value("process_resident_memory_bytes") > 1 << 20
    assert got.value("process_cpu_seconds_total") > 0

    # Bounded labels: no session id, no peer id anywhere.
    ids = {str(s) for s in sessions}
    for name, series in got.samples.items():
        for labels in series:
            for key, value in labels:
                assert value not in ids, f"{name} carries session id {value} in {key}"
                assert not value.startswith(("client-", "anonymous-")), (name, key, value)


def test_gauges_follow_sessions_and_clients(agent: tuple[AgentProcess, int]) -> None:
    handle, _ = agent
    url = metrics_url(handle)
    raw = RawClient(_address(handle, "unix"))
    try:
        first = raw.create_session()
        raw.create_session()
        assert scrape(url).value("vaccel_agent_sessions") == 2
        raw.call(
            "DestroySession",
            raw.pb.DestroySessionRequest(session_id=first),
            raw.pb.DestroySessionResponse,
        )
        got = scrape(url)
        assert got.value("vaccel_agent_sessions") == 1
        assert got.value("vaccel_agent_clients") == 1
    finally:
        raw.close()
    from tests.remote.conftest import wait_until

    wait_until(lambda: scrape(url).value("vaccel_agent_clients") == 0, 10, "the client's departure")
    assert scrape(url).value("vaccel_agent_sessions") == 0, "released with its client"


def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    handle = start_agent([f"unix://{tmp_path / 'agent.sock'}"])
    try:
        assert listening_tcp_ports(handle.pid) == set(), "no port is opened without the flag"
        assert "Serving metrics" not in handle.log
    finally:
        assert handle.stop() == 0


def test_the_endpoint_listens_only_where_asked_and_stops_with_the_agent(
    agent: tuple[AgentProcess, int],
) -> None:
    handle, port = agent
    tcp_port = int(_address(handle, "tcp").rsplit(":", 1)[1])
    assert listening_tcp_ports(handle.pid) == {port, tcp_port}
    assert handle.stop() == 0
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 5):
        pass


def _run_agent(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*agent_command(), "-a", f"unix://{tmp_path / 'agent.sock'}", *args],
        env=clean_env({"VACCEL_PLUGINS": "noop"}),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("127.0.0.1:9464", "the scheme must be tcp"),
        ("http://127.0.0.1:9464", "the scheme must be tcp"),
        ("tcp://127.0.0.1", "no :PORT"),
        ("tcp://127.0.0.1:x", "the port must be 0 to 65535"),
        ("tcp://127.0.0.1:99999", "the port must be 0 to 65535"),
        ("tcp://metrics.example:9464", "'metrics.example' is not an IP address"),
        ("tcp://:9464", "no HOST"),
    ],
)
def test_a_bad_address_is_an_error_naming_the_flag(tmp_path: Path, value: str, why: str) -> None:
    done = _run_agent(tmp_path, "--metrics-address", value)
    assert done.returncode == 2, done
    assert done.stderr.strip() == (
        f"vaccel-agent: error: --metrics-address: expected tcp://HOST:PORT (e.g. "
        f"tcp://127.0.0.1:9464), got {value!r}: {why}"
    )
    assert "Listening on" not in done.stdout


def test_a_bad_address_in_vaccel_config_is_refused_too(tmp_path: Path) -> None:
    done = _run_agent(tmp_path, "--vaccel-config", "metrics_address=tcp://x:1")
    assert done.returncode == 2, done
    assert "--metrics-address: expected tcp://HOST:PORT" in done.stderr


def test_a_busy_port_is_an_error_naming_the_flag_and_nothing_stays(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        done = _run_agent(tmp_path, "--metrics-address", f"tcp://127.0.0.1:{port}")
    assert done.returncode == 1, done
    assert done.stderr.strip() == (
        f"vaccel-agent: error: --metrics-address tcp://127.0.0.1:{port}: cannot listen "
        f"(Address already in use)"
    )
    assert not (tmp_path / "agent.sock").exists(), "the agent's socket is removed again"


def test_vaccel_config_key_serves_metrics(tmp_path: Path) -> None:
    handle = start_agent(
        [f"unix://{tmp_path / 'agent.sock'}"],
        args=["--vaccel-config", "metrics_address=tcp://127.0.0.1:0"],
    )
    try:
        url = metrics_url(handle)
        assert scrape(url).value("vaccel_agent_sessions") == 0
    finally:
        handle.stop(signal.SIGINT)


def test_an_embedded_agent_serves_metrics_until_it_stops(tmp_path: Path) -> None:
    from vaccel_agent.server import Agent

    config = Config(plugins=["noop"], extra={"metrics_address": "tcp://127.0.0.1:0"})
    with Agent([f"unix://{tmp_path / 'agent.sock'}"], config=config) as agent:
        assert agent.metrics is not None
        url = agent.metrics.url
        raw = RawClient(agent.bound_addresses[0])
        try:
            raw.noop(raw.create_session())
            calls = scrape(url).values("vaccel_agent_calls_total")
        finally:
            raw.close()
        assert calls[("noop", "Run", "noop", "OK", "unix")] == 1
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 5):
        pass
