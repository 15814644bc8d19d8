"""Property-based fuzzing of the virtio-mock device (hypothesis), against the real thing: a real
listener in this process, real memfds and eventfds, real device threads.

A hand-driven guest (:class:`RawGuest`) writes random descriptor tables (addresses in the data
area, in the rings, past the end; any length, any flags, any ``next``), random request
contents (valid headers, wrong kinds, counts and tokens, junk), random available-ring entries
(and sometimes a corrupt available index), and random control messages, then kicks. Whatever
it wrote, the device must:

* never crash (no device thread dies: nothing is logged at ERROR) and never hang;
* never write outside the device-writable buffers of the chains it completed (every byte of
  the shared memory is compared before and after, the used ring aside);
* complete every chain it was given, in order: a bad chain with length 0 and a
  ``chain_error`` event naming it, a valid chain with a decodable reply header;
* still serve a good call afterwards (or, after a corrupt available index, stop that device
  with ``device_error`` and serve the next guest).

The normal suite runs a modest number of examples with a fixed seed (about 6 s, reproducible);
``VACCEL_FUZZ_EXAMPLES=2000 pytest -m fuzz`` (``tox -e fuzz``) runs more, with a random seed.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vaccel_core.errors import InvalidArgumentError, clip
from vaccel_core.transport import Address, Message, Peer, TransportOptions
from vaccel_transports.virtio_mock.device import VirtioMockListener
from vaccel_transports.virtio_mock.layout import VRING_DESC_F_INDIRECT
from vaccel_transports.virtio_mock.protocol import (
    KIND_CALL,
    KIND_FETCH,
    REP_HEADER,
    REPLY_ERROR,
    REPLY_HEADER_BYTES,
    REPLY_NEED_SPACE,
    REPLY_OK,
    REQ_HEADER,
    pack_request,
    unpack_reply_header,
)

from .test_virtio_mock_trust import NEXT, WRITE, RawGuest, open_fds, wait_until

#: Examples per property: modest in the normal suite, VACCEL_FUZZ_EXAMPLES in the fuzz run.
#: Read at import (the shared conftest drops VACCEL_* variables from each test's environment).
CONFIGURED = int(os.environ.get("VACCEL_FUZZ_EXAMPLES") or 0)
EXAMPLES = CONFIGURED or 100

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(120 + EXAMPLES // 2)]

MEMORY = 256 * 1024
NUM = 16
MESSAGE_LIMIT = 64 * 1024  # small: descriptors and replies over it are common

FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=not CONFIGURED,  # a fixed seed in the suite, new inputs in long runs
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # errors_logged spans all examples: intended
    ],
)


class FuzzHandler:
    """A handler whose own behaviour is well defined for any input (so that what the fuzz
    finds is the transport's): ``echo``, ``fail``, ``big`` (a reply of 997 bytes per payload
    byte: often larger than the reply area or the message limit), ``long-error``."""

    def handle(self, method: str, request: Message, peer: Peer) -> Message:
        payload = bytes(request.payload)
        if method == "echo":
            return Message(payload, [bytes(b) for b in request.buffers])
        if method == "big":
            return Message(b"b", [bytes(997 * len(payload))])
        if method == "long-error":
            raise InvalidArgumentError("long-error: " + payload.decode(errors="replace") * 50)
        raise InvalidArgumentError(f"{clip(method)}: {clip(payload)}")

    def peer_connected(self, peer: Peer) -> None:
        pass

    def peer_disconnected(self, peer: Peer) -> None:
        pass


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtioMockListener]:
    path = tmp_path_factory.mktemp("fuzz") / "vm.ctl"
    served = VirtioMockListener(
        Address.parse(f"virtio-mock://{path}"),
        FuzzHandler(),
        TransportOptions(max_message_bytes=MESSAGE_LIMIT, handshake_timeout=5.0),
    )
    yield served
    served.stop(2)


def guest_of(listener: VirtioMockListener) -> RawGuest:
    guest = RawGuest(listener.path, memory=MEMORY, num=NUM)
    try:
        guest.setup()
    except BaseException:
        guest.close()
        raise
    return guest


def no_devices(listener: VirtioMockListener) -> None:
    assert wait_until(lambda: listener.open_connections == 0, 10), "a device did not end"


# Strategies ---------------------------------------------------------------------------------
def data_area_start() -> int:
    return 4096  # RingLayout.at(0, 16) ends well within the first page


U64, U32, U16 = (1 << 64) - 1, (1 << 32) - 1, (1 << 16) - 1

addresses = st.one_of(
    st.integers(data_area_start(), MEMORY - 1),
    st.sampled_from([0, 256, 300, MEMORY - 32, MEMORY - 1, MEMORY, 1 << 40, U64]),
    st.integers(0, U64),
)
lengths = st.one_of(
    st.sampled_from([0, 1, REQ_HEADER.size, 4095, 4096, 4097, 8192, MESSAGE_LIMIT + 1, U32]),
    st.integers(0, 16384),
    st.integers(0, U32),
)
flags = st.one_of(
    st.sampled_from([0, NEXT, WRITE, NEXT | WRITE, VRING_DESC_F_INDIRECT, NEXT | 8]),
    st.integers(0, U16),
)
nexts = st.one_of(st.integers(0, NUM - 1), st.integers(0, U16))
descriptors = st.tuples(addresses, lengths, flags, nexts)
methods = st.one_of(
    st.sampled_from(["echo", "big", "long-error", "nope", ""]), st.text(max_size=40)
)


@st.composite
def request_blocks(draw: Any) -> bytes:
    """What a guest puts where a request header goes: a valid header, or one subtly wrong."""
    kind = draw(st.sampled_from([KIND_CALL, KIND_CALL, KIND_FETCH, 0, 7]))
    payload = draw(st.binary(max_size=300))
    first = pack_request(
        KIND_CALL,
        draw(methods),
        draw(st.integers(0, 4)),
        payload,
        draw(st.sampled_from([0, 1, 2, U64 >> 1])),
    )
    mangle = draw(st.sampled_from(["none", "none", "kind", "magic", "lengths", "junk"]))
    header = bytearray(first)
    if mangle == "kind" or kind != KIND_CALL:
        struct.pack_into("<H", header, 6, kind)
    if mangle == "magic":
        header[0:4] = draw(st.binary(min_size=4, max_size=4))
    elif mangle == "lengths":
        struct.pack_into("<I", header, 8, draw(st.integers(0, U32)))
        struct.pack_into("<Q", header, 24, draw(st.integers(0, U64)))
    elif mangle == "junk":
        return draw(st.binary(min_size=0, max_size=200))
    return bytes(header)


@st.composite
def good_chain(draw: Any, first_index: int) -> tuple[list[tuple[int, int, int, int]], bytes]:
    """A well-formed chain at descriptors ``first_index``...: a request descriptor, 0-2
    buffers, one reply descriptor (its head is ``first_index``); and a request that matches
    it, to place at the request descriptor's address."""
    nbuf = draw(st.integers(0, 2))
    method = draw(st.sampled_from(["echo", "echo", "big", "long-error"]))
    first = pack_request(KIND_CALL, method, nbuf, draw(st.binary(max_size=200)))
    start = data_area_start()
    out = []
    index = first_index
    req = draw(st.integers(start, MEMORY - 2048)) & ~63
    out.append((req, draw(st.integers(len(first), 2048)), NEXT, index + 1))
    for _ in range(nbuf):
        index += 1
        addr = draw(st.integers(start, MEMORY - 1))
        size = draw(st.one_of(st.integers(0, 256), st.integers(0, MEMORY - addr)))
        out.append((addr, min(size, MEMORY - addr), NEXT, index + 1))
    reply_len = draw(st.integers(REPLY_HEADER_BYTES, REPLY_HEADER_BYTES + 16384))
    reply = draw(st.integers(start, MEMORY - reply_len))
    out.append((reply, reply_len, WRITE, draw(nexts)))
    return out, first


# The oracle ---------------------------------------------------------------------------------
def follow(table: list[tuple[int, int, int, int]], head: int) -> list[int] | None:
    """The descriptor indices of the chain at ``head`` as the spec defines it; None when the
    chain is broken (head or next out of range, a loop)."""
    if head >= NUM:
        return None
    seen: list[int] = []
    index = head
    while True:
        if index in seen:
            return None
        seen.append(index)
        _addr, _length, flag, nxt = table[index]
        if not flag & NEXT:
            return seen
        if nxt >= NUM:
            return None
        index = nxt


# The properties -----------------------------------------------------------------------------
@FUZZ
@given(data=st.data())
def test_fuzzed_rings_never_crash_overrun_or_go_unanswered(
    listener: VirtioMockListener, errors_logged: list[str], data: st.DataObject
) -> None:
    table = data.draw(st.lists(descriptors, min_size=NUM, max_size=NUM), label="table")
    templates = data.draw(st.integers(0, 3), label="good chains")
    heads: list[int] = []
    requests: dict[int, bytes] = {}  # descriptor -> the matching request of a good chain
    at = 0
    for _ in range(templates):
        chain, first = data.draw(good_chain(at), label="good chain")
        if at + len(chain) > NUM:
            break
        table[at : at + len(chain)] = chain
        if data.draw(st.integers(0, 3), label="keep its request") > 0:
            requests[at] = first
        heads.append(at)
        at += len(chain)
    heads += data.draw(
        st.lists(st.one_of(st.integers(0, NUM - 1), st.integers(0, U16)), max_size=NUM),
        label="more heads",
    )
    heads = data.draw(st.permutations(heads), label="order")[:NUM] or [0]
    corrupt = data.draw(st.integers(0, 9), label="corrupt") == 0
    controls = data.draw(st.lists(control_messages(), max_size=3), label="control messages")
    blocks = {
        i: requests.get(i) or data.draw(request_blocks(), label=f"request at {i}")
        for i, (addr, _n, flag, _x) in enumerate(table)
        if not flag & WRITE and data_area_start() <= addr < MEMORY
    }

    guest = guest_of(listener)
    try:
        for message in controls:  # after set-up: each refused, the device goes on
            guest.sock.send(message)
        for i, (addr, length, flag, nxt) in enumerate(table):
            guest.ring.write_desc(i, addr, length, flag, nxt)
        for i, block in sorted(blocks.items(), key=lambda item: item[0] in requests):
            addr = table[i][0]  # good chains' requests last: other blocks may overlap them
            guest.put(addr, block[: MEMORY - addr])
        for head in heads:
            guest.ring.set_avail_entry(guest.avail, head)
            guest.avail = (guest.avail + 1) & 0xFFFF
        if corrupt:
            guest.avail = (guest.avail + NUM + 1) & 0xFFFF
        guest.ring.set_avail_idx(guest.avail)
        before = bytes(guest.mem)
        os.eventfd_write(guest.kick, 1)

        if corrupt:  # the device stops, with a reason; the listener serves the next guest
            assert wait_until(lambda: hung_up(guest))
            assert any(e.get("event") == "device_error" for e in guest.events)
            return

        used = guest.wait_used(len(heads))
        after = bytes(guest.mem)
        deadline = time.monotonic() + 5
        while sum("ok" in e for e in guest.read_events(0.05)) < len(controls):
            assert time.monotonic() < deadline, "control messages went unanswered"
        events = guest.events
        assert [u[0] for u in used] == heads  # every chain answered, in order
        chain_errors = [e["head"] for e in events if e.get("event") == "chain_error"]
        assert sum(1 for e in events if e.get("event") == "device_error") == 0
        replies = [e for e in events if "ok" in e]
        assert len(replies) == len(controls) and not any(r["ok"] for r in replies)

        allowed: list[tuple[int, int]] = [(guest.layout.used, guest.layout.end)]
        written: list[tuple[int, int, int]] = []  # (head, addr, length) of answered chains
        for head, length in used:
            if length == 0:
                event("chain rejected")
                assert head in chain_errors, f"chain {head} rejected without a chain_error"
                chain_errors.remove(head)
                continue
            chain = follow(table, head)
            assert chain is not None, f"the device answered broken chain {head}"
            writable = [table[i] for i in chain if table[i][2] & WRITE]
            assert len(writable) == 1, f"chain {head} has {len(writable)} writable descriptors"
            addr, room, _f, _n = writable[0]
            assert data_area_start() <= addr and addr + room <= MEMORY
            assert REP_HEADER.size <= length <= room
            allowed.append((addr, addr + length))
            written.append((head, addr, length))
        changed = diff_spans(before, after)
        for lo, hi in changed:
            assert any(a <= lo and hi <= b for a, b in allowed), (
                f"the device wrote [{lo:#x}, {hi:#x}) outside the device-writable buffers "
                f"{[(hex(a), hex(b)) for a, b in allowed]}"
            )
        # The reply of each chain whose area no later chain overwrote is decodable.
        for i, (head, addr, length) in enumerate(written):
            if any(a < addr + length and addr < a + n for _, a, n in written[i + 1 :]):
                continue
            reply = unpack_reply_header(after, addr, length)
            assert reply.kind in (REPLY_OK, REPLY_ERROR, REPLY_NEED_SPACE), (head, reply)
            event(f"reply {('OK', 'ERROR', 'NEED_SPACE')[reply.kind]}")
            if reply.kind == REPLY_ERROR:
                assert reply.status and len(reply.message) < REPLY_HEADER_BYTES

        # A good call still works.
        reply = good_call(guest)
        assert reply == b"still served"
    finally:
        guest.close()
        no_devices(listener)
    assert errors_logged == []


def hung_up(guest: RawGuest) -> bool:
    """Whether the device closed the control socket (packets before that are kept)."""
    guest.sock.settimeout(0.05)
    try:
        while True:
            try:
                if guest.reply() is None:
                    return True
            except ConnectionResetError:  # closed with our packets unread: what it sent
                continue  # before closing is still there, then the end
    except (TimeoutError, BlockingIOError):
        return False
    finally:
        guest.sock.settimeout(5.0)


def diff_spans(before: bytes, after: bytes) -> list[tuple[int, int]]:
    """The [lo, hi) runs of bytes that differ (compared in 64-byte blocks, then exactly)."""
    spans: list[tuple[int, int]] = []
    for block in range(0, len(before), 64):
        if before[block : block + 64] == after[block : block + 64]:
            continue
        for i in range(block, min(block + 64, len(before))):
            if before[i] != after[i]:
                if spans and spans[-1][1] == i:
                    spans[-1] = (spans[-1][0], i + 1)
                else:
                    spans.append((i, i + 1))
    return spans


def good_call(guest: RawGuest) -> bytes:
    base = data_area_start()
    head, reply_at = guest.call_chain("echo", b"still served", base=base)
    guest.publish([head])
    ((done, length),) = guest.wait_used(1)
    assert done == head and length > 0
    reply = guest.reply_at(reply_at, length)
    assert reply.kind == REPLY_OK, reply
    data = reply_at + REPLY_HEADER_BYTES
    return bytes(guest.mem[data : data + reply.payload_len])


# Control messages ---------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
requests = st.sampled_from(
    [
        "GET_FEATURES",
        "SET_MEM_TABLE",
        "SET_VRING_NUM",
        "SET_VRING_ADDR",
        "SET_VRING_KICK",
        "SET_VRING_CALL",
        "SET_VRING_ENABLE",
        "SET_LOG_BASE",
    ]
)
fields = st.sampled_from(["size", "num", "desc", "avail", "used", "data_start", "pid"])


@st.composite
def control_messages(draw: Any) -> bytes:
    """One control packet: a request with fields of any JSON type (or plausible numbers), or
    bytes that are not a JSON object."""
    shape = draw(st.sampled_from(["request", "request", "request", "json", "junk"]))
    if shape == "junk":
        return draw(st.binary(min_size=1, max_size=300))
    if shape == "json":
        return json.dumps(draw(json_values)).encode()
    message: dict[str, Any] = {"req": draw(st.one_of(requests, json_values))}
    for name in draw(st.lists(fields, max_size=5, unique=True)):
        message[name] = draw(
            st.one_of(
                st.integers(0, 1 << 20),
                st.sampled_from([0, 1, 16, 4096, MEMORY, 1 << 40, 1 << 64]),
                json_values,
            )
        )
    return json.dumps(message).encode()


@FUZZ
@given(
    script=st.lists(
        st.tuples(
            control_messages(), st.lists(st.sampled_from(["memfd", "eventfd", "pipe"]), max_size=2)
        ),
        min_size=1,
        max_size=12,
    )
)
def test_fuzzed_set_up_messages_are_answered_and_harm_nobody(
    listener: VirtioMockListener, errors_logged: list[str], script: list[tuple[bytes, list[str]]]
) -> None:
    """Random set-up conversations, with descriptors of every kind attached: each message
    gets an answer (or the guest is dropped for the one reason allowed: it enabled a device
    and so left set-up), nothing leaks, and a regular guest is served afterwards."""
    fds = open_fds()
    guest = RawGuest(listener.path, memory=MEMORY, num=NUM)
    try:
        for packet, kinds in script:
            attached = [make_fd(kind) for kind in kinds]
            try:
                if attached:
                    socket.send_fds(guest.sock, [packet], attached)
                else:
                    guest.sock.send(packet)
            finally:
                for fd in attached:
                    os.close(fd)
            answer = guest.reply()
            assert answer is not None, f"the device hung up after {packet[:80]!r}"
            assert isinstance(answer.get("ok"), bool), answer
            if not answer["ok"]:
                assert isinstance(answer["error"], str) and len(answer["error"]) <= 400
    finally:
        guest.close()
    no_devices(listener)
    good = guest_of(listener)
    try:
        assert good_call(good) == b"still served"
    finally:
        good.close()
    no_devices(listener)
    assert wait_until(lambda: open_fds() <= fds), open_fds() - fds
    assert errors_logged == []


def make_fd(kind: str) -> int:
    if kind == "eventfd":
        return os.eventfd(0, os.EFD_CLOEXEC)
    if kind == "pipe":
        r, w = os.pipe()
        os.close(w)
        return r
    fd = os.memfd_create("fuzz", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, MEMORY)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    return fd
