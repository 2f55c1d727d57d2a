"""Example tasks, one per scenario of the seed guide, under stable names.

Each is registered as ``taskrun_workers.tasks.<name>`` and is small and deterministic,
so that TaskRuns (and the tests) can drive every outcome: a result, a failure with a
traceback, progress, retries, soft and hard time limits, large results.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, cast

from celery.exceptions import SoftTimeLimitExceeded

from taskrun_workers import ledger
from taskrun_workers.app import app
from taskrun_workers.helpers import on_soft_timeout, report_progress

PREFIX = "taskrun_workers.tasks"
MIB = 1024 * 1024
# Sleeping in short steps keeps a task responsive to the soft time limit's signal and
# lets it count how far it got.
STEP_SECONDS = 0.1
# process_file reports at most this many times, whatever the size.
MAX_PROGRESS_REPORTS = 100

logger = logging.getLogger(__name__)


def _task(name: str, **options: Any) -> Callable[[Callable[..., Any]], Any]:
    return cast(Callable[[Callable[..., Any]], Any], app.task(name=f"{PREFIX}.{name}", **options))


def _sleep_for(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(STEP_SECONDS, left))


@_task("calculate_sum")
def calculate_sum(numbers: list[float]) -> float:
    """The seed's first example: ``[1, 2, 3, 4, 5]`` -> 15."""
    return sum(numbers)


@_task("fail")
def fail(message: str) -> None:
    """Always fails: FAILURE with a ValueError and its traceback."""
    raise ValueError(message)


@_task("progress", bind=True)
def progress(self: Any, steps: int, delay: float) -> dict[str, int]:
    """``steps`` steps of ``delay`` seconds, reporting PROGRESS after each."""
    for done in range(1, steps + 1):
        _sleep_for(delay)
        report_progress(self, done, steps)
    return {"steps": steps}


@_task("flaky", bind=True)
def flaky(self: Any, fail_times: int, countdown: float = 0.5) -> dict[str, int]:
    """Fails its first ``fail_times`` attempts, each retried (state RETRY) after ``countdown``."""
    attempt = self.request.retries
    if attempt < fail_times:
        raise self.retry(
            exc=RuntimeError(f"attempt {attempt + 1} of {fail_times + 1} fails on purpose"),
            countdown=countdown,
            max_retries=fail_times,
        )
    return {"attempts": attempt + 1}


@_task("sleep")
def sleep(seconds: float) -> float:
    """Sleeps ``seconds`` (in short steps) and returns them: the long-running task."""
    _sleep_for(seconds)
    return seconds


@_task("span", bind=True)
def span(self: Any, seconds: float) -> float:
    """Sleeps ``seconds`` and records in the ledger when it started and ended, from
    inside the task (before its result is stored): how many runs execute at once, as the
    worker itself saw it (the concurrency limits' tests and benchmark)."""
    started = time.time()
    _sleep_for(seconds)
    ledger.record_for(self, "span", started=started, ended=time.time())
    return seconds


@_task("cleanup_on_soft_timeout", bind=True)
def cleanup_on_soft_timeout(self: Any, seconds: float, reraise: bool = True) -> dict[str, Any]:
    """Works ``seconds``; on a soft time limit, cleans up (recorded in the ledger), then
    either re-raises (FAILURE SoftTimeLimitExceeded) or returns a partial result."""
    started = time.monotonic()
    try:
        _sleep_for(seconds)
    except SoftTimeLimitExceeded:
        ledger.record_for(self, "cleanup")
        if reraise:
            raise
        return {"completed": False, "elapsed": round(time.monotonic() - started, 1)}
    return {"completed": True, "elapsed": round(time.monotonic() - started, 1)}


@_task("process_file", bind=True)
def process_file(self: Any, size_bytes: int, seconds_per_mb: float) -> dict[str, int]:
    """The seed's file processor: work proportional to ``size_bytes``, with progress,
    and cleanup of the partial output if the soft time limit strikes."""
    if size_bytes < 0:
        raise ValueError(f"size_bytes must not be negative, got {size_bytes}")
    chunk = max(MIB, math.ceil(size_bytes / MAX_PROGRESS_REPORTS))
    processed = 0

    def discard_partial_output() -> None:
        logger.warning("discarding %d of %d bytes processed", processed, size_bytes)

    with on_soft_timeout(discard_partial_output):
        while processed < size_bytes:
            step = min(chunk, size_bytes - processed)
            _sleep_for(seconds_per_mb * step / MIB)
            processed += step
            report_progress(self, processed, size_bytes, unit="bytes")
    return {"bytes": processed}


@_task("big_result")
def big_result(size_bytes: int) -> str:
    """A result of ``size_bytes`` characters, for results too large for a status."""
    if size_bytes < 0:
        raise ValueError(f"size_bytes must not be negative, got {size_bytes}")
    return "x" * size_bytes


@_task("echo")
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Returns its arguments: ``{"args": [...], "kwargs": {...}}``."""
    return {"args": list(args), "kwargs": kwargs}
