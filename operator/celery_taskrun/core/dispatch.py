"""Around a send (pure): whether to send at all, what status follows a send, and what
a failed send means.

Before a task is sent the run may already be over: cancelled, refused by the
operator's rules, or past a deadline it could not meet while the broker was down.
Otherwise `prepare` returns what to send and the status to write once the broker
has it: Queued for a first submission, Retrying/Resubmitted for a later one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.api.model import AttemptRecord, Phase, Reason, TaskRunSpec, TaskRunStatus
from celery_taskrun.core import records
from celery_taskrun.core.submission import Refusal, Submission, plan
from celery_taskrun.core.transitions import deadline, first_submitted, timestamp, with_phase

MAX_HISTORY = 10


@dataclass(frozen=True)
class Send:
    submission: Submission
    after: TaskRunStatus  # the status once the broker has the task


def prepare(
    spec: TaskRunSpec,
    status: TaskRunStatus,
    config: OperatorConfig,
    *,
    uid: str,
    namespace: str,
    submission: int,
    created: datetime | None,
    generation: int | None,
    now: datetime,
    previous: TaskRunStatus | None = None,
) -> Send | TaskRunStatus:
    """What to send for this submission, or the run's final status instead.

    `previous`: the ended attempt a resubmission follows (its status is not written
    yet: the new attempt's status replaces it)."""

    def end(phase: Phase, reason: Reason, message: str, base: TaskRunStatus) -> TaskRunStatus:
        return with_phase(base, phase, reason, message, generation=generation, now=now)

    if spec.cancel:
        return end(
            Phase.REVOKED, Reason.CANCELLED, "cancelled before it was sent", previous or status
        )
    decided = plan(
        spec,
        config,
        uid=uid,
        namespace=namespace,
        submission=submission,
        now=now,
        first_submitted_at=first_submitted(previous) if previous else None,
    )
    if isinstance(decided, Refusal):
        return end(Phase.FAILED, decided.reason, decided.message, status)
    unsent = deadline(status.model_copy(update={"limits": decided.limits}), created)
    if previous is None and unsent is not None and now >= unsent:
        timeout = decided.limits.timeout.seconds if decided.limits.timeout else 0
        return end(
            Phase.TIMED_OUT,
            Reason.DEADLINE_EXCEEDED,
            f"the task could not be sent within its timeout of {timeout:g}s",
            status,
        )
    if previous is not None:
        after = resubmitted(
            previous,
            submission=submission,
            submissions=1 + (spec.retries or 0),
            task_id=decided.task_id,
            generation=generation,
            now=now,
        )
    else:
        after = queued(status, decided, generation, now)
    return Send(decided, after)


def queued(
    status: TaskRunStatus, sent: Submission, generation: int | None, now: datetime
) -> TaskRunStatus:
    """The status of a first submission the broker has taken."""
    base = status.model_copy(
        update={
            "taskId": sent.task_id,
            "attempt": 1,
            "state": records.PENDING,
            "submittedAt": timestamp(now),
            "limits": sent.limits,
        }
    )
    queue = sent.options.get("queue", "the default queue")
    message = f"sent to {queue}; waiting for a worker"
    return with_phase(base, Phase.QUEUED, Reason.QUEUED, message, generation=generation, now=now)


def not_sent(
    status: TaskRunStatus,
    sent: Submission,
    error: str,
    *,
    permanent: bool,
    generation: int | None,
    now: datetime,
    previous: TaskRunStatus | None = None,
) -> TaskRunStatus:
    """A send the broker did not take.  A transient failure leaves a first submission
    Pending (its deadline then counts from creation; `limits` say which); a resubmission
    keeps the status it had.  A permanent one (a message that cannot be encoded) ends
    the run."""
    if permanent:
        return with_phase(
            status,
            Phase.FAILED,
            Reason.INVALID_SPEC,
            f"the task cannot be sent: {error}",
            generation=generation,
            now=now,
        )
    if previous is not None:
        return status
    return with_phase(
        status,
        Phase.PENDING,
        Reason.BACKEND_UNAVAILABLE,
        f"cannot send the task yet: {error}",
        generation=generation,
        now=now,
        limits=sent.limits,
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
