"""``vaccel models [list|build|verify] [NAME]``: the models the onnxruntime backend knows.

``list`` shows each model, where its weights come from and whether it is built and intact;
``build`` converts the weights into the cache folder (once; ``verify`` checks it later);
``verify`` re-hashes the cached file against its record and runs it once in onnxruntime.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import models


def _names(args: argparse.Namespace) -> list[str]:
    name = getattr(args, "name", None)
    if name:
        models.get_model_info(name)  # raises UnknownModelError naming the known ones
        return [name]
    return [info.name for info in models.list_models()]


def _size(path: Any) -> str:
    try:
        return f"{path.stat().st_size / 1e6:.1f} MB"
    except OSError:
        return "-"


def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"Models known to the onnxruntime backend (cache: {models.cache_dir()})")
    for name in _names(args):
        info = models.get_model_info(name)
        path = models.model_path(name)
        if path.exists():
            ok, detail = models.verify_model(name)
            status = "[green]built, verified[/]" if ok else f"[red]{detail}[/]"
        else:
            status = "[yellow]not built[/] (run: vaccel models build)"
        table = Table(title=name, title_justify="left", show_header=False)
        table.add_column("key", style="bold", no_wrap=True)
        table.add_column("value")
        table.add_row("description", info.description)
        table.add_row("weights", f"{info.pip_requirement} ({info.source_license})")
        table.add_row("input", f"{info.input_name} {list(info.input_shape)}")
        table.add_row("status", status)
        table.add_row("file", f"{path} ({_size(path)})")
        console.print(table)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    for name in _names(args):
        path = models.ensure_model(name)
        print(f"{name}: {path}")
    return 0


def _smoke_run(name: str) -> str:
    """Load the model in onnxruntime and run it on a blank image; returns a summary."""
    import numpy as np

    from .inference import import_ort

    ort = import_ort()
    session = ort.InferenceSession(str(models.model_path(name)), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in inp.shape]
    out = session.run(None, {inp.name: np.zeros(shape, dtype=np.float32)})[0]
    if out.shape[-1] != 1000 or not np.all(np.isfinite(out)):
        raise models.ModelError(f"{name}: unexpected output of shape {out.shape}")
    return f"runs in onnxruntime {ort.__version__} (output {list(out.shape)})"


def cmd_verify(args: argparse.Namespace) -> int:
    failed = 0
    for name in _names(args):
        ok, detail = models.verify_model(name)
        if ok:
            detail = f"{detail}; {_smoke_run(name)}"
        print(f"{name}: {detail}" if ok else f"{name}: FAILED: {detail}")
        failed += not ok
    return 1 if failed else 0


_COMMANDS = {"list": cmd_list, "build": cmd_build, "verify": cmd_verify}


def run(args: argparse.Namespace) -> int:
    """Run ``vaccel models ACTION [NAME]``; errors are one line on stderr and status 1."""
    from vaccel_core.errors import VaccelError

    action = getattr(args, "action", None) or "list"
    try:
        return _COMMANDS[action](args)
    except (models.ModelError, VaccelError) as exc:
        print(f"vaccel models {action}: error: {exc}", file=sys.stderr)
        return 1
