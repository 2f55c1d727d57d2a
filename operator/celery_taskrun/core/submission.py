"""Spec + operator config -> what to send to Celery (pure).

Effective limits follow one precedence for every limit: the TaskRun's spec, then
its `sizeBasedLimits` (time limits only), then the per-task-name default, then the
global default.  `status.limits` records each value and where it came from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery_taskrun.api.config import LimitDefaults, OperatorConfig
from celery_taskrun.api.model import (
    EffectiveLimit,
    EffectiveLimits,
    LimitSource,
    Reason,
    TaskRunSpec,
    TaskRunStatus,
)
from celery_taskrun.core import policy

MIB = 1024 * 1024


def task_id_for(uid: str, submission: int) -> str:
    """The Celery task id of one submission: derived, so a resend is recognisable."""
    return f"tr-{uid}-{submission}"


def derived(task_id: str | None, uid: str) -> bool:
    """Whether `task_id` is one this run's submissions would have (`tr-<uid>-<n>`): a
    status or annotation naming any other id is not the operator's to act on."""
    prefix = f"tr-{uid}-"
    return task_id is not None and task_id.startswith(prefix) and task_id[len(prefix) :].isdigit()


def submission_of(task_id: str | None) -> int:
    """Which submission of its run a task id is (1 for none yet)."""
    suffix = (task_id or "").rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else 1


@dataclass(frozen=True)
class Submission:
    task: str
    task_id: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    limits: EffectiveLimits = field(default_factory=EffectiveLimits)


@dataclass(frozen=True)
class Refusal:
    reason: Reason
    message: str


REDIS_SCHEMES = ("redis", "rediss", "unix", "sentinel")
# kombu's Redis transport: 0 is first, 9 last, in buckets of these steps (0-2, 3-5, ...).
REDIS_PRIORITIES = (0, 9)


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


def size_based_time_limits(spec: TaskRunSpec) -> tuple[float, float] | None:
    """The seed's dynamic timeout: 1 minute per MiB, at least 60 s, at most 3600 s."""
    sized = spec.sizeBasedLimits
    if sized is None:
        return None
    hard = sized.inputBytes / MIB * sized.secondsPerMiB
    hard = max(sized.minSeconds, min(hard, sized.maxSeconds))
    return hard, round(hard * sized.softLimitRatio, 3)


def effective_limits(spec: TaskRunSpec, config: OperatorConfig) -> EffectiveLimits:
    sized = size_based_time_limits(spec)
    layers: list[tuple[LimitSource, LimitDefaults | None]] = [
        ("taskDefault", config.task_defaults(spec.task)),
        ("globalDefault", config.defaults),
    ]

    def pick(name: str, own: float | None, from_size: float | None) -> EffectiveLimit | None:
        if own is not None:
            return EffectiveLimit(seconds=own, source="spec")
        if from_size is not None:
            return EffectiveLimit(seconds=from_size, source="sizeBasedLimits")
        for source, layer in layers:
            value = getattr(layer, name) if layer is not None else None
            if value is not None:
                return EffectiveLimit(seconds=value, source=source)
        return None

    return EffectiveLimits(
        timeLimit=pick("timeLimit", spec.timeLimit, sized[0] if sized else None),
        softTimeLimit=pick("softTimeLimit", spec.softTimeLimit, sized[1] if sized else None),
        timeout=pick("timeout", spec.timeout, None),
        expires=pick("expires", spec.expires, None),
    )


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


def plan(
    spec: TaskRunSpec,
    config: OperatorConfig,
    *,
    uid: str,
    namespace: str,
    submission: int,
    now: datetime,
    first_submitted_at: datetime | None = None,
) -> Submission | Refusal:
    """What to send for one submission of a run, or why it must not be sent."""
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

    options: dict[str, Any] = {}
    if spec.queue is not None:
        options["queue"] = spec.queue
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
    return Submission(
        task=spec.task,
        task_id=task_id_for(uid, submission),
        args=list(spec.args),
        kwargs=dict(spec.kwargs),
        options=options,
        limits=limits,
    )
