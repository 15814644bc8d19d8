"""In-process dispatch overhead: ``session.noop()`` through the dispatcher vs a direct call of
the noop backend's function, measured side by side in one run.

    python benchmarks/bench_dispatch.py [--calls N] [--repeats R]

Prints the median nanoseconds per call of each and their ratio. Goal (issue 2): under 5 µs per
dispatched operation.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from vaccel_core import Config, Op, Session


def _per_call_ns(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per sample")
    parser.add_argument("--repeats", type=int, default=25, help="samples per variant")
    args = parser.parse_args()

    with Session(config=Config(plugins=["noop"])) as session:
        backend = session.backend_for(Op.NOOP)
        direct_fn = backend.noop

        def dispatched() -> None:
            session.noop()

        def direct() -> None:
            direct_fn(session)

        for fn in (dispatched, direct):  # warm up
            _per_call_ns(fn, args.calls // 10)
        samples: dict[str, list[float]] = {"dispatched": [], "direct": []}
        for _ in range(args.repeats):  # interleave so noise hits both alike
            samples["dispatched"].append(_per_call_ns(dispatched, args.calls))
            samples["direct"].append(_per_call_ns(direct, args.calls))

    med = {k: statistics.median(v) for k, v in samples.items()}
    overhead = med["dispatched"] - med["direct"]
    print(f"{'variant':<34}{'median ns/call':>16}")
    print(f"{'session.noop() via dispatcher':<34}{med['dispatched']:>16.0f}")
    print(f"{'NoopBackend.noop() direct call':<34}{med['direct']:>16.0f}")
    print(f"ratio dispatched/direct: {med['dispatched'] / med['direct']:.2f}x; "
          f"dispatch overhead: {overhead:.0f} ns/call "
          f"({'meets' if med['dispatched'] < 5000 else 'misses'} the < 5 µs goal)")


if __name__ == "__main__":
    main()
