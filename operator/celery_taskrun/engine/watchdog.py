"""The worker watchdog: a worker lost mid-task leaves Celery's record at STARTED for
ever, so the workers of running tasks are asked, every `workerCheckInterval`, about
those tasks; a run whose task its worker does not report (the worker is silent, or
answers without it: restarted in place under the same name, or cut off and back) for
`workerLostAfter` checks in a row is handed back to the tracker as lost.

The question is about the task, not the host: a worker that answers a ping proves
nothing about a task it no longer has."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping

from celery_taskrun.api.model import Phase
from celery_taskrun.clients.celery_client import BrokerUnavailable
from celery_taskrun.engine.ports import BrokerPort
from celery_taskrun.engine.runs import Run

log = logging.getLogger(__name__)


def misses(
    before: Mapping[str, int], running: Mapping[str, str], held: Mapping[str, set[str]]
) -> dict[str, int]:
    """Checks in a row each running task (task id -> its worker) went unreported (pure)."""
    return {
        task_id: before.get(task_id, 0) + 1
        for task_id, worker in running.items()
        if task_id not in held.get(worker, set())
    }


class WorkerWatchdog:
    def __init__(
        self,
        celery: BrokerPort,
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
        missed: dict[str, int] = {}
        while True:
            await asyncio.sleep(self.interval)
            running = {
                run.status.taskId: run
                for run in self.runs()
                if run.status.phase is Phase.RUNNING and run.status.worker and run.status.taskId
            }
            if not running:
                missed.clear()
                continue
            workers = {task_id: run.status.worker or "" for task_id, run in running.items()}
            try:
                held = await self.celery.holding(list(running), set(workers.values()))
            except BrokerUnavailable as exc:  # silence proves nothing when we cannot ask
                log.info("asking the workers failed: %s", exc)
                continue
            missed = misses(missed, workers, held)
            for task_id, count in missed.items():
                if count >= self.lost_after:
                    message = "worker %s has not reported task %s in %d checks: it is lost"
                    log.warning(message, workers[task_id], task_id, count)
                    self.lose(running[task_id])
