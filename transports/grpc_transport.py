"""gRPC plumbing shared by the agent's server (:mod:`.grpc_server`) and the client channel
(:mod:`.grpc_client`) of the tcp and unix transports.

The service is one generic gRPC service named after agent.proto's ``vaccel.agent.v1.Agent``:
every unary method takes and returns raw bytes (identity serializers), so the agent parses each
payload exactly once. Out-of-band buffers travel in the same gRPC message (see
:mod:`vaccel_transports.grpc_framing`). A failed call ends with a gRPC status plus binary trailing
metadata ``vaccel-error-detail-bin`` (an ``ErrorDetail``) and ``vaccel-error-code``.

Importing this module imports grpc: the tcp/unix plugin modules import it only when used.
"""

from __future__ import annotations

from typing import Any

import grpc

from vaccel_core.log import logger as _vaccel_logger
from vaccel_core.transport import TransportOptions, status_for

logger = _vaccel_logger.getChild("transport")

#: Metadata that names the calling client: the capability its Attach stream was issued.
CAPABILITY_METADATA = "vaccel-capability"
ERROR_CODE_METADATA = "vaccel-error-code"
ERROR_DETAIL_METADATA = "vaccel-error-detail-bin"
#: gRPC limits one message to a signed 32-bit length.
GRPC_MAX_MESSAGE = (1 << 31) - 1

__all__ = [
    "CAPABILITY_METADATA",
    "ERROR_CODE_METADATA",
    "ERROR_DETAIL_METADATA",
    "common_options",
    "error_metadata",
    "message_limit",
    "status_code",
    "status_for",
]


def message_limit(options: TransportOptions) -> int:
    """The configured message-size limit, capped at what gRPC can carry."""
    return max(1024, min(int(options.max_message_bytes), GRPC_MAX_MESSAGE))


def common_options(options: TransportOptions) -> list[tuple[str, Any]]:
    """Channel and server arguments: message limits and keepalive (to notice vanished peers)."""
    limit = message_limit(options)
    extra = options.extra
    keepalive = int(extra.get("keepalive_time_ms", 20_000))
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.keepalive_time_ms", keepalive),
        ("grpc.keepalive_timeout_ms", int(extra.get("keepalive_timeout_ms", 10_000))),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # The server must accept the client's keepalive pings on an idle Attach stream: by
        # default it allows one every 5 minutes and drops the connection ("too_many_pings")
        # after two more, which would release an idle client's sessions.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", max(keepalive // 2, 100)),
        ("grpc.http2.max_ping_strikes", 0),
    ]


def status_code(name: str) -> grpc.StatusCode:
    """The grpc.StatusCode named ``name`` (UNKNOWN for a name gRPC does not know)."""
    return getattr(grpc.StatusCode, name, grpc.StatusCode.UNKNOWN)


def error_metadata(status: str, code: int, message: str) -> tuple[tuple[str, Any], ...]:
    """The trailing metadata of a failed call."""
    from vaccel_core.proto import pb

    detail = pb().ErrorDetail(status=status, code=code, message=message)
    return (
        (ERROR_CODE_METADATA, str(code)),
        (ERROR_DETAIL_METADATA, bytes(detail.SerializeToString())),
    )
