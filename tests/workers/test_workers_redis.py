"""The ledger and the guard's claims against a real Redis (no worker needed)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from taskrun_workers import ledger
from taskrun_workers.app import create_app
from taskrun_workers.guard import Claims, claims_for


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
