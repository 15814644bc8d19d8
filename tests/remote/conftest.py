"""Fixtures for remote tests: the agent as a REAL process, and clients that talk to it.

``start_agent(addresses, env=..., args=...)`` is reusable by other transports' tests: pass any
addresses (``unix://``, ``tcp://...:0``, ``vsock://``, ``virtio-mock://``); it waits for one
``Listening on '<address>'`` line per address and returns a handle with the bound addresses.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from vaccel_core import Config, Session
from vaccel_core.flags import PluginType
from vaccel_core.plugins import get_registry
from vaccel_core.transport import Address, Channel, Message, TransportOptions

REPO = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"^Listening on '(?P<address>[^']+)'$")
START_TIMEOUT = 30.0


def missing_remote_extra() -> str | None:
    """Why the remote tests cannot run here, or None."""
    for module in ("grpc", "google.protobuf", "grpc_health", "grpc_reflection"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return (
                f"the remote tests need the 'remote' extra: {module} is not installed "
                f"(pip install 'pyvaccel[remote]')"
            )
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = missing_remote_extra()
    if reason is None:
        return
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=reason))


@dataclass
class AgentProcess:
    """A running ``vaccel-agent`` process and everything it printed."""

    proc: subprocess.Popen[str]
    addresses: list[str]
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None
    #: The operator's token the agent was started with: an observer that presents it sees
    #: what all clients hold (GetStatus).
    admin_token: bytes | None = None

    #: Where the operator's view is served, when not at :attr:`address` (virtio-mock has no
    #: operator token: its agents also listen on a unix socket for that).
    admin_address: str | None = None

    def observer(self) -> RawClient:
        """A client that sees the whole agent's counts (the operator's view)."""
        return RawClient(
            self.admin_address or self.address,
            TransportOptions(connect_timeout=10, token=self.admin_token),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def address(self) -> str:
        return self.addresses[0]

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> str:
        """Wait for a printed line matching ``pattern`` (a regex); returns it."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if rx.search(line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"agent never logged /{pattern}/ within {timeout} s; log:\n{self.log}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``sig`` and wait for the exit status (kill after ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(
                    f"agent did not stop within {timeout} s of signal {sig}; log:\n{self.log}"
                ) from None
        if self._reader is not None:
            self._reader.join(5)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the agent dies without cleaning up."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def agent_command() -> list[str]:
    """``python -m agent`` with this interpreter (the same code as the console script)."""
    return [sys.executable, "-m", "agent"]


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test environment without inherited VACCEL_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VACCEL_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def start_agent(
    addresses: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    command: Sequence[str] | None = None,
    address_flag: str = "-a",
    timeout: float = START_TIMEOUT,
) -> AgentProcess:
    """Start the agent as a real process and wait until every address listens.

    ``env`` defaults to ``VACCEL_PLUGINS=noop``; ``args`` are extra flags.
    """
    cmd = list(command or agent_command())
    for address in addresses:
        cmd += [address_flag, address]
    cmd += list(args)
    admin_token: str | None = None
    if command is None:  # custom command lines (Kata's exact ones) stay as given
        admin_token = secrets.token_hex(24)
        folder = Path(tempfile.mkdtemp(prefix="vaccel-test-admin-"))
        (folder / "admin-token").write_text(admin_token + "\n")
        cmd += ["--admin-token-file", str(folder / "admin-token")]
    proc = subprocess.Popen(
        cmd,
        env=clean_env(env if env is not None else {"VACCEL_PLUGINS": "noop"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    handle = AgentProcess(
        proc, [], admin_token=admin_token.encode() if admin_token is not None else None
    )

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            handle.lines.append(line.rstrip("\n"))

    handle._reader = threading.Thread(target=read, daemon=True)
    handle._reader.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        bound = [m.group("address") for m in map(LISTENING.match, list(handle.lines)) if m]
        if len(bound) >= len(addresses):
            handle.addresses = bound
            return handle
        if proc.poll() is not None:
            handle._reader.join(5)
            raise AssertionError(
                f"agent exited with status {proc.returncode} before listening; "
                f"command {cmd}; log:\n{handle.log}"
            )
        time.sleep(0.05)
    proc.kill()
    proc.wait(5)
    raise AssertionError(f"agent did not listen within {timeout} s; log:\n{handle.log}")


def remote_config(address: str, **kwargs: Any) -> Config:
    """A client configuration that sends sessions to the agent at ``address``."""
    return Config(plugins=["rpc"], rpc_address=address, **kwargs)


def remote_session(address: str, **kwargs: Any) -> Session:
    return Session(PluginType.REMOTE, config=remote_config(address, **kwargs))


def local_session() -> Session:
    return Session(config=Config(plugins=["noop"]))


class RawClient:
    """One client connection (its own peer id) speaking agent.proto directly."""

    def __init__(self, address: str, options: TransportOptions | None = None) -> None:
        from vaccel_core.proto import pb

        self.pb = pb()
        self.address = address
        parsed = Address.parse(address)
        self.channel: Channel = (
            get_registry()
            .transport(parsed.scheme)
            .connect(parsed, options or TransportOptions(connect_timeout=10))
        )

    def call(self, method: str, msg: Any, reply_type: Any, buffers: Sequence[Any] = ()) -> Any:
        reply = self.channel.call(method, Message(msg.SerializeToString(), tuple(buffers)), 10)
        out = reply_type()
        out.ParseFromString(reply.payload)
        return out

    def status(self) -> Any:
        return self.call("GetStatus", self.pb.StatusRequest(), self.pb.StatusResponse)

    def create_session(self, flags: int = 0) -> int:
        reply = self.call(
            "CreateSession",
            self.pb.CreateSessionRequest(flags=flags),
            self.pb.CreateSessionResponse,
        )
        return int(reply.session_id)

    def noop(self, session_id: int) -> Any:
        request = self.pb.OpRequest(session_id=session_id, op="noop")
        request.noop.SetInParent()
        return self.call("Run", request, self.pb.OpResponse)

    def close(self) -> None:
        self.channel.close()


def make_service(**kwargs: Any) -> Any:
    """The agent service on its own (no transport), serving the noop backend."""
    from agent.service import AgentService

    return AgentService(Config(plugins=["noop"]), get_registry(), session_ttl=None, **kwargs)


@pytest.fixture
def service() -> Iterator[Any]:
    svc = make_service()
    yield svc
    svc.close()


def service_call(
    svc: Any, method: str, msg: Any, reply_type: Any, peer: Any, buffers: Sequence[Any] = ()
) -> Any:
    """One call straight into the service's handler; returns the parsed reply."""
    reply = svc.handle(method, Message(msg.SerializeToString(), tuple(buffers)), peer)
    return reply_type.FromString(bytes(reply.payload))


def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout} s")


@pytest.fixture(params=["unix", "tcp"])
def transport_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def address_for(kind: str, tmp_path: Path) -> str:
    if kind == "unix":
        return f"unix://{tmp_path / 'agent.sock'}"
    return "tcp://127.0.0.1:0"


@pytest.fixture
def agent(transport_kind: str, tmp_path: Path) -> Iterator[AgentProcess]:
    """An agent (noop backend) on a temp unix socket or a free tcp port."""
    handle = start_agent([address_for(transport_kind, tmp_path)])
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def shared_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One unix agent for a whole module (for tests that do not stop or kill it)."""
    path = tmp_path_factory.mktemp("agent") / "agent.sock"
    handle = start_agent([f"unix://{path}"], args=["--log-level", "4"])
    yield handle
    handle.stop()
