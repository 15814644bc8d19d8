"""Interoperability of our ttrpc with containerd's own Go library (github.com/containerd/ttrpc).

``ttrpc_go/client`` drives a real agent with ttrpc.NewClient; ``ttrpc_go/server`` serves a test
service with ttrpc.NewServer that our TtrpcChannel calls. Both are built once per session,
offline, from Debian's packages (golang-go, golang-github-containerd-ttrpc-dev) in GOPATH mode;
the tests skip, naming the package, when either is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.remote.conftest import AgentProcess, start_agent, wait_until
from vaccel_core.errors import RemoteError
from vaccel_core.transport import CallError, Message, TransportOptions
from vaccel_transports.ttrpc.client import TtrpcChannel

GO_SOURCES = Path(__file__).resolve().parent / "ttrpc_go"
#: Where Debian's golang-*-dev packages install Go sources (a GOPATH).
DEBIAN_GOPATH = Path("/usr/share/gocode")
TTRPC_SOURCES = DEBIAN_GOPATH / "src/github.com/containerd/ttrpc"
INSTALL = "apt-get install golang-go golang-github-containerd-ttrpc-dev"
BUILD_TIMEOUT = 300.0
START_TIMEOUT = 30.0

ECHO = "vaccel.test.Echo"
#: The message of the server's Fail method (FailMessage in ttrpc_go/server/main.go).
FAIL_MESSAGE = "vaccel-test: the thing you asked for is not here"


def missing_go() -> str | None:
    """Why the Go programs cannot be built here, or None."""
    if shutil.which("go") is None:
        return f"golang-go is not installed ({INSTALL})"
    if not TTRPC_SOURCES.is_dir():
        return (
            f"golang-github-containerd-ttrpc-dev is not installed: no {TTRPC_SOURCES} ({INSTALL})"
        )
    return None


@dataclass(frozen=True)
class GoPrograms:
    client: Path
    server: Path


@pytest.fixture(scope="session")
def go_programs(tmp_path_factory: pytest.TempPathFactory) -> GoPrograms:
    """Both Go programs, built into a temporary folder (never into the tree), offline."""
    reason = missing_go()
    if reason is not None:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("ttrpc-go")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": str(DEBIAN_GOPATH),
        "GOFLAGS": "",
        "GOPROXY": "off",
        "GOCACHE": str(out / "gocache"),
    }
    for name in ("client", "server"):
        built = subprocess.run(
            ["go", "build", "-o", str(out / name), f"./{name}"],
            cwd=GO_SOURCES,
            env=env,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
        )
        assert built.returncode == 0, f"go build ./{name} failed:\n{built.stdout}{built.stderr}"
    return GoPrograms(client=out / "client", server=out / "server")


# ---- containerd's Go client against our agent ------------------------------------------------


@dataclass
class ClientRun:
    """The agent, and what the Go client printed after driving it over ttrpc."""

    agent: AgentProcess
    report: dict[str, Any]


@pytest.fixture(scope="module")
def go_client_run(
    go_programs: GoPrograms, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClientRun]:
    """Run the Go client once against a fresh agent (noop backend) on a unix socket."""
    sock = tmp_path_factory.mktemp("agent") / "agent.sock"
    agent = start_agent([f"unix://{sock}"])
    try:
        done = subprocess.run(
            [str(go_programs.client), str(sock)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, (
            f"Go client failed ({done.returncode}):\n{done.stderr}\nagent log:\n{agent.log}"
        )
        yield ClientRun(agent, json.loads(done.stdout))
    finally:
        agent.stop()


def test_go_client_health_check_serving(go_client_run: ClientRun) -> None:
    """grpc.health.v1.Health/Check answers SERVING (1) for "" and the agent's service."""
    assert go_client_run.report["health"] == {"": 1, "vaccel.agent.v1.Agent": 1}


def test_go_client_health_check_unknown_service(go_client_run: ClientRun) -> None:
    """Health/Check of a service the agent does not serve is NOT_FOUND, as in gRPC."""
    assert go_client_run.report["health_unknown_service"]["name"] == "NotFound"


def test_go_client_session_and_noop(go_client_run: ClientRun) -> None:
    """CreateSession, Run noop (once and 16 at a time), DestroySession, decoded by gogo."""
    report = go_client_run.report
    assert report["status_version"]
    assert report["session_id"] > 0
    assert "noop" in report["session_backends"]
    assert report["sessions_after_create"] == 1
    assert (report["run_op"], report["run_has_noop_result"]) == ("noop", True)
    assert report["concurrent_runs_ok"] == 16
    assert report["sessions_after_destroy"] == 0


def test_go_client_error_statuses(go_client_run: ClientRun) -> None:
    """Failed calls come back as google.rpc.Status with the gRPC code and a message."""
    report = go_client_run.report
    destroyed = report["run_on_destroyed_session"]
    assert destroyed["name"] == "NotFound"
    assert str(report["session_id"]) in destroyed["message"]
    assert report["unknown_method"]["name"] == "Unimplemented"
    assert "NoSuchMethod" in report["unknown_method"]["message"]
    assert report["unknown_service"]["name"] == "Unimplemented"


def test_go_client_sessions_released_on_close(go_client_run: ClientRun) -> None:
    """The session the Go client left open is released when its connection closes."""
    assert go_client_run.report["sessions_left_open"] == 1
    observer = go_client_run.agent.observer()
    try:
        wait_until(lambda: observer.status().sessions == 0, what="sessions released")
    finally:
        observer.close()


# ---- our client against containerd's Go server -----------------------------------------------


@pytest.fixture(scope="module")
def go_server(go_programs: GoPrograms, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The Go test server's socket path, once it prints "ready"."""
    sock = tmp_path_factory.mktemp("go-server") / "echo.sock"
    proc = subprocess.Popen(
        [str(go_programs.server), str(sock)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    ready = threading.Event()
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.strip() == "ready":
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(START_TIMEOUT), f"Go server not ready:\n{''.join(lines)}"
        yield sock
    finally:
        proc.terminate()
        proc.wait(10)
        reader.join(5)


@pytest.fixture
def channel(go_server: Path) -> Iterator[TtrpcChannel]:
    ch = TtrpcChannel.connect_unix(str(go_server), TransportOptions(connect_timeout=10))
    yield ch
    ch.close()


def call(
    ch: TtrpcChannel,
    method: str,
    payload: bytes = b"",
    *,
    timeout: float = 5.0,
    metadata: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """One call of the Go server's test service; the reply's bytes."""
    reply = ch.invoke(ECHO, method, Message(payload), timeout=timeout, metadata=metadata)
    return bytes(reply.payload)


def test_echo_with_metadata(channel: TtrpcChannel) -> None:
    """The payload arrives and comes back intact; a metadata value reaches the handler."""
    reply = call(channel, "Echo", b"hello", metadata=(("echo-suffix", "-from-metadata"),))
    assert reply == b"hello-from-metadata"


def test_metadata_pairs_arrive_in_order(channel: TtrpcChannel) -> None:
    """Every KeyValue arrives, repeated keys keeping their order."""
    pairs = (("a", "1"), ("b", "2"), ("a", "3"))
    assert json.loads(call(channel, "Metadata", metadata=pairs)) == {"a": ["1", "3"], "b": ["2"]}


def test_echo_one_mebibyte(channel: TtrpcChannel) -> None:
    """A 1 MiB payload (under ttrpc's 4 MiB frame limit) makes the round trip byte for byte."""
    payload = os.urandom(1 << 20)
    assert call(channel, "Echo", payload) == payload


def test_empty_payload(channel: TtrpcChannel) -> None:
    """An empty request and reply payload (an absent protobuf field) are fine both ways."""
    assert call(channel, "Echo") == b""


def test_reply_payload_is_opaque(channel: TtrpcChannel) -> None:
    """A reply's bytes come back as sent, whatever they look like (here: field 2047 first)."""
    payload = b"\xfa\x7f\x03abc" + b"rest"
    reply = channel.invoke(ECHO, "Echo", Message(payload), timeout=5.0)
    assert (bytes(reply.payload), tuple(reply.buffers)) == (payload, ())


def test_error_status(channel: TtrpcChannel) -> None:
    """A handler's status error becomes CallError with its gRPC status name and message."""
    with pytest.raises(CallError) as caught:
        call(channel, "Fail")
    assert caught.value.status == "NOT_FOUND"
    assert FAIL_MESSAGE in str(caught.value)


def test_unknown_method_is_unimplemented(channel: TtrpcChannel) -> None:
    """containerd's server answers an unknown method with UNIMPLEMENTED."""
    with pytest.raises(CallError) as caught:
        call(channel, "NoSuchMethod")
    assert caught.value.status == "UNIMPLEMENTED"
    assert "NoSuchMethod" in str(caught.value)


def test_deadline_is_sent(channel: TtrpcChannel) -> None:
    """The call's timeout travels as timeout_nano: the handler's context has that deadline."""
    report = json.loads(call(channel, "Deadline", timeout=5.0))
    assert report["has_deadline"] is True
    assert 4000 < report["remaining_ms"] <= 5000


def test_slow_call_times_out_and_channel_survives(channel: TtrpcChannel) -> None:
    """A call past its timeout fails in time; the late reply is dropped, the channel works."""
    server_sleep = 3.0
    start = time.monotonic()
    with pytest.raises((CallError, RemoteError)) as caught:
        call(channel, "Slow", str(server_sleep).encode(), timeout=0.3)
    elapsed = time.monotonic() - start
    assert elapsed < 2.0, f"timed out after {elapsed:.2f} s, the server slept {server_sleep} s"
    if isinstance(caught.value, CallError):
        assert caught.value.status == "DEADLINE_EXCEEDED"
    time.sleep(server_sleep + 0.3 - elapsed)  # the late reply arrives on the connection now
    assert call(channel, "Echo", b"still here") == b"still here"


def test_concurrent_calls_on_one_channel(channel: TtrpcChannel) -> None:
    """Calls from many threads share one connection; a slow one holds none of the others."""
    with ThreadPoolExecutor(max_workers=9) as pool:
        slow = pool.submit(call, channel, "Slow", b"3")
        time.sleep(0.1)  # the slow call is in flight before the others start
        start = time.monotonic()
        fast = [
            pool.submit(
                call, channel, "Echo", f"call {i}".encode(), metadata=(("echo-suffix", f"/{i}"),)
            )
            for i in range(32)
        ]
        replies = [f.result(timeout=10) for f in fast]
        fast_elapsed = time.monotonic() - start
        assert slow.result(timeout=10) == b"slow done"
    assert replies == [f"call {i}/{i}".encode() for i in range(32)]
    assert fast_elapsed < 2.0, f"fast calls took {fast_elapsed:.2f} s behind a 3 s call"


def test_oversized_request_is_refused_and_channel_survives(channel: TtrpcChannel) -> None:
    """A 5 MiB request exceeds containerd's 4 MiB frame limit: RESOURCE_EXHAUSTED, no hang."""
    with pytest.raises(CallError) as caught:
        call(channel, "Echo", bytes(5 << 20))
    assert caught.value.status == "RESOURCE_EXHAUSTED"
    assert call(channel, "Echo", b"after") == b"after"
