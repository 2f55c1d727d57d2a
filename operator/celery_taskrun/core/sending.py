"""Sending a run's task (pure): the message, whether to send it, and the status after.

A run's task is sent as a `Message` (task, id, args, options, the limits applied); a
`Refusal` says why none may be sent.  `plan_send` decides one send: the run may be
over before it is sent (cancelled, refused by the operator's rules, past a deadline
it could not meet while the broker was down); otherwise it is a `Send`, the message
and the status once the broker has it (`sent` for a first send, `resent` for a later
one).  `not_sent` says what a send the broker did not take comes to.  Each send of a
run has a number, in its task id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.api.model import (
    AttemptRecord,
    EffectiveLimits,
    Phase,
    Reason,
    TaskRunSpec,
    TaskRunStatus,
)
from celery_taskrun.core import policy
from celery_taskrun.core.changes import failed, pending, queued, resubmitted, revoked, timed_out
from celery_taskrun.core.limits import effective_limits
from celery_taskrun.core.timing import deadline, first_submitted, timestamp, waiting

MAX_HISTORY = 10
REDIS_SCHEMES = ("redis", "rediss", "unix", "sentinel")
# kombu's Redis transport: 0 is first, 9 last, in buckets of these steps (0-2, 3-5, ...).
REDIS_PRIORITIES = (0, 9)


# Every task id the operator sends starts so (`tr-<uid>-<n>`): what it reads and
# listens to in the backend is only that.
TASK_ID_PREFIX = "tr-"


def task_id_for(uid: str, number: int) -> str:
    """The Celery task id of a run's send `number`: derived, so a resend is recognisable."""
    return f"{TASK_ID_PREFIX}{uid}-{number}"


def derived(task_id: str | None, uid: str) -> bool:
    """Whether `task_id` is one this run's sends would have (`tr-<uid>-<n>`): a status
    or annotation naming any other id is not the operator's to act on."""
    prefix = f"{TASK_ID_PREFIX}{uid}-"
    return task_id is not None and task_id.startswith(prefix) and task_id[len(prefix) :].isdigit()


def send_number(task_id: str | None) -> int:
    """Which send of its run a task id is (1 for none yet)."""
    suffix = (task_id or "").rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else 1


def trusted(status: TaskRunStatus, uid: str) -> TaskRunStatus:
    """A status read back from the API server, as far as the operator may act on it.

    Anyone with rights on the status can edit it: an in-flight status naming a task id
    this run never had would make the operator read, revoke or report another run's
    task.  Such a status is dropped (the run is followed again from its intent
    annotation and the backend); a finished one is left as it is (nothing acts on it).
    """
    if status.taskId is None or derived(status.taskId, uid):
        return status
    return status if status.phase is not None and status.phase.terminal else TaskRunStatus()


@dataclass(frozen=True)
class Message:
    """What is sent to Celery for one send of a run."""

    task: str
    task_id: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    limits: EffectiveLimits = field(default_factory=EffectiveLimits)  # for status.limits


@dataclass(frozen=True)
class Refusal:
    """Why no message may be sent for a run: it ends Failed with this reason."""

    reason: Literal[Reason.TASK_NOT_ALLOWED, Reason.INVALID_SPEC]
    message: str


@dataclass(frozen=True)
class Send:
    """A send decided: the message, and the status to write once the broker has it."""

    message: Message
    after: TaskRunStatus


def priority_refusal(priority: int | None, broker_url: str) -> str | None:
    """Why the broker cannot honour `priority` as given, if it cannot.

    spec.priority is passed as the broker means it: on Redis 0 is the highest and 9 the
    lowest (kombu files 0-2, 3-5, 6-8 and 9 each in a list of its own and takes them in
    that order; anything above 9 would quietly become the lowest); on RabbitMQ 0-255
    with the highest first (for a queue declared with x-max-priority)."""
    scheme = broker_url.split("://", 1)[0].split("+")[0].lower()
    if priority is None or scheme not in REDIS_SCHEMES:
        return None
    low, high = REDIS_PRIORITIES
    if low <= priority <= high:
        return None
    return (
        f"spec.priority {priority} cannot be honoured by a Redis broker: its priorities are "
        f"{low} (first) to {high} (last)"
    )


def message_expiry(sent: datetime, spec: TaskRunSpec, config: OperatorConfig) -> datetime:
    """The latest a message sent at `sent` may still be taken by a worker."""
    return sent + timedelta(seconds=(spec.countdown or 0) + config.messageExpires)


def message_for(
    spec: TaskRunSpec,
    config: OperatorConfig,
    *,
    uid: str,
    namespace: str,
    number: int,
    now: datetime,
    first_submitted_at: datetime | None = None,
) -> Message | Refusal:
    """The message for a run's send `number`, or why it must not be sent."""
    refused = policy.refusal(config, namespace, spec.task, spec.queue)
    if refused is not None:
        return Refusal(Reason.TASK_NOT_ALLOWED, refused)
    unheard = priority_refusal(spec.priority, config.brokerUrl)
    if unheard is not None:
        return Refusal(Reason.INVALID_SPEC, unheard)
    size = len(json.dumps([spec.args, spec.kwargs], separators=(",", ":")))
    if size > config.maxArgsBytes:
        return Refusal(
            Reason.INVALID_SPEC,
            f"args and kwargs take {size} bytes as JSON, over the bound of "
            f"{config.maxArgsBytes}: pass a reference to the data instead",
        )
    limits = effective_limits(spec, config)
    hard, soft = limits.timeLimit, limits.softTimeLimit
    if hard is not None and soft is not None and soft.seconds >= hard.seconds:
        return Refusal(
            Reason.INVALID_SPEC,
            f"softTimeLimit {soft.seconds:g}s (from {soft.source}) must be below timeLimit "
            f"{hard.seconds:g}s (from {hard.source}): Celery's prefork pool does not enforce "
            "the hard limit when the soft one is larger",
        )

    # The queue is always named: the one the policies checked (a run without spec.queue
    # goes to defaultQueue, not to whatever the sender's Celery defaults would route).
    options: dict[str, Any] = {
        "queue": spec.queue if spec.queue is not None else config.defaultQueue
    }
    if spec.priority is not None:
        options["priority"] = spec.priority
    if spec.countdown:
        options["countdown"] = spec.countdown
    if hard is not None:
        options["time_limit"] = hard.seconds
    if soft is not None:
        options["soft_time_limit"] = soft.seconds
    # The message itself expires at the earliest of `expires`, the run's deadline and
    # `messageExpires` after its countdown, so a worker that comes online late discards
    # it instead of running it, and no message outlives the revoke mark of its run.
    expiries = [message_expiry(now, spec, config)]
    if limits.expires is not None:
        expiries.append(now + timedelta(seconds=limits.expires.seconds))
    if limits.timeout is not None:
        start = first_submitted_at or now
        expiries.append(start + timedelta(seconds=limits.timeout.seconds))
    options["expires"] = min(expiries)
    return Message(
        task=spec.task,
        task_id=task_id_for(uid, number),
        args=list(spec.args),
        kwargs=dict(spec.kwargs),
        options=options,
        limits=limits,
    )


def plan_send(
    spec: TaskRunSpec,
    status: TaskRunStatus,
    config: OperatorConfig,
    *,
    uid: str,
    namespace: str,
    number: int,
    created: datetime | None,
    generation: int | None,
    now: datetime,
    previous: TaskRunStatus | None = None,
    throttled: str | None = None,
) -> Send | TaskRunStatus:
    """The run's send `number`, or the run's final status instead, or (`throttled`: why
    a concurrency limit holds its first send back) the status it waits in.

    `previous`: the ended attempt a resend follows (its status is not written yet: the
    new attempt's status replaces it)."""
    if spec.cancel:
        cancelled = "cancelled before it was sent"
        base = previous or status
        return revoked(base, Reason.CANCELLED, cancelled, generation=generation, now=now)
    decided = message_for(
        spec,
        config,
        uid=uid,
        namespace=namespace,
        number=number,
        now=now,
        first_submitted_at=first_submitted(previous) if previous else None,
    )
    if isinstance(decided, Refusal):
        return failed(status, decided.reason, decided.message, generation=generation, now=now)
    unsent = deadline(status.model_copy(update={"limits": decided.limits}), created)
    if previous is None and unsent is not None and now >= unsent:
        timeout = decided.limits.timeout.seconds if decided.limits.timeout else 0
        late = f"the task could not be sent within its timeout of {timeout:g}s"
        return timed_out(status, Reason.DEADLINE_EXCEEDED, late, generation=generation, now=now)
    if throttled is not None and previous is None:
        if waiting(status):
            return status  # its wait is written once: the counts move on without it
        limits = decided.limits
        return pending(
            status, Reason.THROTTLED, throttled, limits=limits, generation=generation, now=now
        )
    if previous is not None:
        after = resent(
            previous,
            number=number,
            sends=1 + (spec.retries or 0),
            task_id=decided.task_id,
            generation=generation,
            now=now,
        )
    else:
        after = sent(status, decided, generation, now)
    return Send(decided, after)


def sent(
    status: TaskRunStatus, message: Message, generation: int | None, now: datetime
) -> TaskRunStatus:
    """The status once the broker has taken a run's first send."""
    base = status.model_copy(
        update={
            "taskId": message.task_id,
            "attempt": 1,
            "submittedAt": timestamp(now),
            "limits": message.limits,
        }
    )
    queue = message.options["queue"]
    text = f"sent to {queue}; waiting for a worker"
    return queued(base, text, generation=generation, now=now)


def not_sent(
    status: TaskRunStatus,
    message: Message,
    error: str,
    *,
    permanent: bool,
    generation: int | None,
    now: datetime,
    previous: TaskRunStatus | None = None,
) -> TaskRunStatus:
    """A send the broker did not take.  A transient failure leaves a first send Pending
    (its deadline then counts from creation; `limits` say which); a resend keeps the
    status it had.  A permanent one (a message that cannot be encoded) ends the run."""
    if permanent:
        cannot = f"the task cannot be sent: {error}"
        return failed(status, Reason.INVALID_SPEC, cannot, generation=generation, now=now)
    if previous is not None:
        return status
    not_yet = f"cannot send the task yet: {error}"
    return pending(
        status,
        Reason.BACKEND_UNAVAILABLE,
        not_yet,
        limits=message.limits,
        generation=generation,
        now=now,
    )


def resent(
    status: TaskRunStatus,
    *,
    number: int,
    sends: int,
    task_id: str,
    generation: int | None,
    now: datetime,
) -> TaskRunStatus:
    """The status for a run's send `number` of at most `sends`, after an attempt ended:
    the ended one moves into the history."""
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
    again = f"submission {number} of {sends}: resubmitted after {status.reason}"
    return resubmitted(cleared, again, generation=generation, now=now)
