"""The ``rpc-upstream`` backend: our Python API on an upstream vAccel agent.

Upstream's Rust ``vaccel-rpc-agent`` (on an NVIDIA Jetson Orin, say) serves
``vaccel.sync.agent.AgentService`` over ttrpc. This backend speaks that service the way
upstream's own RPC plugin (``vaccel-rpc-client``) does:

* sessions: ``CreateSession`` / ``UpdateSession`` / ``DestroySession``;
* resources: ``RegisterResource`` with the files as ``Blob``\\ s (a resource already on the
  agent is registered with another session by its id, as upstream's core does),
  ``UnregisterResource`` (the agent destroys a resource when no session holds it),
  ``SyncResource``;
* TensorFlow, TensorFlow Lite and Torch model operations through their own RPCs;
* every other upstream operation through ``Genop`` with upstream's argument layouts
  (:mod:`vaccel_plugins.rpc.genop_pack`), image classification included.

Not forwarded, as upstream's plugin: ``noop`` (the plugin does not register it and upstream's
genop refuses op type 0), ``torch_sgemm`` (upstream's genop has no layout for it); not
expressible: ``opencv`` (upstream needs each output's size, our API gives a count) and our own
``model_load`` / ``model_run`` / ``model_unload``. A session whose only backend is this one gets
:class:`~vaccel_core.errors.NotSupportedError` for them.

Configuration: ``VACCEL_PLUGINS=rpc-upstream`` and ``VACCEL_RPC_ADDRESS`` (``unix://PATH``,
``vsock://CID:PORT``, ``tcp://HOST:PORT`` or ``ttrpc+tcp://HOST:PORT``: upstream speaks ttrpc on
every one, so ``tcp://`` means ttrpc here; several agents as for the ``rpc`` backend, each
session on one of them); ``VACCEL_RPC_TIMEOUT``,
``VACCEL_RPC_CONNECT_TIMEOUT`` and ``VACCEL_RPC_MAX_MESSAGE_BYTES`` (default 1 GiB, the frame
limit of upstream's ttrpc) as for the ``rpc`` backend. Upstream's agent keeps sessions across
connections and has no tokens or TLS.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from vaccel_core.backend import Backend
from vaccel_core.errors import (
    BackendError,
    InvalidArgumentError,
    NotFoundError,
    RemoteError,
    SessionError,
    VaccelError,
)
from vaccel_core.flags import PluginType
from vaccel_core.log import logger as _vaccel_logger
from vaccel_core.ops import CATALOG, Op
from vaccel_core.transport import Address, CallError, Message

from . import genop_pack, upstream_tensors
from .backend import _unreadable
from .channels import AgentChannels
from .upstream_errors import upstream_error
from .upstream_tensors import TF, TFLITE, TORCH, Framework

if TYPE_CHECKING:
    from vaccel_core.resource import Resource
    from vaccel_core.session import Session

logger = _vaccel_logger.getChild("rpc-upstream")

#: Largest message upstream's ttrpc fork takes (its frames are limited to 1 GiB).
UPSTREAM_MAX_MESSAGE_BYTES = 1 << 30
#: Largest file a ``Blob`` describes (its ``size`` is a uint32).
MAX_BLOB_BYTES = (1 << 32) - 1
#: Upstream's ``vaccel.resource.BlobType``.
BLOB_FILE, BLOB_BUFFER = 0, 1


def upstream_address(address: str) -> Address:
    """The address to dial for an upstream agent: ttrpc on every scheme (``tcp://`` too)."""
    parsed = Address.parse(address)
    if parsed.protocol == "grpc":
        raise InvalidArgumentError(
            f"VACCEL_RPC_ADDRESS={address!r}: upstream vAccel agents speak ttrpc only "
            f"(drop the 'grpc+' prefix, or use the 'rpc' backend for our agent over gRPC)"
        )
    if parsed.scheme not in ("unix", "vsock", "tcp"):
        raise InvalidArgumentError(
            f"VACCEL_RPC_ADDRESS={address!r}: upstream vAccel agents listen on unix://, "
            f"vsock:// or tcp:// addresses"
        )
    return Address(parsed.scheme, parsed.target, "ttrpc")


@dataclass
class _Remote:
    """The agent-side twin of one local session."""

    session_id: int
    address: str
    channel: Any
    resources: dict[int, int] = field(default_factory=dict)  # local resource id -> agent id


@dataclass
class _Held:
    """A local resource as the agent holds it: its id there and the local sessions that
    registered it (the agent destroys it when the last one unregisters)."""

    remote_id: int
    channel: Any
    sessions: set[int] = field(default_factory=set)


class UpstreamRpcBackend(AgentChannels, Backend):
    """Forwards sessions, resources and operations to an upstream vAccel agent."""

    name = "rpc-upstream"
    version = "0.1.0"
    type = PluginType.REMOTE
    description = (
        "remote execution on an upstream vAccel agent (vaccel-rpc-agent) at VACCEL_RPC_ADDRESS"
    )
    #: Outputs asked of TensorFlow Lite and Torch model runs (upstream needs the count; our
    #: API does not give it).
    nr_out_tensors = 1
    #: Upstream's ttrpc fork takes frames up to 1 GiB.
    default_max_message_bytes = UPSTREAM_MAX_MESSAGE_BYTES
    agent_name = "upstream vAccel agent"

    @classmethod
    def probe(cls) -> str | None:
        if importlib.util.find_spec("google.protobuf") is None:
            return "protobuf is not installed (pip install 'pyvaccel[remote]')"
        return None

    def __init__(self) -> None:
        self._init_channels()
        self._remotes: dict[int, _Remote] = {}
        self._held: dict[tuple[str, int], _Held] = {}
        self._schema: Any = None

    @property
    def pb(self) -> Any:
        """Upstream's generated modules (:func:`vaccel_core.proto.upstream.upstream`)."""
        if self._schema is None:
            from vaccel_core.proto.upstream import upstream

            self._schema = upstream()
        return self._schema

    def fini(self) -> None:
        self._close_channels()

    # Connections ---------------------------------------------------------------------------
    def _address(self, address: str) -> Address:
        return upstream_address(address)

    def _call(
        self,
        channel: Any,
        address: str,
        method: str,
        request: Any,
        reply_type: Any,
        what: str,
        timeout: float | None = None,
    ) -> Any:
        """One AgentService call; failures become our exceptions, naming ``what``."""
        from vaccel_core.proto.upstream import SERVICE_NAME

        payload = request.SerializeToString()
        self._begin(address)
        try:
            reply = channel.invoke(
                SERVICE_NAME, method, Message(payload), timeout or self.control_timeout
            )
        except CallError as exc:
            raise upstream_error(exc, method, what, address) from None
        except RemoteError as exc:
            if getattr(channel, "lost", True):
                self._forget(address, channel)
            raise RemoteError(f"{what}: {exc.message}") from None
        finally:
            self._end(address)
        out = reply_type()
        try:
            out.ParseFromString(reply.payload)
        except Exception as exc:
            raise RemoteError(
                f"{what}: the upstream agent at {address} sent a malformed {method} reply ({exc})"
            ) from None
        return out

    def _remote(self, session: Session, what: str) -> _Remote:
        remote = self._remotes.get(session.id)
        if remote is None:
            raise SessionError(f"{what}: session {session.id} has no session on the agent")
        lost = getattr(remote.channel, "lost", None)
        current = self._current(remote.address)
        if lost or current is not remote.channel:
            raise SessionError(
                f"{what}: session {session.id}: the connection to the upstream vAccel agent at "
                f"{remote.address} was lost ({lost or 'reconnected since'}); create a new session"
            )
        return remote

    def _rpc(self, remote: _Remote, method: str, request: Any, reply_type: Any, what: str) -> Any:
        return self._call(
            remote.channel, remote.address, method, request, reply_type, what, self.op_timeout
        )

    # Sessions ------------------------------------------------------------------------------
    def session_init(self, session: Session) -> None:
        flags = int(session.flags) & ~int(PluginType.REMOTE) & 0xFFFFFFFF

        def create(address: str, channel: Any) -> Any:
            return self._call(
                channel,
                address,
                "CreateSession",
                self.pb.session.CreateRequest(flags=flags),
                self.pb.session.CreateResponse,
                "create session",
            )

        address, channel, reply = self._place(session.config.rpc_address, create)
        self._remotes[session.id] = _Remote(reply.session_id, address, channel)
        logger.info("session %d: session %d on %s", session.id, reply.session_id, address)

    def session_release(self, session: Session) -> None:
        remote = self._remotes.pop(session.id, None)
        if remote is None or getattr(remote.channel, "lost", None):
            return
        try:
            self._call(
                remote.channel,
                remote.address,
                "DestroySession",
                self.pb.session.DestroyRequest(session_id=remote.session_id),
                self.pb.empty.Empty,
                "release session",
            )
        except VaccelError as exc:
            logger.warning("session %d: destroying its agent session failed: %s", session.id, exc)

    def session_update(self, session: Session, flags: int) -> list[str]:
        """Give the agent new session flags (upstream names no backends: returns [])."""
        remote = self._remote(session, "update session")
        self._call(
            remote.channel,
            remote.address,
            "UpdateSession",
            self.pb.session.UpdateRequest(
                session_id=remote.session_id,
                flags=int(flags) & ~int(PluginType.REMOTE) & 0xFFFFFFFF,
            ),
            self.pb.empty.Empty,
            "update session",
        )
        return []

    # Resources -----------------------------------------------------------------------------
    def resource_register(self, session: Session, resource: Resource) -> None:
        what = "register resource"
        remote = self._remote(session, what)
        key = (remote.address, resource.id)
        request = self.pb.resource.RegisterRequest(
            session_id=remote.session_id, resource_type=int(resource.type)
        )
        with self._lock:
            held = self._held.get(key)
        if held is not None and held.channel is remote.channel:
            request.resource_id = held.remote_id
        else:
            held = None
            for f in resource.files:
                try:
                    data = f.read()
                except (OSError, NotFoundError) as exc:
                    raise _unreadable(resource, f, exc) from exc
                if len(data) > MAX_BLOB_BYTES:
                    raise InvalidArgumentError(
                        f"{what}: resource {resource.id}: file {f.name!r} has {len(data)} "
                        f"bytes; upstream's Blob carries at most {MAX_BLOB_BYTES}"
                    )
                request.blobs.add(
                    type_=BLOB_BUFFER if f.path is None else BLOB_FILE,
                    name=f.name,
                    data=data,
                    size=len(data),
                )
        reply = self._rpc(
            remote, "RegisterResource", request, self.pb.resource.RegisterResponse, what
        )
        with self._lock:
            if held is None:
                held = self._held[key] = _Held(reply.resource_id, remote.channel)
            held.sessions.add(session.id)
        remote.resources[resource.id] = reply.resource_id

    def resource_unregister(self, session: Session, resource: Resource) -> None:
        remote = self._remotes.get(session.id)
        if remote is None:
            return
        remote_id = remote.resources.pop(resource.id, None)
        if remote_id is None:
            return
        key = (remote.address, resource.id)
        with self._lock:
            held = self._held.get(key)
            if held is not None:
                held.sessions.discard(session.id)
                if not held.sessions:
                    del self._held[key]
        if getattr(remote.channel, "lost", None):
            return
        self._rpc(
            remote,
            "UnregisterResource",
            self.pb.resource.UnregisterRequest(resource_id=remote_id, session_id=remote.session_id),
            self.pb.empty.Empty,
            "unregister resource",
        )

    def resource_sync(self, session: Session, resource: Resource) -> list[tuple[str, bytes]]:
        """The resource's files as the agent holds them now: (name, bytes) pairs."""
        what = "sync resource"
        remote = self._remote(session, what)
        reply = self._rpc(
            remote,
            "SyncResource",
            self.pb.resource.SyncRequest(resource_id=self._resource_id(remote, resource, what)),
            self.pb.resource.SyncResponse,
            what,
        )
        names = [f.name for f in resource.files]
        if len(reply.blobs) != len(names):
            raise RemoteError(
                f"{what}: resource {resource.id}: the upstream agent at {remote.address} sent "
                f"{len(reply.blobs)} files, expected {len(names)}"
            )
        return [(name, bytes(blob.data)) for name, blob in zip(names, reply.blobs, strict=True)]

    @staticmethod
    def _resource_id(remote: _Remote, resource: Resource, what: str) -> int:
        remote_id = remote.resources.get(resource.id)
        if remote_id is None:
            raise InvalidArgumentError(
                f"{what}: resource {resource.id} is not registered with the agent's session"
            )
        return remote_id

    # Generic operations --------------------------------------------------------------------
    def _genop(self, op: Op, session: Session, args: Sequence[Any]) -> Any:
        """Run ``op`` on the agent through ``Genop`` (read_args[0] is its type)."""
        what = CATALOG[op].method
        remote = self._remote(session, what)
        packed = genop_pack.pack(op, args, lambda r: self._resource_id(remote, r, what))
        request = self.pb.genop.Request(session_id=remote.session_id)
        for wire, args_ in ((request.read_args, packed.read), (request.write_args, packed.write)):
            for arg in args_:
                wire.add(
                    buf=arg.buf,
                    size=arg.size,
                    arg_type=int(arg.type),
                    custom_type_id=arg.custom_type_id,
                )
        reply = self._rpc(remote, "Genop", request, self.pb.genop.Response, what)
        return packed.results([bytes(a.buf) for a in reply.write_args])

    # Model operations (their own RPCs) -----------------------------------------------------
    def _model(self, session: Session, resource: Resource, what: str) -> tuple[_Remote, int]:
        remote = self._remote(session, what)
        return remote, self._resource_id(remote, resource, what)

    @staticmethod
    def _check_status(reply: Any, framework: Framework, what: str) -> None:
        """Model replies may carry upstream's ``vaccel.Status``: non-zero is a failure."""
        if reply.HasField("status") and reply.status.code != 0:
            raise BackendError(
                f"{what}: the upstream agent's {framework.name} backend failed with status "
                f"{reply.status.code}: {reply.status.message}"
            )

    def tf_model_load(self, session: Session, resource: Resource) -> None:
        remote, model = self._model(session, resource, "tf_model_load")
        reply = self._rpc(
            remote,
            "TensorflowModelLoad",
            self.pb.tf.ModelLoadRequest(session_id=remote.session_id, model_id=model),
            self.pb.tf.ModelLoadResponse,
            "tf_model_load",
        )
        self._check_status(reply, TF, "tf_model_load")

    def tf_model_unload(self, session: Session, resource: Resource) -> None:
        remote, model = self._model(session, resource, "tf_model_unload")
        reply = self._rpc(
            remote,
            "TensorflowModelUnload",
            self.pb.tf.ModelUnloadRequest(session_id=remote.session_id, model_id=model),
            self.pb.tf.ModelUnloadResponse,
            "tf_model_unload",
        )
        self._check_status(reply, TF, "tf_model_unload")

    def tf_model_run(
        self,
        session: Session,
        resource: Resource,
        in_nodes: Sequence[str],
        in_tensors: Sequence[np.ndarray],
        out_nodes: Sequence[str],
    ) -> list[np.ndarray]:
        what = "tf_model_run"
        if len(in_nodes) != len(in_tensors):
            raise InvalidArgumentError(
                f"{what}: {len(in_nodes)} input nodes for {len(in_tensors)} input tensors"
            )
        remote, model = self._model(session, resource, what)
        request = self.pb.tf.ModelRunRequest(session_id=remote.session_id, model_id=model)
        for nodes, names in ((request.in_nodes, in_nodes), (request.out_nodes, out_nodes)):
            for name in names:
                node_name, node_id = upstream_tensors.node(name)
                nodes.add(name=node_name, id=node_id)
        self._tensors(TF, in_tensors, request.in_tensors, what)
        reply = self._rpc(remote, "TensorflowModelRun", request, self.pb.tf.ModelRunResponse, what)
        self._check_status(reply, TF, what)
        return upstream_tensors.all_from_wire(TF, reply.out_tensors, what)

    def tflite_model_load(self, session: Session, resource: Resource) -> None:
        remote, model = self._model(session, resource, "tflite_model_load")
        self._rpc(
            remote,
            "TensorflowLiteModelLoad",
            self.pb.tflite.ModelLoadRequest(session_id=remote.session_id, model_id=model),
            self.pb.empty.Empty,
            "tflite_model_load",
        )

    def tflite_model_unload(self, session: Session, resource: Resource) -> None:
        remote, model = self._model(session, resource, "tflite_model_unload")
        self._rpc(
            remote,
            "TensorflowLiteModelUnload",
            self.pb.tflite.ModelUnloadRequest(session_id=remote.session_id, model_id=model),
            self.pb.empty.Empty,
            "tflite_model_unload",
        )

    def tflite_model_run(
        self, session: Session, resource: Resource, in_tensors: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        what = "tflite_model_run"
        remote, model = self._model(session, resource, what)
        request = self.pb.tflite.ModelRunRequest(
            session_id=remote.session_id, model_id=model, nr_out_tensors=self.nr_out_tensors
        )
        self._tensors(TFLITE, in_tensors, request.in_tensors, what)
        reply = self._rpc(
            remote, "TensorflowLiteModelRun", request, self.pb.tflite.ModelRunResponse, what
        )
        self._check_status(reply, TFLITE, what)
        return upstream_tensors.all_from_wire(TFLITE, reply.out_tensors, what)

    def torch_model_load(self, session: Session, resource: Resource) -> None:
        remote, model = self._model(session, resource, "torch_model_load")
        self._rpc(
            remote,
            "TorchModelLoad",
            self.pb.torch.ModelLoadRequest(session_id=remote.session_id, model_id=model),
            self.pb.empty.Empty,
            "torch_model_load",
        )

    def torch_model_run(
        self, session: Session, resource: Resource, in_tensors: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        what = "torch_model_run"
        remote, model = self._model(session, resource, what)
        request = self.pb.torch.ModelRunRequest(
            session_id=remote.session_id, model_id=model, nr_out_tensors=self.nr_out_tensors
        )
        self._tensors(TORCH, in_tensors, request.in_tensors, what)
        reply = self._rpc(remote, "TorchModelRun", request, self.pb.torch.ModelRunResponse, what)
        return upstream_tensors.all_from_wire(TORCH, reply.out_tensors, what)

    @staticmethod
    def _tensors(
        framework: Framework, arrays: Sequence[np.ndarray], field_: Any, what: str
    ) -> None:
        for i, array in enumerate(arrays):
            upstream_tensors.to_wire(framework, array, field_.add(), f"{what}: in_tensors[{i}]")


def _genop_method(op: Op) -> Callable[..., Any]:
    spec = CATALOG[op]

    def forward(self: UpstreamRpcBackend, session: Session, *args: Any) -> Any:
        return self._genop(op, session, args)

    forward.__name__ = forward.__qualname__ = spec.method
    forward.__doc__ = f"Run {spec.name} on the upstream agent through Genop. {spec.doc}"
    return forward


for _op in genop_pack.PACKERS:
    setattr(UpstreamRpcBackend, CATALOG[_op].method, _genop_method(_op))
