"""Priority as the broker means it: on Redis 0 goes first and 9 last."""

from __future__ import annotations

import uuid

import pytest

from taskrun_dev.stack import Stack

from support import E2E_BROKER, TaskRuns, ledger

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        E2E_BROKER != "redis",
        reason="Redis' priorities: RabbitMQ's (x-max-priority, highest first) are the "
        "overtake test's in tests/e2e/test_brokers.py",
    ),
]


def test_a_high_priority_run_overtakes_a_queue_of_low_ones(runs: TaskRuns, stack: Stack) -> None:
    queue = f"prio-{uuid.uuid4().hex[:6]}"
    names = [f"low-{i}" for i in range(5)]
    for name in names:
        runs.apply(name, "calculate_sum", args=[[1]], queue=queue, priority=9)
    runs.apply("high", "calculate_sum", args=[[2]], queue=queue, priority=0)
    ids = {n: runs.wait_phase(n, "Queued")["taskId"] for n in [*names, "high"]}
    # One worker, one process, one message at a time: it takes the queue in order.
    worker = stack.start_worker(f"w-{queue}", queues=[queue], concurrency=1)
    try:
        for name in ids:
            assert runs.finished(name)["phase"] == "Succeeded"
    finally:
        worker.stop()
    starts = {e["task_id"]: e["time"] for e in ledger(stack) if e["event"] == "start"}
    order = sorted(ids, key=lambda name: starts[ids[name]])
    assert order[0] == "high", order


def test_a_priority_redis_cannot_honour_is_refused(runs: TaskRuns) -> None:
    runs.apply("too-high", "calculate_sum", args=[[1]], priority=200)
    status = runs.finished("too-high")
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidSpec")
    assert "0 (first) to 9 (last)" in status["message"]
