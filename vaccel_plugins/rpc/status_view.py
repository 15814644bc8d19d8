"""``vaccel status [ADDRESS]``: a live terminal view of an agent (a command of the rpc plugin).

Polls the agent's GetStatus every ``--interval`` seconds and shows its version, backends, what
it holds, its clients, and calls per second with p50/p99 latency per operation, measured between
two polls; until Ctrl-C. ``--once --json`` prints one snapshot (:mod:`.status_data`) and exits.
The operator's view (every client, every call) needs the agent's admin token:
``--admin-token-file`` or ``VACCEL_RPC_ADMIN_TOKEN_FILE`` (docs/status.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import math
import os
import re
import sys
import time
from typing import Any

from vaccel_core.errors import VaccelError
from vaccel_core.transport import Address, Channel, Message

from .status_data import CallRate, call_rates, snapshot

#: Below this width (80 columns when piped) the view is a list, one entry a line or two,
#: instead of tables whose cells would be cut.
TABLE_MIN_WIDTH = 100
#: The variable naming the file with the agent's admin token (as ``--admin-token-file``).
ADMIN_TOKEN_VARIABLE = "VACCEL_RPC_ADMIN_TOKEN_FILE"


class StatusClient:
    """One connection to an agent for GetStatus, opened again when it is lost."""

    def __init__(self, address: str, admin_token_file: str | None, timeout: float) -> None:
        from vaccel_core.auth import read_token

        from .settings import client_options

        self.address = address
        self.parsed = Address.parse(address)
        self.timeout = timeout
        self.options = client_options(connect_timeout=timeout)
        path = admin_token_file or os.environ.get(ADMIN_TOKEN_VARIABLE)
        if path:
            what = "--admin-token-file" if admin_token_file else ADMIN_TOKEN_VARIABLE
            self.options = dataclasses.replace(self.options, token=read_token(path, what))
        self._channel: Channel | None = None

    def poll(self) -> dict[str, Any]:
        """One GetStatus, as a snapshot; RemoteError (naming the address) when unreachable."""
        from vaccel_core.errors import RemoteError
        from vaccel_core.plugins import get_registry
        from vaccel_core.proto import pb

        proto = pb()
        try:
            if self._channel is None or getattr(self._channel, "lost", None):
                self.close()
                transport = get_registry().transport(self.parsed.scheme)
                self._channel = transport.connect(self.parsed, self.options)
            payload = proto.StatusRequest().SerializeToString()
            reply = self._channel.call("GetStatus", Message(payload), self.timeout)
        except VaccelError as exc:
            if getattr(self._channel, "lost", True):
                self.close()
            message = str(exc)
            if self.address not in message:
                message = f"the vAccel agent at {self.address}: {message}"
            raise RemoteError(message) from None
        try:
            status = proto.StatusResponse.FromString(bytes(reply.payload))
        except Exception as exc:  # not an agent, or not ours
            raise RemoteError(
                f"the vAccel agent at {self.address}: unreadable GetStatus reply ({exc})"
            ) from None
        return snapshot(status, self.address)

    def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()


# Rendering ------------------------------------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with control characters shown as ``\\xNN``: what an agent sends (names,
    descriptions, errors) never moves the cursor or retitles the operator's terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f} us"
    if value < 1.0:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}/s"


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _since(timestamp: float) -> str:
    if timestamp <= 0:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%H:%M:%S")


def summary_lines(snap: dict[str, Any], rows: list[CallRate]) -> list[tuple[str, str]]:
    """(label, value) lines at the top of the view."""
    operator = snap["view"] == "operator"
    lines = [
        ("agent", f"{snap['address']}  version {snap['version']}"),
        (
            "uptime",
            f"{_duration(snap['uptime_seconds'])}  view: "
            + ("operator (every client)" if operator else "this client only"),
        ),
        ("backends", ", ".join(snap["backends"]) or "none"),
        (
            "holds",
            f"{snap['sessions']} sessions, {snap['resources']} resources, {snap['blobs']} blobs "
            f"({_bytes(snap['blob_bytes'])}), {snap['clients_connected']} clients",
        ),
    ]
    if operator:
        rates = [r.per_second for r in rows if r.per_second is not None]
        errors = [r.errors_per_second for r in rows if r.errors_per_second is not None]
        total = f"{sum(rates):.1f}/s" if rates else "- (after the next poll)"
        lines.append(
            (
                "calls",
                f"{total}, {sum(errors):.1f} errors/s, {snap['calls_in_flight']} in flight, "
                f"{sum(r.calls for r in rows)} since start ({sum(r.errors for r in rows)} failed)",
            )
        )
        refused = ", ".join(f"{k} {v}" for k, v in snap["rejections"].items())
        lines.append(("refused", refused or "none"))
    return lines


CALL_COLUMNS = ("method", "operation", "backend", "calls/s", "p50", "p99", "calls", "errors")
CLIENT_COLUMNS = (
    "client",
    "transport",
    "from",
    "sessions",
    "calls",
    "errors",
    "in flight",
    "since",
)


def call_cells(row: CallRate) -> tuple[str, ...]:
    return (
        row.method,
        row.operation or "-",
        row.backend or "-",
        _rate(row.per_second),
        _seconds(row.p50),
        _seconds(row.p99),
        str(row.calls),
        str(row.errors),
    )


def client_cells(client: dict[str, Any]) -> tuple[str, ...]:
    name = client["id"] + (" (you)" if client["caller"] else "")
    return (
        name,
        client["transport"] or "-",
        client["description"] or "-",
        str(client["sessions"]),
        str(client["calls"]),
        str(client["errors"]),
        str(client["in_flight"]),
        _since(client["connected_at"]),
    )


def render(snap: dict[str, Any], rows: list[CallRate], width: int, error: str | None = None) -> Any:
    """The view as one rich renderable: tables when ``width`` allows, else a list; ``error``
    (the last poll failed) goes above the last figures."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = []
    if error is not None:
        parts.append(Text(f"unreachable: {printable(error)}", style="bold red"))
    for label, value in summary_lines(snap, rows):
        parts.append(Text(f"{label:>9}: ", style="bold") + Text(printable(value)))
    sections = []
    if snap["view"] == "operator":
        sections.append(("Calls", CALL_COLUMNS, [call_cells(r) for r in rows]))
    else:
        parts.append(
            Text(
                "the calls of all clients, and the other clients, are the operator's to see "
                f"(--admin-token-file or {ADMIN_TOKEN_VARIABLE})",
                style="dim",
            )
        )
    if snap["view"] == "operator" or snap["clients"]:
        sections.append(("Clients", CLIENT_COLUMNS, [client_cells(c) for c in snap["clients"]]))
    for title, columns, cells in sections:
        if width < TABLE_MIN_WIDTH:
            parts.append(Text(title, style="bold underline"))
            if not cells:
                parts.append(Text("  none"))
            for values in cells:
                head = Text(f"- {printable(values[0])}", style="bold")
                rest = ", ".join(f"{c} {v}" for c, v in zip(columns[1:], values[1:], strict=True))
                parts.append(head + Text(f": {printable(rest)}"))
            continue
        table = Table(title=title, title_justify="left", expand=False)
        for i, column in enumerate(columns):
            table.add_column(column, overflow="fold", justify="right" if i >= 3 else "left")
        for values in cells:
            table.add_row(*(Text(printable(v)) for v in values))
        parts.append(table)
    return Group(*parts)


# The command ----------------------------------------------------------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "address",
        metavar="ADDRESS",
        nargs="?",
        default=None,
        help="the agent (unix://PATH, vsock://CID:PORT, tcp://HOST:PORT, grpc+unix://PATH, "
        "...); default VACCEL_RPC_ADDRESS",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="seconds between refreshes (default 1)",
    )
    parser.add_argument("--once", action="store_true", help="poll once, print, exit")
    parser.add_argument(
        "--json", action="store_true", help="with --once: the snapshot as JSON (docs/status.md)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="seconds to connect and for each GetStatus (default 5)",
    )
    parser.add_argument(
        "--admin-token-file",
        metavar="FILE",
        default=None,
        help=f"the agent's admin token, for the operator's view (else ${ADMIN_TOKEN_VARIABLE}; "
        "without it, a client sees only itself)",
    )


def _fail(message: str) -> int:
    print(f"vaccel status: error: {printable(message)}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    """The command: exit status 0, or 1 with a one-line error (bad argument, unreachable)."""
    for flag, value in (("--interval", args.interval), ("--timeout", args.timeout)):
        if not (value > 0 and math.isfinite(value)):
            return _fail(f"{flag}: expected a positive number of seconds, got {value}")
    if args.json and not args.once:
        return _fail("--json prints one snapshot: use it with --once")
    if importlib.util.find_spec("google.protobuf") is None:
        return _fail("protobuf is not installed: pip install 'pyvaccel[remote]'")
    try:
        address = args.address
        if not address:
            from vaccel_core.config import get_config

            address = get_config().rpc_address
        client = StatusClient(address, args.admin_token_file, args.timeout)
    except VaccelError as exc:
        return _fail(str(exc))
    try:
        return _once(client, args.json) if args.once else _live(client, args.interval)
    except VaccelError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()


def _once(client: StatusClient, as_json: bool) -> int:
    snap = client.poll()
    if as_json:
        json.dump(snap, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console

    console = Console()
    _print(console, render(snap, call_rates(None, snap), console.width))
    return 0


def _print(console: Any, view: Any) -> None:
    """Print one frame; the list form (narrow or piped) keeps each entry on one line, however
    long (``grep`` finds it whole), where a terminal would fold it."""
    console.print(view, soft_wrap=console.width < TABLE_MIN_WIDTH)


def _live(client: StatusClient, interval: float) -> int:
    """Refresh until Ctrl-C. The first poll must succeed (else the one-line error); later
    failures show in the view, which goes on polling until the agent answers again."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    snap = client.poll()
    previous: dict[str, Any] | None = None
    error: str | None = None

    def view() -> Any:
        return render(snap, call_rates(previous, snap), console.width, error)

    def next_poll() -> None:
        nonlocal snap, previous, error
        try:
            fresh = client.poll()
        except VaccelError as exc:
            error = str(exc)
            return
        previous, snap, error = snap, fresh, None

    deadline = time.monotonic()
    try:
        if not console.is_terminal:  # piped: one frame after another, never redrawn
            while True:
                _print(console, view())
                console.print()
                deadline = _sleep_until(deadline + interval)
                next_poll()
        with Live(view(), console=console, auto_refresh=False) as live:
            while True:
                deadline = _sleep_until(deadline + interval)
                next_poll()
                live.update(view(), refresh=True)
    except KeyboardInterrupt:
        return 0


def _sleep_until(deadline: float) -> float:
    """Sleep until ``deadline`` (monotonic); a deadline already past starts a new beat."""
    now = time.monotonic()
    if deadline <= now:
        return now
    time.sleep(deadline - now)
    return deadline
