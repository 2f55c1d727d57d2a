"""The suite's chart: status lag distribution (paced and burst, ours and the seed's
strategy) and the burst's throughput over time, from the suite's JSON.

    python benchmarks/plot.py docs/benchmarks.json docs/benchmarks.png
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
from figures import TARGET_BURST_RATIO, TARGET_PACED_P99_MS, bin_width, throughput

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # (after the backend is chosen)


def _cdf(axis: Any, lags_ms: Sequence[float], label: str, style: str) -> None:
    if not lags_ms:
        return
    ordered = sorted(max(lag, 0.1) for lag in lags_ms)
    shares = [(i + 1) / len(ordered) for i in range(len(ordered))]
    axis.step(ordered, shares, style, where="post", label=f"{label} (n={len(ordered)})")


def _steps(axis: Any, seconds: Sequence[float], width: float, style: str, label: str) -> None:
    """How many of `seconds` fall in each bin of `width`, per second, as steps."""
    rates = throughput(seconds, 0.0, width)
    edges = [i * width for i in range(len(rates) + 1)]
    axis.stairs(rates, edges, linestyle=style[2:] or "-", color=style[:2], label=label)


def draw(results: Mapping[str, Any], path: Path) -> None:
    seed = results.get("seed") or {}
    paced, burst, bare = results.get("paced"), results.get("burst"), results.get("bare")
    meta = results.get("meta") or {}
    figure, (lag_axis, rate_axis) = plt.subplots(1, 2, figsize=(13, 5))
    if paced:
        _cdf(lag_axis, paced["lags_ms"], f"operator, paced {paced['arrival_rate']:g}/s", "C0-")
        _cdf(lag_axis, (seed.get("paced") or {}).get("lags_ms", []), "seed's polling, paced", "C0:")
    if burst:
        _cdf(lag_axis, burst["lags_ms"], f"operator, burst of {burst['runs']:,}", "C1-")
        _cdf(lag_axis, (seed.get("burst") or {}).get("lags_ms", []), "seed's polling, burst", "C1:")
    lag_axis.axvline(TARGET_PACED_P99_MS, color="grey", linestyle="--", label="target p99 (paced)")
    lag_axis.axhline(0.99, color="grey", linewidth=0.5)
    lag_axis.set_xscale("log")
    lag_axis.set_xlabel("status lag: backend date_done -> a watcher sees the end (ms)")
    lag_axis.set_ylabel("share of runs")
    lag_axis.set_title("Status lag distribution")
    lag_axis.legend(fontsize=8, loc="lower right")
    lag_axis.grid(True, which="both", alpha=0.3)
    if burst:
        width = bin_width(burst["seconds"])
        _steps(rate_axis, burst["finished_s"], width, "C1-", "runs finished (operator)")
        _steps(rate_axis, burst["created_s"], width, "C2-", "TaskRuns created")
        seed_burst = seed.get("burst") or {}
        if seed_burst:
            _steps(
                rate_axis, seed_burst["finished_s"], width, "C1:", "tasks ended (seed's polling)"
            )
        rate_axis.axhline(
            burst["rate"],
            color="C1",
            linewidth=0.7,
            linestyle="--",
            label=f"end-to-end average {burst['rate']:g}/s",
        )
        if bare:
            rate_axis.axhline(
                bare["rate"],
                color="grey",
                linewidth=0.7,
                label=f"bare create rate, operator stopped ({bare['rate']:g}/s)",
            )
            rate_axis.axhline(
                TARGET_BURST_RATIO * bare["rate"],
                color="grey",
                linestyle="--",
                label=f"target: {TARGET_BURST_RATIO:g} x bare",
            )
        rate_axis.set_title(f"Burst of {burst['runs']:,} runs: throughput over time")
    rate_axis.set_xlabel("seconds from the first create (or send)")
    rate_axis.set_ylabel("per second")
    rate_axis.legend(fontsize=8)
    rate_axis.grid(True, alpha=0.3)
    figure.suptitle(
        f"celery-taskrun benchmark suite, {meta.get('date', '')}, operator at"
        f" {meta.get('operator_commit', '?')}"
        f" ({meta.get('cpus', '?')} cores, the whole stack on them)",
        fontsize=10,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", type=Path)
    parser.add_argument("png", type=Path)
    args = parser.parse_args(argv)
    draw(json.loads(args.json.read_text()), args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
