"""The remote half of the test suite (tests/remote), run over virtio-mock and vsock.

The test functions are the remote suite's own, imported unchanged; the fixtures they use
(``agent``, ``shared_agent``) are redefined here to start the real agent process on these
transports:

* ``virtio-mock``: the agent serves ``virtio-mock://<tmp>/agent.ctl``; the client is the
  in-process virtio driver.
* ``vsock``: the agent serves ``unix://<tmp>/kata.hvsock_2048`` exactly as under Kata on a
  hybrid-vsock VMM, and the client dials ``vsock://2:2048``; the VMM's part (guest vsock ->
  host ``<uds_path>_2048``) is the labelled stand-in of ``conftest.py``, as no vsock peer
  exists on this machine.

Tests that need something else are left out: the gRPC out-of-band framing check (virtio-mock
carries buffers in descriptors instead), and, for vsock, clients started as other processes
(the stand-in is patched into this process only).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("grpc", reason="the remote suite needs the 'remote' extra (grpcio)")

from tests.remote import test_bad_input_remote as bad_input
from tests.remote import test_catalog_remote as catalog
from tests.remote import test_sessions_remote as sessions
from tests.remote.conftest import AgentProcess, start_agent
from vaccel_transports.vsock import VsockTransport, hybrid_agent_address

from .conftest import standin_open_listener, standin_open_stream

pytestmark = pytest.mark.timeout(120)

KINDS = ["virtio-mock", "vsock"]


def _start(kind: str, folder: Path, patcher: pytest.MonkeyPatch, **kwargs: Any) -> AgentProcess:
    if kind == "virtio-mock":
        # Also on unix, where the tests' operator (the admin token) watches the counts.
        handle = start_agent(
            [f"virtio-mock://{folder / 'agent.ctl'}", f"unix://{folder / 'admin.sock'}"],
            **kwargs,
        )
        handle.addresses, handle.admin_address = handle.addresses[:1], handle.addresses[1]
    else:
        uds_path = str(folder / "kata.hvsock")
        patcher.setattr(VsockTransport, "open_stream", standin_open_stream(uds_path))
        patcher.setattr(VsockTransport, "open_listener", standin_open_listener(uds_path))
        handle = start_agent([hybrid_agent_address(uds_path)], **kwargs)
        handle.addresses = ["vsock://2:2048"]
    handle.kind = kind  # type: ignore[attr-defined]
    return handle


@pytest.fixture(params=KINDS)
def agent(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[AgentProcess]:
    handle = _start(str(request.param), tmp_path, monkeypatch)
    yield handle
    handle.stop()


@pytest.fixture(scope="module", params=KINDS)
def shared_agent(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentProcess]:
    with pytest.MonkeyPatch.context() as patcher:
        handle = _start(
            str(request.param), tmp_path_factory.mktemp("agent"), patcher, args=["--log-level", "4"]
        )
        yield handle
        handle.stop()


# tests/remote/test_catalog_remote.py
test_whole_catalog_remote_equals_local = catalog.test_whole_catalog_remote_equals_local
test_genop_by_name_and_upstream_code_remote = catalog.test_genop_by_name_and_upstream_code_remote
test_tensor_sizes_inline_and_out_of_band = catalog.test_tensor_sizes_inline_and_out_of_band
test_validation_errors_are_the_same_remote = catalog.test_validation_errors_are_the_same_remote

# tests/remote/test_sessions_remote.py
test_another_client_gets_not_found = sessions.test_another_client_gets_not_found
test_two_concurrent_clients_are_isolated = sessions.test_two_concurrent_clients_are_isolated
test_same_model_registered_again_sends_only_its_hash = (
    sessions.test_same_model_registered_again_sends_only_its_hash
)
test_resource_from_a_file_travels_as_a_blob = sessions.test_resource_from_a_file_travels_as_a_blob


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_client_that_goes_away_leaves_zero_sessions(shared_agent: AgentProcess, how: str) -> None:
    if shared_agent.kind == "vsock":  # type: ignore[attr-defined]
        pytest.skip(
            "the client is another process, where the hybrid-vsock stand-in (patched into "
            "this process) does not apply; the unix agent behind it is tested in tests/remote"
        )
    sessions.test_client_that_goes_away_leaves_zero_sessions(shared_agent, how)


# tests/remote/test_bad_input_remote.py
test_garbage_bytes_get_invalid_argument = bad_input.test_garbage_bytes_get_invalid_argument
test_unknown_method_is_unimplemented = bad_input.test_unknown_method_is_unimplemented
test_inconsistent_requests_name_what_is_wrong = (
    bad_input.test_inconsistent_requests_name_what_is_wrong
)


def test_broken_out_of_band_framing_is_refused(shared_agent: AgentProcess) -> None:
    if shared_agent.kind == "virtio-mock":  # type: ignore[attr-defined]
        pytest.skip("gRPC framing check: virtio-mock carries buffers in descriptors instead")
    bad_input.test_broken_out_of_band_framing_is_refused(shared_agent)
