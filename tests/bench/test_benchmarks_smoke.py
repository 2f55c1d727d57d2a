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
    for row in figures.values():
        assert row["n"] == 2 and row["median_ms"] >= 0, row
        assert row["phases"] == ["Succeeded"], row


def test_lateness_benchmark_smoke() -> None:
    figures = run_benchmark("lateness.py", "--runs", "1")
    assert figures["deadline"]["n"] == figures["cancel"]["n"] == 1


def test_schedules_benchmark_smoke() -> None:
    figures = run_benchmark("schedules.py", "--schedules", "3", "--period", "2", "--periods", "2")
    assert set(figures) == {"operator", "celery-beat"}
    for row in figures.values():
        assert row["expected"] == 6 and 0 < row["n"] <= 9, row  # a window holds 2-3 periods
    assert figures["operator"]["cpu_ms_per_slot"] > 0


def test_concurrency_benchmark_smoke() -> None:
    figures = run_benchmark("concurrency.py", "--runs", "30", "--limit", "3", "--seconds", "0.3")
    ours, baseline = figures["operator"], figures["celery-worker-concurrency"]
    assert ours["runs"] == baseline["runs"] == 30
    assert ours["most_at_once"] == baseline["most_at_once"] == 3
    assert ours["admission"]["n"] == 27 and ours["admission"]["median_ms"] >= 0


def test_scale_benchmark_smoke() -> None:
    figures = run_benchmark("scale.py", "--runs", "10", "--window", "2")
    assert figures["operator"]["runs"] == figures["seed-polling"]["runs"] == 10
    assert figures["operator"]["api_writes_per_run_total"] > 0


def test_finished_benchmark_smoke() -> None:
    """Finished runs kept: this tree's operator on 100 objects (the full run sets main's
    beside it; a clean clone's `main` may be this very tree)."""
    figures = run_benchmark("finished.py", "--runs", "100", "--window", "3", "--variants", ".")
    assert figures["runs"] == 100 and set(figures["variants"]) == {"."}
    for row in figures["variants"].values():
        kept = row["kept"]
        assert row["idle"]["rss_mib"] > 0 and kept["rss_mib"] > 0
        assert kept["start_ready_s"] > 0 and kept["takeover_ready_s"] > 0
        assert kept["window_s"] >= 3 and kept["taskrun_calls_per_minute"] >= 0
        assert set(row["verdicts"]) == {"rss_over_idle", "calls_per_minute", "takeover"}


def test_admission_benchmark_smoke() -> None:
    figures = run_benchmark("admission.py", "--reps", "1")
    assert set(figures["now"]) == set(figures["none"]), figures
    # The bounds answer as the e2e tests find them; without the policy all get in.
    assert figures["now"]["zeros at the values bound"]["status"] == 201
    assert figures["now"]["zeros one past it"]["status"] == 422
    assert figures["none"]["zeros one past it"]["status"] == 201


def test_rabbit_send_benchmark_smoke() -> None:
    figures = run_benchmark("rabbit_send.py", "--sends", "20", "--threads", "4")
    for sender in ("celery", "confirmed"):
        assert figures[sender]["per_s_one_thread"] > 0, figures


def test_gateway_waits_benchmark_smoke() -> None:
    figures = run_benchmark(
        "gateway_waits.py",
        *("--waits", "40", "--runs", "4", "--baseline-waits", "20", "--baseline-runs", "2"),
    )
    ours, baseline = figures["shared"], figures["baseline"]
    assert (ours["answered"], baseline["answered"]) == (40, 20)
    assert ours["unfinished"] == baseline["unfinished"] == ours["failures"] == 0
    # Both share one watch for the namespace.
    assert ours["apiserver_watches"] == baseline["apiserver_watches"] == 1
    assert ours["p99_ms"] > 0 and ours["rss_peak_mib"] > 0


def test_suite_smoke(tmp_path: Path) -> None:
    """The suite end to end at a small scale: every phase measures, counts agree."""
    figures_path, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    runs = 20
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "suite.py"),
            f"--runs={runs}",
            "--rate=20",
            "--paced-seconds=1",
            f"--in-flight={runs}",
            "--window=1",
            "--profile",
            f"--profile-out={tmp_path / 'operator.pyspy.txt'}",
            f"--json={figures_path}",
            f"--png={chart}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(figures_path.read_text())
    assert figures["bare"]["runs"] == runs and figures["bare"]["rate"] > 0
    for phase in ("paced", "burst"):
        assert figures[phase]["phases"] == ["Succeeded"]
        assert figures[phase]["lag"]["n"] == figures["seed"][phase]["lag"]["n"] == runs
        # Every change the watcher saw is a write the API server logged (the audit also
        # logs writes that changed nothing, or were refused).
        writes = figures["writes"][phase]
        assert writes["audit"]["writes"] > 0
        assert writes["audit"]["per_run"] >= writes["watch"]["per_run"] > 0
    assert figures["burst"]["operator_cpu_ms_per_run"] > 0
    assert figures["profile"]["samples"] > 0
    assert sum(figures["profile"]["groups"].values()) == pytest.approx(1, abs=0.01)
    assert figures["scale"]["runs"] == figures["seed"]["scale"]["runs"] == runs
    assert figures["scale"]["operator_rss_mib"] > 0
    assert {row["figure"] for row in figures["table"]} >= {
        "API writes per trivial run (audit log)",
        "status lag, paced 20 runs/s",
        "operator CPU per run (burst) under py-spy",
    }
    assert "| API writes per trivial run (audit log)" in result.stdout
    assert chart.read_bytes().startswith(b"\x89PNG")


def test_backends_benchmark_smoke() -> None:
    figures = run_benchmark("backends.py", "--runs", "200", "--window", "2")
    assert set(figures["scenarios"]) == {"none", "10%"}
    for readers in figures["scenarios"].values():
        assert set(readers) == {"operator", "operator-per-task", "seed-polling"}
        for row in readers.values():
            assert row["reads_per_s"] > 0 and row["reads_due_per_s"] == 40, row
        # Figures are not judged, but a batched read is one statement a turn, not one a run.
        assert readers["operator"]["statements_per_s"] < readers["seed-polling"]["statements_per_s"]
