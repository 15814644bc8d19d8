"""The agent as a real process, and what ``/proc`` says about it while it is attacked."""

from __future__ import annotations

import bisect
import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"^Listening on '(?P<address>[^']+)'$")
#: Soft limit on open files the agent runs with: the usual default of a service (systemd,
#: login shells), the limit attack 5 ran into. The hard limit is left as it is.
AGENT_NOFILE = 1024


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without inherited VACCEL_* settings, the repository on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VACCEL_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def _limit_files(pid: int) -> None:
    """Lower the soft RLIMIT_NOFILE of ``pid`` (just started) to :data:`AGENT_NOFILE`."""
    with contextlib.suppress(ValueError, OSError):
        _soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        want = AGENT_NOFILE if hard == resource.RLIM_INFINITY else min(AGENT_NOFILE, hard)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (want, hard))


class AgentStartError(RuntimeError):
    """The agent exited (or did not listen in time); ``log`` holds what it printed."""

    def __init__(self, message: str, log: str, returncode: int | None) -> None:
        super().__init__(message)
        self.log = log
        self.returncode = returncode


@dataclass
class Agent:
    """A running ``python -m vaccel_agent`` and everything it printed."""

    proc: subprocess.Popen[str]
    command: list[str]
    addresses: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def address(self, scheme: str) -> str:
        for address in self.addresses:
            if address.startswith(scheme + "://"):
                return address
        raise KeyError(f"the agent does not listen on {scheme}: {self.addresses}")

    def stop(self, timeout: float = 10.0) -> tuple[int | None, float]:
        """SIGTERM, then SIGKILL after ``timeout``; (exit status, seconds it took)."""
        start = time.monotonic()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._reader is not None:
            self._reader.join(5)
        return self.proc.returncode, time.monotonic() - start

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)


def start_agent(
    addresses: Sequence[str],
    args: Sequence[str] = (),
    *,
    timeout: float = 60.0,
    expect: int | None = None,
) -> Agent:
    """Start the agent (noop backend) listening on ``addresses``; wait for ``expect``
    (default: one per address) ``Listening on`` lines. Raises AgentStartError if it exits
    first or does not listen within ``timeout`` (then it is killed)."""
    cmd = [sys.executable, "-m", "vaccel_agent"]
    for address in addresses:
        cmd += ["-a", address]
    cmd += ["--plugins", "noop", *args]
    proc = subprocess.Popen(
        cmd,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        cwd=ROOT,
    )
    _limit_files(proc.pid)
    agent = Agent(proc, cmd)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            agent.lines.append(line.rstrip("\n"))

    agent._reader = threading.Thread(target=read, name="agent-log", daemon=True)
    agent._reader.start()
    want = len(addresses) if expect is None else expect
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        bound = [m["address"] for m in map(LISTENING.match, list(agent.lines)) if m]
        if len(bound) >= want:
            agent.addresses = bound
            return agent
        if proc.poll() is not None:
            agent._reader.join(5)
            raise AgentStartError(
                f"agent exited with status {proc.returncode} before listening",
                agent.log,
                proc.returncode,
            )
        time.sleep(0.02)
    agent.kill()
    raise AgentStartError(f"agent did not listen within {timeout:g} s", agent.log, None)


# /proc -------------------------------------------------------------------------------------
def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmSize (bytes) and Threads of ``pid``; {} once it is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmSize", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
                elif key == "Threads":
                    out[key] = int(value)
    except (OSError, ValueError):
        return {}
    return out


def open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (0.0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    t: float
    rss: int
    vsize: int
    threads: int
    files: int


class Sampler:
    """Samples the agent's RSS, address space, threads and open files every ``period`` s."""

    def __init__(self, pid: int, period: float = 0.02) -> None:
        self.pid = pid
        self.period = period
        self.samples: list[Sample] = []
        self._times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agent-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            st = proc_status(self.pid)
            if not st:
                return
            now = time.monotonic()
            self.samples.append(
                Sample(
                    now,
                    st.get("VmRSS", 0),
                    st.get("VmSize", 0),
                    st.get("Threads", 0),
                    open_files(self.pid),
                )
            )
            self._times.append(now)
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def window(self, start: float, end: float) -> list[Sample]:
        lo = bisect.bisect_left(self._times, start)
        hi = bisect.bisect_right(self._times, end)
        return self.samples[lo:hi]

    def now(self) -> Sample | None:
        st = proc_status(self.pid)
        if not st:
            return None
        return Sample(
            time.monotonic(),
            st.get("VmRSS", 0),
            st.get("VmSize", 0),
            st.get("Threads", 0),
            open_files(self.pid),
        )
