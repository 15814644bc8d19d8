"""The rpc backend (type REMOTE): every operation, session and resource call goes to the agent.

The agent's address comes from ``VACCEL_RPC_ADDRESS`` (older: ``VACCEL_VSOCK``; default
``tcp://127.0.0.1:65500``); its scheme picks the transport plugin. Each local session has a
remote twin on the agent. Resource files travel as blobs named by sha256: the agent is asked
first, and a file it already holds is not sent again. Every call has a deadline
(``VACCEL_RPC_TIMEOUT`` seconds for operations, default 300). When the agent cannot be reached
the call fails with :class:`~vaccel_core.errors.RemoteError` naming the address; the next call
connects again (sessions made on the lost connection are gone and say so).

``VACCEL_RPC_ADDRESS`` may name several agents (a comma-separated list, or a tcp name that
resolves to several addresses): each session is placed on one of them and stays there, with its
resources (:mod:`vaccel_plugins.rpc.placement`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vaccel_core.backend import Backend
from vaccel_core.errors import (
    InvalidArgumentError,
    NotFoundError,
    RemoteError,
    SessionError,
    VaccelError,
    error_for_code,
)
from vaccel_core.flags import PluginType
from vaccel_core.log import logger as _vaccel_logger
from vaccel_core.ops import CATALOG, OpSpec
from vaccel_core.transport import (
    Buffer,
    CallError,
    Channel,
    Message,
)

from . import codec
from .channels import AgentChannels

if TYPE_CHECKING:
    from vaccel_core.resource import Resource, ResourceFile
    from vaccel_core.session import Session

logger = _vaccel_logger.getChild("rpc")


def _unreadable(resource: Resource, file: ResourceFile, exc: Exception) -> NotFoundError:
    """A resource file that went away (or became unreadable) after the Resource was made."""
    if isinstance(exc, VaccelError) and isinstance(exc.__cause__, OSError):
        exc = exc.__cause__
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return NotFoundError(
        f"register resource: resource {resource.id}: file {file.name!r} ('{file.path}') "
        f"cannot be read: {reason}"
    )


#: Size of one blob upload chunk.
BLOB_CHUNK = 16 << 20


@dataclass
class _Remote:
    """The agent-side twin of one local session."""

    session_id: int
    address: str
    channel: Channel
    resources: dict[int, int] = field(default_factory=dict)  # local resource id -> remote id


class RpcBackend(AgentChannels, Backend):
    """Forwards everything to the vAccel agent at VACCEL_RPC_ADDRESS."""

    name = "rpc"
    version = "0.1.0"
    type = PluginType.REMOTE
    description = "remote execution on a vAccel agent (VACCEL_RPC_ADDRESS)"

    @classmethod
    def probe(cls) -> str | None:
        if importlib.util.find_spec("google.protobuf") is None:
            return "protobuf is not installed (pip install 'pyvaccel[remote]')"
        return None

    def __init__(self) -> None:
        self._init_channels()
        self._remotes: dict[int, _Remote] = {}

    @functools.cached_property
    def pb(self) -> Any:
        """The generated protobuf module, imported on first use (then a plain attribute)."""
        from vaccel_core.proto import pb

        return pb()

    def fini(self) -> None:
        self._close_channels()

    def _call(
        self,
        channel: Channel,
        address: str,
        method: str,
        msg: Any,
        buffers: Sequence[Buffer] = (),
        timeout: float | None = None,
        reply_type: Any = None,
        what: str | None = None,
    ) -> tuple[Any, Sequence[Buffer]]:
        request = Message(msg.SerializeToString(), tuple(buffers))
        self._begin(address)
        try:
            reply = channel.call(method, request, timeout or self.control_timeout)
        except CallError as exc:
            err = error_for_code(exc.code, _relabel(exc.message, method, what))
            err.status = exc.status  # type: ignore[attr-defined]
            raise err from None
        except RemoteError as exc:
            # A lost connection is dropped (the next call connects again); a call that only
            # ran out of time leaves the connection, and the client's sessions, alone.
            if getattr(channel, "lost", True):
                self._forget(address, channel)
            raise RemoteError(_relabel(exc.message, method, what)) from None
        finally:
            self._end(address)
        out = reply_type()
        try:
            out.ParseFromString(reply.payload)
        except Exception as exc:
            raise RemoteError(
                f"{method}: the agent at {address} sent a malformed reply ({exc})"
            ) from None
        return out, reply.buffers

    def _remote(self, session: Session, what: str) -> _Remote:
        remote = self._remotes.get(session.id)
        if remote is None:
            raise SessionError(f"{what}: session {session.id} has no remote session on the agent")
        lost = getattr(remote.channel, "lost", None)
        current = self._current(remote.address)
        if lost or current is not remote.channel:
            raise SessionError(
                f"{what}: session {session.id}: the connection to the vAccel agent at "
                f"{remote.address} was lost ({lost or 'reconnected since'}); its remote "
                f"session is gone, create a new session"
            )
        return remote

    # Sessions ------------------------------------------------------------------------------
    def session_init(self, session: Session) -> None:
        flags = int(session.flags) & ~int(PluginType.REMOTE)

        def create(address: str, channel: Channel) -> Any:
            reply, _ = self._call(
                channel,
                address,
                "CreateSession",
                self.pb.CreateSessionRequest(flags=flags),
                reply_type=self.pb.CreateSessionResponse,
            )
            return reply

        address, channel, reply = self._place(session.config.rpc_address, create)
        self._remotes[session.id] = _Remote(reply.session_id, address, channel)
        logger.info(
            "session %d: remote session %d on %s (backends %s)",
            session.id,
            reply.session_id,
            address,
            ", ".join(reply.backends),
        )

    def session_release(self, session: Session) -> None:
        remote = self._remotes.pop(session.id, None)
        if remote is None or getattr(remote.channel, "lost", None):
            return
        try:
            self._call(
                remote.channel,
                remote.address,
                "DestroySession",
                self.pb.DestroySessionRequest(session_id=remote.session_id),
                reply_type=self.pb.DestroySessionResponse,
            )
        except VaccelError as exc:
            logger.warning("session %d: destroying remote session failed: %s", session.id, exc)

    def session_update(self, session: Session, flags: int) -> list[str]:
        """Ask the agent to pick backends again for new session flags; returns their names."""
        remote = self._remote(session, "session update")
        reply, _ = self._call(
            remote.channel,
            remote.address,
            "UpdateSession",
            self.pb.UpdateSessionRequest(
                session_id=remote.session_id, flags=int(flags) & ~int(PluginType.REMOTE)
            ),
            reply_type=self.pb.UpdateSessionResponse,
        )
        return list(reply.backends)

    def agent_status(self, address: str | None = None) -> Any:
        """The agent's StatusResponse (sessions, resources, blobs it holds). ``address``: one
        agent (default: VACCEL_RPC_ADDRESS, when it names one; :meth:`agents` lists them)."""
        from vaccel_core.config import get_config

        address = address or get_config().rpc_address
        if "," in address:
            raise InvalidArgumentError(
                f"agent status: {address!r} names several agents; ask each of them (the rpc "
                f"backend's agents(address) lists them)"
            )
        reply, _ = self._call(
            self._channel(address),
            address,
            "GetStatus",
            self.pb.StatusRequest(),
            reply_type=self.pb.StatusResponse,
        )
        return reply

    # Resources -----------------------------------------------------------------------------
    def resource_register(self, session: Session, resource: Resource) -> None:
        remote = self._remote(session, "register resource")
        request = self.pb.RegisterResourceRequest(
            session_id=remote.session_id, type=int(resource.type)
        )
        for index, f in enumerate(resource.files):
            try:
                request.files.add(name=f.name, sha256=resource.sha256(index), size=f.size)
            except (OSError, NotFoundError) as exc:
                raise _unreadable(resource, f, exc) from exc
        for attempt in range(2):
            reply, _ = self._call(
                remote.channel,
                remote.address,
                "RegisterResource",
                request,
                reply_type=self.pb.RegisterResourceResponse,
            )
            if not reply.missing_blobs:
                remote.resources[resource.id] = reply.resource_id
                return
            if attempt == 0:
                missing = set(reply.missing_blobs)
                for index, f in enumerate(resource.files):
                    digest = resource.sha256(index)
                    if digest in missing:
                        missing.discard(digest)
                        self._upload(remote, digest, f, resource)
        raise RemoteError(
            f"register resource: the agent at {remote.address} still lacks blobs "
            f"{', '.join(reply.missing_blobs)} after they were uploaded"
        )

    def _upload(self, remote: _Remote, digest: str, file: ResourceFile, resource: Resource) -> None:
        """Send one file as a blob, in chunks (read from disk one chunk at a time)."""
        chunk = max(1, min(BLOB_CHUNK, self.max_message_bytes // 2))
        with contextlib.ExitStack() as stack:
            if file.data is not None:
                data = memoryview(file.data)
                size = len(data)

                def read(offset: int) -> Buffer:
                    return data[offset : offset + chunk]

            else:
                assert file.path is not None
                try:
                    fh = stack.enter_context(open(file.path, "rb"))
                    size = os.fstat(fh.fileno()).st_size
                except OSError as exc:
                    raise _unreadable(resource, file, exc) from exc

                def read(offset: int) -> Buffer:
                    try:
                        return fh.read(chunk)
                    except OSError as exc:
                        raise _unreadable(resource, file, exc) from exc

            self._send_blob(remote, digest, size, read)

    def _send_blob(
        self, remote: _Remote, digest: str, size: int, read: Callable[[int], Buffer]
    ) -> None:
        offset = 0
        while True:
            piece = read(offset)
            if not len(piece) and offset < size:
                raise InvalidArgumentError(
                    f"register resource: blob {digest[:12]} ended at {offset} of {size} bytes "
                    f"(did the file change while it was being sent?)"
                )
            encoder = codec.Encoder()
            request = self.pb.PutBlobRequest(sha256=digest, size=size, offset=offset)
            encoder.data(request.data, piece)
            request.data.SetInParent()
            reply, _ = self._call(
                remote.channel,
                remote.address,
                "PutBlob",
                request,
                encoder.buffers,
                reply_type=self.pb.PutBlobResponse,
            )
            offset += len(piece)
            if reply.complete and reply.received == size and offset < size:
                # This client already holds the blob (another of its sessions uploaded it
                # meanwhile): nothing more to send. Other clients' blobs never count.
                logger.debug("blob %s already held by this client", digest[:12])
                return
            if offset >= size:
                if not reply.complete:
                    raise RemoteError(
                        f"register resource: the agent at {remote.address} did not accept "
                        f"blob {digest[:12]} ({reply.received} of {size} bytes)"
                    )
                logger.debug("uploaded blob %s (%d bytes)", digest[:12], size)
                return

    def resource_unregister(self, session: Session, resource: Resource) -> None:
        remote = self._remotes.get(session.id)
        if remote is None:
            return
        remote_id = remote.resources.pop(resource.id, None)
        if remote_id is None or getattr(remote.channel, "lost", None):
            return
        self._call(
            remote.channel,
            remote.address,
            "UnregisterResource",
            self.pb.UnregisterResourceRequest(session_id=remote.session_id, resource_id=remote_id),
            reply_type=self.pb.UnregisterResourceResponse,
        )

    def resource_sync(self, session: Session, resource: Resource) -> list[tuple[str, bytes]]:
        """The resource's files as the agent holds them now: (name, bytes) pairs.

        Read in pieces of at most one message each (``SyncResourceRequest.piece``), so a
        resource larger than the message limit comes back too."""
        remote = self._remote(session, "sync resource")
        resource_id = self._resource_id(remote, resource, "sync resource")
        chunk = max(1, min(BLOB_CHUNK, self.max_message_bytes // 2))
        names: list[str] = []
        sizes: list[int] = []
        got: list[bytearray] = []
        index, offset = 0, 0
        while True:
            request = self.pb.SyncResourceRequest(
                session_id=remote.session_id, resource_id=resource_id
            )
            request.piece.file, request.piece.offset, request.piece.length = index, offset, chunk
            reply, buffers = self._call(
                remote.channel,
                remote.address,
                "SyncResource",
                request,
                reply_type=self.pb.SyncResourceResponse,
            )
            listed = [(f.name, int(f.size)) for f in reply.files]
            if not got:
                names, sizes = [n for n, _ in listed], [s for _, s in listed]
                got = [bytearray() for _ in listed]
            elif listed != list(zip(names, sizes, strict=True)):
                raise RemoteError(
                    f"sync resource: resource {resource.id}: its files changed on the agent at "
                    f"{remote.address} while they were being read"
                )
            decoder = codec.Decoder(buffers, "sync resource")
            start = index
            for i in range(index, len(names)):
                got[i] += decoder.data(reply.files[i].data, names[i])
                if len(got[i]) > sizes[i]:
                    raise RemoteError(
                        f"sync resource: the agent at {remote.address} sent more than the "
                        f"{sizes[i]} bytes of file {names[i]!r}"
                    )
            while index < len(names) and len(got[index]) == sizes[index]:
                index += 1
            if index >= len(names):
                return [(n, bytes(g)) for n, g in zip(names, got, strict=True)]
            if index == start and len(got[index]) == offset:
                raise RemoteError(
                    f"sync resource: the agent at {remote.address} sent no bytes of file "
                    f"{names[index]!r} from offset {offset} (of {sizes[index]})"
                )
            offset = len(got[index])

    @staticmethod
    def _resource_id(remote: _Remote, resource: Resource, what: str) -> int:
        remote_id = remote.resources.get(resource.id)
        if remote_id is None:
            raise InvalidArgumentError(
                f"{what}: resource {resource.id} is not registered with the remote session"
            )
        return remote_id

    # Operations ----------------------------------------------------------------------------
    def _run(self, spec: OpSpec, case: str, session: Session, args: Sequence[Any]) -> Any:
        """Run ``spec`` on the agent; ``case`` is its wire name (``spec.name``, passed in by
        the forwarder that computed it once)."""
        remote = self._remote(session, spec.method)
        request = self.pb.OpRequest(
            session_id=remote.session_id, op=case, profile=session.profiler is not None
        )
        arguments = getattr(request, case)
        arguments.SetInParent()
        encoder = codec.Encoder()
        codec.encode_args(
            spec,
            args,
            arguments,
            encoder,
            lambda resource: self._resource_id(remote, resource, spec.method),
        )
        reply, buffers = self._call(
            remote.channel,
            remote.address,
            "Run",
            request,
            encoder.buffers,
            timeout=self.op_timeout,
            reply_type=self.pb.OpResponse,
            what=spec.method,
        )
        answered = reply.WhichOneof("result")
        if answered != case:
            raise RemoteError(
                f"{spec.method}: the agent at {remote.address} answered with {answered!r} results"
            )
        if session.profiler is not None:
            session.profiler.merge(reply.regions)
        return codec.decode_results(spec, getattr(reply, case), codec.Decoder(buffers, spec.method))


def _relabel(message: str, method: str, what: str | None) -> str:
    """Name the operation instead of the wire method ("Run: ..." -> "sgemm: ...")."""
    if what and message.startswith(f"{method}:"):
        return what + message[len(method) :]
    return message


def _forwarder(spec: OpSpec) -> Any:
    case = spec.name

    def forward(self: RpcBackend, session: Session, *args: Any) -> Any:
        return self._run(spec, case, session, args)

    forward.__name__ = forward.__qualname__ = spec.method
    forward.__doc__ = f"Run {spec.name} on the agent. {spec.doc}"
    return forward


for _spec in CATALOG.values():
    setattr(RpcBackend, _spec.method, _forwarder(_spec))
