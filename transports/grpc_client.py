"""The client side of the tcp and unix transports: one gRPC channel to the agent.

On connecting, the channel opens an ``Attach`` stream and keeps it open for its lifetime: the
first ``AttachEvent`` carries the capability the agent issued to this client, sent with every
later call (metadata ``vaccel-capability``); when the stream ends the agent releases what the
client held. With TLS options the channel is a TLS (or mutual TLS) channel; with a token every
call carries ``authorization: Bearer <token>``.
"""

from __future__ import annotations

import errno
import threading
from typing import Any

import grpc

from vaccel_core.auth import TOKEN_METADATA, bearer
from vaccel_core.errors import RemoteError, VaccelError
from vaccel_core.proto import SERVICE_NAME
from vaccel_core.transport import CallError, Channel, Message, TransportOptions

from . import grpc_framing
from .grpc_transport import (
    CAPABILITY_METADATA,
    ERROR_DETAIL_METADATA,
    common_options,
    logger,
    message_limit,
)


def channel_credentials(options: TransportOptions) -> grpc.ChannelCredentials | None:
    """TLS credentials for ``options.tls``, or None for a plaintext channel."""
    tls = options.tls
    if tls is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert
    )


#: How long a failed call waits to learn whether the whole connection went (its Attach
#: stream ends at the same moment) or only the call was refused.
ATTACH_GRACE = 0.25


class GrpcChannel(Channel):
    """A connection to the agent: one gRPC channel, one Attach stream, one capability."""

    def __init__(self, target: str, address: str, options: TransportOptions) -> None:
        self.address = address
        self._limit = message_limit(options)
        self._lost: str | None = None
        self._attach_gone = threading.Event()
        self._closed = False
        self._calls: dict[str, Any] = {}
        channel_args = common_options(options)
        credentials = channel_credentials(options)
        if credentials is not None:
            if options.tls is not None and options.tls.server_name:
                channel_args.append(("grpc.ssl_target_name_override", options.tls.server_name))
            self._channel = grpc.secure_channel(target, credentials, options=channel_args)
        else:
            self._channel = grpc.insecure_channel(target, options=channel_args)
        auth = ((TOKEN_METADATA, bearer(options.token)),) if options.token else ()
        timeout = float(options.connect_timeout)
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            self._channel.close()
            tls = ", with TLS" if credentials else ""
            raise RemoteError(
                f"cannot reach the vAccel agent at {address}: no connection within "
                f"{timeout:g} s (is vaccel-agent listening there{tls}?)"
            ) from None
        attach = self._channel.unary_stream(f"/{SERVICE_NAME}/Attach")
        self._attach = attach(b"", metadata=auth)
        event = self._first_event(timeout)
        self.peer_id: str = event.peer_id
        self._metadata = ((CAPABILITY_METADATA, event.capability), *auth)
        self._attach.add_done_callback(self._attach_ended)

    def _first_event(self, timeout: float) -> Any:
        """The AttachEvent that carries this client's capability (within ``timeout``)."""
        from vaccel_core.proto import pb

        box: list[Any] = []

        def read() -> None:
            try:
                box.append(next(self._attach))
            except BaseException as exc:
                box.append(exc)

        reader = threading.Thread(target=read, name="vaccel-attach", daemon=True)
        reader.start()
        reader.join(timeout)
        if not box:
            self._attach.cancel()
            self._channel.close()
            raise RemoteError(
                f"cannot attach to the vAccel agent at {self.address}: no answer within "
                f"{timeout:g} s"
            )
        first = box[0]
        if isinstance(first, grpc.RpcError):
            self._channel.close()
            raise self._error("Attach", first, timeout) from None
        if isinstance(first, BaseException):
            self._channel.close()
            raise RemoteError(
                f"cannot attach to the vAccel agent at {self.address}: the agent closed the "
                f"stream ({type(first).__name__})"
            )
        event = pb().AttachEvent.FromString(first)
        if not event.capability:
            self._channel.close()
            raise RemoteError(
                f"the vAccel agent at {self.address} issued no client capability (an agent "
                f"older than this client?)"
            )
        return event

    def _attach_ended(self, call: Any) -> None:
        self._attach_gone.set()
        if self._closed:
            return
        try:
            code = call.code()
            details = call.details()
        except Exception:  # pragma: no cover - defensive
            code, details = None, ""
        if code is None or code == grpc.StatusCode.OK:
            self._lost = "the agent closed the connection"
        else:
            self._lost = f"{code.name}: {details}"
        logger.debug("connection to %s lost: %s", self.address, self._lost)

    @property
    def lost(self) -> str | None:
        """Why the connection was lost (the agent went away), or None while it is up."""
        return self._lost

    def call(self, method: str, request: Message, timeout: float | None = None) -> Message:
        if self._closed:
            raise RemoteError(f"{method}: the channel to {self.address} is closed")
        if self._lost is not None:
            raise RemoteError(
                f"{method}: connection to the vAccel agent at {self.address} was lost "
                f"({self._lost}); its sessions are gone"
            )
        grpc_framing.check_size(request, self._limit, f"{method}: request")
        stub = self._calls.get(method)
        if stub is None:
            stub = self._calls[method] = self._channel.unary_unary(f"/{SERVICE_NAME}/{method}")
        try:
            reply = stub(grpc_framing.encode(request), timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._error(method, exc, timeout) from None
        return grpc_framing.decode(reply)

    def _error(self, method: str, exc: Any, timeout: float | None) -> VaccelError:
        code = exc.code()
        details = exc.details() or ""
        for key, value in exc.trailing_metadata() or ():
            if key == ERROR_DETAIL_METADATA:
                from vaccel_core.proto import pb

                detail = pb().ErrorDetail()
                try:
                    detail.ParseFromString(value)
                except Exception:
                    break
                return CallError(detail.status, detail.message, code=detail.code)
        if code == grpc.StatusCode.UNAVAILABLE:
            # One call refused (an HTTP/2 REFUSED_STREAM, say) while the Attach stream lives
            # is not a lost connection: the sessions are still there.
            if method == "Attach" or self._attach_gone.wait(ATTACH_GRACE):
                self._lost = self._lost or f"UNAVAILABLE: {details}"
                return RemoteError(
                    f"{method}: the vAccel agent at {self.address} is unreachable: {details}"
                )
            return RemoteError(
                f"{method}: the vAccel agent at {self.address} refused the call ({details}); "
                f"the connection and its sessions are intact: try again"
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return RemoteError(
                f"{method}: no answer from the vAccel agent at {self.address} within {timeout:g} s"
                if timeout is not None
                else f"{method}: deadline exceeded"
            )
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return CallError(
                "RESOURCE_EXHAUSTED",
                f"{method}: the agent at {self.address} refused the message: {details}",
                code=errno.ENOMEM,
            )
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return CallError("UNAUTHENTICATED", f"{method}: {details}", code=errno.EACCES)
        if code == grpc.StatusCode.CANCELLED and self._closed:
            return RemoteError(f"{method}: the channel to {self.address} was closed")
        return CallError(code.name, f"{method}: {details}", code=errno.EREMOTEIO)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._attach.cancel()
        finally:
            self._channel.close()
