"""Sending on RabbitMQ, against a real rabbitmq-server: a send returns once RabbitMQ has
the message (publisher confirms); one it does not take (returned for want of a queue,
or nacked) raises; a queue is declared only when it does not exist, never again with
other arguments; a stalled RabbitMQ fails the send before the message leaves."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import amqp
import pytest
from amqp.exceptions import NotFound

from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.clients.celery_client import BrokerUnavailable, CeleryClient, make_app
from celery_taskrun.core.sending import Message
from taskrun_dev.servers import RABBITMQ
from taskrun_dev.stack import Stack


@pytest.fixture(scope="module")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("rabbitmq"), say=lambda _: None)
    try:
        stack.start_servers(RABBITMQ, "sqlite")
        yield stack
    finally:
        stack.down()


def client_for(stack: Stack, **config: Any) -> CeleryClient:
    settings = OperatorConfig(
        brokerUrl=stack.broker_url, resultBackend=stack.result_backend, **config
    )
    return CeleryClient(make_app(settings), make_app(settings, results=False), timeout=8)


def connect(stack: Stack) -> amqp.Connection:
    rabbitmq = stack.process(RABBITMQ)
    assert rabbitmq is not None
    connection = amqp.Connection(
        host=f"127.0.0.1:{rabbitmq.port}", userid="guest", password="guest", connect_timeout=5
    )
    connection.connect()
    return connection


def queued(stack: Stack, queue: str) -> int:
    """Messages in `queue` (passive: fails when it does not exist)."""
    connection = connect(stack)
    try:
        _, count, _ = connection.channel().queue_declare(queue, passive=True)
        return int(count)
    finally:
        connection.close()


def declare(stack: Stack, queue: str, arguments: dict[str, Any] | None = None) -> None:
    connection = connect(stack)
    try:
        connection.channel().queue_declare(
            queue, durable=True, auto_delete=False, arguments=arguments
        )
    finally:
        connection.close()


def send(client: CeleryClient, queue: str, may_publish: Callable[[], bool] = lambda: True) -> None:
    message = Message(
        task="t.any",
        task_id=f"tr-{uuid.uuid4()}",
        args=[1],
        kwargs={},
        options={"queue": queue, "priority": 3},
    )
    asyncio.run(client.send(message, may_publish=may_publish))


def test_a_send_returns_once_rabbitmq_has_the_message(rabbitmq: Stack) -> None:
    client = client_for(rabbitmq)
    queue = f"q-{uuid.uuid4().hex[:8]}"
    for expected in (1, 2, 3):
        send(client, queue)
        assert queued(rabbitmq, queue) == expected  # no wait: the confirm came after it


def test_a_missing_queue_is_declared_with_the_configured_max_priority(rabbitmq: Stack) -> None:
    client = client_for(rabbitmq, queueMaxPriority=10)
    queue = f"q-{uuid.uuid4().hex[:8]}"
    send(client, queue)
    connection = connect(rabbitmq)
    try:
        channel = connection.channel()
        # The same arguments are accepted; plain ones would be refused (406).
        channel.queue_declare(
            queue, durable=True, auto_delete=False, arguments={"x-max-priority": 10}
        )
        assert queued(rabbitmq, queue) == 1
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("theirs", "ours"), [(None, 10), ({"x-max-priority": 10}, None), ({"x-max-priority": 5}, 10)]
)
def test_an_existing_queue_is_used_as_it_is(
    rabbitmq: Stack, theirs: dict[str, Any] | None, ours: int | None
) -> None:
    """Declared by a worker with other arguments: the operator sends to it, never
    declares it again (RabbitMQ would refuse, and close the channel)."""
    queue = f"q-{uuid.uuid4().hex[:8]}"
    declare(rabbitmq, queue, theirs)
    client = client_for(rabbitmq, queueMaxPriority=ours)
    send(client, queue)
    send(client, queue)
    assert queued(rabbitmq, queue) == 2
    declare(rabbitmq, queue, theirs)  # still as its owner declared it


def test_a_message_no_queue_takes_is_not_sent(rabbitmq: Stack) -> None:
    """The queue goes between the check and the publish (deleted by someone else): the
    message is returned (mandatory), and the send raises."""
    client = client_for(rabbitmq)
    queue = f"q-{uuid.uuid4().hex[:8]}"
    send(client, queue)

    def delete_queue() -> bool:
        connection = connect(rabbitmq)
        try:
            connection.channel().queue_delete(queue)
        finally:
            connection.close()
        return True

    with pytest.raises(BrokerUnavailable, match="returned by RabbitMQ"):
        send(client, queue, may_publish=delete_queue)
    with pytest.raises(NotFound):
        queued(rabbitmq, queue)
    send(client, queue)  # the same connection goes on, and declares it again
    assert queued(rabbitmq, queue) == 1


def test_a_message_rabbitmq_refuses_is_not_sent(rabbitmq: Stack) -> None:
    """A full queue that rejects publishes: RabbitMQ nacks, the send raises."""
    queue = f"q-{uuid.uuid4().hex[:8]}"
    declare(rabbitmq, queue, {"x-max-length": 1, "x-overflow": "reject-publish"})
    client = client_for(rabbitmq)
    send(client, queue)
    with pytest.raises(BrokerUnavailable, match="nacked"):
        send(client, queue)
    assert queued(rabbitmq, queue) == 1


def test_nothing_leaves_once_the_fence_is_closed(rabbitmq: Stack) -> None:
    client = client_for(rabbitmq)
    queue = f"q-{uuid.uuid4().hex[:8]}"
    with pytest.raises(BrokerUnavailable, match="Lease"):
        send(client, queue, may_publish=lambda: False)
    assert queued(rabbitmq, queue) == 0  # checked (declared), but nothing sent


def test_a_stalled_rabbitmq_fails_the_send_before_the_message_leaves(
    rabbitmq: Stack, tmp_path: Path
) -> None:
    """RabbitMQ stopped (SIGSTOP) on a connection already open: the queue check gets no
    answer, the send raises within the read timeout, and after RabbitMQ resumes the
    message is not there (nothing left to land late)."""
    client = client_for(rabbitmq)
    queue = f"q-{uuid.uuid4().hex[:8]}"
    send(client, queue)  # the connection is open and used
    proc = rabbitmq.process(RABBITMQ)
    assert proc is not None
    pids = sorted(proc.group_pids())
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            send(client, queue)
        took = time.monotonic() - began
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert took < 8  # the read timeout (5 s), not the caller's timeout
    assert queued(rabbitmq, queue) == 1
    send(client, queue)  # a new connection
    assert queued(rabbitmq, queue) == 2
