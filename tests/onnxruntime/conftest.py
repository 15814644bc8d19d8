"""Fixtures shared by the onnxruntime backend tests: one private registry per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vaccel_core import PluginRegistry
from vaccel_plugins.onnxruntime.backend import OnnxRuntimeBackend

from .ort_fixtures import require_ort


@pytest.fixture(scope="module")
def registry() -> Iterator[PluginRegistry]:
    """A private registry with only the onnxruntime backend."""
    require_ort()
    from vaccel_plugins.onnxruntime import plugin

    reg = PluginRegistry()
    reg.register_plugin(plugin, "onnxruntime")
    yield reg
    reg.shutdown()


@pytest.fixture(scope="module")
def backend(registry: PluginRegistry) -> OnnxRuntimeBackend:
    instance = registry.backend("onnxruntime")
    assert isinstance(instance, OnnxRuntimeBackend)
    return instance
