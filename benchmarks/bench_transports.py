"""Transports side by side: virtio-mock vs ttrpc vs gRPC vs the raw baselines, in one run.

One run starts a server process per listener, each serving an echo handler:
``virtio-mock://``, ``unix://`` (the agent's socket: ttrpc served in place, gRPC relayed to a
private gRPC server), ``grpc+unix://`` (gRPC only, no relay), ``vsock://`` (the same dual
listener; AF_VSOCK replaced by the hybrid-vsock path ``<uds_path>_PORT``, as no vsock peer
exists on most machines), ``tcp://`` (gRPC) and ``ttrpc+tcp://``, plus two raw socketpair
ping-pong processes, and times, interleaved round by round:

* noop round trip (a 1-byte request and reply) over: a raw socketpair ping-pong (the floor of
  any socket transport), raw length-prefixed framing over a socketpair (what a hand-made framing
  would cost), virtio-mock, ttrpc on unix (``unix://``, the default), ttrpc on the vsock path
  (``vsock://2:2048``: straight on the hybrid-vsock socket), ttrpc on tcp, gRPC on unix direct
  (``grpc+unix://`` to a gRPC-only listener), gRPC on unix relayed (``grpc+unix://`` to the
  agent's dual socket), gRPC on the vsock path (``grpc+vsock://``: the client's relay, then the
  agent's) and gRPC on tcp;
* 64 MiB tensor round trip (the same bytes out and back) over: virtio-mock with the tensor
  copied into the shared memory, virtio-mock with the tensor already there (``alloc``), ttrpc
  on unix and on the vsock path, gRPC on unix (direct and relayed), and a plain memcpy of the
  same 64 MiB (``np.copyto``).

Process placement matters on small VMs (waking a thread on another CPU costs tens of µs), so
the noop comparison runs twice: every process on one CPU, then client and servers on two
different CPUs (when there are two). The servers tune glibc's allocator as ``vaccel-agent``
does (``agent/allocator.py``: a fresh 64 MiB receive buffer then reuses heap pages instead of
faulting in new ones; ``--no-agent-allocator`` leaves it alone); the client does not, as a guest
application would not. Prints medians and ratios; goals (worst placement):
virtio-mock noop <= 3x the socketpair ping-pong, virtio-mock 64 MiB throughput >= 1/4 of
memcpy's (issue 5); ttrpc/unix noop <= 3x the socketpair ping-pong, ttrpc/unix 64 MiB
throughput >= 0.1x memcpy's (issue 10). Usage::

    python benchmarks/bench_transports.py [--rounds 15] [--calls 200] [--grpc-calls 40]
        [--big-rounds 7] [--no-agent-allocator]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BIG = 64 << 20
FRAME = struct.Struct("<I")


# Server side (this script started again with --serve / --pong) ------------------------------
class Echo:
    def handle(self, method: str, request: Any, peer: Any) -> Any:
        from vaccel_core.transport import Message

        return Message(bytes(request.payload), list(request.buffers))

    def peer_connected(self, peer: Any) -> None:
        pass

    def peer_disconnected(self, peer: Any) -> None:
        pass


#: The listeners, one server process each (as separate agents), by name.
LISTENERS = {
    "virtio-mock": "virtio-mock://{folder}/vm.ctl",
    "unix": "unix://{folder}/agent.sock",  # ttrpc and (relayed) gRPC on one socket
    "grpc-unix": "grpc+unix://{folder}/grpc.sock",  # gRPC only: no sniffing, no relay
    "vsock": "vsock://-1:2048",  # hybrid vsock: the unix socket {folder}/kata.hvsock_2048
    "tcp": "tcp://127.0.0.1:0",
    "ttrpc-tcp": "ttrpc+tcp://127.0.0.1:0",
}


def serve(folder: str, name: str, tune: bool) -> None:
    import socket as s

    if tune:  # what vaccel-agent does at start (agent/cli.py): large blocks stay in the heap
        from vaccel_agent.allocator import tune_allocator

        tune_allocator()

    from vaccel_core.plugins import get_registry
    from vaccel_core.transport import Address, TransportOptions
    from vaccel_transports.vsock import VsockAddress, VsockTransport, hybrid_vsock_path

    uds = os.path.join(folder, "kata.hvsock")

    def open_listener(self: Any, where: Any) -> Any:
        sock = s.socket(s.AF_UNIX, s.SOCK_STREAM)
        sock.bind(hybrid_vsock_path(uds, where.port))
        sock.listen(16)
        return sock, VsockAddress(where.cid, where.port)

    VsockTransport.open_listener = open_listener  # type: ignore[method-assign]
    registry = get_registry()
    # The 64 MiB round trip needs more than the default 64 MiB message limit.
    options = TransportOptions(max_message_bytes=256 << 20)
    parsed = Address.parse(LISTENERS[name].format(folder=folder))
    transport = VsockTransport() if parsed.scheme == "vsock" else registry.transport(parsed.scheme)
    # kept: a gRPC server stops when its listener is garbage collected
    listener = transport.listen(parsed, Echo(), options)
    print(f"ready {listener.address}", flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin


def pong(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    while True:
        head = sock.recv(4)
        if not head:
            return
        if head == b"F\0\0\0":  # framed mode: length-prefixed messages from now on
            framed_pong(sock)
            return
        sock.send(head)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return bytes(data)


def framed_pong(sock: socket.socket) -> None:
    try:
        while True:
            (n,) = FRAME.unpack(_recv_exact(sock, 4))
            body = _recv_exact(sock, n)
            sock.sendall(FRAME.pack(len(body)) + body)
    except EOFError:
        return


# Client side -----------------------------------------------------------------------------------
def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` (threads started later inherit it from their creator)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # a thread that just ended
            os.sched_setaffinity(int(tid), cpus)


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def timed(fn: Callable[[], Any], n: int, out: list[float]) -> None:
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="noop rounds per placement")
    parser.add_argument("--calls", type=int, default=200, help="fast calls per round")
    parser.add_argument("--grpc-calls", type=int, default=40, help="gRPC calls per round")
    parser.add_argument("--big-rounds", type=int, default=7, help="64 MiB rounds")
    parser.add_argument(
        "--no-agent-allocator",
        action="store_true",
        help="leave glibc's allocator alone in the servers (vaccel-agent tunes it, see "
        "agent/allocator.py)",
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--scheme", help=argparse.SUPPRESS)
    parser.add_argument("--pong", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.scheme, not args.no_agent_allocator)
        return 0
    if args.pong is not None:
        pong(args.pong)
        return 0

    from vaccel_core.plugins import get_registry
    from vaccel_core.transport import Address, Message, TransportOptions
    from vaccel_transports.vsock import VsockTransport, hybrid_vsock_path

    folder = tempfile.mkdtemp(prefix="bench-transports-")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    servers = {
        name: subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                folder,
                "--scheme",
                name,
                *(["--no-agent-allocator"] if args.no_agent_allocator else []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name in LISTENERS  # one process each, as separate agents
    }
    bound: dict[str, str] = {}
    for name, server in servers.items():
        assert server.stdout is not None
        ready, _, address = server.stdout.readline().strip().partition(" ")
        assert ready == "ready", f"the {name} server did not start"
        bound[name] = address
    mine, theirs = socket.socketpair()
    ponger = subprocess.Popen(
        [sys.executable, __file__, "--pong", str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
        env=env,
    )
    theirs.close()
    framed_a, framed_b = socket.socketpair()
    framer = subprocess.Popen(
        [sys.executable, __file__, "--pong", str(framed_b.fileno())],
        pass_fds=[framed_b.fileno()],
        env=env,
    )
    framed_b.close()
    framed_a.send(b"F\0\0\0")

    uds = os.path.join(folder, "kata.hvsock")

    def open_stream(self: Any, target: Any, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(hybrid_vsock_path(uds, target.port))
        return sock

    VsockTransport.open_stream = open_stream  # type: ignore[method-assign]
    registry = get_registry()
    opts = TransportOptions(connect_timeout=10, max_message_bytes=256 << 20)

    def connect(address: str) -> Any:
        parsed = Address.parse(address)
        if parsed.scheme == "vsock":
            return VsockTransport().connect(parsed, opts)
        return registry.transport(parsed.scheme).connect(parsed, opts)

    tcp_port = bound["tcp"].rsplit(":", 1)[1]
    ttrpc_tcp_port = bound["ttrpc-tcp"].rsplit(":", 1)[1]
    channels = {
        "virtio-mock": connect(bound["virtio-mock"]),
        "ttrpc unix": connect(f"unix://{folder}/agent.sock"),
        "ttrpc vsock": connect("vsock://2:2048"),
        "ttrpc tcp": connect(f"ttrpc+tcp://127.0.0.1:{ttrpc_tcp_port}"),
        "grpc unix direct": connect(f"grpc+unix://{folder}/grpc.sock"),
        "grpc unix relayed": connect(f"grpc+unix://{folder}/agent.sock"),
        "grpc vsock": connect("grpc+vsock://2:2048"),
        "grpc tcp": connect(f"tcp://127.0.0.1:{tcp_port}"),
    }
    virtio = channels["virtio-mock"]
    kinds = {name: type(channel).__name__ for name, channel in channels.items()}
    for name, kind in kinds.items():  # the labels must say what is on the wire
        want = {"ttrpc": "TtrpcChannel", "grpc": ("GrpcChannel", "VsockChannel")}.get(
            name.split()[0], kind
        )
        assert kind in (want if isinstance(want, tuple) else (want,)), (name, kind)

    tiny = Message(b"x")

    def socketpair_rt() -> None:
        mine.send(b"x\0\0\0")
        mine.recv(4)

    def framed_rt() -> None:
        framed_a.sendall(FRAME.pack(1) + b"x")
        (n,) = FRAME.unpack(_recv_exact(framed_a, 4))
        _recv_exact(framed_a, n)

    def noop(channel: Any) -> Callable[[], Any]:
        return lambda: channel.call("echo", tiny, 10)

    fast = {
        "socketpair ping-pong": socketpair_rt,
        "framing over socketpair": framed_rt,
        "virtio-mock": noop(virtio),
        "unix (ttrpc)": noop(channels["ttrpc unix"]),
        "vsock path (ttrpc)": noop(channels["ttrpc vsock"]),
        "ttrpc+tcp": noop(channels["ttrpc tcp"]),
    }
    slow = {
        "grpc+unix, gRPC-only": noop(channels["grpc unix direct"]),
        "grpc+unix, dual (relay)": noop(channels["grpc unix relayed"]),
        "grpc+vsock (2 relays)": noop(channels["grpc vsock"]),
        "tcp (gRPC)": noop(channels["grpc tcp"]),
    }
    for fn in (*fast.values(), *slow.values()):  # warm up
        for _ in range(20):
            fn()

    cpus = sorted(os.sched_getaffinity(0))
    placements = [("one CPU", {cpus[0]}, {cpus[0]})]
    if len(cpus) > 1:
        placements.append(("two CPUs", {cpus[0]}, {cpus[1]}))
    children = [*(server.pid for server in servers.values()), ponger.pid, framer.pid]
    results: dict[str, dict[str, float]] = {}
    for label, client_cpus, server_cpus in placements:
        pin(os.getpid(), client_cpus)
        for pid in children:
            pin(pid, server_cpus)
        samples: dict[str, list[float]] = {name: [] for name in (*fast, *slow)}
        for _ in range(args.rounds):
            for name, fn in fast.items():
                timed(fn, args.calls, samples[name])
            for name, fn in slow.items():
                timed(fn, args.grpc_calls, samples[name])
        results[label] = {name: median_us(s) for name, s in samples.items()}
    everywhere = set(cpus)
    pin(os.getpid(), everywhere)
    for pid in children:
        pin(pid, everywhere)

    # 64 MiB round trips.
    rng = np.random.default_rng(0)
    tensor = rng.integers(0, 255, BIG, dtype=np.uint8)
    in_shm = virtio.alloc(BIG)
    in_shm[:] = tensor
    dst = np.empty_like(tensor)

    def round_trip(channel: Any, buf: Any) -> None:
        reply = channel.call("echo", Message(b"", [buf]), 60)
        assert memoryview(reply.buffers[0]).nbytes == BIG

    big_fns: dict[str, Callable[[], Any]] = {
        "memcpy (np.copyto)": lambda: np.copyto(dst, tensor),
        "virtio-mock (copied in)": lambda: round_trip(virtio, tensor),
        "virtio-mock (in shared memory)": lambda: round_trip(virtio, in_shm),
        "unix (ttrpc)": lambda: round_trip(channels["ttrpc unix"], tensor),
        "vsock path (ttrpc)": lambda: round_trip(channels["ttrpc vsock"], tensor),
        "grpc+unix, gRPC-only": lambda: round_trip(channels["grpc unix direct"], tensor),
        "grpc+unix, dual (relay)": lambda: round_trip(channels["grpc unix relayed"], tensor),
    }
    big: dict[str, list[float]] = {name: [] for name in big_fns}
    for fn in big_fns.values():  # warm up (first touch of the shared pages)
        fn()
    for _ in range(args.big_rounds):
        for name, fn in big_fns.items():
            timed(fn, 1, big[name])
    for name in ("virtio-mock", "ttrpc unix", "ttrpc vsock"):  # the bytes come back intact
        reply = channels[name].call("echo", Message(b"", [tensor]), 60)
        assert np.array_equal(np.frombuffer(reply.buffers[0], np.uint8), tensor), name
        del reply

    for channel in channels.values():
        channel.close()
    for server in servers.values():
        assert server.stdin is not None
        server.stdin.close()
    mine.close()
    framed_a.close()
    procs: list[subprocess.Popen[Any]] = [*servers.values(), ponger, framer]
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()

    # Report.
    print(
        f"Noop round trip, median µs ({args.rounds} rounds x {args.calls} calls; gRPC rows "
        f"{args.grpc_calls} calls; interleaved)"
    )
    names = list(fast) + list(slow)
    print(f"  {'':28}" + "".join(f"{label:>12}" for label in results))
    for name in names:
        print(f"  {name:28}" + "".join(f"{results[p][name]:12.1f}" for p in results))
    print("  ratios to the socketpair ping-pong:")
    for name in names[1:]:
        ratios = "".join(
            f"{results[p][name] / results[p]['socketpair ping-pong']:11.2f}x" for p in results
        )
        print(f"    {name:26}{ratios}")
    for p, r in results.items():
        print(
            f"  {p}: gRPC on unix {r['grpc+unix, gRPC-only']:.0f} µs, the dual socket's relay "
            f"adds {r['grpc+unix, dual (relay)'] - r['grpc+unix, gRPC-only']:.0f} µs, the "
            f"guest's vsock relay {r['grpc+vsock (2 relays)'] - r['grpc+unix, dual (relay)']:.0f}"
            f" µs more; ttrpc on unix {r['unix (ttrpc)']:.0f} µs "
            f"({r['grpc+unix, gRPC-only'] / r['unix (ttrpc)']:.1f}x faster than gRPC direct), "
            f"on the vsock path {r['vsock path (ttrpc)']:.0f} µs; framing alone "
            f"{r['framing over socketpair']:.0f} µs"
        )
    print()
    medians = {name: statistics.median(s) for name, s in big.items()}
    memcpy = medians["memcpy (np.copyto)"]
    tuning = "off" if args.no_agent_allocator else "on, as in vaccel-agent"
    print(
        f"64 MiB round trip, median ms ({args.big_rounds} rounds); throughput vs memcpy "
        f"(servers' allocator tuning {tuning}; the client's untuned)"
    )
    for name, m in medians.items():
        gbs = BIG / m / 1e9
        print(f"  {name:32}{m * 1e3:9.2f} ms {gbs:7.2f} GB/s {memcpy / m:7.2f}x memcpy")
    print()

    def noop_goal(name: str, issue: int) -> None:
        ratios = {p: results[p][name] / results[p]["socketpair ping-pong"] for p in results}
        worst = max(ratios.values())
        each = ", ".join(f"{p} {r:.2f}x" for p, r in ratios.items())
        verdict = "met" if worst <= 3.0 else f"MISSED ({worst / 3.0:.2f}x the limit)"
        print(f"goal (issue {issue}) {name} noop <= 3x socketpair: {verdict} ({each})")

    def big_goal(name: str, share: float, issue: int) -> None:
        got = memcpy / medians[name]
        verdict = "met" if got >= share else f"MISSED ({got / share:.2f}x the goal)"
        print(f"goal (issue {issue}) {name} 64 MiB >= {share:g}x memcpy: {verdict} ({got:.3f}x)")

    noop_goal("virtio-mock", 5)
    big_goal("virtio-mock (copied in)", 0.25, 5)
    print(
        f"  (virtio-mock with the tensor already in shared memory: "
        f"{memcpy / medians['virtio-mock (in shared memory)']:.2f}x memcpy)"
    )
    noop_goal("unix (ttrpc)", 10)
    big_goal("unix (ttrpc)", 0.1, 10)
    print("  (not goals of the issue, for comparison:)")
    noop_goal("vsock path (ttrpc)", 10)
    big_goal("vsock path (ttrpc)", 0.1, 10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
