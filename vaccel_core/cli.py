"""The ``vaccel`` command: ``vaccel plugins [--json]``, ``vaccel noop``, and the commands plugins
add through the ``vaccel_register_commands`` hook (the onnxruntime plugin's ``vaccel models``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import PluginError, VaccelError
from .flags import PluginType
from .plugins import PluginInfo, PluginRegistry, get_registry


def _ops(info: PluginInfo) -> list[str]:
    if info.kind != "backend":
        return []
    return sorted(op.value for op in info.cls.operations())


def _details(registry: PluginRegistry, info: PluginInfo) -> dict[str, Any]:
    """A backend's details(); available local backends are started to ask them (e.g. which
    execution providers onnxruntime really runs), a remote one only if already running."""
    if info.instance is None and (not info.available or info.cls.type & PluginType.REMOTE):
        return {}
    try:
        instance = info.instance or registry.backend(info.name)
        return dict(instance.details())
    except Exception as exc:  # reporting must not fail because a backend did
        return {"error": f"{type(exc).__name__}: {exc}"}


def plugins_report(registry: PluginRegistry) -> dict[str, Any]:
    """Everything ``vaccel plugins`` shows, as plain data (the ``--json`` output)."""

    def entry(info: PluginInfo) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": info.name,
            "plugin": info.plugin,
            "distribution": info.distribution,
            "version": getattr(info.cls, "version", "") or info.dist_version,
            "status": info.status,
            "reason": info.reason,
            "description": getattr(info.cls, "description", ""),
        }
        if info.kind == "backend":
            data["type"] = PluginType(info.cls.type).names()
            data["type_flags"] = int(info.cls.type)
            data["operations"] = _ops(info)
            data["details"] = _details(registry, info)
        return data

    return {
        "backends": [entry(i) for i in sorted(registry.backends.values(), key=lambda i: i.name)],
        "transports": [
            entry(i) for i in sorted(registry.transports.values(), key=lambda i: i.name)
        ],
        "failures": [vars(f) for f in registry.failures],
    }


#: Below this width (80 columns when piped) the report is a list, one field a line: a table of
#: seven columns would have to cut or fold every cell.
TABLE_MIN_WIDTH = 120


def _plugin_rows(report: dict[str, Any]) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(section title, [(field, value, style)] per plugin) for the report."""
    sections: list[tuple[str, list[tuple[str, str, str]]]] = []
    for kind in ("backends", "transports"):
        for e in report[kind]:
            style = "green" if e["status"] == "loaded" else "yellow"
            note = e["reason"] or ", ".join(f"{k}={v}" for k, v in e.get("details", {}).items())
            fields = [
                ("name", str(e["name"]), "bold"),
                ("distribution", str(e["distribution"]), ""),
                ("version", str(e["version"]), ""),
                ("status", str(e["status"]), style),
                ("reason / details", note or "", ""),
            ]
            if kind == "backends":
                ops = e["operations"]
                shown = f"{len(ops)} ops" if len(ops) > 6 else ", ".join(ops)
                fields += [("type", "|".join(e["type"]), ""), ("operations", shown, "")]
            sections.append((kind.capitalize(), fields))
    for f in report["failures"]:
        fields = [(k, str(f[k]), "bold" if k == "name" else "") for k in ("group", "name")]
        fields += [(k, str(f[k]), "") for k in ("distribution", "version")]
        fields.append(("error", str(f["error"]), "red"))
        sections.append(("Failed to load", fields))
    return sections


def _print_plugins(report: dict[str, Any], console: Any = None) -> None:
    """The report as tables on a wide terminal, as a list (one field a line) when narrow or
    piped; cell text is never taken for console markup (``pip install 'pyvaccel[onnx]'``) and
    never cut."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    rows = _plugin_rows(report)
    if console.width < TABLE_MIN_WIDTH:
        title = None
        for section, fields in rows:
            if section != title:
                console.print(Text(section, style="bold underline"))
                title = section
            for i, (field, value, style) in enumerate(fields):
                console.print(
                    Text(f"{'-' if i == 0 else ' '} {field}: ") + Text(value, style=style),
                    soft_wrap=True,
                )
        return
    tables: dict[str, Table] = {}
    for section, fields in rows:
        table = tables.get(section)
        if table is None:
            table = tables[section] = Table(title=section, title_justify="left")
            for field, _, _ in fields:
                table.add_column(field, overflow="fold")
        table.add_row(*(Text(value, style=style) for _, value, style in fields))
    for table in tables.values():
        console.print(table)


def cmd_plugins(args: argparse.Namespace) -> int:
    report = plugins_report(get_registry())
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_plugins(report)
    return 0


def cmd_noop(args: argparse.Namespace) -> int:
    from .session import Session

    flags = int(PluginType.REMOTE) if args.remote else 0
    with Session(flags) as session:
        print(f"Initialized session with id: {session.id}")
        backend = session.backend_for(_noop_op())
        session.noop()
        print(f"noop: ok (backend {backend.name})")
    return 0


def _noop_op() -> Any:
    from .ops import Op

    return Op.NOOP


DESCRIPTION = "vAccel in Python: inspect the installed backends and transports, run a noop."

EPILOG = (
    "configuration: VACCEL_PLUGINS (backends in priority order, e.g. onnxruntime:noop, or rpc "
    "to go through an agent), VACCEL_RPC_ADDRESS (the agent, e.g. unix:///run/vaccel.sock), "
    "VACCEL_LOG_LEVEL (1-4). Plugins may add further commands."
)


@dataclass
class Command:
    """A subcommand contributed by a plugin through ``vaccel_register_commands``."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None] | None
    run: Callable[[argparse.Namespace], int]
    plugin: str


BUILTIN = ("plugins", "noop", "new-backend")


def cmd_new_backend(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .testing import new_backend

    dest = Path(args.dest or f"vaccel-{args.name.replace('_', '-')}")
    try:
        written = new_backend(args.name, dest)
    except (ValueError, OSError) as exc:
        print(f"vaccel new-backend: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote backend project {args.name!r} into {written}")
    print(f"next: pip install -e {written} && pytest {written / 'tests'}")
    return 0


def plugin_commands(registry: PluginRegistry) -> list[Command]:
    """Every command the registered plugins contribute. A plugin whose hook raises, or that
    registers a bad or duplicate command, is recorded as a failure (``vaccel plugins`` shows
    it) and loses its commands; the others are unaffected."""
    commands: dict[str, Command] = {}
    for impl in registry.pm.hook.vaccel_register_commands.get_hookimpls():
        plugin = impl.plugin_name
        found: list[Command] = []

        def register(
            name: str,
            help: str,
            configure: Callable[[argparse.ArgumentParser], None] | None = None,
            run: Callable[[argparse.Namespace], int] | None = None,
            *,
            _found: list[Command] = found,
            _plugin: str = plugin,
        ) -> None:
            if not isinstance(name, str) or not name or name.startswith("-"):
                raise PluginError(f"command name {name!r} is not a word")
            if run is None or not callable(run):
                raise PluginError(f"command {name!r} has no run function")
            if name in BUILTIN or name in commands:
                owner = "vaccel" if name in BUILTIN else commands[name].plugin
                raise PluginError(f"command {name!r} is already registered by {owner!r}")
            _found.append(Command(name, help, configure, run, _plugin))

        try:
            impl.function(register=register)
        except Exception as exc:
            _record(registry, plugin, exc)
            continue
        commands.update((c.name, c) for c in found)
    return sorted(commands.values(), key=lambda c: c.name)


def _record(registry: PluginRegistry, plugin: str, exc: BaseException) -> None:
    """Record a command failure against its plugin (an error under VACCEL_PLUGINS_STRICT=1)."""
    dist, version = "", ""
    for info in list(registry.backends.values()) + list(registry.transports.values()):
        if info.plugin == plugin:
            dist, version = info.distribution, info.dist_version
            break
    registry._fail("vaccel.commands", plugin, dist, version, exc)


def _version() -> str:
    from . import __version__

    return f"%(prog)s {__version__}"


def build_parser(registry: PluginRegistry | None = None) -> argparse.ArgumentParser:
    """The ``vaccel`` parser with the built-in commands and those of the plugins (from the
    process-wide registry unless one is given)."""
    parser = argparse.ArgumentParser(prog="vaccel", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "plugins",
        help="list discovered backends and transports",
        description="Every discovered backend and transport: distribution, version, type, "
        "operations, status (loaded / unavailable) and why; then the plugins that failed.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plugins)
    p = sub.add_parser(
        "noop",
        help="run one noop through the configured backend",
        description="Open a session, run one noop, say which backend ran it.",
        epilog="The backend comes from VACCEL_PLUGINS; --remote needs rpc in it and the agent "
        "in VACCEL_RPC_ADDRESS.",
    )
    p.add_argument(
        "--remote",
        action="store_true",
        help="ask for the REMOTE backend (needs VACCEL_PLUGINS=rpc and VACCEL_RPC_ADDRESS)",
    )
    p.set_defaults(func=cmd_noop)
    p = sub.add_parser(
        "new-backend",
        help="write a new backend project (a pip package) from the template",
        description="Write a pip package vaccel-NAME with a backend NAME (noop, classify, sgemm), "
        "its vaccel.backends entry point, a README and a conformance test, ready to edit.",
    )
    p.add_argument("name", metavar="NAME", help="backend name: lower-case letters, digits, _")
    p.add_argument(
        "dest",
        metavar="DEST",
        nargs="?",
        default=None,
        help="folder to create (must not exist or be empty); default ./vaccel-NAME",
    )
    p.set_defaults(func=cmd_new_backend)
    if registry is None:
        try:
            registry = get_registry()
        except VaccelError:  # VACCEL_PLUGINS_STRICT=1: the built-in commands report it
            return parser
    for command in plugin_commands(registry):
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        try:
            if command.configure is not None:
                command.configure(p)
        except Exception as exc:
            sub._name_parser_map.pop(command.name, None)
            sub._choices_actions = [a for a in sub._choices_actions if a.dest != command.name]
            _record(registry, command.plugin, exc)
            continue
        p.set_defaults(func=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except VaccelError as exc:  # VACCEL_PLUGINS_STRICT=1 and a broken plugin
        print(f"vaccel: error: {exc}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except VaccelError as exc:
        print(f"vaccel {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
