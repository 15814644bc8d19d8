"""Per-session run folders: where the jetson backend writes its output images.

Layout: ``<base>/vaccel-<pid>-<random>/session.<id>/``, with ``<base>`` from ``VACCEL_RUNDIR`` (or
``--vaccel-config rundir=...``), else the system temporary folder. Folders are private
(mode 0700) and created with the session's first output image, so sessions that never write
one leave nothing on disk. A session's folder is removed when the session is released, unless
outputs are kept (``VACCEL_JETSON_KEEP_OUTPUTS=1`` or ``jetson_keep_outputs=1``); the process
folder is removed at shutdown when it is empty.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import threading
from pathlib import Path

from vaccel_core.errors import BackendError


class RunDirs:
    """Creates, tracks and removes the run folders of sessions."""

    def __init__(self, base: str | os.PathLike[str] | None, *, keep: bool) -> None:
        root = Path(base) if base else Path(tempfile.gettempdir())
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            # A fresh, unpredictable, owner-only folder: nobody can have prepared it (or a
            # symlink in its place) in a shared temp folder before us.
            self.process_dir = Path(tempfile.mkdtemp(prefix=f"vaccel-{os.getpid()}-", dir=root))
        except OSError as exc:
            raise BackendError(f"jetson: cannot create a run folder in {root}: {exc}") from exc
        self.keep = keep
        self._open: set[int] = set()
        self._dirs: dict[int, Path] = {}
        self._counters: dict[int, itertools.count[int]] = {}
        self._lock = threading.Lock()

    def path_for(self, session_id: int) -> Path:
        """Where the session's run folder is (or will be)."""
        return self.process_dir / f"session.{session_id}"

    def open(self, session_id: int) -> Path:
        """Start tracking a session; returns where its folder will be (not created yet)."""
        with self._lock:
            self._open.add(session_id)
        return self.path_for(session_id)

    def create(self, session_id: int) -> Path:
        """Create (or return) the run folder of an open session."""
        with self._lock:
            existing = self._dirs.get(session_id)
            if existing is not None:
                return existing
            if session_id not in self._open:
                raise BackendError(f"jetson: session {session_id} is released: no run folder")
            path = self.path_for(session_id)
            try:
                path.mkdir(mode=0o700)
            except OSError as exc:
                raise BackendError(f"jetson: cannot create run folder {path}: {exc}") from exc
            self._dirs[session_id] = path
            self._counters[session_id] = itertools.count(1)
            return path

    def get(self, session_id: int) -> Path:
        """The session's run folder (created now if the session had none)."""
        with self._lock:
            path = self._dirs.get(session_id)
        return path if path is not None else self.create(session_id)

    def output_path(self, session_id: int, op: str, suffix: str = ".jpg") -> Path:
        """A new, unique output file name in the session's run folder."""
        folder = self.get(session_id)
        with self._lock:
            n = next(self._counters[session_id])
        return folder / f"{op}-{n}{suffix}"

    def release(self, session_id: int) -> None:
        """Forget the session's folder; remove it unless outputs are kept."""
        with self._lock:
            self._open.discard(session_id)
            path = self._dirs.pop(session_id, None)
            self._counters.pop(session_id, None)
        if path is not None and not self.keep:
            shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        """Release every folder still open; remove the process folder if it is empty."""
        with self._lock:
            ids = list(self._open | set(self._dirs))
        for session_id in ids:
            self.release(session_id)
        with contextlib.suppress(OSError):  # not empty (kept outputs) or never created
            self.process_dir.rmdir()
