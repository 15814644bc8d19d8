"""RegisterResource, UnregisterResource and SyncResource of upstream's service.

Files travel as ``Blob{type, name, data, size}`` inside the request: each becomes a blob of the
agent's store, owned by the calling client and counted against its quotas (``--max-blob-size``,
``--max-client-blob-bytes``, ``--blob-quota``), then the resource is registered exactly as the
agent's own ``RegisterResource`` does (file-name rules, ``--max-resource-files``,
``--max-resources``). A guest's *paths* name files on the host: the agent never opens a path a
guest names, so a request with paths and no blobs is refused (ENOTSUP).
"""

from __future__ import annotations

import errno
import hashlib
from typing import TYPE_CHECKING, Any

from vaccel_agent.limits import limit_error
from vaccel_agent.service import _check_file_name
from vaccel_core.errors import NotFoundError, VaccelError, clip
from vaccel_core.ops import ResourceType
from vaccel_core.transport import Peer

from . import errors
from .state import State

if TYPE_CHECKING:
    from vaccel_agent.service import AgentService, _AgentSession

#: Upstream's BlobType values a guest may send (FILE, BUFFER, MAPPED: all carry their bytes).
BLOB_TYPES = (0, 1, 2)
#: What a SyncResponse carries besides the files' bytes, per file and in all.
_SYNC_OVERHEAD = 1024
_SYNC_PER_FILE = 32


class Resources:
    """Upstream's resource RPCs on the agent's sessions and blob store."""

    def __init__(self, agent: AgentService, state: State, schema: Any) -> None:
        self.agent = agent
        self.state = state
        self.pb = schema
        self.ours = agent.pb

    def register(self, msg: Any, peer: Peer) -> Any:
        record = self.state.session(msg.session_id, peer)
        resource_id = msg.resource_id
        if resource_id < 0:
            raise errors.invalid_argument(f"Invalid ID: {resource_id}")
        if resource_id > 0:
            return self._register_again(record, resource_id, peer)
        try:
            rtype = ResourceType(msg.resource_type)
        except ValueError:
            raise errors.ffi(
                errno.EINVAL, f"resource type {msg.resource_type} (expected 0 LIB, 1 DATA, 2 MODEL)"
            ) from None
        if not msg.blobs:
            if not msg.paths:
                raise errors.refused("No paths or blobs provided")
            raise errors.ffi(
                errno.ENOTSUP,
                "this agent does not open host paths a guest names; send the files' "
                "contents (RegisterRequest.blobs)",
            )
        checked = self._check_blobs(msg.blobs, peer)
        files = [self._store(name, data, peer) for name, data in checked]
        request = self.ours.RegisterResourceRequest(session_id=record.id, type=int(rtype))
        for name, digest, size in files:
            request.files.add(name=name, sha256=digest, size=size)
        reply, _ = self.agent._register_resource(request, (), peer)
        if reply.missing_blobs:  # dropped between storing and registering (the agent stops)
            raise errors.ffi(errno.EIO, "the resource's files were dropped; register it again")
        return self.pb.resource.RegisterResponse(resource_id=reply.resource_id)

    def _check_blobs(self, blobs: Any, peer: Peer) -> list[tuple[str, bytes]]:
        """Every blob checked before any is stored: the counts against the limits, then each
        blob's type, data and name. Their ``size`` fields are not trusted: the bytes are what
        was received."""
        limit = self.agent.limits.max_resource_files
        if len(blobs) > limit:
            raise limit_error(
                "RegisterResource",
                "max_resource_files",
                f"{len(blobs)} files in one resource (limit {limit})",
            )
        self.agent._check_resource_count(peer.id)
        checked: list[tuple[str, bytes]] = []
        seen: set[str] = set()
        for index, blob in enumerate(blobs):
            if blob.type_ not in BLOB_TYPES:
                raise errors.ffi(errno.EINVAL, f"blob {index}: unknown blob type {blob.type_}")
            data = blob.data
            if not data:  # vaccel_blob_from_buf refuses an empty buffer
                raise errors.ffi(errno.EINVAL, f"blob {index}: no data")
            name = _check_file_name(blob.name)
            if name in seen:
                raise errors.ffi(errno.EINVAL, f"blob {index}: a second file named {clip(name)}")
            seen.add(name)
            checked.append((name, data))
        return checked

    def _store(self, name: str, data: bytes, peer: Peer) -> tuple[str, str, int]:
        """One file into the agent's store, as the caller's blob: (name, sha256, size)."""
        digest = hashlib.sha256(data).hexdigest()
        self.agent.blobs.put(digest, len(data), 0, memoryview(data), peer.id)
        return name, digest, len(data)

    def _register_again(self, record: _AgentSession, resource_id: int, peer: Peer) -> Any:
        """Register the caller's existing resource ``resource_id`` with another session: its
        own registration of the same blobs, known there by the guest's id."""
        if self.state.in_session(record, resource_id) is not None:  # upstream: already is, OK
            return self.pb.resource.RegisterResponse(resource_id=resource_id)
        existing = self.state.any_registration(resource_id, peer, "resource")
        request = self.ours.RegisterResourceRequest(
            session_id=record.id, type=int(existing.resource.type)
        )
        for file, digest in zip(existing.resource.files, existing.digests, strict=True):
            size = file.size if file.path is None else self.agent._file_size(file.path, file.name)
            request.files.add(name=file.name, sha256=digest, size=size)
        reply, _ = self.agent._register_resource(request, (), peer)
        if reply.missing_blobs:
            raise errors.ffi(errno.EIO, "the resource's files were dropped; register it again")
        self.state.aliases(record)[resource_id] = reply.resource_id
        return self.pb.resource.RegisterResponse(resource_id=resource_id)

    def unregister(self, msg: Any, peer: Peer) -> Any:
        # Upstream looks the resource up first, then the session.
        self.state.any_registration(msg.resource_id, peer, "resource")
        record = self.state.session(msg.session_id, peer)
        ours = self.state.our_id(record, msg.resource_id)
        if ours is None:
            raise errors.ffi(
                errno.EINVAL,
                f"resource {msg.resource_id} is not registered with session {msg.session_id}",
            )
        request = self.ours.UnregisterResourceRequest(session_id=record.id, resource_id=ours)
        try:
            self.agent._unregister_resource(request, (), peer)
        except NotFoundError:  # another call unregistered it meanwhile
            raise errors.ffi(
                errno.EINVAL,
                f"resource {msg.resource_id} is not registered with session {msg.session_id}",
            ) from None
        self.state.aliases(record).pop(msg.resource_id, None)
        return self.pb.empty.Empty()

    def sync(self, msg: Any, peer: Peer) -> Any:
        """The resource's files, whole (upstream has no pieces): refused before anything is
        read when they would not fit one reply."""
        found = self.state.any_registration(msg.resource_id, peer, "resource")
        resource = found.resource
        paths = resource.local_paths()
        names = [f.name for f in resource.files]
        sizes = [self.agent._file_size(p, n) for p, n in zip(paths, names, strict=True)]
        total = sum(sizes)
        room = self.agent.limits.max_message_bytes - _SYNC_OVERHEAD - _SYNC_PER_FILE * len(names)
        if total > room:
            raise errors.from_vaccel(
                _limit(
                    f"resource {msg.resource_id}: its {len(names)} file(s) total "
                    f"{total} bytes, more than one reply may carry "
                    f"({self.agent.limits.max_message_bytes} bytes)"
                )
            )
        self.agent._reserve_reply(total, "the resource's files")
        reply = self.pb.resource.SyncResponse()
        for path, name, size in zip(paths, names, sizes, strict=True):
            data = self.agent._read(path, name, 0, size)
            reply.blobs.add(data=data, size=len(data))
        return reply


def _limit(message: str) -> VaccelError:
    return limit_error("SyncResource", "max_message_bytes", message)
