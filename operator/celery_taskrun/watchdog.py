"""The worker watchdog: a whole worker lost mid-task leaves Celery's record at STARTED
for ever, so the workers of running tasks are pinged, and the runs of one that stays
silent for `workerLostAfter` pings in a row are handed back to the tracker as lost."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from .celery_client import BrokerUnavailable, CeleryClient
from .model import Phase
from .runs import Run

log = logging.getLogger(__name__)


def silent(misses: dict[str, int], running: set[str], alive: set[str]) -> dict[str, int]:
    """Pings missed in a row by each worker of a running task (pure)."""
    return {host: misses.get(host, 0) + 1 for host in running if host not in alive}


class WorkerWatchdog:
    def __init__(
        self,
        celery: CeleryClient,
        *,
        interval: float,
        lost_after: int,
        runs: Callable[[], Iterable[Run]],
        lose: Callable[[Run], None],
    ) -> None:
        self.celery = celery
        self.interval = interval
        self.lost_after = lost_after
        self.runs = runs
        self.lose = lose

    async def watch(self) -> None:
        misses: dict[str, int] = {}
        while True:
            await asyncio.sleep(self.interval)
            running: dict[str, list[Run]] = {}
            for run in self.runs():
                if run.status.phase is Phase.RUNNING and run.status.worker:
                    running.setdefault(run.status.worker, []).append(run)
            if not running:
                misses.clear()
                continue
            try:
                alive = await self.celery.alive(set(running))
            except BrokerUnavailable as exc:  # silence proves nothing when we cannot ask
                log.info("worker ping failed: %s", exc)
                continue
            misses = silent(misses, set(running), alive)
            for host, count in misses.items():
                if count >= self.lost_after:
                    log.warning(
                        "worker %s missed %d pings: its running tasks are lost", host, count
                    )
                    for run in running[host]:
                        self.lose(run)
