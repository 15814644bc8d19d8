"""Plugin discovery on pluggy: entry points, one at a time, failures recorded not fatal.

pluggy's own ``load_setuptools_entrypoints`` stops at the first plugin that fails to import.
Here each entry point is loaded, registered and asked for its backends/transports on its own;
a failure is recorded with the distribution, version and error, and the others still load.
``VACCEL_PLUGINS_STRICT=1`` turns such failures into one :class:`PluginError` that lists every
plugin that failed and why (after trying them all).

A backend's ``init`` runs once per process, before its first session; its ``fini`` runs once:
at :meth:`PluginRegistry.shutdown`, or when the interpreter exits (an ``atexit`` hook), whichever
comes first.
"""

from __future__ import annotations

import atexit
import importlib.metadata as md
import threading
import traceback
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .backend import Backend
from .errors import PluginError
from .log import logger

BACKEND_GROUP = "vaccel.backends"
TRANSPORT_GROUP = "vaccel.transports"


@dataclass
class PluginFailure:
    """An entry point that could not be loaded or could not register."""

    group: str
    name: str
    distribution: str
    version: str
    error: str

    def describe(self) -> str:
        return f"{self.group}:{self.name} ({self.distribution} {self.version}): {self.error}"


@dataclass
class PluginInfo:
    """One registered backend or transport class and where it came from."""

    kind: str  # "backend" or "transport"
    name: str
    cls: type[Any]
    plugin: str  # entry point (or registration) name
    distribution: str = ""
    dist_version: str = ""
    reason: str | None = None  # why unavailable, from the class's probe()
    instance: Any = field(default=None, repr=False)

    @property
    def available(self) -> bool:
        return self.reason is None

    @property
    def status(self) -> str:
        return "loaded" if self.available else "unavailable"


def _dist_of(ep: md.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ("", "")
    return (dist.metadata["Name"] or "", dist.version or "")


def _probe(cls: type[Any]) -> str | None:
    try:
        return cls.probe()
    except Exception as exc:  # a probe must not raise; if it does, that is its reason
        return f"probe failed: {type(exc).__name__}: {exc}"


class PluginRegistry:
    """All discovered backends and transports, plus what failed to load."""

    def __init__(self, *, strict: bool = False) -> None:
        self.strict = strict
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.backends: dict[str, PluginInfo] = {}
        self.transports: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []
        self._lock = threading.RLock()
        #: While loading entry points, strict failures are collected and raised together.
        self._defer_strict = False

    # Loading -------------------------------------------------------------------------------
    def load_entrypoints(self, groups: Iterable[str] = (BACKEND_GROUP, TRANSPORT_GROUP)) -> None:
        """Load every entry point of the groups, each on its own. In strict mode, after trying
        them all, raise one PluginError listing every plugin that failed and why."""
        first = len(self.failures)
        self._defer_strict = True
        try:
            self._load_entrypoints(groups)
        finally:
            self._defer_strict = False
        failed = self.failures[first:]
        if self.strict and failed:
            listed = "; ".join(f.describe() for f in failed)
            count = f"{len(failed)} plugin{'s' if len(failed) > 1 else ''} failed"
            raise PluginError(f"{count} (VACCEL_PLUGINS_STRICT=1): {listed}")

    def _load_entrypoints(self, groups: Iterable[str]) -> None:
        for group in groups:
            for ep in sorted(md.entry_points(group=group), key=lambda e: e.name):
                dist, version = _dist_of(ep)
                try:
                    plugin = ep.load()
                except BaseException as exc:  # ImportError, SyntaxError, SystemExit...
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    self._fail(group, ep.name, dist, version, exc)
                    continue
                self.register_plugin(
                    plugin, ep.name, group=group, distribution=dist, version=version
                )
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self._fail("hooks", str(getattr(exc, "plugin", "?")), "", "", exc)

    def register_plugin(
        self,
        plugin: Any,
        name: str,
        *,
        group: str = BACKEND_GROUP,
        distribution: str = "",
        version: str = "",
    ) -> None:
        """Register one plugin object (a module or class with hookimpls) and collect its
        backends and transports. Errors are recorded against this plugin alone."""
        with self._lock:
            try:
                if self.pm.get_plugin(name) is None:
                    self.pm.register(plugin, name=name)
            except Exception as exc:
                self._fail(group, name, distribution, version, exc)
                return
            for hook, kind in (
                (self.pm.hook.vaccel_register_backends, "backend"),
                (self.pm.hook.vaccel_register_transports, "transport"),
            ):
                for impl in hook.get_hookimpls():
                    if impl.plugin is not plugin:
                        continue
                    try:
                        impl.function(register=self._registrar(kind, name, distribution, version))
                    except Exception as exc:
                        self._fail(group, name, distribution, version, exc)

    def _registrar(
        self, kind: str, plugin: str, dist: str, version: str
    ) -> Callable[[type[Any]], None]:
        table = self.backends if kind == "backend" else self.transports

        def register(cls: type[Any]) -> None:
            key = getattr(cls, "name", "") if kind == "backend" else getattr(cls, "scheme", "")
            if not key:
                raise PluginError(
                    f"{kind} class {cls!r} has no {'name' if kind == 'backend' else 'scheme'}"
                )
            if kind == "backend" and not (isinstance(cls, type) and issubclass(cls, Backend)):
                raise PluginError(f"backend {key!r}: {cls!r} is not a vaccel_core.backend.Backend")
            if key in table and table[key].cls is not cls:
                raise PluginError(
                    f"{kind} {key!r} from plugin {plugin!r} is already registered by "
                    f"plugin {table[key].plugin!r}"
                )
            table[key] = PluginInfo(kind, key, cls, plugin, dist, version, _probe(cls))
            logger.debug("registered %s %r from plugin %r", kind, key, plugin)

        return register

    def _fail(self, group: str, name: str, dist: str, version: str, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        failure = PluginFailure(group, name, dist, version, error)
        self.failures.append(failure)
        logger.warning("plugin failed: %s", failure.describe())
        logger.debug("%s", "".join(traceback.format_exception(exc)))
        if self.strict and not self._defer_strict:
            raise PluginError(
                f"plugin failed (VACCEL_PLUGINS_STRICT=1): {failure.describe()}"
            ) from exc

    # Use -----------------------------------------------------------------------------------
    def backend(self, name: str) -> Backend:
        """The process-wide, initialised instance of a backend (created on first use)."""
        with self._lock:
            info = self.backends.get(name)
            if info is None:
                known = ", ".join(sorted(self.backends)) or "none"
                raise PluginError(f"unknown backend {name!r} (known: {known})")
            if info.reason is not None:
                raise PluginError(f"backend {name!r} is unavailable: {info.reason}")
            if info.instance is None:
                created = info.cls()
                created.init()
                info.instance = created
                _started.add(self)
            instance: Backend = info.instance
            return instance

    def transport(self, scheme: str) -> Any:
        """The process-wide instance of the transport for an address scheme."""
        with self._lock:
            info = self.transports.get(scheme)
            if info is None:
                known = ", ".join(sorted(self.transports)) or "none"
                raise PluginError(f"no transport for scheme {scheme!r} (known: {known})")
            if info.reason is not None:
                raise PluginError(f"transport {scheme!r} is unavailable: {info.reason}")
            if info.instance is None:
                info.instance = info.cls()
            return info.instance

    def shutdown(self) -> None:
        """Call ``fini`` on every backend that was started (once: a backend already finished
        is not finished again; one used again afterwards is started afresh)."""
        with self._lock:
            for info in self.backends.values():
                if info.instance is not None:
                    try:
                        info.instance.fini()
                    except Exception:
                        logger.exception("backend %r: fini failed", info.name)
                    info.instance = None


_registry: PluginRegistry | None = None
_registry_lock = threading.Lock()
#: Registries with started backends: their ``fini`` runs at interpreter exit. Held weakly: the
#: process-wide registry lives until exit; a private one a program dropped early is not kept
#: alive for this (its backends' fini then does not run).
_started: weakref.WeakSet[PluginRegistry] = weakref.WeakSet()


@atexit.register
def _shutdown_at_exit() -> None:
    """Backends' ``fini`` when a program exits without an explicit shutdown."""
    for registry in list(_started):
        try:
            registry.shutdown()
        except Exception:  # pragma: no cover - shutdown logs each fini failure itself
            logger.exception("shutting the backends down at exit failed")


def get_registry() -> PluginRegistry:
    """The process-wide registry, loading entry points on first use."""
    global _registry
    if _registry is None:
        with _registry_lock:
            if _registry is None:
                from .config import get_config
                from .log import ensure_logging

                config = get_config()
                ensure_logging(config)
                registry = PluginRegistry(strict=config.strict_plugins)
                registry.load_entrypoints()
                _registry = registry
    return _registry


def reset_registry(registry: PluginRegistry | None = None) -> None:
    """Drop (and shut down) the process-wide registry; tests use this."""
    global _registry
    with _registry_lock:
        if _registry is not None and _registry is not registry:
            _registry.shutdown()
        _registry = registry
