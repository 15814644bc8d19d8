"""A content-addressed blob store: resource files kept by sha256 in a private folder.

Blobs arrive in chunks (so a model larger than one message still travels), are checked against
their digest, and are reference counted by the agent resources that use them; a blob no
resource uses is deleted. Guests only ever name blobs by digest: the agent never opens a path a
guest chose.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vaccel_core.errors import InvalidArgumentError, NotFoundError, OutOfMemoryError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_digest(digest: str, where: str) -> str:
    """A lowercase hex sha256, or InvalidArgumentError naming ``where``."""
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise InvalidArgumentError(f"{where}: expected a lowercase hex sha256, got {digest!r}")
    return digest


@dataclass
class _Upload:
    size: int
    owner: str
    received: int = 0
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    touched: float = field(default_factory=time.monotonic)


@dataclass
class _Blob:
    size: int
    refs: int = 0
    owner: str = ""
    touched: float = field(default_factory=time.monotonic)


class BlobStore:
    """Blobs by sha256 under a private folder (mode 0700), reference counted."""

    def __init__(self, root: Path | None = None, *, max_blob_bytes: int | None = None) -> None:
        if root is not None:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A private folder (mode 0700) of our own, inside ``root`` if given: removed on close.
        self.root = Path(tempfile.mkdtemp(prefix="vaccel-agent-blobs-", dir=root))
        self.max_blob_bytes = max_blob_bytes
        self._lock = threading.Lock()
        self._blobs: dict[str, _Blob] = {}
        self._uploads: dict[str, _Upload] = {}
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

    # Uploads -------------------------------------------------------------------------------
    def put(self, digest: str, size: int, offset: int, chunk: memoryview, owner: str) -> int:
        """Write one chunk (chunks arrive in order); returns the bytes received so far, which
        equals ``size`` once the blob is complete and verified."""
        check_digest(digest, "PutBlob: sha256")
        if self.max_blob_bytes is not None and size > self.max_blob_bytes:
            raise OutOfMemoryError(
                f"PutBlob: blob of {size} bytes exceeds the agent's limit of "
                f"{self.max_blob_bytes} bytes"
            )
        with self._lock:
            if digest in self._blobs:
                return self._blobs[digest].size
            upload = self._uploads.get(digest)
            if upload is None or offset == 0:
                upload = self._uploads[digest] = _Upload(size, owner)
                with contextlib.suppress(FileNotFoundError):
                    self._partial(digest).unlink()
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
            with open(self._partial(digest), "ab") as fh:
                fh.write(chunk)
            upload.hasher.update(chunk)
            upload.received += len(chunk)
            upload.touched = time.monotonic()
            if upload.received < size:
                return upload.received
            del self._uploads[digest]
            actual = upload.hasher.hexdigest()
            if actual != digest:
                self._partial(digest).unlink(missing_ok=True)
                raise InvalidArgumentError(
                    f"PutBlob: blob content has sha256 {actual}, not the announced {digest}"
                )
            os.replace(self._partial(digest), self.path(digest))
            self._blobs[digest] = _Blob(size, owner=owner)
            self.uploads_completed += 1
            return size

    def _partial(self, digest: str) -> Path:
        return self.root / f"{digest}.partial"

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
            uploads = [d for d, u in self._uploads.items() if stale(u.owner, u.touched)]
            for d in uploads:
                del self._uploads[d]
                self._partial(d).unlink(missing_ok=True)
        return len(blobs) + len(uploads)

    def close(self) -> None:
        """Delete every blob and the store's folder."""
        with self._lock:
            self._blobs.clear()
            self._uploads.clear()
        shutil.rmtree(self.root, ignore_errors=True)
