"""A user's own tasks, imported by the test workers through TASKRUN_WORKER_IMPORTS."""

from __future__ import annotations

import logging
import time
from typing import Any

from taskrun_workers.app import app
from taskrun_workers.helpers import on_soft_timeout, report_progress

logger = logging.getLogger(__name__)


@app.task(bind=True, name="taskrun_user_tasks.crunch")
def crunch(self: Any, items: int) -> int:
    for done in range(1, items + 1):
        report_progress(self, done, items, stage="crunching")
    return items


def forget_partial_work() -> None:
    logger.warning("forgetting partial work")


@app.task(name="taskrun_user_tasks.stubborn")
@on_soft_timeout(forget_partial_work)
def stubborn(seconds: float) -> float:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return seconds
