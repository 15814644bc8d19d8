"""Issue 9, attack 5: the agent makes room for the connections its limits allow (1000 idle
connections once used up a soft limit of 1024 open files and locked every new client out)."""

from __future__ import annotations

import subprocess
import sys

from tests.remote.conftest import REPO

SCRIPT = """
import resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
from vaccel_agent.fdlimit import ensure_fd_room
print(ensure_fd_room(3, 128), resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)
resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))
print(ensure_fd_room(2, 1024))
"""


def test_the_soft_open_files_limit_is_raised_to_fit_the_connection_limits() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=REPO, timeout=30
    )
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    fits, soft, hard = (int(x) for x in first.split())
    wanted = 3 * 128 * 2 + 256
    assert soft == min(wanted, hard)
    assert fits == (128 if hard >= wanted else (hard - 256) // 6)
    # A hard limit too low for the limits: fewer connections, never out of descriptors.
    assert int(second) == (512 - 256) // (2 * 2)
