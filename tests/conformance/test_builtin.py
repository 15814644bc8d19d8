"""The conformance kit (vaccel_core.testing) on the built-in backends."""

from __future__ import annotations

from vaccel_core.testing import BackendConformance


class TestNoop(BackendConformance):
    backend = "noop"
