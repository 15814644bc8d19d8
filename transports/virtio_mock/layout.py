"""Split virtqueue structures, laid out as in the virtio 1.x specification (section 2.7).

All fields are little-endian. For a queue of ``num`` entries::

    descriptor table  num x {addr u64, len u32, flags u16, next u16}      (16-byte aligned)
    available ring    {flags u16, idx u16, ring[num] u16, used_event u16}  (2-byte aligned)
    used ring         {flags u16, idx u16, ring[num] {id u32, len u32}, avail_event u16}
                                                                           (4-byte aligned)

The driver (guest) owns the descriptor table and the available ring; the device owns the used
ring. Indices (``idx``) are free-running 16-bit counters; a ring slot is ``idx % num``.
Writers publish in order: entry first, then ``idx``; readers read ``idx`` first, then entries.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4

DESC = struct.Struct("<QIHH")  # addr, len, flags, next
U16 = struct.Struct("<H")
USED_ELEM = struct.Struct("<II")  # id, len

#: The queue size we use by default (a power of two, as the split ring requires).
DEFAULT_QUEUE_SIZE = 256
MAX_QUEUE_SIZE = 32768


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) & ~(alignment - 1)


@dataclass(frozen=True)
class RingLayout:
    """Where the three parts of one split virtqueue lie, as offsets into the shared memory."""

    num: int
    desc: int
    avail: int
    used: int
    end: int  # first byte after the used ring

    @classmethod
    def at(cls, offset: int, num: int) -> RingLayout:
        """The layout of a ``num``-entry queue starting at ``offset``."""
        check_queue_size(num)
        desc = _align(offset, 16)
        avail = desc + DESC.size * num
        used = _align(avail + 4 + 2 * num + 2, 4)
        end = used + 4 + USED_ELEM.size * num + 2
        return cls(num, desc, avail, used, end)


def check_queue_size(num: int) -> None:
    """Raise ValueError unless ``num`` is a valid split-queue size (a power of two)."""
    if not (isinstance(num, int) and 0 < num <= MAX_QUEUE_SIZE and num & (num - 1) == 0):
        raise ValueError(f"queue size: expected a power of two in 1..{MAX_QUEUE_SIZE}, got {num!r}")


class SplitRing:
    """Reads and writes one split virtqueue in a shared buffer (an ``mmap``).

    Descriptors and ring entries are copied in or out with ``struct``: a device never keeps a
    reference into memory the driver may change under it. The two ``idx`` fields, which the
    other side reads while they change, go through one-element numpy views, so that each is
    read and written as one aligned 16-bit access (``struct`` writes byte by byte, and a
    reader could see half of an update).
    """

    def __init__(self, mem: Any, layout: RingLayout) -> None:
        import numpy as np

        self.mem = mem
        self.layout = layout
        self.num = layout.num
        self._avail_idx = np.frombuffer(mem, dtype="<u2", count=1, offset=layout.avail + 2)
        self._used_idx = np.frombuffer(mem, dtype="<u2", count=1, offset=layout.used + 2)

    def close(self) -> None:
        """Drop the views into the memory (so that the mapping can be closed)."""
        import numpy as np

        self._avail_idx = self._used_idx = np.zeros(1, dtype="<u2")

    # Descriptor table ------------------------------------------------------------------------
    def write_desc(self, index: int, addr: int, length: int, flags: int, next_: int) -> None:
        DESC.pack_into(self.mem, self.layout.desc + DESC.size * index, addr, length, flags, next_)

    def read_desc(self, index: int) -> tuple[int, int, int, int]:
        """(addr, len, flags, next) of one descriptor (``index`` must be < num)."""
        result: tuple[int, int, int, int] = DESC.unpack_from(
            self.mem, self.layout.desc + DESC.size * index
        )
        return result

    # Available ring (driver -> device) -----------------------------------------------------
    def avail_idx(self) -> int:
        return int(self._avail_idx[0])

    def set_avail_idx(self, value: int) -> None:
        self._avail_idx[0] = value & 0xFFFF

    def avail_entry(self, idx: int) -> int:
        return int(U16.unpack_from(self.mem, self.layout.avail + 4 + 2 * (idx % self.num))[0])

    def set_avail_entry(self, idx: int, head: int) -> None:
        U16.pack_into(self.mem, self.layout.avail + 4 + 2 * (idx % self.num), head)

    # Used ring (device -> driver) ------------------------------------------------------------
    def used_idx(self) -> int:
        return int(self._used_idx[0])

    def set_used_idx(self, value: int) -> None:
        self._used_idx[0] = value & 0xFFFF

    def used_entry(self, idx: int) -> tuple[int, int]:
        """(id, len) of the used element at free-running index ``idx``."""
        result: tuple[int, int] = USED_ELEM.unpack_from(
            self.mem, self.layout.used + 4 + USED_ELEM.size * (idx % self.num)
        )
        return result

    def set_used_entry(self, idx: int, head: int, length: int) -> None:
        USED_ELEM.pack_into(
            self.mem, self.layout.used + 4 + USED_ELEM.size * (idx % self.num), head, length
        )
