"""Property-based fuzzing of every RPC of the agent (issue 9: the agent is a trust boundary).

Requests are drawn by :mod:`tests.security.strategies` from agent.proto's descriptors: every
method of ``vaccel.agent.v1.Agent``, every ``OpRequest.args`` case, with random sizes, counts,
ids, strings, dtypes, shapes and buffer indexes, plus malformed payloads and unknown methods.
Each example sets up two clients (A holds two sessions, a blob and a resource; B a session and
a resource), sends a few drawn calls from either, and checks:

* in process (``AgentService.handle``): nothing but VaccelError/CallError is raised;
* over the wire (a real agent process on a unix socket): the call ends with a status;
* never INTERNAL or UNKNOWN (those are bugs, not refusals);
* error messages at most 2 KiB, even for inputs of megabytes;
* a reply that succeeds parses as the method's response and fits the message limit;
* one client never succeeds on the other's session;
* when both clients are gone, nothing is left: no session, resource or blob (counts, and no
  file in the blob store), and over the wire the agent is alive and serves a normal noop.

Fixed seed and a modest number of examples in the normal suite (the file runs in well under a
minute); ``VACCEL_FUZZ_EXAMPLES=2000`` (``tox -e fuzz``) runs more, with a random seed.
Bugs found are listed in :data:`KNOWN_BUGS`: while one is open the property tests skip its
inputs and an ``xfail(strict=True)`` test reproduces it with a minimal input (that test starts
to fail, on purpose, once the bug is fixed: then set the entry's ``fixed_in``, which makes it a
plain regression test).
"""

from __future__ import annotations

import contextlib
import os
import resource
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.remote.conftest import (
    AgentProcess,
    RawClient,
    make_service,
    missing_remote_extra,
    remote_session,
    start_agent,
    wait_until,
)

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis")
if missing_remote_extra():
    pytest.skip(str(missing_remote_extra()), allow_module_level=True)

from hypothesis import HealthCheck, Phase, assume, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.control import currently_in_test_context  # noqa: E402

from tests.security.strategies import (  # noqa: E402
    METHODS,
    Drawn,
    Known,
    fill,
    op_request,
    request,
)
from vaccel_core.errors import VaccelError  # noqa: E402
from vaccel_core.transport import Message, Peer, status_for  # noqa: E402

pytestmark = pytest.mark.fuzz

FUZZ_EXAMPLES = int(os.environ.get("VACCEL_FUZZ_EXAMPLES") or 0)
IN_PROCESS_EXAMPLES = FUZZ_EXAMPLES or 300
RUN_EXAMPLES = FUZZ_EXAMPLES or 250
WIRE_EXAMPLES = max(FUZZ_EXAMPLES // 10, 40) if FUZZ_EXAMPLES else 40
FUZZ = settings(
    derandomize=not FUZZ_EXAMPLES,  # a fixed seed in CI, new inputs in long runs
    deadline=None,  # a shared 2-CPU machine: timing says nothing here
    database=None,  # no .hypothesis folder in the work tree
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
        HealthCheck.filter_too_much,
    ],
)
#: Longest error message a client may get back.
ERROR_BOUND = 2048
#: Statuses that mean a bug in the agent, not a refusal.
BUG_STATUSES = frozenset({"INTERNAL", "UNKNOWN"})
#: The in-process agent's (and the wire agent's) message limit: small, so that the fuzzer
#: reaches it; large allocations the agent fails to bound show up as MemoryError (see
#: ``address_space_guard``) instead of taking the machine's memory.
MESSAGE_LIMIT = 8 << 20
SESSION_METHODS = frozenset(
    {"UpdateSession", "DestroySession", "RegisterResource", "UnregisterResource",
     "SyncResource", "Run"}
)  # fmt: skip


# Known bugs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KnownBug:
    """A bug the fuzzer found. While it is open (``fixed_in`` None) the property tests skip
    the inputs ``matches`` accepts and a strict xfail test reproduces it with ``example``;
    once fixed, that test is a plain regression test."""

    id: str
    what: str
    matches: Callable[[Drawn], bool]
    example: Callable[[Known], Drawn]
    fixed_in: str | None = None  # the commit that fixed it


def _submessages(msg: Any) -> Iterator[Any]:
    """``msg`` and every message inside it."""
    yield msg
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        for item in value if _repeated(fd) else [value]:
            yield from _submessages(item)


def _repeated(fd: Any) -> bool:
    rep = getattr(fd, "is_repeated", None)
    return bool(rep) if rep is not None else fd.label == fd.LABEL_REPEATED


def _run_request(known: Known, **fields: Any) -> Any:
    from vaccel_core.proto import pb

    msg = pb().OpRequest(session_id=known.own_sessions[0], **fields)
    return msg


def _op_echo_example(known: Known) -> Drawn:
    msg = _run_request(known, op="x" * 4096)
    msg.noop.SetInParent()
    return _drawn("Run", msg)


def _dtype_echo_example(known: Known) -> Drawn:
    msg = _run_request(known, op="blas_sgemm")
    msg.blas_sgemm.a.dtype = "x" * 4096
    return _drawn("Run", msg)


def _tensor_name_echo_example(known: Known) -> Drawn:
    msg = _run_request(known, op="model_run")
    msg.model_run.resource = known.own_resources[0]
    item = msg.model_run.inputs.items.add(name="n" * 4096)
    item.tensor.dtype = ""  # any error in this tensor quotes its name
    return _drawn("Run", msg)


def _numpy_dtype_crashes(name: str) -> bool:
    """Whether ``np.dtype(name)`` raises something else than TypeError/ValueError (numpy
    parses comma-separated dtype strings with ast.literal_eval: SyntaxError)."""
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            np.dtype(name)
        except (TypeError, ValueError):
            return False
        except Exception:
            return True
    return False


def _dtype_syntax_example(known: Known) -> Drawn:
    msg = _run_request(known, op="minmax")
    msg.minmax.data.dtype = ","
    return _drawn("Run", msg)


KNOWN_BUGS: list[KnownBug] = [
    KnownBug(
        "tensor-dtype-syntaxerror",
        "vaccel_plugins/rpc/codec.py Decoder.tensor catches only TypeError/ValueError from "
        "np.dtype(msg.dtype), but numpy parses a dtype string with a comma through "
        "ast.literal_eval: Tensor.dtype ',' (or 'f4,,', 'i4,(2') raises SyntaxError. In "
        "process AgentService.handle raises SyntaxError; over the wire the client gets "
        "INTERNAL 'Run: unexpected agent error' and the agent logs a traceback. Minimal: "
        "Run minmax on one's own session with data.dtype=','",
        lambda d: (
            d.message is not None
            and any(
                m.DESCRIPTOR.name == "Tensor" and _numpy_dtype_crashes(m.dtype)
                for m in _submessages(d.message)
            )
        ),
        _dtype_syntax_example,
        fixed_in="15bfc5c",
    ),
    KnownBug(
        "run-op-name-echoed",
        "agent/service.py _run: a Run whose 'op' field does not match its args case (or has "
        "no case) quotes the whole 'op' string in its INVALID_ARGUMENT error ({msg.op!r}, not "
        "clip()): a 4096-char op gives a 4160-char error, a 2 MiB op a 2 MiB error",
        lambda d: (
            d.method == "Run"
            and d.message is not None
            and len(repr(d.message.op)) > 1000  # quoted with repr(): escapes count
            and d.message.op != d.message.WhichOneof("args")
        ),
        _op_echo_example,
        fixed_in="1b704dc",
    ),
    KnownBug(
        "tensor-dtype-echoed",
        "vaccel_plugins/rpc/codec.py Decoder.tensor: an unknown or non-numeric Tensor.dtype is "
        "quoted whole in the INVALID_ARGUMENT error ({msg.dtype!r}, not clip()): "
        "blas_sgemm with a.dtype of 4096 chars gives a 4140-char error",
        lambda d: (
            d.message is not None
            and any(
                m.DESCRIPTOR.name == "Tensor" and len(repr(m.dtype)) > 1000
                for m in _submessages(d.message)
            )
        ),
        _dtype_echo_example,
        fixed_in="1b704dc",
    ),
    KnownBug(
        "tensor-name-echoed",
        "vaccel_plugins/rpc/codec.py Decoder.value (NAMED_TENSORS) and vaccel_core/validate.py: "
        "a named tensor's name is quoted whole in the label of any error about that tensor "
        '(f"{name}[{entry.name!r}]", and the duplicate-name error): model_run on the '
        "client's own MODEL resource with one input named by 4096 chars and dtype '' gives a "
        "4153-char INVALID_ARGUMENT",
        lambda d: (
            d.message is not None
            and any(
                m.DESCRIPTOR.name == "NamedTensor" and len(repr(m.name)) > 1000
                for m in _submessages(d.message)
            )
        ),
        _tensor_name_echo_example,
        fixed_in="1b704dc",
    ),
]


def known_bug(call: Drawn) -> KnownBug | None:
    """The open bug ``call`` would run into, if any."""
    for bug in KNOWN_BUGS:
        if bug.fixed_in:
            continue
        with contextlib.suppress(Exception):
            if bug.matches(call):
                return bug
    return None


# In process ------------------------------------------------------------------------------------
@pytest.fixture
def address_space_guard() -> Iterator[None]:
    """Cap this process's address space at what it maps now + 6 GiB for the test: an
    allocation the agent fails to bound raises MemoryError (a finding) instead of using the
    machine's memory."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    try:
        with open("/proc/self/status") as fh:
            vsize = next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("VmSize:"))
    except (OSError, StopIteration):
        yield
        return
    limit = vsize + (6 << 30)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@dataclass
class Client:
    """One client of the world: its peer (in process) or connection (wire), what it holds."""

    name: str
    known: Known = field(default_factory=Known)


@dataclass
class World:
    """Two clients of one agent service; :meth:`call` checks every property of one call."""

    call_fn: Callable[[Client, Drawn], tuple[str, str, Any]]
    a: Client
    b: Client
    pb: Any

    def other(self, client: Client) -> Client:
        return self.b if client is self.a else self.a

    def call(self, client: Client, drawn: Drawn) -> Any:
        status, text, reply = self.call_fn(client, drawn)
        op = drawn.message.WhichOneof("args") if drawn.method == "Run" and drawn.message else ""
        if currently_in_test_context():  # --hypothesis-show-statistics
            event(f"{drawn.method}{'/' + op if op else ''}: {status}")
        where = f"{drawn.method} by {client.name}: {status}: {text[:300]!r}"
        assert status not in BUG_STATUSES, f"agent bug: {where}"
        assert status not in ("DEADLINE_EXCEEDED", "UNAVAILABLE"), f"agent stuck/gone: {where}"
        assert len(text) <= ERROR_BOUND, f"error of {len(text)} chars: {where}"
        if status != "OK":
            return None
        assert drawn.method in METHODS, f"unknown method {drawn.method!r} succeeded"
        msg = drawn.message
        if msg is not None and drawn.method in SESSION_METHODS:
            theirs = self.other(client).known.own_sessions
            assert msg.session_id not in theirs, (
                f"{client.name} used the other client's session {msg.session_id}: {drawn!r}"
            )
        parsed = METHODS[drawn.method][1].FromString(bytes(reply.payload))
        assert reply.nbytes <= MESSAGE_LIMIT, f"reply of {reply.nbytes} B: {where}"
        self._check_isolation(client, drawn, parsed)
        self._track(client, drawn, parsed)
        return parsed

    def _check_isolation(self, client: Client, drawn: Drawn, reply: Any) -> None:
        """A call that succeeded used nothing of the other client's: no resource of it, and
        no blob only it uploaded (attack 1: knowing a file's sha256 must not be enough)."""
        msg, other = drawn.message, self.other(client).known
        if msg is None:
            return
        if drawn.method == "RegisterResource" and reply.resource_id:
            theirs = set(other.held_digests) - set(client.known.held_digests)
            used = {f.sha256 for f in msg.files} & theirs
            assert not used, (
                f"{client.name} registered the other client's blob(s) {sorted(used)} without "
                f"uploading them: {drawn!r}"
            )
        if drawn.method == "Run" and msg.WhichOneof("args"):
            args = getattr(msg, msg.WhichOneof("args"))
            for fd, value in args.ListFields():
                if fd.name == "resource":
                    assert value not in other.own_resources, (
                        f"{client.name} ran with the other client's resource {value}: {drawn!r}"
                    )

    def _track(self, client: Client, drawn: Drawn, reply: Any) -> None:
        known = client.known
        if drawn.method == "CreateSession":
            known.own_sessions.append(int(reply.session_id))
            self.other(client).known.other_sessions.append(int(reply.session_id))
        elif drawn.method == "RegisterResource" and reply.resource_id:
            known.own_resources.append(int(reply.resource_id))
            self.other(client).known.other_resources.append(int(reply.resource_id))

    def setup(self) -> None:
        """A: two sessions, a blob, a MODEL resource; B: one session and a resource."""
        p = self.pb
        for client, sessions in ((self.a, 2), (self.b, 1)):
            for _ in range(sessions):
                self.call(client, _drawn("CreateSession", p.CreateSessionRequest()))
            blob = secrets.token_bytes(1024)
            import hashlib

            digest = hashlib.sha256(blob).hexdigest()
            put = p.PutBlobRequest(sha256=digest, size=len(blob), offset=0)
            put.data.inline = blob
            self.call(client, _drawn("PutBlob", put))
            client.known.held_digests.append(digest)
            client.known.held_sizes[digest] = len(blob)
            reg = p.RegisterResourceRequest(session_id=client.known.own_sessions[0], type=2)
            reg.files.add(name="model.onnx", sha256=digest, size=len(blob))
            got = self.call(client, _drawn("RegisterResource", reg))
            assert got is not None and got.resource_id, "set-up: RegisterResource failed"
        for client in (self.a, self.b):
            client.known.other_digests = list(self.other(client).known.held_digests)


def _drawn(method: str, msg: Any) -> Drawn:
    return Drawn(method, msg, msg.SerializeToString(), [])


def _in_process_world() -> tuple[World, Any, list[Peer]]:
    svc = make_service(max_message_bytes=MESSAGE_LIMIT)
    peers = [Peer("fuzz-a", "fuzz client A"), Peer("fuzz-b", "fuzz client B")]
    for peer in peers:
        svc.peer_connected(peer)
    by_name = {"A": peers[0], "B": peers[1]}

    def call(client: Client, drawn: Drawn) -> tuple[str, str, Any]:
        try:
            reply = svc.handle(
                drawn.method, Message(drawn.payload, tuple(drawn.buffers)), by_name[client.name]
            )
        except VaccelError as exc:  # anything else is a bug: it propagates and fails
            return status_for(exc), exc.message, None
        return "OK", "", reply

    world = World(call, Client("A"), Client("B"), svc.pb)
    return world, svc, peers


def _finish_in_process(svc: Any, peers: list[Peer]) -> None:
    """Both clients go: nothing may be left."""
    try:
        for peer in peers:
            svc.peer_disconnected(peer)
        counts = svc.counts()
        held = {k: counts.get(k, 0) for k in ("sessions", "resources", "blobs", "blob_bytes")}
        assert not any(held.values()), f"left after both clients went: {held}"
        root = getattr(svc.blobs, "root", None)
        if root is not None and Path(root).exists():
            left = [str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file()]
            assert not left, f"files left in the blob store: {left[:10]}"
    finally:
        svc.close()


def _run_calls(world: World, data: Any, strategy: Callable[[Known], Any], most: int) -> None:
    for _ in range(data.draw(st.integers(1, most), label="calls")):
        client = data.draw(st.sampled_from([world.a, world.a, world.a, world.b]), label="by")
        drawn = data.draw(strategy(client.known), label=f"call by {client.name}")
        assume(known_bug(drawn) is None)
        world.call(client, drawn)


@settings(FUZZ, max_examples=IN_PROCESS_EXAMPLES)
@given(data=st.data())
def test_every_request_in_process(data: Any, address_space_guard: None) -> None:
    world, svc, peers = _in_process_world()
    try:
        world.setup()
        _run_calls(world, data, request, 4)
    finally:
        _finish_in_process(svc, peers)


@settings(FUZZ, max_examples=RUN_EXAMPLES)
@given(data=st.data())
def test_every_operation_in_process(data: Any, address_space_guard: None) -> None:
    """Run calls only, every OpRequest.args case, on the caller's own session (so that most
    get past the session check into validation and the backend)."""
    world, svc, peers = _in_process_world()
    try:
        world.setup()
        _run_calls(world, data, op_request, 3)
    finally:
        _finish_in_process(svc, peers)


# Over the wire ------------------------------------------------------------------------------
class WireClient:
    """A plain gRPC client that attaches as the protocol says (the capability of its
    AttachEvent, and a peer id for agents that read one, on every call). Large receive limits,
    so that the agent's whole error comes back."""

    def __init__(self, address: str, attach: bytes = b"", timeout: float = 10.0) -> None:
        import grpc

        from vaccel_core.proto import SERVICE_NAME

        self.grpc = grpc
        self.prefix = f"/{SERVICE_NAME}/"
        self.channel = grpc.insecure_channel(
            "unix:" + address[len("unix://") :],
            options=[
                ("grpc.max_send_message_length", (1 << 31) - 1),
                ("grpc.max_receive_message_length", (1 << 31) - 1),
                ("grpc.max_metadata_size", 16 << 20),
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )
        self.metadata: tuple[tuple[str, str], ...] = (("vaccel-peer-id", secrets.token_hex(16)),)
        self.stream = self.channel.unary_stream(self.prefix + "Attach")(
            attach, metadata=self.metadata
        )
        first: list[Any] = []

        def read() -> None:
            with contextlib.suppress(Exception):
                first.append(next(iter(self.stream)))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not first:
            self.close()
            code = self.stream.code() if self.stream.done() else None
            details = self.stream.details() if self.stream.done() else "no AttachEvent in time"
            raise AttachRefused(getattr(code, "name", "TIMEOUT"), details or "")
        from vaccel_core.proto import pb

        self.pb = pb()
        event = self.pb.AttachEvent.FromString(first[0])
        if getattr(event, "capability", ""):
            self.metadata += (("vaccel-capability", event.capability),)

    def call(self, method: str, payload: bytes, buffers: list[bytes]) -> tuple[str, str, Any]:
        from vaccel_transports import grpc_framing

        raw = grpc_framing.encode(Message(payload, tuple(buffers)))
        stub = self.channel.unary_unary(self.prefix + method)
        try:
            reply = stub(raw, timeout=30, metadata=self.metadata)
        except self.grpc.RpcError as exc:
            return exc.code().name, exc.details() or "", None
        return "OK", "", grpc_framing.decode(reply)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stream.cancel()
        with contextlib.suppress(Exception):
            self.channel.close()


class AttachRefused(Exception):
    def __init__(self, status: str, details: str) -> None:
        super().__init__(f"{status}: {details}")
        self.status = status
        self.details = details


def _limit_agent_memory(pid: int, headroom: int = 8 << 30) -> None:
    """Cap the agent's address space at what it maps now + ``headroom``: an allocation it
    fails to bound then fails in the agent instead of taking this machine's memory."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        with open(f"/proc/{pid}/status") as fh:
            vsize = next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("VmSize:"))
        _soft, hard = resource.prlimit(pid, resource.RLIMIT_AS)
        limit = vsize + headroom
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.prlimit(pid, resource.RLIMIT_AS, (limit, hard))


@pytest.fixture(scope="module")
def fuzz_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    path = tmp_path_factory.mktemp("fuzz") / "agent.sock"
    handle = start_agent(
        [f"unix://{path}"], args=["--max-message-size", str(MESSAGE_LIMIT), "--log-level", "1"]
    )
    _limit_agent_memory(handle.pid)
    yield handle
    handle.stop()


def _observer(agent: AgentProcess) -> RawClient:
    observer = getattr(agent, "observer", None)  # the operator's view, where there is one
    return observer() if observer is not None else RawClient(agent.address)


def test_every_request_over_the_wire(fuzz_agent: AgentProcess) -> None:
    address = fuzz_agent.address
    attach_requests = st.builds(
        lambda m: m.SerializeToString(),
        fill(METHODS["Attach"][0](), Known(), []),
    )

    # No shrinking over the wire (slow, and the agent's state carries over between tries);
    # the in-process tests shrink the same inputs.
    @settings(FUZZ, max_examples=WIRE_EXAMPLES, phases=[Phase.explicit, Phase.generate])
    @given(data=st.data())
    def run(data: Any) -> None:
        ran.append(1)
        attach = data.draw(attach_requests, label="AttachRequest of B")
        clients: dict[str, WireClient] = {}
        try:
            clients["A"] = WireClient(address)
            try:
                clients["B"] = WireClient(address, attach)
            except AttachRefused as exc:
                assert exc.status not in BUG_STATUSES, f"Attach: {exc}"
                assert len(exc.details) <= ERROR_BOUND, f"Attach error of {len(exc.details)}"
                clients["B"] = WireClient(address)

            def call(client: Client, drawn: Drawn) -> tuple[str, str, Any]:
                # Attach is a server stream: called as a unary call it attaches, and its
                # (long-lived) stream runs into the call's deadline, as it should.
                assume(drawn.method != "Attach")
                return clients[client.name].call(drawn.method, drawn.payload, drawn.buffers)

            world = World(call, Client("A"), Client("B"), clients["A"].pb)
            world.setup()
            _run_calls(world, data, request, 4)
        finally:
            for c in clients.values():
                c.close()

    ran: list[int] = []
    run()
    assert len(ran) >= WIRE_EXAMPLES, f"only {len(ran)} examples ran"
    assert fuzz_agent.proc.poll() is None, f"the agent died; log:\n{fuzz_agent.log[-3000:]}"
    with remote_session(address) as session:
        session.noop()
    observer = _observer(fuzz_agent)
    try:

        def clean() -> bool:
            status = observer.status()
            return status.sessions == 0 and status.resources == 0 and status.blobs == 0

        wait_until(clean, 15.0, "no session, resource or blob left after the fuzzing")
    finally:
        observer.close()


# Known bugs, reproduced --------------------------------------------------------------------
class BugReproduced(AssertionError):
    """The known bug's property failed (and nothing else did)."""


@pytest.mark.parametrize(
    "bug",
    [
        pytest.param(
            b,
            marks=()
            if b.fixed_in
            else pytest.mark.xfail(strict=True, raises=BugReproduced, reason=b.what),
        )
        for b in KNOWN_BUGS
    ],
    ids=[b.id for b in KNOWN_BUGS],
)
def test_known_bug(bug: KnownBug) -> None:
    """Each bug's minimal input, in process: xfails while the bug is open (any other failure,
    of the set-up say, fails the test), passes once it is fixed (a regression test)."""
    world, svc, peers = _in_process_world()
    try:
        world.setup()
        drawn = bug.example(world.a.known)
        assert bug.matches(drawn), f"{bug.id}: its example does not match its own predicate"
        try:
            world.call(world.a, drawn)
        except Exception as exc:  # a property failed, or the agent raised what it must not
            raise BugReproduced(f"{bug.id}: {type(exc).__name__}: {exc}") from None
    finally:
        _finish_in_process(svc, peers)
