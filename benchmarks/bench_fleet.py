"""Several agents from one VACCEL_RPC_ADDRESS, and what the agent's metrics cost (issue 13).

One run starts ten real ``vaccel-agent`` processes on unix sockets (ttrpc): three with the
onnxruntime backend for the fleet, four with onnxruntime and noop that differ only in
``--metrics-address`` (two with it, two without), and three with a labelled stand-in for one
accelerator per agent (:mod:`fleet_device`). Then, side by side in the same run:

* **throughput**: N guests, each its own process with one session, classify the bundled photo
  (examples/photos/dog.jpg, the default EfficientNet-Lite0) for a fixed time through
  ``VACCEL_RPC_ADDRESS`` naming the first 1, 2 and 3 agents (``placed``: separate guests start
  at random agents), or naming one agent each, guest i agent i mod k (``pinned``: an even spread
  by hand); the cases take turns round by round. Images per second of all guests together, the
  ratio to one agent, and the images each agent served.
* **placement policy**: two guests of three threads each that open a session, run 1, 3 or 9
  calls and close it, over three agents, with ``VACCEL_RPC_PLACEMENT=least-calls`` and
  ``round-robin`` in turns: calls per second, and the busiest agent's share (fair: 1/3). Once
  classifying on the onnxruntime agents (which share this machine's CPUs), once calling noop on
  the device stand-ins (one call at a time per agent, ``--device-ms`` each, no CPU: agents that
  share nothing, as on separate hosts).
* **metrics cost**: from this process, a ttrpc ``noop`` and a ``classify`` on two agents with
  metrics on and two with them off, one call to each per round in rotating order. The cost is
  the median over rounds of the mean time on the "on" agents minus that on the "off" agents;
  beside it, the floor: the same contrast between two groups of one on and one off agent each
  (metrics cancel out: what is left is how much agent processes differ). Goals: at most 10 us
  per ttrpc noop, at most 2% per classify. The on agents' endpoints are scraped at the end:
  each Run count must equal the calls this process made there.

On a machine with few CPUs classify is CPU-bound: agents on the same CPUs cannot add images per
second (they compete for them); what several agents give there is isolation and availability.
Capacity grows with agents that have their own hardware, which the device stand-ins model.

    python benchmarks/bench_fleet.py [--guests 4] [--seconds 5] [--rounds 2] [--ort-threads N]
                                     [--quick]
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
import urllib.request
from collections import Counter
from concurrent import futures
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.fleet_device import LAUNCHER  # noqa: E402
from tests.remote.conftest import (  # noqa: E402
    AgentProcess,
    clean_env,
    make_service,
    start_agent,
)

DEFAULT_PHOTO = ROOT / "examples" / "photos" / "dog.jpg"
NOOP_GOAL_US = 10.0
CLASSIFY_GOAL = 1.02
#: Classifies per session in the policy comparison, in turns per thread.
CHURN = (1, 3, 9)
POLICIES = ("least-calls", "round-robin")
#: How the throughput guests reach k agents: all name the k agents (placement decides), or
#: guest i names agent i mod k (spread evenly by hand: what k agents can do at best).
MODES = ("placed", "pinned")
#: The agents of the metrics comparison: two with --metrics-address, two without.
PAIRS = ("off1", "on1", "off2", "on2")


# The guest (a process of its own) ----------------------------------------------------------------
def guest(args: argparse.Namespace) -> int:
    """Open sessions, say ``ready``, wait for a line on stdin, classify for ``--seconds`` and
    print one JSON line: images, seconds, images per agent."""
    from vaccel_core import Config, PluginType, Session

    image = Path(args.photo).read_bytes()
    config = Config(plugins=["rpc"], rpc_address=args.address)

    def call(session: Any) -> None:
        if args.op == "noop":
            session.noop()
        else:
            session.classify(image)

    by_agent: Counter[str] = Counter()
    lock = threading.Lock()

    def open_session() -> tuple[Any, str]:
        session = Session(PluginType.REMOTE, config=config)
        backend: Any = session.backends[0]
        return session, str(backend._remotes[session.id].address)

    kept = [open_session() for _ in range(args.threads)] if not args.churn else []
    for session, _ in kept:
        call(session)  # warm: the agent loads the model once
    print("ready", flush=True)
    sys.stdin.readline()
    deadline = time.perf_counter() + args.seconds

    def work(index: int) -> None:
        turn = index
        while time.perf_counter() < deadline:
            if kept:
                session, where = kept[index]
                runs = 1
            else:
                session, where = open_session()
                runs = CHURN[turn % len(CHURN)]
                turn += 1
            try:
                for _ in range(runs):
                    call(session)
                    with lock:
                        by_agent[where] += 1
            finally:
                if not kept:
                    session.release()

    start = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    for session, _ in kept:
        session.release()
    print(json.dumps({"images": sum(by_agent.values()), "seconds": elapsed, "by": by_agent}))
    return 0


def run_guests(
    addresses: list[str],
    args: argparse.Namespace,
    threads: int = 1,
    churn: bool = False,
    op: str = "classify",
) -> tuple[float, Counter[str]]:
    """One guest process per VACCEL_RPC_ADDRESS in ``addresses``, all at once: (calls per
    second of all, calls per agent)."""
    env = clean_env({"VACCEL_RPC_PLACEMENT": args.policy})
    cmd = [sys.executable, __file__, "--guest", "--photo", str(args.photo), "--op", op]
    cmd += ["--seconds", str(args.seconds), "--threads", str(threads)]
    cmd += ["--churn"] if churn else []
    procs = [
        subprocess.Popen(
            [*cmd, "--address", address],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for address in addresses
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit(f"a guest failed before it was ready (status {proc.wait()})")
        for proc in procs:  # all start within a few ms of each other
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=args.seconds + 120)
            if proc.returncode:
                raise SystemExit(f"a guest failed with status {proc.returncode}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    by: Counter[str] = Counter()
    for result in results:
        by.update(result["by"])
    seconds = max(r["seconds"] for r in results)
    return sum(r["images"] for r in results) / seconds, by


# Metrics cost (in this process) ------------------------------------------------------------------
def paired(calls: dict[str, Any], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each callable, one call of each per round, the order rotating
    round by round (so that call i of each is a pair measured at the same moment)."""
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return times


def contrast(times: dict[str, list[float]], plus: tuple[str, str], minus: tuple[str, str]) -> float:
    """Median over rounds of the mean time of ``plus`` minus that of ``minus`` (same round)."""
    a, b = (times[n] for n in plus)
    c, d = (times[n] for n in minus)
    return statistics.median((w + x - y - z) / 2 for w, x, y, z in zip(a, b, c, d, strict=True))


def scraped_runs(url: str) -> int:
    """``vaccel_agent_calls_total{method="Run"}`` of the endpoint at ``url``, all labels."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "vaccel_agent_calls_total" and sample.labels.get("method") == "Run"
        )
    )


def metrics_url(agent: AgentProcess) -> str:
    prefix = "Serving metrics on '"
    for _ in range(200):
        for line in list(agent.lines):
            if line.startswith(prefix):
                return line[len(prefix) : -1]
        time.sleep(0.05)
    raise SystemExit("the agent with --metrics-address never said where it serves them")


# Main --------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guests", type=int, default=4, help="guest processes (throughput)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="turns of each configuration")
    parser.add_argument("--noop-pairs", type=int, default=3000)
    parser.add_argument("--classify-pairs", type=int, default=200)
    parser.add_argument("--photo", type=Path, default=DEFAULT_PHOTO)
    parser.add_argument(
        "--device-ms", type=float, default=20.0, help="the device stand-in's time per call"
    )
    parser.add_argument(
        "--ort-threads",
        type=int,
        default=0,
        help="onnxruntime threads per agent (default: its own)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run in well under a minute")
    # the guest process's own options
    parser.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--churn", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--policy", default="least-calls", help=argparse.SUPPRESS)
    parser.add_argument("--op", default="classify", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.guests, args.seconds, args.rounds = 2, 1.0, 1
        args.noop_pairs, args.classify_pairs = 300, 10
    return args


def record_cost(pairs: int) -> dict[str, list[float]]:
    """The agent's call record (``vaccel_agent.telemetry``, kept whether or not metrics are
    served) in process, with no process noise: ``AgentService.handle`` for a noop Run, with the
    record ("on") and with a record whose call-path methods do nothing ("off"), interleaved.
    Seconds per call."""
    from vaccel_agent.telemetry import Call, Telemetry
    from vaccel_core.transport import Message, Peer

    class Untracked(Telemetry):
        def begin(self, method: str, peer_id: str, transport: str, received: int) -> Call:
            return Call(method, transport, None, received)

        def end(self, call: Call, status: str, sent: int = 0, message: str = "") -> None:
            pass

    services = {"on": make_service(), "off": make_service()}
    services["off"].telemetry = Untracked()
    peer = Peer("bench", "bench_fleet")
    runs = {}
    for name, svc in services.items():
        svc.peer_connected(peer, "unix")
        pb = svc.pb
        created = svc.handle(
            "CreateSession", Message(pb.CreateSessionRequest().SerializeToString()), peer
        )
        request = pb.OpRequest(
            session_id=pb.CreateSessionResponse.FromString(bytes(created.payload)).session_id,
            op="noop",
        )
        request.noop.SetInParent()
        message = Message(request.SerializeToString())
        runs[name] = lambda svc=svc, message=message: svc.handle("Run", message, peer)
    try:
        for run in runs.values():
            for _ in range(200):
                run()
        return paired(runs, pairs)
    finally:
        for svc in services.values():
            svc.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.guest:
        return guest(args)
    from vaccel_core import Config, Session
    from vaccel_plugins.onnxruntime import models

    models.ensure_model(models.DEFAULT_MODEL)  # built before anything is timed
    image = args.photo.read_bytes()
    with tempfile.TemporaryDirectory(prefix="vaccel-fleet-") as tmp:
        ort = ["--vaccel-config", f"ort_threads={args.ort_threads}"] if args.ort_threads else []
        onnx = {"VACCEL_PLUGINS": "onnxruntime"}
        both = {"VACCEL_PLUGINS": "onnxruntime,noop"}
        metrics = ["--metrics-address", "tcp://127.0.0.1:0"]
        device = {"VACCEL_PLUGINS": "device", "VACCEL_BENCH_DEVICE_MS": str(args.device_ms)}
        launch = [sys.executable, "-c", LAUNCHER]
        starts: list[tuple[str, dict[str, str], list[str], list[str] | None]] = [
            *((f"fleet{i}", onnx, ort, None) for i in range(3)),
            ("off1", both, ort, None),
            ("on1", both, [*ort, *metrics], None),
            ("off2", both, ort, None),
            ("on2", both, [*ort, *metrics], None),
            *((f"device{i}", device, [], launch) for i in range(3)),
        ]

        def start(name: str, env: dict[str, str], extra: list[str], cmd: Any) -> AgentProcess:
            return start_agent([f"unix://{tmp}/{name}.sock"], env=env, args=extra, command=cmd)

        with futures.ThreadPoolExecutor(len(starts)) as pool:
            started = list(pool.map(lambda s: start(*s), starts))
        agents = {name: agent for (name, *_), agent in zip(starts, started, strict=True)}
        try:
            report = measure(args, image, agents, Config, Session)
        finally:
            for agent in started:
                agent.stop()
    print_report(args, image, report)
    return 0


def measure(
    args: argparse.Namespace,
    image: bytes,
    agents: dict[str, AgentProcess],
    config_type: Any,
    session_type: Any,
) -> dict[str, Any]:
    addresses = [agents[f"fleet{i}"].addresses[0] for i in range(3)]
    cases = [(k, mode) for k in (1, 2, 3) for mode in MODES if k > 1 or mode == "placed"]
    rates: dict[tuple[int, str], list[float]] = {case: [] for case in cases}
    spread: dict[tuple[int, str], Counter[str]] = {}
    for r in range(args.rounds):
        for k, mode in cases[r % len(cases) :] + cases[: r % len(cases)]:
            if mode == "placed":  # every guest names the k agents; placement decides
                named = [",".join(addresses[:k])] * args.guests
            else:  # guest i names agent i mod k only: the guests spread evenly by hand
                named = [addresses[i % k] for i in range(args.guests)]
            rate, by = run_guests(named, args)
            rates[k, mode].append(rate)
            spread[k, mode] = by
    fleets = {
        "classify": ",".join(addresses),
        "device": ",".join(agents[f"device{i}"].addresses[0] for i in range(3)),
    }
    policy_rates: dict[tuple[str, str], list[float]] = {}
    policy_share: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for kind, fleet in fleets.items():
            for policy in POLICIES if r % 2 == 0 else POLICIES[::-1]:
                args.policy = policy
                op = "noop" if kind == "device" else "classify"
                rate, by = run_guests([fleet] * 2, args, threads=3, churn=True, op=op)
                policy_rates.setdefault((kind, policy), []).append(rate)
                share = max(by.values()) / max(1, sum(by.values()))
                policy_share.setdefault((kind, policy), []).append(share)
    args.policy = "least-calls"

    sessions = {
        name: session_type(config=config_type(plugins=["rpc"], rpc_address=agent.addresses[0]))
        for name, agent in agents.items()
        if name in PAIRS
    }
    try:
        for session in sessions.values():
            for _ in range(3):
                session.classify(image)
            for _ in range(50):
                session.noop()
        noop = paired({n: s.noop for n, s in sessions.items()}, args.noop_pairs)
        classify = paired(
            {n: (lambda s=s: s.classify(image)) for n, s in sessions.items()}, args.classify_pairs
        )
    finally:
        for session in sessions.values():
            session.release()
    made = 3 + 50 + args.noop_pairs + args.classify_pairs
    return {
        "rates": rates,
        "spread": {
            case: [by.get(a, 0) for a in addresses[: case[0]]] for case, by in spread.items()
        },
        "policy_rates": policy_rates,
        "policy_share": policy_share,
        "noop": noop,
        "classify": classify,
        "runs_expected": made,
        "runs_scraped": [scraped_runs(metrics_url(agents[n])) for n in ("on1", "on2")],
        "record": record_cost(args.noop_pairs * 10),
    }


def print_report(args: argparse.Namespace, image: bytes, report: dict[str, Any]) -> None:
    cpus = os.cpu_count()
    print(
        f"bench_fleet: {cpus} CPUs; classify {args.photo.name} ({len(image)} B); "
        f"{args.seconds:g} s per measurement, {args.rounds} rounds (medians); onnxruntime "
        f"threads per agent: {args.ort_threads or 'its default'}"
    )
    rates = report["rates"]
    base = statistics.median(rates[1, "placed"])
    print(f"\nthroughput: {args.guests} guest processes, one session each")
    print(f"{'agents':<8}{'guests':<8}{'images/s':>10}{'vs 1 agent':>12}   images per agent (last)")
    for (k, mode), got in rates.items():
        rate = statistics.median(got)
        shown = mode if k > 1 else "-"
        print(f"{k:<8}{shown:<8}{rate:>10.1f}{rate / base:>11.2f}x   {report['spread'][k, mode]}")
    print("  (placed: each guest names all k agents; pinned: guest i names agent i mod k)")
    print(
        "\nplacement policy: 2 guests x 3 threads, sessions of 1/3/9 calls each, over 3 agents:"
        f"\n  classify on the onnxruntime agents (sharing this machine's CPUs), and noop on "
        f"'device' agents (stand-in: one call at a time per agent, {args.device_ms:g} ms, no CPU;"
        f"\n  the most they serve: {3 * 1000 / args.device_ms:.0f} calls/s)"
    )
    print(f"{'agents':<10}{'policy':<14}{'calls/s':>9}{'vs least-calls':>16}{'busiest agent':>15}")
    for kind in ("classify", "device"):
        lc = statistics.median(report["policy_rates"][kind, "least-calls"])
        for policy in POLICIES:
            rate = statistics.median(report["policy_rates"][kind, policy])
            share = statistics.median(report["policy_share"][kind, policy])
            print(f"{kind:<10}{policy:<14}{rate:>9.1f}{rate / lc:>15.2f}x{share * 100:>14.1f}%")
    print("  (busiest agent: its share of the calls; fair share 33.3%)")

    print(
        "\nmetrics cost: two agents with --metrics-address (on1, on2), two without (off1, off2), "
        "unix ttrpc,\n  one call to each per round in rotating order; medians. cost: median over "
        "rounds of mean(on) - mean(off);\n  floor: the same contrast between {off2, on2} and "
        "{off1, on1}, where metrics cancel out (how much agent processes differ)"
    )
    noop, classify = report["noop"], report["classify"]
    on, off = ("on1", "on2"), ("off1", "off2")
    header = "".join(f"{n:>10}" for n in PAIRS)
    print(f"{'call':<10}{header}{'cost':>11}{'floor':>11}   goal")
    n = {name: statistics.median(t) * 1e6 for name, t in noop.items()}
    cost = contrast(noop, on, off) * 1e6
    floor = contrast(noop, ("off2", "on2"), ("off1", "on1")) * 1e6
    met = "met" if cost <= NOOP_GOAL_US else "MISSED"
    cells = "".join(f"{n[name]:>8.1f}us" for name in PAIRS)
    print(
        f"{'noop':<10}{cells}{cost:>+9.1f}us{floor:>+9.1f}us   cost <= {NOOP_GOAL_US:g} us: "
        f"{met} ({len(noop['on1'])} rounds)"
    )
    c = {name: statistics.median(t) for name, t in classify.items()}
    pairs = zip(classify["off1"], classify["off2"], strict=True)
    base = statistics.median((x + y) / 2 for x, y in pairs)
    cost = contrast(classify, on, off) / base * 100
    floor = contrast(classify, ("off2", "on2"), ("off1", "on1")) / base * 100
    met = "met" if cost <= (CLASSIFY_GOAL - 1) * 100 else "MISSED"
    cells = "".join(f"{c[name] * 1e3:>8.2f}ms" for name in PAIRS)
    print(
        f"{'classify':<10}{cells}{cost:>+10.2f}%{floor:>+10.2f}%   cost <= "
        f"{(CLASSIFY_GOAL - 1) * 100:g}%: {met} ({len(classify['on1'])} rounds)"
    )
    record = {name: statistics.median(t) * 1e6 for name, t in report["record"].items()}
    cost = record["on"] - record["off"]
    met = "met" if cost <= NOOP_GOAL_US else "MISSED"
    print(
        f"call record in process (AgentService.handle, noop Run; on with the record every "
        f"agent keeps, off with a no-op one):\n  {record['off']:.1f} us off, {record['on']:.1f} us "
        f"on: {cost:+.2f} us per call ({len(report['record']['on'])} pairs), <= "
        f"{NOOP_GOAL_US:g} us: {met}"
    )
    scraped = " and ".join(str(n) for n in report["runs_scraped"])
    print(
        f"metrics endpoints of on1 and on2: {scraped} Run calls (this process made "
        f"{report['runs_expected']} to each)"
    )


if __name__ == "__main__":
    sys.exit(main())
