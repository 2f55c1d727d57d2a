"""One look at a CronTaskRun (pure): what to create, cancel and delete, what its status
becomes, which Events say what was missed, and when to look again.

The shell (`engine/schedules.py`) applies the plan in this order: cancel (Replace),
create, write the status, post the Events, delete old runs.  A slot's run is created
before the status records the slot: an operator killed in between looks again, finds
the slot still due, and its create fails on the run's name (`<cron>-<slot>`), which is
then taken as made.  So each slot has exactly one run, whoever acts, whenever.

What has been decided is kept in the status alone: every slot before
`nextScheduleTime` was handled (run, or missed and told), as long as
`observedGeneration` is the spec's generation.  A new generation (an edit, a suspend,
a resume) starts afresh from when the operator first sees it, so an edit never fires
a run, and a long suspension never floods nor stops the schedule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import ValidationError

from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.api.cron import (
    CRON_LABEL,
    SCHEDULED_AT_ANNOTATION,
    ActiveRun,
    CronTaskRunSpec,
    CronTaskRunStatus,
    TaskRunMetadata,
)
from celery_taskrun.api.cron import KIND as CRON_KIND
from celery_taskrun.api.model import GROUP, KIND, VERSION, Condition, Phase
from celery_taskrun.core import cron
from celery_taskrun.core.policy import refusal
from celery_taskrun.core.timing import parse_time, timestamp

MAX_LABEL_VALUE = 63  # the cron label carries the CronTaskRun's name
# Active runs listed in status, the newest (Allow with runs that never end could
# otherwise grow the status without bound).
MAX_ACTIVE_SHOWN = 100


class ReadyReason(StrEnum):
    """The `Ready` condition's reason."""

    SCHEDULED = "Scheduled"  # Ready: runs are made as the schedule says
    SUSPENDED = "Suspended"  # Ready: spec.suspend; no runs until resumed
    INVALID_SPEC = "InvalidSpec"  # not Ready, Stalled: the spec cannot be read
    INVALID_SCHEDULE = "InvalidSchedule"  # the schedule does not parse
    UNKNOWN_TIME_ZONE = "UnknownTimeZone"  # the zone is not in the time zone database
    TASK_NOT_ALLOWED = "TaskNotAllowed"  # the template's task is refused by the policies


EventType = Literal["Normal", "Warning"]
WARNINGS = frozenset({cron.Reason.DEADLINE_EXCEEDED, cron.Reason.TOO_MANY_MISSED})


@dataclass(frozen=True)
class CronView:
    """A CronTaskRun as the operator last saw it."""

    namespace: str
    name: str
    uid: str
    generation: int
    created: float  # Unix seconds
    spec: CronTaskRunSpec | None  # None: it does not validate (`invalid` says why)
    template: Mapping[str, Any]  # the template's spec as written: copied into each run
    status: CronTaskRunStatus
    invalid: str | None = None


@dataclass(frozen=True)
class RunView:
    """One of its TaskRuns: the slot its annotation names, and how it stands."""

    name: str
    uid: str
    slot: int | None
    phase: Phase | None
    completed: float | None = None  # status.completedAt, Unix seconds

    @property
    def active(self) -> bool:
        return self.phase is None or not self.phase.terminal


@dataclass(frozen=True)
class CronEvent:
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class Lateness:
    """A slot made: when it was due (for the lateness metric)."""

    name: str
    slot: int


@dataclass(frozen=True)
class CronPlan:
    status: CronTaskRunStatus  # before the created runs' uids: see `recorded`
    create: tuple[dict[str, Any], ...] = ()  # TaskRun bodies, oldest slot first
    cancel: tuple[RunView, ...] = ()  # set spec.cancel first (Replace)
    delete: tuple[RunView, ...] = ()  # beyond the history limits
    events: tuple[CronEvent, ...] = ()
    missed: tuple[cron.Missed, ...] = ()
    wake: float | None = None  # when to look again (Unix seconds); None: on a change only
    made: tuple[Lateness, ...] = ()

    def recorded(self, created: Mapping[str, str]) -> CronTaskRunStatus:
        """The status once the runs named in `created` (name -> uid) exist."""
        if not created:
            return self.status
        made = [ActiveRun(name=name, uid=uid) for name, uid in created.items()]
        active = [*(self.status.active or []), *made][-MAX_ACTIVE_SHOWN:]
        return self.status.model_copy(update={"active": active})


def _seconds(value: object) -> float | None:
    moment = parse_time(value)
    return moment.timestamp() if moment else None


def run_view(obj: Mapping[str, Any]) -> RunView:
    """A TaskRun object as a CronTaskRun's look needs it."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    slot = _seconds((meta.get("annotations") or {}).get(SCHEDULED_AT_ANNOTATION))
    try:
        phase: Phase | None = Phase(str(status.get("phase")))
    except ValueError:
        phase = None
    return RunView(
        name=str(meta.get("name")),
        uid=str(meta.get("uid")),
        slot=int(slot) if slot is not None else None,
        phase=phase,
        completed=_seconds(status.get("completedAt")),
    )


def owner_of(obj: Mapping[str, Any]) -> str | None:
    """The uid of the CronTaskRun that owns this TaskRun, if one does."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("kind") == CRON_KIND and ref.get("controller"):
            return str(ref.get("uid"))
    return None


def cron_view(obj: Mapping[str, Any]) -> CronView:
    """A CronTaskRun object read: a spec that does not validate is kept as why."""
    meta = obj.get("metadata") or {}
    raw = obj.get("spec") or {}
    try:
        status = CronTaskRunStatus.model_validate(obj.get("status") or {})
    except ValidationError:
        status = CronTaskRunStatus()  # someone else's status: start afresh
    spec: CronTaskRunSpec | None = None
    invalid = None
    try:
        spec = CronTaskRunSpec.model_validate(raw)
    except ValidationError as error:
        invalid = f"invalid spec: {str(error)[:500]}"
    template = raw.get("taskRunTemplate") if isinstance(raw, dict) else None
    return CronView(
        namespace=str(meta.get("namespace")),
        name=str(meta.get("name")),
        uid=str(meta.get("uid")),
        generation=int(meta.get("generation") or 1),
        created=_seconds(meta.get("creationTimestamp")) or 0.0,
        spec=spec,
        template=(template or {}).get("spec") or {} if isinstance(template, dict) else {},
        status=status,
        invalid=invalid,
    )


def decide(
    view: CronView,
    runs: Sequence[RunView],
    now: float,
    config: OperatorConfig,
    *,
    acting_since: float = -math.inf,
) -> CronPlan:
    """What to do for `view` at `now`, given its runs (those it owns), by an operator
    acting since `acting_since` (slots due before it were missed, not late)."""
    at = datetime.fromtimestamp(now, UTC)
    stamp = timestamp(at)
    kept = _history(view, runs)
    active = sorted((r for r in runs if r.active), key=lambda r: (r.slot or 0, r.name))
    base = view.status.model_copy(
        update={
            "active": [ActiveRun(name=r.name, uid=r.uid) for r in active[-MAX_ACTIVE_SHOWN:]]
            or None,
            "lastSuccessfulTime": _last_success(view.status, runs),
            "observedGeneration": view.generation,
        }
    )

    def stalled(reason: ReadyReason, message: str) -> CronPlan:
        status = base.model_copy(
            update={
                "nextScheduleTime": None,
                "conditions": _conditions(view, False, reason, message, stamp),
            }
        )
        return CronPlan(status, delete=kept, events=_told(view, reason, message))

    spec = view.spec
    if spec is None:
        return stalled(ReadyReason.INVALID_SPEC, view.invalid or "the spec does not validate")
    if len(view.name) > MAX_LABEL_VALUE:
        why = f"the name is longer than {MAX_LABEL_VALUE} characters (its runs' label holds it)"
        return stalled(ReadyReason.INVALID_SPEC, why)
    try:
        schedule = cron.parse(spec.schedule, spec.timeZone, anchor=cron.spread(view.uid))
    except cron.ScheduleError as error:
        return stalled(ReadyReason(error.reason), str(error))
    task = spec.taskRunTemplate.spec
    refused = refusal(config, view.namespace, task.task, task.queue)
    if refused is not None:
        return stalled(ReadyReason.TASK_NOT_ALLOWED, refused)
    if spec.suspend:
        status = base.model_copy(
            update={
                "nextScheduleTime": None,
                "conditions": _conditions(
                    view, True, ReadyReason.SUSPENDED, "suspended: no runs until resumed", stamp
                ),
            }
        )
        return CronPlan(status, delete=kept)

    handled, since = _handled(view, now)
    due = cron.due(
        schedule,
        handled=handled,
        since=since,
        now=now,
        missed_runs=spec.missedRuns,
        starting_deadline=spec.startingDeadlineSeconds,
        concurrency=spec.concurrencyPolicy,
        active=[r.name for r in active],
        acting_since=acting_since,
    )
    status = base.model_copy(
        update={
            "lastScheduleTime": _later(view.status.lastScheduleTime, max(due.run, default=None)),
            "nextScheduleTime": timestamp(datetime.fromtimestamp(due.next, UTC)),
            "conditions": _conditions(
                view,
                True,
                ReadyReason.SCHEDULED,
                f"next run at {cron.scheduled_at(due.next)}",
                stamp,
            ),
        }
    )
    cancelled = set(due.cancel)
    events = tuple(
        CronEvent("Warning" if m.reason in WARNINGS else "Normal", m.reason.value, m.message)
        for m in due.missed
    )
    return CronPlan(
        status,
        create=tuple(run_body(view, cron.run_name(view.name, slot), slot) for slot in due.run),
        cancel=tuple(r for r in active if r.name in cancelled),
        delete=kept,
        events=events,
        missed=due.missed,
        wake=float(due.next),
        made=tuple(Lateness(cron.run_name(view.name, slot), slot) for slot in due.run),
    )


def _handled(view: CronView, now: float) -> tuple[int | None, float]:
    """(the newest slot already handled, when the current spec took effect)."""
    status = view.status
    if status.observedGeneration == view.generation:
        upcoming = parse_time(status.nextScheduleTime)
        if upcoming is not None:
            return int(upcoming.timestamp()) - 1, view.created
        return None, now  # it was suspended or stalled: start afresh
    if view.generation <= 1 and not status.observedGeneration:
        return None, view.created  # new: slots since its creation count
    return None, now  # edited: from now on


def _last_success(status: CronTaskRunStatus, runs: Sequence[RunView]) -> str | None:
    times = [r.completed for r in runs if r.phase is Phase.SUCCEEDED and r.completed]
    return _later(status.lastSuccessfulTime, max(times, default=None))


def _later(recorded: str | None, moment: float | None) -> str | None:
    """The later of a recorded time and `moment` (Unix seconds), as status writes it."""
    before = parse_time(recorded)
    if moment is None or (before is not None and before.timestamp() >= moment):
        return recorded
    return timestamp(datetime.fromtimestamp(moment, UTC))


def _history(view: CronView, runs: Sequence[RunView]) -> tuple[RunView, ...]:
    """Finished runs beyond the history limits, oldest kept last; never an active one."""
    if view.spec is None:
        return ()
    succeeded_limit = view.spec.successfulRunsHistoryLimit
    failed_limit = view.spec.failedRunsHistoryLimit
    finished = sorted(
        (r for r in runs if not r.active), key=lambda r: (r.slot or 0, r.name), reverse=True
    )
    succeeded = [r for r in finished if r.phase is Phase.SUCCEEDED]
    failed = [r for r in finished if r.phase is not Phase.SUCCEEDED]
    return tuple(succeeded[succeeded_limit:] + failed[failed_limit:])


def _conditions(
    view: CronView, ready: bool, reason: ReadyReason, message: str, now: str
) -> list[Condition]:
    """Ready, and Stalled for kstatus (a spec that cannot run reads as Failed, not as
    in progress for ever); a transition time moves only when a status flips."""
    before = {c.type: c for c in view.status.conditions or []}
    wanted = {"Ready": "True" if ready else "False", "Stalled": "False" if ready else "True"}
    out = []
    for kind, state in wanted.items():
        old = before.get(kind)
        out.append(
            Condition(
                type=kind,
                status="True" if state == "True" else "False",
                reason=reason.value,
                message=message,
                lastTransitionTime=old.lastTransitionTime
                if old is not None and old.status == state
                else now,
                observedGeneration=view.generation,
            )
        )
    return out


def _told(view: CronView, reason: ReadyReason, message: str) -> tuple[CronEvent, ...]:
    """A Warning when the CronTaskRun first stops being Ready for this reason."""
    ready = {c.type: c for c in view.status.conditions or []}.get("Ready")
    if ready is not None and ready.status == "False" and ready.reason == reason.value:
        return ()
    return (CronEvent("Warning", reason.value, message),)


def run_body(view: CronView, name: str, slot: int) -> dict[str, Any]:
    """The TaskRun `name` for the moment `slot`: the template, labelled, annotated with
    its time and owned by the cron (a slot's, or one triggered by hand)."""
    spec = view.spec
    assert spec is not None
    meta = spec.taskRunTemplate.metadata or TaskRunMetadata()
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": view.namespace,
            "labels": {**(meta.labels or {}), CRON_LABEL: view.name},
            "annotations": {
                **(meta.annotations or {}),
                SCHEDULED_AT_ANNOTATION: cron.scheduled_at(slot),
            },
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": CRON_KIND,
                    "name": view.name,
                    "uid": view.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": dict(view.template),
    }
