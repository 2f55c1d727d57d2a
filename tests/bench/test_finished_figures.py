"""benchmarks/finished.py's verdicts: issue 19's targets, met or not."""

from __future__ import annotations

from typing import Any

import pytest
from finished import verdicts


def row(idle: float, kept: float, calls: float, takeover: float) -> dict[str, Any]:
    return {
        "idle": {"rss_mib": idle},
        "kept": {"rss_mib": kept, "taskrun_calls_per_minute": calls, "takeover_ready_s": takeover},
    }


@pytest.mark.parametrize(
    ("figures", "met"),
    [
        (row(100, 150, 0, 10), {"rss_over_idle": True, "calls_per_minute": True, "takeover": True}),
        (
            row(100, 150.1, 0, 3),
            {"rss_over_idle": False, "calls_per_minute": True, "takeover": True},
        ),
        (
            row(100, 101, 0.5, 3),
            {"rss_over_idle": True, "calls_per_minute": False, "takeover": True},
        ),
        (
            row(100, 101, 0, 10.01),
            {"rss_over_idle": True, "calls_per_minute": True, "takeover": False},
        ),
    ],
)
def test_verdicts(figures: dict[str, Any], met: dict[str, bool]) -> None:
    assert verdicts(figures) == met
