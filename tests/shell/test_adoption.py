"""A run found again (a restart, a new leader) is followed from the status it has."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

from celery_taskrun.api.model import FINISHED_LABEL
from celery_taskrun.core.records import TaskRecord
from celery_taskrun.core.timing import timestamp

from fakes import Harness


async def test_a_reason_this_operator_does_not_know_never_loses_a_run_in_flight(
    harness: Harness,
) -> None:
    """Another version of the operator, or a hand, wrote a reason unknown here: the run
    is followed from its task id and times, never sent again nor started over."""
    body = harness.create({"task": "t.a"})
    name, task_id = body["metadata"]["name"], harness.task_id(body)
    submitted = timestamp(datetime.now(UTC) - timedelta(seconds=2))
    body["status"] = {
        "phase": "Running",
        "reason": "SomeoneElsesReason",
        "state": "STARTED",
        "taskId": task_id,
        "attempt": 1,
        "submittedAt": submitted,
        "startedAt": submitted,
        "observedGeneration": 1,
    }
    harness.backend.stored[task_id] = TaskRecord("STARTED", {})
    await harness.tracker.observe("ADDED", copy.deepcopy(body))
    followed = lambda: harness.kube.status(name).get("reason") == "Started"  # noqa: E731
    await harness.seen.until(followed, 60, "followed")
    await harness.backend.publish(task_id, TaskRecord("SUCCESS", 42))
    await harness.until_phase(body, "Succeeded")
    status = harness.kube.status(name)
    assert harness.celery.sent == []
    assert (status["taskId"], status["submittedAt"], status["startedAt"]) == (
        task_id,
        submitted,
        submitted,
    )


async def test_finished_runs_found_unlabelled_are_labelled_once_and_kept(
    harness: Harness,
) -> None:
    """Runs an earlier version finished (no finished label) get the label, one write
    each, and are kept for their TTL; one already labelled costs no write."""
    done = timestamp(datetime.now(UTC) - timedelta(seconds=5))
    bodies = [harness.create({"task": "t.a", "ttlSecondsAfterFinished": 60}) for _ in range(3)]
    for i, body in enumerate(bodies):
        body["status"] = {"phase": "Succeeded", "completedAt": done, "taskId": f"t{i}"}
    bodies[2]["metadata"]["labels"] = {FINISHED_LABEL: "Succeeded"}
    for body in bodies:
        await harness.tracker.observe("ADDED", copy.deepcopy(body))
    names = [b["metadata"]["name"] for b in bodies]
    assert [w.name for w in harness.kube.metadata_writes] == names[:2]
    for name in names:
        assert harness.kube.objects[name]["metadata"]["labels"] == {FINISHED_LABEL: "Succeeded"}
    await harness.seen.until(lambda: len(harness.kube.deletes) == 3, 70, "the TTL deletions")
