"""The tracker's shell with fakes of its clients: one bad object never stops the others.

Each case here has an end-to-end twin on the real stack (tests/e2e/test_hostile.py);
these run in milliseconds and reach the corners the real parts cannot be made to
hit on demand (a hung API call, a refused write, a bug in one step).
"""

from __future__ import annotations

import asyncio
import copy
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from celery_taskrun.core import records
from celery_taskrun.core import step as step_module
from celery_taskrun.core.records import TaskRecord, Unreadable
from celery_taskrun.engine import stepper as stepper_module

from fakes import Harness, until

SUCCESS = TaskRecord("SUCCESS", 42)  # done now


def phase(harness: Harness, body: dict[str, Any]) -> Any:
    return harness.kube.status(body["metadata"]["name"]).get("phase")


async def test_a_run_goes_from_queued_to_succeeded(harness: Harness) -> None:
    run = await harness.apply({"task": "t.a"})
    await until(lambda: phase(harness, run) == "Queued", what="Queued")
    await harness.backend.publish(harness.task_id(run), SUCCESS)
    await until(lambda: phase(harness, run) == "Succeeded", what="Succeeded")
    assert harness.kube.status(run["metadata"]["name"])["result"] == 42


async def test_an_unreadable_record_ends_its_run_alone(harness: Harness) -> None:
    bad, good = await harness.apply({"task": "t.a"}), await harness.apply({"task": "t.a"})
    await until(lambda: len(harness.celery.sent) == 2, what="both sent")
    await harness.backend.publish(harness.task_id(bad), Unreadable("pickle data"))
    await until(lambda: phase(harness, bad) == "Failed", what="bad run Failed")
    assert harness.kube.status(bad["metadata"]["name"])["reason"] == "ResultLost"
    # The other run, and one created afterwards, carry on.
    later = await harness.apply({"task": "t.a"})
    for run in (good, later):
        await until(lambda run=run: phase(harness, run) == "Queued", what="Queued")
        await harness.backend.publish(harness.task_id(run), SUCCESS)
        await until(lambda run=run: phase(harness, run) == "Succeeded", what="Succeeded")


async def test_a_hung_status_write_never_delays_another_runs_deadline(harness: Harness) -> None:
    stuck = await harness.apply({"task": "t.a"})
    await until(lambda: phase(harness, stuck) == "Queued", what="Queued")
    harness.kube.hang.add(stuck["metadata"]["name"])
    await harness.backend.publish(harness.task_id(stuck), TaskRecord("STARTED", {}))
    timed = await harness.apply({"task": "t.a", "timeout": 0.3})
    await until(lambda: phase(harness, timed) == "Queued", what="Queued")
    submitted = datetime.fromisoformat(
        harness.kube.status(timed["metadata"]["name"])["submittedAt"].replace("Z", "+00:00")
    )
    await until(lambda: phase(harness, timed) == "TimedOut", within=3, what="TimedOut")
    late = datetime.now(UTC) - (submitted + timedelta(seconds=0.3))
    assert late < timedelta(seconds=1), late


async def test_a_flood_of_publishes_costs_one_pending_step(harness: Harness) -> None:
    run = await harness.apply({"task": "t.a"})
    await until(lambda: phase(harness, run) == "Queued", what="Queued")
    task_id = harness.task_id(run)
    harness.kube.hang.add(run["metadata"]["name"])  # the first step will hold
    await harness.backend.publish(task_id, TaskRecord("PROGRESS", {"current": 0, "total": 10}))
    for i in range(2000):
        await harness.backend.publish(task_id, TaskRecord("PROGRESS", {"current": i, "total": 10}))
    steps = [t for t in harness.tracker.tasks if "_drive" in repr(t.get_coro())]
    assert len(steps) == 1  # one step runs; the latest news waits in its place
    tracked = harness.tracker.registry.get(run["metadata"]["uid"])
    assert tracked is not None and tracked.box.wanted and tracked.box.news is not None
    assert tracked.box.news[1] == TaskRecord("PROGRESS", {"current": 1999, "total": 10})


async def test_a_status_refused_for_its_size_is_written_smaller(harness: Harness) -> None:
    harness.kube.max_status_bytes = 4_000
    run = await harness.apply({"task": "t.a"})
    await until(lambda: phase(harness, run) == "Queued", what="Queued")
    await harness.backend.publish(harness.task_id(run), TaskRecord("SUCCESS", "x" * 200_000))
    await until(lambda: phase(harness, run) == "Succeeded", what="Succeeded")
    status = harness.kube.status(run["metadata"]["name"])
    assert status["resultTruncated"] is True and len(status["result"]) < 2000


async def test_a_revoke_mark_refused_by_a_hostile_record_still_ends_the_run(
    harness: Harness,
) -> None:
    """Found by the fuzz suite: Celery decodes the record it replaces with REVOKED, and a
    RETRY record whose result is a number does not decode."""
    harness.celery.mark_refused = True
    run = await harness.apply({"task": "t.a", "timeout": 0.5})
    name = run["metadata"]["name"]
    await until(lambda: phase(harness, run) == "Queued", what="Queued")
    await harness.backend.publish(harness.task_id(run), TaskRecord("RETRY", -3e221))
    await until(lambda: phase(harness, run) == "TimedOut", within=5, what="TimedOut")
    assert (name, "Warning", "RevokeFailed") in harness.kube.events


async def test_a_fast_tasks_intermediate_phases_cost_no_writes(make_harness: Any) -> None:
    harness = await make_harness(statusHoldSeconds=1.0)
    fast, slow = await harness.apply({"task": "t.a"}), await harness.apply({"task": "t.a"})
    await until(lambda: len(harness.celery.sent) == 2, what="both sent")
    await harness.backend.publish(harness.task_id(fast), TaskRecord("STARTED", {}))
    await harness.backend.publish(harness.task_id(fast), SUCCESS)
    await until(lambda: phase(harness, fast) == "Succeeded", within=0.5, what="written at once")
    # Queued and Running were never written: one status write, the end.
    assert harness.kube.writes == 1
    # A run that waits still shows it, once the hold is over.
    await until(lambda: phase(harness, slow) == "Queued", within=3, what="Queued")


async def test_a_status_that_can_never_be_written_is_let_go(harness: Harness) -> None:
    bad = harness.create({"task": "t.a"})
    harness.kube.refuse.add(bad["metadata"]["name"])
    await harness.tracker.observe("ADDED", bad)
    await until(lambda: harness.tracker.registry.get(bad["metadata"]["uid"]) is None, what="let go")
    good = await harness.apply({"task": "t.a"})
    await until(lambda: phase(harness, good) == "Queued", what="the next run Queued")


async def test_a_step_that_keeps_failing_ends_its_run(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = step_module.advance

    def buggy(spec: Any, status: Any, *args: Any, **kwargs: Any) -> Any:
        if spec.task == "t.buggy":
            raise KeyError("a bug")
        return real(spec, status, *args, **kwargs)

    monkeypatch.setattr(step_module, "advance", buggy)
    monkeypatch.setattr(stepper_module, "MAX_STEP_ERRORS", 3)
    bad, good = await harness.apply({"task": "t.buggy"}), await harness.apply({"task": "t.a"})
    await until(lambda: phase(harness, good) == "Queued", what="Queued")
    await harness.backend.publish(harness.task_id(good), SUCCESS)
    await until(lambda: phase(harness, good) == "Succeeded", what="the other run Succeeded")
    await until(lambda: phase(harness, bad) == "Failed", within=15, what="buggy run Failed")
    status = harness.kube.status(bad["metadata"]["name"])
    assert status["reason"] == "InternalError" and "KeyError" in status["message"]
    assert harness.task_id(bad) in harness.celery.revoked


async def test_a_deadline_holds_for_a_run_never_sent(harness: Harness) -> None:
    harness.celery.down = True
    run = harness.create({"task": "t.a", "timeout": 1, "poll": {"initialInterval": 3600}})
    # Created a second ago (creationTimestamp has whole seconds).
    created = datetime.now(UTC).replace(microsecond=0)
    run["metadata"]["creationTimestamp"] = created.isoformat()
    await harness.tracker.observe("ADDED", run)
    await until(lambda: phase(harness, run) == "Pending", what="Pending")
    await until(lambda: phase(harness, run) == "TimedOut", within=4, what="TimedOut")
    done = datetime.fromisoformat(
        harness.kube.status(run["metadata"]["name"])["completedAt"].replace("Z", "+00:00")
    )
    assert done - (created + timedelta(seconds=2)) < timedelta(seconds=1)


async def test_one_ttl_deletion_per_run_whatever_the_watch_repeats(harness: Harness) -> None:
    run = await harness.apply({"task": "t.a", "ttlSecondsAfterFinished": 3600})
    await until(lambda: phase(harness, run) == "Queued", what="Queued")
    await harness.backend.publish(harness.task_id(run), SUCCESS)
    await until(lambda: phase(harness, run) == "Succeeded", what="Succeeded")
    finished = await harness.kube.get("ns", run["metadata"]["name"])
    for _ in range(50):
        await harness.tracker.observe("MODIFIED", finished)
    assert len(harness.tracker.reaper.expiring) == 1
    assert len(harness.tracker.poller.schedule) == 1


async def test_echoes_of_a_finished_run_cost_no_write(harness: Harness) -> None:
    run = await harness.apply({"task": "t.a"})
    await until(lambda: phase(harness, run) == "Queued", what="Queued")
    queued = await harness.kube.get("ns", run["metadata"]["name"])  # the finalizer on
    await harness.backend.publish(harness.task_id(run), SUCCESS)
    await until(lambda: phase(harness, run) == "Succeeded", what="Succeeded")
    await until(lambda: harness.kube.metadata_writes == 2, what="the finalizer removed")
    for _ in range(3):  # the watch's events of our own writes, arriving after the end
        await harness.tracker.observe("MODIFIED", copy.deepcopy(queued))
    assert harness.kube.metadata_writes == 2  # the intent, then the release: no more
    assert not harness.tracker.registry


async def test_liveness_fails_when_the_loop_stops_turning(harness: Harness) -> None:
    assert harness.tracker.health() is None
    harness.tracker.poller.beat = time.monotonic() - 3600
    assert "has not turned" in (harness.tracker.health() or "")
    await until(lambda: harness.tracker.health() is None, what="the loop beats again")


async def test_a_crashed_loop_is_restarted(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashes = []
    real = harness.tracker.poller.schedule.due

    def due_once_broken() -> list[Any]:
        if not crashes:
            crashes.append(1)
            raise RuntimeError("a bug in the loop")
        return real()

    monkeypatch.setattr(harness.tracker.poller.schedule, "due", due_once_broken)
    await until(lambda: crashes, what="the loop crashed")
    run = await harness.apply({"task": "t.a"})
    await until(lambda: phase(harness, run) == "Queued", within=5, what="Queued after restart")


async def test_backend_outage_is_reported_and_recovered(harness: Harness) -> None:
    run = await harness.apply({"task": "t.a"})
    await until(lambda: phase(harness, run) == "Queued", what="Queued")
    harness.backend.down = True
    name = run["metadata"]["name"]
    await until(
        lambda: harness.kube.status(name).get("reason") == "BackendUnavailable",
        what="BackendUnavailable",
    )
    harness.backend.down = False
    harness.backend.stored[harness.task_id(run)] = SUCCESS
    await until(lambda: phase(harness, run) == "Succeeded", what="Succeeded")


@pytest.mark.parametrize("record", [records.NO_RECORD, TaskRecord("STARTED", {})])
async def test_steady_polls_write_nothing(harness: Harness, record: TaskRecord) -> None:
    run = await harness.apply({"task": "t.a"})
    await until(lambda: phase(harness, run) == "Queued", what="Queued")
    harness.backend.stored[harness.task_id(run)] = record
    await until(lambda: harness.backend.reads >= 3, what="a few polls")
    writes = harness.kube.writes
    reads = harness.backend.reads
    await until(lambda: harness.backend.reads >= reads + 3, what="more polls")
    assert harness.kube.writes == writes


async def test_what_the_dashboard_reads_is_measured(harness: Harness) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    durations = sample("taskrun_run_duration_seconds_count", phase="Succeeded")
    waits = sample("taskrun_queue_wait_seconds_count", queue="celery")
    run = await harness.apply({"task": "t.a"})
    await until(lambda: phase(harness, run) == "Queued", what="Queued")
    await until(
        lambda: sample("taskrun_queue_runs", queue="celery", phase="Queued") >= 1,
        within=7,
        what="the queued run counted",
    )
    await harness.backend.publish(harness.task_id(run), TaskRecord("STARTED", {}))
    await until(lambda: phase(harness, run) == "Running", what="Running")
    await harness.backend.publish(harness.task_id(run), SUCCESS)
    await until(lambda: phase(harness, run) == "Succeeded", what="Succeeded")
    assert sample("taskrun_queue_wait_seconds_count", queue="celery") == waits + 1
    assert sample("taskrun_run_duration_seconds_count", phase="Succeeded") == durations + 1
    assert sample("taskrun_backend_up", backend="result_backend") == 1


async def test_history_limits_keep_the_newest_and_never_a_gitops_run(make_harness: Any) -> None:
    harness = await make_harness(successfulRunsHistoryLimit=2, failedRunsHistoryLimit=1)
    runs = [await harness.apply({"task": "t.a"}) for _ in range(4)]
    managed = harness.create({"task": "t.a"})
    managed["metadata"]["labels"] = {"kustomize.toolkit.fluxcd.io/name": "apps"}
    await harness.tracker.observe("ADDED", managed)
    for run in [*runs, managed]:
        await until(lambda run=run: phase(harness, run) == "Queued", what="Queued")
        await harness.backend.publish(harness.task_id(run), SUCCESS)
        await until(lambda run=run: phase(harness, run) == "Succeeded", what="Succeeded")
    await until(lambda: len(harness.kube.objects) == 3, what="the oldest two deleted")
    newest = [run["metadata"]["name"] for run in (*runs[2:], managed)]
    assert set(harness.kube.objects) == set(newest)


async def test_a_default_ttl_spares_what_gitops_applies(make_harness: Any) -> None:
    harness = await make_harness(ttlSecondsAfterFinished=0)
    plain = await harness.apply({"task": "t.a"})
    argo = harness.create({"task": "t.a"})
    argo["metadata"]["annotations"] = {"argocd.argoproj.io/tracking-id": "app:x"}
    await harness.tracker.observe("ADDED", argo)
    for run in (plain, argo):
        await until(lambda run=run: phase(harness, run) == "Queued", what="Queued")
        await harness.backend.publish(harness.task_id(run), SUCCESS)
    await until(lambda: plain["metadata"]["name"] not in harness.kube.objects, what="TTL")
    assert phase(harness, argo) == "Succeeded"


async def test_news_in_a_tight_loop_never_holds_a_status_back_longer_than_the_hold(
    make_harness: Any,
) -> None:
    harness = await make_harness(statusHoldSeconds=0.3)
    run = await harness.apply({"task": "t.a"})
    await until(lambda: harness.celery.sent, what="sent")
    task_id, started = harness.task_id(run), time.monotonic()
    step = 0
    while phase(harness, run) != "Running":  # progress every 10 ms, for ever
        step += 1
        await harness.backend.publish(task_id, TaskRecord("PROGRESS", {"current": step}))
        await asyncio.sleep(0.01)
        assert time.monotonic() - started < 2, "Running never written"
    assert harness.kube.status(run["metadata"]["name"])["progress"]["current"] > 1


@pytest.mark.parametrize(
    ("policy", "reasons"),
    [("outcomes", ["Succeeded"]), ("transitions", ["Queued", "Succeeded"])],
)
async def test_events_announce_outcomes_or_every_transition(
    make_harness: Any, policy: str, reasons: list[str]
) -> None:
    harness = await make_harness(events=policy)
    run = await harness.apply({"task": "t.a"})
    await until(lambda: phase(harness, run) == "Queued", what="Queued")
    await harness.backend.publish(harness.task_id(run), SUCCESS)
    await until(lambda: phase(harness, run) == "Succeeded", what="Succeeded")
    name = run["metadata"]["name"]
    await until(lambda: any(r == "Succeeded" for n, _, r in harness.kube.events if n == name))
    assert [r for n, _, r in harness.kube.events if n == name] == reasons


async def test_a_held_status_never_lands_on_an_object_recreated_under_its_name(
    make_harness: Any,
) -> None:
    harness = await make_harness(statusHoldSeconds=1.0)
    old = await harness.apply({"task": "t.a"}, name="same")
    await until(lambda: harness.celery.sent, what="sent")
    # Running is held; meanwhile the TaskRun is deleted and created anew, same name.
    await harness.backend.publish(harness.task_id(old), TaskRecord("STARTED", {}))
    new = harness.create({"task": "t.b"}, name="same")
    new["metadata"]["resourceVersion"] = "2000"
    await until(lambda: harness.kube.conflicts == 1, within=3, what="the held write refused")
    assert harness.kube.status("same") == {"observedGeneration": 0}
    assert harness.kube.writes == 0
    await harness.tracker.observe("ADDED", copy.deepcopy(new))
    await until(lambda: phase(harness, new) == "Queued", within=3, what="the new run Queued")
    assert harness.kube.status("same")["taskId"] == harness.task_id(new)


async def test_a_status_written_by_someone_else_is_never_rolled_back(
    make_harness: Any,
) -> None:
    harness = await make_harness(statusHoldSeconds=1.0)
    run = await harness.apply({"task": "t.a"})
    name = run["metadata"]["name"]
    await until(lambda: harness.celery.sent, what="sent")
    await harness.backend.publish(harness.task_id(run), TaskRecord("STARTED", {}))
    # Another writer (an operator that took over) ends the run meanwhile.
    stored = harness.kube.objects[name]
    stored["status"] = {"phase": "Succeeded", "reason": "Succeeded", "taskId": harness.task_id(run)}
    stored["metadata"]["resourceVersion"] = "5000"
    await until(lambda: harness.kube.metadata_writes == 2, within=3, what="released")
    assert harness.kube.conflicts == 1
    assert harness.kube.status(name)["phase"] == "Succeeded"
    assert harness.kube.writes == 0  # our Running was refused, never written
