"""The tracker: one owner for every in-flight TaskRun, routing what comes in.

Watch events (from Kopf), the backend's wake-ups and the watchdog's losses come in
here and go to the part whose job they are: the registry keeps the runs, the mailbox
serialises each run's steps, the stepper applies the core's plan for each step, the
poller schedules looks and reads the backend in batches, the reaper releases,
expires and deletes.  The tracker acts only while its operator leads (`lead`,
`step_down`); the loop and the subscriptions are supervised (restarted when they
fail), and `health` tells the liveness probe when the loop stops turning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from functools import partial
from typing import Any

from pydantic import ValidationError

from celery_taskrun.api.config import OperatorConfig, globbed
from celery_taskrun.api.model import FINALIZER, FINISHED_LABEL, Phase, TaskRunSpec, TaskRunStatus
from celery_taskrun.clients.backend import BackendUnavailable
from celery_taskrun.clients.errors import Gone, KubeError
from celery_taskrun.core.backoff import backoff_for
from celery_taskrun.core.kept import kept_of
from celery_taskrun.core.records import Reading
from celery_taskrun.core.redact import secrets_of
from celery_taskrun.core.retention import gitops_owner
from celery_taskrun.core.step import lost
from celery_taskrun.core.timing import deadline
from celery_taskrun.engine import metrics
from celery_taskrun.engine.concurrency import Limiter
from celery_taskrun.engine.effects import Effects
from celery_taskrun.engine.fence import Fence
from celery_taskrun.engine.mailbox import Mailbox
from celery_taskrun.engine.poller import Duty, Poller
from celery_taskrun.engine.ports import BackendPort, BrokerPort, KubePort
from celery_taskrun.engine.reaper import Reaper
from celery_taskrun.engine.registry import Registry
from celery_taskrun.engine.runs import (
    Run,
    newer,
    slim,
    validation_message,
)
from celery_taskrun.engine.sender import Sender
from celery_taskrun.engine.stepper import Stepper
from celery_taskrun.engine.tasks import Tasks, supervised
from celery_taskrun.engine.watchdog import WorkerWatchdog
from celery_taskrun.engine.writer import StatusWriter

log = logging.getLogger(__name__)

GAUGE_SECONDS = 5.0
WATCH_RETRY_SECONDS = 5.0


class Tracker:
    def __init__(
        self,
        config: OperatorConfig,
        kube: KubePort,
        celery: BrokerPort,
        backend: BackendPort,
        *,
        namespaces: Sequence[str] = (),
        fence: Fence | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        # The namespaces handled (globs; none: all), and which to list on taking over:
        # each by name, or the whole cluster when a glob needs filtering.
        self.namespaces = list(namespaces)
        self.listed: list[str | None] = [] if globbed(self.namespaces) else list(self.namespaces)
        self.kube = kube
        self.celery = celery
        self.backend = backend
        self.now = now
        self.monotonic = monotonic
        self.tasks = Tasks()
        self.registry = Registry(on_forget=self._forgotten)
        self.limiter = Limiter(
            config, wake=lambda run: self.mailbox.deliver(run, None), monotonic=monotonic
        )
        writer = StatusWriter(
            kube,
            concurrency=config.writeConcurrency,
            now=now,
            secrets=secrets_of([config.brokerUrl, config.resultBackend]),
            events=config.events,
        )
        self.effects = Effects(
            kube,
            celery,
            Sender(kube, celery, backend),
            writer,
            fence=fence or Fence(),
            revoke_timeout=config.revokeTimeout,
            monotonic=monotonic,
        )
        self.poller = Poller(
            backend,
            self.tasks,
            run_of=self.registry.get,
            deliver=lambda run, news: self.mailbox.deliver(run, news),
            expire=lambda uid: self.reaper.expire(uid),
            sweep=lambda: self.reaper.sweep(),
            now=now,
            monotonic=monotonic,
        )
        self.mailbox = Mailbox(
            self.tasks,
            step=lambda run, observed: self.stepper.attempt(run, observed),
            follows=self.registry.holds,
            hold_seconds=config.statusHoldSeconds,
            now=now,
            monotonic=monotonic,
        )
        self.reaper = Reaper(config, self.effects, self.registry, self.poller, self.tasks, now=now)
        self.stepper = Stepper(
            config,
            self.effects,
            self.registry,
            self.poller,
            self.mailbox,
            self.reaper,
            self.limiter,
            now=now,
        )
        self.watchdog = WorkerWatchdog(
            celery,
            interval=config.workerCheckInterval,
            lost_after=config.workerLostAfter,
            runs=lambda: list(self.registry),
            lose=lambda run: self.tasks.spawn(self._lose(run)),
        )
        self.acting = False

    # -- lifecycle: the tracker acts only while its operator leads ------------------------

    async def lead(self) -> None:
        """Start acting: every TaskRun is listed and adopted, then followed."""
        self.acting = True
        self.effects.took_over()
        self.poller.beat = self.monotonic()
        spawn = self.tasks.spawn
        spawn(supervised("loop", self.poller.loop))
        if self.config.wakeups:
            spawn(supervised("wake-ups", lambda: self.backend.watch(self._on_record, self._resync)))
        if self.config.workerLostAfter:
            spawn(supervised("watchdog", self.watchdog.watch))
        spawn(supervised("adoption", self._adopt_all))
        spawn(supervised("gauges", self._gauges))

    async def step_down(self) -> None:
        """Stop acting at once (another operator may take over): every step, read and
        loop is cancelled, and nothing is remembered (the next lead lists afresh)."""
        self.acting = False
        await self.tasks.cancel_all()
        self.registry.clear()
        self.limiter.clear()
        self.reaper.clear()
        self.poller.reset()
        # A standby exports no picture of runs it does not follow.
        metrics.QUEUE_RUNS.clear()
        metrics.PAST_DEADLINE.set(0)
        metrics.FINISHED_KEPT.set(0)
        metrics.BACKEND_UP.clear()

    async def stop(self) -> None:
        await self.step_down()
        await self.backend.close()
        await self.kube.close()
        self.celery.close()

    def health(self) -> str | None:
        """None while the loop turns (or while standing by); else why the operator
        should be restarted."""
        stalled = self.monotonic() - self.poller.beat
        if self.acting and stalled > self.config.livenessTimeout:
            return f"the tracker's loop has not turned for {stalled:.0f}s"
        return None

    async def _gauges(self) -> None:
        """Runs in flight by queue and phase, and those past their deadline, every few
        seconds (a pass over the registry: cheap next to following the runs)."""
        while True:
            now = self.now()
            counts: dict[tuple[str, str], int] = {}
            late = 0
            for run in self.registry:
                phase = (run.status.phase or Phase.PENDING).value
                key = (metrics.queue_label(run.spec.queue or self.config.defaultQueue), phase)
                counts[key] = counts.get(key, 0) + 1
                ends = deadline(run.status, run.created)
                late += ends is not None and now > ends
            metrics.QUEUE_RUNS.clear()
            for (queue, phase), count in counts.items():
                metrics.QUEUE_RUNS.labels(queue, phase).set(count)
            metrics.PAST_DEADLINE.set(late)
            metrics.FINISHED_KEPT.set(len(self.reaper.kept))
            await asyncio.sleep(GAUGE_SECONDS)

    async def _adopt_all(self) -> None:
        """Every TaskRun this operator handles, as the API server has it now: the runs
        not labelled finished (then, what is in use known, the concurrency limits' lines
        move); the finished ones go to the reaper's index apart (`_finished`), so a
        takeover acts on live runs first however many finished ones are kept."""
        for namespace in self.listed or [None]:
            await self._list(namespace, f"!{FINISHED_LABEL}")
        self.limiter.settle()
        for namespace in self.listed or [None]:
            self.tasks.spawn(supervised("finished runs", partial(self._finished, namespace)))

    async def _finished(self, namespace: str | None) -> None:
        """The finished runs of `namespace` (None: every one) into the reaper's index,
        then their deletions (by anyone: a TTL, a user, GitOps) out of it, from a watch
        that starts before the listing.  When the API server no longer remembers where
        the watch was, it goes on from now: a run deleted meanwhile stays counted until
        its TTL or history limit finds it gone."""
        since: str | None = None
        listed = False
        while True:
            try:
                if since is None:
                    since = await self.kube.version_now(namespace)
                if not listed:
                    await self._list(namespace, FINISHED_LABEL)
                    listed = True
                async for uid, version in self.kube.deletions(namespace, FINISHED_LABEL, since):
                    since = version
                    if uid is not None:
                        self.reaper.gone(uid)
            except Gone:
                log.warning("the watch of finished runs starts again from now")
                since = None
            except KubeError as exc:
                log.info("the listing or watch of finished runs failed: %s", exc)
                await asyncio.sleep(WATCH_RETRY_SECONDS)

    async def _list(self, namespace: str | None, selector: str) -> None:
        async for body in self.kube.list_taskruns(namespace, selector):
            meta = body.get("metadata") or {}
            if self.handles(meta.get("namespace", "")) and not self.registry.get(
                meta.get("uid", "")
            ):
                await self.observe("ADDED", body)

    def _forgotten(self, uid: str) -> None:
        """A run no longer followed: its look goes, and its places free."""
        self.poller.drop((Duty.LOOK, uid))
        self.limiter.release(uid)

    def handles(self, namespace: str) -> bool:
        return not self.namespaces or any(fnmatchcase(namespace, p) for p in self.namespaces)

    # -- input: watch events ----------------------------------------------------------

    async def observe(self, event_type: str | None, body: dict[str, Any]) -> None:
        """Every watch event of every TaskRun, from Kopf (ignored while standing by)."""
        if not self.acting:
            return
        meta = body["metadata"]
        if not self.handles(meta.get("namespace", "")):
            return  # a cluster-wide watch serving namespace globs (see main)
        uid = meta["uid"]
        if event_type == "DELETED":
            self.registry.forget(uid)
            self.registry.unrelease(uid)
            self.reaper.deleted(slim(meta))
            return
        if self.registry.released(uid):
            return  # finished and released: later events are our own writes echoed
        known = self.registry.get(uid)
        if known is None:
            kept = kept_of(body, self.config.ttlSecondsAfterFinished, self.now().timestamp())
            if kept is not None:
                await self.reaper.found(kept, slim(meta))  # finished: never decoded
            elif uid not in self.reaper.kept or FINALIZER in (meta.get("finalizers") or ()):
                await self._adopt(body)
            # else: a finished run kept, edited or echoed: nothing to act on
            return
        generation = known.generation
        known.meta = newer(known.meta, slim(meta))
        self.limiter.adopt(known)  # an earlier leader's intent, written after our list
        if known.meta.get("deletionTimestamp"):
            await self.reaper.delete(known)
            return
        if known.generation == generation:
            return  # the spec is as it was (most events are our own status writes echoed)
        spec = self._spec(body)
        if spec is not None and spec.cancel and not known.spec.cancel:
            known.spec = spec
            self.mailbox.deliver(known, None)

    @staticmethod
    def _spec(body: dict[str, Any]) -> TaskRunSpec | None:
        try:
            return TaskRunSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            return None

    async def _adopt(self, body: dict[str, Any]) -> None:
        """A run seen for the first time: just created, or found again after a restart."""
        meta = body["metadata"]
        try:
            spec = TaskRunSpec.model_validate(body.get("spec") or {})
            problem = None
        except ValidationError as exc:  # past an older or edited CRD: refused here
            spec, problem = TaskRunSpec(task="invalid"), validation_message(exc)
        run = Run(
            uid=meta["uid"],
            namespace=meta["namespace"],
            name=meta["name"],
            meta={},
            spec=spec,
            status=TaskRunStatus(),
            written={},
            backoff=backoff_for(spec.poll, self.config.poll),
            problem=problem,
            gitops=gitops_owner(meta.get("labels") or {}, meta.get("annotations") or {}),
        )
        run.refresh(body)  # its metadata, and its status as written
        run.inherited = run.intent
        if meta.get("deletionTimestamp"):
            if run.guarded:
                await self.reaper.delete(run)
            return
        if run.finished:
            await self.reaper.finish(run)
            return
        self.registry.add(run)
        self.limiter.adopt(run)
        self.poller.look(run, 0)  # with the others due now: one backend read for all

    # -- input: the backend and the watchdog -------------------------------------------

    async def _on_record(self, task_id: str, reading: Reading | None) -> None:
        run = self.registry.of_task(task_id)
        if run is not None:
            metrics.WAKEUPS.inc()
            self.mailbox.deliver(run, None if reading is None else (task_id, reading))

    async def _resync(self) -> None:
        for run in self.registry:
            self.poller.look(run, 0)

    async def _lose(self, run: Run) -> None:
        """A run whose worker went silent: its record decides, else it is lost."""
        task_id = run.status.taskId or ""
        try:
            reading = (await self.backend.read([task_id]))[task_id]
        except BackendUnavailable:
            return
        outcome = lost(run.status, reading)
        if outcome is not None:
            self.mailbox.deliver(run, (task_id, outcome))
