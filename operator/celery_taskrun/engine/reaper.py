"""The reaper: what becomes of a run once it ends or is deleted.

A finished run's finalizer comes off (it only guards in-flight work); then it is
one entry of the index of runs kept (`core.kept`), until its TTL or its history limit
says it is deleted: one wake-up of the poller's serves every TTL.  A run being
deleted has its task revoked if in flight, then its finalizer removed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.api.model import Phase
from celery_taskrun.clients.errors import Gone, KubeError
from celery_taskrun.core.kept import Kept, KeptRun, finished_label, labels_of
from celery_taskrun.core.retention import ttl_for
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
        self.kept = Kept(
            config.historyLimitsPer,
            config.successfulRunsHistoryLimit,
            config.failedRunsHistoryLimit,
        )
        self.planned: float | None = None  # when the poller wakes for the next TTL

    def clear(self) -> None:
        self.kept.clear()
        self.planned = None
        self.poller.drop((Duty.SWEEP, ""))

    async def finish(self, run: Run) -> None:
        """A terminal run: drop the finalizer, then its TTL and history.  Once
        released, the run's later watch events (ours, arriving after the fact, with
        the finalizer still on) are not news: see `Tracker.observe`."""
        self.registry.forget(run.uid)
        self.registry.release(run.uid)  # at once: an echo arriving during the write is none
        phase = run.status.phase or Phase.FAILED
        label = finished_label(labels_of(run.meta), phase)
        try:
            if run.guarded or label is not None:
                await self.effects.release(run.meta, label)
        except Gone:
            return
        except KubeError as exc:
            self.registry.unrelease(run.uid)  # the next event of it tries again
            metrics.API_WRITE_ERRORS.labels("metadata").inc()
            log.warning("finalizer of %s/%s not removed: %s", run.namespace, run.name, exc)
        done = parse_time(run.status.completedAt) or self.now()
        self.keep(
            KeptRun(
                uid=run.uid,
                namespace=run.namespace,
                name=run.name,
                task=run.spec.task,
                phase=phase,
                completed=done.timestamp(),
                ttl=ttl_for(
                    run.spec.ttlSecondsAfterFinished,
                    self.config.ttlSecondsAfterFinished,
                    run.gitops,
                ),
                counted=run.gitops is None,
            )
        )

    async def found(self, run: KeptRun, meta: dict[str, Any]) -> None:
        """A finished run found as it was left (a takeover lists every one): kept, and
        labelled as finished if an earlier version, or a failed write, left it without
        (one write at a time: thousands of them after an upgrade wait their turn in the
        listing rather than as tasks held in memory)."""
        self.keep(run)
        label = finished_label(labels_of(meta), run.phase)
        if label is None:
            return
        try:
            await self.effects.release(meta, label)
        except Gone:
            pass
        except KubeError as exc:  # the next takeover tries again
            metrics.API_WRITE_ERRORS.labels("metadata").inc()
            log.warning("%s/%s not labelled: %s", meta.get("namespace"), meta.get("name"), exc)

    def keep(self, run: KeptRun) -> None:
        """A finished run kept: what its history limit leaves out goes now, and the
        poller wakes for the next TTL (earlier than it was set to: a new one)."""
        for uid in self.kept.keep(run):
            self.expire(uid)
        self._plan()

    def _plan(self) -> None:
        due = self.kept.next_due()
        if due is not None and (self.planned is None or due < self.planned):
            self.planned = due
            self.poller.at((Duty.SWEEP, ""), due - self.now().timestamp())

    def sweep(self) -> None:
        """The poller's wake-up for TTLs: every run past its TTL goes."""
        self.planned = None
        for uid in self.kept.due(self.now().timestamp()):
            self.expire(uid)
        self._plan()

    def expire(self, uid: str) -> None:
        """Delete a finished run now (its TTL or history limit came)."""
        self.tasks.spawn(self._expire(uid))

    async def _expire(self, uid: str) -> None:
        where = self.kept.where(uid)
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

    def deleted(self, meta: dict[str, Any]) -> None:
        """The watch says a run left.  A finished run kept may only have left the
        watch's selection (the label of ours, its echo come before the write's answer
        said which version was ours): it is read before it is forgotten."""
        if meta["uid"] in self.kept:
            self.tasks.spawn(self._confirm_gone(meta))

    async def _confirm_gone(self, meta: dict[str, Any]) -> None:
        try:
            await self.effects.exists(meta)
        except Gone:
            self.gone(meta["uid"])
        except KubeError as exc:  # kept: its TTL or history limit finds out
            log.info("could not read %s/%s: %s", meta.get("namespace"), meta.get("name"), exc)

    def gone(self, uid: str) -> None:
        """The run no longer exists: nothing left to delete or count."""
        self.kept.gone(uid)
        self.poller.drop((Duty.EXPIRE, uid))

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
            await self.effects.release(run.meta, None)
