"""benchmarks/bench_batching.py --quick runs end to end (real agents, guest processes), so
that the benchmark cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.remote.conftest import clean_env
from vaccel_core.testing import missing_remote_extra

from ..onnxruntime.ort_fixtures import require_ort, require_weights

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_batching.py"


@pytest.mark.timeout(300)
def test_quick_mode_runs_and_checks_every_reply() -> None:
    reason = missing_remote_extra()
    if reason:
        pytest.skip(reason)
    require_ort()
    require_weights()
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
        env=clean_env(),
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = re.findall(r"^\s+(\d+)\s+(off|on)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", done.stdout, re.M)
    assert [(n, mode) for n, mode, *_ in rows] == [
        ("1", "off"), ("1", "on"), ("2", "off"), ("2", "on"),
    ]  # fmt: skip
    assert all(float(images) > 0 for *_, images, _, _ in rows)
    assert "replies checked: 0 mismatch(es)" in done.stdout
