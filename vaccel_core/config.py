"""Configuration from the environment, with upstream variable names and their older aliases."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidArgumentError

DEFAULT_RPC_ADDRESS = "tcp://127.0.0.1:65500"
DEFAULT_IMAGENET_NETWORKS = "/usr/local/share/imagenet-models/networks"

_LIB_NAME = re.compile(r"^libvaccel-(?P<name>[A-Za-z0-9_.+-]+?)\.so(?:\.[0-9.]+)?$")


def plugin_name(item: str) -> str:
    """Map one entry of a plugin list to our backend name.

    ``noop`` -> ``noop``; ``libvaccel-noop.so`` -> ``noop``;
    ``/usr/local/lib/libvaccel-jetson.so`` -> ``jetson``; ``libvaccel-torch.so.0`` -> ``torch``.
    """
    base = item.strip().rstrip("/").rsplit("/", 1)[-1]
    match = _LIB_NAME.match(base)
    if match:
        return match.group("name")
    if base.endswith(".so"):
        base = base[: -len(".so")]
    return base.removeprefix("libvaccel-")


def parse_plugin_list(value: str) -> list[str]:
    """Split a ``:`` or ``,`` separated plugin list into backend names, keeping order."""
    names: list[str] = []
    for item in re.split(r"[:,]", value):
        if item.strip():
            name = plugin_name(item)
            if name not in names:
                names.append(name)
    return names


def parse_vaccel_config(value: str) -> dict[str, str]:
    """Parse ``--vaccel-config "plugins=libvaccel-noop.so,log_level=4"``.

    Items are ``key=value`` separated by commas; an item without ``=`` continues the previous
    value, so ``plugins=a.so,b.so`` keeps both plugins.
    """
    result: dict[str, str] = {}
    key: str | None = None
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" in item:
            key, _, val = item.partition("=")
            key = key.strip().lower().replace("-", "_")
            result[key] = val.strip()
        elif key is not None:
            result[key] = f"{result[key]},{item}"
        else:
            raise InvalidArgumentError(
                f"vaccel-config: expected key=value items, got {item!r} in {value!r}"
            )
    return result


def _parse_level(value: str, var: str) -> int:
    try:
        level = int(value)
    except ValueError:
        raise InvalidArgumentError(f"{var}: expected a level 1-4, got {value!r}") from None
    return min(max(level, 1), 4)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class Config:
    """Settings read from the environment (or given explicitly, e.g. by the agent)."""

    plugins: list[str] | None = None  # None: every available local backend, noop last
    log_level: int = 1
    log_file: str | None = None
    profiling: bool = False
    strict_plugins: bool = False
    rpc_address: str = DEFAULT_RPC_ADDRESS
    imagenet_networks: str = DEFAULT_IMAGENET_NETWORKS
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        env = os.environ if environ is None else environ
        cfg = cls()
        plugins = env.get("VACCEL_PLUGINS") or env.get("VACCEL_BACKENDS")
        if plugins and plugins.strip():
            cfg.plugins = parse_plugin_list(plugins)
        level = env.get("VACCEL_LOG_LEVEL") or env.get("VACCEL_DEBUG_LEVEL")
        if level:
            cfg.log_level = _parse_level(level, "VACCEL_LOG_LEVEL")
        cfg.log_file = env.get("VACCEL_LOG_FILE") or None
        cfg.profiling = _truthy(env.get("VACCEL_PROFILING_ENABLED"))
        cfg.strict_plugins = _truthy(env.get("VACCEL_PLUGINS_STRICT"))
        cfg.rpc_address = (
            env.get("VACCEL_RPC_ADDRESS") or env.get("VACCEL_VSOCK") or DEFAULT_RPC_ADDRESS
        )
        cfg.imagenet_networks = env.get("VACCEL_IMAGENET_NETWORKS") or DEFAULT_IMAGENET_NETWORKS
        return cfg

    def apply(self, settings: Mapping[str, str]) -> None:
        """Override from ``--vaccel-config`` style keys (plugins, log_level, log_file, ...)."""
        for key, value in settings.items():
            if key in {"plugins", "backends"}:
                self.plugins = parse_plugin_list(value) or None
            elif key in {"log_level", "debug_level"}:
                self.log_level = _parse_level(value, "log_level")
            elif key == "log_file":
                self.log_file = value or None
            elif key in {"profiling", "profiling_enabled"}:
                self.profiling = _truthy(value)
            elif key in {"rpc_address", "address"}:
                self.rpc_address = value
            else:
                self.extra[key] = value


_current: Config | None = None


def get_config() -> Config:
    """The process-wide configuration, read from the environment on first use."""
    global _current
    if _current is None:
        _current = Config.from_env()
    return _current


def set_config(config: Config | None) -> None:
    """Replace the process-wide configuration (None: read the environment again next time)."""
    global _current
    _current = config


def load_toml(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """The TOML file at ``path``, parsed; a file that cannot be read or parsed raises
    InvalidArgumentError starting with ``what`` (e.g. ``--batch-config``)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10: tomli, a dependency there
        import tomli as tomllib
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise InvalidArgumentError(
            f"{what}: cannot read {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    except ValueError as exc:  # tomllib.TOMLDecodeError
        raise InvalidArgumentError(f"{what}: {path} is not valid TOML: {exc}") from None
