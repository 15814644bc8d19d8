"""docs/security.md and the agent's limits come from one table (agent/limits.py): a limit
added, renamed or given another default without the documentation fails here."""

from __future__ import annotations

import re

from tests.remote.conftest import REPO
from vaccel_agent.cli import build_parser
from vaccel_agent.limits import LIMITS

DOC = REPO / "docs" / "security.md"


def documented_limits() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"^\| `(--[a-z-]+)` \| ([^|]+) \| ([^|]+) \|$", line)
        if match:
            rows[match[1]] = (match[2].strip(), match[3].strip())
    return rows


def test_every_limit_is_documented_with_its_default_and_meaning() -> None:
    rows = documented_limits()
    expected = {spec.flag: (spec.format(spec.default), spec.help) for spec in LIMITS}
    assert rows == expected


def test_every_limit_is_an_agent_flag() -> None:
    help_text = build_parser().format_help()
    for spec in LIMITS:
        assert spec.flag in help_text, spec.flag


def test_client_variables_are_the_ones_the_rpc_backend_reads() -> None:
    source = (REPO / "vaccel_plugins" / "rpc" / "settings.py").read_text()
    documented = set(re.findall(r"`(VACCEL_RPC_(?:TLS|TOKEN)[A-Z_]*)", DOC.read_text()))
    read = set(re.findall(r'"(VACCEL_RPC_(?:TLS|TOKEN)[A-Z_]*)"', source))
    assert documented == read
