"""The agent's allocator tuning: applied on glibc, and each opt-out respected."""

from __future__ import annotations

import platform

import pytest

from vaccel_agent.allocator import tune_allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt tuning is glibc-only")
def test_tuning_applies_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert tune_allocator() is True


@pytest.mark.parametrize(
    ("var", "value"),
    [("VACCEL_AGENT_MALLOC_TUNING", "0"), ("VACCEL_AGENT_MALLOC_TUNING", "off"),
     ("MALLOC_MMAP_THRESHOLD_", "1048576")],
)
def test_tuning_respects_opt_outs(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    assert tune_allocator() is False
