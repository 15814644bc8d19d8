"""The agent as a process: Kata's command lines, signals, socket files, health, reflection."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

from vaccel_agent.cli import build_parser, make_config

from .conftest import (
    AgentProcess,
    RawClient,
    agent_command,
    clean_env,
    remote_session,
    start_agent,
)

pytestmark = pytest.mark.timeout(90)


def grpc_target(address: str) -> str:
    """gRPC's own spelling of one of our addresses."""
    if address.startswith("unix://"):
        return "unix:" + address[len("unix://") :]
    return address[len("tcp://") :]


def console_script() -> list[str]:
    """The installed ``vaccel-agent`` script next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).parent / "vaccel-agent"
    return [str(script)] if script.exists() else agent_command()


def test_kata_go_runtime_command_line(tmp_path: Path) -> None:
    """vaccelrt-agent --server-address unix://<sandbox>/kata.hvsock_2048, VACCEL_BACKENDS."""
    sock = tmp_path / "kata.hvsock_2048"
    handle = start_agent(
        [f"unix://{sock}"],
        env={"VACCEL_BACKENDS": "/usr/local/lib/libvaccel-noop.so"},
        command=console_script(),
        address_flag="--server-address",
    )
    try:
        assert handle.addresses == [f"unix://{sock}"]
        with remote_session(handle.address) as session:
            session.noop()
            assert session.classify(b"img") == (
                "This is a dummy classification tag!",
                "This is a dummy imgname!",
            )
        assert handle.stop() == 0
    finally:
        handle.kill()
    assert not sock.exists(), "the socket file is removed on stop"


def test_kata_rust_runtime_command_line(tmp_path: Path) -> None:
    """<agent_path> -a tcp://127.0.0.1:<port> with VACCEL_PLUGINS/LOG_LEVEL/PROFILING."""
    handle = start_agent(
        ["tcp://127.0.0.1:0"],
        env={
            "VACCEL_PLUGINS": "libvaccel-noop.so",
            "VACCEL_LOG_LEVEL": "4",
            "VACCEL_PROFILING_ENABLED": "1",
        },
        command=console_script(),
    )
    try:
        assert handle.address.startswith("tcp://127.0.0.1:")
        assert not handle.address.endswith(":0")
        with remote_session(handle.address, profiling=True) as session:
            session.noop()
            regions = {r.name: r for r in session.profile()}
        assert regions["agent:noop"].entries == 1, "agent-side timing merged into the profile"
        assert regions["noop"].entries == 1
        handle.wait_for_log(r"\[noop\] noop in session")  # log level 4 reached the agent
        handle.wait_for_log(r"agent holds 1 session")  # counts at debug level
        assert handle.stop() == 0
    finally:
        handle.kill()
    assert "[prof] noop" in handle.log, "the agent's profiling regions are logged"


def test_vaccel_config_and_plugins_flags_override_environment() -> None:
    args = build_parser().parse_args(
        [
            "-a",
            "unix:///x",
            "-a",
            "tcp://1.2.3.4:5",
            "--vaccel-config",
            "plugins=libvaccel-noop.so,libvaccel-onnxruntime.so,log_level=4",
        ]
    )
    assert args.addresses == ["unix:///x", "tcp://1.2.3.4:5"]
    os.environ["VACCEL_PLUGINS"] = "jetson"
    try:
        config = make_config(args)
        assert config.plugins == ["noop", "onnxruntime"]
        assert config.log_level == 4
        config = make_config(build_parser().parse_args(["--plugins", "/usr/lib/libvaccel-noop.so"]))
        assert config.plugins == ["noop"]
        assert make_config(build_parser().parse_args([])).plugins == ["jetson"]
    finally:
        del os.environ["VACCEL_PLUGINS"]


def test_several_listeners_at_once(tmp_path: Path) -> None:
    handle = start_agent([f"unix://{tmp_path / 'a.sock'}", "tcp://127.0.0.1:0"])
    try:
        assert len(handle.addresses) == 2
        for address in handle.addresses:
            with remote_session(address) as session:
                session.noop()
    finally:
        assert handle.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_stops_cleanly_within_5s(tmp_path: Path, sig: int) -> None:
    sock = tmp_path / "v.sock"
    handle = start_agent([f"unix://{sock}"], args=["--log-level", "3"])
    client = RawClient(handle.address)  # an attached client must not delay the stop
    try:
        client.create_session()
        start = time.monotonic()
        assert handle.stop(sig, timeout=10) == 0
        elapsed = time.monotonic() - start
    finally:
        client.close()
        handle.kill()
    assert elapsed < 5.0, f"stopped in {elapsed:.1f} s"
    assert not sock.exists()
    assert "agent stopped" in handle.log


def test_in_flight_call_finishes_during_stop(tmp_path: Path) -> None:
    """An 8 MiB call racing with SIGTERM either completes or fails cleanly."""
    import numpy as np

    handle = start_agent([f"unix://{tmp_path / 'v.sock'}"])
    outcome: list[object] = []
    try:
        session = remote_session(handle.address)
        big = np.ones(2 << 20, dtype=np.float32)

        def call() -> None:
            try:
                outcome.append(session.fpga_arraycopy(big.astype(np.int32)))
            except Exception as exc:
                outcome.append(exc)

        worker = threading.Thread(target=call)
        worker.start()
        time.sleep(0.2)
        assert handle.stop(timeout=10) == 0
        worker.join(20)
        assert not worker.is_alive()
    finally:
        handle.kill()
    assert len(outcome) == 1
    result = outcome[0]
    if isinstance(result, Exception):
        assert "agent" in str(result), f"a clean error that names the agent: {result!r}"
    else:
        assert result.shape == (2 << 20,)


def test_unix_socket_is_owner_only_and_mode_is_configurable(tmp_path: Path) -> None:
    handle = start_agent([f"unix://{tmp_path / 'a.sock'}"])
    try:
        mode = stat.S_IMODE(os.stat(tmp_path / "a.sock").st_mode)
        assert mode == 0o600
    finally:
        handle.stop()
    handle = start_agent([f"unix://{tmp_path / 'b.sock'}"], args=["--socket-mode", "660"])
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "b.sock").st_mode) == 0o660
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".v")] == []
    finally:
        handle.stop()


def test_stale_socket_is_replaced_and_live_one_refused(tmp_path: Path) -> None:
    sock = tmp_path / "v.sock"
    first = start_agent([f"unix://{sock}"])
    first.kill()  # leaves a stale socket file behind
    assert sock.exists()
    second = start_agent([f"unix://{sock}"])
    try:
        with remote_session(second.address) as session:
            session.noop()
        import subprocess

        third = subprocess.run(
            [*agent_command(), "-a", f"unix://{sock}"],
            env=clean_env({"VACCEL_PLUGINS": "noop"}),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert third.returncode == 1
        assert "another process is listening there" in third.stderr
    finally:
        second.stop()


def test_unknown_backend_fails_at_start_with_a_clear_error(tmp_path: Path) -> None:
    import subprocess

    run = subprocess.run(
        [*agent_command(), "-a", f"unix://{tmp_path / 'v.sock'}"],
        env=clean_env({"VACCEL_PLUGINS": "libvaccel-nosuch.so"}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 1
    assert "unknown backend 'nosuch'" in run.stderr
    assert not (tmp_path / "v.sock").exists()


def test_health_serving_then_not_serving_while_stopping(agent: AgentProcess) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(grpc_target(agent.address)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "vaccel.agent.v1.Agent"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=20)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        agent.proc.send_signal(signal.SIGTERM)
        statuses = []
        try:
            for reply in watch:
                statuses.append(reply.status)
        except grpc.RpcError:
            pass
        assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
    assert agent.stop() == 0


def test_reflection_lists_the_agent_service(agent: AgentProcess) -> None:
    import grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(grpc_target(agent.address)) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="vaccel.agent.v1.Agent"),
        ]
        replies = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"vaccel.agent.v1.Agent", "grpc.health.v1.Health"} <= names
    files = replies[1].file_descriptor_response.file_descriptor_proto
    assert files and b"RegisterResource" in files[0]


def test_plain_grpc_client_can_call_typed_methods(agent: AgentProcess) -> None:
    """What grpcurl does with reflection: the methods take and return agent.proto messages.
    GetStatus needs nothing; session methods need the capability an Attach stream returns
    (what `grpcurl ... Attach` in one shell and `-H 'vaccel-capability: ...'` in another do)."""
    import grpc

    from vaccel_core.proto import pb

    with grpc.insecure_channel(grpc_target(agent.address)) as channel:
        status = channel.unary_unary(
            "/vaccel.agent.v1.Agent/GetStatus",
            request_serializer=pb().StatusRequest.SerializeToString,
            response_deserializer=pb().StatusResponse.FromString,
        )(pb().StatusRequest(), timeout=5)
        assert "noop" in status.backends
        create = channel.unary_unary(
            "/vaccel.agent.v1.Agent/CreateSession",
            request_serializer=pb().CreateSessionRequest.SerializeToString,
            response_deserializer=pb().CreateSessionResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as err:
            create(pb().CreateSessionRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "open an Attach stream first" in (err.value.details() or "")
        attach = channel.unary_stream(
            "/vaccel.agent.v1.Agent/Attach",
            request_serializer=pb().AttachRequest.SerializeToString,
            response_deserializer=pb().AttachEvent.FromString,
        )(pb().AttachRequest(client="test"))
        event = next(attach)
        assert len(event.capability) >= 43 and event.peer_id
        metadata = (("vaccel-capability", event.capability),)
        made = create(pb().CreateSessionRequest(), timeout=5, metadata=metadata)
        assert made.session_id > 0 and list(made.backends) == ["noop"]
        attach.cancel()


@pytest.mark.skipif(shutil.which("grpcurl") is None, reason="grpcurl is not installed")
def test_grpcurl_lists_the_service(agent: AgentProcess) -> None:  # pragma: no cover
    import subprocess

    target = agent.address
    cmd = ["grpcurl", "-plaintext"]
    if target.startswith("unix://"):
        cmd += ["-unix", target[len("unix://") :], "list"]
    else:
        cmd += [target[len("tcp://") :], "list"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
    assert "vaccel.agent.v1.Agent" in out


def test_issue_done_criterion_vaccel_noop_against_the_agent(tmp_path: Path) -> None:
    """vaccel-agent -a unix://S; VACCEL_PLUGINS=rpc VACCEL_RPC_ADDRESS=unix://S vaccel noop."""
    import subprocess

    sock = tmp_path / "v.sock"
    handle = start_agent([f"unix://{sock}"], command=console_script())
    try:
        script = Path(sys.executable).parent / "vaccel"
        cmd = [str(script)] if script.exists() else [sys.executable, "-m", "vaccel_core.cli"]
        for variable in ("VACCEL_RPC_ADDRESS", "VACCEL_VSOCK"):  # VACCEL_VSOCK: older name
            run = subprocess.run(
                [*cmd, "noop"],
                env=clean_env({"VACCEL_PLUGINS": "rpc", variable: f"unix://{sock}"}),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert run.returncode == 0, run.stderr
            assert "noop: ok (backend rpc)" in run.stdout
    finally:
        handle.stop()


def test_stop_within_5s_while_a_backend_call_is_stuck(tmp_path: Path) -> None:
    """A call still running in a backend neither delays the exit nor hangs its client."""
    from tests.remote.slow_backend import LAUNCHER

    handle = start_agent(
        [f"unix://{tmp_path / 'v.sock'}"],
        command=[sys.executable, "-c", LAUNCHER],
        env={"VACCEL_PLUGINS": "slow", "VACCEL_TEST_SLOW_SECONDS": "30"},
    )
    errors: list[BaseException] = []
    try:
        session = remote_session(handle.address)

        def call() -> None:
            try:
                session.noop()
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=call, daemon=True)
        worker.start()
        time.sleep(0.5)
        start = time.monotonic()
        assert handle.stop(timeout=10) == 0
        elapsed = time.monotonic() - start
        worker.join(10)
        assert not worker.is_alive(), "the client got an answer"
    finally:
        handle.kill()
    assert elapsed < 5.0, f"stopped in {elapsed:.1f} s"
    assert len(errors) == 1 and handle.address in str(errors[0]), errors
