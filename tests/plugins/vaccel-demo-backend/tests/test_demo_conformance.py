"""The vAccel conformance kit on the demo backend, as its author runs it (pytest tests/ with the
package installed). tests/conformance/test_packages.py installs it and runs this file."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "vaccel_demo_backend", reason="the demo package is not installed (pip install this folder)"
)

from vaccel_core.testing import BackendConformance


class TestDemo(BackendConformance):
    backend = "demo"
