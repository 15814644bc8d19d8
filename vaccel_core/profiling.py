"""Per-operation timing regions, printed as upstream does:
``[prof] <region>: total_time: N nsec nr_entries: M``."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass
class Region:
    """Accumulated time of one named region."""

    name: str
    total_ns: int = 0
    entries: int = 0

    def format(self) -> str:
        return f"[prof] {self.name}: total_time: {self.total_ns} nsec nr_entries: {self.entries}"


class RegionLike(Protocol):
    """Anything with a region's fields: a :class:`Region`, or one received from an agent."""

    @property
    def name(self) -> str: ...

    @property
    def total_ns(self) -> int: ...

    @property
    def entries(self) -> int: ...


class Profiler:
    """A set of regions; ``record`` is thread-safe and cheap."""

    def __init__(self) -> None:
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def record(self, name: str, elapsed_ns: int, entries: int = 1) -> None:
        """Add ``elapsed_ns`` (over ``entries`` calls) to the region ``name``."""
        with self._lock:
            region = self._regions.get(name)
            if region is None:
                region = self._regions[name] = Region(name)
            region.total_ns += elapsed_ns
            region.entries += entries

    def merge(self, regions: Iterable[RegionLike]) -> None:
        """Add regions measured elsewhere (e.g. the agent's, straight from its reply)."""
        for r in regions:
            self.record(r.name, r.total_ns, r.entries)

    def regions(self) -> list[Region]:
        with self._lock:
            return [Region(r.name, r.total_ns, r.entries) for r in self._regions.values()]

    def format(self) -> str:
        return "\n".join(r.format() for r in self.regions())
