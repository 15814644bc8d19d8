"""Dynamic batching in the agent: throughput and latency of many guests classifying at once,
batching off vs on, side by side in one run (issue 14).

Two real ``vaccel-agent`` processes with the onnxruntime backend (the default EfficientNet-Lite0)
listen on unix sockets (ttrpc): one with batching off, one with ``--batch-max-size`` and
``--batch-max-delay-us``. Guests are separate processes, each with one session on each agent
through the rpc backend, classifying the bundled photos in turn. For each number of guests the
two agents take turns (rounds alternate off/on, so drift of a shared machine hits both alike):
all guests start together, classify for a fixed time, and report each call's latency. Every
reply is checked against the tags the same guest got for the same photo from the unbatched
agent during warm-up: a wrong or another guest's answer counts as a mismatch.

Prints throughput (images/s), p50 and p99 latency per mode and the on/off ratios. Goal (issue
14), 8 guests: throughput on/off >= 1.3, p50 on/off <= 1.5.

    python benchmarks/bench_batching.py [--guests 1,4,8,16] [--seconds 4] [--rounds 2]
        [--max-size 8] [--delay-us 2000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_classify import start_agent, stop_agent  # noqa: E402

PHOTOS = ("dog.jpg", "chelsea.png", "coffee.jpg", "grace_hopper.jpg")
MODES = ("off", "on")

# The guest: one process, one session per agent, commands on stdin, one JSON line per command.
GUEST = r"""
import json, sys, time
from pathlib import Path
from vaccel_core import Config, Session

addresses = json.loads(sys.argv[1])
photos = [Path(p).read_bytes() for p in json.loads(sys.argv[2])]
index = int(sys.argv[3])
sessions = {m: Session(config=Config(plugins=["rpc"], rpc_address=a)) for m, a in addresses.items()}
expected = [sessions["off"].classify(p)[0] for p in photos]
for s in sessions.values():
    s.classify(photos[0])  # warm: connection, model
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    mode, start, seconds = line.split()
    session = sessions[mode]
    time.sleep(max(0.0, float(start) - time.time()))
    end = time.monotonic() + float(seconds)
    latencies, mismatches, k = [], 0, index
    while time.monotonic() < end:
        photo = k % len(photos)
        t0 = time.perf_counter()
        tags, _ = session.classify(photos[photo])
        latencies.append(time.perf_counter() - t0)
        mismatches += tags != expected[photo]
        k += 1
    print(json.dumps({"latencies": latencies, "mismatches": mismatches,
                      "finished": time.time()}), flush=True)
"""


class Guest:
    """One guest process (stdin commands, stdout JSON lines)."""

    def __init__(self, addresses: dict[str, str], index: int, env: dict[str, str]) -> None:
        photos = [str(REPO / "examples" / "photos" / p) for p in PHOTOS]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", GUEST, json.dumps(addresses), json.dumps(photos), str(index)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()))
        reader.daemon = True
        reader.start()
        reader.join(timeout)
        if not box or not box[0]:
            raise SystemExit(f"a guest did not answer within {timeout:g} s")
        return dict(json.loads(box[0]))

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_phase(guests: list[Guest], mode: str, seconds: float) -> dict[str, Any]:
    """All ``guests`` classify through agent ``mode`` for ``seconds``; pooled figures."""
    start = time.time() + 0.3
    for guest in guests:
        guest.send(f"{mode} {start} {seconds}")
    results = [guest.receive(seconds + 60) for guest in guests]
    latencies = [x for r in results for x in r["latencies"]]
    wall = max(r["finished"] for r in results) - start
    return {
        "calls": len(latencies),
        "throughput": len(latencies) / wall,
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
        "mismatches": sum(r["mismatches"] for r in results),
    }


def inference_only(seconds: float, rounds: int, threads: int = 8) -> dict[str, float]:
    """The model alone in this process (the agent's onnxruntime settings, preprocessed
    photos): images/s of one call at a time, of ``threads`` concurrent single-image calls
    (what the agent does with batching off) and of batches of ``threads`` one at a time (with
    batching on); medians of ``rounds`` turns."""
    import numpy as np

    from vaccel_plugins.onnxruntime import imagenet, inference, models

    model = inference.create_session(
        "bench", models.ensure_model(models.DEFAULT_MODEL), inference.read_settings({}), "bench"
    )
    name = model.inputs[0].name
    singles = [imagenet.preprocess((REPO / "examples" / "photos" / p).read_bytes()) for p in PHOTOS]
    batch = np.concatenate([singles[i % len(singles)] for i in range(threads)])
    model.run("bench", {name: batch})

    def loop(inputs: list[np.ndarray], counts: list[int], k: int, end: float) -> None:
        while time.monotonic() < end:
            x = inputs[counts[k] % len(inputs)]
            model.run("bench", {name: x})
            counts[k] += len(x)

    def rate(workers: int, inputs: list[np.ndarray]) -> float:
        counts = [0] * workers
        end = time.monotonic() + seconds
        pool = [
            threading.Thread(target=loop, args=(inputs, counts, k, end)) for k in range(workers)
        ]
        start = time.monotonic()
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        return sum(counts) / (time.monotonic() - start)

    modes = {
        "1 call at a time": lambda: rate(1, singles),
        f"{threads} concurrent calls": lambda: rate(threads, singles),
        f"batches of {threads}": lambda: rate(1, [batch]),
    }
    got: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(rounds):
        for mode, run in modes.items():
            got[mode].append(run())
    return {mode: statistics.median(values) for mode, values in got.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", default="1,4,8,16", help="guest counts (comma list)")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=2, help="phases per mode and count")
    parser.add_argument("--max-size", type=int, default=8, help="--batch-max-size of 'on'")
    parser.add_argument("--delay-us", type=int, default=2000, help="--batch-max-delay-us")
    parser.add_argument(
        "--quick", action="store_true", help="1 and 2 guests, 1 s, 1 round (a smoke test)"
    )
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.guests.split(",")]
    seconds, rounds = args.seconds, args.rounds
    if args.quick:
        counts, seconds, rounds = [1, 2], 1.0, 1
    env = dict(os.environ)
    for var in ("VACCEL_BATCH_MAX_SIZE", "VACCEL_BATCH_MAX_DELAY_US", "VACCEL_BATCH_CONFIG"):
        env.pop(var, None)
    env.setdefault("VACCEL_LOG_LEVEL", "1")
    folder = Path(tempfile.mkdtemp(prefix="vaccel-bench-batching-"))
    batching = {
        "off": {},
        "on": {
            "VACCEL_BATCH_MAX_SIZE": str(args.max_size),
            "VACCEL_BATCH_MAX_DELAY_US": str(args.delay_us),
        },
    }
    agents: dict[str, subprocess.Popen[str]] = {}
    addresses: dict[str, str] = {}
    guests: list[Guest] = []
    try:
        for mode in MODES:  # the agent reads the same settings as its flags from these
            proc, bound = start_agent([f"unix://{folder}/{mode}.sock"], {**env, **batching[mode]})
            agents[mode], addresses[mode] = proc, bound[0]
        guest_env = {**env, "VACCEL_PLUGINS": "rpc"}
        guests = [Guest(addresses, i, guest_env) for i in range(max(counts))]
        for guest in guests:
            guest.receive(120)
        print(
            f"bench_batching: {len(PHOTOS)} bundled photos, EfficientNet-Lite0 on onnxruntime, "
            f"unix/ttrpc; 'on' = batch max size {args.max_size}, max delay "
            f"{args.delay_us} us; {seconds:g} s x {rounds} round(s) per mode, medians of rounds"
        )
        print("inference only, in this process (images/s): ", end="")
        only = inference_only(min(seconds, 1.5), max(rounds, 2) if not args.quick else 1)
        print(", ".join(f"{mode} {rate:.1f}" for mode, rate in only.items()), flush=True)
        header = (
            f"{'guests':>6} {'mode':>4} {'images/s':>9} {'p50 ms':>8} {'p99 ms':>8}  "
            f"{'x thr':>6} {'x p50':>6} {'x p99':>6}  mismatches"
        )
        print(header)
        summary: dict[int, dict[str, dict[str, float]]] = {}
        for count in counts:
            phases: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
            for r in range(rounds):
                order = MODES if r % 2 == 0 else MODES[::-1]
                for mode in order:
                    phases[mode].append(run_phase(guests[:count], mode, seconds))
            row: dict[str, dict[str, float]] = {}
            for mode in MODES:
                got = phases[mode]
                row[mode] = {
                    k: statistics.median(p[k] for p in got) for k in ("throughput", "p50", "p99")
                }
                row[mode]["mismatches"] = sum(p["mismatches"] for p in got)
            summary[count] = row
            off, on = row["off"], row["on"]
            for mode in MODES:
                m = row[mode]
                ratios = (
                    f"{on['throughput'] / off['throughput']:6.2f} {on['p50'] / off['p50']:6.2f} "
                    f"{on['p99'] / off['p99']:6.2f}"
                    if mode == "on"
                    else " " * 20
                )
                print(
                    f"{count:>6} {mode:>4} {m['throughput']:9.1f} {m['p50'] * 1e3:8.1f} "
                    f"{m['p99'] * 1e3:8.1f}  {ratios}  {int(m['mismatches'])}",
                    flush=True,
                )
        bad = sum(int(row[m]["mismatches"]) for row in summary.values() for m in MODES)
        if 8 in summary:
            off, on = summary[8]["off"], summary[8]["on"]
            thr, p50 = on["throughput"] / off["throughput"], on["p50"] / off["p50"]
            verdict = "met" if thr >= 1.3 and p50 <= 1.5 else "MISSED"
            print(
                f"goal (8 guests: throughput >= 1.3x, p50 <= 1.5x): {verdict} "
                f"(throughput {thr:.2f}x, p50 {p50:.2f}x)"
            )
        print(f"replies checked: {bad} mismatch(es)")
        return 1 if bad else 0
    finally:
        for guest in guests:
            guest.stop()
        for proc in agents.values():
            stop_agent(proc)


if __name__ == "__main__":
    sys.exit(main())
