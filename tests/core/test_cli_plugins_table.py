"""``vaccel plugins``: text in square brackets is shown as written (not taken for console
markup), and at 80 columns (piped) every value is printed whole, one field a line."""

from __future__ import annotations

import io

from rich.console import Console

from vaccel_core.cli import _print_plugins

REASON = "onnxruntime is not installed (pip install 'pyvaccel[onnx]')"


def report() -> dict:
    backend = {
        "name": "onnxruntime",
        "distribution": "pyvaccel-distribution-with-a-long-name",
        "version": "0.1.0",
        "status": "unavailable",
        "reason": REASON,
        "details": {},
        "type": ["CPU", "GPU"],
        "operations": ["image_classify", "blas_sgemm"],
    }
    failure = {
        "group": "vaccel.backends",
        "name": "broken",
        "distribution": "vaccel-broken",
        "version": "1.0",
        "error": "ImportError: [bold]no[/bold] module",
    }
    return {"backends": [backend], "transports": [], "failures": [failure]}


def printed(width: int) -> str:
    out = io.StringIO()
    _print_plugins(report(), Console(file=out, width=width, color_system=None))
    return out.getvalue()


def test_square_brackets_are_shown_and_nothing_is_cut_at_80_columns() -> None:
    text = printed(80)
    assert "…" not in text
    assert f"reason / details: {REASON}" in text
    assert "distribution: pyvaccel-distribution-with-a-long-name" in text
    assert "error: ImportError: [bold]no[/bold] module" in text
    assert "operations: image_classify, blas_sgemm" in text


def test_a_wide_terminal_gets_tables_with_the_same_text() -> None:
    text = printed(240)
    assert "┃ name" in text and REASON in text and "[bold]no[/bold]" in text
