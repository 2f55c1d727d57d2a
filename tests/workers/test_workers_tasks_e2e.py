"""Each example task, run by a real prefork worker against a real Redis.

Tasks are sent by name with per-call options, as the operator sends them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024


def test_calculate_sum_succeeds_with_an_extended_record(worker: Any) -> None:
    task_id = worker.send("calculate_sum", [1, 2, 3, 4, 5])
    meta = worker.wait_state(task_id, "SUCCESS", "FAILURE")
    assert (meta["status"], meta["result"]) == ("SUCCESS", 15)
    assert meta["date_done"] is not None
    assert meta["name"] == "taskrun_workers.tasks.calculate_sum"
    assert meta["retries"] == 0
    assert meta["worker"] == worker.hostname


def test_fail_stores_the_error_and_its_traceback(worker: Any) -> None:
    task_id = worker.send("fail", "boom")
    meta = worker.wait_state(task_id, "SUCCESS", "FAILURE")
    assert meta["status"] == "FAILURE"
    assert isinstance(meta["result"], ValueError)
    assert meta["result"].args == ("boom",)
    assert "ValueError: boom" in meta["traceback"]


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "expected"),
    [
        ("echo", [1, "a", None], {"k": [2]}, {"args": [1, "a", None], "kwargs": {"k": [2]}}),
        ("echo", [], {}, {"args": [], "kwargs": {}}),
        ("sleep", [0.3], {}, 0.3),
        ("calculate_sum", [[]], {}, 0),
    ],
)
def test_simple_tasks_return_their_result(
    worker: Any, name: str, args: list[Any], kwargs: dict[str, Any], expected: Any
) -> None:
    task_id = worker.send(name, *args, kwargs=kwargs)
    meta = worker.wait_state(task_id, "SUCCESS", "FAILURE")
    assert (meta["status"], meta["result"]) == ("SUCCESS", expected)


def test_big_result_is_stored_whole(worker: Any) -> None:
    task_id = worker.send("big_result", 2_000_000)
    meta = worker.wait_state(task_id, "SUCCESS", "FAILURE")
    assert meta["status"] == "SUCCESS"
    assert meta["result"] == "x" * 2_000_000


def test_progress_is_published_with_the_operator_meta_shape(
    worker: Any, record_states: Callable[[str], Any]
) -> None:
    task_id = str(uuid.uuid4())
    recorder = record_states(task_id)
    worker.send("progress", 3, 0.1, task_id=task_id)
    worker.wait_state(task_id, "SUCCESS", "FAILURE")
    progress = [r["result"] for r in recorder.records if r["status"] == "PROGRESS"]
    assert progress == [
        {"current": 1, "total": 3, "percent": 33.3},
        {"current": 2, "total": 3, "percent": 66.7},
        {"current": 3, "total": 3, "percent": 100.0},
    ]
    assert recorder.states[0] == "STARTED"
    assert recorder.states[-1] == "SUCCESS"


def test_flaky_retries_then_succeeds(worker: Any, record_states: Callable[[str], Any]) -> None:
    task_id = str(uuid.uuid4())
    recorder = record_states(task_id)
    worker.send("flaky", 2, kwargs={"countdown": 0.2}, task_id=task_id)
    meta = worker.wait_state(task_id, "SUCCESS", "FAILURE")
    assert (meta["status"], meta["result"], meta["retries"]) == ("SUCCESS", {"attempts": 3}, 2)
    assert recorder.states == ["STARTED", "RETRY", "STARTED", "RETRY", "STARTED", "SUCCESS"]
    retries = [r["result"] for r in recorder.records if r["status"] == "RETRY"]
    assert retries[0]["exc_message"] == ["attempt 1 of 3 fails on purpose"]
    starts = [e["retries"] for e in worker.ledger(task_id) if e["event"] == "start"]
    assert starts == [0, 1, 2]


def test_process_file_reports_bytes_and_finishes(
    worker: Any, record_states: Callable[[str], Any]
) -> None:
    task_id = str(uuid.uuid4())
    recorder = record_states(task_id)
    worker.send("process_file", 3 * MIB, 0.1, task_id=task_id)
    meta = worker.wait_state(task_id, "SUCCESS", "FAILURE")
    assert (meta["status"], meta["result"]) == ("SUCCESS", {"bytes": 3 * MIB})
    progress = [r["result"] for r in recorder.records if r["status"] == "PROGRESS"]
    assert [p["current"] for p in progress] == [MIB, 2 * MIB, 3 * MIB]
    assert progress[-1] == {"current": 3 * MIB, "total": 3 * MIB, "percent": 100.0, "unit": "bytes"}


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("cleanup_on_soft_timeout", [10, True]),
        ("process_file", [10 * MIB, 1.0]),  # cleans up through helpers.on_soft_timeout
        ("taskrun_user_tasks.stubborn", [10]),  # a user's task, the helper as a decorator
    ],
)
def test_soft_time_limit_cleans_up_then_fails(worker: Any, name: str, args: list[Any]) -> None:
    task_id = worker.send(name, *args, soft_time_limit=1, time_limit=3)
    meta = worker.wait_state(task_id, "SUCCESS", "FAILURE")
    assert meta["status"] == "FAILURE"
    assert type(meta["result"]).__name__ == "SoftTimeLimitExceeded"
    assert "SoftTimeLimitExceeded" in meta["traceback"]
    events = [e["event"] for e in worker.ledger(task_id)]
    assert events == ["start", "cleanup", "end"]


def test_soft_time_limit_can_end_in_a_partial_success(worker: Any) -> None:
    task_id = worker.send("cleanup_on_soft_timeout", 10, False, soft_time_limit=1, time_limit=3)
    meta = worker.wait_state(task_id, "SUCCESS", "FAILURE")
    assert meta["status"] == "SUCCESS"
    assert meta["result"]["completed"] is False
    assert 0.9 <= meta["result"]["elapsed"] < 3
    assert [e["event"] for e in worker.ledger(task_id)] == ["start", "cleanup", "end"]


def test_hard_time_limit_fails_the_task_and_the_worker_goes_on(worker: Any) -> None:
    task_id = worker.send("sleep", 30, time_limit=1)
    meta = worker.wait_state(task_id, "SUCCESS", "FAILURE")
    assert meta["status"] == "FAILURE"
    assert type(meta["result"]).__name__ == "TimeLimitExceeded"
    ledger = worker.ledger(task_id)
    assert ledger[0]["event"] == "start"
    # billiard sends SIGTERM before SIGKILL; when the child gets to run task_postrun in
    # between, it has no state to report.
    assert [e["state"] for e in ledger[1:]] in ([], [None])
    after = worker.send("calculate_sum", [1, 2, 3, 4, 5])
    assert worker.wait_state(after, "SUCCESS", "FAILURE")["result"] == 15
    assert worker.alive()


def test_a_users_task_reports_progress_and_is_in_the_ledger(
    worker: Any, record_states: Callable[[str], Any]
) -> None:
    task_id = str(uuid.uuid4())
    recorder = record_states(task_id)
    worker.send("taskrun_user_tasks.crunch", 2, task_id=task_id)
    meta = worker.wait_state(task_id, "SUCCESS", "FAILURE")
    assert (meta["status"], meta["result"]) == ("SUCCESS", 2)
    progress = [r["result"] for r in recorder.records if r["status"] == "PROGRESS"]
    assert progress[-1] == {"current": 2, "total": 2, "percent": 100.0, "stage": "crunching"}
    ledger = worker.ledger(task_id)
    assert [e["event"] for e in ledger] == ["start", "end"]
    assert ledger[0]["task"] == "taskrun_user_tasks.crunch"
    assert ledger[1]["state"] == "SUCCESS"
    assert ledger[0]["hostname"] == worker.hostname
