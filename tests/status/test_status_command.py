"""``vaccel status`` against a real agent process: exact counts after a known mix of calls,
what the operator and a plain client each see, and an unreachable agent."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.remote.conftest import AgentProcess, RawClient, missing_remote_extra
from vaccel_core.transport import CallError, TransportOptions

from .conftest import run_status

pytestmark = pytest.mark.skipif(
    missing_remote_extra() is not None, reason=str(missing_remote_extra())
)


def _known_mix(agent: AgentProcess) -> tuple[RawClient, RawClient]:
    """Two guests. A: 2 sessions (one destroyed), 5 noops, 2 noops on a session it does not
    have (NOT_FOUND). B: 1 session, 3 noops. Each connection also made one GetStatus (the
    ttrpc client's check that an agent answers)."""
    a, b = RawClient(agent.address), RawClient(agent.address)
    first, second = a.create_session(), a.create_session()
    for _ in range(5):
        a.noop(first)
    for _ in range(2):
        with pytest.raises(CallError) as failure:
            a.noop(4242)
        assert failure.value.status == "NOT_FOUND"
    a.call(
        "DestroySession", a.pb.DestroySessionRequest(session_id=second), a.pb.DestroySessionResponse
    )
    mine = b.create_session()
    for _ in range(3):
        b.noop(mine)
    return a, b


def _calls(snap: dict[str, Any]) -> dict[tuple[str, str, str], tuple[int, int]]:
    return {
        (c["method"], c["operation"], c["backend"]): (c["calls"], c["errors"])
        for c in snap["calls"]
    }


def test_once_json_gives_exact_counts_after_a_known_mix_of_calls(
    agent: AgentProcess, admin_token_file: Path
) -> None:
    a, b = _known_mix(agent)
    try:
        out = run_status(
            "--once",
            "--json",
            agent.address,
            env={"VACCEL_RPC_ADMIN_TOKEN_FILE": str(admin_token_file)},
        )
        assert out.returncode == 0, out.stderr
        snap = json.loads(out.stdout)
        assert snap["view"] == "operator"
        assert snap["address"] == agent.address
        assert snap["backends"][0] == "noop"
        assert (snap["sessions"], snap["resources"], snap["blobs"]) == (2, 0, 0)
        assert snap["clients_connected"] == 3, "A, B and the status command's own connection"
        assert _calls(snap) == {
            ("CreateSession", "", ""): (3, 0),
            ("DestroySession", "", ""): (1, 0),
            ("Run", "noop", "noop"): (8, 0),
            ("Run", "noop", ""): (2, 2),  # no such session: no backend ran it
            # one per connection (A, B, the command's own); the command's poll is in flight
            ("GetStatus", "", ""): (3, 0),
        }
        bounds = snap["bucket_bounds_seconds"]
        assert bounds == sorted(bounds) and all(b > 0 for b in bounds)
        for entry in snap["calls"]:
            assert len(entry["buckets"]) == len(bounds) + 1, "one more bucket: +Inf"
            assert sum(entry["buckets"]) == entry["calls"]
            assert entry["p50_seconds"] is not None and entry["p50_seconds"] <= entry["p99_seconds"]
            assert entry["seconds"] > 0
        assert snap["rejections"] == {}
        assert snap["uptime_seconds"] > 0
        me, guest_b, guest_a = sorted(snap["clients"], key=lambda c: c["calls"])
        assert me["caller"] and not guest_a["caller"] and not guest_b["caller"]
        assert me["in_flight"] == 1, "its GetStatus is being served"
        # A: its connect check, 2 CreateSession, 7 Run, 1 DestroySession; 2 failed
        assert (guest_a["sessions"], guest_a["calls"], guest_a["errors"]) == (1, 11, 2)
        assert (guest_b["sessions"], guest_b["calls"], guest_b["errors"]) == (1, 5, 0)
        for client in snap["clients"]:
            assert client["transport"] == "unix"
            assert client["id"].startswith("client-")
            assert abs(client["connected_at"] - time.time()) < 120
        assert snap["calls_in_flight"] == 1
    finally:
        a.close()
        b.close()


def test_json_keys_are_the_documented_ones(agent: AgentProcess, admin_token_file: Path) -> None:
    """docs/status.md lists every key of the JSON snapshot; a key added or renamed fails here."""
    from tests.remote.conftest import REPO

    doc = (REPO / "docs" / "status.md").read_text()
    out = run_status("--once", "--json", "--admin-token-file", str(admin_token_file), agent.address)
    assert out.returncode == 0, out.stderr
    snap = json.loads(out.stdout)
    keys = set(snap) | {f"calls[].{k}" for k in snap["calls"][0]}
    keys |= {f"clients[].{k}" for k in snap["clients"][0]}
    documented = {k for k in keys if f"`{k}`" in doc}
    assert documented == keys, f"not in docs/status.md: {sorted(keys - documented)}"


def test_a_guest_sees_only_itself_never_another_guests_clients_or_sessions(
    agent: AgentProcess,
) -> None:
    a, b = _known_mix(agent)
    operator = agent.observer()
    try:
        everything = operator.status()
        assert everything.view_all and len(everything.clients) == 3
        a_id = next(c.id for c in everything.clients if c.sessions == 1 and c.calls == 11)
        b_id = next(c.id for c in everything.clients if c.sessions == 1 and c.calls == 5)

        seen_by_b = b.status()
        assert not seen_by_b.view_all
        assert (seen_by_b.sessions, seen_by_b.resources, seen_by_b.peers) == (1, 0, 1)
        assert len(seen_by_b.calls) == 0 and len(seen_by_b.rejections) == 0
        assert [(c.id, c.caller, c.sessions) for c in seen_by_b.clients] == [(b_id, True, 1)]
        # Nothing of A anywhere in the bytes B received.
        assert a_id.encode() not in seen_by_b.SerializeToString()

        seen_by_a = a.status()
        assert [c.id for c in seen_by_a.clients] == [a_id] and seen_by_a.sessions == 1
        assert b_id.encode() not in seen_by_a.SerializeToString()
    finally:
        for client in (a, b, operator):
            client.close()


def test_a_wrong_admin_token_or_none_gives_the_client_view(
    agent: AgentProcess, tmp_path: Path
) -> None:
    guest = RawClient(agent.address)
    try:
        guest.create_session()
        wrong = tmp_path / "wrong-token"
        wrong.write_text("not-the-admin-token-0123456789\n")
        for args in ((), ("--admin-token-file", str(wrong))):
            out = run_status("--once", "--json", *args, agent.address)
            assert out.returncode == 0, out.stderr
            snap = json.loads(out.stdout)
            assert snap["view"] == "client"
            assert (snap["sessions"], snap["calls"], snap["rejections"]) == (0, [], {})
            assert [c["caller"] for c in snap["clients"]] == [True]
            assert snap["clients"][0]["sessions"] == 0
        text = run_status("--once", agent.address, env={"COLUMNS": "140"})
        assert text.returncode == 0, text.stderr
        assert "this client only" in text.stdout and "operator" in text.stdout
    finally:
        guest.close()


def test_over_grpc_an_attached_guest_sees_itself_and_the_operator_sees_it(
    agent: AgentProcess, admin_token_file: Path
) -> None:
    grpc_address = "grpc+" + agent.addresses[0]
    guest = RawClient(grpc_address)
    try:
        guest.create_session()
        own = guest.status()
        assert not own.view_all and own.sessions == 1
        assert [(c.caller, c.transport, c.sessions) for c in own.clients] == [(True, "unix", 1)]
        operator = RawClient(grpc_address, TransportOptions(token=agent.admin_token))
        try:
            seen = operator.status()
            assert seen.view_all
            assert sorted((c.caller, c.sessions) for c in seen.clients) == [(False, 1), (True, 0)]
        finally:
            operator.close()
        out = run_status(
            "--once", "--json", "--admin-token-file", str(admin_token_file), grpc_address
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["sessions"] == 1
    finally:
        guest.close()


def test_rejections_are_counted_by_limit(tmp_path: Path) -> None:
    from tests.remote.conftest import start_agent

    agent = start_agent([f"unix://{tmp_path / 'agent.sock'}"], args=["--max-sessions", "1"])
    try:
        guest = RawClient(agent.address)
        guest.create_session()
        with pytest.raises(CallError) as refused:
            guest.create_session()
        assert refused.value.status == "RESOURCE_EXHAUSTED"
        token = tmp_path / "admin"
        assert agent.admin_token is not None
        token.write_bytes(agent.admin_token)
        out = run_status("--once", "--json", "--admin-token-file", str(token), agent.address)
        assert out.returncode == 0, out.stderr
        snap = json.loads(out.stdout)
        assert snap["rejections"] == {"max_sessions": 1}
        assert _calls(snap)["CreateSession", "", ""] == (2, 1)
        text = run_status("--once", "--admin-token-file", str(token), agent.address)
        assert "max_sessions 1" in text.stdout
        guest.close()
    finally:
        agent.stop()


@pytest.mark.parametrize(
    "address, why",
    [
        ("unix:///nonexistent/vaccel.sock", "no socket at /nonexistent/vaccel.sock"),
        ("tcp://127.0.0.1:1", "no connection within 1 s"),
    ],
)
def test_an_unreachable_agent_is_a_one_line_error_naming_the_address(
    address: str, why: str
) -> None:
    start = time.monotonic()
    for args in (("--once", "--json"), ()):
        out = run_status(*args, "--timeout", "1", address, timeout=20)
        assert out.returncode == 1
        assert out.stdout == ""
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, out.stderr
        assert lines[0].startswith("vaccel status: error: ")
        assert address in lines[0] and why in lines[0]
        assert "Traceback" not in out.stderr
    assert time.monotonic() - start < 15


def test_default_address_is_vaccel_rpc_address(agent: AgentProcess) -> None:
    out = run_status("--once", "--json", env={"VACCEL_RPC_ADDRESS": agent.address})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["address"] == agent.address


NOWHERE = "unix:///nonexistent/vaccel.sock"


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ("--interval", "0", NOWHERE),
            "--interval: expected a positive number of seconds, got 0.0",
        ),
        (
            ("--timeout", "-1", NOWHERE),
            "--timeout: expected a positive number of seconds, got -1.0",
        ),
        (
            ("--interval", "inf", NOWHERE),
            "--interval: expected a positive number of seconds, got inf",
        ),
        (
            ("--timeout", "nan", NOWHERE),
            "--timeout: expected a positive number of seconds, got nan",
        ),
        (("--json", NOWHERE), "--json prints one snapshot: use it with --once"),
        (("--once", "not-an-address"), "expected SCHEME://TARGET"),
        (("--once", "--admin-token-file", "/nonexistent/token", NOWHERE), "--admin-token-file"),
    ],
)
def test_bad_arguments_are_one_line_errors(args: tuple[str, ...], message: str) -> None:
    out = run_status(*args)
    assert out.returncode == 1
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
