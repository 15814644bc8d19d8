"""The agent service: one transport-agnostic handler for every method of agent.proto.

Sessions are ordinary :class:`vaccel_core.Session` objects made with the agent's own
configuration (the host's backends), so the same dispatcher runs them. Each belongs to the
client connection (peer) that created it: another peer gets NOT_FOUND. When a peer goes away,
or a session stays idle past the TTL, the agent releases it and its resources. Resource files
arrive as blobs kept by sha256 (:mod:`vaccel_agent.blobs`); registering a file the agent
already holds sends only its digest.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaccel_core import batching
from vaccel_core.config import Config
from vaccel_core.errors import (
    BackendError,
    InvalidArgumentError,
    NotFoundError,
    OutOfMemoryError,
    VaccelError,
    clip,
)
from vaccel_core.flags import PluginType
from vaccel_core.log import logger as _vaccel_logger
from vaccel_core.ops import ResourceType, result_bytes
from vaccel_core.plugins import PluginRegistry
from vaccel_core.resource import Resource
from vaccel_core.session import Session
from vaccel_core.transport import Buffer, CallError, Message, Peer, status_for
from vaccel_plugins.rpc import codec

from .admission import Admission
from .blobs import BlobStore, check_digest
from .limits import Limits, limit_error
from .status import build_status
from .telemetry import UNKNOWN_METHOD, Telemetry

logger = _vaccel_logger.getChild("agent")


@contextlib.contextmanager
def _host_io(what: str) -> Iterator[None]:
    """Host file work for a client: an OSError becomes ``what`` with its reason but none of
    its paths (those are the agent's, and go to its debug log only)."""
    try:
        yield
    except OSError as exc:
        logger.debug("%s: %s", what, exc)
        reason = exc.strerror or type(exc).__name__
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutOfMemoryError(f"{what} ({reason})") from None
        raise VaccelError(f"{what} ({reason})", code=errno.EIO) from None


#: Longest error message a client gets (a backstop: messages quote client input clipped).
MAX_ERROR_CHARS = 1024


def call_error(exc: VaccelError, private: Sequence[str] = ()) -> CallError:
    """The CallError (gRPC-style status + upstream code) a transport reports for ``exc``: its
    message without the agent's ``private`` folders (a backend's error may name the file it
    was given, under the blob store) and at most :data:`MAX_ERROR_CHARS` long."""
    message = exc.message
    for folder in private:
        message = redact_paths(message, folder)
    if len(message) > MAX_ERROR_CHARS:
        message = f"{message[: MAX_ERROR_CHARS - 40]}... ({len(message)} characters)"
    if isinstance(exc, CallError) and message == exc.message:
        return exc
    status = exc.status if isinstance(exc, CallError) else status_for(exc)
    return CallError(status, message, code=exc.code)


def redact_paths(message: str, folder: str) -> str:
    """``message`` with every path under ``folder`` replaced by its last component: a backend
    that says "cannot load /tmp/vaccel-agent-0/.../resource-x/model.onnx" tells the client
    "cannot load model.onnx"."""
    if not folder or folder not in message:
        return message
    pattern = re.escape(folder.rstrip("/")) + r"(?:/[^\s'\"]*)?"

    def last(match: re.Match[str]) -> str:
        return match.group(0).rstrip("/").rsplit("/", 1)[-1] or "<agent>"

    return re.sub(pattern, last, message)


#: Longest resource file name, in bytes of UTF-8 (NAME_MAX of Linux file systems).
MAX_FILE_NAME_BYTES = 255


def _check_file_name(name: str) -> str:
    """A plain file name the agent may create in a resource folder, or INVALID_ARGUMENT."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if not name:
        why = "is empty"
    elif size > MAX_FILE_NAME_BYTES:
        why = f"is {size} bytes long (at most {MAX_FILE_NAME_BYTES})"
    elif "/" in name:
        why = "contains '/'"
    elif "\0" in name:
        why = "contains NUL"
    elif name in {".", ".."}:
        why = "is '.' or '..'"
    else:
        return name
    raise InvalidArgumentError(
        f"RegisterResource: argument 'files': expected a plain file name (1 to "
        f"{MAX_FILE_NAME_BYTES} bytes of UTF-8, no '/' or NUL, not '.' or '..'); "
        f"{clip(name)} {why}"
    )


@dataclass
class _AgentResource:
    resource: Resource
    digests: list[str]
    folder: Path
    owner: str  # the client whose blobs it uses


@dataclass
class _AgentSession:
    id: int
    owner: str
    session: Session
    resources: dict[int, _AgentResource] = field(default_factory=dict)
    last_used: float = field(default_factory=time.monotonic)


Reply = tuple[Any, Sequence[Buffer]]


def _size(message: Message) -> int:
    """``message.nbytes`` without a generator for the usual message with no buffers."""
    buffers = message.buffers
    return len(message.payload) + (sum(map(len, buffers)) if buffers else 0)


#: Sessions of a client that never attached (a plain gRPC client such as grpcurl) cannot be
#: released when it goes away; they are released after this many idle seconds instead.
UNATTACHED_TTL = 300.0


class AgentService:
    """Implements :class:`vaccel_core.transport.Handler` for the agent protocol."""

    def __init__(
        self,
        config: Config,
        registry: PluginRegistry,
        *,
        session_ttl: float | None = None,
        blob_root: Path | None = None,
        inline_limit: int = codec.INLINE_LIMIT,
        unattached_ttl: float = UNATTACHED_TTL,
        limits: Limits | None = None,
        **limit_values: Any,
    ) -> None:
        from vaccel_core.proto import pb

        self.pb = pb()
        self.config = config
        self.registry = registry
        #: What clients may make the agent hold; keyword arguments named after a limit
        #: (``max_sessions=2``) override single values.
        self.limits = (limits or Limits()).with_values(limit_values)
        self.session_ttl = session_ttl if session_ttl and session_ttl > 0 else None
        self.unattached_ttl = unattached_ttl
        self.inline_limit = inline_limit
        self.blobs = BlobStore(
            blob_root,
            max_blob_bytes=self.limits.max_blob_bytes or None,
            quota_bytes=self.limits.blob_quota_bytes or None,
            max_client_bytes=self.limits.max_client_blob_bytes or None,
            max_uploads=self.limits.max_uploads,
            upload_idle_timeout=self.limits.upload_idle_timeout,
        )
        self.admission = Admission(self.limits)
        #: Every call, peer and refusal, counted (read by GetStatus and the metrics endpoint).
        self.telemetry = Telemetry(lambda client: self.admission.in_flight(client)[0])
        #: Joins concurrent calls of one model from any clients (None: batching is off).
        self.batcher = batching.Batcher.from_config(config)
        if self.batcher is not None:
            batching.report_to(self.batcher, self.telemetry)
        self.started = time.monotonic()  # GetStatus's uptime
        self._tickets = threading.local()
        self._lock = threading.RLock()
        self._sessions: dict[int, _AgentSession] = {}
        self._peers: set[str] = set()
        self._closed = False
        self.sessions_released = 0
        p = self.pb
        self._methods: dict[str, tuple[Any, Callable[[Any, Sequence[Buffer], Peer], Reply]]] = {
            "GetStatus": (p.StatusRequest, self._status),
            "CreateSession": (p.CreateSessionRequest, self._create_session),
            "UpdateSession": (p.UpdateSessionRequest, self._update_session),
            "DestroySession": (p.DestroySessionRequest, self._destroy_session),
            "PutBlob": (p.PutBlobRequest, self._put_blob),
            "RegisterResource": (p.RegisterResourceRequest, self._register_resource),
            "UnregisterResource": (p.UnregisterResourceRequest, self._unregister_resource),
            "SyncResource": (p.SyncResourceRequest, self._sync_resource),
            "Run": (p.OpRequest, self._run),
        }
        from .upstream import services_for

        #: Other ttrpc services on the same connections: upstream vAccel's AgentService.
        self.services = services_for(self)

    # Handler -------------------------------------------------------------------------------
    def handle(self, method: str, request: Message, peer: Peer, transport: str = "") -> Message:
        """Serve one call, counted in :attr:`telemetry` (``transport``: the listener's)."""
        label = method if method in self._methods else UNKNOWN_METHOD
        call = self._tickets.call = self.telemetry.begin(label, peer.id, transport, _size(request))
        try:
            reply = self._serve(method, request, peer)
        except BaseException as exc:
            self.telemetry.failed(call, exc)
            raise
        self.telemetry.end(call, "OK", _size(reply))
        return reply

    def _serve(self, method: str, request: Message, peer: Peer) -> Message:
        entry = self._methods.get(method)
        if entry is None:
            raise CallError(
                "UNIMPLEMENTED",
                f"{method if len(method) <= 64 else clip(method)}: no such method in "
                f"vaccel.agent.v1.Agent "
                f"(known: Attach, {', '.join(self._methods)})",
                code=errno.ENOTSUP,
            )
        ticket = self.admission.admit(peer.id, method, request.nbytes)
        self._tickets.current = ticket
        try:
            request_type, impl = entry
            msg = request_type()
            try:
                msg.ParseFromString(request.payload)
            except Exception:
                raise CallError(
                    "INVALID_ARGUMENT",
                    f"{method}: malformed request: expected a "
                    f"{request_type.DESCRIPTOR.full_name} message",
                    code=errno.EINVAL,
                ) from None
            try:
                reply, buffers = impl(msg, request.buffers, peer)
            except VaccelError as exc:
                logger.debug("%s from peer %s failed: %s", method, peer.id, exc)
                raise call_error(exc, (str(self.blobs.base),)) from exc
            return Message(reply.SerializeToString(), tuple(buffers))
        finally:
            self._tickets.current = None
            ticket.release()

    def _reserve_reply(self, nbytes: int | None, why: str) -> None:
        """Hold ``nbytes`` of reply for the call being served (RESOURCE_EXHAUSTED over a
        limit); a no-op outside :meth:`handle`. Counted twice: the result (an array, the
        bytes read) and the message that carries it exist at the same time."""
        ticket = getattr(self._tickets, "current", None)
        if ticket is not None and nbytes:
            ticket.reserve(nbytes, why, copies=2)

    def _note_run(self, operation: str, session: Session | None = None, op: Any = None) -> None:
        """The operation (and the session's backend for it) of the Run being served, for its
        telemetry; a backend that cannot be resolved is left for the call to report."""
        call = getattr(self._tickets, "call", None)
        if call is None:
            return
        call.operation = operation
        if session is not None:
            try:  # noqa: SIM105 (contextlib.suppress costs more, on every Run)
                call.backend = session.backend_for(op).name
            except VaccelError:
                pass

    def peer_connected(self, peer: Peer, transport: str = "") -> None:
        with self._lock:
            self._peers.add(peer.id)
        self.telemetry.connected(peer.id, peer.description, transport)
        logger.info("client %s connected (%s)", peer.id, peer.description)

    def peer_disconnected(self, peer: Peer) -> None:
        self.telemetry.disconnected(peer.id)
        with self._lock:
            self._peers.discard(peer.id)
            gone = self._sessions_of(peer.id)
        for record in gone:
            self._release(record, "its client disconnected")
        self.blobs.drop_owner(peer.id)  # its uploads, reservations and blobs
        logger.info(
            "client %s disconnected (%s); released %d session(s)",
            peer.id,
            peer.description,
            len(gone),
        )
        self._log_counts()

    # Bookkeeping ---------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """How many sessions, resources, blobs and peers the agent holds."""
        with self._lock:
            sessions = list(self._sessions.values())
            peers = len(self._peers)
        return {
            "sessions": len(sessions),
            "resources": sum(len(s.resources) for s in sessions),
            "blobs": self.blobs.count,
            "blob_bytes": self.blobs.nbytes,
            "peers": peers,
        }

    def _log_counts(self) -> None:
        if logger.isEnabledFor(10):
            c = self.counts()
            logger.debug(
                "agent holds %d session(s), %d resource(s), %d blob(s) (%d bytes), %d client(s)",
                c["sessions"],
                c["resources"],
                c["blobs"],
                c["blob_bytes"],
                c["peers"],
            )

    def _sessions_of(self, owner: str) -> list[_AgentSession]:
        """The sessions ``owner`` holds."""
        with self._lock:
            return [r for r in self._sessions.values() if r.owner == owner]

    def _session(self, session_id: int, peer: Peer, what: str) -> _AgentSession:
        with self._lock:
            record = self._sessions.get(session_id)
            if record is None or record.owner != peer.id:
                # The same answer whether it never existed or belongs to another client.
                raise NotFoundError(f"{what}: session {session_id} not found")
            record.last_used = time.monotonic()
            return record

    def _release(self, record: _AgentSession, why: str) -> None:
        with self._lock:
            if self._sessions.pop(record.id, None) is None:
                return
            self.sessions_released += 1 if why != "destroyed" else 0
        try:
            record.session.release()
        finally:
            for res in record.resources.values():
                self._drop_files(res)
            record.resources.clear()
        logger.info("session %d (client %s) released: %s", record.id, record.owner, why)

    def _drop_files(self, res: _AgentResource) -> None:
        shutil.rmtree(res.folder, ignore_errors=True)
        self.blobs.release(res.owner, res.digests)

    def reap(self, now: float | None = None) -> int:
        """Release sessions idle for longer than the TTL, and those of clients that never
        attached idle for longer than ``unattached_ttl``; returns how many."""
        now = time.monotonic() if now is None else now
        idle: list[tuple[_AgentSession, float]] = []
        with self._lock:
            for record in self._sessions.values():
                limit = self.session_ttl
                if record.owner not in self._peers:
                    limit = min(limit or self.unattached_ttl, self.unattached_ttl)
                if limit is not None and now - record.last_used > limit:
                    idle.append((record, limit))
        for record, limit in idle:
            self._release(record, f"idle for more than {limit:g} s")
        self.blobs.reap(now)  # idle uploads, and blobs uploaded but never used
        if idle:
            self._log_counts()
        return len(idle)

    @property
    def reap_period(self) -> float:
        """How often :meth:`reap` should run."""
        return min(max(min(self.session_ttl or 5.0, self.unattached_ttl) / 4, 0.05), 5.0)

    def close(self) -> None:
        """Release every session and delete every blob (the agent is stopping)."""
        with self._lock:
            self._closed = True
            records = list(self._sessions.values())
        for record in records:
            self._release(record, "the agent is stopping")
        self.blobs.close()

    # Methods -------------------------------------------------------------------------------
    def _status(self, msg: Any, buffers: Sequence[Buffer], peer: Peer) -> Reply:
        # The operator sees the whole agent; a client only itself (vaccel_agent.status).
        return build_status(self, peer), ()

    def _new_session(self, flags: int) -> Session:
        return Session(
            int(flags) & ~int(PluginType.REMOTE),
            config=self.config,
            registry=self.registry,
            batcher=self.batcher,
        )

    def _create_session(self, msg: Any, buffers: Sequence[Buffer], peer: Peer) -> Reply:
        if self._closed:
            raise CallError("UNAVAILABLE", "CreateSession: the agent is stopping", code=errno.EIO)
        self._check_session_count(peer)
        session = self._new_session(msg.flags)
        session.meta["peer"] = peer.id
        with self._lock:
            # Checked again under the lock: close() may have run while the session was made,
            # and would never release a session added after it.
            closed = self._closed
            if not closed:
                self._check_session_count(peer)  # again: another call may have made one
                wire_id = secrets.randbits(52) or 1
                while wire_id in self._sessions:
                    wire_id = secrets.randbits(52) or 1
                self._sessions[wire_id] = _AgentSession(wire_id, peer.id, session)
        if closed:
            session.release()
            raise CallError("UNAVAILABLE", "CreateSession: the agent is stopping", code=errno.EIO)
        logger.info(
            "session %d created for client %s with backends %s (flags 0x%x)",
            wire_id,
            peer.id,
            ", ".join(b.name for b in session.backends),
            msg.flags,
        )
        self._log_counts()
        reply = self.pb.CreateSessionResponse(
            session_id=wire_id, backends=[b.name for b in session.backends]
        )
        return reply, ()

    def _check_session_count(self, peer: Peer) -> None:
        held, limit = len(self._sessions_of(peer.id)), self.limits.max_sessions
        if held >= limit:
            raise limit_error(
                "CreateSession",
                "max_sessions",
                f"this client holds {held} sessions (limit {limit})",
            )

    def _update_session(self, msg: Any, buffers: Sequence[Buffer], peer: Peer) -> Reply:
        record = self._session(msg.session_id, peer, "UpdateSession")
        new = self._new_session(msg.flags)
        new.meta["peer"] = peer.id
        old = record.session
        moved: list[Resource] = []
        try:
            for res in record.resources.values():
                res.resource.register(new)
                moved.append(res.resource)
        except BaseException:
            new.release()
            raise
        for resource in moved:
            with contextlib.suppress(VaccelError):
                resource.unregister(old)
        record.session = new
        old.release()
        reply = self.pb.UpdateSessionResponse(backends=[b.name for b in new.backends])
        return reply, ()

    def _destroy_session(self, msg: Any, buffers: Sequence[Buffer], peer: Peer) -> Reply:
        record = self._session(msg.session_id, peer, "DestroySession")
        self._release(record, "destroyed")
        self._log_counts()
        return self.pb.DestroySessionResponse(), ()

    def _put_blob(self, msg: Any, buffers: Sequence[Buffer], peer: Peer) -> Reply:
        chunk = codec.Decoder(buffers, "PutBlob").data(msg.data, "data")
        received = self.blobs.put(msg.sha256, msg.size, msg.offset, memoryview(chunk), peer.id)
        # Complete once *this* client holds the whole blob: what others hold never shows.
        complete = received == msg.size and self.blobs.holds(peer.id, msg.sha256)
        return self.pb.PutBlobResponse(complete=complete, received=received), ()

    def _client_resources(self, owner: str) -> int:
        """Resources ``owner`` holds, all its sessions together."""
        return sum(len(r.resources) for r in self._sessions_of(owner))

    def _check_resource_count(self, owner: str) -> None:
        held, limit = self._client_resources(owner), self.limits.max_resources
        if held >= limit:
            raise limit_error(
                "RegisterResource",
                "max_resources",
                f"this client holds {held} resources (limit {limit}, all its sessions "
                f"together); unregister one first",
            )

    def _register_resource(self, msg: Any, buffers: Sequence[Buffer], peer: Peer) -> Reply:
        record = self._session(msg.session_id, peer, "RegisterResource")
        try:
            rtype = ResourceType(msg.type)
        except ValueError:
            raise InvalidArgumentError(
                f"RegisterResource: argument 'type': expected one of "
                f"{', '.join(f'{t.value} ({t.name})' for t in ResourceType)}, got {msg.type}"
            ) from None
        if not msg.files:
            raise InvalidArgumentError("RegisterResource: argument 'files': expected at least one")
        if len(msg.files) > self.limits.max_resource_files:
            raise limit_error(
                "RegisterResource",
                "max_resource_files",
                f"argument 'files': {len(msg.files)} files in one resource (limit "
                f"{self.limits.max_resource_files})",
            )
        self._check_resource_count(peer.id)
        files: list[tuple[str, str, int]] = []
        seen: set[str] = set()
        for f in msg.files:
            name = _check_file_name(f.name)
            if name in seen:
                raise InvalidArgumentError(
                    f"RegisterResource: argument 'files': duplicate file name {clip(name)}"
                )
            seen.add(name)
            digest = check_digest(f.sha256, f"RegisterResource: file {clip(name)}: sha256")
            files.append((name, digest, f.size))
        # Only blobs this client uploaded itself count: the same answer whether another
        # client holds a digest or nobody does.
        missing = self.blobs.acquire(peer.id, files, "RegisterResource")
        if missing:
            return self.pb.RegisterResourceResponse(missing_blobs=missing), ()
        digests = [digest for _, digest, _ in files]
        folder: Path | None = None
        try:
            folder = self._resource_folder(files)
            resource = Resource([folder / name for name, _, _ in files], rtype)
            resource.register(record.session)
        except BaseException:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            self.blobs.release(peer.id, digests)
            raise
        entry = _AgentResource(resource, digests, folder, peer.id)
        with self._lock:
            # The session may have been released meanwhile (its client went away, it idled
            # out, the agent is stopping): it would never release a resource added now.
            closed = self._closed
            live = not closed and self._sessions.get(record.id) is record
            over = live and self._client_resources(peer.id) >= self.limits.max_resources
            if live and not over:
                record.resources[resource.id] = entry
        if not live or over:
            with contextlib.suppress(VaccelError):
                resource.unregister(record.session)
            self._drop_files(entry)
            if over:  # another call of this client registered one meanwhile
                self._check_resource_count(peer.id)
            if closed:
                raise CallError(
                    "UNAVAILABLE", "RegisterResource: the agent is stopping", code=errno.EIO
                )
            raise NotFoundError(
                f"RegisterResource: session {record.id} not found (released while the "
                f"resource was being registered)"
            )
        logger.debug(
            "session %d: resource %d registered (%s, %d file(s))",
            record.id,
            resource.id,
            rtype.name,
            len(files),
        )
        self._log_counts()
        return self.pb.RegisterResourceResponse(resource_id=resource.id), ()

    def _resource_folder(self, files: Sequence[tuple[str, str, int]]) -> Path:
        """A new folder of the store with each blob under its file name (hard links, else
        copies). An OSError reaches the client described without the agent's paths (which go
        to the agent's debug log)."""
        with _host_io("RegisterResource: the agent cannot make the resource's folder"):
            folder = Path(tempfile.mkdtemp(prefix="resource-", dir=self.blobs.root))
        try:
            for name, digest, _ in files:
                source, target = self.blobs.path(digest), folder / name
                with _host_io(f"RegisterResource: file {clip(name)}: the agent cannot place it"):
                    try:
                        os.link(source, target)
                    except OSError:
                        shutil.copyfile(source, target)
        except VaccelError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return folder

    def _resource(self, record: _AgentSession, resource_id: int, what: str) -> _AgentResource:
        res = record.resources.get(resource_id)
        if res is None:
            raise NotFoundError(
                f"{what}: resource {resource_id} is not registered with session {record.id}"
            )
        return res

    def _unregister_resource(self, msg: Any, buffers: Sequence[Buffer], peer: Peer) -> Reply:
        record = self._session(msg.session_id, peer, "UnregisterResource")
        with self._lock:  # one of two concurrent calls unregisters it; the other: NOT_FOUND
            res = self._resource(record, msg.resource_id, "UnregisterResource")
            del record.resources[msg.resource_id]
        try:
            res.resource.unregister(record.session)
        finally:
            self._drop_files(res)
        self._log_counts()
        return self.pb.UnregisterResourceResponse(), ()

    def _sync_resource(self, msg: Any, buffers: Sequence[Buffer], peer: Peer) -> Reply:
        """The resource's files: all of them whole (refused before anything is read when they
        would not fit one reply), or one piece of at most one reply (``msg.piece``)."""
        record = self._session(msg.session_id, peer, "SyncResource")
        res = self._resource(record, msg.resource_id, "SyncResource")
        names = [f.name for f in res.resource.files]
        paths = res.resource.local_paths()
        sizes = [self._file_size(path, name) for path, name in zip(paths, names, strict=True)]
        # What a reply carries besides file bytes: names, sizes, digests, framing.
        overhead = 1024 + sum(len(n.encode()) + 96 for n in names)
        room = self.limits.max_message_bytes - overhead
        reply = self.pb.SyncResourceResponse()
        encoder = codec.Encoder(self.inline_limit)
        if not msg.HasField("piece"):
            total = sum(sizes)
            if total > room:
                raise limit_error(
                    "SyncResource",
                    "max_message_bytes",
                    f"resource {msg.resource_id}: its {len(names)} file(s) total {total} "
                    f"bytes, more than one reply may carry ({self.limits.max_message_bytes} "
                    f"bytes); read it in pieces (SyncResourceRequest.piece)",
                )
            self._reserve_reply(total, "the resource's files")
            for name, path, size in zip(names, paths, sizes, strict=True):
                data = self._read(path, name, 0, size)
                entry = reply.files.add(
                    name=name, size=size, sha256=hashlib.sha256(data).hexdigest()
                )
                encoder.data(entry.data, data)
            return reply, encoder.buffers
        piece = msg.piece
        if piece.file >= len(names):
            raise InvalidArgumentError(
                f"SyncResource: argument 'piece.file': expected a file index below "
                f"{len(names)}, got {piece.file}"
            )
        if piece.offset > sizes[piece.file]:
            raise InvalidArgumentError(
                f"SyncResource: argument 'piece.offset': expected at most "
                f"{sizes[piece.file]} (the size of file {piece.file}), got {piece.offset}"
            )
        budget = max(min(piece.length or room, room), 1)
        budget = min(budget, sizes[piece.file] - piece.offset + sum(sizes[piece.file + 1 :]))
        self._reserve_reply(budget, "the piece of the resource's files")
        entries = [reply.files.add(name=n, size=s) for n, s in zip(names, sizes, strict=True)]
        index, offset = piece.file, piece.offset
        while budget > 0 and index < len(names):
            take = min(sizes[index] - offset, budget)
            if take > 0:
                data = self._read(paths[index], names[index], offset, take)
                encoder.data(entries[index].data, data)
                budget -= len(data)
            index, offset = index + 1, 0
        return reply, encoder.buffers

    @staticmethod
    def _file_size(path: Path, name: str) -> int:
        with _host_io(f"SyncResource: file {clip(name)}: the agent cannot read it"):
            return path.stat().st_size

    @staticmethod
    def _read(path: Path, name: str, offset: int, size: int) -> bytes:
        """At most ``size`` bytes of a resource file from ``offset``."""
        with (
            _host_io(f"SyncResource: file {clip(name)}: the agent cannot read it"),
            open(path, "rb") as fh,
        ):
            fh.seek(offset)
            return fh.read(size)

    def _run(self, msg: Any, buffers: Sequence[Buffer], peer: Peer) -> Reply:
        case = msg.WhichOneof("args")
        if case is None:
            raise InvalidArgumentError(
                f"Run: no operation given (expected one of the OpRequest.args cases, e.g. "
                f"noop; op field: {clip(msg.op)})"
            )
        if msg.op and msg.op != case:
            raise InvalidArgumentError(
                f"Run: operation name {clip(msg.op)} does not match the arguments given ({case})"
            )
        spec = codec.spec_by_name(case)
        self._note_run(case)
        record = self._session(msg.session_id, peer, spec.method)
        self._note_run(case, record.session, spec.op)

        def resource(resource_id: int) -> Resource:
            return self._resource(record, resource_id, spec.method).resource

        args = codec.decode_args(
            spec, getattr(msg, case), codec.Decoder(buffers, spec.method), resource
        )
        if spec.result_bytes is not None:
            self._reserve_reply(result_bytes(spec, args), "its result")
        start = time.perf_counter_ns()
        value = record.session.genop(spec.op, *args)
        elapsed = time.perf_counter_ns() - start
        record.last_used = time.monotonic()
        reply = self.pb.OpResponse(op=case)
        result = getattr(reply, case)
        result.SetInParent()
        encoder = codec.Encoder(self.inline_limit)
        try:
            codec.encode_results(spec, value, result, encoder)
        except (TypeError, ValueError, AttributeError) as exc:
            raise BackendError(
                f"{spec.method}: backend returned a result that cannot be sent: {exc}"
            ) from exc
        if msg.profile:
            reply.regions.add(name=f"agent:{case}", total_ns=elapsed, entries=1)
        return reply, encoder.buffers
