"""Publishing a task on RabbitMQ: confirmed, routed, and never redeclaring a queue.

- Publisher confirms: a publish returns once RabbitMQ has taken the message (its ack);
  a nack, a return (no queue took it: the message is published `mandatory`) or no ack
  within the read timeout raise, and the run is not counted as sent.
- The queue is checked passively on a channel of its own just before each publish, and
  declared only when it does not exist, as Celery itself would declare it (with the
  sender app's `task_queue_max_priority`, from the operator's `queueMaxPriority`): a
  queue is never declared with arguments that differ from those it has (RabbitMQ would
  refuse with PRECONDITION_FAILED, and a worker's or the operator's later declare
  with them).  The check is also a round trip: a stalled or dead RabbitMQ fails it
  before any byte of the message leaves, so a message is in doubt only when the
  broker stops between that answer and its ack.
- One connection per sending thread, dropped after any error, so a connection whose
  state is unknown (a timed-out read may leave an ack unread) is never used again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from amqp.exceptions import MessageNacked, NotFound, PreconditionFailed
from celery import Celery
from kombu.connection import Connection

from celery_taskrun.core.sending import Message

SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
# Each read (a declare's answer, a confirm) and write gives up after its own timeout:
# the thread never hangs on a stalled broker.
CONNECT_SECONDS = 3.0
READ_SECONDS = 5.0
WRITE_SECONDS = 5.0
TRANSPORT_OPTIONS: dict[str, Any] = {
    "confirm_publish": True,
    "connect_timeout": CONNECT_SECONDS,
    "read_timeout": READ_SECONDS,
    "write_timeout": WRITE_SECONDS,
}


class NotTaken(Exception):
    """RabbitMQ did not take the message: it nacked it, or returned it (no queue)."""


class NotAllowed(Exception):
    """The leader's fence closed before the message left: nothing was sent."""


class ConfirmedPublisher:
    def __init__(self, app: Celery) -> None:
        self.app = app
        self._local = threading.local()

    def publish(self, message: Message, may_publish: Callable[[], bool]) -> None:
        connection = self._connection()
        try:
            self._ensure_queue(connection, message.options["queue"])
            if not may_publish():
                raise NotAllowed("not sent: this operator's Lease is not surely its own")
            self._local.returned = []
            self.app.send_task(
                message.task,
                args=message.args,
                kwargs=message.kwargs,
                task_id=message.task_id,
                producer=self.app.amqp.Producer(connection, auto_declare=False),
                declare=[],  # checked above: Celery would declare it plain on every send
                mandatory=True,
                confirm_timeout=READ_SECONDS,
                **message.options,
            )
        except (NotAllowed, NotTaken):
            raise  # answers on a sound connection
        except BaseException as exc:
            # kombu re-raises a nack as OperationalError("") from MessageNacked.
            if isinstance(exc, MessageNacked) or isinstance(exc.__context__, MessageNacked):
                raise NotTaken("nacked by RabbitMQ") from exc
            self._drop(connection)
            raise
        if self._local.returned:
            raise NotTaken(f"returned by RabbitMQ: {self._local.returned[0]}")

    def _connection(self) -> Connection:
        connection: Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self.app.connection_for_write()
            connection.ensure_connection(max_retries=0)  # one attempt: the tracker retries
            # The ack of a returned message follows its return: the publish waits for it
            # either way, and reads the return here.
            channel: Any = connection.default_channel  # py-amqp's, with its events
            channel.events["basic_return"].add(self._on_return)
            self._local.connection = connection
            self._local.checker = None
        return connection

    def _on_return(self, exc: Exception, *_: Any) -> None:
        self._local.returned.append(exc)

    def _drop(self, connection: Connection) -> None:
        self._local.connection = None
        self._local.checker = None
        # Closed without a round trip to a broker that may be gone.
        connection.collect()  # type: ignore[no-untyped-call]

    def _ensure_queue(self, connection: Connection, name: str) -> None:
        """The queue exists afterwards, with whatever arguments it had."""
        queue = self.app.amqp.queues[name]  # as Celery declares it: x-max-priority included
        for _ in range(2):
            try:
                queue.bind(self._checker(connection)).queue_declare(passive=True)
                return
            except NotFound:  # that closed the checking channel
                self._local.checker = None
            try:
                queue.bind(self._checker(connection)).declare()
                return
            except PreconditionFailed:  # declared otherwise meanwhile: it exists now
                self._local.checker = None
        raise NotTaken(f"queue {name} could not be checked or declared")

    def _checker(self, connection: Connection) -> Any:
        checker = self._local.checker
        if checker is None:
            checker = self._local.checker = connection.channel()  # type: ignore[no-untyped-call]
        return checker
