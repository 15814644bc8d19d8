"""LABELLED STAND-IN for upstream vAccel's Rust agent (``vaccel-rpc-agent``, vaccel-rust 0.5.0).

The real agent cannot be built here: its Cargo workspace needs crates from crates.io, a git
dependency on nubificus' ttrpc-rust fork and upstream's C library (libvaccel), none of which
this machine has (``cargo build --offline -p vaccel-rpc-agent`` stops at the ttrpc fork). So
this module serves ``vaccel.sync.agent.AgentService`` the way that agent's code does, written
from it (``vaccel-rpc-agent/src/{session,resource,agent_service}.rs``, ``ops/*.rs``,
``vaccel-rpc-proto/src/extensions/{arg,error}.rs``) and independent of our own agent:

* its own session and resource tables, ids counting from 1; sessions outlive the connection
  (upstream keeps no per-client ownership);
* ``Genop`` converts each wire ``Arg`` as the agent does (a ``size`` that differs from the
  buffer's length is ``CONVERSION_FAILED``; an empty buffer fails ``vaccel_arg_from_buf``
  with EINVAL) and hands the args to :class:`~tests.upstream.standin_core.Core`, then returns
  every write arg as it was left;
* errors in upstream's forms: ``NOT_FOUND`` (unknown session or resource), ``INVALID_ARGUMENT``
  (no paths or blobs), ``INTERNAL`` with a ``vaccel.Error`` detail (type URL
  ``type.googleapis.com/vaccel.ProtoError``) and the error's text as the message (``FFI
  error: 95``, ``Invalid argument: Invalid ID: 0``, ``Conversion failed: ...``).

Served over ttrpc by our own listener: its handler's ``services`` attribute carries the
AgentService (see ``vaccel_core.transport.RawService``); our own agent service is not served
(UNIMPLEMENTED), as on upstream's agent.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.upstream.standin_core import (
    EINVAL,
    ENOENT,
    CArg,
    Core,
    CoreSession,
    Failure,
    Resource,
)
from vaccel_core.proto.upstream import SERVICE_NAME, upstream
from vaccel_core.transport import (
    Address,
    CallError,
    Listener,
    Message,
    Peer,
    StatusError,
    TransportOptions,
)

# ttrpc status codes (gRPC numbering)
INVALID_ARGUMENT, NOT_FOUND, INTERNAL = 3, 5, 13
#: The type URL upstream's agent gives its vaccel.Error detail.
ERROR_TYPE_URL = "type.googleapis.com/vaccel.ProtoError"

# vaccel.ErrorType
FFI, INVALID_ARGUMENT_ERROR, CONVERSION_FAILED = 0, 2, 6


def vaccel_error(kind: int, text: str, *, ffi: int | None = None) -> StatusError:
    """``AgentServiceError::Vaccel``: INTERNAL, the error's text, a ``vaccel.Error`` detail."""
    pb = upstream()
    detail = pb.vaccel.Error(type=kind)
    if ffi is not None:
        detail.ffi_error = ffi
    if kind != FFI:
        detail.status.message = text.partition(": ")[2]
    return StatusError(INTERNAL, text, [(ERROR_TYPE_URL, detail.SerializeToString())])


def ffi_error(code: int) -> StatusError:
    """``vaccel::Error::Ffi(code)``, as the agent returns it."""
    return vaccel_error(FFI, f"FFI error: {code}", ffi=code)


def _vaccel_id(value: int) -> int:
    """``VaccelId::try_from(i64)``: ids are positive."""
    if value <= 0:
        raise vaccel_error(INVALID_ARGUMENT_ERROR, f"Invalid argument: Invalid ID: {value}")
    return value


class StandInAgent:
    """The AgentService of one stand-in agent process, and the handler our listener serves."""

    def __init__(self) -> None:
        self.pb = upstream()
        self.lock = threading.Lock()
        self.sessions: dict[int, CoreSession] = {}
        self.resources: dict[int, Resource] = {}
        self._session_ids = itertools.count(1)
        self._resource_ids = itertools.count(1)
        self.core = Core(self.resources.get)
        #: Every call served, as (method, request message): what the guest really sent.
        self.calls: list[tuple[str, Any]] = []
        self.services = {SERVICE_NAME: self.serve}
        pb = self.pb
        self._methods: dict[str, tuple[Any, Callable[[Any], Any]]] = {
            "CreateSession": (pb.session.CreateRequest, self.create_session),
            "UpdateSession": (pb.session.UpdateRequest, self.update_session),
            "DestroySession": (pb.session.DestroyRequest, self.destroy_session),
            "RegisterResource": (pb.resource.RegisterRequest, self.register_resource),
            "UnregisterResource": (pb.resource.UnregisterRequest, self.unregister_resource),
            "SyncResource": (pb.resource.SyncRequest, self.sync_resource),
            "ImageClassification": (pb.image.Request, self.image_classification),
            "Genop": (pb.genop.Request, self.genop),
            "TensorflowModelLoad": (pb.tf.ModelLoadRequest, self.tf_model),
            "TensorflowModelUnload": (pb.tf.ModelUnloadRequest, self.tf_model),
            "TensorflowModelRun": (pb.tf.ModelRunRequest, self.tf_model),
            "TensorflowLiteModelLoad": (pb.tflite.ModelLoadRequest, self.tflite_model),
            "TensorflowLiteModelUnload": (pb.tflite.ModelUnloadRequest, self.tflite_model),
            "TensorflowLiteModelRun": (pb.tflite.ModelRunRequest, self.tflite_model),
            "TorchModelLoad": (pb.torch.ModelLoadRequest, self.torch_model_load),
            "TorchModelRun": (pb.torch.ModelRunRequest, self.torch_model_run),
        }

    # The ttrpc plumbing ------------------------------------------------------------------
    def serve(self, method: str, payload: bytes, peer: Peer) -> bytes:
        entry = self._methods.get(method)
        if entry is None:
            raise StatusError(12, f"{SERVICE_NAME}/{method} is not supported")
        request_type, fn = entry
        request = request_type()
        request.ParseFromString(payload)
        with self.lock:
            self.calls.append((method, request))
            try:
                reply: bytes = fn(request).SerializeToString()
                return reply
            except Failure as exc:
                raise ffi_error(exc.code) from None

    def handle(self, method: str, request: Message, peer: Peer) -> Message:
        """Our own agent service: not served by upstream's agent."""
        raise CallError("UNIMPLEMENTED", f"{method}: this is an upstream-style agent")

    def peer_connected(self, peer: Peer) -> None:
        pass

    def peer_disconnected(self, peer: Peer) -> None:
        """Upstream's agent keeps sessions and resources when a client goes."""

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]

    # Lookups (as the agent's DashMaps) -----------------------------------------------------
    def _session(self, session_id: int) -> CoreSession:
        session = self.sessions.get(_vaccel_id(session_id))
        if session is None:
            raise StatusError(NOT_FOUND, f"Unknown session {session_id}")
        return session

    def _resource(self, resource_id: int, what: str = "resource") -> Resource:
        resource = self.resources.get(_vaccel_id(resource_id))
        if resource is None:
            raise StatusError(NOT_FOUND, f"Unknown {what} {resource_id}")
        return resource

    # Sessions (session.rs) -----------------------------------------------------------------
    def create_session(self, req: Any) -> Any:
        session = CoreSession(next(self._session_ids), req.flags)
        self.sessions[session.id] = session
        return self.pb.session.CreateResponse(session_id=session.id)

    def update_session(self, req: Any) -> Any:
        self._session(req.session_id).flags = req.flags
        return self.pb.empty.Empty()

    def destroy_session(self, req: Any) -> Any:
        session = self._session(req.session_id)
        del self.sessions[session.id]
        for resource in session.resources.values():
            resource.sessions.discard(session.id)
        return self.pb.empty.Empty()

    # Resources (resource.rs) ---------------------------------------------------------------
    def register_resource(self, req: Any) -> Any:
        session = self._session(req.session_id)
        if req.resource_id < 0:
            raise vaccel_error(
                INVALID_ARGUMENT_ERROR, f"Invalid argument: Invalid ID: {req.resource_id}"
            )
        if req.resource_id == 0:
            if req.blobs:
                files = [(blob.name, bytes(blob.data)) for blob in req.blobs]
            elif req.paths:
                files = []
                for path in req.paths:
                    try:
                        files.append((Path(path).name, Path(path).read_bytes()))
                    except OSError:
                        raise ffi_error(ENOENT) from None
            else:
                raise StatusError(INVALID_ARGUMENT, "No paths or blobs provided")
            if any(not name for name, _ in files):
                raise ffi_error(EINVAL)
            resource = Resource(next(self._resource_ids), int(req.resource_type), files)
            self.resources[resource.id] = resource
        else:
            resource = self._resource(req.resource_id)
        resource.sessions.add(session.id)
        session.resources[resource.id] = resource
        return self.pb.resource.RegisterResponse(resource_id=resource.id)

    def unregister_resource(self, req: Any) -> Any:
        resource = self._resource(req.resource_id)
        session = self._session(req.session_id)
        if session.id not in resource.sessions:
            raise ffi_error(EINVAL)
        resource.sessions.discard(session.id)
        session.resources.pop(resource.id, None)
        session.loaded.discard(resource.id)
        if not resource.sessions:
            del self.resources[resource.id]
        return self.pb.empty.Empty()

    def sync_resource(self, req: Any) -> Any:
        resource = self._resource(req.resource_id)
        reply = self.pb.resource.SyncResponse()
        for _, data in resource.files:
            reply.blobs.add(data=data, size=len(data))
        return reply

    # Operations ------------------------------------------------------------------------------
    def image_classification(self, req: Any) -> Any:
        session = self._session(req.session_id)
        imgname, text = CArg(bytearray(1024), 26), CArg(bytearray(1024), 26)
        self.core.genop(session, [_u8(3), CArg(bytearray(req.image), 28)], [imgname, text])
        return self.pb.image.Response(tags=bytes(text.buf))

    def genop(self, req: Any) -> Any:
        session = self._session(req.session_id)
        read = [_from_wire(arg) for arg in req.read_args]
        write = [_from_wire(arg) for arg in req.write_args]
        self.core.genop(session, read, write)
        reply = self.pb.genop.Response()
        for arg in write:
            reply.write_args.add(
                buf=bytes(arg.buf),
                size=arg.size,
                arg_type=arg.type,
                custom_type_id=arg.custom_type_id,
            )
        return reply

    def _model(self, req: Any, what: str) -> tuple[CoreSession, Resource]:
        resource = self._resource(req.model_id, what)
        return self._session(req.session_id), resource

    def tf_model(self, req: Any) -> Any:
        session, resource = self._model(req, "TensorFlow model")
        self.core.model_load(session, resource, "tensorflow")
        raise AssertionError("unreachable: the stand-in has no TensorFlow plugin")

    def tflite_model(self, req: Any) -> Any:
        session, resource = self._model(req, "TensorFlow Lite model")
        self.core.model_load(session, resource, "tflite")
        raise AssertionError("unreachable: the stand-in has no TensorFlow Lite plugin")

    def torch_model_load(self, req: Any) -> Any:
        session, resource = self._model(req, "PyTorch model")
        self.core.model_load(session, resource, "torch")
        return self.pb.empty.Empty()

    def torch_model_run(self, req: Any) -> Any:
        resource = self._resource(req.model_id, "Py model")
        session = self._session(req.session_id)
        inputs = [(tuple(t.dims), int(t.type), bytes(t.data)) for t in req.in_tensors]
        outputs = self.core.torch_model_run(session, resource, inputs, int(req.nr_out_tensors))
        reply = self.pb.torch.ModelRunResponse()
        for dims, type_, data in outputs:
            reply.out_tensors.add(dims=dims, type=type_, data=data)
        return reply


def _u8(value: int) -> CArg:
    return CArg(bytearray([value]), 9)


def _from_wire(arg: Any) -> CArg:
    """``TryFrom<Arg> for vaccel::Arg`` and ``vaccel_arg_from_buf``."""
    if arg.size != len(arg.buf):
        raise vaccel_error(
            CONVERSION_FAILED,
            f"Conversion failed: Could not convert proto `Arg` to `Arg`: Incorrect size; "
            f"expected {len(arg.buf)} got {arg.size}",
        )
    if not arg.buf:
        raise ffi_error(EINVAL)
    return CArg(bytearray(arg.buf), int(arg.arg_type), int(arg.custom_type_id))


def serve(address: str, agent: StandInAgent | None = None) -> tuple[StandInAgent, Listener]:
    """Start a stand-in agent listening at ``address`` (``unix://PATH``) in this process."""
    from vaccel_core.plugins import get_registry

    agent = agent or StandInAgent()
    parsed = Address.parse(address)
    listener = get_registry().transport(parsed.scheme).listen(parsed, agent, TransportOptions())
    return agent, listener
