"""The agent wire schema (``agent.proto``) and its generated protobuf module.

Importing this package does not import protobuf; use :func:`pb` (or import
``vaccel_core.proto.agent_pb2`` yourself) when the messages are needed.
"""

from __future__ import annotations

from types import ModuleType

#: Full name of the gRPC service in agent.proto.
SERVICE_NAME = "vaccel.agent.v1.Agent"
#: Field number that carries out-of-band buffers on gRPC (reserved in every request/reply).
OOB_FIELD = 2047


def pb() -> ModuleType:
    """The generated ``agent_pb2`` module (imports protobuf on first use)."""
    from . import agent_pb2

    return agent_pb2
