"""The victim client and the new-client probe, each a process of its own.

Both use the real rpc backend (``Session(PluginType.REMOTE)`` with ``VACCEL_PLUGINS=rpc`` and
``VACCEL_RPC_ADDRESS``), exactly as a guest does. They run in their own processes so that the
attacker's Python threads (which hold the benchmark's GIL) never slow the victim down: what the
victim measures is the agent.

Victim: ``python -m benchmarks.abuse.victim --address ADDR [--secret FILE]`` connects, creates a
session (and registers FILE as a resource of it, for attack 1), prints one ``READY {json}`` line
(its remote session id and peer id), then calls ``session.noop()`` every ``--interval`` seconds
and prints one line per call: ``S <start monotonic> <seconds> ok`` or ``... err <reason>``,
until its stdin closes.

Probe: ``... --probe`` connects, creates a session, makes one noop call and prints one
``PROBE {json}`` line (ok, seconds, error), as a new guest would.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _env(address: str, timeout: float) -> dict[str, str]:
    from .agentproc import clean_env

    return clean_env(
        {
            "VACCEL_PLUGINS": "rpc",
            "VACCEL_RPC_ADDRESS": address,
            "VACCEL_RPC_TIMEOUT": str(timeout),
            "VACCEL_RPC_CONNECT_TIMEOUT": str(timeout),
        }
    )


# In the child process --------------------------------------------------------------------------
def _remote_ids(session: Any) -> dict[str, Any]:
    """The victim's remote session id and peer id (what an attacker may learn: the session id
    from a guess or a log, the peer id from the agent's logs; never the capability)."""
    backend = next((b for b in session.backends if b.name == "rpc"), None)
    remote = getattr(backend, "_remotes", {}).get(session.id) if backend is not None else None
    if remote is None:
        return {}
    channel = remote.channel
    return {
        "session_id": int(remote.session_id),
        "peer_id": str(getattr(channel, "peer_id", "") or ""),
    }


def _why(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text[:160]


def run_victim(secret: str | None, interval: float) -> int:
    from vaccel_core import Resource, ResourceType, Session
    from vaccel_core.flags import PluginType

    session = Session(PluginType.REMOTE)
    info = _remote_ids(session)
    if secret:
        resource = Resource(secret, ResourceType.DATA)
        resource.register(session)
        info["resource_id"] = resource.id
    stop = threading.Event()

    def watch_stdin() -> None:
        with contextlib.suppress(Exception):
            sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    session.noop()  # warm up
    print("READY " + json.dumps(info), flush=True)
    out = sys.stdout
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            session.noop()
            line = f"S {t0:.6f} {time.monotonic() - t0:.6f} ok\n"
        except Exception as exc:
            line = f"S {t0:.6f} {time.monotonic() - t0:.6f} err {_why(exc)}\n"
        out.write(line)
        out.flush()
        if interval:
            stop.wait(interval)
    # Leave at once: releasing the session through an agent under attack could take long.
    out.flush()
    os._exit(0)


def run_probe() -> int:
    from vaccel_core import Session
    from vaccel_core.flags import PluginType

    t0 = time.monotonic()
    try:
        session = Session(PluginType.REMOTE)
        session.noop()
        result = {"ok": True, "seconds": time.monotonic() - t0}
    except Exception as exc:
        result = {"ok": False, "seconds": time.monotonic() - t0, "error": _why(exc)}
    print("PROBE " + json.dumps(result), flush=True)
    sys.stdout.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--probe", action="store_true")
    parser.add_argument("--secret")
    parser.add_argument("--interval", type=float, default=0.005)
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    os.environ.update(_env(args.address, args.timeout))
    if args.probe:
        return run_probe()
    return run_victim(args.secret, args.interval)


# In the benchmark --------------------------------------------------------------------------------
@dataclass
class Call:
    start: float
    seconds: float
    ok: bool
    error: str = ""


@dataclass
class Latency:
    """Victim calls in one window: count, errors, median and p99 (ms; errors count as the
    time they took, so a blocked victim shows up even when its calls time out)."""

    n: int
    errors: int
    median_ms: float
    p99_ms: float
    first_error: str = ""

    @classmethod
    def of(cls, calls: list[Call]) -> Latency:
        if not calls:
            return cls(0, 0, float("nan"), float("nan"))
        times = sorted(c.seconds * 1e3 for c in calls)
        p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
        errors = [c for c in calls if not c.ok]
        return cls(
            len(calls),
            len(errors),
            statistics.median(times),
            p99,
            errors[0].error if errors else "",
        )


@dataclass
class Victim:
    """The victim process, and every call it reported."""

    proc: subprocess.Popen[str]
    address: str
    info: dict[str, Any] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    def window(self, start: float, end: float) -> list[Call]:
        return [c for c in list(self.calls) if start <= c.start <= end]

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)


def start_victim(
    address: str,
    *,
    secret: str | None = None,
    interval: float = 0.005,
    timeout: float = 2.0,
    ready_timeout: float = 30.0,
) -> Victim:
    """Start the victim; returns once it is connected (READY) or raises RuntimeError."""
    cmd = [sys.executable, "-m", "benchmarks.abuse.victim", "--address", address]
    cmd += ["--interval", str(interval), "--timeout", str(timeout)]
    if secret:
        cmd += ["--secret", secret]
    proc = subprocess.Popen(
        cmd,
        env=_env(address, timeout),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        cwd=ROOT,
    )
    victim = Victim(proc, address)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("S "):
                parts = line.rstrip("\n").split(" ", 4)
                victim.calls.append(
                    Call(
                        float(parts[1]),
                        float(parts[2]),
                        parts[3] == "ok",
                        parts[4] if len(parts) > 4 else "",
                    )
                )
            elif line.startswith("READY "):
                victim.info = json.loads(line[6:])
                victim.ready.set()
            else:
                victim.lines.append(line.rstrip("\n"))

    threading.Thread(target=read, name="victim-reader", daemon=True).start()
    if not victim.ready.wait(ready_timeout):
        victim.stop()
        raise RuntimeError(
            f"the victim did not connect to {address} within {ready_timeout:g} s: "
            + " | ".join(victim.lines[-5:])
        )
    return victim


@dataclass
class ProbeResult:
    address: str
    ok: bool
    seconds: float
    error: str = ""

    def brief(self) -> str:
        scheme = self.address.partition("://")[0]
        if self.ok:
            return f"{scheme} ok {self.seconds:.2f}s"
        return f"{scheme} FAIL ({self.reason()[:90]})"

    def reason(self) -> str:
        """The error without the agent's address (what matters is after it)."""
        text = self.error.replace(self.address, "<address>")
        return text.partition(": ")[2] or text


def probe(address: str, timeout: float = 3.0, limit: float = 30.0) -> ProbeResult:
    """A brand-new client process: connect, create a session, one noop."""
    cmd = [sys.executable, "-m", "benchmarks.abuse.victim", "--probe", "--address", address]
    cmd += ["--timeout", str(timeout)]
    try:
        done = subprocess.run(
            cmd,
            env=_env(address, timeout),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            cwd=ROOT,
            timeout=limit,
        )
    except subprocess.TimeoutExpired:
        return ProbeResult(address, False, limit, f"no answer within {limit:g} s")
    for line in done.stdout.splitlines():
        if line.startswith("PROBE "):
            data = json.loads(line[6:])
            return ProbeResult(address, bool(data["ok"]), float(data["seconds"]),
                               str(data.get("error", "")))  # fmt: skip
    tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
    return ProbeResult(address, False, 0.0, f"exit {done.returncode}: {tail[0][:80]}")


if __name__ == "__main__":
    sys.exit(main())
