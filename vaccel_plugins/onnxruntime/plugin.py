"""Entry point of the onnxruntime backend (``vaccel.backends``: ``onnxruntime``).

Cheap to import: neither onnxruntime nor the backend module is imported here; the backend
class is loaded when plugins register, and onnxruntime when the backend first runs a model.
"""

from __future__ import annotations

from typing import Any

from vaccel_core import hookimpl


@hookimpl
def vaccel_register_backends(register: Any) -> None:
    from .backend import OnnxRuntimeBackend

    register(OnnxRuntimeBackend)
