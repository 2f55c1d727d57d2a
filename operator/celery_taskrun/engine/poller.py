"""The poller: one schedule of when each run is looked at next (and each finished run
deleted), and a loop that reads the result backend once for all runs due together."""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Callable, Sequence
from datetime import datetime

from celery_taskrun.clients.backend import BackendUnavailable
from celery_taskrun.core import records
from celery_taskrun.core.schedule import Schedule
from celery_taskrun.core.timing import next_delay
from celery_taskrun.core.transitions import BackendError, Observed
from celery_taskrun.engine import faults, metrics
from celery_taskrun.engine.ports import BackendPort
from celery_taskrun.engine.runs import News, Run
from celery_taskrun.engine.tasks import Tasks

# The loop turns at least this often, so `health` can tell a stalled loop.
HEARTBEAT_SECONDS = 1.0


class Duty(enum.Enum):
    LOOK = "look"  # read the run's record and step it
    EXPIRE = "expire"  # delete the finished run (its TTL or history limit says so)
    SWEEP = "sweep"  # delete every finished run past its TTL (one entry for them all)


Due = tuple[Duty, str]  # (what, the run's uid)


class Poller:
    def __init__(
        self,
        backend: BackendPort,
        tasks: Tasks,
        *,
        run_of: Callable[[str], Run | None],
        deliver: Callable[[Run, News | None], None],
        expire: Callable[[str], None],
        sweep: Callable[[], None],
        now: Callable[[], datetime],
        monotonic: Callable[[], float],
    ) -> None:
        self.backend = backend
        self.tasks = tasks
        self.run_of = run_of
        self.deliver = deliver
        self.expire = expire
        self.sweep = sweep
        self.now = now
        self.monotonic = monotonic
        self.schedule: Schedule[Due] = Schedule(monotonic)
        self.wake = asyncio.Event()
        self.beat = monotonic()

    def at(self, due: Due, delay: float) -> None:
        if self.schedule.at(due, delay):
            self.wake.set()

    def look(self, run: Run, delay: float) -> None:
        self.at((Duty.LOOK, run.uid), delay)

    def plan(self, run: Run) -> None:
        """The one place that decides when a run is looked at next."""
        delay = next_delay(
            run.status, run.backoff, run.polls, self.now(), run.created, self.monotonic()
        )
        if delay is None:
            self.drop((Duty.LOOK, run.uid))
        else:
            self.look(run, delay)

    def drop(self, due: Due) -> None:
        self.schedule.drop(due)

    def reset(self) -> None:
        self.schedule = Schedule(self.monotonic)

    async def loop(self) -> None:
        while True:
            await faults.stall_point("loop")
            reads: list[Run] = []
            for duty, uid in self.schedule.due():
                if duty is Duty.EXPIRE:
                    self.expire(uid)
                elif duty is Duty.SWEEP:
                    self.sweep()
                elif (run := self.run_of(uid)) is not None:
                    if run.sent:
                        reads.append(run)
                    else:
                        self.deliver(run, None)
            if reads:
                self.tasks.spawn(self._read(reads))
            self.beat = self.monotonic()
            self.wake.clear()
            wait = self.schedule.wait()
            timeout = HEARTBEAT_SECONDS if wait is None else min(wait, HEARTBEAT_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)

    async def _read(self, due: Sequence[Run]) -> None:
        """One backend round trip for every run due now, then a step for each."""
        ids = [run.status.taskId or "" for run in due]
        metrics.BACKEND_READS.inc()
        try:
            found = await self.backend.read(ids)
        except BackendUnavailable as exc:
            metrics.BACKEND_ERRORS.inc()
            metrics.BACKEND_UP.labels("result_backend").set(0)
            error = BackendError(str(exc))
            for run, task_id in zip(due, ids, strict=True):
                self.deliver(run, (task_id, error))
            return
        metrics.BACKEND_UP.labels("result_backend").set(1)
        for run, task_id in zip(due, ids, strict=True):
            self.deliver(run, (task_id, found.get(task_id, records.NO_RECORD)))

    async def read_one(self, run: Run) -> Observed:
        task_id = run.status.taskId or ""
        try:
            return (await self.backend.read([task_id]))[task_id]
        except BackendUnavailable as exc:
            metrics.BACKEND_ERRORS.inc()
            return BackendError(str(exc))
