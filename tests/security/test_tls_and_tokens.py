"""Issue 9, attack 13: authentication and transport security on tcp.

The agent runs as a real process; clients are the real tcp transport and the rpc backend."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.remote.conftest import (
    REPO,
    RawClient,
    agent_command,
    clean_env,
    start_agent,
)
from vaccel_core.errors import RemoteError
from vaccel_core.transport import CallError, TlsOptions, TransportOptions

certs = pytest.importorskip("tests.security.certs", reason="needs the cryptography package")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> certs.Pki:
    return certs.make_pki(tmp_path_factory.mktemp("pki"))


def tls(pki: certs.Pki, *, cert: bool = True, rogue: bool = False) -> TlsOptions:
    """Client TLS options: verify the agent with the test CA, present a client certificate."""
    if not cert:
        return TlsOptions(ca=pki.ca.read_bytes())
    chain, key = (pki.rogue_cert, pki.rogue_key) if rogue else (pki.client_cert, pki.client_key)
    return TlsOptions(ca=pki.ca.read_bytes(), cert=chain.read_bytes(), key=key.read_bytes())


def connect(address: str, **options: object) -> RawClient:
    return RawClient(address, TransportOptions(connect_timeout=3, **options))  # type: ignore[arg-type]


def test_tls_agent_serves_tls_clients_and_refuses_plaintext(pki: certs.Pki) -> None:
    agent = start_agent(
        ["tcp://127.0.0.1:0"],
        args=["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)],
    )
    try:
        client = connect(agent.address, tls=tls(pki, cert=False))
        assert client.noop(client.create_session()) is not None
        client.close()
        with pytest.raises(RemoteError, match="cannot reach the vAccel agent"):
            connect(agent.address)  # plaintext against TLS: no connection
        with pytest.raises(RemoteError, match="cannot reach the vAccel agent"):
            connect(agent.address, tls=TlsOptions(ca=pki.rogue_ca.read_bytes()))  # wrong CA
    finally:
        agent.stop()


def test_mutual_tls_refuses_clients_without_a_certificate_of_the_client_ca(
    pki: certs.Pki,
) -> None:
    agent = start_agent(
        ["tcp://127.0.0.1:0"],
        args=[
            "--tls-cert", str(pki.server_cert),
            "--tls-key", str(pki.server_key),
            "--tls-client-ca", str(pki.ca),
        ],
    )  # fmt: skip
    try:
        good = connect(agent.address, tls=tls(pki))
        assert good.noop(good.create_session()) is not None
        for options in (tls(pki, cert=False), tls(pki, rogue=True)):
            with pytest.raises(RemoteError):
                connect(agent.address, tls=options)
        assert good.noop(good.create_session()) is not None, "others keep being served"
        good.close()
    finally:
        agent.stop()


def run_python(script: str, address: str, env: dict[str, str]) -> Any:
    return subprocess.run(
        [sys.executable, "-c", script, address],
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_the_rpc_backend_takes_tls_and_token_from_the_environment(
    pki: certs.Pki, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(32) + "\n")
    agent = start_agent(
        ["tcp://127.0.0.1:0"],
        args=[
            "--tls-cert", str(pki.server_cert),
            "--tls-key", str(pki.server_key),
            "--tls-client-ca", str(pki.ca),
            "--token-file", str(token),
        ],
    )  # fmt: skip
    script = (
        "from vaccel_core import Config, Session\n"
        "import sys\n"
        "with Session(config=Config(plugins=['rpc'], rpc_address=sys.argv[1])) as s:\n"
        "    s.noop()\n"
        "print('ok')\n"
    )
    env = {
        "VACCEL_RPC_TLS_CA": str(pki.ca),
        "VACCEL_RPC_TLS_CERT": str(pki.client_cert),
        "VACCEL_RPC_TLS_KEY": str(pki.client_key),
        "VACCEL_RPC_TOKEN_FILE": str(token),
    }
    try:
        run = run_python(script, agent.address, env)
        assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
        del env["VACCEL_RPC_TOKEN_FILE"]
        run = run_python(script, agent.address, env)
        assert run.returncode != 0
        assert "missing or wrong token" in run.stderr and "VACCEL_RPC_TOKEN_FILE" in run.stderr
    finally:
        agent.stop()


def test_token_is_required_for_every_call_but_health(tmp_path: Path) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    token = secrets.token_hex(32).encode()
    (tmp_path / "token").write_bytes(token + b"\n")
    agent = start_agent(
        [f"unix://{tmp_path / 'a.sock'}"], args=["--token-file", str(tmp_path / "token")]
    )
    try:
        with pytest.raises(CallError, match="missing or wrong token") as err:
            connect(agent.address)
        assert err.value.status == "UNAUTHENTICATED"
        with pytest.raises(CallError, match="missing or wrong token"):
            connect(agent.address, token=b"x" * len(token))
        client = connect(agent.address, token=token)
        assert client.noop(client.create_session()) is not None
        client.close()
        with grpc.insecure_channel(f"unix:{tmp_path / 'a.sock'}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as denied:
                channel.unary_unary("/vaccel.agent.v1.Agent/GetStatus")(b"", timeout=5)
            assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        agent.stop()


def test_short_or_unreadable_token_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "short").write_text("secret\n")
    for path, message in (
        (tmp_path / "short", "expected a token of 16 to 4096 bytes"),
        (tmp_path / "missing", "cannot read"),
    ):
        run = subprocess.run(
            [*agent_command(), "-a", f"unix://{tmp_path / 'x.sock'}", "--token-file", str(path)],
            env=clean_env({"VACCEL_PLUGINS": "noop"}),
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
        )
        assert run.returncode == 2 and "--token-file" in run.stderr and message in run.stderr


def _refused(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*agent_command(), *args],
        env=clean_env({"VACCEL_PLUGINS": "noop"}),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )


def test_non_loopback_tcp_without_tls_is_refused_unless_insecure() -> None:
    run = _refused(["-a", "tcp://0.0.0.0:0"])
    assert run.returncode == 1
    assert "refusing to listen on tcp://0.0.0.0:0 without TLS" in run.stderr
    assert "--insecure" in run.stderr and "Listening on" not in run.stdout
    agent = start_agent(["tcp://0.0.0.0:0"], args=["--insecure"])
    try:
        assert agent.address.startswith("tcp://0.0.0.0:")
    finally:
        agent.stop()


def test_a_tcp_port_in_use_is_an_error_naming_it() -> None:
    first = start_agent(["tcp://127.0.0.1:0"])
    try:
        port = first.address.rsplit(":", 1)[1]
        run = _refused(["-a", f"tcp://127.0.0.1:{port}"])
        assert run.returncode == 1, run.stdout
        assert f"cannot listen on tcp://127.0.0.1:{port}: the address is in use" in run.stderr
        assert "Listening on" not in run.stdout
        # Not shared either: every connection still reaches the first agent.
        with socket.create_connection(("127.0.0.1", int(port)), timeout=5):
            pass
        client = RawClient(first.address)
        assert client.status().version
        client.close()
    finally:
        first.stop()


def test_a_socket_others_could_open_is_refused_unless_insecure(tmp_path: Path) -> None:
    address = f"unix://{tmp_path / 'w.sock'}"
    run = _refused(["-a", address, "--socket-mode", "777"])
    assert run.returncode == 1
    assert "socket mode 777: any local user could connect" in run.stderr
    agent = start_agent([address], args=["--socket-mode", "777", "--insecure"])
    try:
        assert (tmp_path / "w.sock").stat().st_mode & 0o777 == 0o777
    finally:
        agent.stop()


def test_client_tls_variables_are_checked() -> None:
    from vaccel_plugins.rpc.settings import client_options

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("VACCEL_RPC_TLS")}
    try:
        assert client_options().tls is None
        os.environ["VACCEL_RPC_TLS"] = "1"
        options = client_options()
        assert options.tls is not None and options.tls.ca is None  # the system's roots
        os.environ["VACCEL_RPC_TLS_CERT"] = str(Path(__file__))
        with pytest.raises(Exception, match="VACCEL_RPC_TLS_CERT and VACCEL_RPC_TLS_KEY"):
            client_options()
        os.environ["VACCEL_RPC_TLS_KEY"] = "/nonexistent/key.pem"
        with pytest.raises(Exception, match="VACCEL_RPC_TLS_KEY: cannot read"):
            client_options()
    finally:
        for key in [k for k in os.environ if k.startswith("VACCEL_RPC_TLS")]:
            del os.environ[key]
        os.environ.update(saved)
