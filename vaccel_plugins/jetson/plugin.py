"""Entry point of the jetson backend (cheap to import: jetson-inference is loaded on first use)."""

from __future__ import annotations

from typing import Any

from vaccel_core import hookimpl

from .backend import JetsonBackend


@hookimpl
def vaccel_register_backends(register: Any) -> None:
    register(JetsonBackend)
