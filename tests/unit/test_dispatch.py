"""Around a send: cancelled, refused, out of time before it was sent, or sent."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.api.model import (
    EffectiveLimit,
    EffectiveLimits,
    Phase,
    TaskRunSpec,
    TaskRunStatus,
)
from celery_taskrun.core.dispatch import Send, not_sent, prepare
from celery_taskrun.core.submission import Submission
from celery_taskrun.core.transitions import next_check, timestamp

CREATED = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
CONFIG = OperatorConfig(allowedTasks=["ok.*"])


def decide(
    spec: dict[str, Any],
    status: TaskRunStatus | None = None,
    now: datetime = CREATED,
    previous: TaskRunStatus | None = None,
) -> Send | TaskRunStatus:
    return prepare(
        TaskRunSpec.model_validate(spec),
        status or TaskRunStatus(),
        CONFIG,
        uid="u",
        namespace="team-a",
        submission=2 if previous else 1,
        created=CREATED,
        generation=1,
        now=now,
        previous=previous,
    )


def pending(timeout: float) -> TaskRunStatus:
    """A run whose first send failed (the broker was down)."""
    limits = EffectiveLimits(timeout=EffectiveLimit(seconds=timeout, source="spec"))
    return TaskRunStatus(phase=Phase.PENDING, reason="BackendUnavailable", limits=limits)


@pytest.mark.parametrize(
    ("spec", "status", "now", "phase", "reason"),
    [
        ({"task": "ok.a", "cancel": True}, None, CREATED, Phase.REVOKED, "Cancelled"),
        ({"task": "no.a"}, None, CREATED, Phase.FAILED, "TaskNotAllowed"),
        (
            {"task": "ok.a", "timeLimit": 5, "softTimeLimit": 5},
            None,
            CREATED,
            Phase.FAILED,
            "InvalidSpec",
        ),
        # A send failed and the deadline (from creation, to the second) has passed.
        (
            {"task": "ok.a", "timeout": 10},
            pending(10),
            CREATED + timedelta(seconds=11),
            Phase.TIMED_OUT,
            "DeadlineExceeded",
        ),
    ],
    ids=["cancelled", "not-allowed", "soft-not-below-hard", "unsent-deadline"],
)
def test_a_run_that_ends_before_it_is_sent(
    spec: dict[str, Any], status: TaskRunStatus | None, now: datetime, phase: Phase, reason: str
) -> None:
    decided = decide(spec, status, now)
    assert isinstance(decided, TaskRunStatus)
    assert (decided.phase, decided.reason) == (phase, reason)


def test_a_first_send_is_queued_with_its_limits() -> None:
    decided = decide({"task": "ok.a", "queue": "q", "timeout": 10})
    assert isinstance(decided, Send)
    after = decided.after
    assert (after.phase, after.reason, after.taskId, after.attempt) == (
        Phase.QUEUED,
        "Queued",
        "tr-u-1",
        1,
    )
    assert after.message == "sent to q; waiting for a worker"
    assert after.submittedAt == timestamp(CREATED)
    assert after.limits and after.limits.timeout and after.limits.timeout.seconds == 10


def test_a_deadline_not_yet_passed_still_sends() -> None:
    decided = decide({"task": "ok.a", "timeout": 10}, pending(10), CREATED + timedelta(seconds=9))
    assert isinstance(decided, Send)


def test_a_pending_run_is_looked_at_when_its_deadline_falls_due() -> None:
    # Not at the next poll of a user-chosen backoff: the clock alone ends it.
    assert next_check(pending(10), CREATED) == CREATED + timedelta(seconds=11)


def test_a_resubmission_keeps_the_first_attempt() -> None:
    failed = TaskRunStatus(
        phase=Phase.FAILED, reason="TaskError", taskId="tr-u-1", attempt=1, submittedAt="x"
    )
    decided = decide({"task": "ok.a", "retries": 1}, previous=failed)
    assert isinstance(decided, Send)
    assert (decided.after.phase, decided.after.reason, decided.after.taskId) == (
        Phase.RETRYING,
        "Resubmitted",
        "tr-u-2",
    )
    assert decided.after.attempts and decided.after.attempts[0].taskId == "tr-u-1"


SENT = Submission(task="ok.a", task_id="tr-u-1", args=[], kwargs={})


def test_a_failed_first_send_stays_pending() -> None:
    status = not_sent(
        TaskRunStatus(), SENT, "redis down", permanent=False, generation=1, now=CREATED
    )
    assert (status.phase, status.reason) == (Phase.PENDING, "BackendUnavailable")


def test_a_message_that_cannot_be_sent_ends_the_run() -> None:
    status = not_sent(
        TaskRunStatus(), SENT, "EncodeError", permanent=True, generation=1, now=CREATED
    )
    assert (status.phase, status.reason) == (Phase.FAILED, "InvalidSpec")


def test_a_failed_resubmission_keeps_its_status() -> None:
    before = TaskRunStatus(phase=Phase.RUNNING, reason="Started")
    after = not_sent(
        before, SENT, "down", permanent=False, generation=1, now=CREATED, previous=before
    )
    assert after is before
