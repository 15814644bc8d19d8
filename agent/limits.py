"""Every limit the agent puts on what its clients can make it hold, in one table.

The agent is a trust boundary: each size, count and duration a client controls is bounded here,
by a documented flag with a safe default, and checked before memory is committed. One table
drives the command-line flags (:func:`add_arguments`), the values the service and transports
read (:class:`Limits`), the error a client over a limit gets (:func:`limit_error`) and the
documentation (a test compares docs/security.md with :data:`LIMITS`).

Limits that concern connections (connections, streams, handshake and idle timeouts, clients)
travel to the transports in :class:`vaccel_core.transport.TransportOptions`; the others are the
service's.
"""

from __future__ import annotations

import argparse
import errno
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from vaccel_core.transport import CallError

_SIZE = re.compile(r"^(\d+)\s*([KMGT]?)(?:I?B)?$")
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: int | str, what: str) -> int:
    """Bytes from an int or a string with an optional binary suffix (4096, 512M, 4G, 16GiB)."""
    from vaccel_core.errors import InvalidArgumentError

    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.match(value.strip().upper()) if isinstance(value, str) else None
    if match is None:
        raise InvalidArgumentError(
            f"{what}: expected a size in bytes with an optional K, M, G or T suffix "
            f"(e.g. 512M, 4G), got {value!r}"
        )
    return int(match[1]) * _SIZE_UNITS[match[2]]


@dataclass(frozen=True)
class LimitSpec:
    """One limit: its field name, flag, kind (count, bytes, seconds), default and meaning."""

    name: str
    flag: str
    kind: str  # "count" | "bytes" | "seconds"
    default: float
    help: str
    transport: bool = False  # a connection-level limit, handed to transports

    def format(self, value: float) -> str:
        if self.kind == "bytes":
            for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
                if value and value % (1 << shift) == 0:
                    return f"{int(value) >> shift}{unit}"
            return str(int(value))
        if self.kind == "seconds":
            return f"{value:g}"
        return str(int(value))


MiB = 1 << 20
GiB = 1 << 30

#: Every limit, in the order of the documentation.
LIMITS: tuple[LimitSpec, ...] = (
    # Connections (per listener) ---------------------------------------------------------------
    LimitSpec("max_connections", "--max-connections", "count", 1024,
              "open connections per listener; more are closed at once", transport=True),
    LimitSpec("max_streams", "--max-streams", "count", 16,
              "concurrent streams (calls, Attach included) per connection", transport=True),
    LimitSpec("max_clients", "--max-clients", "count", 64,
              "attached clients per listener", transport=True),
    LimitSpec("handshake_timeout", "--handshake-timeout", "seconds", 5.0,
              "time a new connection has to finish its set-up (HTTP/2 preface, TLS, virtio "
              "rings)", transport=True),
    LimitSpec("idle_timeout", "--idle-timeout", "seconds", 30.0,
              "a connection with no call and no attached client is closed after this",
              transport=True),
    LimitSpec("max_message_bytes", "--max-message-size", "bytes", 16 * MiB,
              "largest request or reply; a reply is refused before it is computed when its "
              "size is known from the request", transport=True),
    LimitSpec("receive_timeout", "--receive-timeout", "seconds", 10.0,
              "time a request has to arrive in full after its headers", transport=True),
    # Calls ------------------------------------------------------------------------------------
    LimitSpec("max_calls", "--max-calls", "count", 64,
              "calls the agent serves at once, all clients together; also the requests a "
              "listener receives at once (partial requests hold at most this x "
              "--max-message-size)", transport=True),
    LimitSpec("max_client_calls", "--max-client-calls", "count", 8,
              "calls one client has in flight at once (receiving or served)", transport=True),
    LimitSpec("max_inflight_bytes", "--max-inflight-bytes", "bytes", 1 * GiB,
              "request and reply bytes of the calls being served, all clients together"),
    LimitSpec("max_client_inflight_bytes", "--max-client-inflight-bytes", "bytes", 256 * MiB,
              "request and reply bytes of one client's calls being served"),
    # State a client holds ---------------------------------------------------------------------
    LimitSpec("max_sessions", "--max-sessions", "count", 64, "sessions per client"),
    LimitSpec("max_resources", "--max-resources", "count", 256,
              "resources per client, all its sessions together"),
    LimitSpec("max_resource_files", "--max-resource-files", "count", 256,
              "files in one resource"),
    LimitSpec("max_uploads", "--max-uploads", "count", 4,
              "blob uploads one client has in progress at once"),
    LimitSpec("upload_idle_timeout", "--upload-idle-timeout", "seconds", 60.0,
              "an upload with no chunk for this long is dropped and its reservation freed"),
    LimitSpec("max_blob_bytes", "--max-blob-size", "bytes", 4 * GiB,
              "largest resource file (blob) a client may upload"),
    LimitSpec("max_client_blob_bytes", "--max-client-blob-bytes", "bytes", 8 * GiB,
              "blob bytes one client may hold and reserve (uploads count at their announced "
              "size)"),
    LimitSpec("blob_quota_bytes", "--blob-quota", "bytes", 16 * GiB,
              "blob bytes all clients together may hold and reserve"),
)  # fmt: skip

#: Limits that 0 turns off (every other limit must be positive).
UNLIMITED_WHEN_ZERO = frozenset({"max_blob_bytes", "max_client_blob_bytes", "blob_quota_bytes"})

BY_NAME: dict[str, LimitSpec] = {spec.name: spec for spec in LIMITS}


@dataclass(frozen=True)
class Limits:
    """The values in force. 0 turns off the blob limits (:data:`UNLIMITED_WHEN_ZERO`); every
    other limit must be positive."""

    max_connections: int = 1024
    max_streams: int = 16
    max_clients: int = 64
    handshake_timeout: float = 5.0
    idle_timeout: float = 30.0
    max_message_bytes: int = 16 * MiB
    receive_timeout: float = 10.0
    max_calls: int = 64
    max_client_calls: int = 8
    max_inflight_bytes: int = 1 * GiB
    max_client_inflight_bytes: int = 256 * MiB
    max_sessions: int = 64
    max_resources: int = 256
    max_resource_files: int = 256
    max_uploads: int = 4
    upload_idle_timeout: float = 60.0
    max_blob_bytes: int = 4 * GiB
    max_client_blob_bytes: int = 8 * GiB
    blob_quota_bytes: int = 16 * GiB

    def with_values(self, values: Mapping[str, Any]) -> Limits:
        """A copy with ``values`` (by field name; sizes may be strings such as ``512M``)."""
        parsed: dict[str, Any] = {}
        for key, value in values.items():
            spec = BY_NAME.get(key)
            if spec is None:
                from vaccel_core.errors import InvalidArgumentError

                raise InvalidArgumentError(
                    f"limits: unknown limit {key!r} (known: {', '.join(BY_NAME)})"
                )
            parsed[key] = _parse(spec, value)
        return replace(self, **parsed)


def _parse(spec: LimitSpec, value: Any) -> float:
    from vaccel_core.errors import InvalidArgumentError

    if spec.kind == "bytes":
        size = parse_size(value, spec.flag)
        if size == 0 and spec.name not in UNLIMITED_WHEN_ZERO:
            raise InvalidArgumentError(f"{spec.flag}: expected a size > 0, got {value!r}")
        return size
    try:
        number = float(value) if spec.kind == "seconds" else int(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"{spec.flag}: expected a {'number of seconds' if spec.kind == 'seconds' else 'count'}"
            f", got {value!r}"
        ) from None
    if number < 0:
        raise InvalidArgumentError(f"{spec.flag}: expected a value >= 0, got {value!r}")
    if number == 0 and spec.name not in UNLIMITED_WHEN_ZERO:
        raise InvalidArgumentError(f"{spec.flag}: expected a value > 0, got {value!r}")
    return number


def limit_error(what: str, spec_name: str, detail: str = "") -> CallError:
    """RESOURCE_EXHAUSTED for a client over a limit, naming the limit, its value and flag:
    ``CreateSession: this client already holds 64 sessions (limit 64, --max-sessions)``."""
    spec = BY_NAME[spec_name]
    text = f"{what}: {detail}" if detail else what
    return CallError("RESOURCE_EXHAUSTED", f"{text} ({spec.flag})", code=errno.ENOMEM)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per limit (default: not set, so that --vaccel-config and defaults apply)."""
    group = parser.add_argument_group(
        "limits", "what clients can make the agent hold (see docs/security.md)"
    )
    for spec in LIMITS:
        metavar = {"count": "N", "bytes": "SIZE", "seconds": "SECONDS"}[spec.kind]
        group.add_argument(
            spec.flag,
            dest=f"limit_{spec.name}",
            metavar=metavar,
            type=_argument_type(spec),
            help=f"{spec.help} (default {spec.format(spec.default)})",
        )


def _argument_type(spec: LimitSpec) -> Any:
    from vaccel_core.errors import VaccelError

    def convert(value: str) -> float:
        try:
            return _parse(spec, value)
        except VaccelError as exc:
            raise argparse.ArgumentTypeError(exc.message.removeprefix(f"{spec.flag}: ")) from None

    convert.__name__ = spec.kind
    return convert


def from_arguments(args: argparse.Namespace) -> dict[str, float]:
    """The limits given on the command line, by name."""
    return {
        spec.name: getattr(args, f"limit_{spec.name}")
        for spec in LIMITS
        if getattr(args, f"limit_{spec.name}", None) is not None
    }
