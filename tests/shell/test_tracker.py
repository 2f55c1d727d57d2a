"""The tracker's shell with fakes of its clients: one bad object never stops the others.

Each case here has an end-to-end twin on the real stack (tests/e2e/test_hostile.py);
these run in milliseconds on the loop's fake time, assert when things happen to the
millisecond, and reach the corners the real parts cannot be made to hit on demand (a
hung API call, a refused write, a bug in one step).
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from prometheus_client import REGISTRY

from celery_taskrun.api.model import FINISHED_LABEL
from celery_taskrun.core import records
from celery_taskrun.core import step as step_module
from celery_taskrun.core.records import TaskRecord, Unreadable
from celery_taskrun.core.transitions import advance
from celery_taskrun.engine import poller as poller_module
from celery_taskrun.engine import stepper as stepper_module
from celery_taskrun.engine import writer as writer_module

from fakes import Harness, MakeHarness, at, loop_time, name_of, pass_time

SUCCESS = TaskRecord("SUCCESS", 42)  # done now
MS = 1e-3  # timestamps in status have milliseconds


async def test_a_run_goes_from_queued_to_succeeded(harness: Harness) -> None:
    run = await harness.apply({"task": "t.a"})
    await harness.until_phase(run, "Queued")
    await harness.backend.publish(harness.task_id(run), SUCCESS)
    await harness.until_phase(run, "Succeeded")
    assert harness.status(run)["result"] == 42
    assert [s.task_id for s in harness.celery.sent] == [harness.task_id(run)]


async def test_an_unreadable_record_ends_its_run_alone(harness: Harness) -> None:
    bad, good = await harness.apply({"task": "t.a"}), await harness.apply({"task": "t.a"})
    await harness.seen.until(lambda: len(harness.celery.sent) == 2, what="both sent")
    await harness.backend.publish(harness.task_id(bad), Unreadable("pickle data"))
    await harness.until_phase(bad, "Failed")
    assert harness.status(bad)["reason"] == "ResultLost"
    # The other run, and one created afterwards, carry on.
    later = await harness.apply({"task": "t.a"})
    for run in (good, later):
        await harness.until_phase(run, "Queued")
        await harness.backend.publish(harness.task_id(run), SUCCESS)
        await harness.until_phase(run, "Succeeded")


async def test_a_hung_status_write_never_delays_another_runs_deadline(harness: Harness) -> None:
    stuck = await harness.apply({"task": "t.a"})
    await harness.until_phase(stuck, "Queued")
    harness.kube.hung[name_of(stuck)] = asyncio.Event()  # never answers
    await harness.backend.publish(harness.task_id(stuck), TaskRecord("STARTED", {}))
    timed = await harness.apply({"task": "t.a", "timeout": 0.3})
    await harness.until_phase(timed, "Queued")
    ended = await harness.until_phase(timed, "TimedOut")
    # Ended on the dot: its deadline is 0.3 s after it was submitted.
    status = harness.status(timed)
    assert ended == pytest.approx(at(status["submittedAt"]) + 0.3, abs=MS)
    assert at(status["completedAt"]) == pytest.approx(ended, abs=MS)
    assert harness.phase(stuck) == "Queued"  # the Running write still hangs


async def test_a_flood_of_publishes_costs_one_pending_step(harness: Harness) -> None:
    run = await harness.apply({"task": "t.a"})
    await harness.until_phase(run, "Queued")
    task_id, name = harness.task_id(run), name_of(run)
    gate = harness.kube.hung[name] = asyncio.Event()  # the next status write holds
    await harness.backend.publish(task_id, TaskRecord("PROGRESS", {"current": 0, "total": 1}))
    await harness.seen.until(lambda: name in harness.kube.waiting, what="the write held")
    for i in range(1, 2001):
        await harness.backend.publish(task_id, TaskRecord("PROGRESS", {"current": i, "total": 1}))
    await pass_time(10)  # polls come and go meanwhile: nothing more is written
    before = len(harness.kube.written(name))
    gate.set()
    await harness.seen.until(
        lambda: harness.status(run).get("progress", {}).get("current") == 2000, what="the latest"
    )
    await pass_time(10)
    # The write that held (the first news), then one for the latest: none in between.
    progress = [w.what["progress"]["current"] for w in harness.kube.written(name)[before:]]
    assert progress == [0, 2000]


async def test_a_status_refused_for_its_size_is_written_smaller(harness: Harness) -> None:
    harness.kube.max_status_bytes = 4_000
    run = await harness.apply({"task": "t.a"})
    await harness.until_phase(run, "Queued")
    await harness.backend.publish(harness.task_id(run), TaskRecord("SUCCESS", "x" * 200_000))
    await harness.until_phase(run, "Succeeded")
    status = harness.status(run)
    assert status["resultTruncated"] is True and len(status["result"]) < 2000
    assert [what for _, what, name in harness.kube.refused] == ["patch_status"]


async def test_a_revoke_mark_refused_by_a_hostile_record_still_ends_the_run(
    harness: Harness,
) -> None:
    """Found by the fuzz suite: Celery decodes the record it replaces with REVOKED, and a
    RETRY record whose result is a number does not decode."""
    harness.celery.mark_refused = True
    run = await harness.apply({"task": "t.a", "timeout": 0.5})
    await harness.until_phase(run, "Queued")
    await harness.backend.publish(harness.task_id(run), TaskRecord("RETRY", -3e221))
    ended = await harness.until_phase(run, "TimedOut")
    assert ended == pytest.approx(at(harness.status(run)["submittedAt"]) + 0.5, abs=MS)
    assert harness.task_id(run) in harness.celery.revoked
    assert "RevokeFailed" in harness.kube.reasons(name_of(run))


async def test_a_fast_tasks_intermediate_phases_cost_no_writes(make_harness: MakeHarness) -> None:
    harness = await make_harness(statusHoldSeconds=1.0)
    fast, slow = await harness.apply({"task": "t.a"}), await harness.apply({"task": "t.a"})
    await harness.seen.until(lambda: len(harness.celery.sent) == 2, what="both sent")
    sent = harness.celery.sent_at[1]
    await harness.backend.publish(harness.task_id(fast), TaskRecord("STARTED", {}))
    await harness.backend.publish(harness.task_id(fast), SUCCESS)
    # The end is written at once; Queued and Running never were.
    assert await harness.until_phase(fast, "Succeeded") == loop_time()
    assert [w.what["phase"] for w in harness.kube.written(name_of(fast))] == ["Succeeded"]
    # A run that waits shows it when the hold is over: a second after it was sent.
    assert await harness.until_phase(slow, "Queued") == pytest.approx(sent + 1.0, abs=MS)


async def test_a_status_that_can_never_be_written_is_let_go(harness: Harness) -> None:
    bad = harness.create({"task": "t.a"})
    harness.kube.refuse.add(name_of(bad))
    await harness.tracker.observe("ADDED", bad)
    good = await harness.apply({"task": "t.a"})
    await harness.until_phase(good, "Queued")
    # Refused at every size, then never tried again: a followed run would be.
    tries = writer_module.SHRINK_LEVELS + 1
    await pass_time(600)
    assert [name for _, _, name in harness.kube.refused] == [name_of(bad)] * tries


async def test_a_step_that_keeps_failing_ends_its_run(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = advance

    def buggy(spec: Any, status: Any, *args: Any, **kwargs: Any) -> Any:
        if spec.task == "t.buggy":
            raise KeyError("a bug")
        return real(spec, status, *args, **kwargs)

    monkeypatch.setattr(step_module, "advance", buggy)
    monkeypatch.setattr(stepper_module, "MAX_STEP_ERRORS", 3)
    bad, good = await harness.apply({"task": "t.buggy"}), await harness.apply({"task": "t.a"})
    await harness.until_phase(good, "Queued")
    await harness.backend.publish(harness.task_id(good), SUCCESS)
    await harness.until_phase(good, "Succeeded")
    ended = await harness.until_phase(bad, "Failed")
    status = harness.status(bad)
    assert status["reason"] == "InternalError" and "KeyError" in status["message"]
    await harness.seen.until(lambda: harness.task_id(bad) in harness.celery.revoked, what="revoke")
    # Its first poll failed, then again 2 s later, and 4 s after that: ended at the third.
    first_poll = harness.celery.sent_at[0] + harness.tracker.config.poll.initialInterval
    assert ended == pytest.approx(first_poll + 2 + 4, abs=MS)


async def test_a_deadline_holds_for_a_run_never_sent(harness: Harness) -> None:
    harness.celery.down = True
    run = harness.create({"task": "t.a", "timeout": 1, "poll": {"initialInterval": 3600}})
    created = at(run["metadata"]["creationTimestamp"])
    await harness.tracker.observe("ADDED", run)
    await harness.until_phase(run, "Pending")
    ended = await harness.until_phase(run, "TimedOut")
    # Counted from its creation, plus the second creationTimestamp may have cut off.
    assert ended == pytest.approx(created + 1 + 1, abs=MS)
    assert at(harness.status(run)["completedAt"]) == pytest.approx(ended, abs=MS)
    assert not harness.celery.sent


async def test_one_ttl_deletion_per_run_whatever_the_watch_repeats(harness: Harness) -> None:
    run = await harness.apply({"task": "t.a", "ttlSecondsAfterFinished": 60})
    await harness.until_phase(run, "Queued")
    await harness.backend.publish(harness.task_id(run), SUCCESS)
    done = await harness.until_phase(run, "Succeeded")
    finished = copy.deepcopy(harness.kube.objects[name_of(run)])
    for _ in range(50):
        await harness.tracker.observe("MODIFIED", copy.deepcopy(finished))
    await harness.seen.until(lambda: harness.kube.deletes, within=70, what="the TTL deletion")
    await pass_time(600)
    ((when, name),) = harness.kube.delete_calls  # one call, when its TTL came
    assert name == name_of(run) and when == pytest.approx(done + 60, abs=MS)


async def test_a_finished_run_leaving_the_watch_is_still_deleted_at_its_ttl(
    harness: Harness,
) -> None:
    """The label that marks a run finished takes it out of the operator's watch (a
    DELETED event); one that comes before its write's answer is not a deletion."""
    run = await harness.apply({"task": "t.a", "ttlSecondsAfterFinished": 60})
    await harness.until_phase(run, "Queued")
    await harness.backend.publish(harness.task_id(run), SUCCESS)
    done = await harness.until_phase(run, "Succeeded")
    await harness.seen.until(
        lambda: (
            FINISHED_LABEL in (harness.kube.objects[name_of(run)]["metadata"].get("labels") or {})
        ),
        within=5,
        what="the finished label",
    )
    await harness.tracker.observe("DELETED", copy.deepcopy(harness.kube.objects[name_of(run)]))
    await harness.seen.until(lambda: harness.kube.deletes, within=70, what="the TTL deletion")
    ((when, name),) = harness.kube.delete_calls
    assert name == name_of(run) and when == pytest.approx(done + 60, abs=MS)


async def test_a_finished_run_deleted_by_another_is_forgotten(harness: Harness) -> None:
    run = await harness.apply({"task": "t.a", "ttlSecondsAfterFinished": 60})
    await harness.until_phase(run, "Queued")
    await harness.backend.publish(harness.task_id(run), SUCCESS)
    await harness.until_phase(run, "Succeeded")
    await pass_time(1)  # labelled finished: out of the operator's watch
    body = harness.kube.removed(name_of(run))  # deleted by someone else
    await pass_time(120)
    assert body["metadata"]["uid"] not in harness.tracker.reaper.kept
    assert harness.kube.delete_calls == []  # nothing left to delete at its TTL


async def test_echoes_of_a_finished_run_cost_no_write(harness: Harness) -> None:
    run = await harness.apply({"task": "t.a"})
    await harness.until_phase(run, "Queued")
    queued = copy.deepcopy(harness.kube.objects[name_of(run)])  # the finalizer on
    await harness.backend.publish(harness.task_id(run), SUCCESS)
    await harness.until_phase(run, "Succeeded")
    await harness.seen.until(lambda: not harness.kube.finalizers(name_of(run)), what="released")

    def seen() -> tuple[int, int, int]:
        kube = harness.kube
        return len(kube.writes), len(kube.metadata_writes), len(harness.backend.reads)

    before = seen()
    for _ in range(3):  # the watch's events of our own writes, arriving after the end
        await harness.tracker.observe("MODIFIED", copy.deepcopy(queued))
    await pass_time(600)
    # Not adopted again: no write, no metadata write (the intent, the release), no read.
    assert len(harness.kube.metadata_writes) == 2
    assert seen() == before


async def test_liveness_fails_when_the_loop_stops_turning(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    timeout = harness.tracker.config.livenessTimeout
    await pass_time(600)  # idle for ten minutes: the loop still turns
    assert harness.tracker.health() is None
    monkeypatch.setenv("TASKRUN_FAULT", "stall-loop")  # its next turn (within 1 s) stalls
    # It last turned within the second before: healthy until `timeout` after that turn.
    await pass_time(timeout - poller_module.HEARTBEAT_SECONDS)
    assert harness.tracker.health() is None
    await pass_time(poller_module.HEARTBEAT_SECONDS + 0.01)
    assert "has not turned" in (harness.tracker.health() or "")


async def test_a_crashed_loop_is_restarted(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug in the loop cannot be caused from outside: the schedule is broken once.
    crashed: list[float] = []
    real = harness.tracker.poller.schedule.due

    def due_once_broken() -> list[Any]:
        if not crashed:
            crashed.append(loop_time())
            harness.seen.note()
            raise RuntimeError("a bug in the loop")
        return real()

    monkeypatch.setattr(harness.tracker.poller.schedule, "due", due_once_broken)
    await harness.seen.until(lambda: crashed or None, what="the loop crashed")
    run = await harness.apply({"task": "t.a"})
    # Restarted a second after it crashed (the supervisor's first delay).
    assert await harness.until_phase(run, "Queued") == pytest.approx(crashed[0] + 1, abs=MS)


async def test_backend_outage_is_reported_and_recovered(harness: Harness) -> None:
    run = await harness.apply({"task": "t.a"})
    await harness.until_phase(run, "Queued")
    harness.backend.down = True
    await harness.seen.until(
        lambda: harness.status(run).get("reason") == "BackendUnavailable",
        what="BackendUnavailable",
    )
    assert "BackendUnavailable" in harness.kube.reasons(name_of(run))  # a Warning event
    harness.backend.down = False
    harness.backend.stored[harness.task_id(run)] = SUCCESS
    await harness.until_phase(run, "Succeeded")


@pytest.mark.parametrize("record", [records.NO_RECORD, TaskRecord("STARTED", {})])
async def test_steady_polls_write_nothing(harness: Harness, record: TaskRecord) -> None:
    run = await harness.apply({"task": "t.a"})
    await harness.until_phase(run, "Queued")
    harness.backend.stored[harness.task_id(run)] = record
    await pass_time(5)
    writes, reads = len(harness.kube.writes), len(harness.backend.reads)
    await pass_time(60)
    assert len(harness.backend.reads) > reads + 3  # polled all along
    assert len(harness.kube.writes) == writes


async def test_what_the_dashboard_reads_is_measured(harness: Harness) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    durations = sample("taskrun_run_duration_seconds_count", phase="Succeeded")
    waits = sample("taskrun_queue_wait_seconds_count", queue="celery")
    run = await harness.apply({"task": "t.a"})
    await harness.until_phase(run, "Queued")
    await pass_time(5)  # the gauges are set every 5 s
    assert sample("taskrun_queue_runs", queue="celery", phase="Queued") >= 1
    await harness.backend.publish(harness.task_id(run), TaskRecord("STARTED", {}))
    await harness.until_phase(run, "Running")
    await harness.backend.publish(harness.task_id(run), SUCCESS)
    await harness.until_phase(run, "Succeeded")
    assert sample("taskrun_queue_wait_seconds_count", queue="celery") == waits + 1
    assert sample("taskrun_run_duration_seconds_count", phase="Succeeded") == durations + 1
    assert sample("taskrun_backend_up", backend="result_backend") == 1


async def test_history_limits_keep_the_newest_and_never_a_gitops_run(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(successfulRunsHistoryLimit=2, failedRunsHistoryLimit=1)
    runs = [await harness.apply({"task": "t.a"}) for _ in range(4)]
    managed = harness.create({"task": "t.a"})
    managed["metadata"]["labels"] = {"kustomize.toolkit.fluxcd.io/name": "apps"}
    await harness.tracker.observe("ADDED", managed)
    for run in [*runs, managed]:
        await harness.until_phase(run, "Queued")
        await harness.backend.publish(harness.task_id(run), SUCCESS)
        await harness.until_phase(run, "Succeeded")
    await harness.seen.until(lambda: len(harness.kube.objects) == 3, what="the oldest deleted")
    newest = [name_of(run) for run in (*runs[2:], managed)]
    assert set(harness.kube.objects) == set(newest)


async def test_a_default_ttl_spares_what_gitops_applies(make_harness: MakeHarness) -> None:
    harness = await make_harness(ttlSecondsAfterFinished=0)
    plain = await harness.apply({"task": "t.a"})
    argo = harness.create({"task": "t.a"})
    argo["metadata"]["annotations"] = {"argocd.argoproj.io/tracking-id": "app:x"}
    await harness.tracker.observe("ADDED", argo)
    for run in (plain, argo):
        await harness.until_phase(run, "Queued")
        await harness.backend.publish(harness.task_id(run), SUCCESS)
    await harness.seen.until(lambda: name_of(plain) not in harness.kube.objects, what="TTL")
    await harness.until_phase(argo, "Succeeded")
    await pass_time(600)
    assert name_of(argo) in harness.kube.objects


async def test_news_in_a_tight_loop_never_holds_a_status_back_longer_than_the_hold(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(statusHoldSeconds=0.3)
    run = await harness.apply({"task": "t.a"})
    await harness.seen.until(lambda: harness.celery.sent, what="sent")
    task_id, sent = harness.task_id(run), harness.celery.sent_at[0]
    step = 0
    while harness.phase(run) != "Running":  # a worker reporting progress every 10 ms
        step += 1
        await harness.backend.publish(task_id, TaskRecord("PROGRESS", {"current": step}))
        await pass_time(0.01)
        assert step < 100, "Running never written"
    # Written when the hold that began at the send was over, with the progress then.
    (write,) = harness.kube.written(name_of(run))
    assert write.at == pytest.approx(sent + 0.3, abs=MS)
    assert write.what["progress"]["current"] > 1


@pytest.mark.parametrize(
    ("policy", "reasons"),
    [("outcomes", ["Succeeded"]), ("transitions", ["Queued", "Succeeded"])],
)
async def test_events_announce_outcomes_or_every_transition(
    make_harness: MakeHarness, policy: str, reasons: list[str]
) -> None:
    harness = await make_harness(events=policy)
    run = await harness.apply({"task": "t.a"})
    await harness.until_phase(run, "Queued")
    await harness.backend.publish(harness.task_id(run), SUCCESS)
    await harness.until_phase(run, "Succeeded")
    await harness.seen.until(lambda: "Succeeded" in harness.kube.reasons(name_of(run)))
    assert harness.kube.reasons(name_of(run)) == reasons


def stale_writes(harness: Harness, name: str) -> list[tuple[float, str, str]]:
    return [r for r in harness.kube.refused if r[1:] == ("patch_status", name)]


async def test_a_held_status_never_lands_on_an_object_recreated_under_its_name(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(statusHoldSeconds=1.0)
    old = await harness.apply({"task": "t.a"}, name="same")
    await harness.seen.until(lambda: harness.celery.sent, what="sent")
    # Running is held; meanwhile the TaskRun is deleted and created anew, same name.
    await harness.backend.publish(harness.task_id(old), TaskRecord("STARTED", {}))
    new = harness.create({"task": "t.b"}, name="same")
    new["metadata"]["resourceVersion"] = "2000"
    await harness.seen.until(lambda: stale_writes(harness, "same"), what="the held write refused")
    assert harness.kube.status("same") == {"observedGeneration": 0}
    assert not harness.kube.writes
    await harness.tracker.observe("ADDED", copy.deepcopy(new))
    await harness.until_phase(new, "Queued")
    assert harness.kube.status("same")["taskId"] == harness.task_id(new)


async def test_a_status_written_by_someone_else_is_never_rolled_back(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(statusHoldSeconds=1.0)
    run = await harness.apply({"task": "t.a"})
    name = name_of(run)
    await harness.seen.until(lambda: harness.celery.sent, what="sent")
    await harness.backend.publish(harness.task_id(run), TaskRecord("STARTED", {}))
    # Another writer (an operator that took over) ends the run meanwhile.
    stored = harness.kube.objects[name]
    stored["status"] = {"phase": "Succeeded", "reason": "Succeeded", "taskId": harness.task_id(run)}
    stored["metadata"]["resourceVersion"] = "5000"
    released = lambda: len(harness.kube.metadata_writes) == 2  # noqa: E731
    await harness.seen.until(released, what="the finalizer removed")
    assert len(stale_writes(harness, name)) == 1  # our Running: refused, never written
    assert harness.kube.status(name)["phase"] == "Succeeded"
    assert not harness.kube.writes


async def test_a_cancel_is_read_from_the_spec_of_a_new_generation(harness: Harness) -> None:
    run = await harness.apply({"task": "t.a"})
    await harness.until_phase(run, "Queued")
    await harness.echo(run)  # our own write echoed: the same generation, nothing to do
    stored = harness.kube.objects[name_of(run)]
    stored["spec"]["cancel"] = True
    stored["metadata"]["generation"] = 2  # a spec change, as the API server counts them
    await harness.echo(run)
    await harness.until_phase(run, "Revoked")
    assert harness.status(run)["reason"] == "Cancelled"
    assert harness.celery.revoked == [harness.task_id(run)]
