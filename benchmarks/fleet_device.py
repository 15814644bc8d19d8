"""LABELLED STAND-IN for one accelerator per agent, for ``bench_fleet.py``'s placement policy
comparison: the ``device`` backend's ``noop`` holds the agent's one device for
``VACCEL_BENCH_DEVICE_MS`` milliseconds (a lock and a sleep, no CPU). So an agent serves one
call at a time, as one GPU does, and agents side by side share nothing, as agents on separate
hosts do; a 2-vCPU machine cannot show that with real inference, whose agents share the CPUs.

Registered into the agent process by :data:`LAUNCHER` (not an installed plugin)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from vaccel_core import Backend, PluginType, Session, hookimpl

_DEVICE = threading.Lock()


class DeviceBackend(Backend):
    name = "device"
    type = PluginType.CPU
    description = "benchmark stand-in: one device per agent, noop holds it for a while"

    def noop(self, session: Session) -> None:
        with _DEVICE:
            time.sleep(float(os.environ.get("VACCEL_BENCH_DEVICE_MS", "20")) / 1000)


@hookimpl
def vaccel_register_backends(register: Any) -> None:
    register(DeviceBackend)


#: ``python -c LAUNCHER -a ADDRESS ...``: the agent with this backend registered.
LAUNCHER = (
    "import sys; from vaccel_core.plugins import get_registry; "
    "from benchmarks import fleet_device; "
    "get_registry().register_plugin(fleet_device, 'device'); "
    "from vaccel_agent.cli import main; sys.exit(main(sys.argv[1:]))"
)
