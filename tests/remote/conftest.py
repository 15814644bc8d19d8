"""Fixtures for remote tests: the agent as a REAL process, and clients that talk to it.

``start_agent(addresses, env=..., args=...)`` is reusable by other transports' tests: pass any
addresses (``unix://``, ``tcp://...:0``, ``vsock://``, ``virtio-mock://``); it waits for one
``Listening on '<address>'`` line per address and returns a handle with the bound addresses.

The wire (``pytest tests/remote --wire=unix|vsock|grpc``, or ``PYVACCEL_TEST_WIRE``): the agents
of these tests listen on unix sockets, which serve ttrpc and gRPC on the same socket; the wire
says how the tests' clients reach them (:func:`client_address`, applied by ``remote_session``,
``remote_config``, ``RawClient`` and ``AgentProcess.address``):

* ``unix`` (default): ``unix://PATH``, ttrpc;
* ``vsock``: ``vsock://2:PORT``, ttrpc over the vsock transport, routed to the agent's socket as
  a hybrid-vsock VMM routes a guest's connection (:class:`HybridVsockStandIn`; each agent socket
  gets its own port);
* ``grpc``: ``grpc+unix://PATH``, gRPC (relayed by the agent's listener to its gRPC server).

Tests that cannot go over another wire are skipped there with the reason (:data:`ONE_WIRE`).
"""

from __future__ import annotations

import errno
import importlib.util
import itertools
import os
import re
import secrets
import signal
import socket
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


# The wire ----------------------------------------------------------------------------------------
WIRES = ("unix", "vsock", "grpc")
#: The environment variable that picks the wire when ``--wire`` is not given.
WIRE_VARIABLE = "PYVACCEL_TEST_WIRE"

#: Tests (``file::name`` prefixes) that cannot run over a wire other than the default, and why.
#: Whole files that never connect a client to an agent are here too: under another wire they
#: would only run again unchanged.
ONE_WIRE: dict[str, str] = {
    "test_allocator.py": "no client connection in this file",
    "test_service_races.py": "no client connection in this file (the service is called directly)",
    "test_status_for.py": "no client connection in this file",
    "test_wire_schema.py": "no client connection in this file",
    "test_grpc_transport.py": (
        "these transport tests choose their wires themselves (unix, grpc+unix, tcp, ttrpc+tcp "
        "parameters, in-process listeners)"
    ),
    **dict.fromkeys(
        (
            "test_agent_process.py::test_health_serving_then_not_serving_while_stopping",
            "test_agent_process.py::test_reflection_lists_the_agent_service",
            "test_agent_process.py::test_plain_grpc_client_can_call_typed_methods",
            "test_agent_process.py::test_grpcurl_lists_the_service",
        ),
        "a gRPC tool (grpcio's own channel, grpcurl) dials the agent's unix socket itself: "
        "gRPC on unix whatever the wire",
    ),
    "test_agent_process.py::test_issue_done_criterion_vaccel_noop_against_the_agent": (
        "the client is another process given the issue's unix:// address as it stands"
    ),
    "test_sessions_remote.py::test_killed_agent_gives_a_clear_error_and_a_restarted_one_serves": (
        "it asserts that the errors name the unix:// address the test dials, which the wire "
        "replaces"
    ),
}
#: Tests that cannot run over one particular wire, and why.
NOT_OVER: dict[str, dict[str, str]] = {
    "vsock": {
        "test_sessions_remote.py::test_client_that_goes_away_leaves_zero_sessions": (
            "the client is another process, where the hybrid-vsock stand-in (patched into this "
            "process only) does not route vsock://2:PORT"
        ),
    },
    "grpc": {},
}
_wire = "unix"  # the wire of the test running now (set for tests under tests/remote only)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--wire",
        choices=WIRES,
        default=None,
        help=(
            "how the remote tests' clients reach their agents: unix (ttrpc, default), vsock "
            "(ttrpc over vsock://2:PORT, hybrid-vsock routing), grpc (grpc+unix://); "
            f"default: ${WIRE_VARIABLE} or unix"
        ),
    )


def selected_wire(config: pytest.Config) -> str:
    """The wire asked for on the command line, else in the environment, else ``unix``."""
    wire = config.getoption("wire", default=None) or os.environ.get(WIRE_VARIABLE) or "unix"
    if wire not in WIRES:
        raise pytest.UsageError(f"{WIRE_VARIABLE}={wire!r}: expected one of {', '.join(WIRES)}")
    return str(wire)


class HybridVsockStandIn:
    """LABELLED STAND-IN for a hybrid-vsock VMM (Firecracker, Cloud Hypervisor, Dragonball).

    Such a VMM turns a guest's connection to ``vsock://2:PORT`` into a connection to the host
    unix socket ``<uds_path>_PORT``. No AF_VSOCK peer can exist on this machine (no vsock
    device to a host we control, no vsock_loopback), so this replaces
    ``VsockTransport.open_stream`` in the test process: a ``vsock://2:PORT`` connection becomes
    an AF_UNIX connection to the agent socket given that port (each agent socket gets its own
    port, so the socket plays ``<uds_path>_PORT``). Everything above the socket (the vsock
    transport's connect, ttrpc, the agent's listener) is the real code. As the VMM does, it
    resets the connection when no agent listens for the port, and routes only the host's CID.
    """

    FIRST_PORT = 2048  # Kata's vAccel port, then upwards

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ports: dict[str, int] = {}
        self._sockets: dict[int, str] = {}
        self._next = itertools.count(self.FIRST_PORT)

    def port_of(self, path: str) -> int:
        """The vsock port that reaches the agent socket at ``path`` (the same one every time)."""
        path = os.path.abspath(path)
        with self._lock:
            port = self._ports.get(path)
            if port is None:
                port = self._ports[path] = next(self._next)
                self._sockets[port] = path
            return port

    def open_stream(self, target: Any, timeout: float) -> socket.socket:
        """What ``VsockTransport.open_stream(target, timeout)`` returns under hybrid vsock."""
        from vaccel_transports.vsock import CID_HOST

        if target.cid != CID_HOST:
            raise OSError(errno.ENODEV, "a hybrid-vsock guest reaches only the host (CID 2)")
        path = self._sockets.get(target.port)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            if path is None:
                raise ConnectionResetError(errno.ECONNRESET, "no host socket for this port")
            try:
                sock.connect(path)
            except (FileNotFoundError, ConnectionRefusedError):
                # The VMM finds nobody at <uds_path>_PORT and resets the guest's connection.
                raise ConnectionResetError(
                    errno.ECONNRESET, os.strerror(errno.ECONNRESET)
                ) from None
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return sock


HYBRID_VSOCK = HybridVsockStandIn()


def client_address(address: str) -> str:
    """Where a client of the running test dials the agent listening at ``address``: the same
    address, except a ``unix://`` one under ``--wire=vsock`` or ``--wire=grpc``."""
    if _wire == "unix" or not address.startswith("unix://"):
        return address
    if _wire == "grpc":
        return "grpc+" + address
    from vaccel_transports.vsock import CID_HOST

    return f"vsock://{CID_HOST}:{HYBRID_VSOCK.port_of(address[len('unix://') :])}"


@pytest.fixture(autouse=True)
def wire(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every test here runs with its clients on the selected wire (see :func:`client_address`)."""
    global _wire
    wire = selected_wire(request.config)
    if wire == "vsock":
        from vaccel_transports.vsock import VsockTransport

        def open_stream(self: Any, target: Any, timeout: float) -> socket.socket:
            return HYBRID_VSOCK.open_stream(target, timeout)

        monkeypatch.setattr(VsockTransport, "open_stream", open_stream)
    _wire = wire
    try:
        yield wire
    finally:
        _wire = "unix"


def _one_wire_reason(item: pytest.Item, wire: str, here: Path) -> str | None:
    """Why ``item`` does not run over ``wire``, or None."""
    name = Path(item.path).resolve().relative_to(here).as_posix() + "::" + item.name
    for table in (ONE_WIRE, NOT_OVER.get(wire, {})):
        for prefix, reason in table.items():
            if name == prefix or name.startswith((prefix + "::", prefix + "[")):
                return reason
    params = getattr(item, "callspec", None)
    if params is not None and params.params.get("transport_kind") == "tcp":
        return "the tcp variant: tcp:// is gRPC over tcp whatever the wire (the default run has it)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    mine = [item for item in items if here in Path(item.path).resolve().parents]
    reason = missing_remote_extra()
    if reason is not None:
        for item in mine:
            item.add_marker(pytest.mark.skip(reason=reason))
        return
    wire = selected_wire(config)
    if wire == "unix":
        return
    for item in mine:
        why = _one_wire_reason(item, wire, here)
        if why is not None:
            item.add_marker(pytest.mark.skip(reason=f"not over --wire={wire}: {why}"))


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
        """The first address, as the running test's clients dial it (:func:`client_address`:
        under ``--wire`` not always what :attr:`addresses` says the agent listens on)."""
        return client_address(self.addresses[0])

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
    """``python -m vaccel_agent`` with this interpreter (the same code as the console script)."""
    return [sys.executable, "-m", "vaccel_agent"]


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
    return Config(plugins=["rpc"], rpc_address=client_address(address), **kwargs)


def remote_session(address: str, **kwargs: Any) -> Session:
    return Session(PluginType.REMOTE, config=remote_config(address, **kwargs))


def local_session() -> Session:
    return Session(config=Config(plugins=["noop"]))


class RawClient:
    """One client connection (its own peer id) speaking agent.proto directly."""

    def __init__(self, address: str, options: TransportOptions | None = None) -> None:
        from vaccel_core.proto import pb

        self.pb = pb()
        self.address = address = client_address(address)
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
    from vaccel_agent.service import AgentService

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
