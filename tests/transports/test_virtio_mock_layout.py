"""virtio-mock building blocks: split-queue layout per the virtio spec, allocator, headers."""

from __future__ import annotations

import mmap
import struct

import pytest

from vaccel_transports.virtio_mock.layout import DESC, RingLayout, SplitRing, check_queue_size
from vaccel_transports.virtio_mock.memory import Allocator, OutOfSharedMemory
from vaccel_transports.virtio_mock.protocol import (
    KIND_CALL,
    REPLY_ERROR,
    REPLY_NEED_SPACE,
    REPLY_OK,
    ProtocolError,
    data_layout,
    pack_reply_error,
    pack_reply_need_space,
    pack_reply_ok,
    pack_request,
    unpack_reply_header,
    unpack_request_header,
)

pytestmark = pytest.mark.timeout(30)


def test_split_ring_layout_matches_the_virtio_spec() -> None:
    # virtio 1.x, 2.7: descriptor table 16*N (16-aligned), available ring 6+2*N (2-aligned),
    # used ring 6+8*N (4-aligned).
    layout = RingLayout.at(0, 256)
    assert DESC.size == 16
    assert (layout.desc, layout.avail) == (0, 4096)
    assert layout.used == 4616  # 4096 + 6 + 2 * 256 = 4614, rounded up to 4
    assert layout.end == layout.used + 6 + 8 * 256
    odd = RingLayout.at(3, 4)
    assert odd.desc == 16 and odd.avail == 16 + 64 and odd.used % 4 == 0


@pytest.mark.parametrize("num", [0, 3, 100, 65536, -4])
def test_queue_size_must_be_a_power_of_two(num: int) -> None:
    with pytest.raises(ValueError, match=f"power of two.*got {num}"):
        check_queue_size(num)


def test_ring_fields_land_where_the_spec_puts_them() -> None:
    layout = RingLayout.at(0, 8)
    mem = mmap.mmap(-1, 4096)
    ring = SplitRing(mem, layout)
    ring.write_desc(3, 0x1122334455, 77, 3, 5)
    assert struct.unpack_from("<QIHH", mem, 3 * 16) == (0x1122334455, 77, 3, 5)
    ring.set_avail_entry(9, 4)  # free-running index 9 -> slot 1
    ring.set_avail_idx(10)
    assert struct.unpack_from("<HH", mem, layout.avail) == (0, 10)
    assert struct.unpack_from("<H", mem, layout.avail + 4 + 2 * 1)[0] == 4
    ring.set_used_entry(65535, 6, 1234)  # wraps to slot 7
    ring.set_used_idx(65536)  # 16-bit: wraps to 0
    assert ring.used_idx() == 0
    assert struct.unpack_from("<II", mem, layout.used + 4 + 8 * 7) == (6, 1234)
    assert ring.used_entry(7) == (6, 1234)
    ring.close()
    mem.close()


def test_allocator_aligns_coalesces_and_reports_when_full() -> None:
    alloc = Allocator(100, 100 + 64 * 10 + 28)
    assert alloc.start == 128
    a, b, c = alloc.alloc(1), alloc.alloc(64), alloc.alloc(65)
    assert (a, b, c) == (128, 192, 256)
    with pytest.raises(OutOfSharedMemory, match="need 1000 bytes, largest free block is"):
        alloc.alloc(1000)
    alloc.free(b)
    alloc.free(a)  # merges with b's block
    assert alloc.alloc(128) == 128
    alloc.free(128)
    alloc.free(c)
    assert alloc.free_bytes() == alloc.capacity and alloc.in_use() == 0
    with pytest.raises(ValueError, match="not allocated"):
        alloc.free(c)


def test_request_and_reply_headers_round_trip() -> None:
    mem = bytearray(8192)
    first = pack_request(KIND_CALL, "Run", 2, b"payload")
    mem[100 : 100 + len(first)] = first
    head = unpack_request_header(mem, 100, len(first))
    assert (head.kind, head.method, head.nbuf, head.payload_len) == (KIND_CALL, "Run", 2, 7)
    assert bytes(mem[100 + head.payload_offset : 100 + head.payload_offset + 7]) == b"payload"
    ok = pack_reply_ok(5, [3, 70])
    mem[0 : len(ok)] = ok
    reply = unpack_reply_header(mem, 0, len(ok))
    assert (reply.kind, reply.payload_len, reply.buffer_lens) == (REPLY_OK, 5, (3, 70))
    assert data_layout(5, [3, 70]) == ([64, 128], 198)
    need = pack_reply_need_space(9, 5, [1 << 20])
    mem[0 : len(need)] = need
    reply = unpack_reply_header(mem, 0, len(need))
    assert (reply.kind, reply.token, reply.buffer_lens) == (REPLY_NEED_SPACE, 9, (1 << 20,))
    err = pack_reply_error("NOT_FOUND", "x" * 10000, 2)
    assert len(err) <= 4096
    mem[0 : len(err)] = err
    reply = unpack_reply_header(mem, 0, len(err))
    assert (reply.kind, reply.status, reply.code) == (REPLY_ERROR, "NOT_FOUND", 2)
    assert reply.message.endswith("[truncated]")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"XXXX" + bytes(28), "bad magic"),
        (pack_request(KIND_CALL, "m", 0, b"abc")[:-1], "do not fit"),
        (pack_request(9, "m", 0), "unknown kind 9"),
        (b"VMRQ", "expected at least 32 bytes"),
    ],
)
def test_bad_request_headers_are_named(data: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        unpack_request_header(data, 0, len(data))
