"""A TaskRun's message is queued once on a Redis broker, however often it is published
(a resend after a publish that timed out, by this operator or another), against a real
redis-server; kombu's behaviour for every other message is unchanged."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.clients.celery_client import make_app


@pytest.fixture
def sender(redis_url: str) -> Iterator[Celery]:
    redis.Redis.from_url(redis_url).flushall()
    yield make_app(OperatorConfig(brokerUrl=redis_url, resultBackend=redis_url), results=False)


def queued(redis_url: str, queue: str) -> list[str]:
    """The task ids waiting in `queue`."""
    messages = redis.Redis.from_url(redis_url).lrange(queue, 0, -1)
    return [json.loads(message)["headers"]["id"] for message in messages]


def test_a_taskrun_id_is_queued_once_however_often_it_is_published(
    sender: Celery, redis_url: str
) -> None:
    for task_id in ("tr-uid-1", "tr-uid-1", "tr-uid-2", "tr-uid-1"):
        sender.send_task("t.any", args=[1], task_id=task_id, queue="q")
    assert sorted(queued(redis_url, "q")) == ["tr-uid-1", "tr-uid-2"]


def test_other_messages_are_queued_as_kombu_queues_them(sender: Celery, redis_url: str) -> None:
    for _ in range(2):
        sender.send_task("t.any", task_id="not-a-taskrun", queue="q")
    assert queued(redis_url, "q") == ["not-a-taskrun", "not-a-taskrun"]


def test_a_priority_goes_to_its_own_list(sender: Celery, redis_url: str) -> None:
    for _ in range(2):
        sender.send_task("t.any", task_id="tr-uid-1", queue="q", priority=9)
    assert queued(redis_url, "q") == []
    [priority_list] = redis.Redis.from_url(redis_url, decode_responses=True).keys("q*")
    assert queued(redis_url, str(priority_list)) == ["tr-uid-1"]
