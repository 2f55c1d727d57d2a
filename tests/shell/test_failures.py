"""What the shell does when a client fails or a worker is lost, on the loop's fake
time: the watchdog's checks, every branch of the submission protocol, the status
writer's deletions and errors, the reaper's retries."""

from __future__ import annotations

import pytest

from celery_taskrun.api.model import FINALIZER, INTENT_ANNOTATION
from celery_taskrun.clients.celery_client import PUBLISH_BOUND_SECONDS
from celery_taskrun.clients.errors import ApiUnavailable
from celery_taskrun.core.records import TaskRecord
from celery_taskrun.engine import reaper as reaper_module
from celery_taskrun.engine import stepper as stepper_module

from fakes import Harness, MakeHarness, name_of, pass_time

MS = 1e-3
WORKER = "celery@w1"
CHECK = 15.0  # workerCheckInterval


# -- the worker watchdog ------------------------------------------------------------------


async def running_on_a_worker(harness: Harness) -> tuple[dict[str, object], str]:
    run = await harness.apply({"task": "t.a"})
    task_id = harness.task_id(run)
    await harness.until_phase(run, "Queued")
    harness.celery.holding_now = {WORKER: {task_id}}
    await harness.backend.publish(task_id, TaskRecord("STARTED", {}, worker=WORKER))
    await harness.until_phase(run, "Running")
    return run, task_id


@pytest.mark.parametrize(
    ("answers", "how"),
    [({WORKER: set()}, "restarted in place: answers without it"), ({}, "silent")],
)
async def test_a_worker_that_stops_reporting_its_task_loses_the_run(
    make_harness: MakeHarness, answers: dict[str, set[str]], how: str
) -> None:
    harness = await make_harness(workerLostAfter=2, workerCheckInterval=CHECK)
    run, task_id = await running_on_a_worker(harness)
    await pass_time(5 * CHECK)  # its worker reports it at every check: it runs on
    asked = [when for when, ids, workers in harness.celery.asked]
    assert len(asked) >= 5 and all(ids == (task_id,) for _, ids, _ in harness.celery.asked)
    assert {w for _, _, w in harness.celery.asked} == {frozenset({WORKER})}
    assert harness.phase(run) == "Running"

    harness.celery.holding_now = answers
    lost_from = len(harness.celery.asked)
    ended = await harness.until_phase(run, "Failed")
    # Lost at the second check in a row that missed it, and not before.
    assert ended == harness.celery.asked[lost_from + 1][0]
    status = harness.status(run)
    assert "WorkerLostError" in status["message"] and WORKER in status["message"]


async def test_a_worker_is_never_lost_while_the_broker_cannot_ask(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(workerLostAfter=2, workerCheckInterval=CHECK)
    run, _ = await running_on_a_worker(harness)
    harness.celery.down = True  # silence proves nothing when nobody can be asked
    await pass_time(20 * CHECK)
    assert len(harness.celery.asked) >= 20
    assert harness.phase(run) == "Running"
    harness.celery.down = False  # the broker back, and the worker gone meanwhile
    harness.celery.holding_now = {}
    await harness.until_phase(run, "Failed")


# -- the submission protocol ----------------------------------------------------------


async def test_an_unsendable_message_fails_its_run_without_retrying(harness: Harness) -> None:
    harness.celery.unsendable = True
    run = await harness.apply({"task": "t.a"})
    await harness.until_phase(run, "Failed")
    await pass_time(600)
    assert len(harness.celery.tries) == 1 and not harness.celery.sent
    assert "EncodeError" in harness.status(run)["message"]


async def test_a_run_deleted_before_its_intent_is_never_sent(harness: Harness) -> None:
    run = harness.create({"task": "t.a"})
    del harness.kube.objects[name_of(run)]  # deleted after the watch saw it
    await harness.tracker.observe("ADDED", run)
    await pass_time(600)
    assert not harness.celery.tries and not harness.kube.metadata_writes
    assert not harness.kube.writes and not harness.kube.refused


async def test_a_failed_intent_write_delays_the_send(harness: Harness) -> None:
    harness.kube.faults.add("add_finalizer", ApiUnavailable(0, "", "TimeoutError"))
    run = await harness.apply({"task": "t.a"})
    pending = await harness.until_phase(run, "Pending")
    assert "ApiUnavailable" in harness.status(run)["message"]
    assert not harness.celery.tries  # nothing sent without the intent recorded first
    queued = await harness.until_phase(run, "Queued")
    assert harness.celery.sent_at == [queued] and queued > pending
    (intent,) = harness.kube.metadata_writes  # recorded once it could be, then sent
    assert intent.what["finalizers"] == [FINALIZER] and intent.at <= queued


@pytest.mark.parametrize("stored", [True, False])
async def test_a_restart_between_intent_and_status_sends_only_what_was_not_sent(
    harness: Harness, stored: bool
) -> None:
    """The intent recorded and the status not written: an earlier operator may have sent
    the task; it is sent again only if the backend has no record of it."""
    run = harness.create({"task": "t.a"})
    task_id = harness.task_id(run)
    run["metadata"]["finalizers"] = [FINALIZER]
    run["metadata"]["annotations"] = {INTENT_ANNOTATION: task_id}
    if stored:
        harness.backend.stored[task_id] = TaskRecord("STARTED", {}, worker=WORKER)
    await harness.tracker.observe("ADDED", run)
    await harness.until_phase(run, "Running" if stored else "Queued")
    await pass_time(60)
    assert not harness.kube.metadata_writes  # the intent stands: not written again
    assert [s.task_id for s in harness.celery.sent] == ([] if stored else [task_id])
    assert harness.status(run)["taskId"] == task_id
    assert harness.backend.reads[0][1] == (task_id,)  # asked the backend first
    # What the earlier operator may still have been publishing is waited out first.
    led = harness.led_at
    if not stored:
        assert harness.celery.sent_at == [pytest.approx(led + PUBLISH_BOUND_SECONDS, abs=MS)]


# -- the status writer --------------------------------------------------------------------


async def test_a_key_no_longer_in_the_status_is_deleted_by_the_patch(
    harness: Harness,
) -> None:
    """A resubmission clears the first attempt's worker and start: `kubectl get` must
    not show them on the second attempt."""
    run = await harness.apply({"task": "t.a", "retries": 1})
    task_id = harness.task_id(run)
    await harness.until_phase(run, "Queued")
    await harness.backend.publish(task_id, TaskRecord("STARTED", {}, worker=WORKER))
    await harness.until_phase(run, "Running")
    assert {"worker", "startedAt"} <= set(harness.status(run))
    failure = TaskRecord("FAILURE", {"exc_type": "E", "exc_message": ["x"]}, worker=WORKER)
    await harness.backend.publish(task_id, failure)
    await harness.until_phase(run, "Retrying")
    patch = harness.kube.written(name_of(run))[-1].what
    assert {k for k, v in patch.items() if v is None} == {"worker", "startedAt"}
    assert not {"worker", "startedAt"} & set(harness.status(run))
    await harness.until_phase(run, "Queued")  # the second attempt sent
    assert [s.task_id.rsplit("-", 1)[1] for s in harness.celery.sent] == ["1", "2"]


async def test_a_status_write_that_fails_is_written_again_two_seconds_later(
    harness: Harness,
) -> None:
    run = await harness.apply({"task": "t.a"})
    await harness.until_phase(run, "Queued")
    harness.kube.faults.add("patch_status", ApiUnavailable(0, "", "connection reset"))
    await harness.backend.publish(harness.task_id(run), TaskRecord("SUCCESS", 1))
    ended = await harness.until_phase(run, "Succeeded")
    ((failed, what, name),) = harness.kube.refused
    assert (what, name) == ("patch_status", name_of(run))
    assert ended == pytest.approx(failed + stepper_module.RETRY_WRITE_SECONDS, abs=MS)


# -- the reaper ---------------------------------------------------------------------------


async def test_a_finalizer_not_removed_is_removed_at_the_next_event(harness: Harness) -> None:
    run = await harness.apply({"task": "t.a"})
    await harness.until_phase(run, "Queued")
    harness.kube.faults.add("release", ApiUnavailable(0, "", "connection reset"))
    await harness.backend.publish(harness.task_id(run), TaskRecord("SUCCESS", 1))
    await harness.until_phase(run, "Succeeded")
    await harness.seen.until(lambda: harness.kube.refused, what="the removal refused")
    assert harness.kube.finalizers(name_of(run)) == [FINALIZER]
    await harness.echo(run)  # the watch's next event of it
    await harness.seen.until(lambda: not harness.kube.finalizers(name_of(run)), what="removed")
    assert len(harness.kube.writes) == 2  # Queued, Succeeded: re-adopting wrote nothing


async def test_a_ttl_deletion_that_fails_is_tried_again(harness: Harness) -> None:
    run = await harness.apply({"task": "t.a", "ttlSecondsAfterFinished": 60})
    await harness.until_phase(run, "Queued")
    harness.kube.faults.add("delete", ApiUnavailable(0, "", "connection reset"))
    await harness.backend.publish(harness.task_id(run), TaskRecord("SUCCESS", 1))
    done = await harness.until_phase(run, "Succeeded")
    await harness.seen.until(lambda: harness.kube.deletes, within=600, what="deleted")
    retry = reaper_module.RETRY_DELETE_SECONDS
    assert [round(when - done, 3) for when, _ in harness.kube.delete_calls] == [60, 60 + retry]
    assert name_of(run) not in harness.kube.objects
