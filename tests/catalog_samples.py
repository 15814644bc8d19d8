"""Valid sample arguments for every catalog operation (shared by local and remote tests)."""

from __future__ import annotations

from typing import Any

import numpy as np

from vaccel_core import Op, Resource, ResourceType, Session

PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


def sample_resources(session: Session) -> dict[ResourceType, Resource]:
    """One registered resource of each type."""
    out = {}
    for rtype in ResourceType:
        res = Resource.from_buffer(f"{rtype.name} bytes".encode(), rtype, name=f"{rtype.name}.bin")
        res.register(session)
        out[rtype] = res
    return out


def sample_args(op: Op, resources: dict[ResourceType, Resource]) -> tuple[Any, ...]:
    """Arguments that pass validation for ``op``."""
    model = resources[ResourceType.MODEL]
    f32 = np.arange(6, dtype=np.float32)
    m23 = f32.reshape(2, 3)
    m32 = f32.reshape(3, 2)
    table: dict[Op, tuple[Any, ...]] = {
        Op.NOOP: (),
        Op.EXEC: ("libmytestlib.so", "mytestfunc", [b"\x01\x00\x00\x00"], [4]),
        Op.EXEC_WITH_RESOURCE: (resources[ResourceType.LIB], "mytestfunc", [b"abc"], [8]),
        Op.IMAGE_CLASSIFY: (PNG_1PX,),
        Op.IMAGE_DETECT: (PNG_1PX,),
        Op.IMAGE_SEGMENT: (PNG_1PX,),
        Op.IMAGE_POSE: (PNG_1PX,),
        Op.IMAGE_DEPTH: (PNG_1PX,),
        Op.TF_MODEL_LOAD: (model,),
        Op.TF_MODEL_UNLOAD: (model,),
        Op.TF_MODEL_RUN: (model, ["in"], [m23], ["out"]),
        Op.TFLITE_MODEL_LOAD: (model,),
        Op.TFLITE_MODEL_UNLOAD: (model,),
        Op.TFLITE_MODEL_RUN: (model, [m23]),
        Op.TORCH_MODEL_LOAD: (model,),
        Op.TORCH_MODEL_RUN: (model, [m23, np.ones(3, dtype=np.int64)]),
        Op.TORCH_SGEMM: (m23, m32, np.ones((2, 2), dtype=np.float32)),
        Op.BLAS_SGEMM: (m23, m32, np.ones((2, 2), dtype=np.float32), 2.0, 0.5),
        Op.FPGA_ARRAYCOPY: (np.arange(5, dtype=np.int32),),
        Op.FPGA_MMULT: (m23, m32),
        Op.FPGA_PARALLEL: (f32, f32),
        Op.FPGA_VECTORADD: (f32, f32),
        Op.MINMAX: (np.linspace(-5, 5, 11), -2, 3),
        Op.OPENCV: ([b"arg0", b"arg1"], 2),
        Op.MODEL_LOAD: (model,),
        Op.MODEL_UNLOAD: (model,),
        Op.MODEL_RUN: (model, {"x": m23}),
    }
    return table[op]
