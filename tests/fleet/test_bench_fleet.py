"""``benchmarks/bench_fleet.py --quick`` runs end to end (so that the script cannot rot): real
agents, real guest processes classifying the bundled photo, and the metrics endpoint's count of
the calls it measured."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.remote.conftest import clean_env

REPO = Path(__file__).resolve().parents[2]


def test_quick_run_prints_every_table_with_real_figures() -> None:
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip(
            "the fleet benchmark classifies: onnxruntime is not installed "
            "(pip install 'pyvaccel[onnx]')"
        )
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_fleet.py"), "--quick"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    rows = re.findall(
        r"^(\d)\s+(-|placed|pinned)\s+([\d.]+)\s+([\d.]+)x\s+\[([\d, ]+)\]$", out, re.M
    )
    assert [(k, mode) for k, mode, *_ in rows] == [
        ("1", "-"),
        ("2", "placed"),
        ("2", "pinned"),
        ("3", "placed"),
        ("3", "pinned"),
    ], out
    for k, mode, rate, _, images in rows:
        per_agent = [int(n) for n in images.split(",")]
        assert float(rate) > 0 and len(per_agent) == int(k) and sum(per_agent) > 0, out
        if mode == "pinned":  # two guests pinned to agents 0 and 1
            assert all(per_agent[:2]) and not any(per_agent[2:]), out
    policies = re.findall(
        r"^(classify|device)\s+(least-calls|round-robin)\s+([\d.]+)\s+[\d.]+x\s+([\d.]+)%$",
        out,
        re.M,
    )
    assert [(k, p) for k, p, *_ in policies] == [
        ("classify", "least-calls"),
        ("classify", "round-robin"),
        ("device", "least-calls"),
        ("device", "round-robin"),
    ], out
    for *_, rate, share in policies:
        assert float(rate) > 0 and 100 / 3 - 0.1 <= float(share) <= 100, out
    num = r"\s+[+-]?[\d.]+"
    noop = rf"^noop{num}us{num}us{num}us{num}us{num}us{num}us\s+cost <= 10 us: (met|MISSED)"
    assert re.search(noop, out, re.M), out
    classify = rf"^classify{num}ms{num}ms{num}ms{num}ms{num}%{num}%\s+cost <= 2%: (met|MISSED)"
    assert re.search(classify, out, re.M), out
    counted = re.search(r"on1 and on2: (\d+) and (\d+) Run calls \(this process made (\d+)", out)
    assert counted is not None and len(set(counted.groups())) == 1, out
    record = re.search(
        r"^  ([\d.]+) us off, ([\d.]+) us on: [+-][\d.]+ us per call \((\d+) pairs\), <= 10 us: "
        r"(met|MISSED)$",
        out,
        re.M,
    )
    assert record is not None, out
    assert float(record[1]) > 0 and float(record[2]) > 0 and int(record[3]) > 0, out
