"""The stepper: one step of one run, as the core plans it.

It reads the run's record when no news brought it, asks `core.step.decide` for a plan,
and applies it through the effects: a revoke, a send, the status write (held by the
mailbox), then the poller's next look or the reaper.  A step that fails unexpectedly
(a bug) delays its run alone; after `MAX_STEP_ERRORS` in a row the run ends `Failed` /
`InternalError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.api.model import Phase, Reason, TaskRunStatus
from celery_taskrun.clients.errors import Gone, KubeError
from celery_taskrun.core.content import Bounds
from celery_taskrun.core.step import (
    Plan,
    View,
    after_asking,
    after_send,
    decide,
    ended,
    moved,
    revoke_of,
)
from celery_taskrun.core.timing import first_submitted, parse_time
from celery_taskrun.core.transitions import Observed
from celery_taskrun.engine import metrics
from celery_taskrun.engine.concurrency import Limiter
from celery_taskrun.engine.effects import Effects
from celery_taskrun.engine.mailbox import Mailbox
from celery_taskrun.engine.poller import Poller
from celery_taskrun.engine.reaper import Reaper
from celery_taskrun.engine.registry import Registry
from celery_taskrun.engine.runs import Run
from celery_taskrun.engine.sender import Deleted, NotSent
from celery_taskrun.engine.writer import Written, posts_event

log = logging.getLogger(__name__)

RETRY_WRITE_SECONDS = 2.0
MAX_STEP_ERRORS = 5


class Stepper:
    def __init__(
        self,
        config: OperatorConfig,
        effects: Effects,
        registry: Registry,
        poller: Poller,
        mailbox: Mailbox,
        reaper: Reaper,
        limiter: Limiter,
        *,
        now: Callable[[], datetime],
    ) -> None:
        self.config = config
        self.bounds = Bounds(config.maxResultBytes, config.maxTracebackBytes)
        self.effects = effects
        self.registry = registry
        self.poller = poller
        self.mailbox = mailbox
        self.reaper = reaper
        self.limiter = limiter
        self.now = now

    async def attempt(self, run: Run, observed: Observed | None) -> None:
        try:
            await self.step(run, observed)
        except Exception as exc:  # a bug: this run alone is delayed, then ended
            metrics.STEP_ERRORS.inc()
            run.box.errors += 1
            errors = run.box.errors
            log.exception("handling %s/%s failed (%d in a row)", run.namespace, run.name, errors)
            if errors >= MAX_STEP_ERRORS:
                await self._give_up(run, exc)
            else:
                self.poller.look(run, min(2.0**errors, 60.0))
            return
        run.box.errors = 0

    async def step(self, run: Run, observed: Observed | None) -> None:
        view = run.view()
        if not view.sent and view.problem is None:
            wait = self.limiter.ask(run)
            if wait is not None:
                if wait.why is None:
                    return  # not every TaskRun is counted yet: the limiter wakes it
                view = replace(view, throttled=wait.why)
        if view.sent and observed is None:
            observed = await self.poller.read_one(run)
        now = self.now()
        plan = decide(view, observed, now, self.config, self.bounds)
        if plan.ask is not None:
            plan = after_asking(view, plan.status, await self.effects.ask(plan.ask), now)
        if plan.revoke is not None:
            await self.effects.revoke(run, plan.revoke)
        if plan.send is not None:
            await self._send(run, view, plan, now)
            return
        await self._commit(run, plan.status)

    async def _send(self, run: Run, view: View, plan: Plan, now: datetime) -> None:
        assert plan.send is not None
        task_id = plan.send.message.task_id
        self.registry.bind(task_id, run)  # a wake-up may come before the status is written
        result = await self.effects.send(run, plan.send.message)
        if isinstance(result, Deleted):
            self.registry.forget(run.uid)
            return
        if isinstance(result, NotSent):
            if plan.previous is None:
                self.registry.unbind(task_id)
            status = after_send(view, plan, result.error, permanent=result.permanent, now=now)
            await self._commit(run, status)
            return
        if not self.registry.holds(run):
            # Deleted while it was being sent: the reaper may have revoked too early.
            revoke = revoke_of(view, task_id, True, "TaskRun deleted", now, self.config)
            await self.effects.revoke(run, revoke)
            return
        if plan.previous is not None:
            self.registry.unbind(plan.previous.taskId)
        admitted = self.limiter.admitted(run.uid)
        # Announced when its wait was (a wait shorter than the status hold shows neither).
        waited = run.written_phase == (Phase.PENDING, Reason.THROTTLED)
        if admitted and waited and posts_event(self.config.events, Phase.PENDING, False):
            await self.effects.event(run, "Normal", "Admitted", admitted)
        await self._commit(run, after_send(view, plan, None, permanent=False, now=now))

    async def _give_up(self, run: Run, exc: Exception) -> None:
        """End a run the operator keeps failing to handle, so it never hangs."""
        message = (
            f"the operator failed {run.box.errors} times in a row handling this run "
            f"({type(exc).__name__}: {exc}); see its log"
        )
        view, now = run.view(), self.now()
        task_id = run.status.taskId if run.sent else None
        try:
            await self._commit(run, ended(view, Reason.INTERNAL_ERROR, message, now))
            if task_id:
                revoke = revoke_of(view, task_id, True, "internal error", now, self.config)
                await self.effects.revoke(run, revoke)
        except Exception:  # even ending it fails: stop following it rather than loop
            log.exception("giving up on %s/%s", run.namespace, run.name)
            self.registry.forget(run.uid)

    async def _commit(self, run: Run, status: TaskRunStatus) -> None:
        """Write what changed, then follow on: finish a run that ended, else plan."""
        if status is run.status and run.synced:
            run.polls += 1  # most polls: nothing new, nothing to write
            self.poller.plan(run)
            return
        if status.phase is not None and status.phase.terminal:
            self.limiter.release(
                run.uid
            )  # the task is over: its places go now, not after the write
        if await self.mailbox.hold(run, status):  # news came meanwhile: it is obsolete
            run.status, run.synced = status, False  # the next step writes what it becomes
            return
        before = run.status
        written = await self.effects.write(run, status)
        if written is not Written.FAILED:
            self.mailbox.written(run)
        if written in (Written.GONE, Written.REFUSED):
            self.registry.forget(run.uid)  # gone, or no status of it can ever be written
            return
        if written is Written.STALE:
            await self._reread(run)
            return
        if written is Written.FAILED:
            run.status = status  # still owed: the next step writes it
            self.poller.look(run, RETRY_WRITE_SECONDS)
            return
        self._measure(run, before)
        if run.finished:
            await self.reaper.finish(run)
            return
        run.polls = 0 if moved(before, run.status) else run.polls + 1
        self.poller.plan(run)

    async def _reread(self, run: Run) -> None:
        """A status write refused as made on a stale view: someone else wrote the object
        (another operator, a user), or the name holds a new object.  Nothing is
        overwritten blindly: the run takes the object as it is now and is stepped again
        (or let go, or finished, as that view says)."""
        try:
            body = await self.effects.read(run)
        except Gone:
            self.registry.forget(run.uid)
            return
        except KubeError as exc:
            log.warning("%s/%s not read again: %s", run.namespace, run.name, exc)
            self.poller.look(run, RETRY_WRITE_SECONDS)
            return
        run.refresh(body)
        if run.finished:
            await self.reaper.finish(run)
            return
        self.poller.look(run, 0)

    def _measure(self, run: Run, before: TaskRunStatus) -> None:
        """Queue wait once a run is first written started, run duration once it ended."""
        status = run.status
        sent, started = parse_time(status.submittedAt), parse_time(status.startedAt)
        if started and sent and not before.startedAt:
            queue = metrics.queue_label(run.spec.queue or self.config.defaultQueue)
            metrics.QUEUE_WAIT.labels(queue).observe(max((started - sent).total_seconds(), 0))
        first, done = first_submitted(status), parse_time(status.completedAt)
        if run.finished and first and done and status.phase is not None:
            seconds = max((done - first).total_seconds(), 0)
            metrics.RUN_DURATION.labels(status.phase.value).observe(seconds)
