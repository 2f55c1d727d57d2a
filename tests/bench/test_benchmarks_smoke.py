"""Small runs of the benchmarks, so that they cannot rot (figures are not judged)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def run_benchmark(script: str, *args: str) -> dict[str, Any]:
    """Run benchmarks/SCRIPT with --json and return its figures."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def test_latency_benchmark_smoke() -> None:
    figures = run_benchmark("latency.py", "--runs", "2", "--gap", "0.2")
    assert set(figures) == {"wakeups-on", "wakeups-off", "seed-polling"}
    assert all(row["n"] == 2 and row["median_ms"] >= 0 for row in figures.values())


def test_lateness_benchmark_smoke() -> None:
    figures = run_benchmark("lateness.py", "--runs", "1")
    assert figures["deadline"]["n"] == figures["cancel"]["n"] == 1


def test_scale_benchmark_smoke() -> None:
    figures = run_benchmark("scale.py", "--runs", "10", "--window", "2")
    assert figures["operator"]["runs"] == figures["seed-polling"]["runs"] == 10
    assert figures["operator"]["api_writes_per_run_total"] > 0
