"""``vaccel-agent``: serve the host's vAccel backends to remote clients.

Started by Kata as ``vaccel-agent --server-address unix:///<dir>/kata.hvsock_2048`` (Go
runtime, backends from VACCEL_BACKENDS) or ``vaccel-agent -a tcp://127.0.0.1:65500`` (Rust
runtime, VACCEL_PLUGINS/VACCEL_LOG_LEVEL/VACCEL_PROFILING_ENABLED). Prints
``Listening on '<address>'`` per address once it accepts connections; SIGTERM, SIGINT or SIGHUP
stop it cleanly (exit status 0).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import MutableMapping, Sequence

from vaccel_core import batching
from vaccel_core.auth import read_credential, read_token
from vaccel_core.config import DEFAULT_RPC_ADDRESS, Config, parse_plugin_list, parse_vaccel_config
from vaccel_core.errors import InvalidArgumentError, VaccelError
from vaccel_core.log import configure_logging
from vaccel_core.transport import TlsOptions, TransportOptions

from . import limits as agent_limits
from .metrics import CONFIG_KEY as METRICS_CONFIG_KEY
from .metrics import parse_metrics_address

#: Seconds in-flight calls get to finish on a stop signal (Kata kills the agent after 5 s).
STOP_GRACE = 2.5


def _octal(value: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an octal mode such as 600, got {value!r}"
        ) from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"expected a mode between 000 and 777, got {value!r}")
    return mode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vaccel-agent",
        description="Serve this host's vAccel backends to remote clients (rpc backend).",
    )
    parser.add_argument(
        "-a",
        "--server-address",
        action="append",
        dest="addresses",
        metavar="URI",
        help="address to listen on; repeat for several (unix:///PATH, tcp://HOST:PORT, "
        "vsock://CID:PORT, virtio-mock:///PATH; unix and vsock serve ttrpc and gRPC on one "
        "socket, grpc+ or ttrpc+ before the scheme serves only that one); default "
        f"{DEFAULT_RPC_ADDRESS}",
    )
    from vaccel_core import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--plugins",
        help="backends, in priority order (noop, libvaccel-noop.so, /usr/lib/libvaccel-X.so, "
        "':' or ',' separated); default VACCEL_PLUGINS or VACCEL_BACKENDS",
    )
    parser.add_argument(
        "--vaccel-config",
        metavar="K=V,...",
        help='vAccel settings, e.g. "plugins=libvaccel-noop.so,log_level=4"',
    )
    parser.add_argument(
        "--session-ttl",
        type=float,
        metavar="SECONDS",
        help="release sessions idle for longer than this (default: only when the client goes)",
    )
    parser.add_argument(
        "--log-level", type=int, choices=(1, 2, 3, 4), help="1 error, 2 warn, 3 info, 4 debug"
    )
    parser.add_argument(
        "--blob-dir",
        metavar="DIR",
        help="where resource files (blobs) are kept: a folder of this user, mode 0700, with one "
        "subfolder per running agent (removed on exit, or swept by the next start after a "
        "crash); default <tmp>/vaccel-agent-<uid> (also --vaccel-config blob_dir=DIR)",
    )
    parser.add_argument(
        "--socket-mode",
        type=_octal,
        default=0o600,
        metavar="OCTAL",
        help="permissions of unix sockets (default 600: owner only; bits for others are "
        "refused without --insecure)",
    )
    parser.add_argument(
        "--metrics-address",
        metavar="URI",
        help="serve Prometheus metrics over HTTP at tcp://HOST:PORT (e.g. tcp://127.0.0.1:9464; "
        "see docs/metrics.md); default off (also --vaccel-config metrics_address=URI)",
    )
    security = parser.add_argument_group("security", "authentication and encryption")
    security.add_argument("--tls-cert", metavar="FILE", help="the agent's TLS certificate (PEM)")
    security.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    security.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="CA bundle (PEM) client certificates must chain to: mutual TLS, clients without a "
        "valid certificate are refused",
    )
    security.add_argument(
        "--token-file",
        metavar="FILE",
        help="a bearer token (the file's first line) every client must send; compared in "
        "constant time",
    )
    security.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help="the operator's bearer token: callers presenting it see what all clients hold "
        "(GetStatus) and are accepted where --token-file is asked for",
    )
    security.add_argument(
        "--insecure",
        action="store_true",
        help="allow tcp on a non-loopback address without TLS, and sockets others may open",
    )
    agent_limits.add_arguments(parser)
    batching.add_arguments(parser)
    return parser


def make_config(args: argparse.Namespace) -> Config:
    """Environment, then --vaccel-config, then --plugins/--log-level."""
    config = Config.from_env()
    if args.vaccel_config:
        config.apply(parse_vaccel_config(args.vaccel_config))
    if args.plugins:
        config.plugins = parse_plugin_list(args.plugins) or None
    if args.log_level:
        config.log_level = args.log_level
    if args.blob_dir:
        config.extra["blob_dir"] = args.blob_dir
    if args.metrics_address:
        config.extra[METRICS_CONFIG_KEY] = args.metrics_address
    if config.extra.get(METRICS_CONFIG_KEY):  # fail now on a bad address
        parse_metrics_address(str(config.extra[METRICS_CONFIG_KEY]))
    config.extra.update({k: str(v) for k, v in agent_limits.from_arguments(args).items()})
    config.extra.update(batching.from_arguments(args))
    batching.policy_from_config(config)  # fail now on a bad batch setting
    from .server import limits_from_config

    limits_from_config(config)  # fail now on a bad --vaccel-config limit
    return config


def _plugins_source(args: argparse.Namespace) -> str | None:
    """The option the backend list came from, to name it in errors; None for the environment."""
    if args.plugins:
        return "--plugins"
    if args.vaccel_config and {"plugins", "backends"} & set(
        parse_vaccel_config(args.vaccel_config)
    ):
        return "--vaccel-config plugins="
    return None


def _check_plugin_names(config: Config, source: str | None) -> None:
    """A backend named on the command line that no plugin provides is an error naming the
    option the user wrote (the environment's names are checked, and named, by the core)."""
    if source is None or not config.plugins:
        return
    from vaccel_core.plugins import get_registry

    registry = get_registry()
    for name in config.plugins:
        if name not in registry.backends:
            known = ", ".join(sorted(registry.backends)) or "none"
            failed = [f.describe() for f in registry.failures if f.name == name]
            hint = f"; it failed to load: {failed[0]}" if failed else ""
            raise InvalidArgumentError(
                f"{source} names unknown backend {name!r} (known: {known}){hint}"
            )


def tls_options(args: argparse.Namespace) -> TlsOptions | None:
    """The listener TLS settings from --tls-cert/--tls-key/--tls-client-ca, or None."""
    if not (args.tls_cert or args.tls_key or args.tls_client_ca):
        return None
    if not (args.tls_cert and args.tls_key):
        raise InvalidArgumentError(
            "--tls-cert and --tls-key: expected both (the agent's certificate and its key)"
        )
    return TlsOptions(
        cert=read_credential(args.tls_cert, "--tls-cert"),
        key=read_credential(args.tls_key, "--tls-key"),
        ca=read_credential(args.tls_client_ca, "--tls-client-ca") if args.tls_client_ca else None,
    )


def quiet_grpc_core(
    args: argparse.Namespace, environ: MutableMapping[str, str] | None = None
) -> None:
    """Keep gRPC's own C-core log lines (``E1130 ... add_port.cc:83] Failed to add port``) off
    stderr: the agent reports every failure itself, in one line. Must run before grpc is
    imported; a GRPC_VERBOSITY the user set, or debug logging (level 4), keeps gRPC's logs."""
    env = os.environ if environ is None else environ
    if "GRPC_VERBOSITY" in env:
        return
    debug = args.log_level == 4 or "log_level=4" in (args.vaccel_config or "").replace(" ", "")
    debug = debug or (env.get("VACCEL_LOG_LEVEL") or env.get("VACCEL_DEBUG_LEVEL")) == "4"
    if not debug:
        env["GRPC_VERBOSITY"] = "NONE"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_grpc_core(args)
    try:
        config = make_config(args)
    except VaccelError as exc:
        print(f"vaccel-agent: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config)
    try:
        _check_plugin_names(config, _plugins_source(args))
    except VaccelError as exc:
        print(f"vaccel-agent: error: {exc}", file=sys.stderr)
        return 2
    from .allocator import tune_allocator
    from .fdlimit import ensure_fd_room
    from .server import Agent, limits_from_config

    tune_allocator()

    addresses = args.addresses or [DEFAULT_RPC_ADDRESS]
    try:
        options = TransportOptions(
            unix_socket_mode=args.socket_mode,
            tls=tls_options(args),
            token=read_token(args.token_file, "--token-file") if args.token_file else None,
            admin_token=(
                read_token(args.admin_token_file, "--admin-token-file")
                if args.admin_token_file
                else None
            ),
            insecure=args.insecure,
        )
    except VaccelError as exc:
        print(f"vaccel-agent: error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        wanted = limits_from_config(config).max_connections
        fits = ensure_fd_room(len(addresses), wanted)
        if fits < wanted:  # never run out of file descriptors: serve fewer connections
            config.extra["max_connections"] = str(fits)
        agent = Agent(addresses, config=config, options=options, session_ttl=args.session_ttl)
        agent.start()
    except VaccelError as exc:
        print(f"vaccel-agent: error: {exc}", file=sys.stderr)
        return 1
    for address in agent.bound_addresses:
        print(f"Listening on '{address}'", flush=True)
    if agent.metrics is not None:
        print(f"Serving metrics on '{agent.metrics.url}'", flush=True)
    while not stop.wait(0.5):
        pass
    agent.stop(grace=STOP_GRACE)
    _exit_now()
    return 0  # pragma: no cover - _exit_now does not return


def _exit_now() -> None:
    """Finish within Kata's 5 s: shut the backends down (at most 1 s), then exit without
    waiting for calls still running inside a backend (their clients already got an error)."""
    import logging

    from vaccel_core.plugins import get_registry

    closer = threading.Thread(target=get_registry().shutdown, daemon=True)
    closer.start()
    closer.join(1.0)
    busy = [t.name for t in threading.enumerate() if t.is_alive() and not t.daemon]
    if closer.is_alive() or len(busy) > 1:
        logging.getLogger("vaccel.agent").info("exiting; still busy: %s", ", ".join(busy))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
