"""A content-addressed blob store: resource files kept by sha256 in an agent-owned folder.

Blobs arrive in chunks (so a model larger than one message still travels), are checked against
their digest, and are referenced by the agent resources that use them. Guests only ever name
blobs by digest: the agent never opens a path a guest chose.

Possession is per client (its peer id, the *owner*): a client may use only the blobs it
uploaded itself, in full. Identical files of several clients are stored once on disk, but
nothing a client is told (which blobs are missing, sizes, upload progress, quota use, counts)
depends on what other clients hold: every client's blobs count at their full size for it.

Where files live: one root per user (``<tmp>/vaccel-agent-<uid>``, or ``--blob-dir``), a real
folder of ours with mode 0700, holds one subfolder per running agent, ``agent-<pid>-<random>``,
next to a lock file ``agent-<pid>-<random>.lock`` that the agent holds (``flock``) for its
lifetime. An agent that starts removes the subfolders whose lock it can take: their agent died
without cleaning up (SIGKILL, power loss). A live agent's folder is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vaccel_core.errors import (
    InvalidArgumentError,
    NotFoundError,
    OutOfMemoryError,
    VaccelError,
    clip,
)
from vaccel_core.log import logger as _vaccel_logger

from .limits import limit_error

logger = _vaccel_logger.getChild("agent")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: An agent's subfolder (and, with ``.lock``, its lock file) in the root.
_AGENT_DIR = re.compile(r"^agent-\d+-[0-9a-f]{16}$")
#: A lock file being made (locked, then renamed to ``<folder>.lock``).
_NEW_LOCK = re.compile(r"^\.agent-\d+-[0-9a-f]{16}\.lock\.new$")
#: Seconds after which a lock file still being made is left over from a dead agent.
_NEW_LOCK_AGE = 60.0


def check_digest(digest: str, where: str) -> str:
    """A lowercase hex sha256, or InvalidArgumentError naming ``where``."""
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise InvalidArgumentError(f"{where}: expected a lowercase hex sha256, got {clip(digest)}")
    return digest


def default_root() -> Path:
    """``<tmp>/vaccel-agent-<uid>``: where blobs live without ``--blob-dir``."""
    return Path(tempfile.gettempdir()) / f"vaccel-agent-{os.geteuid()}"


def _refuse(root: Path, why: str) -> VaccelError:
    return InvalidArgumentError(
        f"blob store: {str(root)!r} {why}; expected a directory owned by uid {os.geteuid()} "
        f"with mode 0700 (the agent keeps resource files there): remove or fix it, or choose "
        f"another folder with --blob-dir"
    )


def prepare_root(root: Path) -> Path:
    """Create ``root`` (mode 0700) if needed and check it is a real folder of ours that nobody
    else may open: a symbolic link, a folder of another user or one with group or other
    permissions is refused (InvalidArgumentError naming the folder and what is wrong)."""
    created = False
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(root, 0o700)
        created = True
    except FileExistsError:
        pass
    except OSError as exc:
        raise _refuse(root, f"cannot be created ({exc.strerror})") from None
    try:
        st = os.lstat(root)
    except OSError as exc:
        raise _refuse(root, f"cannot be examined ({exc.strerror})") from None
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(root, "is a symbolic link")
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(root, "is not a directory")
    if st.st_uid != os.geteuid():
        raise _refuse(root, f"is owned by uid {st.st_uid}")
    if created:
        os.chmod(root, 0o700)  # whatever the umask took away from the owner
    elif stat.S_IMODE(st.st_mode) != 0o700:
        raise _refuse(root, f"has mode {stat.S_IMODE(st.st_mode):04o}")
    return root


def _dead(path: str) -> int | None:
    """An open descriptor holding the lock of ``path`` when no live agent holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)  # held: that agent is alive
        return None
    return fd


def sweep(root: Path) -> int:
    """Remove the subfolders of ``root`` left by agents that died (their lock can be taken);
    returns how many. An agent makes its lock file before its folder, so a folder without a
    lock file is left over too."""
    swept = 0
    try:
        entries = list(os.scandir(root))
    except OSError as exc:
        logger.warning("blob store: cannot list %s to sweep it: %s", root, exc)
        return 0
    for entry in entries:
        name = entry.name
        folder: Path | None = None
        if name.endswith(".lock") and _AGENT_DIR.match(name[: -len(".lock")]):
            folder = root / name[: -len(".lock")]
        elif _NEW_LOCK.match(name):
            # An agent locks its new lock file a moment after making it: leave young ones be.
            with contextlib.suppress(OSError):
                if time.time() - entry.stat(follow_symlinks=False).st_mtime < _NEW_LOCK_AGE:
                    continue
        else:
            if _AGENT_DIR.match(name) and not os.path.lexists(root / f"{name}.lock"):
                shutil.rmtree(entry.path, ignore_errors=True)
                swept += 1
            continue
        fd = _dead(entry.path)
        if fd is None:
            continue
        try:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
                swept += 1
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        finally:
            os.close(fd)
    if swept:
        logger.info("blob store: removed the files of %d agent(s) that died in %s", swept, root)
    return swept


@dataclass
class _Upload:
    """One client's upload of one blob, into a partial file of its own."""

    digest: str
    size: int
    owner: str
    partial: Path
    received: int = 0
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    touched: float = field(default_factory=time.monotonic)
    #: Serializes this upload's chunks; taken before the store's lock, never after.
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Set (under the store's lock) once the upload left the store: restarted, dropped or
    #: finished. Its partial file is then deleted.
    dropped: bool = False


@dataclass
class _Grant:
    """A client's possession of a blob it uploaded: ``refs`` of its resources use it."""

    size: int
    refs: int = 0


@dataclass
class _Client:
    grants: dict[str, _Grant] = field(default_factory=dict)
    uploads: dict[str, _Upload] = field(default_factory=dict)
    touched: float = field(default_factory=time.monotonic)

    @property
    def nbytes(self) -> int:
        """Bytes held plus bytes announced by uploads in progress."""
        return sum(g.size for g in self.grants.values()) + sum(
            u.size for u in self.uploads.values()
        )


class BlobStore:
    """Blobs by sha256 in a private subfolder of an agent-owned root; possession per client.

    ``max_blob_bytes`` caps one blob, ``max_client_bytes`` what one client holds and reserves,
    ``quota_bytes`` what all clients together hold and reserve (an upload counts at its full
    announced size from its first chunk; a blob counts once for each client holding it).
    ``max_uploads`` bounds one client's uploads in progress; ``upload_idle_timeout`` drops an
    upload with no chunk for that long, and a blob no resource uses of a client idle that long
    (:meth:`reap`). None means no limit. Over a limit: RESOURCE_EXHAUSTED naming its flag.
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        max_blob_bytes: int | None = None,
        quota_bytes: int | None = None,
        max_client_bytes: int | None = None,
        max_uploads: int | None = None,
        upload_idle_timeout: float | None = None,
    ) -> None:
        #: The shared root: ``--blob-dir`` or ``<tmp>/vaccel-agent-<uid>``.
        self.base = prepare_root(root if root is not None else default_root())
        name = f"agent-{os.getpid()}-{secrets.token_hex(8)}"
        # The lock file is locked under a name sweepers leave alone, then renamed into place
        # (so no sweeper can take it first), and only then is the folder made (so a folder
        # without a lock file is always left over).
        new_lock = self.base / f".{name}.lock.new"
        try:
            self._lock_fd = os.open(
                new_lock,
                os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._lock_path = self.base / f"{name}.lock"
            os.rename(new_lock, self._lock_path)
            #: This agent's own folder (mode 0700): blobs, partial uploads, resource folders.
            self.root = self.base / name
            os.mkdir(self.root, 0o700)
            os.chmod(self.root, 0o700)
        except OSError as exc:
            raise _refuse(self.base, f"cannot hold this agent's files ({exc.strerror})") from None
        sweep(self.base)
        self.max_blob_bytes = max_blob_bytes
        self.quota_bytes = quota_bytes
        self.max_client_bytes = max_client_bytes
        self.max_uploads = max_uploads
        self.upload_idle_timeout = upload_idle_timeout
        self._lock = threading.Lock()
        self._blobs: dict[str, int] = {}  # digest -> clients holding it (the file on disk)
        self._clients: dict[str, _Client] = {}
        self._closed = False
        self.uploads_completed = 0
        self.hits = 0

    # Queries -------------------------------------------------------------------------------
    def has(self, digest: str) -> bool:
        """Whether the blob is on disk (for any client): for the agent's own bookkeeping and
        tests, never for an answer to a client."""
        with self._lock:
            return digest in self._blobs

    def holds(self, owner: str, digest: str) -> bool:
        """Whether ``owner`` uploaded the blob (and still holds it)."""
        with self._lock:
            client = self._clients.get(owner)
            return client is not None and digest in client.grants

    def path(self, digest: str) -> Path:
        return self.root / digest

    @property
    def count(self) -> int:
        """Blobs held, each counted once per client holding it."""
        with self._lock:
            return sum(len(c.grants) for c in self._clients.values())

    @property
    def nbytes(self) -> int:
        """Bytes of the blobs held, counted once per client holding them."""
        with self._lock:
            return sum(g.size for c in self._clients.values() for g in c.grants.values())

    def _used_bytes(self) -> int:
        """Held plus announced bytes of every client (caller holds the lock)."""
        return sum(c.nbytes for c in self._clients.values())

    # Uploads -------------------------------------------------------------------------------
    def put(self, digest: str, size: int, offset: int, chunk: memoryview, owner: str) -> int:
        """Write one chunk of ``owner``'s upload (chunks arrive in order; a chunk at offset 0
        restarts that owner's upload); returns the bytes received so far, which equals
        ``size`` once ``owner`` holds the whole, verified blob."""
        check_digest(digest, "PutBlob: sha256")
        if size < 0:
            raise InvalidArgumentError(f"PutBlob: argument 'size': expected >= 0, got {size}")
        if self.max_blob_bytes is not None and size > self.max_blob_bytes:
            raise limit_error(
                "PutBlob",
                "max_blob_bytes",
                f"blob {digest[:12]} of {size} bytes exceeds the agent's limit of "
                f"{self.max_blob_bytes} bytes per blob",
            )
        stale: list[_Upload] = []
        try:
            with self._lock, self._pruning(owner):
                if self._closed:
                    raise NotFoundError(f"PutBlob: blob {digest[:12]}: the agent is stopping")
                client = self._clients.setdefault(owner, _Client())
                client.touched = time.monotonic()
                upload = client.uploads.get(digest)
                grant = client.grants.get(digest)
                if grant is not None:  # this client holds it already
                    if upload is not None:
                        stale.append(self._forget(client, upload))
                    if size != grant.size:
                        raise InvalidArgumentError(
                            f"PutBlob: blob {digest[:12]}: size {size} differs from the "
                            f"{grant.size} bytes of the blob this client uploaded"
                        )
                    return size
                if upload is not None and offset != 0:
                    upload.touched = client.touched
                else:
                    if upload is not None:  # this client restarts its upload
                        stale.append(self._forget(client, upload))
                    elif offset != 0:
                        raise NotFoundError(
                            f"PutBlob: blob {digest[:12]}: this client has no upload of it in "
                            f"progress (none was started, or it was dropped after "
                            f"{self.upload_idle_timeout or 0:g} s without a chunk); send it "
                            f"again from offset 0"
                        )
                    self._reserve(client, digest, size)
                    partial = self.root / f"{digest}.{secrets.token_hex(8)}.partial"
                    upload = client.uploads[digest] = _Upload(digest, size, owner, partial)
        finally:
            self._discard(stale)
        with upload.lock:
            return self._write(upload, size, offset, chunk)

    @contextlib.contextmanager
    def _pruning(self, owner: str) -> Iterator[None]:
        """Forget a client record left empty by a failed call (caller holds the lock)."""
        try:
            yield
        except BaseException:
            self._prune(owner)
            raise

    def _reserve(self, client: _Client, digest: str, size: int) -> None:
        """Check that ``client`` may start an upload of ``size`` bytes (caller holds the
        lock). Nothing here depends on which blobs other clients hold."""
        if self.max_uploads is not None and len(client.uploads) >= self.max_uploads:
            raise limit_error(
                "PutBlob",
                "max_uploads",
                f"blob {digest[:12]}: this client already has {len(client.uploads)} uploads "
                f"in progress (limit {self.max_uploads}); finish one first",
            )
        own = client.nbytes
        if self.max_client_bytes is not None and own + size > self.max_client_bytes:
            raise limit_error(
                "PutBlob",
                "max_client_blob_bytes",
                f"blob {digest[:12]} of {size} bytes would bring this client's blobs to "
                f"{own + size} bytes ({own} bytes already held or being uploaded), over its "
                f"limit of {self.max_client_bytes} bytes",
            )
        if self.quota_bytes is not None and self._used_bytes() + size > self.quota_bytes:
            raise limit_error(
                "PutBlob",
                "blob_quota_bytes",
                f"blob {digest[:12]} of {size} bytes exceeds the agent's blob quota of "
                f"{self.quota_bytes} bytes for all clients together (this client holds or "
                f"reserves {own} bytes)",
            )

    def _write(self, upload: _Upload, size: int, offset: int, chunk: memoryview) -> int:
        """Append ``chunk`` to ``upload`` (caller holds ``upload.lock``, not the store's)."""
        digest = upload.digest
        if upload.dropped:
            if self.holds(upload.owner, digest):
                return size
            raise NotFoundError(
                f"PutBlob: blob {digest[:12]}: the upload was restarted or dropped; "
                f"send it again from offset 0"
            )
        if upload.size != size:
            raise InvalidArgumentError(
                f"PutBlob: blob {digest[:12]}: size {size} differs from the {upload.size} "
                f"given with its first chunk"
            )
        if offset != upload.received:
            raise InvalidArgumentError(
                f"PutBlob: blob {digest[:12]}: expected the chunk at offset "
                f"{upload.received}, got offset {offset}"
            )
        if upload.received + len(chunk) > size:
            raise InvalidArgumentError(
                f"PutBlob: blob {digest[:12]}: chunk ends at "
                f"{upload.received + len(chunk)}, beyond the blob size {size}"
            )
        try:
            with open(upload.partial, "ab") as fh:
                fh.write(chunk)
        except OSError as exc:
            self._drop(upload)
            upload.partial.unlink(missing_ok=True)
            logger.debug("PutBlob: writing %s failed: %s", upload.partial, exc)
            error = OutOfMemoryError if exc.errno in (errno.ENOSPC, errno.EDQUOT) else VaccelError
            reason = exc.strerror or type(exc).__name__
            raise error(
                f"PutBlob: blob {digest[:12]}: the agent cannot store the chunk ({reason}); "
                f"send it again from offset 0"
            ) from None
        upload.hasher.update(chunk)
        upload.received += len(chunk)
        upload.touched = time.monotonic()
        if upload.received < size:
            return upload.received
        actual = upload.hasher.hexdigest()
        with self._lock:
            client = self._clients.get(upload.owner)
            live = not upload.dropped and not self._closed and client is not None
            if client is not None:
                self._forget(client, upload)
            if live and actual == digest:
                assert client is not None
                if digest in self._blobs:  # the same bytes are on disk already: share them
                    self._blobs[digest] += 1
                else:
                    # Read-only: the bytes are shared by every client that uploaded them,
                    # and backends see them through hard links.
                    os.chmod(upload.partial, 0o444)
                    os.replace(upload.partial, self.path(digest))
                    self._blobs[digest] = 1
                client.grants[digest] = _Grant(size)
                client.touched = time.monotonic()
                self.uploads_completed += 1
        upload.partial.unlink(missing_ok=True)
        if actual != digest:
            raise InvalidArgumentError(
                f"PutBlob: blob content has sha256 {actual}, not the announced {digest}"
            )
        if not live:
            raise NotFoundError(
                f"PutBlob: blob {digest[:12]}: the upload was dropped (the agent is stopping, "
                f"or this client went away); send it again from offset 0"
            )
        return size

    def _forget(self, client: _Client, upload: _Upload) -> _Upload:
        """Take an upload out of the store (caller holds the store's lock); its partial file
        is deleted by :meth:`_discard`, or by its writer."""
        if client.uploads.get(upload.digest) is upload:
            del client.uploads[upload.digest]
        upload.dropped = True
        return upload

    def _drop(self, upload: _Upload) -> None:
        with self._lock:
            client = self._clients.get(upload.owner)
            if client is not None:
                self._forget(client, upload)
            else:
                upload.dropped = True

    @staticmethod
    def _discard(uploads: list[_Upload]) -> None:
        """Delete the partial files of uploads taken out of the store (without its lock):
        under each upload's own lock, so that no chunk is being appended meanwhile."""
        for upload in uploads:
            with upload.lock:
                upload.partial.unlink(missing_ok=True)

    # References ----------------------------------------------------------------------------
    def acquire(self, owner: str, files: Sequence[tuple[str, str, int]], what: str) -> list[str]:
        """Take one reference on the blob of each (name, digest, size) for ``owner``: all or
        none. Returns the digests ``owner`` does not hold (then nothing is taken); a size
        that differs from the blob ``owner`` uploaded is an InvalidArgumentError."""
        with self._lock:
            client = self._clients.get(owner)
            grants = client.grants if client is not None else {}
            missing = sorted({d for _, d, _ in files if d not in grants})
            if missing or client is None:
                return missing
            for name, digest, size in files:
                held = grants[digest].size
                if size != held:
                    raise InvalidArgumentError(
                        f"{what}: file {clip(name)}: size {size} differs from the {held} "
                        f"bytes of blob {digest[:12]} this client uploaded"
                    )
            for _, digest, _ in files:
                grants[digest].refs += 1
            client.touched = time.monotonic()
            self.hits += len(files)
            return []

    def release(self, owner: str, digests: Sequence[str]) -> None:
        """Drop one reference of ``owner`` on each blob; a blob it no longer uses is no longer
        held by it (and deleted once no client holds it)."""
        with self._lock:
            client = self._clients.get(owner)
            if client is None:
                return
            for d in digests:
                grant = client.grants.get(d)
                if grant is None:
                    continue
                grant.refs -= 1
                if grant.refs <= 0:
                    self._ungrant(client, d)
            self._prune(owner)

    def _ungrant(self, client: _Client, digest: str) -> None:
        """``client`` no longer holds ``digest`` (caller holds the lock)."""
        del client.grants[digest]
        holders = self._blobs.get(digest, 0) - 1
        if holders > 0:
            self._blobs[digest] = holders
        else:
            self._blobs.pop(digest, None)
            self.path(digest).unlink(missing_ok=True)

    def _prune(self, owner: str) -> None:
        client = self._clients.get(owner)
        if client is not None and not client.grants and not client.uploads:
            del self._clients[owner]

    def drop_owner(self, owner: str) -> int:
        """A client went away: drop its uploads in progress (freeing their reservations) and
        every blob it holds. Returns how many uploads and blobs were dropped."""
        with self._lock:
            client = self._clients.pop(owner, None)
            if client is None:
                return 0
            uploads = [self._forget(client, u) for u in list(client.uploads.values())]
            grants = list(client.grants)
            for digest in grants:
                self._ungrant(client, digest)
        self._discard(uploads)
        return len(uploads) + len(grants)

    def reap(self, now: float | None = None) -> int:
        """Drop uploads with no chunk for ``upload_idle_timeout`` seconds, and the blobs no
        resource uses of clients idle that long with no upload in progress (uploaded and never
        registered). Returns how many were dropped."""
        if self.upload_idle_timeout is None:
            return 0
        now = time.monotonic() if now is None else now
        limit = self.upload_idle_timeout
        uploads: list[_Upload] = []
        dropped = 0
        with self._lock:
            for owner, client in list(self._clients.items()):
                for upload in list(client.uploads.values()):
                    if now - upload.touched > limit:
                        uploads.append(self._forget(client, upload))
                if not client.uploads and now - client.touched > limit:
                    for digest in [d for d, g in client.grants.items() if g.refs <= 0]:
                        self._ungrant(client, digest)
                        dropped += 1
                self._prune(owner)
        self._discard(uploads)
        if uploads or dropped:
            logger.info(
                "dropped %d upload(s) idle for more than %g s and %d unused blob(s)",
                len(uploads),
                limit,
                dropped,
            )
        return len(uploads) + dropped

    def drop_unused(self, *, owner: str | None = None, idle: float | None = None) -> int:
        """Older name: :meth:`drop_owner` for ``owner``, else :meth:`reap`."""
        if owner is not None:
            return self.drop_owner(owner)
        return self.reap()

    def close(self) -> None:
        """Delete every blob, this agent's folder and its lock file."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            uploads = [
                self._forget(c, u) for c in self._clients.values() for u in list(c.uploads.values())
            ]
            self._clients.clear()
            self._blobs.clear()
        self._discard(uploads)
        shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.unlink(self._lock_path)
        os.close(self._lock_fd)
