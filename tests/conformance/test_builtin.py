"""The conformance kit (vaccel_core.testing) on the built-in backends."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from vaccel_core import Op, Resource, ResourceType, Session
from vaccel_core.testing import BackendConformance, sample_resources


class TestNoop(BackendConformance):
    backend = "noop"


class TestOnnxruntime(BackendConformance):
    """onnxruntime with small generated models (no downloaded weights): a 1000-class image
    'classifier' serves classify and the model operations."""

    backend = "onnxruntime"

    def make_resources(self, session: Session) -> dict[ResourceType, Resource]:
        resources = sample_resources(session)
        pytest.importorskip("onnx", reason="onnx is not installed (pip install 'pyvaccel[onnx]')")
        from tests.onnxruntime.ort_fixtures import tiny_image_model

        global _TINY
        if _TINY is None:
            _TINY = tiny_image_model(1000)
        model = Resource.from_buffer(_TINY, ResourceType.MODEL, name="tiny.onnx")
        model.register(session)
        resources[ResourceType.MODEL] = model
        return resources

    def sample_args(self, op: Op, resources: Mapping[ResourceType, Resource]) -> tuple[Any, ...]:
        if op is Op.MODEL_RUN:
            image = np.zeros((1, 3, 224, 224), dtype=np.float32)
            return (resources[ResourceType.MODEL], {"image": image})
        return super().sample_args(op, resources)


_TINY: bytes | None = None
