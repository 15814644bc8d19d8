"""Resources: models, data and libraries that operations use, registered with sessions."""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InvalidArgumentError, NotFoundError
from .ops import ResourceType

if TYPE_CHECKING:
    from .session import Session

PathLike = str | os.PathLike[str]

_ids = itertools.count(1)


@dataclass(frozen=True)
class ResourceFile:
    """One file of a resource: on disk (``path``) or in memory (``data``)."""

    name: str
    path: Path | None = None
    data: bytes | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise _unreadable(self.path, exc) from exc

    @property
    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        assert self.path is not None
        return self.path.stat().st_size


def _check_type(type: ResourceType | int) -> ResourceType:
    try:
        return ResourceType(type)
    except ValueError:
        raise InvalidArgumentError(
            f"Resource: argument 'type': expected one of "
            f"{', '.join(t.name for t in ResourceType)}, got {type!r}"
        ) from None


def _unreadable(path: Path, exc: OSError) -> NotFoundError:
    return NotFoundError(f"Resource: cannot read file '{path}': {exc.strerror or exc}")


def check_file_name(name: str, what: str = "Resource") -> str:
    """A resource file name must be a plain name: no folder part, no NUL, not . or .."""
    if not isinstance(name, str) or not name or "/" in name or "\0" in name or name in {".", ".."}:
        raise InvalidArgumentError(f"{what}: expected a plain file name, got {name!r}")
    return name


def _check_unique(files: Sequence[ResourceFile]) -> list[ResourceFile]:
    seen: set[str] = set()
    for f in files:
        if f.name in seen:
            raise InvalidArgumentError(
                f"Resource: two files are named {f.name!r}; the files of a resource sit side "
                f"by side in one folder on the host, so their names must differ"
            )
        seen.add(f.name)
    return list(files)


def _files_from_paths(paths: Sequence[PathLike]) -> list[ResourceFile]:
    files: list[ResourceFile] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            entries = sorted(p for p in path.iterdir() if p.is_file())
            if not entries:
                raise InvalidArgumentError(f"Resource: directory '{path}' has no files")
            files.extend(ResourceFile(p.name, path=p.resolve()) for p in entries)
        elif path.is_file():
            files.append(ResourceFile(path.name, path=path.resolve()))
        else:
            raise NotFoundError(f"Resource: path '{path}' does not exist or is not a file")
    if not files:
        raise InvalidArgumentError("Resource: expected at least one path, got none")
    return files


class Resource:
    """A model, data set or library for operations, as in upstream's ``vaccel_resource``.

    Create it from a path (a file or a directory), several paths, or a buffer, then register it
    with one or more sessions. A resource is reference counted by the sessions that hold it.
    """

    def __init__(self, path: PathLike | Sequence[PathLike], type: ResourceType | int) -> None:
        paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        self.type = _check_type(type)
        self.files: list[ResourceFile] = _check_unique(_files_from_paths(paths))
        self._init_common()

    @classmethod
    def from_buffer(
        cls, data: bytes | bytearray | memoryview, type: ResourceType | int, name: str = "buffer"
    ) -> Resource:
        """A resource made of one in-memory file."""
        return cls.from_buffers([(name, data)], type)

    @classmethod
    def from_buffers(
        cls, buffers: Sequence[tuple[str, bytes | bytearray | memoryview]], type: ResourceType | int
    ) -> Resource:
        """A resource made of several named in-memory files."""
        if not buffers:
            raise InvalidArgumentError("Resource.from_buffers: expected at least one buffer")
        files = []
        for name, data in buffers:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise InvalidArgumentError(
                    f"Resource.from_buffer: expected bytes for {name!r}, got {data.__class__.__name__}"  # noqa: E501
                )
            check_file_name(name, "Resource.from_buffer")
            files.append(ResourceFile(name, data=bytes(data)))
        self = cls.__new__(cls)
        self.type = _check_type(type)
        self.files = _check_unique(files)
        self._init_common()
        return self

    def _init_common(self) -> None:
        self.id: int = next(_ids)
        self._sessions: dict[int, Session] = {}
        self._lock = threading.RLock()
        self._tmpdir: Path | None = None
        self._digests: dict[int, str] = {}

    def __repr__(self) -> str:
        names = ", ".join(f.name for f in self.files)
        return f"<Resource {self.id} {self.type.name} [{names}]>"

    # Registration --------------------------------------------------------------------------
    def register(self, session: Session) -> None:
        """Register with a session (its backends are told); a second time is an error."""
        session.register_resource(self)

    def unregister(self, session: Session) -> None:
        """Unregister from a session."""
        session.unregister_resource(self)

    @property
    def refcount(self) -> int:
        return len(self._sessions)

    @property
    def session_ids(self) -> list[int]:
        with self._lock:
            return sorted(self._sessions)

    def _attach(self, session: Session) -> None:
        with self._lock:
            self._sessions[session.id] = session

    def _detach(self, session: Session) -> None:
        with self._lock:
            self._sessions.pop(session.id, None)
            if not self._sessions and self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None

    # Access for backends -------------------------------------------------------------------
    def local_paths(self) -> list[Path]:
        """Paths of the files on disk; in-memory files are written to a private folder once
        and removed when the last session lets go of the resource."""
        with self._lock:
            if all(f.path is not None for f in self.files):
                return [f.path for f in self.files if f.path is not None]
            if self._tmpdir is None:
                self._tmpdir = Path(tempfile.mkdtemp(prefix=f"vaccel-resource-{self.id}-"))
                for f in self.files:
                    target = self._tmpdir / f.name
                    target.write_bytes(f.read())
            return [f.path if f.path is not None else self._tmpdir / f.name for f in self.files]

    def local_path(self) -> Path:
        """Path of the first (for a model, usually the only) file."""
        return self.local_paths()[0]

    def sha256(self, index: int = 0) -> str:
        """Hex sha256 of one file (cached): what the agent stores blobs by."""
        f = self.files[index]
        with self._lock:
            if index not in self._digests:
                h = hashlib.sha256()
                if f.data is not None:
                    h.update(f.data)
                else:
                    assert f.path is not None
                    try:
                        with f.path.open("rb") as fh:
                            for chunk in iter(lambda: fh.read(1 << 20), b""):
                                h.update(chunk)
                    except OSError as exc:
                        raise _unreadable(f.path, exc) from exc
                self._digests[index] = h.hexdigest()
            return self._digests[index]
