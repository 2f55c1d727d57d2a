"""Concurrency limits in the shell, on fake time: a freed place admits the next run in
the same instant, a takeover counts every TaskRun before admitting any, and a waiting
run that times out or is cancelled frees nothing."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from celery_taskrun.core.records import TaskRecord

from fakes import Harness, MakeHarness, loop_time, make_harness, name_of, pass_time

SUCCESS = TaskRecord("SUCCESS", 42)
ONE = {"concurrency": [{"name": "reports", "limit": 1}]}


def sent(harness: Harness) -> list[str]:
    return [m.task_id for m in harness.celery.sent]


async def test_a_run_over_the_limit_waits_and_goes_the_instant_a_place_frees(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(**ONE)
    first = await harness.apply({"task": "t.a"})
    await harness.until_phase(first, "Queued")
    second = await harness.apply({"task": "t.a"})
    await harness.until_phase(second, "Pending")
    status = harness.status(second)
    assert status["reason"] == "Throttled"
    assert status["message"] == "concurrency group reports: 1 of 1 in use"
    assert ("Normal", "Throttled") in [(e.kind, e.reason) for e in harness.kube.events]
    await pass_time(30)  # a waiting run costs no look and no write
    writes = len(harness.kube.written(name_of(second)))
    assert sent(harness) == [harness.task_id(first)]
    await harness.backend.publish(harness.task_id(first), SUCCESS)
    await harness.seen.until(lambda: len(harness.celery.sent) == 2, what="the second sent")
    ended = max(w.at for w in harness.kube.written(name_of(first)))
    assert harness.celery.sent_at[1] <= ended  # its place freed before the end was written
    await harness.until_phase(second, "Queued")
    assert len(harness.kube.written(name_of(second))) == writes + 1
    admitted = [e.message for e in harness.kube.events if e.reason == "Admitted"]
    assert len(admitted) == 1 and "reports" in admitted[0]


def sent_count(harness: Harness, count: int) -> Callable[[], bool]:
    return lambda: len(harness.celery.sent) == count


async def test_waiting_runs_go_by_priority_then_creation(make_harness: MakeHarness) -> None:
    harness = await make_harness(**ONE)
    running = await harness.apply({"task": "t.a"})
    await harness.until_phase(running, "Queued")
    # On Redis 0 goes first: the late, urgent run goes before the others.
    runs = [await harness.apply({"task": "t.a", "priority": p}) for p in (5, 5, 0)]
    for run in runs:
        await harness.until_phase(run, "Pending")
    order = []
    for count in range(2, 2 + len(runs)):
        await harness.backend.publish(harness.celery.sent[-1].task_id, SUCCESS)
        await harness.seen.until(sent_count(harness, count), what="the next")
        order.append(harness.celery.sent[-1].task_id)
    assert order == [harness.task_id(runs[i]) for i in (2, 0, 1)]


async def test_a_waiting_run_timed_out_or_cancelled_frees_nothing(
    make_harness: MakeHarness,
) -> None:
    harness = await make_harness(**ONE)
    running = await harness.apply({"task": "t.a"})
    await harness.until_phase(running, "Queued")
    timed = await harness.apply({"task": "t.a", "timeout": 3})
    cancelled = await harness.apply({"task": "t.a"})
    after = await harness.apply({"task": "t.a"})
    for run in (timed, cancelled, after):
        await harness.until_phase(run, "Pending")
    created = loop_time()
    ended = await harness.until_phase(timed, "TimedOut")
    assert ended <= created + 3 + 1 + 1e-3  # its timeout counts its wait
    assert harness.status(timed)["reason"] == "DeadlineExceeded"
    body = copy.deepcopy(harness.kube.objects[name_of(cancelled)])
    body["spec"]["cancel"] = True
    body["metadata"]["generation"] = 2
    harness.kube.objects[name_of(cancelled)] = body
    await harness.echo(cancelled)
    await harness.until_phase(cancelled, "Revoked")
    assert harness.phase(after) == "Pending"
    assert sent(harness) == [harness.task_id(running)]  # the place is still the running one's
    await harness.backend.publish(harness.task_id(running), SUCCESS)
    await harness.until_phase(after, "Queued")
    assert sent(harness) == [harness.task_id(running), harness.task_id(after)]


def running_status(harness: Harness, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "phase": "Running",
        "reason": "Started",
        "state": "STARTED",
        "taskId": harness.task_id(body),
        "attempt": 1,
        "submittedAt": body["metadata"]["creationTimestamp"],
        "observedGeneration": 1,
    }


@pytest.mark.parametrize("intent_only", [False, True])
async def test_a_new_leader_counts_every_taskrun_before_it_admits_one(
    fake_time: None, intent_only: bool
) -> None:
    """The waiting run is listed first and the runs holding the places last, slowly: it
    is admitted only once they are counted, and only when one of them ends.  A run with
    only the intent annotation (an earlier leader died between send and status) holds
    its place too."""
    harness = make_harness(concurrency=[{"name": "reports", "limit": 2}])
    harness.kube.list_pause = 0.5
    waiting = harness.create({"task": "t.a"})
    holders = [harness.create({"task": "t.a"}) for _ in range(2)]
    for body in holders:
        task_id = harness.task_id(body)
        if intent_only:
            body["metadata"]["annotations"] = {"celery.taskrun.dev/submitting": task_id}
            body["metadata"]["finalizers"] = ["celery.taskrun.dev/revoke-on-delete"]
        else:
            body["status"] = running_status(harness, body)
        harness.backend.stored[task_id] = TaskRecord("STARTED", {})
    await harness.tracker.lead()
    try:
        await harness.until_phase(waiting, "Pending")
        assert harness.status(waiting)["message"] == "concurrency group reports: 2 of 2 in use"
        await pass_time(10)
        assert harness.celery.sent == []
        await harness.backend.publish(harness.task_id(holders[0]), SUCCESS)
        await harness.until_phase(waiting, "Queued")
        assert sent(harness) == [harness.task_id(waiting)]
    finally:
        await harness.tracker.stop()
