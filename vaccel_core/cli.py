"""The ``vaccel`` command: ``vaccel plugins [--json]``, ``vaccel noop``, ``vaccel models``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .errors import VaccelError
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


def _print_plugins(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for kind in ("backends", "transports"):
        table = Table(title=kind.capitalize(), title_justify="left")
        for col in ("name", "distribution", "version", "status", "reason / details"):
            table.add_column(col)
        if kind == "backends":
            table.add_column("type")
            table.add_column("operations")
        for e in report[kind]:
            style = "green" if e["status"] == "loaded" else "yellow"
            note = e["reason"] or ", ".join(f"{k}={v}" for k, v in e.get("details", {}).items())
            row = [
                e["name"],
                e["distribution"],
                e["version"],
                f"[{style}]{e['status']}[/]",
                note or "",
            ]
            if kind == "backends":
                ops = e["operations"]
                row += ["|".join(e["type"]), f"{len(ops)} ops" if len(ops) > 6 else ", ".join(ops)]
            table.add_row(*row)
        console.print(table)
    if report["failures"]:
        table = Table(title="Failed to load", title_justify="left")
        for col in ("group", "name", "distribution", "version", "error"):
            table.add_column(col)
        for f in report["failures"]:
            table.add_row(
                f["group"], f["name"], f["distribution"], f["version"], f"[red]{f['error']}[/]"
            )
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


def cmd_models(args: argparse.Namespace) -> int:
    try:
        from vaccel_plugins.onnxruntime import cli as models_cli
    except ImportError as exc:
        print(f"vaccel models: the onnxruntime backend is not available: {exc}", file=sys.stderr)
        return 1
    return int(models_cli.run(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaccel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plugins", help="list discovered backends and transports")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plugins)
    p = sub.add_parser("noop", help="run one noop through the configured backend")
    p.add_argument("--remote", action="store_true", help="ask for the REMOTE backend")
    p.set_defaults(func=cmd_noop)
    p = sub.add_parser(
        "models", help="list, build and verify the models the onnxruntime backend knows"
    )
    p.add_argument("action", nargs="?", default="list", choices=["list", "build", "verify"])
    p.add_argument("name", nargs="?", default=None)
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except VaccelError as exc:
        print(f"vaccel {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
