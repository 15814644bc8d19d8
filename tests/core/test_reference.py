"""docs/reference.md is generated from the catalog and must agree with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vaccel_core.ops import CATALOG
from vaccel_core.reference import render

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reference.md"


def test_committed_reference_matches_the_catalog() -> None:
    assert DOC.read_text() == render(), (
        "docs/reference.md is stale: run `python -m vaccel_core.reference > docs/reference.md`"
    )


def test_the_generator_runs_as_a_module() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vaccel_core.reference"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    assert out.stdout == render()


def test_every_operation_argument_and_result_is_described() -> None:
    text = render()
    for spec in CATALOG.values():
        assert f"## `{spec.method}`\n\nWire name `{spec.name}`," in text
        for param in (*spec.params, *spec.results):
            assert param.doc, f"{spec.method}: {param.name} has no description in the catalog"
    assert "def sgemm(self, session, a, b, c, alpha, beta) -> out" in text
    assert "| 4 | `alpha` | float; `1.0` when not given | scale of a @ b |" in text
    assert "def classify(self, session, image) -> (tags, imgname)" in text
