"""Upstream vAccel's wire schema (vaccel-rust 0.5.0 ``vaccel-rpc-proto``), as our own .proto
files with upstream's packages, messages and field numbers, and their generated modules.

Importing this package does not import protobuf; :func:`upstream` imports the generated
modules on first use and returns them as one namespace::

    from vaccel_core.proto.upstream import upstream
    pb = upstream()
    req = pb.session.CreateRequest(flags=0)

Regenerate the modules with ``python -m vaccel_core.proto.generate``.
"""

from __future__ import annotations

import enum
import functools
import importlib
from types import ModuleType, SimpleNamespace

#: Full name of upstream's synchronous agent service (what its RPC plugin calls over ttrpc).
SERVICE_NAME = "vaccel.sync.agent.AgentService"


class ArgType(enum.IntEnum):
    """``vaccel.genop.ArgType`` (upstream's ``vaccel_arg_type_t``) as a Python enum, for code
    that packs or reads genop arguments without protobuf (the agent and the guest side; a
    test checks it against the generated enum)."""

    RAW = 0
    INT8 = 1
    INT8_ARRAY = 2
    INT16 = 3
    INT16_ARRAY = 4
    INT32 = 5
    INT32_ARRAY = 6
    INT64 = 7
    INT64_ARRAY = 8
    UINT8 = 9
    UINT8_ARRAY = 10
    UINT16 = 11
    UINT16_ARRAY = 12
    UINT32 = 13
    UINT32_ARRAY = 14
    UINT64 = 15
    UINT64_ARRAY = 16
    FLOAT32 = 17
    FLOAT32_ARRAY = 18
    FLOAT64 = 19
    FLOAT64_ARRAY = 20
    BOOL = 21
    BOOL_ARRAY = 22
    CHAR = 23
    CHAR_ARRAY = 24
    UCHAR = 25
    UCHAR_ARRAY = 26
    STRING = 27
    BUFFER = 28
    CUSTOM = 29


#: Attribute of the namespace -> generated module name (``<name>_pb2``).
MODULES = (
    "vaccel",
    "empty",
    "session",
    "resource",
    "image",
    "genop",
    "tf",
    "tflite",
    "torch",
    "profiling",
    "sync_agent",
)


class UpstreamSchema(SimpleNamespace):
    """The generated modules: ``vaccel`` (Error, Status), ``empty``, ``session``,
    ``resource``, ``image``, ``genop``, ``tf``, ``tflite``, ``torch``, ``profiling`` and
    ``sync_agent`` (the AgentService descriptor)."""

    vaccel: ModuleType
    empty: ModuleType
    session: ModuleType
    resource: ModuleType
    image: ModuleType
    genop: ModuleType
    tf: ModuleType
    tflite: ModuleType
    torch: ModuleType
    profiling: ModuleType
    sync_agent: ModuleType


@functools.cache
def upstream() -> UpstreamSchema:
    """Every generated module of upstream's schema (imports protobuf on first use)."""
    return UpstreamSchema(
        **{name: importlib.import_module(f"{__name__}.{name}_pb2") for name in MODULES}
    )


def module(name: str) -> ModuleType:
    """One generated module by its short name (``"genop"`` -> ``genop_pb2``)."""
    if name not in MODULES:
        raise KeyError(f"no upstream schema module {name!r}; known: {', '.join(MODULES)}")
    module_: ModuleType = getattr(upstream(), name)
    return module_
