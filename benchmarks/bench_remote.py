"""Remote overhead: our rpc backend + agent vs a bare echo of the same size, same wire.

One run starts the agent (noop backend) and a bare echo server, each as its own process. The
agent listens on a unix socket (``unix://``: ttrpc, and gRPC relayed, on one socket), a
gRPC-only unix socket (``grpc+unix://``) and tcp (gRPC); the echo server is a bare gRPC server
on a unix socket and on tcp, and a bare ttrpc echo on a unix socket (our ttrpc transport
with a handler that returns its request: no rpc backend, no agent). For each wire it times,
alternating call by call, the same round trip through our layers (``Session`` -> rpc backend ->
transport -> agent -> noop backend and back) and through the bare echo of the same wire with
the same request and reply sizes. The wires:

* ``unix ttrpc``: ours over ``unix://`` (ttrpc, the default) vs the bare ttrpc echo;
* ``unix grpc``: ours over ``grpc+unix://`` to the gRPC-only listener vs the bare gRPC echo
  (what ``unix://`` measured before it spoke ttrpc);
* ``tcp grpc``: ours over ``tcp://`` vs the bare gRPC echo.

The cases:

* ``noop``: ``session.noop()``
* ``1 MiB`` / ``64 MiB``: ``session.fpga_arraycopy(a)`` with an int32 tensor of that size (the
  noop backend returns a tensor of the same size)

The bare gRPC client sends ``tensor.tobytes()`` and wraps the reply with ``np.frombuffer`` (the
least a gRPC client holding a numpy array does); the bare gRPC server returns its request
unchanged. The bare ttrpc client sends the tensor as an out-of-band buffer, as ours does, and
wraps the buffer it gets back with ``np.frombuffer``.

It prints medians, the ratio ours / bare, the agent-side time of the operation itself (its
validation and the noop backend, from the profiling regions the agent returns), and the ratio
without it (what our layers add; goal: at most 1.20). Usage::

    python benchmarks/bench_remote.py [--rounds-noop 300] [--rounds-1m 100] [--rounds-64m 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent import futures
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MAX = (1 << 31) - 1
GRPC_OPTIONS = [("grpc.max_send_message_length", MAX), ("grpc.max_receive_message_length", MAX)]


class TtrpcEcho:
    """The bare ttrpc echo's handler: the request back (its buffers too), or, for a method
    named ``Echo:N``, N zero bytes (the reply size of the call it stands in for)."""

    def handle(self, method: str, request: Any, peer: Any) -> Any:
        from vaccel_core.transport import Message

        size = method.partition(":")[2]
        if size:
            return Message(bytes(int(size)))
        return Message(bytes(request.payload), list(request.buffers))

    def peer_connected(self, peer: Any) -> None:
        pass

    def peer_disconnected(self, peer: Any) -> None:
        pass


def echo_server(addresses: list[str]) -> int:
    """A bare gRPC server whose one method returns its request bytes (identity serializers),
    and a bare ttrpc echo (``ttrpc+unix://`` addresses)."""
    import grpc

    from vaccel_core.transport import Address, TransportOptions
    from vaccel_transports.unix import UnixTransport

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        size = int(dict(context.invocation_metadata()).get("reply-size", len(request)))
        return request if size == len(request) else bytes(size)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
            ),
        )
    )
    bound = []
    listeners = []  # kept alive until the process ends
    for address in addresses:
        if address.startswith("ttrpc+unix://"):
            options = TransportOptions(max_message_bytes=MAX)
            listener = UnixTransport().listen(Address.parse(address), TtrpcEcho(), options)
            listeners.append(listener)
            bound.append(listener.address)
        elif address.startswith("unix://"):
            server.add_insecure_port("unix:" + address[len("unix://") :])
            bound.append(address)
        else:
            host = address[len("tcp://") :].rsplit(":", 1)[0]
            port = server.add_insecure_port(address[len("tcp://") :])
            bound.append(f"tcp://{host}:{port}")
    server.start()
    for address in bound:
        print(f"Listening on '{address}'", flush=True)
    server.wait_for_termination()
    return 0


def start(
    cmd: list[str], count: int, env: dict[str, str]
) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    bound: list[str] = []
    deadline = time.monotonic() + 60
    while len(bound) < count and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"{cmd[0]} exited: {proc.wait()}")
        if line.startswith("Listening on '"):
            bound.append(line.strip()[len("Listening on '") : -1])
    return proc, bound


def grpc_target(address: str) -> str:
    return "unix:" + address[len("unix://") :] if address.startswith("unix://") else address[6:]


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def agent_ns(session: Any) -> int:
    """Agent-side time so far: its validation and the backend's work (profiling regions)."""
    return sum(r.total_ns for r in session.profile() if r.name.startswith("agent:"))


def measure(
    session: Any, ours: Callable[[], object], bare: Callable[[], object], rounds: int
) -> tuple[float, float, float]:
    """Medians (ms) of ours, of bare, and of the agent-side backend time within ours."""
    ours()
    bare()  # warm up both paths
    a: list[float] = []
    b: list[float] = []
    backend: list[float] = []
    for _ in range(rounds):
        before = agent_ns(session)
        t0 = time.perf_counter()
        ours()
        t1 = time.perf_counter()
        bare()
        t2 = time.perf_counter()
        a.append(t1 - t0)
        b.append(t2 - t1)
        backend.append((agent_ns(session) - before) / 1e9)
    return median_ms(a), median_ms(b), median_ms(backend)


def frame_sizes(channel: Any, fn: Callable[[], object]) -> tuple[int, int]:
    """Request and reply gRPC message sizes of one of our calls (spying on the channel)."""
    from vaccel_core.transport import Message
    from vaccel_transports import grpc_framing

    real = channel.call
    seen: list[int] = []

    def spy(method: str, request: Message, timeout: float | None = None) -> Message:
        reply = real(method, request, timeout)
        seen.extend((len(grpc_framing.encode(request)), len(grpc_framing.encode(reply))))
        return reply

    channel.call = spy
    try:
        fn()
    finally:
        channel.call = real
    return seen[0], seen[1]


class BareGrpc:
    """The bare gRPC echo's client."""

    def __init__(self, address: str) -> None:
        import grpc

        self.channel = grpc.insecure_channel(grpc_target(address), options=GRPC_OPTIONS)
        self.call = self.channel.unary_unary("/bench.Echo/Echo")

    def sized(self, size: int, reply_size: int) -> object:
        """A round trip with our noop's request and reply sizes."""
        return self.call(bytes(size), metadata=(("reply-size", str(reply_size)),), timeout=60)

    def tensor(self, tensor: np.ndarray) -> np.ndarray:
        """The least a bare gRPC client holding a numpy array does: its bytes out, an array
        back."""
        return np.frombuffer(self.call(tensor.tobytes(), timeout=60), dtype=tensor.dtype)

    def close(self) -> None:
        self.channel.close()


class BareTtrpc:
    """The bare ttrpc echo's client (our ttrpc channel, nothing above it)."""

    def __init__(self, address: str) -> None:
        from vaccel_core.transport import TransportOptions
        from vaccel_transports.ttrpc.client import TtrpcChannel

        path = address.partition("://")[2]
        self.channel = TtrpcChannel.connect_unix(path, TransportOptions(max_message_bytes=MAX))

    def sized(self, size: int, reply_size: int) -> object:
        from vaccel_core.transport import Message

        return self.channel.call(f"Echo:{reply_size}", Message(bytes(size)), 60)

    def tensor(self, tensor: np.ndarray) -> np.ndarray:
        from vaccel_core.transport import Message

        reply = self.channel.call("Echo", Message(b"", [tensor]), 60)
        return np.frombuffer(reply.buffers[0], dtype=tensor.dtype)

    def close(self) -> None:
        self.channel.close()


def bench_transport(
    kind: str, ours_addr: str, bare: BareGrpc | BareTtrpc, args: argparse.Namespace
) -> list[tuple[Any, ...]]:
    """Time noop, 1 MiB and 64 MiB round trips, ours vs bare, on one wire."""
    from vaccel_core import Config, Session

    session = Session(config=Config(plugins=["rpc"], rpc_address=ours_addr, profiling=True))
    channel = session.backends[0]._channels[ours_addr]  # type: ignore[attr-defined]
    wire = "ttrpc" if type(channel).__name__ == "TtrpcChannel" else "grpc"
    assert kind.endswith(wire), f"{kind}: our channel is a {type(channel).__name__}"
    rows = []
    cases: list[tuple[str, Callable[[], object], np.ndarray | None, int]] = [
        ("noop", session.noop, None, args.rounds_noop)
    ]
    for label, nbytes, rounds in (
        ("1 MiB", 1 << 20, args.rounds_1m),
        ("64 MiB", 64 << 20, args.rounds_64m),
    ):
        array = np.arange(nbytes // 4, dtype=np.int32)
        cases.append((label, partial(session.fpga_arraycopy, array), array, rounds))
    try:
        for label, ours, tensor, rounds in cases:
            req_size, reply_size = frame_sizes(channel, ours)
            bare_call: Callable[[], object]
            if tensor is None:
                bare_call = partial(bare.sized, req_size, reply_size)
            else:
                bare_call = partial(bare.tensor, tensor)
            ours_ms, bare_ms, backend_ms = measure(session, ours, bare_call, rounds)
            rows.append(
                (
                    kind,
                    label,
                    req_size,
                    rounds,
                    ours_ms,
                    bare_ms,
                    ours_ms / bare_ms,
                    backend_ms,
                    (ours_ms - backend_ms) / bare_ms,
                )
            )
    finally:
        session.release()
        bare.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds-noop", type=int, default=300)
    parser.add_argument("--rounds-1m", type=int, default=100)
    parser.add_argument("--rounds-64m", type=int, default=10)
    parser.add_argument("--echo-server", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo_server:
        return echo_server(args.echo_server)

    env = {k: v for k, v in os.environ.items() if not k.startswith("VACCEL_")}
    env["PYTHONPATH"] = str(ROOT)
    tmp = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    agent, agent_addrs = start(
        [
            sys.executable,
            "-m",
            "agent",
            "-a",
            f"unix://{tmp}/agent.sock",
            "-a",
            f"grpc+unix://{tmp}/grpc.sock",
            "-a",
            "tcp://127.0.0.1:0",
            "--plugins",
            "noop",
            # The 64 MiB case needs more than the default 64 MiB message limit.
            "--max-message-size",
            "128M",
        ],
        3,
        env,
    )
    os.environ["VACCEL_RPC_MAX_MESSAGE_BYTES"] = str(128 << 20)
    echo, echo_addrs = start(
        [
            sys.executable,
            __file__,
            "--echo-server",
            f"ttrpc+unix://{tmp}/echo-ttrpc.sock",
            f"unix://{tmp}/echo.sock",
            "tcp://127.0.0.1:0",
        ],
        3,
        env,
    )
    tcp = next(a for a in agent_addrs if a.startswith("tcp://"))
    wires: list[tuple[str, str, Callable[[], BareGrpc | BareTtrpc]]] = [
        ("unix ttrpc", f"unix://{tmp}/agent.sock", partial(BareTtrpc, echo_addrs[0])),
        ("unix grpc", f"grpc+unix://{tmp}/grpc.sock", partial(BareGrpc, echo_addrs[1])),
        ("tcp grpc", tcp, partial(BareGrpc, echo_addrs[2])),
    ]
    rows = []
    try:
        for kind, ours_addr, bare in wires:
            rows += bench_transport(kind, ours_addr, bare(), args)
    finally:
        for proc in (agent, echo):
            proc.terminate()
            proc.wait(10)
    header = ("transport", "case", "bytes", "n", "ours ms", "bare ms", "ratio", "backend", "layers")
    print("{:<10} {:<7} {:>10} {:>4} {:>9} {:>9} {:>6} {:>8} {:>7}".format(*header))
    for row in rows:
        print("{:<10} {:<7} {:>10} {:>4} {:>9.3f} {:>9.3f} {:>6.2f} {:>8.3f} {:>7.2f}".format(*row))
    print(
        "ratio  = median(ours) / median(bare echo, same sizes, same wire: the bare ttrpc echo\n"
        "         for unix ttrpc, the bare gRPC echo for the gRPC rows)\n"
        "backend = median agent-side time of the operation (validation + noop backend), ms\n"
        "layers = (median(ours) - backend) / median(bare): what our layers add; goal <= 1.20"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
