"""The named changes of a run's status (pure): one function per move a run can make.

Each change takes exactly the fields it sets, typed; all share `_change` for what
every change does: phase and reason, the message (bounded), observedGeneration, the
conditions, and on a terminal phase completedAt and duration.  Which change applies,
and when, is decided elsewhere (`transitions`, `sending`, `step`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from celery_taskrun.api import bounded
from celery_taskrun.api.model import (
    EffectiveLimits,
    ErrorInfo,
    Phase,
    Progress,
    Reason,
    TaskRunStatus,
)
from celery_taskrun.core import records
from celery_taskrun.core.conditions import conditions_for
from celery_taskrun.core.timing import first_submitted, human_duration, parse_time, timestamp

# The reasons each unsuccessful end may give.
FailedReason = Literal[
    Reason.TASK_ERROR,
    Reason.WORKER_LOST,
    Reason.RESULT_LOST,
    Reason.INVALID_SPEC,
    Reason.TASK_NOT_ALLOWED,
    Reason.INTERNAL_ERROR,
]
TimedOutReason = Literal[
    Reason.SOFT_TIME_LIMIT_EXCEEDED, Reason.TIME_LIMIT_EXCEEDED, Reason.DEADLINE_EXCEEDED
]
RevokedReason = Literal[Reason.CANCELLED, Reason.EXPIRED]
# Why a run is not sent yet.
PendingReason = Literal[Reason.BACKEND_UNAVAILABLE, Reason.THROTTLED]


@dataclass(frozen=True)
class Report:
    """What the task's record says, copied into status along with a change.  A field
    left None keeps what the status has."""

    state: str  # the raw Celery state
    attempt: int | None = None
    worker: str | None = None
    started_at: str | None = None  # Celery records none: when the operator first saw it
    completed_at: str | None = None
    error: ErrorInfo | None = None


def pending(
    status: TaskRunStatus,
    reason: PendingReason,
    message: str,
    *,
    limits: EffectiveLimits,
    generation: int | None,
    now: datetime,
) -> TaskRunStatus:
    """Not sent yet: the broker did not take the task (tried again), or a concurrency
    limit holds it back (sent once there is room).  `limits` say when its deadline
    (counted from creation meanwhile) falls."""
    update = {"limits": limits}
    return _change(status, Phase.PENDING, reason, message, update, generation, now)


def queued(
    status: TaskRunStatus, message: str, *, generation: int | None, now: datetime
) -> TaskRunStatus:
    """Sent, and no worker has started the task yet."""
    update = {"state": records.PENDING}
    return _change(status, Phase.QUEUED, Reason.QUEUED, message, update, generation, now)


def running(
    status: TaskRunStatus, message: str, report: Report, *, generation: int | None, now: datetime
) -> TaskRunStatus:
    """A worker runs the task."""
    return _change(status, Phase.RUNNING, Reason.STARTED, message, _of(report), generation, now)


def progressed(
    status: TaskRunStatus,
    message: str,
    report: Report,
    progress: Progress | None,
    *,
    generation: int | None,
    now: datetime,
) -> TaskRunStatus:
    """The running task reported a state of its own (e.g. PROGRESS, with its meta)."""
    update = {**_of(report), "progress": progress}
    return _change(status, Phase.RUNNING, Reason.PROGRESS, message, update, generation, now)


def retrying(
    status: TaskRunStatus, message: str, report: Report, *, generation: int | None, now: datetime
) -> TaskRunStatus:
    """The task asked Celery to retry it: the same task id runs again."""
    return _change(status, Phase.RETRYING, Reason.RETRY, message, _of(report), generation, now)


def resubmitted(
    status: TaskRunStatus, message: str, *, generation: int | None, now: datetime
) -> TaskRunStatus:
    """Sent again, as a new task id, after an attempt failed (spec.retries)."""
    update = {"state": records.PENDING}
    return _change(status, Phase.RETRYING, Reason.RESUBMITTED, message, update, generation, now)


def backend_unavailable(
    status: TaskRunStatus, message: str, *, generation: int | None, now: datetime
) -> TaskRunStatus:
    """A sent run's record cannot be read: its phase stays, the operator keeps trying."""
    assert status.phase is not None, "a sent run has a phase"
    reason = Reason.BACKEND_UNAVAILABLE
    return _change(status, status.phase, reason, message, {}, generation, now)


def succeeded(
    status: TaskRunStatus,
    message: str,
    report: Report,
    *,
    result: Any,
    truncated: bool | None,
    size: int | None,
    key: str | None,
    progress: Progress | None,
    generation: int | None,
    now: datetime,
) -> TaskRunStatus:
    """The task returned `result` (or a preview of it: `truncated`, its full `size` and
    the backend `key` that holds it)."""
    update = {
        **_of(report),
        "result": result,
        "resultTruncated": truncated,
        "resultBytes": size,
        "resultKey": key,
        "progress": progress,
    }
    return _change(status, Phase.SUCCEEDED, Reason.SUCCEEDED, message, update, generation, now)


def failed(
    status: TaskRunStatus,
    reason: FailedReason,
    message: str,
    report: Report | None = None,
    *,
    generation: int | None,
    now: datetime,
) -> TaskRunStatus:
    """The run ended without success: the task raised, its worker or its result was
    lost, or it could not run at all."""
    return _change(status, Phase.FAILED, reason, message, _of(report), generation, now)


def timed_out(
    status: TaskRunStatus,
    reason: TimedOutReason,
    message: str,
    report: Report | None = None,
    *,
    generation: int | None,
    now: datetime,
) -> TaskRunStatus:
    """The run ran out of time: a time limit of the task, or the run's deadline."""
    return _change(status, Phase.TIMED_OUT, reason, message, _of(report), generation, now)


def revoked(
    status: TaskRunStatus,
    reason: RevokedReason,
    message: str,
    report: Report | None = None,
    *,
    generation: int | None,
    now: datetime,
) -> TaskRunStatus:
    """The task was revoked: cancelled, or expired before a worker started it."""
    return _change(status, Phase.REVOKED, reason, message, _of(report), generation, now)


def _of(report: Report | None) -> dict[str, Any]:
    """The status fields a report sets."""
    if report is None:
        return {}
    fields = {
        "state": report.state,
        "attempt": report.attempt,
        "worker": report.worker,
        "startedAt": report.started_at,
        "completedAt": report.completed_at,
        "error": report.error,
    }
    return {name: value for name, value in fields.items() if value is not None}


def _change(
    status: TaskRunStatus,
    phase: Phase,
    reason: Reason,
    message: str,
    fields: dict[str, Any],
    generation: int | None,
    now: datetime,
) -> TaskRunStatus:
    """What every change does, with the change's own `fields`."""
    at = timestamp(now)
    message = bounded.text(message, bounded.MESSAGE_BYTES)
    update = {
        "phase": phase,
        "reason": reason,
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
