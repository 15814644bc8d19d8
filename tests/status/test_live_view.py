"""The live view of ``vaccel status``: a real agent with a guest calling noop, the command in a
pseudo-terminal (and piped) for a few refreshes, then SIGINT; and the rendering itself at a wide
and a narrow width."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.remote.conftest import AgentProcess, RawClient, clean_env
from vaccel_plugins.rpc.status_data import call_rates
from vaccel_plugins.rpc.status_view import render

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def busy_guest(agent: AgentProcess) -> Iterator[None]:
    """A guest calling noop in a loop (about 200 a second) while the test runs."""
    guest = RawClient(agent.address)
    session = guest.create_session()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            guest.noop(session)
            time.sleep(0.005)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(10)
    guest.close()


def _command(agent: AgentProcess, token: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vaccel_core.cli",
        "status",
        "--interval",
        "0.3",
        "--admin-token-file",
        str(token),
        agent.address,
    ]


def _read_until(fd: int, done: Any, timeout: float) -> str:
    """Read ``fd`` until ``done(text)`` or ``timeout``; returns what was read (ANSI removed)."""
    raw = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done(ANSI.sub("", raw.decode(errors="replace"))):
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the pty closed: the process is gone
                break
            if not chunk:
                break
            raw += chunk
    return ANSI.sub("", raw.decode(errors="replace"))


NOOP_RATE = re.compile(r"│ Run\s+│ noop\s+│ noop\s+│\s+([0-9.]+)/s")


def _noop_rates(text: str) -> list[float]:
    return [float(m) for m in NOOP_RATE.findall(text)]


@pytest.mark.usefixtures("busy_guest")
def test_live_view_in_a_terminal_refreshes_then_exits_0_on_ctrl_c(
    agent: AgentProcess, admin_token_file: Path
) -> None:
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 140, 0, 0))
    env = clean_env({"TERM": "xterm-256color"})
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    proc = subprocess.Popen(
        _command(agent, admin_token_file), stdin=follower, stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    try:
        # The first frame has no rate yet; each refresh after it has one.
        text = _read_until(leader, lambda t: len(_noop_rates(t)) >= 2, 30)
        proc.send_signal(signal.SIGINT)
        status = proc.wait(10)
        text += _read_until(leader, lambda t: False, 1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(leader)
    assert status == 0, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    rates = _noop_rates(text)
    assert len(rates) >= 2, text
    assert rates[-1] > 0, "the guest calls noop all the time"
    assert "view: operator (every client)" in text
    assert "(you)" in text, "its own connection is in the clients table"


@pytest.mark.usefixtures("busy_guest")
def test_live_view_piped_prints_frame_after_frame_as_lists(
    agent: AgentProcess, admin_token_file: Path
) -> None:
    proc = subprocess.Popen(
        _command(agent, admin_token_file),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env({"COLUMNS": "80"}),
    )
    assert proc.stdout is not None
    try:
        text = _read_until(proc.stdout.fileno(), lambda t: t.count("uptime:") >= 3, 30)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    text += out.decode()
    assert proc.returncode == 0, err
    assert "Traceback" not in err.decode()
    assert "\x1b[" not in text, "no cursor movement or colour when piped"
    rows = re.findall(r"^- Run: operation noop, backend noop, calls/s ([0-9.]+)/s, .*$", text, re.M)
    assert len(rows) >= 2, text
    assert float(rows[-1]) > 0


def _snapshot(description: str) -> dict[str, Any]:
    return {
        "address": "unix:///run/vaccel/agent.sock",
        "view": "operator",
        "version": "9.9.9",
        "uptime_seconds": 3725.0,
        "backends": ["onnxruntime", "noop"],
        "sessions": 3,
        "resources": 2,
        "blobs": 1,
        "blob_bytes": 5 << 20,
        "clients_connected": 1,
        "calls_in_flight": 1,
        "blob_uploads": 1,
        "blob_hits": 0,
        "sessions_released": 0,
        "session_ttl_seconds": 0.0,
        "bucket_bounds_seconds": [0.001, 0.01],
        "calls": [
            {
                "method": "Run",
                "operation": "image_classify",
                "backend": "onnxruntime",
                "calls": 12,
                "errors": 1,
                "seconds": 0.1,
                "buckets": [0, 12, 0],
            }
        ],
        "clients": [
            {
                "id": "client-0123456789ab",
                "description": description,
                "transport": "vsock",
                "sessions": 3,
                "calls": 13,
                "errors": 1,
                "in_flight": 1,
                "connected_at": time.time(),
                "caller": False,
            }
        ],
        "rejections": {"max_sessions": 2},
    }


@pytest.mark.parametrize(
    "width, description",
    [
        (140, "vsock peer cid 42 port 1234"),
        (60, "vsock peer cid 42 port 1234 via /run/kata/sandbox-0123456789abcdef/hv.sock_2048"),
    ],
)
def test_render_shows_every_value_whole_wide_or_narrow(width: int, description: str) -> None:
    from rich.console import Console

    snap = _snapshot(description)
    console = Console(width=width, record=True, color_system=None)
    console.print(render(snap, call_rates(None, snap), width), soft_wrap=width < 100)
    text = console.export_text()
    flat = " ".join(text.split())
    for value in (
        "9.9.9",
        "1h02m05s",
        "onnxruntime, noop",
        "3 sessions, 2 resources, 1 blobs (5.0 MiB), 1 clients",
        "image_classify",
        "client-0123456789ab",
        "max_sessions 2",
        "5.5 ms",  # p50 of 12 calls in (1 ms, 10 ms]
    ):
        assert value in flat, (value, text)
    assert description in text, "never cut, never folded"
    if width < 100:
        assert "┃" not in text, "a list, not tables, below 100 columns"
        assert max(len(line) for line in text.splitlines()) > width, "one entry, one line"
    else:
        assert "┃" in text, "tables on a wide terminal"
        assert max(len(line) for line in text.splitlines()) <= width


def _recovered(text: str) -> bool:
    """Whether a whole frame without the error came after one with it (piped frames end with
    a blank line)."""
    frames = text.split("\n\n")[:-1]
    failed = [i for i, frame in enumerate(frames) if "unreachable: " in frame]
    return bool(failed) and any(
        "uptime:" in frame and "unreachable: " not in frame for frame in frames[failed[0] + 1 :]
    )


def test_live_view_goes_on_through_an_agent_restart(agent: AgentProcess, tmp_path: Path) -> None:
    """The agent goes away mid-view: the view says so and keeps polling; an agent at the same
    address is shown again."""
    from tests.remote.conftest import start_agent

    proc = subprocess.Popen(
        [sys.executable, "-m", "vaccel_core.cli", "status", "--interval", "0.2", agent.address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env({"COLUMNS": "80"}),
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    again: AgentProcess | None = None
    try:
        seen = _read_until(fd, lambda t: "uptime:" in t, 30)
        agent.stop()
        seen += _read_until(fd, lambda t: "unreachable: " in t, 30)
        assert proc.poll() is None, "the view goes on while the agent is away"
        again = start_agent([agent.addresses[0]])
        text = seen + _read_until(fd, lambda t: _recovered(seen + t), 30)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if again is not None:
            again.stop()
    assert proc.returncode == 0, err
    assert f"unreachable: cannot reach the vAccel agent at {agent.address}" in seen, seen
    assert _recovered(text), text


@pytest.mark.parametrize("width", [140, 60])
def test_control_characters_from_the_agent_never_reach_the_terminal(width: int) -> None:
    """Whatever answers at the address (a compromised agent, another program) cannot move the
    cursor, clear the screen or retitle the operator's terminal through the names it sends."""
    from rich.console import Console

    snap = _snapshot("peer\x1b[2J\x1b]0;owned\x07")
    snap["calls"][0]["backend"] = "onnx\x1b[31m"
    snap["version"] = "1.0\r\x9b"
    console = Console(width=width, record=True, force_terminal=True, color_system=None)
    console.print(render(snap, call_rates(None, snap), width, error="gone\x1b[H"))
    text = console.export_text()
    assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text and "\r" not in text
    flat = "".join(text.split())
    for shown in (
        "peer\\x1b[2J\\x1b]0;owned\\x07",
        "onnx\\x1b[31m",
        "1.0\\x0d\\x9b",
        "gone\\x1b[H",
    ):
        assert shown in flat, (shown, text)
