"""The tracker: one owner for every in-flight TaskRun.

It keeps a schedule of due reads (a heap, the seed's backoff per run), reads the
result backend once for all runs due together, hears the backend's publish for
faster wake-ups, asks `transitions.advance` what each run becomes, and writes
only what changed.  Kopf feeds it every watch event (`observe`); the tracker's own
memory of a run is authoritative while it follows it, because it is the only
writer of status.

Submitting is crash-safe by ordering: (1) the finalizer and the task id about to
be sent are written in one metadata patch, (2) the task is sent with that id,
(3) the status records it.  A restart that finds (1) without (3) reads the backend
and resends only if the id has no record; the worker guard drops a duplicate
delivery of an id that already ran, so a resend never runs a task twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from . import faults, metrics, records
from .backend import BackendUnavailable, ResultBackend
from .backoff import Backoff, backoff_for
from .celery_client import CeleryClient
from .config import OperatorConfig
from .kube import Gone, Kube
from .model import (
    FINALIZER,
    INTENT_ANNOTATION,
    Phase,
    Reason,
    TaskRunSpec,
    TaskRunStatus,
)
from .records import TaskRecord
from .submission import Refusal, plan, submission_of
from .transitions import (
    BackendError,
    Bounds,
    advance,
    first_submitted,
    next_check,
    parse_time,
    resubmitted,
    timestamp,
    with_phase,
    worker_lost,
)

log = logging.getLogger(__name__)

RETRY_WRITE_SECONDS = 2.0
WARNING_PHASES = frozenset({Phase.FAILED, Phase.TIMED_OUT, Phase.REVOKED})


def dump(status: TaskRunStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", exclude_none=True)


def merge_patch(written: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch from `written` to `desired`, top-level keys only."""
    patch: dict[str, Any] = {k: v for k, v in desired.items() if written.get(k) != v}
    patch.update({k: None for k in written if k not in desired})
    return patch


@dataclass(eq=False)
class Run:
    uid: str
    namespace: str
    name: str
    meta: dict[str, Any]
    spec: TaskRunSpec
    status: TaskRunStatus  # what the status should be
    written: dict[str, Any]  # what the API server holds, as far as we know
    backoff: Backoff
    polls: int = 0
    token: int = 0
    synced: bool = True  # `written` is `status`: no write is owed
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def generation(self) -> int | None:
        value = self.meta.get("generation")
        return int(value) if value is not None else None

    @property
    def finalizers(self) -> list[str]:
        return list(self.meta.get("finalizers") or [])

    @property
    def intent(self) -> str | None:
        return (self.meta.get("annotations") or {}).get(INTENT_ANNOTATION)

    @property
    def sent(self) -> bool:
        return self.status.taskId is not None and self.status.phase is not Phase.PENDING

    def body(self) -> dict[str, Any]:
        return {"metadata": self.meta}


class Tracker:
    def __init__(
        self,
        config: OperatorConfig,
        kube: Kube,
        celery: CeleryClient,
        backend: ResultBackend,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.kube = kube
        self.celery = celery
        self.backend = backend
        self.now = now
        self.bounds = Bounds(config.maxResultBytes, config.maxTracebackBytes)
        self.runs: dict[str, Run] = {}
        self.by_task: dict[str, str] = {}
        self.heap: list[tuple[float, int, str]] = []
        self.wake = asyncio.Event()
        self.writes = asyncio.Semaphore(config.writeConcurrency)
        self.background: set[asyncio.Task[Any]] = set()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._spawn(self._loop())
        if self.config.wakeups:
            self._spawn(self.backend.watch(self._on_record, self._resync))
        if self.config.workerLostAfter:
            self._spawn(self._watch_workers())

    async def stop(self) -> None:
        for task in list(self.background):
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        await self.backend.close()
        await self.kube.close()
        self.celery.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("tracker task failed", exc_info=task.exception())

    # -- input: watch events ----------------------------------------------------------

    async def observe(self, event_type: str | None, body: dict[str, Any]) -> None:
        """Every watch event of every TaskRun, from Kopf."""
        meta = body["metadata"]
        uid = meta["uid"]
        if event_type == "DELETED":
            self._forget(uid)
            return
        known = self.runs.get(uid)
        if known is not None:
            known.meta = meta
            if meta.get("deletionTimestamp"):
                await self._delete(known)
                return
            spec = self._spec(body)
            if spec is not None and spec.cancel and not known.spec.cancel:
                known.spec = spec
                self._schedule(known, delay=0)
            return
        await self._adopt(body)

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
            status = TaskRunStatus.model_validate(body.get("status") or {})
        except ValidationError:
            status = TaskRunStatus()  # not ours to trust: start from what we can see
        try:
            spec = TaskRunSpec.model_validate(body.get("spec") or {})
            problem = None
        except ValidationError as exc:
            spec, problem = TaskRunSpec(task="<invalid>"), exc
        run = Run(
            uid=meta["uid"],
            namespace=meta["namespace"],
            name=meta["name"],
            meta=meta,
            spec=spec,
            status=status,
            written=dump(status),
            backoff=backoff_for(spec.poll, self.config.poll),
        )
        if meta.get("deletionTimestamp"):
            if FINALIZER in run.finalizers:
                await self._delete(run)
            return
        if status.phase is not None and status.phase.terminal:
            await self._finish(run, fresh=True)
            return
        if problem is not None:
            message = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}"
                for e in problem.errors()
            )
            await self._commit(run, self._refused(run, Reason.INVALID_SPEC, message))
            return
        self.runs[run.uid] = run
        metrics.IN_FLIGHT.set(len(self.runs))
        if status.taskId:
            self.by_task[status.taskId] = run.uid
        self._schedule(run, delay=0)

    def _forget(self, uid: str) -> None:
        run = self.runs.pop(uid, None)
        if run is not None:
            run.token += 1  # drops its pending schedule entries
            if run.status.taskId:
                self.by_task.pop(run.status.taskId, None)
            metrics.IN_FLIGHT.set(len(self.runs))

    # -- input: the backend ------------------------------------------------------------

    async def _on_record(self, task_id: str, record: TaskRecord) -> None:
        uid = self.by_task.get(task_id)
        run = self.runs.get(uid) if uid else None
        if run is not None and run.status.taskId == task_id:
            metrics.WAKEUPS.inc()
            self._spawn(self._step(run, record))

    async def _resync(self) -> None:
        for run in list(self.runs.values()):
            self._schedule(run, delay=0)

    async def _watch_workers(self) -> None:
        """Ping the workers of running tasks; fail the runs of one that stays silent."""
        misses: dict[str, int] = {}
        while True:
            await asyncio.sleep(self.config.workerCheckInterval)
            running: dict[str, list[Run]] = {}
            for run in self.runs.values():
                if run.status.phase is Phase.RUNNING and run.status.worker:
                    running.setdefault(run.status.worker, []).append(run)
            if not running:
                misses.clear()
                continue
            try:
                alive = await self.celery.alive(set(running))
            except Exception as exc:  # broker down: silence proves nothing
                log.info("worker ping failed: %s", exc)
                continue
            misses = {host: misses.get(host, 0) + 1 for host in running if host not in alive}
            for host, count in misses.items():
                if count < self.config.workerLostAfter:
                    continue
                log.warning("worker %s missed %d pings: its running tasks are lost", host, count)
                for run in running[host]:
                    self._spawn(self._lose(run))

    async def _lose(self, run: Run) -> None:
        """Fail a run whose worker is gone, unless its record moved on meanwhile."""
        task_id = run.status.taskId or ""
        try:
            record = (await self.backend.read([task_id]))[task_id]
        except BackendUnavailable:
            return
        if record.ready:
            await self._step(run, record)
        elif record.state != records.PENDING:
            await self._step(run, worker_lost(run.status))

    # -- the schedule ---------------------------------------------------------------

    def _schedule(self, run: Run, *, delay: float | None = None) -> None:
        if delay is None:
            delay = run.backoff.interval(run.polls)
            check = next_check(run.status)
            if check is not None:
                delay = min(delay, max((check - self.now()).total_seconds(), 0.0))
        run.token += 1
        due = time.monotonic() + delay
        heapq.heappush(self.heap, (due, run.token, run.uid))
        if self.heap[0][1] == run.token:
            self.wake.set()

    def _due(self) -> list[Run]:
        now = time.monotonic()
        due = []
        while self.heap and self.heap[0][0] <= now:
            _, token, uid = heapq.heappop(self.heap)
            run = self.runs.get(uid)
            if run is not None and run.token == token:
                due.append(run)
        return due

    async def _loop(self) -> None:
        while True:
            due = self._due()
            if due:
                await self._poll(due)
                continue
            self.wake.clear()
            timeout = self.heap[0][0] - time.monotonic() if self.heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)

    async def _poll(self, due: list[Run]) -> None:
        """One backend round trip for every run due now, then a step for each."""
        ids = [run.status.taskId for run in due if run.sent and run.status.taskId]
        observed: dict[str, TaskRecord] | BackendError = {}
        if ids:
            metrics.BACKEND_READS.inc()
            try:
                observed = await self.backend.read(ids)
            except BackendUnavailable as exc:
                metrics.BACKEND_ERRORS.inc()
                observed = BackendError(str(exc))

        def of(run: Run) -> TaskRecord | BackendError:
            if isinstance(observed, BackendError):
                return observed
            return observed.get(run.status.taskId or "", records.NO_RECORD)

        await asyncio.gather(*(self._step(run, of(run)) for run in due))

    # -- one step of one run ------------------------------------------------------------

    async def _step(self, run: Run, observed: TaskRecord | BackendError) -> None:
        try:
            await self._step_locked(run, observed)
        except Exception:  # a bug or a record we cannot read must not stop the tracker
            log.exception("step of %s/%s failed; trying again later", run.namespace, run.name)
            run.polls += 1
            self._schedule(run)

    async def _step_locked(self, run: Run, observed: TaskRecord | BackendError) -> None:
        async with run.lock:
            if self.runs.get(run.uid) is not run:
                return  # finished or forgotten while this step waited
            if not run.sent:
                await self._submit(run, submission_of(run.status.taskId))
                return
            outcome = advance(
                run.spec,
                run.status,
                observed,
                self.now(),
                generation=run.generation,
                bounds=self.bounds,
            )
            if outcome.revoke:
                reason = outcome.status.reason or "revoked"
                await self._revoke(run, outcome.revoke, terminate=outcome.terminate, reason=reason)
            if outcome.resubmit is not None:
                await self._submit(run, outcome.resubmit, previous=outcome.status)
                return
            if outcome.status.reason == Reason.RESULT_LOST and await self._may_run(run):
                # The record vanished (Redis restarted without its data, say) but the
                # worker still runs the task, or cannot say yet: wait for its result.
                run.polls += 1
                self._schedule(run)
                return
            await self._commit(run, outcome.status)

    async def _submit(
        self, run: Run, submission: int, previous: TaskRunStatus | None = None
    ) -> None:
        now = self.now()
        if run.spec.cancel:
            status = previous or run.status
            await self._commit(
                run,
                self._refused(
                    run, Reason.CANCELLED, "cancelled before it was sent", Phase.REVOKED, status
                ),
            )
            return
        decided = plan(
            run.spec,
            self.config,
            uid=run.uid,
            submission=submission,
            now=now,
            first_submitted_at=first_submitted(previous) if previous else None,
        )
        if isinstance(decided, Refusal):
            await self._commit(run, self._refused(run, decided.reason, decided.message))
            return
        timeout = decided.limits.timeout
        created = parse_time(run.meta.get("creationTimestamp"))
        if (
            run.status.phase is Phase.PENDING
            and timeout
            and created
            and now >= created + timedelta(seconds=timeout.seconds + 1)
        ):
            # Sending has failed so far (broker down): the deadline counts from creation
            # (to the second, as creationTimestamp has it; hence the extra second).
            message = f"the task could not be sent within its timeout of {timeout.seconds:g}s"
            await self._commit(
                run, self._refused(run, Reason.DEADLINE_EXCEEDED, message, Phase.TIMED_OUT)
            )
            return
        task_id = decided.task_id
        recovering = run.intent == task_id  # an earlier incarnation may have sent it
        log.info(
            "submitting %s/%s as %s%s",
            run.namespace,
            run.name,
            task_id,
            " (recovering)" if recovering else "",
        )
        try:
            if not recovering or FINALIZER not in run.finalizers:
                await self.kube.record_intent(run.body(), task_id)
                metrics.API_WRITES.labels("metadata").inc()
                annotations = dict(run.meta.get("annotations") or {})
                annotations[INTENT_ANNOTATION] = task_id
                finalizers = (
                    [*run.finalizers, FINALIZER]
                    if FINALIZER not in run.finalizers
                    else run.finalizers
                )
                run.meta = {**run.meta, "annotations": annotations, "finalizers": finalizers}
            self.by_task[task_id] = run.uid
            if not (recovering and await self._has_record(task_id)):
                await self.celery.send(decided)
                faults.crash_point("after-send")
            metrics.SUBMISSIONS.labels("sent").inc()
        except Gone:
            self._forget(run.uid)
            return
        except Exception as exc:  # broker or API server unreachable: try again later
            metrics.SUBMISSIONS.labels("failed").inc()
            log.warning("could not submit %s/%s: %s", run.namespace, run.name, exc)
            if previous is None:
                waiting = with_phase(
                    run.status,
                    Phase.PENDING,
                    Reason.BACKEND_UNAVAILABLE,
                    f"cannot send the task yet: {type(exc).__name__}: {exc}",
                    generation=run.generation,
                    now=now,
                )
                await self._commit(run, waiting, changed=False)
            else:
                run.polls += 1
                self._schedule(run)
            return

        queue = decided.options.get("queue", "the default queue")
        if previous is not None:
            if previous.taskId:
                self.by_task.pop(previous.taskId, None)
            status = resubmitted(
                previous,
                submission=submission,
                submissions=1 + (run.spec.retries or 0),
                task_id=task_id,
                generation=run.generation,
                now=now,
            )
        else:
            base = run.status.model_copy(
                update={
                    "taskId": task_id,
                    "attempt": 1,
                    "state": records.PENDING,
                    "submittedAt": timestamp(now),
                    "limits": decided.limits,
                }
            )
            status = with_phase(
                base,
                Phase.QUEUED,
                Reason.QUEUED,
                f"sent to {queue}; waiting for a worker",
                generation=run.generation,
                now=now,
            )
        await self._commit(run, status)

    async def _may_run(self, run: Run) -> bool:
        """Unless its worker answers without it, the task may still be running."""
        try:
            running = await self.celery.still_running(run.status.taskId or "", run.status.worker)
        except Exception as exc:  # broker unreachable: nobody can say yet
            log.info("could not ask the workers about %s: %s", run.status.taskId, exc)
            return True
        return running is not False

    async def _has_record(self, task_id: str) -> bool:
        found = await self.backend.read([task_id])
        return found[task_id].state != records.PENDING

    def _refused(
        self,
        run: Run,
        reason: Reason,
        message: str,
        phase: Phase = Phase.FAILED,
        status: TaskRunStatus | None = None,
    ) -> TaskRunStatus:
        return with_phase(
            status or run.status,
            phase,
            reason,
            message,
            generation=run.generation,
            now=self.now(),
        )

    async def _revoke(self, run: Run, task_id: str, *, terminate: bool, reason: str) -> None:
        try:
            await asyncio.wait_for(
                self.celery.revoke(task_id, terminate=terminate, reason=reason),
                self.config.revokeTimeout,
            )
        except Exception as exc:  # the status still says what the user asked for
            log.warning("could not revoke %s: %s", task_id, exc)
            await self._event(
                run, "Warning", "RevokeFailed", f"could not revoke task {task_id}: {exc}"
            )

    # -- output ---------------------------------------------------------------------

    async def _commit(self, run: Run, status: TaskRunStatus, changed: bool | None = None) -> None:
        """Write what changed (one merge patch), announce a new phase, then follow on."""
        if status is run.status and run.synced:
            # Unchanged and already written (most polls): skip the diff.
            run.polls += 1
            self._schedule(run)
            return
        desired = dump(status)
        patch = merge_patch(run.written, desired)
        old_phase, old_reason = run.written.get("phase"), run.written.get("reason")
        run.status = status
        if patch:
            try:
                async with self.writes:
                    await self.kube.patch_status(run.namespace, run.name, patch)
                metrics.API_WRITES.labels("status").inc()
            except Gone:
                self._forget(run.uid)
                return
            except Exception as exc:
                run.synced = False
                log.warning("status write for %s/%s failed: %s", run.namespace, run.name, exc)
                if status.phase is not None and status.phase.terminal:
                    self.runs.setdefault(run.uid, run)  # keep it until its end is written
                self._schedule(run, delay=RETRY_WRITE_SECONDS)
                return
            run.written = desired
            if (status.phase, status.reason) != (old_phase, old_reason):
                await self._announce(run, status)
        run.synced = True
        if status.phase is not None and status.phase.terminal:
            await self._finish(run)
            return
        if self.runs.get(run.uid) is not run:
            self.runs[run.uid] = run
            metrics.IN_FLIGHT.set(len(self.runs))
        run.polls = 0 if (bool(patch) if changed is None else changed) else run.polls + 1
        self._schedule(run)

    async def _announce(self, run: Run, status: TaskRunStatus) -> None:
        phase = status.phase or Phase.PENDING
        metrics.TRANSITIONS.labels(phase.value, status.reason or "").inc()
        if phase.terminal:
            done = parse_time(status.completedAt)
            if done is not None and phase is not Phase.REVOKED:
                metrics.STATUS_LATENCY.observe(max((self.now() - done).total_seconds(), 0.0))
        warning = phase in WARNING_PHASES or status.reason == Reason.BACKEND_UNAVAILABLE
        await self._event(
            run,
            "Warning" if warning else "Normal",
            status.reason or phase.value,
            f"{phase.value}: {status.message}" if status.message else phase.value,
        )

    async def _event(self, run: Run, kind: str, reason: str, message: str) -> None:
        try:
            await self.kube.event(run.namespace, run.name, run.uid, kind, reason, message)
            metrics.API_WRITES.labels("event").inc()
        except Exception as exc:  # an event is worth a try, never a failure
            log.info("event for %s/%s not posted: %s", run.namespace, run.name, exc)

    async def _finish(self, run: Run, *, fresh: bool = False) -> None:
        """A terminal run: drop the finalizer (it only guards in-flight work), then TTL.

        `fresh`: run.meta comes straight from the watch. Otherwise our memory of the
        finalizers may be stale, and having sent a task (the intent) means we added it.
        """
        self._forget(run.uid)
        try:
            if FINALIZER in run.finalizers or (run.intent and not fresh):
                listed = run.finalizers if FINALIZER in run.finalizers else [FINALIZER]
                await self.kube.remove_finalizer(run.namespace, run.name, listed)
                metrics.API_WRITES.labels("metadata").inc()
                run.meta = {**run.meta, "finalizers": [f for f in run.finalizers if f != FINALIZER]}
        except Gone:
            return
        except Exception as exc:
            log.warning("finalizer of %s/%s not removed: %s", run.namespace, run.name, exc)
        ttl = run.spec.ttlSecondsAfterFinished
        if ttl is not None:
            done = parse_time(run.status.completedAt) or self.now()
            delay = max(ttl - (self.now() - done).total_seconds(), 0.0)
            self._spawn(self._expire(run, delay))

    async def _expire(self, run: Run, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self.kube.delete(run.namespace, run.name, run.uid)
            metrics.API_WRITES.labels("delete").inc()
        except Gone:
            pass
        except Exception as exc:
            log.warning("TTL deletion of %s/%s failed: %s", run.namespace, run.name, exc)

    async def _delete(self, run: Run) -> None:
        """The TaskRun is being deleted: revoke its task if in flight, then let it go."""
        self._forget(run.uid)
        if run.status.taskId and not (run.status.phase and run.status.phase.terminal):
            await self._revoke(run, run.status.taskId, terminate=True, reason="TaskRun deleted")
        with contextlib.suppress(Gone):
            await self.kube.remove_finalizer(run.namespace, run.name, run.finalizers)
