"""Limits reach the agent from flags and from --vaccel-config, and bad values stop it at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from vaccel_agent.cli import build_parser, make_config
from vaccel_agent.limits import LIMITS, Limits
from vaccel_agent.server import Agent


def agent_for(argv: list[str]) -> Agent:
    return Agent(
        ["unix:///nonexistent/a.sock"], config=make_config(build_parser().parse_args(argv))
    )


def test_flags_and_vaccel_config_set_limits_and_transport_options() -> None:
    agent = agent_for(
        [
            "--plugins", "noop",
            "--max-sessions", "3",
            "--idle-timeout", "2.5",
            "--vaccel-config", "max_uploads=2,virtio_mock_max_memory_bytes=512M",
        ]
    )  # fmt: skip
    assert (agent.limits.max_sessions, agent.limits.max_uploads) == (3, 2)
    assert agent.options.idle_timeout == 2.5
    assert agent.options.extra["virtio_mock_max_memory_bytes"] == 512 << 20


def test_flags_win_over_vaccel_config() -> None:
    agent = agent_for(["--vaccel-config", "max_sessions=9", "--max-sessions", "4"])
    assert agent.limits.max_sessions == 4


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-sessions", "0"], "expected a value > 0"),
        (["--max-message-size", "lots"], "expected a size in bytes"),
        (["--handshake-timeout", "-1"], "expected a value >= 0"),
    ],
)
def test_bad_limits_are_refused_at_parse_time(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert message in capsys.readouterr().err


def test_a_bad_limit_in_vaccel_config_stops_the_agent(tmp_path: Path) -> None:
    from vaccel_agent.cli import main

    assert main(["-a", f"unix://{tmp_path / 'a.sock'}", "--vaccel-config", "max_calls=0"]) == 2


def test_zero_turns_off_the_blob_limits_only() -> None:
    agent = agent_for(["--blob-quota", "0", "--max-blob-size", "0"])
    assert agent.limits.blob_quota_bytes == 0 and agent.limits.max_blob_bytes == 0


def test_an_embedders_transport_options_win_over_the_default_limits() -> None:
    from vaccel_core import Config
    from vaccel_core.transport import TransportOptions

    agent = Agent(
        ["unix:///nonexistent/a.sock"],
        config=Config(plugins=["noop"]),
        options=TransportOptions(max_message_bytes=1 << 20, max_clients=3),
    )
    assert agent.limits.max_message_bytes == 1 << 20 and agent.options.max_message_bytes == 1 << 20
    assert agent.options.max_clients == 3 and agent.limits.max_sessions == 64


def test_the_table_the_dataclass_and_the_transport_defaults_agree() -> None:
    """Limits' fields are LIMITS' rows with the same defaults, and each limit a transport
    enforces has the same default in TransportOptions (an embedder's explicit options are
    told from defaults by comparing with them)."""
    from dataclasses import fields

    from vaccel_core.transport import TransportOptions

    assert [f.name for f in fields(Limits)] == [spec.name for spec in LIMITS]
    defaults, transport = Limits(), TransportOptions()
    for spec in LIMITS:
        assert getattr(defaults, spec.name) == spec.default, spec.name
        if spec.transport:
            assert getattr(transport, spec.name) == spec.default, spec.name
