"""One look at a CronTaskRun (core/cron_step.py), table by table, on a given clock."""

from __future__ import annotations

from typing import Any

import pytest

from celery_taskrun.api.config import OperatorConfig, Policy
from celery_taskrun.api.cron import CronTaskRunSpec, CronTaskRunStatus
from celery_taskrun.api.model import Phase
from celery_taskrun.core.cron import scheduled_at, spread
from celery_taskrun.core.cron_step import CronView, RunView, decide

UID = "cron-uid"
# The CronTaskRun's creation, on a slot of `@every 10s` (anchored by its uid's hash).
T0 = 1_800_000_000 + (spread(UID) - 1_800_000_000) % 10
TEMPLATE = {"task": "reports.build", "args": [1], "queue": "reports"}
CONFIG = OperatorConfig()


def view(
    schedule: str = "@every 10s",
    *,
    generation: int = 1,
    status: dict[str, Any] | None = None,
    name: str = "nightly",
    **spec: Any,
) -> CronView:
    raw = {"schedule": schedule, "taskRunTemplate": {"spec": TEMPLATE}, **spec}
    return CronView(
        namespace="team-a",
        name=name,
        uid=UID,
        generation=generation,
        created=float(T0),
        spec=CronTaskRunSpec.model_validate(raw),
        template=TEMPLATE,
        status=CronTaskRunStatus.model_validate(status or {}),
    )


def observed(next_slot: int, generation: int = 1, **more: Any) -> dict[str, Any]:
    return {"nextScheduleTime": scheduled_at(next_slot), "observedGeneration": generation, **more}


def names(plan: Any) -> list[str]:
    return [body["metadata"]["name"] for body in plan.create]


def ready(plan: Any) -> tuple[str, str]:
    conditions = {c.type: c for c in plan.status.conditions}
    return conditions["Ready"].status, conditions["Ready"].reason


def test_a_new_schedule_runs_the_latest_slot_since_its_creation() -> None:
    plan = decide(view(), [], T0 + 25, CONFIG)
    assert names(plan) == [f"nightly-{T0 + 20}"]
    assert [(m.reason.value, m.count) for m in plan.missed] == [("Superseded", 1)]
    assert plan.status.lastScheduleTime is not None
    assert plan.status.nextScheduleTime is not None
    assert plan.status.nextScheduleTime.startswith(scheduled_at(T0 + 30)[:19])
    assert plan.status.observedGeneration == 1
    assert ready(plan) == ("True", "Scheduled")
    assert plan.wake == T0 + 30


@pytest.mark.parametrize(
    ("now", "made"),
    [
        (T0 + 29.9, []),  # not due yet
        (T0 + 30, [f"nightly-{T0 + 30}"]),  # due now
        (T0 + 30.5, [f"nightly-{T0 + 30}"]),
    ],
)
def test_the_next_slot_runs_when_it_falls_due(now: float, made: list[str]) -> None:
    plan = decide(view(status=observed(T0 + 30)), [], now, CONFIG)
    assert names(plan) == made
    assert not plan.missed


def test_an_edit_never_fires_a_run_by_itself() -> None:
    # Generation 2 not yet observed: slots before now are not the new schedule's.
    plan = decide(view(generation=2, status=observed(T0 + 30)), [], T0 + 95, CONFIG)
    assert names(plan) == [] and not plan.missed
    assert plan.status.observedGeneration == 2
    assert plan.wake == T0 + 100


def test_a_suspended_schedule_makes_no_run_and_shows_no_next_time() -> None:
    plan = decide(view(suspend=True, status=observed(T0 + 30)), [], T0 + 95, CONFIG)
    assert names(plan) == [] and plan.wake is None
    assert plan.status.nextScheduleTime is None
    assert ready(plan) == ("True", "Suspended")


def test_resumed_it_carries_on_from_the_resume_without_a_flood() -> None:
    suspended = observed(T0 + 30, generation=2) | {"nextScheduleTime": None}
    plan = decide(view(generation=3, status=suspended), [], T0 + 100_000.5, CONFIG)
    assert names(plan) == [] and not plan.missed
    assert plan.wake == T0 + 100_010


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"schedule": "61 * * * *"}, "InvalidSchedule"),
        ({"timeZone": "Mars/Olympus_Mons"}, "UnknownTimeZone"),
    ],
)
def test_a_schedule_that_cannot_run_is_not_ready_and_stalled(
    spec: dict[str, Any], reason: str
) -> None:
    plan = decide(view(**spec), [], T0 + 95, CONFIG)
    assert names(plan) == [] and plan.wake is None
    assert ready(plan) == ("False", reason)
    stalled = {c.type: c.status for c in plan.status.conditions or []}["Stalled"]
    assert stalled == "True"
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", reason)]
    # Told once: the next look, with the condition written, says nothing again.
    again = decide(view(**spec, status=plan.status.model_dump()), [], T0 + 99, CONFIG)
    assert again.events == ()


def test_a_template_the_policies_refuse_makes_no_run_and_names_the_rule() -> None:
    config = OperatorConfig(policies=[Policy(namespaces=["team-a"], tasks=["other.*"])])
    plan = decide(view(), [], T0 + 25, config)
    assert names(plan) == []
    status, reason = ready(plan)
    assert (status, reason) == ("False", "TaskNotAllowed")
    assert "policies[0]" in (plan.status.conditions or [])[0].message


def test_a_name_too_long_for_its_runs_label_is_refused() -> None:
    plan = decide(view(name="n" * 64), [], T0 + 25, CONFIG)
    assert names(plan) == [] and ready(plan) == ("False", "InvalidSpec")


def run(slot: int, phase: Phase | None, completed: float | None = None) -> RunView:
    return RunView(f"nightly-{slot}", f"uid-{slot}", slot, phase, completed)


def test_forbid_skips_a_slot_while_a_run_is_active() -> None:
    active = run(T0 + 20, Phase.RUNNING)
    spec = {"concurrencyPolicy": "Forbid"}
    plan = decide(view(status=observed(T0 + 30), **spec), [active], T0 + 30.2, CONFIG)
    assert names(plan) == []
    assert [(m.reason.value, m.first) for m in plan.missed] == [("AlreadyActive", T0 + 30)]
    assert [(e.type, e.reason) for e in plan.events] == [("Normal", "AlreadyActive")]
    assert [a.name for a in plan.status.active or []] == [active.name]


def test_replace_cancels_the_active_run_then_starts_the_new_one() -> None:
    active = run(T0 + 20, Phase.RUNNING)
    spec = {"concurrencyPolicy": "Replace"}
    plan = decide(view(status=observed(T0 + 30), **spec), [active], T0 + 30.2, CONFIG)
    assert [r.name for r in plan.cancel] == [active.name]
    assert names(plan) == [f"nightly-{T0 + 30}"]


def test_history_keeps_the_newest_of_each_outcome_and_never_an_active_run() -> None:
    runs = [run(T0 + 10 * i, Phase.SUCCEEDED, T0 + 10 * i + 1) for i in range(1, 6)]
    runs += [run(T0 + 100 + i, Phase.FAILED) for i in range(3)]
    runs += [run(T0 + 200, Phase.TIMED_OUT), run(T0 + 300, None), run(T0 + 301, Phase.RUNNING)]
    plan = decide(view(status=observed(T0 + 310)), runs, T0 + 305, CONFIG)
    deleted = sorted(r.name for r in plan.delete)
    assert deleted == sorted(
        [f"nightly-{T0 + 10}", f"nightly-{T0 + 20}"]  # succeeded beyond 3
        + [f"nightly-{T0 + 100 + i}" for i in range(3)]  # failed beyond 1 (TimedOut kept)
    )
    assert {a.name for a in plan.status.active or []} == {
        f"nightly-{T0 + 300}",
        f"nightly-{T0 + 301}",
    }
    assert plan.status.lastSuccessfulTime is not None
    assert plan.status.lastSuccessfulTime.startswith(scheduled_at(T0 + 51)[:19])


def test_a_slots_run_is_the_template_named_labelled_and_owned() -> None:
    raw = {"metadata": {"labels": {"team": "a"}, "annotations": {"note": "x"}}, "spec": TEMPLATE}
    plan = decide(view(taskRunTemplate=raw), [], T0 + 10, CONFIG)
    [body] = plan.create
    meta = body["metadata"]
    assert meta["name"] == f"nightly-{T0 + 10}" and meta["namespace"] == "team-a"
    assert meta["labels"] == {"team": "a", "celery.taskrun.dev/cron": "nightly"}
    assert meta["annotations"] == {
        "note": "x",
        "celery.taskrun.dev/scheduled-at": scheduled_at(T0 + 10),
    }
    [owner] = meta["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "CronTaskRun",
        "nightly",
        "cron-uid",
        True,
    )
    assert body["spec"] == TEMPLATE
    recorded = plan.recorded({meta["name"]: "run-uid"})
    assert [(a.name, a.uid) for a in recorded.active or []] == [(meta["name"], "run-uid")]


def test_missed_all_runs_at_most_a_hundred_after_a_long_outage() -> None:
    plan = decide(view(missedRuns="All"), [], T0 + 10 * 1000 + 5, CONFIG)
    assert len(plan.create) == 100
    assert names(plan)[-1] == f"nightly-{T0 + 10_000}"
    assert [(m.reason.value, m.count) for m in plan.missed] == [("TooManyMissed", 900)]


def test_skip_runs_no_slot_missed_before_this_operator_acted() -> None:
    spec = {"missedRuns": "Skip"}
    missed = decide(
        view(status=observed(T0 + 30), **spec), [], T0 + 52, CONFIG, acting_since=T0 + 51
    )
    assert names(missed) == []
    assert [(m.reason.value, m.count) for m in missed.missed] == [("Skipped", 3)]
    late = decide(view(status=observed(T0 + 30), **spec), [], T0 + 52, CONFIG, acting_since=T0 + 49)
    assert names(late) == [f"nightly-{T0 + 50}"]


def test_the_active_runs_shown_are_bounded_to_the_newest() -> None:
    runs = [run(T0 + i, Phase.RUNNING) for i in range(1, 151)]
    plan = decide(view(status=observed(T0 + 160)), runs, T0 + 160.5, CONFIG)
    shown = [a.name for a in plan.status.active or []]
    assert len(shown) == 100 and shown[-1] == f"nightly-{T0 + 150}"
    recorded = plan.recorded({f"nightly-{T0 + 160}": "u"})
    assert len(recorded.active or []) == 100
    assert (recorded.active or [])[-1].name == f"nightly-{T0 + 160}"
