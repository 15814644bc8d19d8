"""Valid sample arguments for every catalog operation (shared by local and remote tests): the
conformance kit's (:mod:`vaccel_core.testing`), with a 1x1 image."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vaccel_core import Op, Resource, ResourceType
from vaccel_core.testing import sample_args as kit_sample_args
from vaccel_core.testing import sample_resources

__all__ = ["PNG_1PX", "sample_args", "sample_resources"]

PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


def sample_args(op: Op, resources: Mapping[ResourceType, Resource]) -> tuple[Any, ...]:
    """Arguments that pass validation for ``op`` (the kit's, with :data:`PNG_1PX`)."""
    return kit_sample_args(op, resources, image=PNG_1PX)
