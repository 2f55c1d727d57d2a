"""One step of one run (pure): what the engine must do now, as a plan.

A frozen view of the run (what the API server holds, what the operator last decided),
what was observed of its task and the clock go in; a `Plan` comes out: the status to
write, the side effects (revoke, send, ask the workers) and nothing else.  The engine
applies plans and decides nothing: when an effect's answer matters (a send that did
not land, workers asked about a vanished record), the answer goes back in here
(`after_send`, `after_asking`) for the next plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.api.model import Phase, Reason, TaskRunSpec, TaskRunStatus
from celery_taskrun.core import records
from celery_taskrun.core.changes import FailedReason, failed
from celery_taskrun.core.content import Bounds
from celery_taskrun.core.sending import Send, message_expiry, not_sent, plan_send, send_number
from celery_taskrun.core.timing import parse_time
from celery_taskrun.core.transitions import Observed, advance, vanished, worker_lost


@dataclass(frozen=True)
class View:
    """What the engine knows of a run, as a decision needs it."""

    uid: str
    namespace: str
    generation: int | None
    created: datetime | None
    spec: TaskRunSpec
    status: TaskRunStatus  # what the status should be (written or owed)
    problem: str | None = None  # why the spec is invalid, if it is
    # When this attempt's task was first heard running, if it was (Celery records no
    # start time, and later news can supersede that sighting before a step sees it).
    seen_running: datetime | None = None
    # Why a concurrency limit holds the run's first send back, if one does.
    throttled: str | None = None

    @property
    def sent(self) -> bool:
        return self.status.taskId is not None and self.status.phase not in (None, Phase.PENDING)


@dataclass(frozen=True)
class Revoke:
    task_id: str
    terminate: bool  # kill it if running
    reason: str
    keep_for: float  # seconds the revoked mark must outlive the message


@dataclass(frozen=True)
class AskWorkers:
    """The record vanished after the task started: does a worker still hold it?"""

    task_id: str
    worker: str | None


@dataclass(frozen=True)
class Plan:
    status: TaskRunStatus  # what the status becomes (written unless `send` says otherwise)
    revoke: Revoke | None = None  # first
    send: Send | None = None  # then: on success its `after` is written, else `after_send`
    ask: AskWorkers | None = None  # instead of everything: the answer goes to `after_asking`
    previous: TaskRunStatus | None = field(default=None)  # the attempt a resend follows


def ended(view: View, reason: FailedReason, message: str, now: datetime) -> TaskRunStatus:
    """The run failed for `reason` (an invalid spec, an operator that kept failing)."""
    return failed(view.status, reason, message, generation=view.generation, now=now)


def revoke_of(
    view: View, task_id: str, terminate: bool, reason: str, now: datetime, config: OperatorConfig
) -> Revoke:
    """A revoke whose mark lasts as long as the attempt's message may still be taken."""
    sent = parse_time(view.status.submittedAt) or now
    keep_for = (message_expiry(sent, view.spec, config) - now).total_seconds()
    return Revoke(task_id, terminate, reason, keep_for)


def _send(
    view: View,
    config: OperatorConfig,
    number: int,
    now: datetime,
    previous: TaskRunStatus | None = None,
) -> Plan:
    decision = plan_send(
        view.spec,
        view.status,
        config,
        uid=view.uid,
        namespace=view.namespace,
        number=number,
        created=view.created,
        generation=view.generation,
        now=now,
        previous=previous,
        throttled=view.throttled,
    )
    if isinstance(decision, Send):
        return Plan(previous or view.status, send=decision, previous=previous)
    return Plan(decision)


def decide(
    view: View,
    observed: Observed | None,
    now: datetime,
    config: OperatorConfig,
    bounds: Bounds,
) -> Plan:
    """The plan for one step.  `observed` (what the backend says of the current task)
    is needed once the run is sent; the engine reads it first when no news brought it."""
    if view.problem is not None:
        return Plan(ended(view, Reason.INVALID_SPEC, view.problem, now))
    if not view.sent:
        return _send(view, config, send_number(view.status.taskId), now)
    assert observed is not None, "a sent run's step needs its record"
    outcome = advance(
        view.spec,
        view.status,
        observed,
        now,
        generation=view.generation,
        bounds=bounds,
        seen_running=view.seen_running,
    )
    if outcome.ask_workers:
        return Plan(outcome.status, ask=AskWorkers(view.status.taskId or "", view.status.worker))
    revoke = None
    if outcome.revoke:
        reason = outcome.status.reason.value if outcome.status.reason else "revoked"
        revoke = revoke_of(view, outcome.revoke, outcome.terminate, reason, now, config)
    if outcome.resend is not None:
        resend = _send(view, config, outcome.resend, now, previous=outcome.status)
        return Plan(resend.status, revoke=revoke, send=resend.send, previous=resend.previous)
    return Plan(outcome.status, revoke=revoke)


def after_asking(view: View, status: TaskRunStatus, answer: bool | None, now: datetime) -> Plan:
    """The plan once the workers were asked whether one still holds the task."""
    return Plan(vanished(status, answer, view.generation, now))


def after_send(
    view: View, plan: Plan, error: str | None, *, permanent: bool, now: datetime
) -> TaskRunStatus:
    """The status once a planned send was tried: its `after` if the broker took it,
    else what the failure means (`not_sent`)."""
    assert plan.send is not None
    if error is None:
        return plan.send.after
    return not_sent(
        view.status,
        plan.send.message,
        error,
        permanent=permanent,
        generation=view.generation,
        now=now,
        previous=plan.previous,
    )


def held(task_id: str, answers: Mapping[str, set[str]]) -> bool | None:
    """Whether any worker that answered holds the task; None when none answered."""
    return any(task_id in ids for ids in answers.values()) if answers else None


def lost(status: TaskRunStatus, reading: records.Reading) -> records.Reading | None:
    """What a run whose worker went silent comes to, given its record now: the record
    itself once it is final (or unreadable), nothing while it was never started (still
    queued), else the failure Celery would have stored had the worker lived."""
    if isinstance(reading, records.TaskRecord) and not reading.ready:
        return None if reading.state == records.PENDING else worker_lost(status)
    return reading


def running(reading: Observed) -> bool:
    """Whether a record says its task has started and not ended."""
    return isinstance(reading, records.TaskRecord) and reading.state not in (
        records.PENDING,
        *records.READY_STATES,
    )


def moved(before: TaskRunStatus, after: TaskRunStatus) -> bool:
    """Whether a run visibly moved on (resets its backoff): a new phase, reason or
    state, or new progress; a reworded message alone is not news."""

    def key(status: TaskRunStatus) -> tuple[object, ...]:
        percent = status.progress.percent if status.progress else None
        return status.phase, status.reason, status.state, percent

    return key(before) != key(after)
