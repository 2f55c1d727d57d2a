"""The mailbox: news of a run, handled one step at a time.

Each run is handled by one step at a time, with at most one more waiting (the latest
news): a task that reports progress in a tight loop costs one pending step, and a
slow call for one run never holds up another, since every run's steps run on their
own.  A status in flight is held `statusHoldSeconds` before it is written, so news
within that time makes it obsolete (a fast task's Queued and Running need no writes
of their own); an end is written at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime

from celery_taskrun.api.model import TaskRunStatus
from celery_taskrun.core.step import running
from celery_taskrun.core.transitions import Observed
from celery_taskrun.engine.runs import News, Run
from celery_taskrun.engine.tasks import Tasks

Step = Callable[[Run, Observed | None], Awaitable[None]]


class Mailbox:
    def __init__(
        self,
        tasks: Tasks,
        *,
        step: Step,
        follows: Callable[[Run], bool],
        hold_seconds: float,
        now: Callable[[], datetime],
        monotonic: Callable[[], float],
    ) -> None:
        self.tasks = tasks
        self.step = step
        self.follows = follows  # whether the run is still followed (not forgotten)
        self.hold_seconds = hold_seconds
        self.now = now
        self.monotonic = monotonic

    def deliver(self, run: Run, news: News | None) -> None:
        """Ask for a step of `run`, with what was learnt of its task (the latest wins)."""
        box = run.box
        if news is not None:
            task_id, reading = news
            seen = run.seen_running
            if running(reading) and (seen is None or seen[0] != task_id):
                run.seen_running = (task_id, self.now())
            box.news = news
        box.wanted = True
        if box.waiter is not None and not box.waiter.done():
            box.waiter.set_result(None)  # a held write may be obsolete now
        if not box.busy:
            box.busy = True
            self.tasks.spawn(self._drive(run))

    async def _drive(self, run: Run) -> None:
        box = run.box
        try:
            while box.wanted and self.follows(run):
                box.wanted = False
                news, box.news = box.news, None
                observed = news[1] if news and news[0] == run.status.taskId else None
                await self.step(run, observed)
        finally:
            box.busy = False

    async def hold(self, run: Run, status: TaskRunStatus) -> bool:
        """Hold `status` before it is written; True when news came meanwhile (the next
        step writes what the status becomes instead)."""
        if status.phase is not None and status.phase.terminal:
            return False
        box = run.box
        # Held from the first change not written yet: news in a tight loop (progress)
        # never keeps a status from being written for longer than the hold.
        now = self.monotonic()
        if box.unwritten_since is None:
            box.unwritten_since = now
        left = self.hold_seconds - (now - box.unwritten_since)
        if left <= 0:
            return False
        if not box.wanted:
            box.waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait({box.waiter}, timeout=left)
            finally:
                box.waiter = None
        return box.wanted

    def written(self, run: Run) -> None:
        """The status owed was written: the next change starts a new hold."""
        run.box.unwritten_since = None
