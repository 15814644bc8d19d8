"""Classify latency: local onnxruntime vs remote through the agent, over ttrpc and gRPC on
unix, the vsock path, tcp and virtio-mock.

One run, same photo, same model (the default EfficientNet-Lite0), same onnxruntime settings:
the agent is a real ``vaccel-agent`` process with the onnxruntime backend, listening at once
on a unix socket (ttrpc and gRPC on one socket), a gRPC-only unix socket (``grpc+unix://``),
the hybrid-vsock socket ``<uds_path>_2048`` (what a Firecracker / Cloud Hypervisor /
Dragonball guest's ``vsock://2:2048`` reaches; here this process stands in for the guest and
dials that unix socket instead of AF_VSOCK), a loopback tcp port and a virtio-mock device. The
client classifies through the rpc backend, in these modes:

* ``unix ttrpc``: ``unix://`` (ttrpc, the default);
* ``vsock ttrpc``: ``vsock://2:2048`` (ttrpc straight on the vsock stream);
* ``grpc+unix relay``: ``grpc+unix://`` to the agent's dual socket (relayed to its gRPC
  server); ``grpc+unix direct``: ``grpc+unix://`` to the gRPC-only listener;
* ``tcp grpc``: ``tcp://`` (gRPC);
* ``virtio-mock``.

Calls run in short blocks per mode (rotating order) so that drift of a shared machine hits
every mode alike. Prints medians, remote/local ratios and the overhead in percent; then, since
medians of whole classifies are noisy on a shared machine, the paired per-call figure: with
profiling on, the agent reports how long the classify took there, and the rest of each call's
client time is "rpc + transport". Goal (issue 10): rpc + transport at most 1% of a local
classify over ttrpc on unix and on the vsock path, judged per call against the agent-side
classify of the same call (itself a local classify, run at the same moment); the share of
local's median is printed too. Upstream vAccel claims under 5%.

    python benchmarks/bench_classify.py [--iterations 150] [--photo examples/photos/dog.jpg]
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PHOTO = REPO / "examples" / "photos" / "dog.jpg"


def start_agent(addresses: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, list[str]]:
    """Start ``vaccel-agent`` with the onnxruntime backend; returns it and its bound addresses."""
    cmd = [sys.executable, "-m", "vaccel_agent.cli", "--plugins", "onnxruntime"]
    for address in addresses:
        cmd += ["-a", address]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    bound: list[str] = []
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while len(bound) < len(addresses):
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        if line is None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("the agent did not start listening:\n" + "".join(seen))
        seen.append(line)
        if line.startswith("Listening on '"):
            bound.append(line.strip().removeprefix("Listening on '").rstrip("'"))
    return proc, bound


def stop_agent(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def measure(
    calls: Mapping[str, Callable[[], object]], iterations: int, block: int = 10
) -> dict[str, list[float]]:
    """Run the modes in blocks of ``block`` calls, rotating their order every round, so that
    drift of a shared machine hits every mode alike while one mode's idle onnxruntime threads
    (which spin for a while after each run) rarely overlap another mode's calls. Seconds per
    call."""
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    rounds = -(-iterations // block)
    for i in range(rounds):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            for _ in range(min(block, iterations - i * block)):
                start = time.perf_counter()
                calls[name]()
                times[name].append(time.perf_counter() - start)
    return times


def decompose(
    remotes: Mapping[str, str], image: bytes, calls: int, block: int = 10
) -> dict[str, tuple[float, float, float]]:
    """Where remote time goes, call by call: with profiling on, the agent reports how long the
    operation took there; the rest of the client's time is rpc + transport. Pairing the two
    per call cancels the drift of a shared machine; the modes take turns in blocks of
    ``block`` calls (rotating order), as in :func:`measure`. Medians of agent-side time (ms),
    of client minus agent-side time (ms) and of their ratio per call (rpc + transport / the
    same call's agent-side classify)."""
    from vaccel_core import Config, Session

    def agent_ns(s: Session) -> int:
        return sum(r.total_ns for r in s.profile() if r.name == "agent:image_classify")

    sessions = {
        name: Session(config=Config(plugins=["rpc"], rpc_address=address, profiling=True))
        for name, address in remotes.items()
    }
    agent_ms: dict[str, list[float]] = {name: [] for name in remotes}
    rest_ms: dict[str, list[float]] = {name: [] for name in remotes}
    share: dict[str, list[float]] = {name: [] for name in remotes}

    def paired(name: str) -> None:
        s = sessions[name]
        before = agent_ns(s)
        start = time.perf_counter_ns()
        s.classify(image)
        client = time.perf_counter_ns() - start
        agent = agent_ns(s) - before
        agent_ms[name].append(agent / 1e6)
        rest_ms[name].append((client - agent) / 1e6)
        share[name].append((client - agent) / max(agent, 1))

    try:
        for s in sessions.values():
            s.classify(image)
        measure({name: partial(paired, name) for name in remotes}, calls, block)
    finally:
        for s in sessions.values():
            s.release()
    return {
        name: (
            statistics.median(agent_ms[name]),
            statistics.median(rest_ms[name]),
            statistics.median(share[name]),
        )
        for name in remotes
    }


def hybrid_vsock_stand_in(uds: str) -> None:
    """Make this process's ``vsock://2:PORT`` dial the host unix socket ``<uds>_PORT``, as a
    hybrid-vsock VMM turns a guest's vsock connection into one (no VM here)."""
    import socket

    from vaccel_transports.vsock import VsockTransport, hybrid_vsock_path

    def open_stream(self: object, target: Any, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        sock.connect(hybrid_vsock_path(uds, target.port))
        sock.settimeout(None)
        return sock

    VsockTransport.open_stream = open_stream  # type: ignore[method-assign]


#: The issue 10 goal: rpc + transport at most this share of a local classify.
GOAL_PERCENT = 1.0
#: The modes the goal applies to.
GOAL_MODES = ("unix ttrpc", "vsock ttrpc")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", type=Path, default=DEFAULT_PHOTO)
    parser.add_argument("--iterations", type=int, default=150, help="calls per mode")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per mode first")
    parser.add_argument("--block", type=int, default=10, help="calls per mode in a row")
    parser.add_argument(
        "--profiled", type=int, default=40, help="profiled calls per remote mode (breakdown)"
    )
    parser.add_argument("--floor-calls", type=int, default=200, help="1x1 sgemm calls per mode")
    args = parser.parse_args(argv)

    import numpy as np

    from vaccel_core import Config, Session
    from vaccel_plugins.onnxruntime import models
    from vaccel_transports.vsock import hybrid_agent_address

    models.ensure_model(models.DEFAULT_MODEL)  # build before timing (once per cache folder)
    image = args.photo.read_bytes()
    env = {k: v for k, v in os.environ.items() if k != "VACCEL_PLUGINS"}
    with tempfile.TemporaryDirectory(prefix="vaccel-bench-") as tmp:
        uds = f"{tmp}/kata.hvsock"
        hybrid_vsock_stand_in(uds)
        wanted = [
            f"unix://{tmp}/vaccel.sock",
            f"grpc+unix://{tmp}/grpc.sock",
            hybrid_agent_address(uds, 2048),
            "tcp://127.0.0.1:0",
            f"virtio-mock://{tmp}/vaccel.ctl",
        ]
        agent, bound = start_agent(wanted, env)
        try:
            tcp = next(a for a in bound if a.startswith("tcp://"))
            remotes = {
                "unix ttrpc": f"unix://{tmp}/vaccel.sock",
                "vsock ttrpc": "vsock://2:2048",
                "grpc+unix relay": f"grpc+unix://{tmp}/vaccel.sock",
                "grpc+unix direct": f"grpc+unix://{tmp}/grpc.sock",
                "tcp grpc": tcp,
                "virtio-mock": f"virtio-mock://{tmp}/vaccel.ctl",
            }
            sessions = {"local": Session(config=Config(plugins=["onnxruntime"]))}
            for name, address in remotes.items():
                sessions[name] = Session(config=Config(plugins=["rpc"], rpc_address=address))
            try:
                tags = {name: s.classify(image)[0] for name, s in sessions.items()}
                if len(set(tags.values())) != 1:
                    raise SystemExit(f"modes disagree on the tags: {tags}")
                # The rpc backend is one per process: its channels are keyed by address.
                channels = getattr(sessions["unix ttrpc"].backends[0], "_channels", {})
                wires = {n: type(channels.get(a)).__name__ for n, a in remotes.items()}
                for s in sessions.values():
                    for _ in range(args.warmup):
                        s.classify(image)
                calls = {n: partial(s.classify, image) for n, s in sessions.items()}
                times = measure(calls, args.iterations, args.block)
                tiny = np.ones((1, 1), dtype=np.float32)
                floor = measure(
                    {n: partial(s.sgemm, tiny, tiny) for n, s in sessions.items()},
                    args.floor_calls,
                )
            finally:
                for s in sessions.values():
                    s.release()
            split = decompose(remotes, image, args.profiled, args.block)
        finally:
            stop_agent(agent)

    medians = {name: statistics.median(t) for name, t in times.items()}
    local = medians["local"]
    print(f"classify {args.photo.name} ({len(image)} B): {next(iter(tags.values()))}")
    print(
        f"{args.iterations} calls per mode in rotating blocks of {args.block}, "
        f"after {args.warmup} warm-up calls"
    )
    print("channels: " + ", ".join(f"{n} {w}" for n, w in wires.items()))
    print(f"{'mode':<18}{'median ms':>11}{'vs local':>10}{'overhead':>10}{'+ms':>8}")
    for name, median in medians.items():
        ratio = median / local
        print(
            f"{name:<18}{median * 1e3:>11.2f}{ratio:>9.3f}x{(ratio - 1) * 100:>9.1f}%"
            f"{(median - local) * 1e3:>8.2f}"
        )
    floors = ", ".join(f"{n} {statistics.median(t) * 1e3:.3f} ms" for n, t in floor.items())
    print(f"per-call floor (sgemm 1x1, {args.floor_calls} calls, medians): {floors}")
    print(
        f"paired per call ({args.profiled} profiled calls per mode, in rotating blocks of "
        f"{args.block}):"
    )
    for name, (there, rest, per_call) in split.items():
        print(
            f"  {name:<18} agent-side classify {there:6.2f} ms, rpc + transport {rest:6.3f} ms"
            f" = {rest / (local * 1e3) * 100:5.2f}% of local's median, "
            f"{per_call * 100:5.2f}% of the same call's agent-side classify"
        )
    for name in GOAL_MODES:
        paired = split[name][2] * 100
        of_local = split[name][1] / (local * 1e3) * 100
        whole = (medians[name] / local - 1) * 100
        verdict = (
            "met"
            if paired <= GOAL_PERCENT
            else f"MISSED by {paired - GOAL_PERCENT:.2f} points ({paired / GOAL_PERCENT:.1f}x)"
        )
        print(
            f"goal (issue 10) {name} remote overhead <= {GOAL_PERCENT:g}%: {verdict} (paired per "
            f"call {paired:.2f}%; rpc + transport / local's median {of_local:.2f}%; medians of "
            f"whole classifies {whole:+.1f}%)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
