"""Shared test setup: every test starts from the environment's configuration, re-read."""

from __future__ import annotations

import os
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
