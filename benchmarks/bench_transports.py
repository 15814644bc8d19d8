"""Transports side by side: virtio-mock vs unix (gRPC) vs the raw baselines, in one run.

One run starts three server processes, each serving an echo handler on one transport:
``virtio-mock://``, ``unix://`` (the gRPC unix transport) and ``vsock://`` through the relay
(AF_VSOCK replaced by the hybrid-vsock path ``<uds_path>_PORT``, as no vsock peer exists on
most machines), plus two raw socketpair ping-pong processes, and times, interleaved round by
round:

* noop round trip (a 1-byte request and reply) over: a raw socketpair ping-pong (the floor of
  any socket transport), raw length-prefixed framing over a socketpair (what a hand-made framing
  would cost), virtio-mock, unix gRPC, vsock relay + gRPC;
* 64 MiB tensor round trip (the same bytes out and back) over: virtio-mock with the tensor
  copied into the shared memory, virtio-mock with the tensor already there (``alloc``), unix
  gRPC, and a plain memcpy of the same 64 MiB (``np.copyto``).

Process placement matters on small VMs (waking a thread on another CPU costs tens of µs), so
the noop comparison runs twice: every process on one CPU, then client and servers on two
different CPUs (when there are two). Prints medians and ratios; goals: virtio-mock noop <= 3x
the socketpair ping-pong, virtio-mock 64 MiB throughput >= 1/4 of memcpy's. Usage::

    python benchmarks/bench_transports.py [--rounds 15] [--calls 200] [--big-rounds 7]
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


def serve(folder: str, scheme: str) -> None:
    import socket as s

    from transports.vsock import VsockAddress, VsockTransport, hybrid_vsock_path
    from vaccel_core.plugins import get_registry
    from vaccel_core.transport import Address, TransportOptions

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
    listeners = []  # kept: a gRPC server stops when its listener is garbage collected
    addresses = {
        "virtio-mock": f"virtio-mock://{folder}/vm.ctl",
        "unix": f"unix://{folder}/agent.sock",
        "vsock": "vsock://-1:2048",
    }
    for address in (addresses[scheme],):
        parsed = Address.parse(address)
        scheme = parsed.scheme
        transport = VsockTransport() if scheme == "vsock" else registry.transport(scheme)
        listeners.append(transport.listen(parsed, Echo(), options))
    print("ready", flush=True)
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
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--scheme", help=argparse.SUPPRESS)
    parser.add_argument("--pong", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.scheme)
        return 0
    if args.pong is not None:
        pong(args.pong)
        return 0

    from transports.vsock import VsockTransport, hybrid_vsock_path
    from vaccel_core.plugins import get_registry
    from vaccel_core.transport import Address, Message, TransportOptions

    folder = tempfile.mkdtemp(prefix="bench-transports-")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    servers = [
        subprocess.Popen(
            [sys.executable, __file__, "--serve", folder, "--scheme", scheme],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for scheme in ("virtio-mock", "unix", "vsock")  # one process each, as separate agents
    ]
    for server in servers:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
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
    virtio = registry.transport("virtio-mock").connect(
        Address.parse(f"virtio-mock://{folder}/vm.ctl"), opts
    )
    unix = registry.transport("unix").connect(Address.parse(f"unix://{folder}/agent.sock"), opts)
    vsock = VsockTransport().connect(Address.parse("vsock://2:2048"), opts)

    tiny = Message(b"x")

    def socketpair_rt() -> None:
        mine.send(b"x\0\0\0")
        mine.recv(4)

    def framed_rt() -> None:
        framed_a.sendall(FRAME.pack(1) + b"x")
        (n,) = FRAME.unpack(_recv_exact(framed_a, 4))
        _recv_exact(framed_a, n)

    fast = {
        "socketpair ping-pong": socketpair_rt,
        "framing over socketpair": framed_rt,
        "virtio-mock": lambda: virtio.call("echo", tiny, 10),
    }
    slow = {
        "unix (gRPC)": lambda: unix.call("echo", tiny, 10),
        "vsock (relay + gRPC)": lambda: vsock.call("echo", tiny, 10),
    }
    for fn in (*fast.values(), *slow.values()):  # warm up
        for _ in range(20):
            fn()

    cpus = sorted(os.sched_getaffinity(0))
    placements = [("one CPU", {cpus[0]}, {cpus[0]})]
    if len(cpus) > 1:
        placements.append(("two CPUs", {cpus[0]}, {cpus[1]}))
    children = [*(server.pid for server in servers), ponger.pid, framer.pid]
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
    in_shm = virtio.alloc(BIG)  # type: ignore[attr-defined]
    in_shm[:] = tensor
    dst = np.empty_like(tensor)
    big: dict[str, list[float]] = {
        "memcpy (np.copyto)": [],
        "virtio-mock (copied in)": [],
        "virtio-mock (in shared memory)": [],
        "unix (gRPC)": [],
    }

    def round_trip(channel: Any, buf: Any) -> None:
        reply = channel.call("echo", Message(b"", [buf]), 60)
        assert reply.buffers[0].nbytes == BIG

    big_fns: dict[str, Callable[[], Any]] = {
        "memcpy (np.copyto)": lambda: np.copyto(dst, tensor),
        "virtio-mock (copied in)": lambda: round_trip(virtio, tensor),
        "virtio-mock (in shared memory)": lambda: round_trip(virtio, in_shm),
        "unix (gRPC)": lambda: round_trip(unix, tensor),
    }
    for fn in big_fns.values():  # warm up (first touch of the shared pages)
        fn()
    for _ in range(args.big_rounds):
        for name, fn in big_fns.items():
            timed(fn, 1, big[name])
    reply = virtio.call("echo", Message(b"", [tensor]), 60)
    assert np.array_equal(np.frombuffer(reply.buffers[0], np.uint8), tensor)
    del reply

    for channel in (virtio, unix, vsock):
        channel.close()
    for server in servers:
        assert server.stdin is not None
        server.stdin.close()
    mine.close()
    framed_a.close()
    for proc in (*servers, ponger, framer):
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()

    # Report.
    print(f"Noop round trip, median µs ({args.rounds} rounds x {args.calls} calls, interleaved)")
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
    for p in results:
        relay = results[p]["vsock (relay + gRPC)"] - results[p]["unix (gRPC)"]
        print(
            f"  {p}: the vsock relay adds {relay:.0f} µs to gRPC's "
            f"{results[p]['unix (gRPC)']:.0f} µs; framing would cost "
            f"{results[p]['framing over socketpair']:.0f} µs in all"
        )
    print()
    medians = {name: statistics.median(s) for name, s in big.items()}
    memcpy = medians["memcpy (np.copyto)"]
    print(f"64 MiB round trip, median ms ({args.big_rounds} rounds); throughput vs memcpy")
    for name, m in medians.items():
        gbs = BIG / m / 1e9
        print(f"  {name:32}{m * 1e3:9.2f} ms {gbs:7.2f} GB/s {memcpy / m:7.2f}x memcpy")
    print()
    worst = max(results[p]["virtio-mock"] / results[p]["socketpair ping-pong"] for p in results)
    share = memcpy / medians["virtio-mock (copied in)"]
    ok1, ok2 = worst <= 3.0, share >= 0.25
    print(
        f"goal virtio-mock noop <= 3x socketpair: {'met' if ok1 else 'MISSED'} "
        f"(worst placement {worst:.2f}x)"
    )
    print(
        f"goal virtio-mock 64 MiB >= 1/4 memcpy: {'met' if ok2 else 'MISSED'} "
        f"({share:.2f}x with the copy in; "
        f"{memcpy / medians['virtio-mock (in shared memory)']:.2f}x already in shared memory)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
