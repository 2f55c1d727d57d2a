"""Sending a run's task: the message (spec + operator config -> what is sent to Celery),
and around a send: cancelled, refused, out of time before it was sent, or sent."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.api.model import (
    EffectiveLimit,
    EffectiveLimits,
    Phase,
    Reason,
    TaskRunSpec,
    TaskRunStatus,
)
from celery_taskrun.core.limits import size_based_time_limits
from celery_taskrun.core.sending import (
    Message,
    Refusal,
    Send,
    message_for,
    not_sent,
    plan_send,
    send_number,
    task_id_for,
    trusted,
)
from celery_taskrun.core.timing import next_check, timestamp

NOW = datetime(2026, 1, 1, tzinfo=UTC)
MIB = 1024 * 1024

CONFIG = OperatorConfig.model_validate(
    {
        "defaults": {"timeLimit": 600, "softTimeLimit": 540},
        "tasks": {
            "tasks.process_email": {"timeLimit": 60, "softTimeLimit": 50},
            "tasks.video.*": {"timeLimit": 3600, "softTimeLimit": 3300, "timeout": 7200},
        },
    }
)


def message_of(spec: dict[str, Any], config: OperatorConfig, **kw: Any) -> Message | Refusal:
    return message_for(
        TaskRunSpec.model_validate(spec),
        config,
        uid="u1",
        namespace="team-a",
        number=1,
        now=NOW,
        **kw,
    )


def submit(spec: dict[str, Any], config: OperatorConfig = CONFIG, **kw: Any) -> Message:
    decided = message_of(spec, config, **kw)
    assert isinstance(decided, Message), decided
    return decided


def refuse(spec: dict[str, Any], config: OperatorConfig = CONFIG) -> Refusal:
    decided = message_of(spec, config)
    assert isinstance(decided, Refusal), decided
    return decided


@pytest.mark.parametrize(
    ("spec", "hard", "soft"),
    [
        # spec > per-task > global, each limit on its own.
        ({"task": "tasks.other"}, (600, "globalDefault"), (540, "globalDefault")),
        ({"task": "tasks.process_email"}, (60, "taskDefault"), (50, "taskDefault")),
        ({"task": "tasks.video.encode"}, (3600, "taskDefault"), (3300, "taskDefault")),
        ({"task": "tasks.process_email", "timeLimit": 55}, (55, "spec"), (50, "taskDefault")),
        ({"task": "t", "timeLimit": 10, "softTimeLimit": 5}, (10, "spec"), (5, "spec")),
        # The seed's dynamic timeout: 1 min per MiB, at least 60 s, at most 3600 s.
        (
            {"task": "t", "sizeBasedLimits": {"inputBytes": 10 * MIB}},
            (600, "sizeBasedLimits"),
            (540, "sizeBasedLimits"),
        ),
        (
            {"task": "t", "sizeBasedLimits": {"inputBytes": 1}},
            (60, "sizeBasedLimits"),
            (54, "sizeBasedLimits"),
        ),
        (
            {"task": "t", "sizeBasedLimits": {"inputBytes": 10**12}},
            (3600, "sizeBasedLimits"),
            (3240, "sizeBasedLimits"),
        ),
        (
            {"task": "t", "timeLimit": 900, "sizeBasedLimits": {"inputBytes": 10 * MIB}},
            (900, "spec"),
            (540, "sizeBasedLimits"),
        ),
    ],
)
def test_limit_precedence(
    spec: dict[str, Any], hard: tuple[float, str], soft: tuple[float, str]
) -> None:
    decided = submit(spec)
    assert decided.limits.timeLimit is not None and decided.limits.softTimeLimit is not None
    assert (decided.limits.timeLimit.seconds, decided.limits.timeLimit.source) == hard
    assert (decided.limits.softTimeLimit.seconds, decided.limits.softTimeLimit.source) == soft
    assert decided.options["time_limit"] == hard[0]
    assert decided.options["soft_time_limit"] == soft[0]


def test_no_limits_without_defaults() -> None:
    decided = submit({"task": "t", "args": [1, 2]}, OperatorConfig())
    # The default queue, and messageExpires.
    assert decided.options == {"queue": "celery", "expires": NOW + timedelta(days=1)}
    assert decided.limits.timeLimit is None
    assert (decided.task, decided.task_id, decided.args, decided.kwargs) == (
        "t",
        "tr-u1-1",
        [1, 2],
        {},
    )


def test_options_are_passed_per_call() -> None:
    decided = submit(
        {"task": "t", "queue": "q", "priority": 7, "countdown": 3, "kwargs": {"a": 1}},
        OperatorConfig(),
    )
    assert decided.options == {
        "queue": "q",
        "priority": 7,
        "countdown": 3,
        "expires": NOW + timedelta(days=1, seconds=3),
    }
    assert decided.kwargs == {"a": 1}


@pytest.mark.parametrize(
    ("config", "queue"),
    [(OperatorConfig(), "celery"), (OperatorConfig(defaultQueue="jobs"), "jobs")],
)
def test_a_run_without_a_queue_is_sent_to_the_default_queue_the_policies_saw(
    config: OperatorConfig, queue: str
) -> None:
    assert submit({"task": "t"}, config).options["queue"] == queue


@pytest.mark.parametrize(
    ("spec", "first", "expires_in"),
    [
        ({"task": "t", "expires": 30}, None, 30),
        ({"task": "t", "timeout": 20}, None, 20),
        ({"task": "t", "timeout": 20, "expires": 30}, None, 20),
        ({"task": "t", "timeout": 100, "expires": 30}, None, 30),
        # A later attempt: the deadline still counts from the first submission.
        ({"task": "t", "timeout": 100}, NOW - timedelta(seconds=90), 10),
    ],
)
def test_message_expires_at_the_earliest_of_expires_and_deadline(
    spec: dict[str, Any], first: datetime | None, expires_in: float
) -> None:
    decided = submit(spec, OperatorConfig(), first_submitted_at=first)
    assert decided.options["expires"] == NOW + timedelta(seconds=expires_in)


@pytest.mark.parametrize(
    ("spec", "config", "reason", "words"),
    [
        ({"task": "t", "softTimeLimit": 700}, CONFIG, Reason.INVALID_SPEC, "below timeLimit 600s"),
        (
            {"task": "tasks.process_email", "softTimeLimit": 60},
            CONFIG,
            Reason.INVALID_SPEC,
            "from taskDefault",
        ),
        ({"task": "t", "args": ["x" * 300_000]}, CONFIG, Reason.INVALID_SPEC, "over the bound"),
        (
            {"task": "evil.rm_rf"},
            OperatorConfig(allowedTasks=["tasks.*"]),
            Reason.TASK_NOT_ALLOWED,
            "allowedTasks",
        ),
    ],
)
def test_refusals(spec: dict[str, Any], config: OperatorConfig, reason: Reason, words: str) -> None:
    refusal = refuse(spec, config)
    assert refusal.reason is reason
    assert words in refusal.message


def test_allowed_task_globs() -> None:
    assert (
        submit({"task": "tasks.add"}, OperatorConfig(allowedTasks=["tasks.*"])).task == "tasks.add"
    )


def test_task_ids_are_derived_per_submission() -> None:
    assert task_id_for("abc", 1) != task_id_for("abc", 2)
    assert task_id_for("abc", 2) == task_id_for("abc", 2)
    assert [send_number(task_id_for("a-b-c", n)) for n in (1, 2, 17)] == [1, 2, 17]
    assert send_number(None) == 1


def test_size_based_limits_absent() -> None:
    assert size_based_time_limits(TaskRunSpec(task="t")) is None


def test_every_message_expires_after_its_countdown() -> None:
    config = OperatorConfig(messageExpires=3600)
    assert submit({"task": "t"}, config).options["expires"] == NOW + timedelta(seconds=3600)
    later = submit({"task": "t", "countdown": 600}, config).options["expires"]
    assert later == NOW + timedelta(seconds=4200)
    # A run's own expiry or deadline ends it sooner.
    assert submit({"task": "t", "expires": 5}, config).options["expires"] == NOW + timedelta(
        seconds=5
    )


@pytest.mark.parametrize(
    ("task_id", "phase", "kept"),
    [
        (None, None, True),
        ("tr-u1-1", "Running", True),
        ("tr-u1-12", "Queued", True),
        ("tr-other-1", "Running", False),  # another run's task: never read nor revoked
        ("tr-u1-x", "Queued", False),
        ("tr-other-1", "Succeeded", True),  # finished: nothing acts on it
    ],
)
def test_only_this_runs_task_ids_are_trusted(
    task_id: str | None, phase: str | None, kept: bool
) -> None:
    status = TaskRunStatus.model_validate({"taskId": task_id, "phase": phase})
    assert (trusted(status, "u1") is status) is kept
    if not kept:
        assert trusted(status, "u1") == TaskRunStatus()


def test_a_reason_this_operator_does_not_know_reads_as_none() -> None:
    """Written by another version of the operator or by hand: the rest of the status
    still parses, so an in-flight run keeps its task id, times and history."""
    status = TaskRunStatus.model_validate(
        {
            "phase": "Running",
            "reason": "SomeoneElsesReason",
            "taskId": "tr-u1-2",
            "submittedAt": "2026-01-01T00:00:00.000Z",
            "attempts": [
                {"attempt": 1, "taskId": "tr-u1-1", "phase": "Failed", "reason": "Unheard"}
            ],
        }
    )
    assert trusted(status, "u1") is status
    assert (status.phase, status.reason, status.taskId) == (Phase.RUNNING, None, "tr-u1-2")
    assert status.attempts and (status.attempts[0].taskId, status.attempts[0].reason) == (
        "tr-u1-1",
        None,
    )
    known = TaskRunStatus.model_validate({"reason": "TaskError"})
    assert known.reason is Reason.TASK_ERROR


@pytest.mark.parametrize(
    ("broker", "priority", "refused"),
    [
        ("redis://r:6379/0", 0, False),
        ("redis://r:6379/0", 9, False),
        ("rediss://r:6380/0", 10, True),  # kombu would file it last, unasked
        ("redis://r:6379/0", 255, True),
        ("amqp://guest@rabbit//", 255, False),  # RabbitMQ: 0-255, highest first
        ("redis://r:6379/0", None, False),
    ],
)
def test_priority_as_the_broker_means_it(broker: str, priority: int | None, refused: bool) -> None:
    spec = {"task": "t"} if priority is None else {"task": "t", "priority": priority}
    config = OperatorConfig(brokerUrl=broker)
    decided = message_for(
        TaskRunSpec.model_validate(spec), config, uid="u", namespace="n", number=1, now=NOW
    )
    assert isinstance(decided, Refusal) is refused
    if refused:
        assert isinstance(decided, Refusal) and "0 (first) to 9 (last)" in decided.message
    elif priority is not None:
        assert isinstance(decided, Message) and decided.options["priority"] == priority


CREATED = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
ALLOW_OK = OperatorConfig(allowedTasks=["ok.*"])


def decide(
    spec: dict[str, Any],
    status: TaskRunStatus | None = None,
    now: datetime = CREATED,
    previous: TaskRunStatus | None = None,
) -> Send | TaskRunStatus:
    return plan_send(
        TaskRunSpec.model_validate(spec),
        status or TaskRunStatus(),
        ALLOW_OK,
        uid="u",
        namespace="team-a",
        number=2 if previous else 1,
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


SENT = Message(task="ok.a", task_id="tr-u-1", args=[], kwargs={})


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
