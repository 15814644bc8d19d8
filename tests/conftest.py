"""Shared test setup: every test starts from the environment's configuration, re-read.

Tests skipped because an extra of the package is not installed (``remote``, ``onnx``, ``test``)
are counted per folder and reported loudly at the end (a ``MISSING EXTRAS`` section naming
the ``pip install`` that runs them); ``VACCEL_REQUIRE_EXTRAS=1`` makes such a run fail.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest

from vaccel_core.config import set_config

_VACCEL_VARS = [k for k in os.environ if k.startswith("VACCEL_")]


@pytest.fixture(autouse=True)
def _fresh_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Drop VACCEL_* variables inherited from the shell and re-read config per test."""
    for key in _VACCEL_VARS:
        monkeypatch.delenv(key, raising=False)
    set_config(None)
    yield
    set_config(None)


# Tests skipped for a missing extra --------------------------------------------------------------

INSTALL_HINT = "pip install -e '.[test,remote,onnx]'"
REQUIRE_VAR = "VACCEL_REQUIRE_EXTRAS"

#: A skip reason that means "an extra of the package is not installed".
_EXTRA_REASON = re.compile(
    r"pyvaccel\[|\bextra\b|\b(onnx|onnxruntime|pillow|hypothesis|hatchling|cryptography|h2|"
    r"grpcio|grpc|protobuf)\b.*\b(not installed|needs?)\b|\bneeds? (hypothesis|grpcio|protobuf)\b",
    re.IGNORECASE,
)
_NOT_AN_EXTRA = ("grpcio-tools", "grpcurl", "hadolint")

_seen: dict[str, set[str]] = {}
_skipped: dict[str, dict[str, str]] = {}


def missing_extra_reason(reason: str) -> bool:
    """Whether a skip reason says an extra (or a package of one) is not installed."""
    if any(tool in reason for tool in _NOT_AN_EXTRA) and "extra" not in reason:
        return False
    return bool(_EXTRA_REASON.search(reason))


def _folder(nodeid: str) -> str:
    parts = nodeid.split("::", 1)[0].split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else parts[0]


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:  # a module that skips itself: counted as one test
        _record(report)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _record(report)


def _record(report: pytest.TestReport | pytest.CollectReport) -> None:
    folder = _folder(report.nodeid)
    _seen.setdefault(folder, set()).add(report.nodeid)
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        if missing_extra_reason(reason):
            _skipped.setdefault(folder, {})[report.nodeid] = reason


def _missing_extras_lines() -> list[str]:
    lines = []
    for folder in sorted(_skipped):
        skipped = _skipped[folder]
        total = len(_seen.get(folder, ()))
        reasons = sorted(set(skipped.values()))
        amount = f"all {total} tests" if len(skipped) >= total else f"{len(skipped)} of {total}"
        more = f" (and {len(reasons) - 1} other reasons)" if len(reasons) > 1 else ""
        lines.append(f"{folder}: {amount} skipped, not run: {reasons[0]}{more}")
    return lines


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped and os.environ.get(REQUIRE_VAR) == "1" and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = _missing_extras_lines()
    if not lines:
        return
    count = sum(len(s) for s in _skipped.values())
    required = os.environ.get(REQUIRE_VAR) == "1"
    terminalreporter.write_sep(
        "!", f"MISSING EXTRAS: {count} tests did not run", red=required, yellow=not required
    )
    for line in lines:
        terminalreporter.write_line(line)
    terminalreporter.write_line(
        f"To run them: {INSTALL_HINT}. "
        + (
            f"{REQUIRE_VAR}=1: this run FAILS because of them."
            if required
            else f"Set {REQUIRE_VAR}=1 to make such a run fail."
        )
    )
