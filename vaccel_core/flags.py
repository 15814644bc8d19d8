"""Plugin type bit flags, with the upstream vAccel values."""

from __future__ import annotations

import enum


class PluginType(enum.IntFlag):
    """What a backend runs on or is for; a session's flags use the same bits as a hint."""

    NONE = 0
    CPU = 0x1
    GPU = 0x2
    FPGA = 0x4
    SOFTWARE = 0x8
    TENSORFLOW = 0x10
    TORCH = 0x20
    JETSON = 0x40
    GENERIC = 0x80
    DEBUG = 0x100
    REMOTE = 0x4000

    def names(self) -> list[str]:
        """The names of the bits set, in bit order (``["CPU", "GPU"]``)."""
        return [m.name for m in PluginType if m.value and m.value & self.value and m.name]


#: A session flag asking for the remote (rpc) backend, as upstream's ``VACCEL_REMOTE``.
REMOTE = PluginType.REMOTE
