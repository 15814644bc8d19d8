"""Run the agent inside another process: the Python form of Kata's "integrated" mode.

In Kata's "exec" mode the runtime spawns ``vaccel-agent`` for every sandbox. In "integrated"
mode there is no agent process: the process that owns the sandbox serves the agent itself, on
the sandbox's hybrid-vsock socket, with the settings of the Kata configuration file
(``endpoint_port``, ``debug``) and the backends of the shim helper's ``VACCEL_BACKENDS``. This
module is that, for a Python host process (a sandbox launcher, a test harness, a sidecar)::

    from vaccel_agent.embed import integrated

    with integrated("/run/vc/firecracker/<id>/root/kata.hvsock",
                    kata_config="/opt/kata/share/defaults/kata-containers/"
                                "configuration-dbs-vaccel.toml") as agent:
        ...  # the guest's vsock://2:2048 now reaches this process

    agent = serve_in_background("unix:///run/vaccel/agent.sock", plugins="noop")
    ...
    agent.stop()

The agent runs on gRPC's threads; the calling thread is free. Stop it with ``agent.stop()``
(in-flight calls get ``grace`` seconds, every session is released, socket files are removed).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from vaccel_core.config import Config, load_toml, parse_plugin_list
from vaccel_core.errors import InvalidArgumentError

from .server import Agent

#: The vAccel agent's vsock port in every Kata configuration (``endpoint_port``).
DEFAULT_ENDPOINT_PORT = 2048
#: Where the guest reaches the host (the host's CID is 2); what the guest image sets.
GUEST_ADDRESS = "vsock://2:2048"


def serve_in_background(
    addresses: str | Sequence[str],
    *,
    plugins: str | Sequence[str] | None = None,
    log_level: int | None = None,
    config: Config | None = None,
    session_ttl: float | None = None,
) -> Agent:
    """Start an agent in this process on ``addresses`` and return it, already listening.

    ``plugins`` (``"jetson:noop"``, ``["noop"]``, upstream's ``libvaccel-NAME.so`` paths) and
    ``log_level`` (1-4) override ``config``, which defaults to the environment's
    (``VACCEL_PLUGINS``/``VACCEL_BACKENDS``, ``VACCEL_LOG_LEVEL``, ...).
    """
    cfg = config if config is not None else Config.from_env()
    if plugins is not None:
        text = plugins if isinstance(plugins, str) else ":".join(plugins)
        cfg.plugins = parse_plugin_list(text) or None
    if log_level is not None:
        cfg.log_level = _level(log_level, "log_level")
    agent = Agent(
        [addresses] if isinstance(addresses, str) else list(addresses),
        config=cfg,
        session_ttl=session_ttl,
    )
    agent.start()
    return agent


@dataclass(frozen=True)
class IntegratedSettings:
    """What an integrated agent needs, as Kata's configuration and shim helper give it."""

    endpoint_port: int = DEFAULT_ENDPOINT_PORT
    #: Backends in priority order; None: from VACCEL_PLUGINS / VACCEL_BACKENDS.
    backends: tuple[str, ...] | None = None
    #: vAccel log level (Kata's ``debug``); None: from VACCEL_LOG_LEVEL.
    log_level: int | None = None

    def address(self, uds_path: str | os.PathLike[str] | None) -> str:
        """Where to listen: ``unix://<uds_path>_<port>`` on hybrid-vsock VMMs (Firecracker,
        Cloud Hypervisor, Dragonball); ``vsock://-1:<port>`` (any CID) with vhost-vsock (QEMU)."""
        if uds_path is None:
            return f"vsock://-1:{self.endpoint_port}"
        return f"unix://{os.fspath(uds_path)}_{self.endpoint_port}"

    @classmethod
    def from_kata(
        cls,
        kata_config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> IntegratedSettings:
        """Read the vAccel keys of a Kata configuration (a TOML file or its parsed data).

        Keys are looked for in every ``[hypervisor.*]`` table and in ``[runtime]``:
        ``endpoint_port`` (newer runtimes: ``agent_port``), ``debug`` (``log_level``) and
        ``backends`` with ``backends_library``. Empty ``backends`` (integrated mode) leaves the
        backends to ``VACCEL_BACKENDS`` in ``environ`` (the shim helper sets it).
        """
        data = _load(kata_config) if kata_config is not None else {}
        keys = _vaccel_keys(data)
        port_text = keys.get("endpoint_port", keys.get("agent_port", DEFAULT_ENDPOINT_PORT))
        port = _port(port_text)
        level_text = keys.get("debug", keys.get("log_level"))
        level = _level(level_text, "debug") if level_text not in (None, "") else None
        backends: tuple[str, ...] | None = None
        names = str(keys.get("backends", "") or "")
        if names.strip():
            library = str(keys.get("backends_library", "") or "")
            paths = ":".join(f"{library}libvaccel-{n.strip()}.so" for n in names.split(","))
            backends = tuple(parse_plugin_list(paths))
        else:
            env = os.environ if environ is None else environ
            listed = env.get("VACCEL_PLUGINS") or env.get("VACCEL_BACKENDS") or ""
            backends = tuple(parse_plugin_list(listed)) or None
        return cls(port, backends, level)


@contextmanager
def integrated(
    uds_path: str | os.PathLike[str] | None,
    *,
    kata_config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    grace: float = 5.0,
) -> Iterator[Agent]:
    """Serve the agent in this process for one sandbox, as Kata's integrated mode does.

    ``uds_path`` is the sandbox's hybrid-vsock socket (the agent listens on
    ``<uds_path>_<endpoint_port>``), or None for vhost-vsock (any CID). Settings come from
    ``kata_config`` and ``environ`` (see :meth:`IntegratedSettings.from_kata`); the agent is
    stopped (sessions released, socket removed) when the block ends.
    """
    settings = IntegratedSettings.from_kata(kata_config, environ)
    config = Config.from_env(os.environ if environ is None else environ)
    agent = serve_in_background(
        settings.address(uds_path),
        plugins=list(settings.backends) if settings.backends else None,
        log_level=settings.log_level,
        config=config,
    )
    try:
        yield agent
    finally:
        agent.stop(grace)


def _load(source: str | os.PathLike[str] | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    return load_toml(source, "integrated: Kata configuration")


def _vaccel_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """The vAccel keys, merged from [runtime] and every [hypervisor.*] table."""
    tables: list[Mapping[str, Any]] = []
    runtime = data.get("runtime")
    if isinstance(runtime, Mapping):
        tables.append(runtime)
    hypervisors = data.get("hypervisor")
    if isinstance(hypervisors, Mapping):
        tables += [t for t in hypervisors.values() if isinstance(t, Mapping)]
    wanted = ("endpoint_port", "agent_port", "debug", "log_level", "backends", "backends_library")
    keys: dict[str, Any] = {}
    for table in tables:
        for key in wanted:
            if key in table:
                keys[key] = table[key]
    return keys


def _port(value: Any) -> int:
    try:
        port = int(str(value).strip())
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise InvalidArgumentError(
            f"integrated: endpoint_port: expected a port number 1-65535, got {value!r}"
        )
    return port


def _level(value: Any, key: str) -> int:
    try:
        level = int(str(value).strip())
    except ValueError:
        raise InvalidArgumentError(
            f"integrated: {key}: expected a level 1-4, got {value!r}"
        ) from None
    return min(max(level, 1), 4)
