"""A socket folder the agent may not create a socket in gives one line naming the address and
the folder, from the transport and from ``vaccel-agent``: no traceback (the kernel's /proc
refuses new files even to root, so this runs the same as root or not)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vaccel_core.errors import RemoteError
from vaccel_transports.unix import bind_unix, listen_at

UNWRITABLE = Path("/proc/vaccel-test.sock")

pytestmark = pytest.mark.skipif(
    not Path("/proc/self").is_dir(), reason="needs Linux /proc as a folder no one can write"
)


def test_listen_at_an_unwritable_folder_is_one_clear_error() -> None:
    address = f"unix://{UNWRITABLE}"
    with pytest.raises(RemoteError) as info:
        listen_at(UNWRITABLE, address, 0o600, bind_unix, lambda s: s.close())
    message = str(info.value)
    assert message.startswith(f"cannot listen on {address}: cannot create a socket in /proc: ")
    assert "\n" not in message


def test_the_agent_exits_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vaccel_agent", "-a", f"unix://{UNWRITABLE}", "--plugins", "noop"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert f"cannot listen on unix://{UNWRITABLE}: cannot create a socket in /proc" in (
        result.stderr
    ), result.stderr
