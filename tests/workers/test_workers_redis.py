"""The ledger and the guard's claims against a real Redis (no worker needed).

The guard's holding is driven here by hand, on a stand-in for Celery's consumer; the
end-to-end tests run it in real workers.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from celery import states
from kombu.message import Message

from taskrun_workers import ledger
from taskrun_workers.app import create_app
from taskrun_workers.guard import Claims, TaskRunGuard, claim_key, claims_for


@pytest.fixture
def ledger_db(redis_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A ledger of its own (db 2), so the workers' entries do not mix in."""
    url = redis_server.url(2)
    monkeypatch.setenv("TASKRUN_LEDGER_URL", url)
    monkeypatch.delenv("TASKRUN_LEDGER_MAX_ENTRIES", raising=False)
    client = redis_server.client(2)
    client.delete(ledger.LEDGER_KEY)
    yield url
    client.delete(ledger.LEDGER_KEY)
    client.close()


def test_ledger_records_and_counts(ledger_db: str, redis_server: Any) -> None:
    app = create_app({"CELERY_BROKER_URL": redis_server.url(0)})
    ran, refused = str(uuid.uuid4()), str(uuid.uuid4())
    ledger.record(app, "start", ran, "t.ran", "w1@h", retries=0)
    ledger.record(app, "end", ran, "t.ran", "w1@h", retries=0, state="SUCCESS")
    ledger.record(app, "skipped-revoked", refused, "t.refused", "w2@h")
    ledger.record(app, "start", ran, "t.ran", "w2@h", retries=1)

    entries = ledger.read_ledger(ledger_db)
    assert [(e["event"], e["task_id"], e["hostname"]) for e in entries] == [
        ("start", ran, "w1@h"),
        ("end", ran, "w1@h"),
        ("skipped-revoked", refused, "w2@h"),
        ("start", ran, "w2@h"),
    ]
    assert entries[1]["state"] == "SUCCESS"
    assert {"pid", "time", "task"} <= entries[0].keys()
    assert ledger.executions(ledger_db, ran) == 2
    assert ledger.executions(ledger_db, refused) == 0
    assert ledger.executions(ledger_db, "never-sent") == 0


def test_ledger_keeps_only_the_newest_entries(
    ledger_db: str, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKRUN_LEDGER_MAX_ENTRIES", "3")
    app = create_app({"CELERY_BROKER_URL": redis_server.url(0)})
    for n in range(5):
        ledger.record(app, "start", f"id-{n}", "t", "w@h")
    assert [e["task_id"] for e in ledger.read_ledger(ledger_db)] == ["id-2", "id-3", "id-4"]


def test_ledger_write_errors_never_reach_the_task(
    monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    monkeypatch.setenv("TASKRUN_LEDGER_URL", f"redis://127.0.0.1:{closed_port}/0")
    app = create_app({})
    ledger.record(app, "start", "some-id", "t", "w@h")  # logs, does not raise


@pytest.fixture
def claim_store(redis_server: Any) -> Iterator[redis.Redis]:
    client = redis_server.client(3)
    yield client
    client.close()


def test_claims_are_exclusive_leases(claim_store: redis.Redis) -> None:
    mine, theirs = Claims(claim_store, "me", 30), Claims(claim_store, "them", 30)
    key = f"taskrun:claim:{uuid.uuid4()}:0"

    assert mine.take(key)
    assert not theirs.take(key)
    assert 0 < claim_store.ttl(key) <= 30

    claim_store.expire(key, 5)
    theirs.renew([key])  # not theirs to renew
    assert claim_store.ttl(key) <= 5
    mine.renew([key])
    assert claim_store.ttl(key) > 5

    theirs.release([key])  # nor to release
    assert claim_store.get(key) == b"me"
    mine.release([key])
    assert claim_store.get(key) is None
    assert theirs.take(key)


def test_claims_live_in_the_backend_redis_else_the_broker_redis(redis_server: Any) -> None:
    on_backend = claims_for(create_app({"CELERY_RESULT_BACKEND": redis_server.url(1)}), "h", 30)
    on_broker = claims_for(
        create_app(
            {"CELERY_BROKER_URL": redis_server.url(0), "CELERY_RESULT_BACKEND": "db+sqlite://"}
        ),
        "h",
        30,
    )
    nowhere = claims_for(
        create_app(
            {"CELERY_BROKER_URL": "amqp://127.0.0.1//", "CELERY_RESULT_BACKEND": "db+sqlite://"}
        ),
        "h",
        30,
    )
    assert on_backend is not None and on_broker is not None
    assert on_backend.client.connection_pool.connection_kwargs["db"] == 1
    assert on_broker.client.connection_pool.connection_kwargs["db"] == 0
    assert nowhere is None


@dataclass
class Timer:
    """The consumer's timer, turned by hand."""

    calls: list[Callable[[], None]] = field(default_factory=list)

    def call_repeatedly(self, seconds: float, fn: Callable[[], None]) -> Any:
        self.calls.append(fn)
        return self

    def cancel(self) -> None:
        self.calls.clear()

    def turn(self) -> None:
        for fn in list(self.calls):
            fn()


@dataclass
class Consumer:
    """What the guard uses of Celery's consumer: its strategies, timer and names."""

    app: Any
    hostname: str = "fake@host"
    connection_errors: tuple[type[BaseException], ...] = ()
    timer: Timer = field(default_factory=Timer)
    strategies: dict[str, Any] = field(default_factory=dict)
    handled: list[Message] = field(default_factory=list)  # what reached Celery's strategy
    acked: list[Message] = field(default_factory=list)

    def deliver(self, task_id: str, tag: str) -> Message:
        message = Message(body=b"{}", delivery_tag=tag, headers={"id": task_id, "task": "t"})
        self.strategies["t"](message, None, lambda *_: self.acked.append(message), None, None)
        return message


@pytest.fixture
def guarded(redis_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Consumer]:
    """A guard started on a stand-in consumer, against the test Redis (results in db 1)."""
    monkeypatch.delenv("TASKRUN_LEDGER_URL", raising=False)
    monkeypatch.setenv("TASKRUN_CLAIM_LEASE_SECONDS", "30")
    app = create_app(
        {"CELERY_BROKER_URL": redis_server.url(0), "CELERY_RESULT_BACKEND": redis_server.url(1)}
    )
    consumer = Consumer(app)
    consumer.strategies["t"] = lambda message, *_: consumer.handled.append(message)
    guard = TaskRunGuard(consumer)
    guard.start(consumer)
    yield consumer
    guard.stop(consumer)


def test_a_delivery_whose_claim_another_holds_is_held_until_the_claim_is_free(
    guarded: Consumer, redis_server: Any
) -> None:
    claims = redis_server.client(1)
    other = Claims(claims, "another-worker", 30)
    task_id = str(uuid.uuid4())
    assert other.take(claim_key(task_id, 0))

    guarded.deliver(task_id, "tag-1")
    newer = guarded.deliver(task_id, "tag-1")  # the broker's next copy of that message
    guarded.timer.turn()
    assert (guarded.handled, guarded.acked) == ([], [])

    other.release([claim_key(task_id, 0)])  # the holder stopped and gave it back
    guarded.timer.turn()
    assert guarded.handled == [newer]
    assert guarded.acked == []  # Celery's to ack when it starts the task
    assert claims.get(claim_key(task_id, 0)) not in (None, b"another-worker")  # the guard's
    claims.close()


def test_a_held_delivery_is_dropped_once_its_run_has_started(
    guarded: Consumer, redis_server: Any
) -> None:
    claims = redis_server.client(1)
    task_id = str(uuid.uuid4())
    assert Claims(claims, "another-worker", 30).take(claim_key(task_id, 0))
    held = guarded.deliver(task_id, "tag-2")

    guarded.app.backend.store_result(task_id, None, states.STARTED)
    guarded.timer.turn()
    assert (guarded.handled, guarded.acked) == ([], [held])
    claims.close()
