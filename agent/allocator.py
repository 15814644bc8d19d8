"""Keep large blocks in glibc's heap in the agent process.

Every tensor the agent receives or returns is a fresh multi-megabyte buffer. By default glibc
serves such blocks with mmap and gives them back with munmap, so each request pays a page fault
per 4 KiB page — in a VM that is the largest cost of a 1 MiB round trip. Raising the mmap and
trim thresholds lets the heap reuse those pages. The agent is a long-running server with a
working set of a few requests, so it keeps up to ``trim`` bytes of freed memory in exchange.

Set ``VACCEL_AGENT_MALLOC_TUNING=0`` to leave the allocator alone; glibc's own
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` variables, when set, take precedence.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

DEFAULT_MMAP_THRESHOLD = 256 << 20
DEFAULT_TRIM_THRESHOLD = 512 << 20


def tune_allocator(
    mmap_threshold: int = DEFAULT_MMAP_THRESHOLD, trim_threshold: int = DEFAULT_TRIM_THRESHOLD
) -> bool:
    """Apply the thresholds with ``mallopt``; returns whether they were applied (glibc only,
    not disabled, not already set through glibc's environment variables)."""
    if os.environ.get("VACCEL_AGENT_MALLOC_TUNING", "1").strip() in {"0", "false", "no", "off"}:
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(M_TRIM_THRESHOLD, trim_threshold)
    )
