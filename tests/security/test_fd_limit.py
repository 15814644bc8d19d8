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
from agent.fdlimit import ensure_fd_room
print(ensure_fd_room(3, 128), resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)
"""


def test_the_soft_open_files_limit_is_raised_to_fit_the_connection_limits() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=REPO, timeout=30
    )
    assert out.returncode == 0, out.stderr
    now, soft, hard = (int(x) for x in out.stdout.split())
    wanted = 3 * 128 * 2 + 256
    assert now == soft == min(wanted, hard)
