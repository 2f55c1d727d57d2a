"""The tracker: one owner for every in-flight TaskRun.

It keeps the registry of runs, one schedule of when each is looked at next, and a
loop that reads the result backend once for all runs due together.  Wake-ups from
the backend's publish and watch events feed the same path.  Each run is handled by
one step at a time, with at most one more waiting (the latest news): a task that
reports progress in a tight loop costs one pending step, and a slow call for one run
never holds up another, since every step runs on its own.  The decisions are the
pure core's (`dispatch`, `transitions`); the I/O is the submitter's, the status
writer's and the watchdog's.

A step that fails unexpectedly (a bug) delays its run alone; after `MAX_STEP_ERRORS`
in a row the run ends `Failed` / `InternalError`.  The loop and the subscriptions are
supervised (restarted when they fail), and `health` tells the liveness probe when the
loop stops turning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

from pydantic import ValidationError

from celery_taskrun.api.config import OperatorConfig, globbed
from celery_taskrun.api.model import FINALIZER, Phase, Reason, TaskRunSpec, TaskRunStatus
from celery_taskrun.clients.backend import BackendUnavailable, ResultBackend
from celery_taskrun.clients.celery_client import BrokerUnavailable, CeleryClient, MarkRefused
from celery_taskrun.clients.errors import Gone, KubeError
from celery_taskrun.clients.kube import Kube
from celery_taskrun.core import records
from celery_taskrun.core.backoff import backoff_for
from celery_taskrun.core.dispatch import Send, not_sent, prepare
from celery_taskrun.core.records import Reading
from celery_taskrun.core.redact import secrets_of
from celery_taskrun.core.retention import Finished, beyond, gitops_owner, history_key, ttl_for
from celery_taskrun.core.schedule import Schedule
from celery_taskrun.core.submission import derived, message_expiry, submission_of, trusted
from celery_taskrun.core.transitions import (
    BackendError,
    Bounds,
    Observed,
    Outcome,
    advance,
    deadline,
    first_submitted,
    next_delay,
    parse_time,
    vanished,
    with_phase,
    worker_lost,
)
from celery_taskrun.engine import faults, metrics
from celery_taskrun.engine.runs import Run, dump, fingerprints, slim, validation_message
from celery_taskrun.engine.submitter import NotSent, Sent, Submitter
from celery_taskrun.engine.watchdog import WorkerWatchdog
from celery_taskrun.engine.writer import StatusWriter, Written

log = logging.getLogger(__name__)

RETRY_WRITE_SECONDS = 2.0
GAUGE_SECONDS = 5.0
RETRY_DELETE_SECONDS = 30.0
# The loop turns at least this often, so `health` can tell a stalled loop.
HEARTBEAT_SECONDS = 1.0
MAX_STEP_ERRORS = 5
CANCEL_AGAIN_SECONDS = 0.5
# How many released runs are remembered: their echoes arrive within seconds.
RELEASED_MEMORY = 10_000
TTL_PREFIX = "ttl/"


async def supervised(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run `run` for as long as it is wanted, restarting it when it fails."""
    delay = 1.0
    while True:
        try:
            await run()
            return  # finished on its own (a backend without wake-ups, a listing done)
        except Exception:  # a bug: restart rather than stop every run
            log.exception("%s failed; restarting in %.0fs", name, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)


def moved(before: TaskRunStatus, after: TaskRunStatus) -> bool:
    """Whether a run visibly moved on (resets its backoff): a new phase, reason or
    state, or new progress; a reworded message alone is not news."""

    def key(status: TaskRunStatus) -> tuple[Any, ...]:
        percent = status.progress.percent if status.progress else None
        return status.phase, status.reason, status.state, percent

    return key(before) != key(after)


class Tracker:
    def __init__(
        self,
        config: OperatorConfig,
        kube: Kube,
        celery: CeleryClient,
        backend: ResultBackend,
        *,
        namespaces: Sequence[str] = (),
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
        self.bounds = Bounds(config.maxResultBytes, config.maxTracebackBytes)
        self.runs: dict[str, Run] = {}
        self.by_task: dict[str, str] = {}
        self.schedule = Schedule(monotonic)
        self.expiring: dict[str, tuple[str, str]] = {}  # uid -> (namespace, name)
        # Finished runs the history limits count: by history, and each run's history.
        self.history: dict[tuple[str, bool], list[Finished]] = {}
        self.counted: dict[str, tuple[str, bool]] = {}
        # Finished runs whose finalizer is off, latest last (bounded): see `observe`.
        self.released: OrderedDict[str, None] = OrderedDict()
        self.writer = StatusWriter(
            kube,
            concurrency=config.writeConcurrency,
            now=now,
            secrets=secrets_of([config.brokerUrl, config.resultBackend]),
            events=config.events,
        )
        self.submitter = Submitter(kube, celery, backend)
        self.watchdog = WorkerWatchdog(
            celery,
            interval=config.workerCheckInterval,
            lost_after=config.workerLostAfter,
            runs=lambda: list(self.runs.values()),
            lose=lambda run: self._spawn(self._lose(run)),
        )
        self.wake = asyncio.Event()
        self.background: set[asyncio.Task[Any]] = set()
        self.beat = monotonic()
        self.acting = False

    # -- lifecycle: the tracker acts only while its operator leads ------------------------

    async def lead(self) -> None:
        """Start acting: every TaskRun is listed and adopted, then followed."""
        self.acting = True
        self.beat = self.monotonic()
        self._spawn(supervised("loop", self._loop))
        if self.config.wakeups:
            watch = lambda: self.backend.watch(self._on_record, self._resync)  # noqa: E731
            self._spawn(supervised("wake-ups", watch))
        if self.config.workerLostAfter:
            self._spawn(supervised("watchdog", self.watchdog.watch))
        self._spawn(supervised("adoption", self._adopt_all))
        self._spawn(supervised("gauges", self._gauges))

    async def step_down(self) -> None:
        """Stop acting at once (another operator may take over): every step, read and
        loop is cancelled, and nothing is remembered (the next lead lists afresh)."""
        self.acting = False
        while self.background:  # tasks spawned meanwhile included
            for task in self.background:
                task.cancel()
            # A task may outlive one cancellation (Python 3.11's `wait_for` can lose one
            # that meets the end of the call it waits on): ask until all have stopped.
            await asyncio.wait(set(self.background), timeout=CANCEL_AGAIN_SECONDS)
        self.runs.clear()
        self.by_task.clear()
        self.expiring.clear()
        self.history.clear()
        self.counted.clear()
        self.released.clear()
        self.schedule = Schedule(self.monotonic)
        metrics.IN_FLIGHT.set(0)
        # A standby exports no picture of runs it does not follow.
        metrics.QUEUE_RUNS.clear()
        metrics.PAST_DEADLINE.set(0)
        metrics.BACKEND_UP.clear()

    async def stop(self) -> None:
        await self.step_down()
        await self.backend.close()
        await self.kube.close()
        self.celery.close()

    def health(self) -> str | None:
        """None while the loop turns (or while standing by); else why the operator
        should be restarted."""
        stalled = self.monotonic() - self.beat
        if self.acting and stalled > self.config.livenessTimeout:
            return f"the tracker's loop has not turned for {stalled:.0f}s"
        return None

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _gauges(self) -> None:
        """Runs in flight by queue and phase, and those past their deadline, every few
        seconds (a pass over the registry: cheap next to following the runs)."""
        while True:
            now = self.now()
            counts: dict[tuple[str, str], int] = {}
            late = 0
            for run in self.runs.values():
                phase = (run.status.phase or Phase.PENDING).value
                key = (metrics.queue_label(run.spec.queue or self.config.defaultQueue), phase)
                counts[key] = counts.get(key, 0) + 1
                ends = deadline(run.status, run.created)
                late += ends is not None and now > ends
            metrics.QUEUE_RUNS.clear()
            for (queue, phase), count in counts.items():
                metrics.QUEUE_RUNS.labels(queue, phase).set(count)
            metrics.PAST_DEADLINE.set(late)
            await asyncio.sleep(GAUGE_SECONDS)

    async def _adopt_all(self) -> None:
        """Every TaskRun this operator handles, as the API server has it now."""
        for namespace in self.listed or [None]:
            async for body in self.kube.list_taskruns(namespace):
                meta = body.get("metadata") or {}
                if self.handles(meta.get("namespace", "")) and meta.get("uid") not in self.runs:
                    await self.observe("ADDED", body)

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
            self._forget(uid)
            self._unexpire(uid)
            self.released.pop(uid, None)
            return
        if uid in self.released:
            return  # finished and released: later events are our own writes echoed
        known = self.runs.get(uid)
        if known is None:
            await self._adopt(body)
            return
        known.meta = slim(meta)
        if meta.get("deletionTimestamp"):
            await self._delete(known)
            return
        spec = self._spec(body)
        if spec is not None and spec.cancel and not known.spec.cancel:
            known.spec = spec
            self._deliver(known, None)

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
            status = trusted(TaskRunStatus.model_validate(body.get("status") or {}), meta["uid"])
        except ValidationError:
            status = TaskRunStatus()  # not ours to trust: start from what we can see
        try:
            spec = TaskRunSpec.model_validate(body.get("spec") or {})
            problem = None
        except ValidationError as exc:  # past an older or edited CRD: refused here
            spec, problem = TaskRunSpec(task="invalid"), validation_message(exc)
        run = Run(
            uid=meta["uid"],
            namespace=meta["namespace"],
            name=meta["name"],
            meta=slim(meta),
            spec=spec,
            status=status,
            written=fingerprints(dump(status)),
            written_phase=(status.phase, status.reason),
            backoff=backoff_for(spec.poll, self.config.poll),
            problem=problem,
            gitops=gitops_owner(meta.get("labels") or {}, meta.get("annotations") or {}),
        )
        if meta.get("deletionTimestamp"):
            if run.guarded:
                await self._delete(run)
            return
        if run.finished:
            await self._finish(run)
            return
        self._register(run)
        self._at(run, 0)  # with the others due now: one backend read for all

    def _register(self, run: Run) -> None:
        self.runs[run.uid] = run
        if run.status.taskId:
            self.by_task[run.status.taskId] = run.uid
        metrics.IN_FLIGHT.set(len(self.runs))

    def _forget(self, uid: str) -> None:
        run = self.runs.pop(uid, None)
        self.schedule.drop(uid)
        if run is not None:
            if run.status.taskId:
                self.by_task.pop(run.status.taskId, None)
            metrics.IN_FLIGHT.set(len(self.runs))

    # -- input: the backend ------------------------------------------------------------

    async def _on_record(self, task_id: str, reading: Reading | None) -> None:
        uid = self.by_task.get(task_id)
        run = self.runs.get(uid) if uid else None
        if run is not None:
            metrics.WAKEUPS.inc()
            self._deliver(run, None if reading is None else (task_id, reading))

    async def _resync(self) -> None:
        for run in list(self.runs.values()):
            self._at(run, 0)

    async def _lose(self, run: Run) -> None:
        """A run whose worker went silent: its record decides, else it is lost."""
        task_id = run.status.taskId or ""
        try:
            reading = (await self.backend.read([task_id]))[task_id]
        except BackendUnavailable:
            return
        if isinstance(reading, records.TaskRecord) and not reading.ready:
            if reading.state == records.PENDING:
                return
            reading = worker_lost(run.status)
        self._deliver(run, (task_id, reading))

    # -- the loop ----------------------------------------------------------------------

    def _at(self, run: Run, delay: float) -> None:
        if self.schedule.at(run.uid, delay):
            self.wake.set()

    def _plan(self, run: Run) -> None:
        """The one place that decides when a run is looked at next."""
        delay = next_delay(
            run.status, run.backoff, run.polls, self.now(), run.created, self.monotonic()
        )
        self._at(run, delay)

    async def _loop(self) -> None:
        while True:
            await faults.stall_point("loop")
            reads: list[Run] = []
            for key in self.schedule.due():
                if key.startswith(TTL_PREFIX):
                    self._spawn(self._expire(key.removeprefix(TTL_PREFIX)))
                elif (run := self.runs.get(key)) is not None:
                    if run.sent:
                        reads.append(run)
                    else:
                        self._deliver(run, None)
            if reads:
                self._spawn(self._read(reads))
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
                self._deliver(run, (task_id, error))
            return
        metrics.BACKEND_UP.labels("result_backend").set(1)
        for run, task_id in zip(due, ids, strict=True):
            self._deliver(run, (task_id, found.get(task_id, records.NO_RECORD)))

    async def _read_one(self, run: Run) -> Observed:
        task_id = run.status.taskId or ""
        try:
            return (await self.backend.read([task_id]))[task_id]
        except BackendUnavailable as exc:
            metrics.BACKEND_ERRORS.inc()
            return BackendError(str(exc))

    # -- one step of one run ------------------------------------------------------------

    def _deliver(self, run: Run, news: tuple[str, Observed] | None) -> None:
        """Ask for a step of `run`, with what was learnt of its task (the latest wins)."""
        if news is not None:
            task_id, reading = news
            running = isinstance(reading, records.TaskRecord) and reading.state not in (
                records.PENDING,
                *records.READY_STATES,
            )
            if running and (run.seen_running is None or run.seen_running[0] != task_id):
                run.seen_running = (task_id, self.now())
            run.observed = news
        run.wanted = True
        if run.waiter is not None and not run.waiter.done():
            run.waiter.set_result(None)  # a held write may be obsolete now
        if not run.busy:
            run.busy = True
            self._spawn(self._drive(run))

    async def _drive(self, run: Run) -> None:
        try:
            while run.wanted and self.runs.get(run.uid) is run:
                run.wanted = False
                news, run.observed = run.observed, None
                observed = news[1] if news and news[0] == run.status.taskId else None
                await self._attempt(run, observed)
        finally:
            run.busy = False

    async def _attempt(self, run: Run, observed: Observed | None) -> None:
        try:
            await self._step(run, observed)
        except Exception as exc:  # a bug: this run alone is delayed, then ended
            metrics.STEP_ERRORS.inc()
            run.errors += 1
            log.exception(
                "handling %s/%s failed (%d in a row)", run.namespace, run.name, run.errors
            )
            if run.errors >= MAX_STEP_ERRORS:
                await self._give_up(run, exc)
            else:
                self._at(run, min(2.0**run.errors, 60.0))
            return
        run.errors = 0

    async def _step(self, run: Run, observed: Observed | None) -> None:
        if run.problem is not None:
            await self._commit(run, self._ended(run, Reason.INVALID_SPEC, run.problem))
            return
        if not run.sent:
            await self._send(run, submission_of(run.status.taskId))
            return
        if observed is None:
            observed = await self._read_one(run)
        now = self.now()
        seen = run.seen_running
        outcome = advance(
            run.spec,
            run.status,
            observed,
            now,
            generation=run.generation,
            bounds=self.bounds,
            seen_running=seen[1] if seen and seen[0] == run.status.taskId else None,
        )
        if outcome.ask_workers:
            answer = await self._still_running(run)
            outcome = Outcome(vanished(outcome.status, answer, run.generation, now))
        if outcome.revoke:
            reason = outcome.status.reason or "revoked"
            await self._revoke(run, outcome.revoke, terminate=outcome.terminate, reason=reason)
        if outcome.resubmit is not None:
            await self._send(run, outcome.resubmit, previous=outcome.status)
            return
        await self._commit(run, outcome.status)

    async def _send(self, run: Run, submission: int, previous: TaskRunStatus | None = None) -> None:
        now = self.now()
        decision = prepare(
            run.spec,
            run.status,
            self.config,
            uid=run.uid,
            namespace=run.namespace,
            submission=submission,
            created=run.created,
            generation=run.generation,
            now=now,
            previous=previous,
        )
        if not isinstance(decision, Send):
            await self._commit(run, decision)
            return
        task_id = decision.submission.task_id
        self.by_task[task_id] = run.uid  # a wake-up may come before the status is written
        result = await self.submitter.submit(run, decision.submission)
        if result is Sent.GONE:
            self._forget(run.uid)
            return
        if isinstance(result, NotSent):
            if previous is None:
                self.by_task.pop(task_id, None)
            status = not_sent(
                run.status,
                decision.submission,
                result.error,
                permanent=result.permanent,
                generation=run.generation,
                now=now,
                previous=previous,
            )
            await self._commit(run, status)
            return
        if self.runs.get(run.uid) is not run:
            # Deleted while it was being sent: `_delete` may have revoked too early.
            await self._revoke(run, task_id, terminate=True, reason="TaskRun deleted")
            return
        if previous is not None and previous.taskId:
            self.by_task.pop(previous.taskId, None)
        await self._commit(run, decision.after)

    async def _still_running(self, run: Run) -> bool | None:
        """Whether a worker holds the task; None when no worker answers."""
        task_id, worker = run.status.taskId or "", run.status.worker
        try:
            held = await self.celery.holding([task_id], {worker} if worker else set())
        except BrokerUnavailable as exc:  # nobody can say yet
            log.info("could not ask the workers about %s: %s", task_id, exc)
            return None
        return any(task_id in ids for ids in held.values()) if held else None

    async def _revoke(self, run: Run, task_id: str, *, terminate: bool, reason: str) -> None:
        now = self.now()
        sent = parse_time(run.status.submittedAt) or now
        keep_for = (message_expiry(sent, run.spec, self.config) - now).total_seconds()
        try:
            await asyncio.wait_for(
                self.celery.revoke(task_id, terminate=terminate, reason=reason, keep_for=keep_for),
                self.config.revokeTimeout,
            )
        except (BrokerUnavailable, MarkRefused, TimeoutError) as exc:
            # The status still says what happened; the event says what did not.
            log.warning("could not revoke %s: %s", task_id, exc)
            await self.writer.event(
                run, "Warning", "RevokeFailed", f"could not revoke task {task_id}: {exc}"
            )

    def _ended(
        self, run: Run, reason: Reason, message: str, phase: Phase = Phase.FAILED
    ) -> TaskRunStatus:
        return with_phase(
            run.status, phase, reason, message, generation=run.generation, now=self.now()
        )

    async def _give_up(self, run: Run, exc: Exception) -> None:
        """End a run the operator keeps failing to handle, so it never hangs."""
        message = (
            f"the operator failed {run.errors} times in a row handling this run "
            f"({type(exc).__name__}: {exc}); see its log"
        )
        task_id = run.status.taskId if run.sent else None
        try:
            await self._commit(run, self._ended(run, Reason.INTERNAL_ERROR, message))
            if task_id:
                await self._revoke(run, task_id, terminate=True, reason="internal error")
        except Exception:  # even ending it fails: stop following it rather than loop
            log.exception("giving up on %s/%s", run.namespace, run.name)
            self._forget(run.uid)

    # -- output ---------------------------------------------------------------------

    async def _commit(self, run: Run, status: TaskRunStatus) -> None:
        """Write what changed, then follow on: finish a run that ended, else plan."""
        if status is run.status and run.synced:
            run.polls += 1  # most polls: nothing new, nothing to write
            self._plan(run)
            return
        if await self._superseded(run, status):
            run.status, run.synced = status, False  # the next step writes what it becomes
            return
        before = run.status
        written = await self.writer.write(run, status)
        if written is not Written.FAILED:
            run.unwritten_since = None
        if written in (Written.GONE, Written.REFUSED):
            self._forget(run.uid)  # gone, or no status of it can ever be written
            return
        if written is Written.FAILED:
            run.status = status  # still owed: the next step writes it
            self._at(run, RETRY_WRITE_SECONDS)
            return
        self._observe(run, before)
        if run.finished:
            await self._finish(run)
            return
        run.polls = 0 if moved(before, run.status) else run.polls + 1
        self._plan(run)

    def _observe(self, run: Run, before: TaskRunStatus) -> None:
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

    async def _superseded(self, run: Run, status: TaskRunStatus) -> bool:
        """Hold a status in flight for `statusHoldSeconds` before writing it: news of the
        run within that time makes it obsolete (a fast task's Queued and Running need
        no writes of their own); an end is written at once."""
        if status.phase is not None and status.phase.terminal:
            return False
        # Held from the first change not written yet: news in a tight loop (progress)
        # never keeps a status from being written for longer than the hold.
        now = self.monotonic()
        if run.unwritten_since is None:
            run.unwritten_since = now
        left = self.config.statusHoldSeconds - (now - run.unwritten_since)
        if left <= 0:
            return False
        if not run.wanted:
            run.waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait({run.waiter}, timeout=left)
            finally:
                run.waiter = None
        return run.wanted

    async def _finish(self, run: Run) -> None:
        """A terminal run: drop the finalizer (it only guards in-flight work), then TTL.
        Once released, the run's later watch events (ours, arriving after the fact, with
        the finalizer still on) are not news: see `observe`."""
        self._forget(run.uid)
        self._release(run.uid)  # at once: an echo arriving during the write is none of it
        try:
            if run.guarded and await self.kube.remove_finalizer(run.meta, FINALIZER):
                metrics.API_WRITES.labels("metadata").inc()
        except Gone:
            return
        except KubeError as exc:
            self.released.pop(run.uid, None)  # the next event of it tries again
            metrics.API_WRITE_ERRORS.labels("metadata").inc()
            log.warning("finalizer of %s/%s not removed: %s", run.namespace, run.name, exc)
        done = parse_time(run.status.completedAt) or self.now()
        ttl = ttl_for(
            run.spec.ttlSecondsAfterFinished, self.config.ttlSecondsAfterFinished, run.gitops
        )
        if ttl is not None and run.uid not in self.expiring:
            self.expiring[run.uid] = (run.namespace, run.name)
            delay = ttl - (self.now() - done).total_seconds()
            if self.schedule.at(TTL_PREFIX + run.uid, delay):
                self.wake.set()
        if run.gitops is None:
            self._keep_history(run, done)

    def _keep_history(self, run: Run, done: datetime) -> None:
        """Count a finished run in its history; delete what the limits leave out."""
        phase = run.status.phase or Phase.FAILED
        key = history_key(self.config.historyLimitsPer, run.namespace, run.spec.task, phase)
        limit = (
            self.config.successfulRunsHistoryLimit
            if phase is Phase.SUCCEEDED
            else self.config.failedRunsHistoryLimit
        )
        if limit is None or run.uid in self.counted:
            return
        history = self.history.setdefault(key, [])
        history.append(Finished(done, run.namespace, run.name, run.uid))
        self.counted[run.uid] = key
        for old in beyond(history, limit):
            self._uncount(old.uid)
            self.expiring[old.uid] = (old.namespace, old.name)
            self._spawn(self._expire(old.uid))

    def _uncount(self, uid: str) -> None:
        key = self.counted.pop(uid, None)
        if key is not None:
            self.history[key] = [f for f in self.history[key] if f.uid != uid]

    async def _expire(self, uid: str) -> None:
        where = self.expiring.get(uid)
        if where is None:
            return
        try:
            async with self.writer.slots:  # a takeover may find thousands past their limit
                await self.kube.delete(*where, uid)
            metrics.API_WRITES.labels("delete").inc()
        except Gone:
            pass
        except KubeError as exc:
            metrics.API_WRITE_ERRORS.labels("delete").inc()
            log.warning("TTL deletion of %s/%s failed: %s", *where, exc)
            self.schedule.at(TTL_PREFIX + uid, RETRY_DELETE_SECONDS)
            return
        self._unexpire(uid)

    def _release(self, uid: str) -> None:
        self.released[uid] = None
        if len(self.released) > RELEASED_MEMORY:
            self.released.popitem(last=False)

    def _unexpire(self, uid: str) -> None:
        self.expiring.pop(uid, None)
        self.schedule.drop(TTL_PREFIX + uid)
        self._uncount(uid)

    async def _delete(self, run: Run) -> None:
        """The TaskRun is being deleted: revoke its task if in flight (or being sent: the
        intent names it), then let it go."""
        self._forget(run.uid)
        in_flight = run.status.taskId or (run.intent if derived(run.intent, run.uid) else None)
        if in_flight and not run.finished:
            await self._revoke(run, in_flight, terminate=True, reason="TaskRun deleted")
        with contextlib.suppress(Gone):
            await self.kube.remove_finalizer(run.meta, FINALIZER)
