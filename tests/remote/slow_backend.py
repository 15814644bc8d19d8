"""A test backend whose noop takes ``VACCEL_TEST_SLOW_SECONDS`` (for stop-while-busy tests) and
whose classify fails (for errors that cross the wire); it implements nothing else.

Registered into the agent process by :data:`LAUNCHER` (not an installed plugin)."""

from __future__ import annotations

import os
import time
from typing import Any

from vaccel_core import Backend, PluginType, Session, hookimpl


class SlowBackend(Backend):
    name = "slow"
    type = PluginType.CPU
    description = "test backend: noop sleeps"

    def noop(self, session: Session) -> None:
        time.sleep(float(os.environ.get("VACCEL_TEST_SLOW_SECONDS", "20")))

    def classify(self, session: Session, image: bytes) -> tuple[str, str]:
        raise RuntimeError(f"cannot classify {len(image)} bytes here")


@hookimpl
def vaccel_register_backends(register: Any) -> None:
    register(SlowBackend)


#: ``python -c LAUNCHER -a ADDRESS ...``: the agent with this backend registered.
LAUNCHER = (
    "import sys; from vaccel_core.plugins import get_registry; "
    "from tests.remote import slow_backend; "
    "get_registry().register_plugin(slow_backend, 'slow'); "
    "from vaccel_agent.cli import main; sys.exit(main(sys.argv[1:]))"
)
