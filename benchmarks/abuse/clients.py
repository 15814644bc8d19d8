"""Clients that speak agent.proto to the agent: plain gRPC (no Attach, metadata of the
attacker's choosing) and attached (the transport's own channel, as the rpc backend uses)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SERVICE = "vaccel.agent.v1.Agent"
GRPC_MAX = (1 << 31) - 1
#: The largest error text a client should ever get back (a sane bound: errors quote client
#: input clipped, never whole).
ERROR_BOUND = 2048


def pb() -> Any:
    from vaccel_core.proto import pb as load

    return load()


@dataclass
class Reply:
    """What one call returned: the parsed reply, or the status and error text."""

    status: str  # "OK" or a gRPC status-code name
    reply: Any = None
    details: str = ""
    detail_bytes: int = 0  # size of the vaccel-error-detail-bin trailer
    buffers: Sequence[Any] = ()

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    @property
    def error_bytes(self) -> int:
        """How many bytes of error text came back (status details + detail trailer)."""
        return len(self.details.encode("utf-8", "replace")) + self.detail_bytes

    def brief(self, limit: int = 90) -> str:
        if self.ok:
            return "OK"
        text = " ".join(self.details.split())
        if len(text) > limit:
            text = text[: limit - 3] + "..."
        return f"{self.status} {text}".strip()


def grpc_target(address: str) -> str:
    if address.startswith("unix://"):
        return "unix:" + address[len("unix://") :]
    if address.startswith("tcp://"):
        return address[len("tcp://") :]
    raise ValueError(f"not a gRPC address: {address}")


class PlainClient:
    """A plain gRPC client: one channel, no Attach stream, the metadata it chooses.

    Generous receive limits (2 GiB messages, 256 MiB metadata) so that whatever the agent
    sends back is seen, whole."""

    def __init__(self, address: str, metadata: Sequence[tuple[str, str]] = ()) -> None:
        import grpc

        self.grpc = grpc
        self.metadata = tuple(metadata)
        self.channel = grpc.insecure_channel(
            grpc_target(address),
            options=[
                ("grpc.max_send_message_length", GRPC_MAX),
                ("grpc.max_receive_message_length", GRPC_MAX),
                ("grpc.max_metadata_size", 256 << 20),
                ("grpc.absolute_max_metadata_size", 256 << 20),
                # A new TCP connection per client, as separate guests would have.
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )
        self.pb = pb()

    def call(
        self,
        method: str,
        msg: Any,
        reply_type: Any,
        *,
        timeout: float = 10.0,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> Reply:
        stub = self.channel.unary_unary(f"/{SERVICE}/{method}")
        try:
            raw = stub(
                msg.SerializeToString(),
                timeout=timeout,
                metadata=self.metadata if metadata is None else tuple(metadata),
            )
        except self.grpc.RpcError as exc:
            return rpc_error(exc)
        from vaccel_transports import grpc_framing

        frame = grpc_framing.decode(raw)
        return Reply("OK", reply_type.FromString(bytes(frame.payload)), buffers=frame.buffers)

    def attach(self, metadata: Sequence[tuple[str, str]] | None = None) -> Any:
        """Open an Attach stream (returns the call; iterate it for AttachEvents, cancel it to
        end it)."""
        stub = self.channel.unary_stream(f"/{SERVICE}/Attach")
        return stub(
            self.pb.AttachRequest(client="bench_abuse").SerializeToString(),
            metadata=self.metadata if metadata is None else tuple(metadata),
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.channel.close()


def rpc_error(exc: Any) -> Reply:
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else str(exc)) or ""
    detail_bytes = 0
    with contextlib.suppress(Exception):
        for key, value in exc.trailing_metadata() or ():
            if key == "vaccel-error-detail-bin":
                detail_bytes = len(value)
    return Reply(getattr(code, "name", "UNKNOWN"), None, details, detail_bytes)


class AttachedClient:
    """A client connection made by the transport plugin itself (its own Attach stream and
    identity), speaking agent.proto directly: what a well-behaved guest library does."""

    def __init__(self, address: str, *, max_message_bytes: int = GRPC_MAX, timeout: float = 10):
        from vaccel_core.plugins import get_registry
        from vaccel_core.transport import Address, TransportOptions

        parsed = Address.parse(address)
        self.address = address
        self.channel = (
            get_registry()
            .transport(parsed.scheme)
            .connect(
                parsed,
                TransportOptions(max_message_bytes=max_message_bytes, connect_timeout=timeout),
            )
        )
        self.pb = pb()

    def call(
        self,
        method: str,
        msg: Any,
        reply_type: Any,
        buffers: Sequence[Any] = (),
        *,
        timeout: float = 30.0,
    ) -> Reply:
        from vaccel_core.errors import VaccelError
        from vaccel_core.transport import CallError, Message

        try:
            reply = self.channel.call(
                method, Message(msg.SerializeToString(), tuple(buffers)), timeout
            )
        except CallError as exc:
            return Reply(exc.status, None, exc.message)
        except VaccelError as exc:
            return Reply(type(exc).__name__, None, exc.message)
        return Reply("OK", reply_type.FromString(bytes(reply.payload)), buffers=reply.buffers)

    def create_session(self) -> int:
        got = self.call(
            "CreateSession", self.pb.CreateSessionRequest(), self.pb.CreateSessionResponse
        )
        if not got.ok:
            raise RuntimeError(f"CreateSession: {got.brief()}")
        return int(got.reply.session_id)

    def put_blob(self, data: bytes, chunk: int = 16 << 20, size: int | None = None) -> Reply:
        """Upload ``data`` as a blob (inline chunks); the last reply."""
        digest = hashlib.sha256(data).hexdigest()
        total = len(data) if size is None else size
        got = Reply("OK")
        for offset in range(0, max(len(data), 1), chunk):
            request = self.pb.PutBlobRequest(sha256=digest, size=total, offset=offset)
            request.data.inline = data[offset : offset + chunk]
            got = self.call("PutBlob", request, self.pb.PutBlobResponse, timeout=60)
            if not got.ok:
                return got
        return got

    def register(self, session_id: int, files: Sequence[tuple[str, str, int]]) -> Reply:
        request = self.pb.RegisterResourceRequest(session_id=session_id, type=1)
        for name, digest, size in files:
            request.files.add(name=name, sha256=digest, size=size)
        return self.call("RegisterResource", request, self.pb.RegisterResourceResponse, timeout=120)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.channel.close()


def random_digest() -> str:
    return hashlib.sha256(os.urandom(32)).hexdigest()
