"""What the run's status becomes, given what the backend says and the clock (pure).

One function, `advance`, decides every in-flight step: the backend's record, the
deadline, `expires`, a cancel, or a backend outage.  It returns the next status
and what the shell must do about it (revoke the task, resubmit a new attempt).
The shell does the I/O; this module never does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from . import records
from .conditions import conditions_for
from .model import (
    AttemptRecord,
    ErrorInfo,
    Phase,
    Progress,
    Reason,
    TaskRunSpec,
    TaskRunStatus,
)
from .records import TaskRecord
from .submission import submission_of

MAX_HISTORY = 10
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
FAILURE_REASONS = {
    "SoftTimeLimitExceeded": (Phase.TIMED_OUT, Reason.SOFT_TIME_LIMIT_EXCEEDED),
    "TimeLimitExceeded": (Phase.TIMED_OUT, Reason.TIME_LIMIT_EXCEEDED),
    "WorkerLostError": (Phase.FAILED, Reason.WORKER_LOST),
}


@dataclass(frozen=True)
class BackendError:
    message: str


@dataclass(frozen=True)
class Bounds:
    max_result_bytes: int = 256 * 1024
    max_traceback_bytes: int = 16 * 1024


@dataclass(frozen=True)
class Outcome:
    status: TaskRunStatus
    revoke: str | None = None  # task id to revoke and mark revoked in the backend
    terminate: bool = False  # kill it if running
    resubmit: int | None = None  # the next attempt to send


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 / ISO string (or a datetime, as database backends return) -> aware UTC."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None  # someone else's record: a time we cannot read is no time
    else:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def human_duration(seconds: float) -> str:
    """Like kubectl's ages: 850ms, 42s, 3m7s, 2h5m."""
    if seconds < 1:
        return f"{max(seconds, 0) * 1000:.0f}ms"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{seconds:.1f}s" if seconds < 10 else f"{secs}s"


def attempt_of(status: TaskRunStatus, record: TaskRecord) -> int:
    """Executions so far: earlier submissions' attempts, then this task id's own Celery
    retries (a RETRY record announces the execution to come)."""
    first = status.attempts[-1].attempt + 1 if status.attempts else 1
    retries = record.retries or 0
    counted = first + retries + (1 if record.state == records.RETRY else 0)
    return max(counted, status.attempt or 1)


def first_submitted(status: TaskRunStatus) -> datetime | None:
    """When the run's first submission was sent: it anchors the deadline and duration."""
    return parse_time(status.attempts[0].submittedAt if status.attempts else status.submittedAt)


def deadline(status: TaskRunStatus) -> datetime | None:
    """The run's deadline: spec.timeout counted from the first attempt's submission."""
    limit = status.limits.timeout if status.limits else None
    start = first_submitted(status)
    return start + timedelta(seconds=limit.seconds) if limit and start else None


def expiry(status: TaskRunStatus) -> datetime | None:
    """When the current attempt expires if it has not started (spec.expires)."""
    limit = status.limits.expires if status.limits else None
    sent = parse_time(status.submittedAt)
    return sent + timedelta(seconds=limit.seconds) if limit and sent else None


def next_check(status: TaskRunStatus) -> datetime | None:
    """The earliest moment the clock alone can change this run's status."""
    moments = [deadline(status)]
    if status.phase is Phase.QUEUED:
        moments.append(expiry(status))
    present = [m for m in moments if m is not None]
    return min(present) if present else None


def truncate_result(result: Any, bound: int) -> tuple[Any, bool | None, int | None]:
    """(result or preview, resultTruncated, resultBytes): a big result never fails a run."""
    encoded = json.dumps(result, separators=(",", ":"), default=str)
    size = len(encoded.encode())
    if size <= bound:
        return result, None, None
    preview = encoded.encode()[: max(bound // 4, 256)].decode(errors="ignore")
    return preview, True, size


def percent_of(info: dict[str, Any]) -> float | None:
    for key in ("percent", "progress"):
        value = info.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return round(float(value), 1)
    current, total = info.get("current"), info.get("total")
    if isinstance(current, int | float) and isinstance(total, int | float) and total > 0:
        return round(100.0 * current / total, 1)
    return None


def progress_of(record: TaskRecord) -> Progress | None:
    """A custom state's meta (e.g. PROGRESS via update_state) as status.progress."""
    if not isinstance(record.result, dict):
        return None
    info = record.result
    numbers = {
        k: float(v)
        for k in ("current", "total")
        if isinstance(v := info.get(k), int | float) and not isinstance(v, bool)
    }
    return Progress(percent=percent_of(info), state=record.state, info=info, **numbers)


def error_of(record: TaskRecord, bound: int) -> ErrorInfo:
    traceback = record.traceback
    if traceback and len(traceback) > bound:
        traceback = "...\n" + traceback[-bound:]  # the end says where it failed
    return ErrorInfo(
        type=record.exception_type or record.state,
        message=record.exception_message,
        traceback=traceback,
    )


def with_phase(
    status: TaskRunStatus,
    phase: Phase,
    reason: Reason,
    message: str,
    *,
    generation: int | None,
    now: datetime,
    **fields: Any,
) -> TaskRunStatus:
    """The status in `phase`, with conditions and timing fields brought along."""
    at = timestamp(now)
    update: dict[str, Any] = {
        "phase": phase,
        "reason": reason.value,
        "message": message,
        "observedGeneration": generation,
        **fields,
    }
    if phase.terminal:
        completed = fields.get("completedAt") or at
        update["completedAt"] = completed
        start, end = first_submitted(status), parse_time(completed)
        if start and end:
            update["duration"] = human_duration((end - start).total_seconds())
    changed = status.model_copy(update=update)
    changed.conditions = conditions_for(
        phase, reason.value, message, generation, status.conditions, at
    )
    return changed


def finished(
    status: TaskRunStatus,
    spec: TaskRunSpec,
    record: TaskRecord,
    generation: int | None,
    now: datetime,
    bounds: Bounds,
) -> Outcome:
    """A ready record (SUCCESS, FAILURE, REVOKED) -> the terminal status, or a retry."""
    completed = parse_time(record.date_done) or now
    common: dict[str, Any] = {
        "attempt": attempt_of(status, record),
        "state": record.state,
        "completedAt": timestamp(completed),
        "worker": record.meta_worker or status.worker,
    }
    started = parse_time(status.startedAt)
    if started is not None and started > completed:
        # Seen running only after it had ended (a late read): it started by then.
        common["startedAt"] = timestamp(completed)
    if record.state == records.SUCCESS:
        result, truncated, size = truncate_result(record.result, bounds.max_result_bytes)
        message = "task succeeded"
        if status.progress is not None:
            # A poll may miss the last report before the end: a success is all done.
            common["progress"] = status.progress.model_copy(update={"percent": 100.0})
        if truncated:
            message = f"task succeeded; result of {size} bytes cut to a preview"
        return Outcome(
            with_phase(
                status,
                Phase.SUCCEEDED,
                Reason.SUCCEEDED,
                message,
                generation=generation,
                now=now,
                result=result,
                resultTruncated=truncated,
                resultBytes=size,
                **common,
            )
        )
    error = error_of(record, bounds.max_traceback_bytes)
    if record.state == records.REVOKED:
        phase, reason, message = revoked_because(status, spec, record, now)
        return Outcome(
            with_phase(
                status,
                phase,
                reason,
                message,
                generation=generation,
                now=now,
                error=error,
                **common,
            )
        )
    phase, reason = FAILURE_REASONS.get(error.type, (Phase.FAILED, Reason.TASK_ERROR))
    message = f"{error.type}: {error.message}" if error.message else error.type
    final = with_phase(
        status, phase, reason, message, generation=generation, now=now, error=error, **common
    )
    submission = submission_of(status.taskId)
    run_deadline = deadline(status)
    if (
        reason in RETRYABLE
        and submission <= (spec.retries or 0)
        and not spec.cancel
        and (run_deadline is None or now < run_deadline)
    ):
        return Outcome(final, resubmit=submission + 1)
    return Outcome(final)


def revoked_because(
    status: TaskRunStatus, spec: TaskRunSpec, record: TaskRecord, now: datetime
) -> tuple[Phase, Reason, str]:
    """Why a REVOKED record was revoked. The reason Celery stores is unreliable (a worker
    discarding a revoked message stores "revoked" again), so the clock decides first."""
    if spec.cancel:
        return Phase.REVOKED, Reason.CANCELLED, "cancelled by spec.cancel"
    passed = []
    expires_at, run_deadline = expiry(status), deadline(status)
    if expires_at is not None and now >= expires_at:
        passed.append((expires_at, Phase.REVOKED, Reason.EXPIRED))
    if run_deadline is not None and now >= run_deadline:
        passed.append((run_deadline, Phase.TIMED_OUT, Reason.DEADLINE_EXCEEDED))
    if passed:
        _, phase, reason = min(passed)
    elif record.exception_message == "expired":
        phase, reason = Phase.REVOKED, Reason.EXPIRED
    else:
        return Phase.REVOKED, Reason.CANCELLED, "task was revoked outside this TaskRun"
    if reason is Reason.EXPIRED:
        return phase, reason, "no worker started the task before it expired"
    return phase, reason, "the run did not finish within its timeout"


def worker_lost(status: TaskRunStatus) -> TaskRecord:
    """The record Celery would have stored had the worker lived to see its child die."""
    return TaskRecord(
        records.FAILURE,
        {
            "exc_type": "WorkerLostError",
            "exc_message": [f"worker {status.worker} stopped answering while running the task"],
        },
        worker=status.worker,
    )


def advance(
    spec: TaskRunSpec,
    status: TaskRunStatus,
    observed: TaskRecord | BackendError,
    now: datetime,
    *,
    generation: int | None,
    bounds: Bounds = Bounds(),
) -> Outcome:
    """The next status of an in-flight run (sent, status.taskId set)."""
    if status.phase is None or status.phase.terminal or status.taskId is None:
        return Outcome(status)
    record = observed if isinstance(observed, TaskRecord) else None
    if record is not None and record.ready:
        return finished(status, spec, record, generation, now, bounds)

    def stop(phase: Phase, reason: Reason, message: str, terminate: bool) -> Outcome:
        state = record.state if record else status.state
        return Outcome(
            with_phase(status, phase, reason, message, generation=generation, now=now, state=state),
            revoke=status.taskId,
            terminate=terminate,
        )

    if spec.cancel:
        return stop(Phase.REVOKED, Reason.CANCELLED, "cancelled by spec.cancel", True)
    run_deadline = deadline(status)
    if run_deadline is not None and now >= run_deadline:
        limit = status.limits.timeout.seconds if status.limits and status.limits.timeout else 0
        return stop(
            Phase.TIMED_OUT,
            Reason.DEADLINE_EXCEEDED,
            f"the run did not finish within its timeout of {limit:g}s",
            True,
        )
    started = record is not None and record.state != records.PENDING
    expires_at = expiry(status)
    unstarted = status.phase is Phase.QUEUED and not started
    if expires_at is not None and now >= expires_at and unstarted:
        return stop(
            Phase.REVOKED, Reason.EXPIRED, "no worker started the task before it expired", False
        )

    if record is None:
        assert isinstance(observed, BackendError)
        phase = status.phase
        return Outcome(
            with_phase(
                status,
                phase,
                Reason.BACKEND_UNAVAILABLE,
                f"cannot read the result backend: {observed.message}",
                generation=generation,
                now=now,
            )
        )
    return Outcome(in_flight(status, record, generation, now))


def in_flight(
    status: TaskRunStatus, record: TaskRecord, generation: int | None, now: datetime
) -> TaskRunStatus:
    """A record that is not ready: queued, started, retrying or reporting progress."""
    steady = STEADY.get(record.state)
    if steady and (status.state, status.reason, status.observedGeneration) == (
        record.state,
        steady,
        generation,
    ):
        return status  # the common poll: still waiting, still running, nothing new
    at = timestamp(now)
    if record.state == records.PENDING:
        if status.phase in (Phase.RUNNING, Phase.RETRYING) and status.startedAt:
            # It was seen running and its record is gone: expired, flushed or lost.
            return with_phase(
                status,
                Phase.FAILED,
                Reason.RESULT_LOST,
                "the task's record vanished from the result backend after it started "
                "(result_expires elapsed, or the backend lost its data)",
                generation=generation,
                now=now,
                state=records.PENDING,
            )
        # Still queued: keep the message written at submission (no write for nothing).
        message = "waiting for a worker"
        if status.reason == Reason.QUEUED and status.message:
            message = status.message
        return with_phase(
            status,
            Phase.QUEUED,
            Reason.QUEUED,
            message,
            generation=generation,
            now=now,
            state=records.PENDING,
        )
    # Celery records no start time: the first time we see it running stands in for it.
    started = {
        "startedAt": status.startedAt or at,
        "worker": record.meta_worker or status.worker,
        "attempt": attempt_of(status, record),
    }
    if record.state == records.RETRY:
        detail = record.exception_message or record.exception_type or "retry requested"
        return with_phase(
            status,
            Phase.RETRYING,
            Reason.RETRY,
            f"the task asked Celery to retry it (attempt {started['attempt']} next): {detail}",
            generation=generation,
            now=now,
            state=record.state,
            **started,
        )
    if record.state == records.STARTED:
        return with_phase(
            status,
            Phase.RUNNING,
            Reason.STARTED,
            "task is running",
            generation=generation,
            now=now,
            state=record.state,
            **started,
        )
    # Any other state is the task's own (update_state), e.g. PROGRESS with its meta.
    progress = progress_of(record)
    message = f"task reports {record.state}"
    if progress and progress.percent is not None:
        message += f" ({progress.percent:g}%)"
    return with_phase(
        status,
        Phase.RUNNING,
        Reason.PROGRESS,
        message,
        generation=generation,
        now=now,
        state=record.state,
        progress=progress,
        **started,
    )


def resubmitted(
    status: TaskRunStatus,
    *,
    submission: int,
    submissions: int,
    task_id: str,
    generation: int | None,
    now: datetime,
) -> TaskRunStatus:
    """The status for a new submission: the finished one moves into the history."""
    previous = AttemptRecord(
        attempt=status.attempt or 1,
        taskId=status.taskId or "",
        phase=status.phase or Phase.FAILED,
        reason=status.reason,
        message=status.message,
        submittedAt=status.submittedAt,
        completedAt=status.completedAt,
    )
    history = [*(status.attempts or []), previous][-MAX_HISTORY:]
    # Keep the first attempt: it anchors the deadline.
    if status.attempts and history[0] != status.attempts[0]:
        history = [status.attempts[0], *history[-(MAX_HISTORY - 1) :]]
    cleared = status.model_copy(
        update={
            "attempts": history,
            "attempt": previous.attempt + 1,
            "taskId": task_id,
            "state": records.PENDING,
            "submittedAt": timestamp(now),
            "startedAt": None,
            "completedAt": None,
            "duration": None,
            "worker": None,
            "progress": None,
            "result": None,
            "error": None,
        }
    )
    return with_phase(
        cleared,
        Phase.RETRYING,
        Reason.RESUBMITTED,
        f"submission {submission} of {submissions}: resubmitted after {status.reason}",
        generation=generation,
        now=now,
    )
