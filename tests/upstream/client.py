"""A small upstream-style vAccel guest for tests: what upstream's RPC plugin (vaccel-rust 0.5.0
``vaccel-rpc-client`` under vAccel 0.8) sends to an agent, written from upstream's .proto files
and C arg layouts (see :mod:`.genop_args`), never from our agent's code.

It speaks ``vaccel.sync.agent.AgentService`` over a :class:`~.pipe.Pipe` with the messages of
``vaccel_core.proto.upstream``. Failed calls raise :class:`~.pipe.UpstreamError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vaccel_core.proto.upstream import upstream

from . import genop_args as ga
from .pipe import Pipe, UpstreamError

__all__ = ["UpstreamClient", "UpstreamError"]

#: ResourceType by name (resource.proto).
RESOURCE_TYPES = {"lib": 0, "data": 1, "model": 2}


class UpstreamClient:
    """Calls of upstream's AgentService, one method per RPC or genop layout."""

    def __init__(self, pipe: Pipe, timeout: float = 30.0) -> None:
        self.pipe = pipe
        self.timeout = timeout
        self.pb = upstream()

    def close(self) -> None:
        self.pipe.close()

    def __enter__(self) -> UpstreamClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def rpc(self, method: str, request: Any, reply_type: Any) -> Any:
        """One call: serialize ``request``, parse the reply as ``reply_type``."""
        return reply_type.FromString(
            self.pipe.call(method, request.SerializeToString(), self.timeout)
        )

    # Sessions ------------------------------------------------------------------------------
    def create_session(self, flags: int = 0) -> int:
        reply = self.rpc(
            "CreateSession",
            self.pb.session.CreateRequest(flags=flags),
            self.pb.session.CreateResponse,
        )
        return int(reply.session_id)

    def update_session(self, session_id: int, flags: int) -> None:
        request = self.pb.session.UpdateRequest(session_id=session_id, flags=flags)
        self.rpc("UpdateSession", request, self.pb.empty.Empty)

    def destroy_session(self, session_id: int) -> None:
        request = self.pb.session.DestroyRequest(session_id=session_id)
        self.rpc("DestroySession", request, self.pb.empty.Empty)

    # Resources -----------------------------------------------------------------------------
    def register_resource(
        self,
        session_id: int,
        files: Sequence[tuple[str, bytes]] = (),
        kind: str = "model",
        *,
        paths: Sequence[str] = (),
        resource_id: int = 0,
    ) -> int:
        """Create a resource from file blobs (``Blob{FILE, name, data, size}``) or host paths
        and register it with the session; ``resource_id`` > 0 registers an existing one."""
        resource = self.pb.resource
        blobs = [
            resource.Blob(type_=resource.FILE, name=name, data=data, size=len(data))
            for name, data in files
        ]
        request = resource.RegisterRequest(
            paths=list(paths),
            blobs=blobs,
            resource_type=RESOURCE_TYPES[kind],
            resource_id=resource_id,
            session_id=session_id,
        )
        return int(self.rpc("RegisterResource", request, resource.RegisterResponse).resource_id)

    def unregister_resource(self, resource_id: int, session_id: int) -> None:
        request = self.pb.resource.UnregisterRequest(resource_id=resource_id, session_id=session_id)
        self.rpc("UnregisterResource", request, self.pb.empty.Empty)

    def sync_resource(self, resource_id: int) -> list[Any]:
        request = self.pb.resource.SyncRequest(resource_id=resource_id)
        return list(self.rpc("SyncResource", request, self.pb.resource.SyncResponse).blobs)

    # Image ---------------------------------------------------------------------------------
    def image_classification(self, session_id: int, image: bytes) -> bytes:
        """The ImageClassification RPC: the raw ``tags`` bytes (upstream's agent sends its
        whole 1024-byte buffer, NUL-padded)."""
        request = self.pb.image.Request(session_id=session_id, image=image)
        return bytes(self.rpc("ImageClassification", request, self.pb.image.Response).tags)

    # Genop ---------------------------------------------------------------------------------
    def genop(
        self, session_id: int, read_args: Sequence[Any], write_args: Sequence[Any]
    ) -> list[Any]:
        """The raw Genop call: the reply's write args."""
        request = self.pb.genop.Request(
            session_id=session_id, read_args=list(read_args), write_args=list(write_args)
        )
        return list(self.rpc("Genop", request, self.pb.genop.Response).write_args)

    def classify(
        self, session_id: int, image: bytes, text_size: int = 512, name_size: int = 512
    ) -> tuple[str, str, list[Any]]:
        """IMAGE_CLASSIFY through Genop: (tags, image name, the returned write args)."""
        read, write = ga.classify_args(image, text_size, name_size)
        out = self.genop(session_id, read, write)
        return ga.c_string(out[1].buf), ga.c_string(out[0].buf), out

    def sgemm(
        self,
        session_id: int,
        a: np.ndarray,
        b: np.ndarray,
        c: np.ndarray,
        alpha: float = 1.0,
        beta: float = 0.0,
    ) -> np.ndarray:
        """BLAS_SGEMM through Genop: the returned C, shaped m x n."""
        read, write = ga.sgemm_args(a, b, c, alpha, beta)
        out = self.genop(session_id, read, write)
        return np.frombuffer(out[0].buf, dtype="<f4").reshape(a.shape[0], b.shape[1])

    def minmax(
        self, session_id: int, data: np.ndarray, low_threshold: int, high_threshold: int
    ) -> tuple[np.ndarray, float, float]:
        """MINMAX through Genop: (outdata, min, max)."""
        read, write = ga.minmax_args(data, low_threshold, high_threshold)
        out = self.genop(session_id, read, write)
        (low,) = np.frombuffer(out[1].buf, dtype="<f8")
        (high,) = np.frombuffer(out[2].buf, dtype="<f8")
        return np.frombuffer(out[0].buf, dtype="<f8"), float(low), float(high)

    def noop(self, session_id: int) -> None:
        """NOOP through Genop (upstream's genop rejects op type 0 with EINVAL)."""
        self.genop(session_id, [ga.op(ga.OpType.NOOP)], [])

    # Models --------------------------------------------------------------------------------
    def torch_model_load(self, session_id: int, model_id: int) -> None:
        request = self.pb.torch.ModelLoadRequest(session_id=session_id, model_id=model_id)
        self.rpc("TorchModelLoad", request, self.pb.empty.Empty)

    def tflite_model_load(self, session_id: int, model_id: int) -> None:
        request = self.pb.tflite.ModelLoadRequest(session_id=session_id, model_id=model_id)
        self.rpc("TensorflowLiteModelLoad", request, self.pb.empty.Empty)

    def tf_model_load(self, session_id: int, model_id: int) -> Any:
        request = self.pb.tf.ModelLoadRequest(session_id=session_id, model_id=model_id)
        return self.rpc("TensorflowModelLoad", request, self.pb.tf.ModelLoadResponse)

    def get_profiler(self, session_id: int) -> Any:
        request = self.pb.profiling.Request(session_id=session_id)
        return self.rpc("GetProfiler", request, self.pb.profiling.Response)
