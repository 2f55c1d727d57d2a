"""(spec, status, backend record, clock) -> next status: every Celery outcome."""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from celery_taskrun.api.model import (
    AttemptRecord,
    EffectiveLimit,
    EffectiveLimits,
    Phase,
    TaskRunSpec,
    TaskRunStatus,
)
from celery_taskrun.core import records
from celery_taskrun.core.backoff import Backoff
from celery_taskrun.core.content import Bounds, shrunk
from celery_taskrun.core.records import TaskRecord, Unreadable
from celery_taskrun.core.sending import resent
from celery_taskrun.core.timing import human_duration, next_check, next_delay, timestamp
from celery_taskrun.core.transitions import BackendError, advance, vanished, worker_lost

SENT = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
NOW = SENT + timedelta(seconds=5)
EXC = {"exc_module": "builtins"}


def queued(**update: Any) -> TaskRunStatus:
    status = TaskRunStatus(
        phase=Phase.QUEUED,
        reason="Queued",
        message="waiting for a worker",
        taskId="tr-u-1",
        attempt=1,
        state="PENDING",
        submittedAt=timestamp(SENT),
        limits=EffectiveLimits(),
    )
    return status.model_copy(update=update)


def step(
    record: TaskRecord | BackendError,
    status: TaskRunStatus | None = None,
    spec: dict[str, Any] | None = None,
    now: datetime = NOW,
    bounds: Bounds = Bounds(),
) -> Any:
    return advance(
        TaskRunSpec.model_validate(spec or {"task": "t"}),
        status or queued(),
        record,
        now,
        generation=3,
        bounds=bounds,
    )


def failure(exc_type: str, *message: str, traceback: str | None = "Traceback ...") -> TaskRecord:
    return TaskRecord(
        records.FAILURE,
        {"exc_type": exc_type, "exc_message": list(message), **EXC},
        traceback,
        "2026-01-01T12:00:04.500000+00:00",
    )


@pytest.mark.parametrize(
    ("record", "phase", "reason", "state"),
    [
        (records.NO_RECORD, Phase.QUEUED, "Queued", "PENDING"),
        (
            TaskRecord("STARTED", {"pid": 7, "hostname": "w1@h"}),
            Phase.RUNNING,
            "Started",
            "STARTED",
        ),
        (TaskRecord("PROGRESS", {"current": 3, "total": 4}), Phase.RUNNING, "Progress", "PROGRESS"),
        (
            TaskRecord("RETRY", {"exc_type": "Retry", "exc_message": ["again"]}, retries=1),
            Phase.RETRYING,
            "Retry",
            "RETRY",
        ),
        (
            TaskRecord("SUCCESS", 15, None, "2026-01-01T12:00:04.900000+00:00"),
            Phase.SUCCEEDED,
            "Succeeded",
            "SUCCESS",
        ),
        (failure("ValueError", "boom"), Phase.FAILED, "TaskError", "FAILURE"),
        (
            failure("SoftTimeLimitExceeded", "SoftTimeLimitExceeded()"),
            Phase.TIMED_OUT,
            "SoftTimeLimitExceeded",
            "FAILURE",
        ),
        (
            failure("TimeLimitExceeded", "3", traceback=None),
            Phase.TIMED_OUT,
            "TimeLimitExceeded",
            "FAILURE",
        ),
        (
            failure("WorkerLostError", "Worker exited prematurely"),
            Phase.FAILED,
            "WorkerLost",
            "FAILURE",
        ),
        (
            TaskRecord("REVOKED", {"exc_type": "TaskRevokedError", "exc_message": ["expired"]}),
            Phase.REVOKED,
            "Expired",
            "REVOKED",
        ),
        (
            TaskRecord("REVOKED", {"exc_type": "TaskRevokedError", "exc_message": ["terminated"]}),
            Phase.REVOKED,
            "Cancelled",
            "REVOKED",
        ),
    ],
)
def test_every_celery_state(record: TaskRecord, phase: Phase, reason: str, state: str) -> None:
    status = step(record).status
    assert (status.phase, status.reason, status.state) == (phase, reason, state)
    assert status.observedGeneration == 3
    conditions = {c.type: (c.status, c.reason, c.observedGeneration) for c in status.conditions}
    done = phase.terminal
    assert conditions["Finished"] == ("True" if done else "False", reason, 3)
    assert conditions["Reconciling"][0] == ("False" if done else "True")
    success = phase is Phase.SUCCEEDED
    assert conditions["Succeeded"][0] == ("True" if success else "False" if done else "Unknown")
    assert conditions["Ready"][0] == ("True" if success else "False")
    assert conditions["Stalled"][0] == ("True" if done and not success else "False")


def test_success_carries_result_completion_and_duration() -> None:
    status = step(
        TaskRecord("SUCCESS", 15, None, "2026-01-01T12:00:04.900000+00:00", worker="w1@h")
    ).status
    assert status.result == 15
    assert status.completedAt == "2026-01-01T12:00:04.900Z"
    assert status.duration == "4.9s"
    assert status.worker == "w1@h"
    assert status.resultTruncated is None


def test_failure_carries_type_message_and_traceback() -> None:
    status = step(failure("ValueError", "boom")).status
    assert status.error is not None
    assert (status.error.type, status.error.message, status.error.traceback) == (
        "ValueError",
        "boom",
        "Traceback ...",
    )
    assert status.message == "ValueError: boom"


def test_long_traceback_keeps_its_end() -> None:
    record = failure("ValueError", "boom", traceback="x" * 5000 + "THE END")
    error = step(record, bounds=Bounds(max_traceback_bytes=1000)).status.error
    assert error.traceback.endswith("THE END") and len(error.traceback) < 1100


def test_big_result_is_cut_to_a_preview_and_never_fails() -> None:
    status = step(TaskRecord("SUCCESS", "y" * 5000), bounds=Bounds(max_result_bytes=1024)).status
    assert status.phase is Phase.SUCCEEDED
    assert status.resultTruncated is True and status.resultBytes == 5002
    assert isinstance(status.result, str) and len(status.result) < 1024


@pytest.mark.parametrize(
    ("meta", "percent"),
    [
        ({"current": 3, "total": 4}, 75.0),
        ({"percent": 12.34}, 12.3),
        ({"progress": 40}, 40.0),
        ({"stage": "x"}, None),
    ],
)
def test_progress(meta: dict[str, Any], percent: float | None) -> None:
    status = step(TaskRecord("PROGRESS", meta)).status
    assert status.progress is not None
    assert status.progress.percent == percent
    assert status.progress.info == meta
    assert status.startedAt == timestamp(NOW)


def test_started_keeps_first_start_time_and_worker() -> None:
    running = step(TaskRecord("STARTED", {"pid": 1, "hostname": "w1@h"})).status
    later = step(TaskRecord("PROGRESS", {"percent": 10}), running, now=NOW + timedelta(seconds=9))
    assert later.status.startedAt == timestamp(NOW)
    assert later.status.worker == "w1@h"


def test_cancel_revokes_and_terminates() -> None:
    outcome = step(records.NO_RECORD, spec={"task": "t", "cancel": True})
    assert (outcome.status.phase, outcome.status.reason) == (Phase.REVOKED, "Cancelled")
    assert (outcome.revoke, outcome.terminate) == ("tr-u-1", True)


def test_a_finished_task_beats_a_late_cancel() -> None:
    outcome = step(TaskRecord("SUCCESS", 1), spec={"task": "t", "cancel": True})
    assert outcome.status.phase is Phase.SUCCEEDED and outcome.revoke is None


def with_limits(**limits: float) -> TaskRunStatus:
    return queued(
        limits=EffectiveLimits(
            **{k: EffectiveLimit(seconds=v, source="spec") for k, v in limits.items()}
        )
    )


@pytest.mark.parametrize(
    "record", [records.NO_RECORD, TaskRecord("STARTED", {}), BackendError("down")]
)
def test_deadline_counts_queueing_and_running(record: TaskRecord | BackendError) -> None:
    status = with_limits(timeout=5)
    outcome = step(record, status, now=SENT + timedelta(seconds=5))
    assert (outcome.status.phase, outcome.status.reason) == (Phase.TIMED_OUT, "DeadlineExceeded")
    assert outcome.revoke == "tr-u-1" and outcome.terminate
    assert (
        step(record, status, now=SENT + timedelta(seconds=4.9)).status.phase is not Phase.TIMED_OUT
    )


def test_expires_only_before_start() -> None:
    status = with_limits(expires=3)
    outcome = step(records.NO_RECORD, status)
    assert (outcome.status.phase, outcome.status.reason) == (Phase.REVOKED, "Expired")
    assert outcome.revoke and not outcome.terminate
    assert step(TaskRecord("STARTED", {}), status).status.phase is Phase.RUNNING


def test_next_check_is_the_earliest_clock_event() -> None:
    status = with_limits(timeout=30, expires=10)
    assert next_check(status) == SENT + timedelta(seconds=10)
    running = status.model_copy(update={"phase": Phase.RUNNING})
    assert next_check(running) == SENT + timedelta(seconds=30)
    assert next_check(queued()) is None


def test_backend_outage_is_not_terminal() -> None:
    status = step(BackendError("Connection refused")).status
    assert (status.phase, status.reason) == (Phase.QUEUED, "BackendUnavailable")
    assert "Connection refused" in status.message
    assert {c.type: c.status for c in status.conditions}["Finished"] == "False"


@pytest.mark.parametrize(("still_running", "lost"), [(False, True), (True, False), (None, False)])
def test_record_gone_after_start_asks_the_workers_once(
    still_running: bool | None, lost: bool
) -> None:
    running = step(TaskRecord("STARTED", {})).status
    outcome = step(records.NO_RECORD, running)
    assert outcome.ask_workers and outcome.status is running
    status = vanished(outcome.status, still_running, 3, NOW)
    if lost:
        assert (status.phase, status.reason) == (Phase.FAILED, "ResultLost")
    else:
        assert status is running  # its worker may still run it: wait for the result


@pytest.mark.parametrize(
    ("spec", "record", "attempt", "resend"),
    [
        ({"task": "t", "retries": 2}, failure("ValueError", "x"), 1, 2),
        ({"task": "t", "retries": 2}, failure("ValueError", "x"), 3, None),
        ({"task": "t", "retries": 1}, failure("TimeLimitExceeded", "3"), 1, 2),
        ({"task": "t", "retries": 1}, failure("WorkerLostError", "x"), 1, 2),
        ({"task": "t"}, failure("ValueError", "x"), 1, None),
        (
            {"task": "t", "retries": 1},
            TaskRecord("REVOKED", {"exc_type": "TaskRevokedError", "exc_message": ["revoked"]}),
            1,
            None,
        ),
    ],
)
def test_retries(
    spec: dict[str, Any], record: TaskRecord, attempt: int, resend: int | None
) -> None:
    outcome = step(record, queued(taskId=f"tr-u-{attempt}"), spec=spec)
    assert outcome.resend == resend


def test_no_retry_past_the_deadline() -> None:
    outcome = step(
        failure("ValueError", "x"), with_limits(timeout=3), spec={"task": "t", "retries": 3}
    )
    assert outcome.resend is None


def test_resubmission_keeps_history_and_first_submission() -> None:
    failed = step(failure("ValueError", "x"), spec={"task": "t", "retries": 2}).status
    again = resent(
        failed,
        number=2,
        sends=3,
        task_id="tr-u-2",
        generation=3,
        now=NOW + timedelta(seconds=1),
    )
    assert (again.phase, again.reason, again.attempt, again.taskId) == (
        Phase.RETRYING,
        "Resubmitted",
        2,
        "tr-u-2",
    )
    assert again.error is None and again.completedAt is None
    assert [(a.attempt, a.taskId, a.phase, a.reason) for a in again.attempts] == [
        (1, "tr-u-1", Phase.FAILED, "TaskError")
    ]
    assert again.attempts[0].submittedAt == timestamp(SENT)
    assert "submission 2 of 3" in again.message


def test_conditions_keep_transition_time_while_status_holds() -> None:
    first = step(TaskRecord("STARTED", {})).status
    later = step(TaskRecord("PROGRESS", {"percent": 5}), first, now=NOW + timedelta(seconds=7))
    before = {c.type: c.lastTransitionTime for c in first.conditions}
    after = {c.type: c.lastTransitionTime for c in later.status.conditions}
    assert before == after


def test_terminal_runs_do_not_move() -> None:
    done = step(TaskRecord("SUCCESS", 1)).status
    assert step(failure("ValueError", "late"), done).status == done


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "250ms"), (4.94, "4.9s"), (42, "42s"), (187, "3m7s"), (7500, "2h5m")],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_a_queued_run_that_stays_queued_is_not_rewritten() -> None:
    status = queued(conditions=step(records.NO_RECORD).status.conditions, observedGeneration=3)
    assert step(records.NO_RECORD, status).status == status


def test_late_sight_of_start_never_puts_start_after_end() -> None:
    late = step(TaskRecord("STARTED", {}), now=SENT + timedelta(seconds=9)).status
    done = step(TaskRecord("SUCCESS", 1, None, "2026-01-01T12:00:04.000000+00:00"), late).status
    assert done.startedAt == done.completedAt == "2026-01-01T12:00:04.000Z"


@pytest.mark.parametrize(
    ("date_done", "completed"),
    [
        ("2026-01-01T12:00:04.500000+00:00", "2026-01-01T12:00:04.500Z"),
        (datetime(2026, 1, 1, 12, 0, 4, 500000), "2026-01-01T12:00:04.500Z"),  # SQLAlchemy
        ("yesterday-ish", timestamp(NOW)),
        (12345, timestamp(NOW)),
    ],
)
def test_completion_time_from_any_backend(date_done: object, completed: str) -> None:
    status = step(TaskRecord("SUCCESS", 1, None, date_done)).status
    assert status.completedAt == completed


def test_success_completes_progress_a_poll_missed() -> None:
    running = step(TaskRecord("PROGRESS", {"current": 2, "total": 3})).status
    done = step(TaskRecord("SUCCESS", 1), running).status
    assert done.progress.percent == 100 and done.progress.info == {"current": 2, "total": 3}


@pytest.mark.parametrize(("retries", "resend"), [(0, None), (1, 2)])
def test_a_lost_worker_fails_the_run_or_retries_it(retries: int, resend: int | None) -> None:
    running = step(TaskRecord("STARTED", {"pid": 1, "hostname": "w9@h"})).status
    outcome = step(worker_lost(running), running, spec={"task": "t", "retries": retries})
    assert (outcome.status.phase, outcome.status.reason) == (Phase.FAILED, "WorkerLost")
    assert "w9@h stopped reporting the task" in outcome.status.error.message
    assert outcome.resend == resend
    # Before another attempt, the silent worker's one is revoked (it may come back).
    assert outcome.revoke == ("tr-u-1" if resend else None)


REVOKED_RECORD = TaskRecord("REVOKED", {"exc_type": "TaskRevokedError", "exc_message": ["revoked"]})


@pytest.mark.parametrize(
    ("limits", "spec", "after", "phase", "reason"),
    [
        ({}, {"task": "t"}, 1, Phase.REVOKED, "Cancelled"),
        ({}, {"task": "t", "cancel": True}, 1, Phase.REVOKED, "Cancelled"),
        ({"timeout": 3}, {"task": "t"}, 4, Phase.TIMED_OUT, "DeadlineExceeded"),
        ({"expires": 2}, {"task": "t"}, 4, Phase.REVOKED, "Expired"),
        ({"expires": 2, "timeout": 3}, {"task": "t"}, 4, Phase.REVOKED, "Expired"),
        ({"expires": 5, "timeout": 3}, {"task": "t"}, 6, Phase.TIMED_OUT, "DeadlineExceeded"),
    ],
)
def test_why_a_revoked_record_was_revoked(
    limits: dict[str, float], spec: dict[str, Any], after: float, phase: Phase, reason: str
) -> None:
    """E.g. after a restart that lost the operator's own terminal write."""
    status = with_limits(**limits)
    outcome = step(REVOKED_RECORD, status, spec=spec, now=SENT + timedelta(seconds=after))
    assert (outcome.status.phase, outcome.status.reason) == (phase, reason)


@pytest.mark.parametrize(
    ("history", "record", "attempt"),
    [
        ([], TaskRecord("STARTED", {}, retries=0), 1),
        ([], TaskRecord("RETRY", {"exc_type": "Retry"}, retries=0), 2),
        ([], TaskRecord("STARTED", {}, retries=1), 2),
        ([], TaskRecord("SUCCESS", 1, retries=2), 3),
        # After a resubmission the count goes on from the last attempt recorded.
        (
            [AttemptRecord(attempt=3, taskId="tr-u-1", phase=Phase.FAILED)],
            TaskRecord("STARTED", {}, retries=0),
            4,
        ),
    ],
)
def test_attempt_counts_celery_retries_and_resubmissions(
    history: list[AttemptRecord], record: TaskRecord, attempt: int
) -> None:
    status = queued(attempts=history or None, taskId=f"tr-u-{len(history) + 1}")
    assert step(record, status).status.attempt == attempt


def test_a_celery_retry_does_not_use_up_resubmissions() -> None:
    retried = step(TaskRecord("RETRY", {"exc_type": "Retry"}, retries=1)).status
    outcome = step(failure("ValueError", "x"), retried, spec={"task": "t", "retries": 1})
    assert (outcome.status.attempt, outcome.resend) == (3, 2)


@pytest.mark.parametrize("record", [records.NO_RECORD, TaskRecord("STARTED", {"hostname": "w"})])
def test_a_steady_poll_returns_the_same_status(record: TaskRecord) -> None:
    """Nothing new: the very same object, so the shell skips the diff and the write."""
    first = step(record).status
    assert step(record, first).status is first


def nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def status_bytes(status: TaskRunStatus) -> int:
    return len(json.dumps(status.model_dump(mode="json", exclude_none=True)).encode())


@pytest.mark.parametrize(
    "record",
    [
        failure("ValueError", "m" * 250_000, traceback="Traceback\n" + "  line\n" * 100_000),
        failure("E" * 100_000, *(["part"] * 10_000)),
        TaskRecord("S" * 10_000, {"percent": 50, "blob": "b" * 100_000}),
        TaskRecord("SUCCESS", "r" * 5_000_000),
        TaskRecord("SUCCESS", nest(900)),
        TaskRecord("PROGRESS", {"current": 10**400, "total": float("nan"), "percent": True}),
        TaskRecord("RETRY", {"exc_type": "Retry", "exc_message": ["x" * 300_000]}),
    ],
    ids=[
        "huge-message",
        "huge-type",
        "huge-state",
        "huge-result",
        "deep-result",
        "odd-numbers",
        "retry",
    ],
)
def test_whatever_a_task_produces_the_status_stays_small(record: TaskRecord) -> None:
    status = step(record).status
    assert status_bytes(status) < 300 * 1024
    for condition in status.conditions or []:
        assert len(condition.message.encode()) <= 1024
    assert len((status.state or "").encode()) <= 64


def test_progress_numbers_are_finite_and_in_range() -> None:
    status = step(TaskRecord("PROGRESS", {"current": 10**400, "total": 0, "percent": 250})).status
    assert status.progress is not None
    assert (status.progress.percent, status.progress.current) == (100.0, None)


def test_a_success_read_in_part_is_a_truncated_success() -> None:
    record = TaskRecord("SUCCESS", '"abc', partial_size=50_000_000)
    status = step(record).status
    assert (status.phase, status.resultTruncated, status.resultBytes) == (
        Phase.SUCCEEDED,
        True,
        50_000_000,
    )


def test_an_unreadable_record_ends_the_run_saying_why() -> None:
    status = step(Unreadable("pickle data")).status
    assert (status.phase, status.reason) == (Phase.FAILED, "ResultLost")
    assert "pickle data" in (status.message or "")


def test_a_deadline_beats_an_unreadable_record() -> None:
    outcome = step(
        Unreadable("garbage"),
        spec={"task": "t", "timeout": 1},
        status=queued(limits=EffectiveLimits(timeout=EffectiveLimit(seconds=1, source="spec"))),
    )
    assert (outcome.status.reason, outcome.revoke) == ("DeadlineExceeded", "tr-u-1")


def test_a_completion_time_in_the_future_is_now() -> None:
    record = TaskRecord("SUCCESS", 1, date_done="2999-01-01T00:00:00+00:00")
    assert step(record).status.completedAt == timestamp(NOW)


@pytest.mark.parametrize("level", [1, 2])
def test_shrunk_status_keeps_where_the_run_stands(level: int) -> None:
    big = step(failure("ValueError", "m" * 4000, traceback="t" * 16_000)).status
    big = big.model_copy(update={"result": "r" * 200_000})
    small = shrunk(big, level)
    assert (small.phase, small.reason, small.taskId) == (big.phase, big.reason, big.taskId)
    assert small.resultTruncated and status_bytes(small) < (16 * 1024 if level == 1 else 4 * 1024)


def test_a_start_heard_but_superseded_still_dates_the_run() -> None:
    heard = NOW - timedelta(seconds=1)
    done = TaskRecord("SUCCESS", 1, date_done=timestamp(NOW - timedelta(seconds=0.5)))
    outcome = advance(TaskRunSpec(task="t"), queued(), done, NOW, generation=3, seen_running=heard)
    assert outcome.status.startedAt == timestamp(heard)


@pytest.mark.parametrize(
    ("polls", "tick", "delay"),
    [
        (0, 100.3, 0.5),  # short polls are exact
        (10, 100.3, 5.7),  # long ones are rounded up to a whole second: 105.3 -> 106
        (10, 100.0, 5.0),
    ],
)
def test_long_polls_fall_on_the_grid(polls: int, tick: float, delay: float) -> None:
    status = queued()
    assert next_delay(status, Backoff(), polls, NOW, None, tick) == pytest.approx(delay)


def test_a_deadline_is_never_rounded() -> None:
    limits = EffectiveLimits(timeout=EffectiveLimit(seconds=7.25, source="spec"))
    status = queued(limits=limits)  # submitted at SENT; NOW is SENT + 5 s
    assert next_delay(status, Backoff(), 10, NOW, None, 100.3) == pytest.approx(2.25)
