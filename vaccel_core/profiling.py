"""Per-operation timing regions, printed as upstream does:
``[prof] <region>: total_time: N nsec nr_entries: M``."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class Region:
    """Accumulated time of one named region."""

    name: str
    total_ns: int = 0
    entries: int = 0

    def format(self) -> str:
        return f"[prof] {self.name}: total_time: {self.total_ns} nsec nr_entries: {self.entries}"


class Profiler:
    """A set of regions; ``record`` is thread-safe and cheap."""

    def __init__(self) -> None:
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def record(self, name: str, elapsed_ns: int) -> None:
        with self._lock:
            region = self._regions.get(name)
            if region is None:
                region = self._regions[name] = Region(name)
            region.total_ns += elapsed_ns
            region.entries += 1

    def merge(self, regions: list[Region]) -> None:
        """Add regions measured elsewhere (e.g. on the agent)."""
        for r in regions:
            with self._lock:
                mine = self._regions.setdefault(r.name, Region(r.name))
                mine.total_ns += r.total_ns
                mine.entries += r.entries

    def regions(self) -> list[Region]:
        with self._lock:
            return [Region(r.name, r.total_ns, r.entries) for r in self._regions.values()]

    def format(self) -> str:
        return "\n".join(r.format() for r in self.regions())
