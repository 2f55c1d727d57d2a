"""Sending, revoking and marking tasks through Celery, off the event loop.

Celery's client calls block (kombu connections, broadcasts), and Kopf runs every
handler on one asyncio loop: each call runs in a small thread pool of its own, and
the caller stops waiting after a timeout (a hung broker call keeps its thread, not
the operator).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from celery.backends.redis import RedisBackend
from kombu.exceptions import EncodeError, KombuError

from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.clients import amqp_confirm, redis_once
from celery_taskrun.core.sending import Message

# No retry inside a publish: the tracker retries on its own schedule, each time past the
# leader's fence, and a publish is bounded by the socket's own timeouts (below): its
# connect plus one write.
PUBLISH_RETRY = {"max_retries": 0}
PING_SECONDS = 2.0
SOCKET_OPTIONS = {"socket_connect_timeout": 3, "socket_timeout": 5}
# The longest a publish can take once started (no retries inside it): a new leader
# waits this long before it sends again what an earlier leader may have been sending.
# On RabbitMQ the leader's fence is asked after connecting and checking the queue, so
# only the write remains, which is shorter.
PUBLISH_BOUND_SECONDS = float(sum(SOCKET_OPTIONS.values()))


def broker_scheme(url: str) -> str:
    return urlsplit(url).scheme.split("+")[0].lower()


def make_app(config: OperatorConfig, *, results: bool = True) -> Celery:
    """The operator's Celery app.  `results=False`: one without a result backend, to send
    with: with one, Celery subscribes its own result consumer to every task sent (for
    `AsyncResult.get`, which the operator never calls), retrying for 20 s when Redis is
    down and holding a subscription per task in flight."""
    app = Celery("celery-taskrun-operator", broker=config.brokerUrl, backend=config.resultBackend)
    scheme = broker_scheme(config.brokerUrl)
    transport_options: dict[str, Any] = dict(SOCKET_OPTIONS)
    if not results:
        # The class wins over the setting, which CELERY_RESULT_BACKEND in the environment
        # would set again.
        app.backend_cls = "disabled"
        # On Redis, a task id is queued once whatever an earlier publish did (redis_once).
        app.conf.broker_transport = redis_once.BY_SCHEME.get(scheme)
        if scheme in amqp_confirm.SCHEMES:
            transport_options = dict(amqp_confirm.TRANSPORT_OPTIONS)
            app.conf.broker_connection_timeout = amqp_confirm.CONNECT_SECONDS
            # A queue the sender declares (one that does not exist yet) gets this.
            app.conf.task_queue_max_priority = config.queueMaxPriority
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        # A database backend's records are read with the columns `worker` and `retries`
        # (Celery's extended model): the workers write them with `result_extended`.
        result_extended=True,
        # Celery would make its tables when the backend is first touched, here at the
        # operator's start: a database down then would stop the start.  The first read
        # that reaches the database makes them instead (clients/backend.py).
        database_create_tables_at_setup=False,
        task_publish_retry_policy=PUBLISH_RETRY,
        broker_transport_options=transport_options,
        result_backend_transport_options=SOCKET_OPTIONS,
        broker_connection_retry=False,
        broker_connection_retry_on_startup=False,
    )
    return app


def database_errors(app: Celery) -> tuple[type[BaseException], ...]:
    """What a database result backend raises (revoke marks are stored there); SQLAlchemy
    is imported only when the backend is one (it costs the operator some 26 MiB)."""
    if not type(app.backend).__module__.startswith("celery.backends.database"):
        return ()
    from sqlalchemy.exc import SQLAlchemyError

    return (SQLAlchemyError,)


class SendRefused(Exception):
    """The message itself cannot be sent (it does not encode): sending again cannot help."""


class BrokerUnavailable(Exception):
    """The broker (or the backend, for revoke marks) did not answer in time: try again."""


class MarkRefused(Exception):
    """The REVOKED mark could not be stored: Celery reads the record it would replace
    first, and a record some worker wrote may not decode."""


class CeleryClient:
    def __init__(
        self, app: Celery, sender: Celery, *, timeout: float = 10.0, threads: int = 16
    ) -> None:
        self.app = app  # control commands, and revoke marks in the result backend
        self.sender = sender  # sending: no result backend of its own (see `make_app`)
        self.timeout = timeout
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="celery-client")
        # Sends whose caller stopped waiting, by task id, until a later send settles them.
        self._sends: dict[str, Future[None]] = {}
        self.confirmed = (
            amqp_confirm.ConfirmedPublisher(sender)
            if broker_scheme(sender.conf.broker_url or "") in amqp_confirm.SCHEMES
            else None
        )
        # What the broker's transport and the backend raise when they are unreachable.
        connection = app.connection_for_write()
        self.unavailable: tuple[type[BaseException], ...] = (
            *connection.connection_errors,
            *connection.channel_errors,
            *getattr(app.backend, "connection_errors", ()),
            *database_errors(app),
            KombuError,
            OSError,
            TimeoutError,
            amqp_confirm.NotTaken,
            amqp_confirm.NotAllowed,
        )

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self.pool, partial(fn, *args, **kwargs)), self.timeout
            )
        except (EncodeError, OverflowError):
            raise
        except self.unavailable as exc:
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def send(self, message: Message, *, may_publish: Callable[[], bool]) -> None:
        """Send the task; SendRefused when the message cannot be encoded, any other
        error when the broker did not take it (worth another try).

        A task id is never published twice: a send that timed out here may still be
        publishing in its thread, so until that thread has returned, sending the same
        id again is refused (BrokerUnavailable, "not settled"), and once it has returned
        having published, sending it again is that send's success, not a second
        message.  `may_publish` (the leader's fence) is asked in the publishing thread,
        just before the message leaves."""
        task_id = message.task_id
        earlier = self._sends.get(task_id)
        if earlier is not None:
            if not earlier.done():
                raise BrokerUnavailable(f"the previous send of {task_id} has not settled yet")
            del self._sends[task_id]
            if not earlier.cancelled() and earlier.exception() is None:
                return  # it did publish, after its caller stopped waiting
        future = self.pool.submit(self._publish, message, may_publish)
        self._sends[task_id] = future
        settled = True
        try:
            await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except TimeoutError as exc:  # still publishing, maybe: settled by a later send
            settled = False
            raise BrokerUnavailable(f"no answer from the broker in {self.timeout:g}s") from exc
        except (EncodeError, OverflowError) as exc:
            raise SendRefused(f"{type(exc).__name__}: {exc}") from exc
        except self.unavailable as exc:
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc
        finally:
            if settled:
                del self._sends[task_id]

    def _publish(self, message: Message, may_publish: Callable[[], bool]) -> None:
        if self.confirmed is not None:
            self.confirmed.publish(message, may_publish)
            return
        if not may_publish():
            raise BrokerUnavailable("not sent: this operator's Lease is not surely its own")
        self.sender.send_task(
            message.task,
            args=message.args,
            kwargs=message.kwargs,
            task_id=message.task_id,
            **message.options,
        )

    async def revoke(self, task_id: str, *, terminate: bool, reason: str, keep_for: float) -> None:
        """Revoke for the workers online, and record REVOKED in the backend for at least
        `keep_for` seconds: as long as a message of the task may still be delivered.

        The broadcast reaches only the workers online now; the stored REVOKED state is
        what the worker guard (taskrun_workers.guard) checks before running a task,
        so a worker that comes online later does not run it either.
        """
        await self._call(self.app.control.revoke, task_id, terminate=terminate)
        await self._call(self._mark, task_id, reason, keep_for)

    def _mark(self, task_id: str, reason: str, keep_for: float) -> None:
        try:
            self.app.backend.mark_as_revoked(task_id, reason)
        except self.unavailable:
            raise
        except Exception as exc:  # whatever decoding a hostile record raises
            raise MarkRefused(f"{type(exc).__name__}: {str(exc)[:200]}") from exc
        self._keep_mark(task_id, keep_for)

    def _keep_mark(self, task_id: str, seconds: float) -> None:
        """The mark expires with result_expires (a day by default), but no sooner than a
        message of the task could arrive (a long countdown): Redis keeps it longer."""
        backend = self.app.backend
        if isinstance(backend, RedisBackend) and seconds > (backend.expires or 0):
            backend.client.expire(backend.get_key_for_task(task_id), int(seconds) + 1)

    async def holding(self, task_ids: list[str], hostnames: set[str]) -> dict[str, set[str]]:
        """Which of these tasks each of these workers (every worker, if none is named)
        reports active, reserved or scheduled right now; one that does not answer is
        absent."""
        destination = sorted(hostnames) or None
        inspect = self.app.control.inspect(destination=destination, timeout=PING_SECONDS)
        replies = await self._call(inspect.query_task, *task_ids)
        return {host: set(reply or {}) for host, reply in (replies or {}).items()}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
