"""What the run's status becomes, given what the backend says and the clock (pure).

One function, `advance`, decides every in-flight step: the backend's record, the
deadline, `expires`, a cancel, or a backend outage.  It returns the next status
and what the shell must do about it (revoke the task, resubmit a new attempt, ask
the workers about a task whose record vanished).  The shell does the I/O; this
module never does.  Everything taken from a record is bounded (`bounded`) on its
way into status.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from celery_taskrun.api import bounded
from celery_taskrun.api.model import (
    ErrorInfo,
    Phase,
    Progress,
    Reason,
    TaskRunSpec,
    TaskRunStatus,
)
from celery_taskrun.core import records
from celery_taskrun.core.backoff import Backoff
from celery_taskrun.core.conditions import conditions_for
from celery_taskrun.core.records import Reading, TaskRecord, Unreadable
from celery_taskrun.core.submission import submission_of

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
    # The record vanished after the task started: ask the workers whether one still
    # runs it, then let `vanished` decide.
    ask_workers: bool = False


Observed = Reading | BackendError


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 / ISO string (or a datetime, as database backends return) -> aware UTC."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value and len(value) <= 64:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None  # someone else's record: a time we cannot read is no time
    else:
        return None
    try:
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except OverflowError:  # year 1 or 9999 shifted past the calendar's edge
        return None


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


def deadline(status: TaskRunStatus, created: datetime | None = None) -> datetime | None:
    """The run's deadline: spec.timeout counted from the first attempt's submission;
    for a run not sent yet after a failed send, from its creation (to the second, as
    creationTimestamp has it: hence one second more)."""
    limit = status.limits.timeout if status.limits else None
    start = first_submitted(status)
    if start is None and status.phase is Phase.PENDING and created is not None:
        start = created + timedelta(seconds=1)
    return start + timedelta(seconds=limit.seconds) if limit and start else None


def expiry(status: TaskRunStatus) -> datetime | None:
    """When the current attempt expires if it has not started (spec.expires)."""
    limit = status.limits.expires if status.limits else None
    sent = parse_time(status.submittedAt)
    return sent + timedelta(seconds=limit.seconds) if limit and sent else None


def next_check(status: TaskRunStatus, created: datetime | None = None) -> datetime | None:
    """The earliest moment the clock alone can change this run's status."""
    moments = [deadline(status, created)]
    if status.phase is Phase.QUEUED:
        moments.append(expiry(status))
    present = [m for m in moments if m is not None]
    return min(present) if present else None


# Polls a second or more apart fall on a grid of this many seconds (of the schedule's
# clock), so runs that are polled anyway are read together: one backend read a second
# for thousands of runs, not one for each.
POLL_GRID = 1.0


def next_delay(
    status: TaskRunStatus,
    backoff: Backoff,
    polls: int,
    now: datetime,
    created: datetime | None,
    tick: float,
) -> float:
    """Seconds until this run is looked at again: its poll backoff (long ones aligned to
    the grid; `tick` is the schedule's clock now), or sooner, exactly, when the clock
    alone will change its status (a deadline, an expiry)."""
    delay = backoff.interval(polls)
    if delay >= POLL_GRID:
        delay = math.ceil((tick + delay) / POLL_GRID) * POLL_GRID - tick
    check = next_check(status, created)
    if check is not None:
        delay = min(delay, max((check - now).total_seconds(), 0.0))
    return delay


def truncate_result(result: Any, bound: int) -> tuple[Any, bool | None, int | None]:
    """(result or preview, resultTruncated, resultBytes): a big result never fails a run."""
    value, size = bounded.json_value(result, bound)
    return (value, None, None) if size is None else (value, True, size)


def percent_of(info: dict[str, Any]) -> float | None:
    """The task's own percentage, or current/total; within 0-100 for the progress bar."""
    percent = None
    for key in ("percent", "progress"):
        percent = bounded.number(info.get(key))
        if percent is not None:
            break
    current, total = bounded.number(info.get("current")), bounded.number(info.get("total"))
    if percent is None and current is not None and total:
        percent = 100.0 * current / total
    return None if percent is None else round(min(max(percent, 0.0), 100.0), 1)


def progress_of(record: TaskRecord) -> Progress | None:
    """A custom state's meta (e.g. PROGRESS via update_state) as status.progress."""
    if not isinstance(record.result, dict):
        return None
    info: dict[str, Any] | None = record.result
    if bounded.json_value(info, bounded.PROGRESS_INFO_BYTES)[1] is not None:
        info = None  # too large or too deep to copy: the numbers still tell the progress
    return Progress(
        percent=percent_of(record.result),
        current=bounded.number(record.result.get("current")),
        total=bounded.number(record.result.get("total")),
        state=bounded.text(record.state, bounded.STATE_BYTES),
        info=info,
    )


def error_of(record: TaskRecord, bound: int) -> ErrorInfo:
    traceback = record.traceback
    return ErrorInfo(
        type=record.exception_type or bounded.text(record.state, bounded.STATE_BYTES),
        message=record.exception_message,
        # The end of a traceback says where it failed.
        traceback=bounded.tail(traceback, bound) if traceback else None,
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
    message = bounded.text(message, bounded.MESSAGE_BYTES)
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
    seen_running: datetime | None = None,
) -> Outcome:
    """A ready record (SUCCESS, FAILURE, REVOKED) -> the terminal status, or a retry."""
    # A record cannot be done in the future: a worker's clock may say otherwise.
    completed = min(parse_time(record.date_done) or now, now)
    common: dict[str, Any] = {
        "attempt": attempt_of(status, record),
        "state": record.state,
        "completedAt": timestamp(completed),
        "worker": record.meta_worker or status.worker,
    }
    started = parse_time(status.startedAt) or seen_running
    if started is not None:
        # Seen running only after it had ended (a late read): it started by then.
        common["startedAt"] = timestamp(min(started, completed))
    if record.state == records.SUCCESS:
        if record.partial_size is None:
            result, truncated, size = truncate_result(record.result, bounds.max_result_bytes)
        else:  # read in part: `result` holds the start of the stored result
            result = bounded.preview(str(record.result), bounds.max_result_bytes)
            truncated, size = True, record.partial_size
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
                resultKey=records.KEY_PREFIX + status.taskId
                if truncated and status.taskId
                else None,
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
        if reason is Reason.WORKER_LOST:
            # A worker that went silent may yet run the task (cut off, then back): the
            # previous attempt is revoked before the next one is sent.
            return Outcome(final, revoke=status.taskId, terminate=True, resubmit=submission + 1)
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


def unreadable(
    status: TaskRunStatus, record: Unreadable, generation: int | None, now: datetime
) -> TaskRunStatus:
    """A record nobody can read ends the run: waiting would never tell its outcome."""
    return with_phase(
        status, Phase.FAILED, Reason.RESULT_LOST, record.message, generation=generation, now=now
    )


def vanished(
    status: TaskRunStatus, still_running: bool | None, generation: int | None, now: datetime
) -> TaskRunStatus:
    """A record gone after the task started: lost, once its worker answers without it
    (a Redis restarted without its data wipes the records of tasks still running, whose
    results will come; a worker that never answers is left to the liveness check)."""
    if still_running is not False:
        return status
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


def worker_lost(status: TaskRunStatus) -> TaskRecord:
    """The record Celery would have stored had the worker lived to see its child die."""
    return TaskRecord(
        records.FAILURE,
        {
            "exc_type": "WorkerLostError",
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

    def stop(phase: Phase, reason: Reason, message: str, terminate: bool) -> Outcome:
        state = bounded.text(record.state, bounded.STATE_BYTES) if record else status.state
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

    if isinstance(observed, Unreadable):
        return Outcome(unreadable(status, observed, generation, now))
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
    state = bounded.text(record.state, bounded.STATE_BYTES)
    if record.state == records.PENDING:
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
        "startedAt": status.startedAt or timestamp(seen_running or now),
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
            state=state,
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
            state=state,
            **started,
        )
    # Any other state is the task's own (update_state), e.g. PROGRESS with its meta.
    progress = progress_of(record)
    message = f"task reports {state}"
    if progress and progress.percent is not None:
        message += f" ({progress.percent:g}%)"
    return with_phase(
        status,
        Phase.RUNNING,
        Reason.PROGRESS,
        message,
        generation=generation,
        now=now,
        state=state,
        progress=progress,
        **started,
    )


def shrunk(status: TaskRunStatus, level: int) -> TaskRunStatus:
    """`status` made smaller after a write was refused for its size: level 1 keeps short
    previews of the large fields, level 2 only what says where the run stands."""
    keep = 1024 if level == 1 else 0
    update: dict[str, Any] = {"attempts": status.attempts[:1] if status.attempts else None}
    if status.result is not None:
        size = status.resultBytes or len(bounded.encoded(status.result) or "")
        update |= {
            "result": bounded.preview(str(status.result), keep) if keep else None,
            "resultTruncated": True,
            "resultBytes": size,
        }
    if status.progress is not None:
        update["progress"] = status.progress.model_copy(update={"info": None})
    if status.error is not None:
        update["error"] = ErrorInfo(
            type=bounded.text(status.error.type, bounded.NAME_BYTES),
            message=bounded.text(status.error.message, keep or 256),
            traceback=bounded.tail(status.error.traceback, 2 * keep)
            if keep and status.error.traceback
            else None,
        )
    if not keep:
        update["message"] = bounded.text(status.message or "", 256)
        update["conditions"] = [
            c.model_copy(update={"message": bounded.text(c.message, 256)})
            for c in status.conditions or []
        ]
    return status.model_copy(update=update)
