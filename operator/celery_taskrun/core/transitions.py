"""What the run's status becomes, given what the backend says and the clock (pure).

One function, `advance`, decides every in-flight step: the backend's record, the
deadline, `expires`, a cancel, or a backend outage.  It returns the next status
(one of the named `changes`) and what the shell must do about it (revoke the task,
send a new attempt, ask the workers about a task whose record vanished).  The shell
does the I/O; this module never does.  Everything taken from a record is bounded on
its way into status (`content`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from celery_taskrun.api import bounded
from celery_taskrun.api.model import Phase, Reason, TaskRunSpec, TaskRunStatus
from celery_taskrun.core import records
from celery_taskrun.core.changes import (
    Report,
    RevokedReason,
    TimedOutReason,
    backend_unavailable,
    failed,
    progressed,
    queued,
    retrying,
    revoked,
    running,
    succeeded,
    timed_out,
)
from celery_taskrun.core.content import Bounds, error_of, progress_of, truncate_result
from celery_taskrun.core.records import Reading, TaskRecord, Unreadable
from celery_taskrun.core.sending import send_number
from celery_taskrun.core.timing import deadline, expiry, parse_time, timestamp

# Failures worth another attempt when spec.retries allows.  Never a cancel, an
# expiry or the run's deadline (it bounds all attempts together), and never a lost
# result: the task may well have finished, and running it again would run it twice.
RETRYABLE = frozenset(
    {
        Reason.TASK_ERROR,
        Reason.WORKER_LOST,
        Reason.SOFT_TIME_LIMIT_EXCEEDED,
        Reason.TIME_LIMIT_EXCEEDED,
    }
)
# Records whose every sighting after the first says nothing new, and the reason then.
STEADY = {records.PENDING: Reason.QUEUED, records.STARTED: Reason.STARTED}
# Failures Celery stores by exception type that are not the task's own error.
TIME_LIMITS: dict[str, TimedOutReason] = {
    "SoftTimeLimitExceeded": Reason.SOFT_TIME_LIMIT_EXCEEDED,
    "TimeLimitExceeded": Reason.TIME_LIMIT_EXCEEDED,
}
WORKER_LOST_ERROR = "WorkerLostError"


@dataclass(frozen=True)
class BackendError:
    message: str


@dataclass(frozen=True)
class Outcome:
    status: TaskRunStatus
    revoke: str | None = None  # task id to revoke and mark revoked in the backend
    terminate: bool = False  # kill it if running
    resend: int | None = None  # the number of the next send (a new attempt)
    # The record vanished after the task started: ask the workers whether one still
    # runs it, then let `vanished` decide.
    ask_workers: bool = False


Observed = Reading | BackendError


def attempt_of(status: TaskRunStatus, record: TaskRecord) -> int:
    """Executions so far: earlier sends' attempts, then this task id's own Celery
    retries (a RETRY record announces the execution to come)."""
    first = status.attempts[-1].attempt + 1 if status.attempts else 1
    retries = record.retries or 0
    counted = first + retries + (1 if record.state == records.RETRY else 0)
    return max(counted, status.attempt or 1)


def finished(
    status: TaskRunStatus,
    spec: TaskRunSpec,
    record: TaskRecord,
    generation: int | None,
    now: datetime,
    bounds: Bounds,
    seen_running: datetime | None = None,
) -> Outcome:
    """A ready record (SUCCESS, FAILURE, REVOKED) -> the terminal status, or a retry."""
    # A record cannot be done in the future: a worker's clock may say otherwise.
    completed = min(parse_time(record.date_done) or now, now)
    started = parse_time(status.startedAt) or seen_running
    report = Report(
        state=record.state,
        attempt=attempt_of(status, record),
        worker=record.meta_worker or status.worker,
        # Seen running only after it had ended (a late read): it started by then.
        started_at=timestamp(min(started, completed)) if started is not None else None,
        completed_at=timestamp(completed),
    )
    if record.state == records.SUCCESS:
        if record.partial_size is None:
            result, truncated, size = truncate_result(record.result, bounds.max_result_bytes)
        else:  # read in part: `result` holds the start of the stored result
            result = bounded.preview(str(record.result), bounds.max_result_bytes)
            truncated, size = True, record.partial_size
        message = "task succeeded"
        if truncated:
            message = f"task succeeded; result of {size} bytes cut to a preview"
        progress = status.progress
        if progress is not None:
            # A poll may miss the last report before the end: a success is all done.
            progress = progress.model_copy(update={"percent": 100.0})
        done = succeeded(
            status,
            message,
            report,
            result=result,
            truncated=truncated,
            size=size,
            key=records.KEY_PREFIX + status.taskId if truncated and status.taskId else None,
            progress=progress,
            generation=generation,
            now=now,
        )
        return Outcome(done)
    error = error_of(record, bounds.max_traceback_bytes)
    report = replace(report, error=error)
    if record.state == records.REVOKED:
        reason, message = revoked_because(status, spec, record, now)
        if reason is Reason.DEADLINE_EXCEEDED:
            return Outcome(
                timed_out(status, reason, message, report, generation=generation, now=now)
            )
        return Outcome(revoked(status, reason, message, report, generation=generation, now=now))
    message = f"{error.type}: {error.message}" if error.message else error.type
    time_limit = TIME_LIMITS.get(error.type)
    if time_limit is not None:
        final = timed_out(status, time_limit, message, report, generation=generation, now=now)
    elif error.type == WORKER_LOST_ERROR:
        final = failed(status, Reason.WORKER_LOST, message, report, generation=generation, now=now)
    else:
        final = failed(status, Reason.TASK_ERROR, message, report, generation=generation, now=now)
    number = send_number(status.taskId)
    run_deadline = deadline(status)
    if (
        final.reason in RETRYABLE
        and number <= (spec.retries or 0)
        and not spec.cancel
        and (run_deadline is None or now < run_deadline)
    ):
        if final.reason is Reason.WORKER_LOST:
            # A worker that went silent may yet run the task (cut off, then back): the
            # previous attempt is revoked before the next one is sent.
            return Outcome(final, revoke=status.taskId, terminate=True, resend=number + 1)
        return Outcome(final, resend=number + 1)
    return Outcome(final)


def revoked_because(
    status: TaskRunStatus, spec: TaskRunSpec, record: TaskRecord, now: datetime
) -> tuple[RevokedReason | Literal[Reason.DEADLINE_EXCEEDED], str]:
    """Why a REVOKED record was revoked. The reason Celery stores is unreliable (a worker
    discarding a revoked message stores "revoked" again), so the clock decides first."""
    if spec.cancel:
        return Reason.CANCELLED, "cancelled by spec.cancel"
    expires_at, run_deadline = expiry(status), deadline(status)
    passed: list[tuple[datetime, RevokedReason | Literal[Reason.DEADLINE_EXCEEDED]]] = []
    if expires_at is not None and now >= expires_at:
        passed.append((expires_at, Reason.EXPIRED))
    if run_deadline is not None and now >= run_deadline:
        passed.append((run_deadline, Reason.DEADLINE_EXCEEDED))
    if passed:
        _, reason = min(passed)
    elif record.exception_message == "expired":
        reason = Reason.EXPIRED
    else:
        return Reason.CANCELLED, "task was revoked outside this TaskRun"
    if reason is Reason.EXPIRED:
        return reason, "no worker started the task before it expired"
    return reason, "the run did not finish within its timeout"


def unreadable(
    status: TaskRunStatus, record: Unreadable, generation: int | None, now: datetime
) -> TaskRunStatus:
    """A record nobody can read ends the run: waiting would never tell its outcome."""
    return failed(status, Reason.RESULT_LOST, record.message, generation=generation, now=now)


def vanished(
    status: TaskRunStatus, still_running: bool | None, generation: int | None, now: datetime
) -> TaskRunStatus:
    """A record gone after the task started: lost, once its worker answers without it
    (a Redis restarted without its data wipes the records of tasks still running, whose
    results will come; a worker that never answers is left to the liveness check)."""
    if still_running is not False:
        return status
    return failed(
        status,
        Reason.RESULT_LOST,
        "the task's record vanished from the result backend after it started "
        "(result_expires elapsed, or the backend lost its data)",
        Report(records.PENDING),
        generation=generation,
        now=now,
    )


def worker_lost(status: TaskRunStatus) -> TaskRecord:
    """The record Celery would have stored had the worker lived to see its child die."""
    return TaskRecord(
        records.FAILURE,
        {
            "exc_type": WORKER_LOST_ERROR,
            "exc_message": [f"worker {status.worker} stopped reporting the task while running it"],
        },
        worker=status.worker,
    )


def advance(
    spec: TaskRunSpec,
    status: TaskRunStatus,
    observed: Observed,
    now: datetime,
    *,
    generation: int | None,
    bounds: Bounds = Bounds(),
    seen_running: datetime | None = None,
) -> Outcome:
    """The next status of an in-flight run (sent, status.taskId set).

    `seen_running`: when the shell first heard the task run, if a later record
    superseded that news before it was handled (Celery records no start time)."""
    if status.phase is None or status.phase.terminal or status.taskId is None:
        return Outcome(status)
    record = observed if isinstance(observed, TaskRecord) else None
    if record is not None and record.ready:
        return finished(status, spec, record, generation, now, bounds, seen_running)

    # The task is revoked: what its record says so far goes into status with the end.
    report = Report(bounded.text(record.state, bounded.STATE_BYTES)) if record else None

    def stop(ended: TaskRunStatus, terminate: bool) -> Outcome:
        return Outcome(ended, revoke=status.taskId, terminate=terminate)

    if spec.cancel:
        cancelled = "cancelled by spec.cancel"
        return stop(
            revoked(status, Reason.CANCELLED, cancelled, report, generation=generation, now=now),
            True,
        )
    run_deadline = deadline(status)
    if run_deadline is not None and now >= run_deadline:
        limit = status.limits.timeout.seconds if status.limits and status.limits.timeout else 0
        late = f"the run did not finish within its timeout of {limit:g}s"
        return stop(
            timed_out(
                status, Reason.DEADLINE_EXCEEDED, late, report, generation=generation, now=now
            ),
            True,
        )
    started = record is not None and record.state != records.PENDING
    expires_at = expiry(status)
    unstarted = status.phase is Phase.QUEUED and not started
    if expires_at is not None and now >= expires_at and unstarted:
        expired = "no worker started the task before it expired"
        return stop(
            revoked(status, Reason.EXPIRED, expired, report, generation=generation, now=now),
            False,
        )

    if isinstance(observed, Unreadable):
        return Outcome(unreadable(status, observed, generation, now))
    if record is None:
        assert isinstance(observed, BackendError)
        unavailable = f"cannot read the result backend: {observed.message}"
        return Outcome(backend_unavailable(status, unavailable, generation=generation, now=now))
    if (
        record.state == records.PENDING
        and status.startedAt
        and status.phase
        in (
            Phase.RUNNING,
            Phase.RETRYING,
        )
    ):
        return Outcome(status, ask_workers=True)  # it was seen running: see `vanished`
    return Outcome(in_flight(status, record, generation, now, seen_running))


def in_flight(
    status: TaskRunStatus,
    record: TaskRecord,
    generation: int | None,
    now: datetime,
    seen_running: datetime | None = None,
) -> TaskRunStatus:
    """A record that is not ready: queued, started, retrying or reporting progress."""
    steady = STEADY.get(record.state)
    if steady and (status.state, status.reason, status.observedGeneration) == (
        record.state,
        steady,
        generation,
    ):
        return status  # the common poll: still waiting, still running, nothing new
    if record.state == records.PENDING:
        # Still queued: keep the message written when it was sent (no write for nothing).
        message = "waiting for a worker"
        if status.reason == Reason.QUEUED and status.message:
            message = status.message
        return queued(status, message, generation=generation, now=now)
    state = bounded.text(record.state, bounded.STATE_BYTES)
    report = Report(
        state,
        attempt=attempt_of(status, record),
        worker=record.meta_worker or status.worker,
        # Celery records no start time: the first time we see it running stands in.
        started_at=status.startedAt or timestamp(seen_running or now),
    )
    if record.state == records.RETRY:
        detail = record.exception_message or record.exception_type or "retry requested"
        message = f"the task asked Celery to retry it (attempt {report.attempt} next): {detail}"
        return retrying(status, message, report, generation=generation, now=now)
    if record.state == records.STARTED:
        return running(status, "task is running", report, generation=generation, now=now)
    # Any other state is the task's own (update_state), e.g. PROGRESS with its meta.
    progress = progress_of(record)
    message = f"task reports {state}"
    if progress and progress.percent is not None:
        message += f" ({progress.percent:g}%)"
    return progressed(status, message, report, progress, generation=generation, now=now)
