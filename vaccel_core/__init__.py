"""vAccel in Python: sessions, resources and operations over pluggable backends.

Importing this package loads no backend and no heavy dependency; plugins are discovered on
first use (the first :class:`Session`, or :func:`get_registry`).
"""

from .backend import Backend
from .batching import BatchItem
from .config import Config, get_config, set_config
from .errors import (
    BackendError,
    InvalidArgumentError,
    NotFoundError,
    NotSupportedError,
    OutOfMemoryError,
    PluginError,
    RemoteError,
    SessionError,
    VaccelError,
)
from .flags import REMOTE, PluginType
from .hookspecs import hookimpl
from .ops import CATALOG, Kind, Op, OpSpec, Param, ResourceType
from .plugins import PluginRegistry, get_registry, reset_registry
from .resource import Resource
from .session import Session

__version__ = "0.1.0"

__all__ = [
    "CATALOG",
    "REMOTE",
    "Backend",
    "BackendError",
    "BatchItem",
    "Config",
    "InvalidArgumentError",
    "Kind",
    "NotFoundError",
    "NotSupportedError",
    "Op",
    "OpSpec",
    "OutOfMemoryError",
    "Param",
    "PluginError",
    "PluginRegistry",
    "PluginType",
    "RemoteError",
    "Resource",
    "ResourceType",
    "Session",
    "SessionError",
    "VaccelError",
    "__version__",
    "get_config",
    "get_registry",
    "hookimpl",
    "reset_registry",
    "set_config",
]
