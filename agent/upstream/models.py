"""TensorflowModelLoad/Unload/Run, TensorflowLiteModelLoad/Unload/Run, TorchModelLoad/Run.

Each maps to our catalog's operation of the same name (``tf_model_load``, ...), run through the
session's backends: a backend that implements it runs it, otherwise the guest gets upstream's
``FFI error: 95`` (ENOTSUP). As upstream, the model (a resource id) is looked up before the
session: ``Unknown TensorFlow model <id>`` / ``Unknown TensorFlow Lite model <id>`` /
``Unknown PyTorch model <id>`` when the client holds no resource of that id. Then, as upstream's
C library: a resource that is not a MODEL is EINVAL, one not registered with the session EPERM.
The TensorFlow calls and TFLite's run report failures with a (code 0, empty) framework status
(``FFI_WITH_STATUS``), as upstream's bindings do. TF nodes reach the
backend as ``name:id`` (TensorFlow's tensor names); TFLite and Torch outputs are cut to
``nr_out_tensors``. The TF status in replies is code 0 with an empty message (our backends
report failures as errors, not statuses).
"""

from __future__ import annotations

import errno
from typing import Any

from vaccel_core.errors import VaccelError
from vaccel_core.ops import Op, ResourceType
from vaccel_core.transport import Peer

from . import errors, tensors
from .state import State

#: Operations whose failures carry a framework status (upstream's ``Error::FfiWithStatus``).
WITH_STATUS = {Op.TF_MODEL_LOAD, Op.TF_MODEL_UNLOAD, Op.TF_MODEL_RUN, Op.TFLITE_MODEL_RUN}

#: The model's name in upstream's NOT_FOUND messages, per family.
MODEL_NAMES = {
    "tf": "TensorFlow model",
    "tflite": "TensorFlow Lite model",
    "torch": "PyTorch model",
}


class Models:
    """The model RPCs of upstream's service."""

    def __init__(self, state: State, schema: Any) -> None:
        self.state = state
        self.pb = schema

    def _run(self, msg: Any, peer: Peer, family: str, op: Op, *args: Any) -> Any:
        """Run ``op`` on the request's model, looked up and checked in upstream's order."""
        what = MODEL_NAMES[family]
        self.state.any_registration(msg.model_id, peer, what)
        record = self.state.session(msg.session_id, peer)
        resource, registered = self.state.resource_for(record, msg.model_id, peer, what)
        fail = errors.ffi_with_status if op in WITH_STATUS else errors.ffi
        if resource.type != ResourceType.MODEL:
            raise fail(errno.EINVAL, f"resource {msg.model_id} is {resource.type.name}, not MODEL")
        if not registered:
            raise fail(
                errno.EPERM,
                f"resource {msg.model_id} is not registered with session {msg.session_id}",
            )
        try:
            return record.session.genop(op, resource, *args)
        except VaccelError as exc:
            private = (str(self.state.agent.blobs.base),)
            raise errors.from_vaccel(exc, private, with_status=op in WITH_STATUS) from None

    def _inputs(self, msg: Any, family: str) -> list[Any]:
        return [tensors.decode(t, family, f"in_tensors[{i}]") for i, t in enumerate(msg.in_tensors)]

    def _outputs(self, values: Any, family: str, count: int | None = None) -> list[Any]:
        outputs = list(values or ())
        if count is not None:
            outputs = outputs[:count]
        message = getattr(self.pb, family).Tensor
        return [
            tensors.encode(v, family, message, f"out_tensors[{i}]") for i, v in enumerate(outputs)
        ]

    # TensorFlow ----------------------------------------------------------------------------
    def tf_load(self, msg: Any, peer: Peer) -> Any:
        self._run(msg, peer, "tf", Op.TF_MODEL_LOAD)
        reply = self.pb.tf.ModelLoadResponse(graph_def=b"")
        reply.status.code = 0
        return reply

    def tf_unload(self, msg: Any, peer: Peer) -> Any:
        self._run(msg, peer, "tf", Op.TF_MODEL_UNLOAD)
        reply = self.pb.tf.ModelUnloadResponse()
        reply.status.code = 0
        return reply

    def tf_run(self, msg: Any, peer: Peer) -> Any:
        in_nodes = [f"{n.name}:{n.id}" for n in msg.in_nodes]
        out_nodes = [f"{n.name}:{n.id}" for n in msg.out_nodes]
        inputs = self._inputs(msg, "tf")
        values = self._run(msg, peer, "tf", Op.TF_MODEL_RUN, in_nodes, inputs, out_nodes)
        reply = self.pb.tf.ModelRunResponse(out_tensors=self._outputs(values, "tf"))
        reply.status.code = 0
        return reply

    # TensorFlow Lite -----------------------------------------------------------------------
    def tflite_load(self, msg: Any, peer: Peer) -> Any:
        self._run(msg, peer, "tflite", Op.TFLITE_MODEL_LOAD)
        return self.pb.empty.Empty()

    def tflite_unload(self, msg: Any, peer: Peer) -> Any:
        self._run(msg, peer, "tflite", Op.TFLITE_MODEL_UNLOAD)
        return self.pb.empty.Empty()

    def tflite_run(self, msg: Any, peer: Peer) -> Any:
        inputs = self._inputs(msg, "tflite")
        values = self._run(msg, peer, "tflite", Op.TFLITE_MODEL_RUN, inputs)
        outputs = self._outputs(values, "tflite", int(msg.nr_out_tensors))
        reply = self.pb.tflite.ModelRunResponse(out_tensors=outputs)
        reply.status.code = 0
        return reply

    # PyTorch -------------------------------------------------------------------------------
    def torch_load(self, msg: Any, peer: Peer) -> Any:
        self._run(msg, peer, "torch", Op.TORCH_MODEL_LOAD)
        return self.pb.empty.Empty()

    def torch_run(self, msg: Any, peer: Peer) -> Any:
        inputs = self._inputs(msg, "torch")
        values = self._run(msg, peer, "torch", Op.TORCH_MODEL_RUN, inputs)
        outputs = self._outputs(values, "torch", int(msg.nr_out_tensors))
        return self.pb.torch.ModelRunResponse(out_tensors=outputs)
