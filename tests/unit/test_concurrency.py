"""Concurrency limits' decisions, table by table: the slots a run takes, who goes now,
why a run waits, and the status a waiting run gets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from celery_taskrun.api.config import ConcurrencyGroup, OperatorConfig, Per
from celery_taskrun.api.model import Phase, Reason, TaskRunSpec, TaskRunStatus
from celery_taskrun.core.backoff import Backoff
from celery_taskrun.core.concurrency import (
    Queues,
    Slot,
    Waiter,
    admit,
    holding,
    order_of,
    slots_for,
    throttled,
    urgency,
)
from celery_taskrun.core.sending import Send, plan_send
from celery_taskrun.core.timing import next_delay

CREATED = datetime(2026, 1, 1, tzinfo=UTC)
A = Slot("a", Per.CLUSTER, "")
B = Slot("b", Per.CLUSTER, "")
LIMITS = {"a": 2, "b": 1}


def waiter(n: int, *slots: Slot, urgency: int = 0) -> Waiter:
    return Waiter((urgency, 0.0, n), f"r{n}", slots)


def lines(*waiters: Waiter) -> Queues:
    queues = Queues()
    for w in waiters:
        queues.add(w)
    return queues


def group(name: str, limit: int, per: Per = Per.CLUSTER, **globs: list[str]) -> ConcurrencyGroup:
    return ConcurrencyGroup.model_validate({"name": name, "limit": limit, "per": per, **globs})


@pytest.mark.parametrize(
    ("groups", "namespace", "task", "queue", "key", "slots"),
    [
        ([group("a", 1)], "ns", "t.x", "celery", None, [A]),
        ([group("a", 1, tasks=["reports.*"])], "ns", "t.x", "celery", None, []),
        ([group("a", 1, queues=["slow"])], "ns", "t.x", "celery", None, []),
        ([group("a", 1, namespaces=["team-*"])], "team-1", "t.x", "q", None, [A]),
        (
            [group("a", 1, Per.NAMESPACE)],
            "team-1",
            "t.x",
            "q",
            "k",
            [Slot("a", Per.NAMESPACE, "team-1")],
        ),
        ([group("a", 1, Per.KEY)], "ns", "t.x", "q", "cust-7", [Slot("a", Per.KEY, "cust-7")]),
        ([group("a", 1, Per.KEY)], "ns", "t.x", "q", None, [Slot("a", Per.KEY, "")]),
        ([group("a", 1), group("b", 1)], "ns", "t.x", "q", None, [A, B]),
    ],
)
def test_the_slots_a_run_takes(
    groups: list[ConcurrencyGroup],
    namespace: str,
    task: str,
    queue: str,
    key: str | None,
    slots: list[Slot],
) -> None:
    found = slots_for(groups, namespace=namespace, task=task, queue=queue, key=key)
    assert list(found) == slots


@pytest.mark.parametrize(
    ("broker", "max_priority", "priorities"),
    [
        # Redis: 0 first, 9 last, none is 0 (queueMaxPriority is RabbitMQ's alone).
        ("redis://x", None, [(0, 0), (None, 0), (9, 9)]),
        ("redis://x", 5, [(0, 0), (9, 9)]),
        # RabbitMQ: the highest first, none is 0 (the lowest).
        ("amqp://x", None, [(255, -255), (None, 0), (1, -1)]),
        ("pyamqp://x", None, [(9, -9), (1, -1)]),
        # Above the queues' x-max-priority RabbitMQ reads every priority as the maximum.
        ("amqp://x", 5, [(255, -5), (6, -5), (5, -5), (4, -4), (None, 0)]),
    ],
)
def test_urgency_is_the_brokers_order(
    broker: str, max_priority: int | None, priorities: list[tuple[int, int]]
) -> None:
    got = [urgency(p, broker, max_priority) for p, _ in priorities]
    assert got == [u for _, u in priorities]


def test_order_is_urgency_then_creation_then_arrival() -> None:
    early, late = CREATED, CREATED + timedelta(seconds=1)
    ranked = sorted(
        [order_of(0, late, 1), order_of(0, early, 5), order_of(-1, late, 9), order_of(0, early, 2)]
    )
    assert ranked == [
        order_of(-1, late, 9),
        order_of(0, early, 2),
        order_of(0, early, 5),
        order_of(0, late, 1),
    ]


@pytest.mark.parametrize(
    ("in_use", "waiting", "admitted"),
    [
        # Room for two in a: the first two in line go.
        ({}, [waiter(1, A), waiter(2, A), waiter(3, A)], ["r1", "r2"]),
        ({A: 1}, [waiter(1, A), waiter(2, A)], ["r1"]),
        ({A: 2}, [waiter(1, A)], []),
        # Over the limit (a smaller limit after a restart): nobody goes.
        ({A: 5}, [waiter(1, A)], []),
        # Priority first, whatever the arrival.
        ({A: 1}, [waiter(1, A, urgency=5), waiter(2, A, urgency=0)], ["r2"]),
        # In two groups: all or none.  b is full: r1 waits, and holds nothing.
        ({B: 1}, [waiter(1, A, B)], []),
        ({}, [waiter(1, A, B), waiter(2, B)], ["r1"]),
        # Nobody passes a run waiting in its slot: r2 (a) waits behind r1 (a and b full).
        ({B: 1}, [waiter(1, A, B), waiter(2, A)], []),
        # ... but a run in a slot of its own is not held back by it.
        ({B: 1}, [waiter(1, A, B), waiter(2, Slot("c", Per.CLUSTER, ""))], ["r2"]),
        # Per key: each key its own pool.
        (
            {Slot("k", Per.KEY, "x"): 1},
            [waiter(1, Slot("k", Per.KEY, "x")), waiter(2, Slot("k", Per.KEY, "y"))],
            ["r2"],
        ),
    ],
)
def test_admit(in_use: dict[Slot, int], waiting: list[Waiter], admitted: list[str]) -> None:
    limits = {**LIMITS, "c": 1, "k": 1}
    assert [w.uid for w in admit(limits, in_use, lines(*waiting).lines)] == admitted


def test_two_groups_never_deadlock() -> None:
    """Runs naming a and b in either order: nothing is held while waiting, so as places
    free, every run goes in turn."""
    limits = {"a": 1, "b": 1}
    queues = lines(*(waiter(n, A, B) if n % 2 else waiter(n, B, A) for n in range(6)))
    in_use: dict[Slot, int] = {}
    went = []
    while len(queues):
        admitted = admit(limits, in_use, queues.lines)
        assert len(admitted) == 1  # one at a time: each holds a and b
        (run,) = admitted
        queues.remove(run.uid)
        went.append(run.uid)
        # It runs and ends: its places free again.
        holding(run.slots, in_use, 1)
        holding(run.slots, in_use, -1)
    assert went == [f"r{n}" for n in range(6)]


def test_a_waiting_run_that_leaves_frees_nothing_and_unblocks_the_next() -> None:
    in_use = {B: 1}
    queues = lines(waiter(1, A, B), waiter(2, A))
    assert admit(LIMITS, in_use, queues.lines) == []
    queues.remove("r1")  # cancelled, deleted or timed out while waiting
    assert in_use == {B: 1}
    assert [w.uid for w in admit(LIMITS, in_use, queues.lines)] == ["r2"]


@pytest.mark.parametrize(
    ("in_use", "waiting", "asked", "message"),
    [
        ({A: 2}, [waiter(1, A)], 0, "concurrency group a: 2 of 2 in use"),
        (
            {A: 1, B: 1},
            [waiter(1, A, B)],
            0,
            "concurrency group b: 1 of 1 in use",
        ),
        (
            {B: 1},
            [waiter(1, A, B), waiter(2, A)],
            1,
            "concurrency group a: 0 of 2 in use; runs before it in line go first",
        ),
        (
            {Slot("k", Per.KEY, "cust-1"): 1},
            [waiter(1, Slot("k", Per.KEY, "cust-1"))],
            0,
            "concurrency group k: 1 of 1 in use (key cust-1)",
        ),
        (
            {Slot("n", Per.NAMESPACE, "team-a"): 1},
            [waiter(1, Slot("n", Per.NAMESPACE, "team-a"))],
            0,
            "concurrency group n: 1 of 1 in use (namespace team-a)",
        ),
    ],
)
def test_why_a_run_waits(
    in_use: dict[Slot, int], waiting: list[Waiter], asked: int, message: str
) -> None:
    queues = lines(*waiting)
    limits = {**LIMITS, "k": 1, "n": 1}
    assert throttled(waiting[asked], limits, in_use, queues.lines).message == message


def test_holding_counts_in_and_out() -> None:
    in_use: dict[Slot, int] = {}
    holding([A, B], in_use, 1)
    holding([A], in_use, 1)
    holding([A, B], in_use, -1)
    assert in_use == {A: 1}


# -- the step's decision: a run held back waits Pending / Throttled ------------------------

CONFIG = OperatorConfig()
WHY = "concurrency group reports: 2 of 2 in use"


def decide(spec: dict[str, object], status: TaskRunStatus, now: datetime) -> Send | TaskRunStatus:
    return plan_send(
        TaskRunSpec.model_validate(spec),
        status,
        CONFIG,
        uid="u",
        namespace="ns",
        number=1,
        created=CREATED,
        generation=1,
        now=now,
        throttled=WHY,
    )


def test_a_run_over_a_limit_waits_pending_throttled_with_its_deadline() -> None:
    status = decide({"task": "t.a", "timeout": 10}, TaskRunStatus(), CREATED)
    assert isinstance(status, TaskRunStatus)
    assert (status.phase, status.reason, status.message) == (Phase.PENDING, Reason.THROTTLED, WHY)
    assert status.taskId is None
    assert status.limits and status.limits.timeout and status.limits.timeout.seconds == 10
    # Nothing to poll while it waits: only its deadline (counted from creation) wakes it.
    delay = next_delay(status, Backoff(), 0, CREATED, CREATED, 0.0)
    assert delay == pytest.approx(11)
    untimed = decide({"task": "t.a"}, TaskRunStatus(), CREATED)
    assert isinstance(untimed, TaskRunStatus)
    assert next_delay(untimed, Backoff(), 0, CREATED, CREATED, 0.0) is None


def test_a_waiting_run_is_written_once_then_times_out_or_is_cancelled() -> None:
    waiting = decide({"task": "t.a", "timeout": 10}, TaskRunStatus(), CREATED)
    assert isinstance(waiting, TaskRunStatus)
    assert (
        decide({"task": "t.a", "timeout": 10}, waiting, CREATED + timedelta(seconds=5)) is waiting
    )
    late = decide({"task": "t.a", "timeout": 10}, waiting, CREATED + timedelta(seconds=11))
    assert isinstance(late, TaskRunStatus)
    assert (late.phase, late.reason) == (Phase.TIMED_OUT, Reason.DEADLINE_EXCEEDED)
    cancelled = decide({"task": "t.a", "cancel": True}, waiting, CREATED)
    assert isinstance(cancelled, TaskRunStatus)
    assert (cancelled.phase, cancelled.reason) == (Phase.REVOKED, Reason.CANCELLED)


def test_group_names_are_unique() -> None:
    with pytest.raises(ValueError, match="name of its own"):
        OperatorConfig.model_validate(
            {"concurrency": [{"name": "a", "limit": 1}, {"name": "a", "limit": 2}]}
        )
