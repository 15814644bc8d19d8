"""A content-addressed blob store: resource files kept by sha256 in a private folder.

Blobs arrive in chunks (so a model larger than one message still travels), are checked against
their digest, and are reference counted by the agent resources that use them; a blob no
resource uses is deleted. Guests only ever name blobs by digest: the agent never opens a path a
guest chose.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vaccel_core.errors import InvalidArgumentError, NotFoundError, OutOfMemoryError, VaccelError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_digest(digest: str, where: str) -> str:
    """A lowercase hex sha256, or InvalidArgumentError naming ``where``."""
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise InvalidArgumentError(f"{where}: expected a lowercase hex sha256, got {digest!r}")
    return digest


@dataclass
class _Upload:
    """One peer's upload of one blob, into a partial file of its own."""

    size: int
    owner: str
    partial: Path
    received: int = 0
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    touched: float = field(default_factory=time.monotonic)
    #: Serializes this upload's chunks; taken before the store's lock, never after.
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Set (under the store's lock) once the upload left the store: restarted, dropped,
    #: or the blob completed by another uploader. Its partial file is then deleted.
    dropped: bool = False


@dataclass
class _Blob:
    size: int
    refs: int = 0
    owner: str = ""
    touched: float = field(default_factory=time.monotonic)


class BlobStore:
    """Blobs by sha256 under a private folder (mode 0700), reference counted.

    ``max_blob_bytes`` caps one blob and ``quota_bytes`` all blobs together, counting the
    full announced size of every upload in progress; None means no limit. Exceeding either
    raises OutOfMemoryError (RESOURCE_EXHAUSTED on the wire).

    Uploads are kept per (digest, uploader): two peers uploading the same file at once each
    write their own partial file; the first to complete installs the blob and the other's
    upload then ends as a success without being written further.
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        max_blob_bytes: int | None = None,
        quota_bytes: int | None = None,
    ) -> None:
        if root is not None:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A private folder (mode 0700) of our own, inside ``root`` if given: removed on close.
        self.root = Path(tempfile.mkdtemp(prefix="vaccel-agent-blobs-", dir=root))
        self.max_blob_bytes = max_blob_bytes
        self.quota_bytes = quota_bytes
        self._lock = threading.Lock()
        self._blobs: dict[str, _Blob] = {}
        self._uploads: dict[tuple[str, str], _Upload] = {}
        self._closed = False
        self.uploads_completed = 0
        self.hits = 0

    # Queries -------------------------------------------------------------------------------
    def has(self, digest: str) -> bool:
        with self._lock:
            return digest in self._blobs

    def path(self, digest: str) -> Path:
        return self.root / digest

    def size(self, digest: str) -> int:
        with self._lock:
            blob = self._blobs.get(digest)
            if blob is None:
                raise NotFoundError(f"blob {digest} is not held by the agent")
            return blob.size

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._blobs)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(b.size for b in self._blobs.values())

    def _used_bytes(self) -> int:
        """Bytes held plus bytes announced by uploads in progress (caller holds the lock)."""
        return sum(b.size for b in self._blobs.values()) + sum(
            u.size for u in self._uploads.values()
        )

    # Uploads -------------------------------------------------------------------------------
    def put(self, digest: str, size: int, offset: int, chunk: memoryview, owner: str) -> int:
        """Write one chunk of ``owner``'s upload (chunks arrive in order; a chunk at offset 0
        restarts that owner's upload); returns the bytes received so far, which equals
        ``size`` once the blob is complete and verified (by this or another uploader)."""
        check_digest(digest, "PutBlob: sha256")
        if size < 0:
            raise InvalidArgumentError(f"PutBlob: argument 'size': expected >= 0, got {size}")
        if self.max_blob_bytes is not None and size > self.max_blob_bytes:
            raise OutOfMemoryError(
                f"PutBlob: blob {digest[:12]} of {size} bytes exceeds the agent's limit of "
                f"{self.max_blob_bytes} bytes per blob (--max-blob-size)"
            )
        key = (digest, owner)
        stale: list[_Upload] = []
        try:
            with self._lock:
                upload = self._uploads.get(key)
                if digest in self._blobs:
                    if upload is not None:  # another uploader completed it first
                        stale.append(self._forget(key))
                    return self._blobs[digest].size
                if upload is None or offset == 0:
                    if upload is not None:  # this owner restarts its upload
                        stale.append(self._forget(key))
                    if self.quota_bytes is not None:
                        used = self._used_bytes()
                        if used + size > self.quota_bytes:
                            raise OutOfMemoryError(
                                f"PutBlob: blob {digest[:12]} of {size} bytes exceeds the "
                                f"agent's blob quota of {self.quota_bytes} bytes "
                                f"({used} bytes already held or being uploaded; --blob-quota)"
                            )
                    partial = self.root / f"{digest}.{secrets.token_hex(8)}.partial"
                    upload = self._uploads[key] = _Upload(size, owner, partial)
        finally:
            self._discard(stale)
        with upload.lock:
            return self._write(digest, upload, size, offset, chunk)

    def _write(
        self, digest: str, upload: _Upload, size: int, offset: int, chunk: memoryview
    ) -> int:
        """Append ``chunk`` to ``upload`` (caller holds ``upload.lock``, not the store's)."""
        if upload.dropped:
            if self.has(digest):
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
            with self._lock:
                self._forget((digest, upload.owner), upload)
            upload.partial.unlink(missing_ok=True)
            error = OutOfMemoryError if exc.errno in (errno.ENOSPC, errno.EDQUOT) else VaccelError
            raise error(f"PutBlob: blob {digest[:12]}: cannot write the chunk: {exc}") from exc
        upload.hasher.update(chunk)
        upload.received += len(chunk)
        upload.touched = time.monotonic()
        if upload.received < size:
            return upload.received
        actual = upload.hasher.hexdigest()
        with self._lock:
            live = not upload.dropped and not self._closed
            self._forget((digest, upload.owner), upload)
            if live and actual == digest and digest not in self._blobs:
                os.replace(upload.partial, self.path(digest))
                self._blobs[digest] = _Blob(size, owner=upload.owner)
                self.uploads_completed += 1
                return size
        upload.partial.unlink(missing_ok=True)
        if actual != digest:
            raise InvalidArgumentError(
                f"PutBlob: blob content has sha256 {actual}, not the announced {digest}"
            )
        if not self.has(digest):
            raise NotFoundError(f"PutBlob: blob {digest[:12]}: the agent is stopping")
        return size  # another uploader completed the same blob first: nothing more to do

    def _forget(self, key: tuple[str, str], upload: _Upload | None = None) -> _Upload:
        """Take an upload out of the store (caller holds the store's lock); its partial file
        is deleted by :meth:`_discard`, or by its writer."""
        current = self._uploads.get(key)
        if upload is None:
            assert current is not None
            upload = current
        if current is upload:
            del self._uploads[key]
        upload.dropped = True
        return upload

    @staticmethod
    def _discard(uploads: list[_Upload]) -> None:
        """Delete the partial files of uploads taken out of the store (without its lock):
        under each upload's own lock, so that no chunk is being appended meanwhile."""
        for upload in uploads:
            with upload.lock:
                upload.partial.unlink(missing_ok=True)

    # References ----------------------------------------------------------------------------
    def acquire(self, digests: list[str]) -> None:
        """Take one reference on each blob (all or none)."""
        with self._lock:
            missing = [d for d in digests if d not in self._blobs]
            if missing:
                raise NotFoundError(f"blobs not held by the agent: {', '.join(missing)}")
            for d in digests:
                self._blobs[d].refs += 1

    def release(self, digests: list[str]) -> None:
        """Drop one reference on each blob; delete blobs nobody uses any more."""
        with self._lock:
            for d in digests:
                blob = self._blobs.get(d)
                if blob is None:
                    continue
                blob.refs -= 1
                if blob.refs <= 0:
                    del self._blobs[d]
                    self.path(d).unlink(missing_ok=True)

    def drop_unused(self, *, owner: str | None = None, idle: float | None = None) -> int:
        """Delete blobs and partial uploads no resource uses: those of ``owner`` (a peer that
        went away), or those untouched for ``idle`` seconds. Returns how many were dropped."""
        now = time.monotonic()

        def stale(owner_of: str, touched: float) -> bool:
            if owner is not None:
                return owner_of == owner
            return idle is not None and now - touched > idle

        with self._lock:
            blobs = [d for d, b in self._blobs.items() if b.refs <= 0 and stale(b.owner, b.touched)]
            for d in blobs:
                del self._blobs[d]
                self.path(d).unlink(missing_ok=True)
            uploads = [
                self._forget(k) for k, u in list(self._uploads.items()) if stale(u.owner, u.touched)
            ]
        self._discard(uploads)
        return len(blobs) + len(uploads)

    def close(self) -> None:
        """Delete every blob and the store's folder."""
        with self._lock:
            self._closed = True
            self._blobs.clear()
            for key in list(self._uploads):
                self._forget(key)
        shutil.rmtree(self.root, ignore_errors=True)
