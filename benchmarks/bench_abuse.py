"""Abuse benchmark (issue 9, "The agent is a trust boundary"): every attack of the issue against
a real agent, with a victim client measured side by side.

For each attack the benchmark starts a fresh agent process (``python -m vaccel_agent`` with
``--plugins noop``, listening on ``unix://``, ``tcp://127.0.0.1:0`` and ``virtio-mock://`` at
once, soft RLIMIT_NOFILE 1024 as a service usually gets), then a **victim**: a client process
of its own using the real rpc backend (``Session(PluginType.REMOTE)``, ``VACCEL_PLUGINS=rpc``,
``VACCEL_RPC_ADDRESS`` on the listener the attack targets), connected *before* the attack and
calling ``session.noop()`` every 5 ms the whole time. It measures the victim unattacked
(``--baseline`` seconds), then runs the attack (attacker threads in this process: raw HTTP/2
with the ``h2`` package for attacks 3-6, plain gRPC and the transport's own channel for the
others, a raw virtio-mock guest for 14) and, while the attack holds its state, starts a **new
client** process (connect, create a session, one noop). It samples the agent's RSS, threads and
open files from ``/proc/PID/status`` every 20 ms. Attacks 12 and 13 are checks (kill -9 and
restart; configuration), not latencies: they start agents of their own.

One row per attack:

* victim median and p99 noop latency unattacked -> during the attack (ratio of medians);
  failed victim calls count with the time they took (2 s timeout) and are listed;
* whether the new client could connect and make a call during the attack;
* agent RSS peak during the attack vs the budget;
* ``attack``: whether the attack still succeeds (the attacker got what it wanted: another
  client's bytes or session, more streams/connections/threads/memory than the limits allow,
  its input echoed, a host path, leftovers...), with what the attacker got back in the details;
* ``goal``: PASS when the victim's median stays within 2x of unattacked, no victim call fails,
  the new client gets in, the agent's RSS stays within its budget and the agent is alive
  afterwards; for the checks, PASS when the check finds nothing.

RSS budget: the agent's RSS unattacked (with the victim connected) plus its
``--max-inflight-bytes`` (default 1 GiB: the request and reply bytes of all calls being served
together, the one limit in ``agent/limits.py`` that bounds the agent's working memory as a
whole; connection buffers, stashed virtio-mock replies and files read for a reply are all
memory some client made it hold, so they must fit in it too). ``--rss-budget SIZE`` sets an
absolute budget instead. Limits given with ``--agent-arg`` (``--agent-arg=--max-inflight-bytes
=512M``) are passed to the agent and used for the budget and the attacks' sizes.

Nothing can hang: every attacker step has a timeout, an attack that runs past
``--attack-timeout`` is abandoned (the agent is killed, which ends its sockets), and every agent,
victim and probe process is stopped at the end. Usage::

    python benchmarks/bench_abuse.py [--attack 3,5,14c] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.abuse.agentproc import Agent, AgentStartError, Sampler, start_agent  # noqa: E402
from benchmarks.abuse.attacks import Ctx, Outcome, Spec, select_specs  # noqa: E402
from benchmarks.abuse.victim import Latency, ProbeResult, probe, start_victim  # noqa: E402

GOAL_RATIO = 2.0


def agent_limits(agent_args: list[str]) -> Any:
    """The limits the agent runs with: defaults, overridden by limit flags in ``agent_args``."""
    from vaccel_agent import limits as agent_limits_module
    from vaccel_agent.cli import build_parser

    args, _unknown = build_parser().parse_known_args(agent_args)
    return agent_limits_module.Limits().with_values(agent_limits_module.from_arguments(args))


@dataclass
class Row:
    id: str
    title: str
    check: bool
    outcome: Outcome | None = None
    base: Latency | None = None
    during: Latency | None = None
    probes: list[ProbeResult] = field(default_factory=list)
    rss_before: int = 0
    rss_peak: int = 0
    budget: int = 0
    alive: bool = True
    error: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ratio(self) -> float:
        if not self.base or not self.during or not self.base.n or not self.during.n:
            return float("nan")
        return self.during.median_ms / self.base.median_ms

    def failures(self) -> list[str]:
        """Why the goal is not met (empty: PASS)."""
        if self.error:
            return ["not measured"]
        if self.check:
            if self.outcome is None or self.outcome.succeeded is None:
                return ["inconclusive"]
            return ["found"] if self.outcome.succeeded else []
        why = []
        if not self.during or not self.during.n:
            why.append("victim made no call")
        elif not self.ratio <= GOAL_RATIO:
            why.append(f"latency {self.ratio:.1f}x")
        if self.during and self.during.errors:
            why.append("victim errors")
        if not self.probes:
            why.append("no new-client probe")
        elif not all(p.ok for p in self.probes):
            why.append("new client refused")
        if self.rss_peak > self.budget:
            why.append("RSS over budget")
        if not self.alive:
            why.append("agent died")
        return why

    @property
    def verdict(self) -> str:
        return "PASS" if not self.failures() else "FAIL"

    def denied(self) -> list[str]:
        """The service the attack denied others: a failed victim call, a new client refused,
        the agent gone."""
        if self.check or self.error:
            return []
        out = []
        if self.during and self.during.errors:
            out.append("victim calls failed")
        if self.probes and not all(p.ok for p in self.probes):
            out.append("new client refused")
        if not self.alive:
            out.append("agent died")
        return out

    @property
    def attack_state(self) -> str:
        """SUCCEEDS when the attacker got what it wanted, or denied others service."""
        if self.denied():
            return "SUCCEEDS"
        if self.outcome is None or self.outcome.succeeded is None:
            return "?"
        return "SUCCEEDS" if self.outcome.succeeded else "refused"


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def scrub(text: str, tmp: Path | None = None) -> str:
    """``text`` without this machine's temporary paths (the agents' sockets and folders)."""
    if tmp is not None:
        text = text.replace(str(tmp), "<tmp>")
    pattern = re.escape(tempfile.gettempdir().rstrip("/")) + r"/bench-abuse-[^/\s'\"]+"
    return re.sub(pattern, "<tmp>", text)


def run_attack(spec: Spec, opts: argparse.Namespace, limits: Any) -> Row:
    row = Row(spec.id, spec.title, spec.victim is None)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="bench-abuse-"))
    agent: Agent | None = None
    sampler: Sampler | None = None
    victim = None
    try:
        ctx = Ctx(None, limits, tmp, opts.quick, opts.hold, list(opts.agent_arg))
        if spec.victim is None:
            row.outcome = _run_with_timeout(spec, ctx, opts.attack_timeout, None)
            return row
        addresses = [f"unix://{tmp}/agent.sock", "tcp://127.0.0.1:0", f"virtio-mock://{tmp}/a.ctl"]
        args = ["--log-level", "2", "--blob-dir", str(tmp / "blobs"), *opts.agent_arg]
        agent = start_agent(addresses, args)
        sampler = Sampler(agent.pid)
        ctx.agent, ctx.sampler = agent, sampler
        secret_path = None
        if spec.id == "1":
            ctx.secret = os.urandom(4096)
            secret_path = tmp / "secret-model.bin"
            secret_path.write_bytes(ctx.secret)
        victim = start_victim(
            agent.address(spec.victim),
            secret=str(secret_path) if secret_path else None,
            interval=opts.interval,
            timeout=opts.victim_timeout,
        )
        ctx.victim_info = dict(victim.info)
        ctx.victim_errors_since = lambda t: sum(1 for c in victim.window(t, math.inf) if not c.ok)
        time.sleep(0.3)
        t_b0 = time.monotonic()
        time.sleep(opts.baseline)
        t_b1 = time.monotonic()
        row.base = Latency.of(victim.window(t_b0, t_b1))
        rss = [s.rss for s in sampler.window(t_b0, t_b1)] or [0]
        row.rss_before = int(statistics.median(rss))
        row.budget = opts.rss_budget or row.rss_before + int(limits.max_inflight_bytes)

        probe_threads: list[threading.Thread] = []
        probes: list[ProbeResult] = []

        def launch_probes() -> None:
            for scheme in spec.probes:
                address = agent.address(scheme) if agent else ""
                thread = threading.Thread(
                    target=lambda a=address: probes.append(probe(a, timeout=opts.victim_timeout)),
                    daemon=True,
                )
                thread.start()
                probe_threads.append(thread)

        ctx.on_engaged = launch_probes
        t_a0 = time.monotonic()
        row.outcome = _run_with_timeout(spec, ctx, opts.attack_timeout, agent)
        # At least --hold seconds of victim "during the attack" (and of its aftermath), even
        # for attacks over in milliseconds.
        engaged = ctx.engaged_at or t_a0
        time.sleep(max(engaged + opts.hold - time.monotonic(), 0.0))
        t_a1 = time.monotonic()
        for thread in probe_threads:
            thread.join(40)
        row.probes = list(probes)
        row.during = Latency.of(victim.window(engaged, t_a1))
        peak = [s.rss for s in sampler.window(t_a0, t_a1 + 0.1)]
        row.rss_peak = max(peak, default=0)
        row.alive = agent.alive()
        if not row.alive:
            row.notes.append(f"agent exited with status {agent.proc.returncode}")
        row.notes += ctx.notes
    except AgentStartError as exc:
        row.error = f"{exc}: {exc.log[-300:]}"
    except Exception as exc:
        row.error = f"{type(exc).__name__}: {exc}"
    finally:
        if victim is not None:
            victim.stop()
        if agent is not None:
            code, took = agent.stop()
            tracebacks = sum(1 for line in agent.lines if line.startswith("Traceback"))
            if tracebacks:
                row.notes.append(f"agent logged {tracebacks} traceback(s)")
            if took > 5.0:
                row.notes.append(f"agent took {took:.1f} s to stop (Kata kills it after 5 s)")
            elif row.alive and code not in (0, None):
                row.notes.append(f"agent stopped with status {code}")
        if sampler is not None:
            sampler.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if row.outcome is not None:
            row.outcome.got = scrub(row.outcome.got, tmp)
        row.notes = [scrub(n, tmp) for n in row.notes]
        row.error = scrub(row.error, tmp)
        for p in row.probes:
            p.error = scrub(p.error, tmp)
        for lat in (row.base, row.during):
            if lat is not None:
                lat.first_error = scrub(lat.first_error, tmp)
        row.seconds = time.monotonic() - started
    return row


def _run_with_timeout(spec: Spec, ctx: Ctx, timeout: float, agent: Agent | None) -> Outcome:
    result: list[Outcome] = []

    def run() -> None:
        try:
            result.append(spec.fn(ctx))
        except AgentStartError as exc:
            last = [line for line in exc.log.splitlines() if line.strip()][-1:] or [""]
            result.append(Outcome(None, f"an agent did not start: {exc}: {last[0][:200]}"))
        except Exception as exc:
            result.append(Outcome(None, f"the attack failed: {type(exc).__name__}: {exc}"))

    thread = threading.Thread(target=run, name=f"attack-{spec.id}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if agent is not None:
            agent.kill()  # ends the attacker's sockets, so that its thread finishes
        thread.join(15)
        return Outcome(None, f"the attack did not finish within {timeout:g} s (agent killed)")
    return result[0]


# Output ---------------------------------------------------------------------------------------
def _lat(base: Latency | None, during: Latency | None, attr: str) -> str:
    if not base or not during or not during.n:
        return "-"
    b, d = getattr(base, attr), getattr(during, attr)
    return f"{b:.2f} -> {d:.2f}"


def table(rows: list[Row]) -> str:
    head = (
        "| # | attack | victim median ms (ratio) | victim p99 ms | victim errors | new client "
        "| agent RSS peak / budget | attack | goal |"
    )
    lines = [head, "|" + " --- |" * 9]
    for r in rows:
        if r.check or r.error:
            median = p99 = errors = client = rss = "-"
        else:
            median = _lat(r.base, r.during, "median_ms")
            if median != "-":
                median += f" ({r.ratio:.2f}x)"
            p99 = _lat(r.base, r.during, "p99_ms")
            errors = f"{r.during.errors}/{r.during.n}" if r.during else "-"
            client = ", ".join(p.brief() for p in r.probes) or "-"
            rss = f"{_mib(r.rss_peak)} / {_mib(r.budget)}"
        goal = r.verdict if r.verdict == "PASS" else f"FAIL ({', '.join(r.failures())})"
        lines.append(
            f"| {r.id} | {r.title} | {median} | {p99} | {errors} | {client} | {rss} | "
            f"{r.attack_state} | {goal} |"
        )
    return "\n".join(lines)


def details(rows: list[Row]) -> str:
    out = []
    for r in rows:
        text = r.error or (r.outcome.got if r.outcome else "")
        extra = list(r.notes)
        if r.during and r.during.errors:
            extra.append(f"first victim error: {r.during.first_error[:160]}")
        for p in r.probes:
            if not p.ok:
                extra.append(f"new client on {p.address.partition('://')[0]}: {p.reason()[:160]}")
        if r.denied():
            text += f" [denied service: {', '.join(r.denied())}]"
        out.append(f"- {r.id} ({r.seconds:.0f} s): {text}")
        out += [f"  - {e}" for e in extra]
    return "\n".join(out)


def summary(rows: list[Row]) -> str:
    succeed = [r.id for r in rows if r.attack_state == "SUCCEEDS"]
    unknown = [r.id for r in rows if r.attack_state == "?"]
    passed = [r.id for r in rows if r.verdict == "PASS"]
    failed = [r.id for r in rows if r.verdict != "PASS"]
    lines = [
        f"attacks that still succeed: {', '.join(succeed) or 'none'}"
        + (f" (could not tell: {', '.join(unknown)})" if unknown else ""),
        f"goal (victim median within {GOAL_RATIO:g}x, no victim errors, new clients get in, "
        f"RSS within budget, agent alive; checks find nothing): "
        f"PASS {len(passed)}/{len(rows)}" + (f"; FAIL: {', '.join(failed)}" if failed else ""),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--attack", help="attacks to run: 3 / 3,5 / 14 (= 14a-14e) / 14c")
    parser.add_argument("--quick", action="store_true", help="shorter windows (about 2 min)")
    parser.add_argument("--hold", type=float, help="seconds an attack holds its state (5; 2)")
    parser.add_argument("--baseline", type=float, help="seconds of unattacked victim (3; 1.5)")
    parser.add_argument("--interval", type=float, default=0.005, help="victim pause between calls")
    parser.add_argument("--victim-timeout", type=float, default=2.0, help="victim call timeout")
    parser.add_argument("--attack-timeout", type=float, help="abandon an attack after (180; 120)")
    parser.add_argument("--rss-budget", help="absolute agent RSS budget (e.g. 1536M)")
    parser.add_argument(
        "--agent-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra agent argument (repeat), e.g. --agent-arg=--max-streams=8",
    )
    parser.add_argument("--json", help="also write the rows to this file")
    opts = parser.parse_args(argv)
    opts.hold = opts.hold if opts.hold is not None else (2.0 if opts.quick else 5.0)
    opts.baseline = opts.baseline if opts.baseline is not None else (1.5 if opts.quick else 3.0)
    if opts.attack_timeout is None:
        opts.attack_timeout = 120.0 if opts.quick else 180.0
    if opts.rss_budget:
        from vaccel_agent.limits import parse_size

        opts.rss_budget = parse_size(opts.rss_budget, "--rss-budget")
    specs = select_specs(opts.attack)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through run_attack, which stops what it started

    signal.signal(signal.SIGTERM, interrupted)
    limits = agent_limits(opts.agent_arg)
    print(
        f"agent limits: max-message-size {_mib(limits.max_message_bytes)}, max-inflight-bytes "
        f"{_mib(limits.max_inflight_bytes)}, max-streams {limits.max_streams}, "
        f"max-connections {limits.max_connections}; hold {opts.hold:g} s, "
        f"baseline {opts.baseline:g} s",
        flush=True,
    )
    rows: list[Row] = []
    try:
        for spec in specs:
            print(f"[{spec.id}] {spec.title} ...", end=" ", flush=True)
            row = run_attack(spec, opts, limits)
            rows.append(row)
            print(f"{row.attack_state}, goal {row.verdict} ({row.seconds:.0f} s)", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
    print()
    print(table(rows))
    print()
    print(details(rows))
    print()
    print(summary(rows))
    if opts.json:
        with open(opts.json, "w") as fh:
            json.dump([_jsonable(r) for r in rows], fh, indent=1, default=str)
    return 0


def _jsonable(row: Row) -> dict[str, Any]:
    data = asdict(row)
    data.update(ratio=row.ratio, verdict=row.verdict, attack=row.attack_state)
    with contextlib.suppress(Exception):
        data["failures"] = row.failures()
    return data


if __name__ == "__main__":
    sys.exit(main())
