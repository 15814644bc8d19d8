"""Upstream vAccel's ``vaccel.sync.agent.AgentService`` over ttrpc, on our agent.

Served on the agent's ttrpc listeners next to our own service (the handler's ``services``
attribute), so an upstream guest (``libvaccel-rpc.so`` with ``VACCEL_RPC_ADDRESS=vsock://2:2048``)
reaches every backend of the host agent. The connection is the client, exactly as for our own
service: its sessions and resources are the agent's, invisible to other clients, released when
it disconnects, under the same admission and limits. Requests are bounded before they are
parsed (:mod:`.bounds`), every id and size in them is checked, and every failure reaches the
guest in upstream's error form (:mod:`.errors`), never as a transport error.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vaccel_agent.telemetry import UNKNOWN_METHOD
from vaccel_core.errors import VaccelError, clip
from vaccel_core.ops import Op
from vaccel_core.proto.upstream import SERVICE_NAME, upstream
from vaccel_core.transport import Peer, StatusError

from . import bounds, errors
from .args import Arg, ArgError, ArgReader, fill_text
from .genop import genop, op_type
from .models import Models
from .resources import Resources
from .state import State, check_id

if TYPE_CHECKING:
    from vaccel_agent.service import AgentService

logger = errors.logger

#: Upstream's ImageClassification reply: the tags in a 1024-byte buffer (its Rust agent's).
TAGS_BYTES = 1024
#: Arguments of one genop call, read and write lists each (upstream's ops take at most 12).
MAX_GENOP_ARGS = 1024
#: Samples one GetProfiler region carries (our profiler keeps totals, not samples).
MAX_SAMPLES = 1024
#: The component name of the agent's profiler, as upstream's agent names it.
PROFILER_NAME = "vaccel-rpc-agent"

Method = tuple[Any, Callable[[Any, Peer], Any]]


class UpstreamAgentService:
    """A :data:`vaccel_core.transport.RawService` for ``vaccel.sync.agent.AgentService``."""

    def __init__(self, agent: AgentService) -> None:
        self.agent = agent
        self.pb = pb = upstream()
        self.state = State(agent)
        self.resources = Resources(agent, self.state, pb)
        self.models = Models(self.state, pb)
        m = self.models
        self._methods: dict[str, Method] = {
            "CreateSession": (pb.session.CreateRequest, self._create_session),
            "UpdateSession": (pb.session.UpdateRequest, self._update_session),
            "DestroySession": (pb.session.DestroyRequest, self._destroy_session),
            "RegisterResource": (pb.resource.RegisterRequest, self.resources.register),
            "UnregisterResource": (pb.resource.UnregisterRequest, self.resources.unregister),
            "SyncResource": (pb.resource.SyncRequest, self.resources.sync),
            "ImageClassification": (pb.image.Request, self._image_classification),
            "TensorflowModelLoad": (pb.tf.ModelLoadRequest, m.tf_load),
            "TensorflowModelUnload": (pb.tf.ModelUnloadRequest, m.tf_unload),
            "TensorflowModelRun": (pb.tf.ModelRunRequest, m.tf_run),
            "TensorflowLiteModelLoad": (pb.tflite.ModelLoadRequest, m.tflite_load),
            "TensorflowLiteModelUnload": (pb.tflite.ModelUnloadRequest, m.tflite_unload),
            "TensorflowLiteModelRun": (pb.tflite.ModelRunRequest, m.tflite_run),
            "TorchModelLoad": (pb.torch.ModelLoadRequest, m.torch_load),
            "TorchModelRun": (pb.torch.ModelRunRequest, m.torch_run),
            "Genop": (pb.genop.Request, self._genop),
            "GetProfiler": (pb.profiling.Request, self._get_profiler),
        }

    @property
    def methods(self) -> list[str]:
        """The methods served, in upstream's order."""
        return list(self._methods)

    # RawService ----------------------------------------------------------------------------
    def __call__(self, method: str, payload: bytes, peer: Peer) -> bytes:
        """Serve one call, counted in the agent's telemetry (under upstream's method name)."""
        telemetry = self.agent.telemetry
        label = method if method in self._methods else UNKNOWN_METHOD
        call = self.agent._tickets.call = telemetry.begin(label, peer.id, "", len(payload))
        try:
            reply = self._serve(method, payload, peer)
        except BaseException as exc:
            telemetry.failed(call, exc)
            raise
        telemetry.end(call, "OK", len(reply))
        return reply

    def _serve(self, method: str, payload: bytes, peer: Peer) -> bytes:
        entry = self._methods.get(method)
        if entry is None:  # what ttrpc-rust answers for a method it does not serve
            name = method if len(method) <= 64 and method.isprintable() else clip(method)
            raise errors.refused(f"/{SERVICE_NAME}/{name} does not exist")
        try:
            ticket = self.agent.admission.admit(peer.id, method, len(payload))
        except VaccelError as exc:
            raise errors.from_vaccel(exc) from None
        self.agent._tickets.current = ticket
        try:
            request_type, impl = entry
            msg = self._parse(request_type, payload)
            reply = bytes(impl(msg, peer).SerializeToString())
            if len(reply) > self.agent.limits.max_message_bytes:
                raise errors.from_vaccel(_too_big(method, len(reply), self.agent))
            return reply
        except StatusError as exc:
            logger.debug("%s from client %s failed: %s", method, peer.id, exc.message)
            raise
        except VaccelError as exc:
            logger.debug("%s from client %s failed: %s", method, peer.id, exc)
            raise errors.from_vaccel(exc, (str(self.agent.blobs.base),)) from None
        except Exception as exc:
            raise errors.unexpected(method, exc) from None
        finally:
            self.agent._tickets.current = None
            ticket.release()

    @staticmethod
    def _parse(request_type: Any, payload: bytes) -> Any:
        """The request, after its elements were counted (:mod:`.bounds`)."""
        name = request_type.DESCRIPTOR.full_name
        try:
            bounds.check_elements(payload, request_type.DESCRIPTOR)
            return request_type.FromString(payload)
        except bounds.TooManyElements:
            raise errors.ffi(
                errno.EINVAL,
                f"the {name} request holds more than {bounds.MAX_ELEMENTS} fields and entries",
            ) from None
        except Exception:  # bounds.Malformed, protobuf's DecodeError
            raise errors.refused(f"Unpack request error: expected a {name} message") from None

    # Sessions ------------------------------------------------------------------------------
    def _create_session(self, msg: Any, peer: Peer) -> Any:
        request = self.agent.pb.CreateSessionRequest(flags=msg.flags)
        reply, _ = self.agent._create_session(request, (), peer)
        return self.pb.session.CreateResponse(session_id=reply.session_id)

    def _update_session(self, msg: Any, peer: Peer) -> Any:
        record = self.state.session(msg.session_id, peer)
        aliases = dict(self.state.aliases(record))
        request = self.agent.pb.UpdateSessionRequest(session_id=record.id, flags=msg.flags)
        self.agent._update_session(request, (), peer)
        self.state.aliases(record).update(aliases)  # the new Session's meta starts empty
        return self.pb.empty.Empty()

    def _destroy_session(self, msg: Any, peer: Peer) -> Any:
        record = self.state.session(msg.session_id, peer)
        request = self.agent.pb.DestroySessionRequest(session_id=record.id)
        self.agent._destroy_session(request, (), peer)
        return self.pb.empty.Empty()

    # Operations ----------------------------------------------------------------------------
    def _image_classification(self, msg: Any, peer: Peer) -> Any:
        record = self.state.session(msg.session_id, peer)
        self.agent._note_run(Op.IMAGE_CLASSIFY.value, record.session, Op.IMAGE_CLASSIFY)
        tags, _ = record.session.genop(Op.IMAGE_CLASSIFY, msg.image)
        out = Arg(bytearray(TAGS_BYTES), 0)
        fill_text(out, str(tags))
        return self.pb.image.Response(tags=bytes(out.buf))

    def _genop(self, msg: Any, peer: Peer) -> Any:
        record = self.state.session(msg.session_id, peer)
        for label, args in (("read", msg.read_args), ("write", msg.write_args)):
            if len(args) > MAX_GENOP_ARGS:
                raise errors.ffi(
                    errno.EINVAL, f"{len(args)} {label} args (at most {MAX_GENOP_ARGS})"
                )
        read = [Arg.from_proto(a) for a in msg.read_args]
        write = [Arg.from_proto(a, writable=True) for a in msg.write_args]
        self._note_operation(record.session, read)
        # The reply carries every write arg back: held twice (the buffers and the message).
        self.agent._reserve_reply(sum(a.size for a in write) + 16 * len(write), "its write args")

        def resource(resource_id: int) -> tuple[Any, bool]:
            try:
                return self.state.resource_for(record, check_id(resource_id), peer, "resource")
            except StatusError:
                raise ArgError(errno.ENOENT, f"no resource {resource_id}") from None

        try:
            genop(record.session, read, write, resource)
        except ArgError as exc:
            raise errors.ffi(exc.code, exc.what) from None
        record.last_used = time.monotonic()
        arg_type = self.pb.genop.Arg
        return self.pb.genop.Response(write_args=[a.to_proto(arg_type) for a in write])

    def _note_operation(self, session: Any, read: list[Arg]) -> None:
        """The operation of a genop call (its first read arg), for the agent's telemetry; a
        bad one is left for genop to report."""
        try:
            op = Op[op_type(ArgReader(read, "read")).name]
        except (ArgError, KeyError):
            return
        self.agent._note_run(op.value, session, op)

    def _get_profiler(self, msg: Any, peer: Peer) -> Any:
        check_id(msg.session_id)
        reply = self.pb.profiling.Response()
        try:
            record = self.state.session(msg.session_id, peer)
        except StatusError:  # upstream answers an empty reply for a session it has no data of
            return reply
        profiler = record.session.profiler
        if profiler is None:
            return reply
        reply.profiler.component_name = PROFILER_NAME
        for region in profiler.regions():
            entry = reply.profiler.regions[region.name]
            for sample_ns in _samples(region.total_ns, region.entries):
                entry.samples.add(start=0, time=sample_ns)
        return reply


def _samples(total_ns: int, entries: int) -> list[int]:
    """``entries`` samples (at most :data:`MAX_SAMPLES`) that add up to ``total_ns``: our
    profiler keeps each region's total and count, upstream's reply wants samples."""
    count = max(min(entries, MAX_SAMPLES), 1)
    each, extra = divmod(max(total_ns, 0), count)
    return [each + (1 if i < extra else 0) for i in range(count)]


def _too_big(method: str, size: int, agent: AgentService) -> VaccelError:
    from vaccel_agent.limits import limit_error

    return limit_error(
        method,
        "max_message_bytes",
        f"the reply would be {size} bytes, more than one message may carry "
        f"({agent.limits.max_message_bytes} bytes)",
    )


def services_for(agent: AgentService) -> dict[str, Callable[[str, bytes, Peer], bytes]]:
    """The ttrpc services the agent serves besides its own: upstream's AgentService."""
    return {SERVICE_NAME: UpstreamAgentService(agent)}
