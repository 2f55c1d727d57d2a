"""A task id is never published twice by this operator: a send that timed out while
its thread still publishes is settled before the id is sent again.  The sender is a
stand-in for Celery's app (its publish held at will); the client is the real one."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from celery import Celery

from celery_taskrun.clients.celery_client import BrokerUnavailable, CeleryClient
from celery_taskrun.core.sending import Message

MESSAGE = Message(task="t.a", task_id="tr-u-1", args=[], kwargs={})


class HeldSender:
    """Publishes only once `release` is set; counts what it published."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.published: list[str] = []
        self.done = threading.Event()

    def send_task(self, name: str, *, task_id: str, **options: Any) -> None:
        self.release.wait(10)
        self.published.append(task_id)
        self.done.set()


@pytest.fixture
def client() -> CeleryClient:
    app = Celery("t", broker="memory://", backend="cache+memory://")
    made = CeleryClient(app, app, timeout=0.2)
    return made


def always() -> bool:
    return True


async def test_a_send_that_timed_out_is_not_published_again(client: CeleryClient) -> None:
    sender = HeldSender()
    client.sender = sender  # type: ignore[assignment]
    with pytest.raises(BrokerUnavailable, match="no answer"):
        await client.send(MESSAGE, may_publish=always)
    # The first thread still publishes: the same id is not sent meanwhile.
    with pytest.raises(BrokerUnavailable, match="not settled"):
        await client.send(MESSAGE, may_publish=always)
    sender.release.set()
    assert await asyncio.to_thread(sender.done.wait, 5)
    # It did publish: sending again is that send's success, not a second message.
    await client.send(MESSAGE, may_publish=always)
    assert sender.published == ["tr-u-1"]
    client.close()


async def test_nothing_is_published_past_the_fence(client: CeleryClient) -> None:
    sender = HeldSender()
    sender.release.set()
    client.sender = sender  # type: ignore[assignment]
    with pytest.raises(BrokerUnavailable, match="Lease"):
        await client.send(MESSAGE, may_publish=lambda: False)
    await client.send(MESSAGE, may_publish=always)  # refused, so not settled as sent
    assert sender.published == ["tr-u-1"]
    client.close()
