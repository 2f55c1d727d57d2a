"""The reaper: what becomes of a run once it ends or is deleted.

A finished run's finalizer comes off (it only guards in-flight work); then its TTL
and its history limit say when it is deleted (`retention` decides, the poller's
schedule keeps the time).  A run being deleted has its task revoked if in flight,
then its finalizer removed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import datetime

from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.api.model import Phase
from celery_taskrun.clients.errors import Gone, KubeError
from celery_taskrun.core.retention import (
    Finished,
    History,
    beyond,
    history_key,
    history_limit,
    ttl_delay,
    ttl_for,
)
from celery_taskrun.core.sending import derived
from celery_taskrun.core.step import revoke_of
from celery_taskrun.core.timing import parse_time
from celery_taskrun.engine import metrics
from celery_taskrun.engine.effects import Effects
from celery_taskrun.engine.poller import Duty, Poller
from celery_taskrun.engine.registry import Registry
from celery_taskrun.engine.runs import Run
from celery_taskrun.engine.tasks import Tasks

log = logging.getLogger(__name__)

RETRY_DELETE_SECONDS = 30.0


class Reaper:
    def __init__(
        self,
        config: OperatorConfig,
        effects: Effects,
        registry: Registry,
        poller: Poller,
        tasks: Tasks,
        *,
        now: Callable[[], datetime],
    ) -> None:
        self.config = config
        self.effects = effects
        self.registry = registry
        self.poller = poller
        self.tasks = tasks
        self.now = now
        self.expiring: dict[str, tuple[str, str]] = {}  # uid -> (namespace, name)
        # Finished runs the history limits count: by history, and each run's history.
        self.history: dict[History, list[Finished]] = {}
        self.counted: dict[str, History] = {}

    def clear(self) -> None:
        self.expiring.clear()
        self.history.clear()
        self.counted.clear()

    async def finish(self, run: Run) -> None:
        """A terminal run: drop the finalizer, then its TTL and history.  Once
        released, the run's later watch events (ours, arriving after the fact, with
        the finalizer still on) are not news: see `Tracker.observe`."""
        self.registry.forget(run.uid)
        self.registry.release(run.uid)  # at once: an echo arriving during the write is none
        try:
            if run.guarded:
                await self.effects.release(run)
        except Gone:
            return
        except KubeError as exc:
            self.registry.unrelease(run.uid)  # the next event of it tries again
            metrics.API_WRITE_ERRORS.labels("metadata").inc()
            log.warning("finalizer of %s/%s not removed: %s", run.namespace, run.name, exc)
        done = parse_time(run.status.completedAt) or self.now()
        ttl = ttl_for(
            run.spec.ttlSecondsAfterFinished, self.config.ttlSecondsAfterFinished, run.gitops
        )
        if ttl is not None and run.uid not in self.expiring:
            self.expiring[run.uid] = (run.namespace, run.name)
            self.poller.at((Duty.EXPIRE, run.uid), ttl_delay(ttl, done, self.now()))
        if run.gitops is None:
            self._count(run, done)

    def _count(self, run: Run, done: datetime) -> None:
        """Count a finished run in its history; delete what the limits leave out."""
        phase = run.status.phase or Phase.FAILED
        limit = history_limit(
            self.config.successfulRunsHistoryLimit, self.config.failedRunsHistoryLimit, phase
        )
        if limit is None or run.uid in self.counted:
            return
        key = history_key(self.config.historyLimitsPer, run.namespace, run.spec.task, phase)
        history = self.history.setdefault(key, [])
        history.append(Finished(done, run.namespace, run.name, run.uid))
        self.counted[run.uid] = key
        for old in beyond(history, limit):
            self._uncount(old.uid)
            self.expiring[old.uid] = (old.namespace, old.name)
            self.expire(old.uid)

    def _uncount(self, uid: str) -> None:
        key = self.counted.pop(uid, None)
        if key is not None:
            self.history[key] = [f for f in self.history[key] if f.uid != uid]

    def expire(self, uid: str) -> None:
        """Delete a finished run now (its TTL or history limit came)."""
        self.tasks.spawn(self._expire(uid))

    async def _expire(self, uid: str) -> None:
        where = self.expiring.get(uid)
        if where is None:
            return
        try:
            await self.effects.delete(*where, uid)
        except Gone:
            pass
        except KubeError as exc:
            metrics.API_WRITE_ERRORS.labels("delete").inc()
            log.warning("TTL deletion of %s/%s failed: %s", *where, exc)
            self.poller.at((Duty.EXPIRE, uid), RETRY_DELETE_SECONDS)
            return
        self.gone(uid)

    def gone(self, uid: str) -> None:
        """The run no longer exists: nothing left to delete or count."""
        self.expiring.pop(uid, None)
        self.poller.drop((Duty.EXPIRE, uid))
        self._uncount(uid)

    async def delete(self, run: Run) -> None:
        """The TaskRun is being deleted: revoke its task if in flight (or being sent: the
        intent names it), then let it go."""
        self.registry.forget(run.uid)
        in_flight = run.status.taskId or (run.intent if derived(run.intent, run.uid) else None)
        if in_flight and not run.finished:
            revoke = revoke_of(
                run.view(), in_flight, True, "TaskRun deleted", self.now(), self.config
            )
            await self.effects.revoke(run, revoke)
        with contextlib.suppress(Gone):
            await self.effects.release(run)
