"""A first-fit allocator over the data area of the shared memory (driver side)."""

from __future__ import annotations

import bisect
import threading

ALLOC_ALIGN = 64


def block_size(nbytes: int) -> int:
    """The size of the block :meth:`Allocator.alloc` hands out for ``nbytes``."""
    return max(ALLOC_ALIGN, (nbytes + ALLOC_ALIGN - 1) & ~(ALLOC_ALIGN - 1))


class OutOfSharedMemory(Exception):
    """No free block is large enough right now."""


class Allocator:
    """Hands out 64-byte aligned blocks of ``[start, end)``; freed neighbours coalesce.

    Thread-safe (frees may come from finalizers on any thread).
    """

    def __init__(self, start: int, end: int) -> None:
        start = (start + ALLOC_ALIGN - 1) & ~(ALLOC_ALIGN - 1)
        if end <= start:
            raise ValueError(f"allocator: empty range [{start}, {end})")
        self.start, self.end = start, end
        self._offsets: list[int] = [start]  # free blocks, sorted by offset
        self._sizes: dict[int, int] = {start: end - start}
        self._used: dict[int, int] = {}
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return self.end - self.start

    def free_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    def largest_free(self) -> int:
        with self._lock:
            return max(self._sizes.values(), default=0)

    def alloc(self, nbytes: int) -> int:
        """Offset of a new block of at least ``nbytes`` (>= 1); raises OutOfSharedMemory."""
        size = block_size(nbytes)
        with self._lock:
            for i, off in enumerate(self._offsets):
                free = self._sizes[off]
                if free >= size:
                    del self._sizes[off]
                    if free == size:
                        del self._offsets[i]
                    else:
                        self._offsets[i] = off + size
                        self._sizes[off + size] = free - size
                    self._used[off] = size
                    return off
        raise OutOfSharedMemory(
            f"need {nbytes} bytes, largest free block is {self.largest_free()} of {self.capacity}"
        )

    def free(self, offset: int) -> None:
        with self._lock:
            size = self._used.pop(offset, None)
            if size is None:
                raise ValueError(f"allocator: offset {offset} is not allocated")
            i = bisect.bisect_left(self._offsets, offset)
            # Merge with the following block.
            if i < len(self._offsets) and self._offsets[i] == offset + size:
                size += self._sizes.pop(self._offsets[i])
                del self._offsets[i]
            # Merge with the preceding block.
            if i > 0:
                prev = self._offsets[i - 1]
                if prev + self._sizes[prev] == offset:
                    self._sizes[prev] += size
                    return
            self._offsets.insert(i, offset)
            self._sizes[offset] = size

    def in_use(self) -> int:
        with self._lock:
            return len(self._used)
