"""Which backends a session uses, and which of them runs each operation."""

from __future__ import annotations

from .backend import Backend
from .config import Config
from .errors import NotSupportedError, PluginError
from .flags import PluginType
from .log import logger
from .ops import Op
from .plugins import PluginInfo, PluginRegistry

#: Bits of a session's flags that select backends by type (everything but REMOTE).
_TYPE_BITS = int(
    PluginType.CPU
    | PluginType.GPU
    | PluginType.FPGA
    | PluginType.SOFTWARE
    | PluginType.TENSORFLOW
    | PluginType.TORCH
    | PluginType.JETSON
    | PluginType.GENERIC
    | PluginType.DEBUG
)


def _default_order(registry: PluginRegistry) -> list[str]:
    """Every available local backend; noop (a DEBUG backend) last."""
    local = [
        i for i in registry.backends.values() if i.available and not i.cls.type & PluginType.REMOTE
    ]
    local.sort(key=lambda i: (bool(i.cls.type & PluginType.DEBUG), i.name))
    return [i.name for i in local]


def candidate_infos(registry: PluginRegistry, config: Config) -> list[PluginInfo]:
    """The configured backends in priority order; unknown names are an error, unavailable ones
    are skipped (with a warning) unless none is left."""
    names = config.plugins if config.plugins else _default_order(registry)
    infos: list[PluginInfo] = []
    skipped: list[str] = []
    for name in names:
        info = registry.backends.get(name)
        if info is None:
            known = ", ".join(sorted(registry.backends)) or "none"
            failed = [f.describe() for f in registry.failures if f.name == name]
            hint = f"; it failed to load: {failed[0]}" if failed else ""
            raise PluginError(
                f"VACCEL_PLUGINS names unknown backend {name!r} (known: {known}){hint}"
            )
        if not info.available:
            logger.warning("backend %r is unavailable: %s", name, info.reason)
            skipped.append(f"{name} ({info.reason})")
            continue
        infos.append(info)
    if not infos:
        detail = "; ".join(skipped) if skipped else "no backend is installed"
        raise PluginError(f"no usable backend: {detail}")
    return infos


def select_backends(registry: PluginRegistry, config: Config, flags: int) -> list[Backend]:
    """Backends for a new session, in order.

    A REMOTE flag selects remote backends only; other type bits select backends with any of
    those bits; no type bits keeps the configured order.
    """
    infos = candidate_infos(registry, config)
    if flags & PluginType.REMOTE:
        chosen = [i for i in infos if i.cls.type & PluginType.REMOTE]
        wanted = "REMOTE"
    elif flags & _TYPE_BITS:
        chosen = [i for i in infos if i.cls.type & flags & _TYPE_BITS]
        wanted = "|".join(PluginType(flags & _TYPE_BITS).names())
    else:
        return [registry.backend(i.name) for i in infos]
    if not chosen and flags & PluginType.REMOTE:
        remote = sorted(
            n for n, i in registry.backends.items() if i.cls.type & PluginType.REMOTE
        )
        hint = (
            "set VACCEL_PLUGINS=rpc (and VACCEL_RPC_ADDRESS, the agent's address)"
            if not config.plugins
            else "add rpc to VACCEL_PLUGINS (and set VACCEL_RPC_ADDRESS, the agent's address)"
        )
        configured = ", ".join(i.name for i in infos)
        raise PluginError(
            f"no configured backend matches session flags REMOTE: no backend of type REMOTE is "
            f"loaded (configured: {configured}; remote backends installed: "
            f"{', '.join(remote) or 'none'}): {hint}"
        )
    if not chosen:
        have = ", ".join(f"{i.name} ({'|'.join(PluginType(i.cls.type).names())})" for i in infos)
        raise PluginError(
            f"no configured backend matches session flags {wanted} (configured: {have})"
        )
    return [registry.backend(i.name) for i in chosen]


def find_backend(backends: list[Backend], op: Op) -> Backend:
    """The first backend that implements the operation."""
    for backend in backends:
        if op in backend.operations():
            return backend
    tried = ", ".join(b.name for b in backends) or "none"
    raise NotSupportedError(
        f"{op.spec.method}: no selected backend implements operation {op.value} (tried: {tried})"
    )
