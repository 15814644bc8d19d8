"""Classify latency: local onnxruntime vs remote through the agent, over unix, tcp and
virtio-mock.

One run, same photo, same model (the default EfficientNet-Lite0), same onnxruntime settings:
the agent is a real ``vaccel-agent`` process with the onnxruntime backend, listening on a unix
socket, a loopback tcp port and a virtio-mock device at once; the client classifies through
the rpc backend. Calls run in short blocks per mode (rotating order) so that drift of a shared
machine hits every mode alike. Prints medians, remote/local ratios and the overhead in percent.
Upstream vAccel claims under 5% remote overhead; our goal is under 3% over unix.

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

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PHOTO = REPO / "examples" / "photos" / "dog.jpg"


def start_agent(addresses: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, list[str]]:
    """Start ``vaccel-agent`` with the onnxruntime backend; returns it and its bound addresses."""
    cmd = [sys.executable, "-m", "agent.cli", "--plugins", "onnxruntime"]
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


def decompose(remotes: Mapping[str, str], image: bytes, calls: int
              ) -> dict[str, tuple[float, float]]:
    """Where remote time goes, call by call: with profiling on, the agent reports how long the
    operation took there; the rest of the client's time is rpc + transport. Pairing the two
    per call cancels the drift of a shared machine. Medians (ms) of agent-side time and of
    client minus agent-side time."""
    from vaccel_core import Config, Session

    def agent_ns(s: Session) -> int:
        return sum(r.total_ns for r in s.profile() if r.name == "agent:image_classify")

    out: dict[str, tuple[float, float]] = {}
    for name, address in remotes.items():
        config = Config(plugins=["rpc"], rpc_address=address, profiling=True)
        agent_ms: list[float] = []
        rest_ms: list[float] = []
        with Session(config=config) as s:
            s.classify(image)
            for _ in range(calls):
                before = agent_ns(s)
                start = time.perf_counter_ns()
                s.classify(image)
                client = time.perf_counter_ns() - start
                agent = agent_ns(s) - before
                agent_ms.append(agent / 1e6)
                rest_ms.append((client - agent) / 1e6)
        out[name] = (statistics.median(agent_ms), statistics.median(rest_ms))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", type=Path, default=DEFAULT_PHOTO)
    parser.add_argument("--iterations", type=int, default=150, help="calls per mode")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per mode first")
    parser.add_argument("--block", type=int, default=10, help="calls per mode in a row")
    parser.add_argument(
        "--profiled", type=int, default=40, help="profiled calls per remote mode (breakdown)"
    )
    args = parser.parse_args(argv)

    import numpy as np

    from vaccel_core import Config, Session
    from vaccel_plugins.onnxruntime import models

    models.ensure_model(models.DEFAULT_MODEL)  # build before timing (once per cache folder)
    image = args.photo.read_bytes()
    env = {k: v for k, v in os.environ.items() if k != "VACCEL_PLUGINS"}
    with tempfile.TemporaryDirectory(prefix="vaccel-bench-") as tmp:
        wanted = [f"unix://{tmp}/vaccel.sock", "tcp://127.0.0.1:0",
                  f"virtio-mock://{tmp}/vaccel.ctl"]
        agent, bound = start_agent(wanted, env)
        try:
            remotes = dict(zip(["unix", "tcp", "virtio-mock"], bound, strict=True))
            sessions = {"local": Session(config=Config(plugins=["onnxruntime"]))}
            for name, address in remotes.items():
                sessions[name] = Session(config=Config(plugins=["rpc"], rpc_address=address))
            try:
                tags = {name: s.classify(image)[0] for name, s in sessions.items()}
                if len(set(tags.values())) != 1:
                    raise SystemExit(f"modes disagree on the tags: {tags}")
                for s in sessions.values():
                    for _ in range(args.warmup):
                        s.classify(image)
                calls = {n: partial(s.classify, image) for n, s in sessions.items()}
                times = measure(calls, args.iterations, args.block)
                tiny = np.ones((1, 1), dtype=np.float32)
                floor = measure({n: partial(s.sgemm, tiny, tiny) for n, s in sessions.items()}, 200)
                split = decompose(remotes, image, args.profiled)
            finally:
                for s in sessions.values():
                    s.release()
        finally:
            stop_agent(agent)

    medians = {name: statistics.median(t) for name, t in times.items()}
    local = medians["local"]
    print(f"classify {args.photo.name} ({len(image)} B): {next(iter(tags.values()))}")
    print(
        f"{args.iterations} calls per mode in rotating blocks of {args.block}, "
        f"after {args.warmup} warm-up calls"
    )
    print(f"{'mode':<12}{'median ms':>11}{'vs local':>10}{'overhead':>10}{'+ms':>8}")
    for name, median in medians.items():
        ratio = median / local
        print(
            f"{name:<12}{median * 1e3:>11.2f}{ratio:>9.3f}x{(ratio - 1) * 100:>9.1f}%"
            f"{(median - local) * 1e3:>8.2f}"
        )
    floors = ", ".join(f"{n} {statistics.median(t) * 1e3:.3f} ms" for n, t in floor.items())
    print(f"per-call floor (sgemm 1x1, 200 calls, medians): {floors}")
    for name, (there, rest) in split.items():
        print(
            f"{name}, {args.profiled} profiled calls paired: agent-side classify {there:.2f} ms, "
            f"rpc + transport {rest:.2f} ms = {rest / (local * 1e3) * 100:.1f}% of local"
        )
    overhead = (medians["unix"] / local - 1) * 100
    verdict = "meets" if overhead < 3 else "misses"
    print(f"remote overhead over unix: {overhead:.1f}% ({verdict} our goal of < 3%; upstream < 5%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
