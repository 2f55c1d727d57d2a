"""The worker-side guard: a cancelled run never executes later, and no run executes twice.

Plain Celery keeps neither promise. A revoke is an in-memory broadcast to the workers
online at that moment, lost by any worker that is offline, restarting or not yet
started. And a task id can reach the workers twice: Redis redelivers a message left
unacknowledged past its ``visibility_timeout`` (a countdown longer than that is enough),
and an operator that crashed between sending a task and recording that it did may send
the same id again.

So the operator, when it cancels a run or its deadline passes, also stores REVOKED for
the task id in the result backend; and before a worker lets a message in, the guard
reads the backend record of its id:

- REVOKED: the id goes into ``celery.worker.state.revoked``, and Celery's own strategy
  then discards the message through its normal path (stores REVOKED again, acks it,
  sends ``task_revoked``), as if the broadcast had reached this worker.
- PENDING (no record): a first delivery; it runs.
- any other state (STARTED, SUCCESS, FAILURE, PROGRESS or another custom state) written
  by the same attempt or a later one: a duplicate. The message is acknowledged and
  dropped without storing anything, since storing REVOKED would overwrite the outcome of
  the run that did happen. A Celery retry sends the same id again with the next attempt
  number (``retries``), and ``result_extended`` stores the attempt number with the
  record, so a record of an earlier attempt does not stop a retry. Without an attempt
  number in the record, RETRY lets the message run and other states do not.

Two deliveries of the same attempt received before either has started (both held for a
countdown, say) both find no record. For that race the guard takes a claim: ``SET NX``
of ``taskrun:claim:<task id>:<attempt>`` in the result backend's Redis (or the broker's,
when the backend is a database and the broker is Redis). A claim is a lease of
``TASKRUN_CLAIM_LEASE_SECONDS`` (default 30), renewed every third of that while its
message waits in this worker; released when the consumer stops or loses its connection
with the message unacknowledged (the broker then hands the message to another worker,
which must be able to take it); and left to lapse once the message is acknowledged (by
then the backend record says STARTED). A worker killed outright leaves its claims to
lapse. Without any Redis to hold claims the race stays open.

A delivery whose claim another delivery holds is not a duplicate to drop yet: it is held
(WAIT). The copy may be the only one left. Redis restores a message left unacknowledged
past its ``visibility_timeout`` (a countdown or ETA longer than that is enough) to the
queue and takes it out of its ``unacked`` set, while the first worker still holds it in
memory; if the second worker acknowledged its copy away and the first were then killed,
nothing would bring the run back (``tests/workers``: a copy redelivered while another
worker holds the message). So the guard keeps such a delivery unacknowledged, out of
Celery's hands (no request, nothing reserved), and looks again at every renewal (a third
of the lease): once the record says the run started or ended, it acknowledges and drops
it (DUPLICATE); once the claim is free (its holder died and the lease lapsed, or it
stopped and released it), it takes the claim and hands the delivery to Celery's strategy
as if it had just arrived (RUN, or REVOKED if the run was cancelled meanwhile). A
consumer that stops forgets its held deliveries unacknowledged, so the broker gives them
to another worker. While held, a delivery occupies one of the worker's prefetch slots
(copies of one message share one: kombu counts delivery tags, and the guard keeps only
the newest copy), so a worker holding as many as its prefetch count (its concurrency,
with this project's multiplier of 1) takes no other message until one settles: within a
lease and a third of the holder's death, or when the holder runs it. Keeping
``visibility_timeout`` above the longest countdown keeps copies, and holding, away.

How: the guard is a consumer bootstep that wraps the consumer's task strategies (the
per-task-name message handlers in ``consumer.strategies``, rebuilt by the ``Tasks``
bootstep each time the consumer starts), so it decides on the raw message before Celery
builds a request from it. A duplicate is acknowledged with the same ``ack`` callback a
request would use, and never becomes a request: nothing is reserved, stored, or
announced; a held delivery is handed to the same strategy later, from the consumer's
timer, as Celery hands over a task whose ETA has come. (Skipped from a ``task_received``
signal handler instead, through the request's ``_already_revoked`` flag, a duplicate
would stay registered as reserved in the worker's state: the strategy reserves the
request after sending that signal.) The tests in
``tests/workers/test_workers_guard_e2e.py`` run real workers, so a Celery upgrade that
changes these internals fails them.

The guard fails open: when the backend or the claim store cannot be read, it logs and
lets the message run. Refusing would acknowledge and drop a message that is almost
always a legitimate first delivery, losing the run for good, while letting it run
risks a second execution only in the rare case that it really is a duplicate. (With
the backend unreadable but the claim store not, the claim still decides.) A held
delivery, whose claim had a live holder, stays held through looks that cannot reach
the claim store, since holding loses nothing; after a whole lease of them it runs (the
holder most likely could not renew its claim either).

Consequences for callers: a run resubmitted after a failure needs a new task id (the
same id would be refused as a duplicate), and a task that re-queues itself with
``Reject(requeue=True)`` is refused the second time (use ``self.retry()``).
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from celery import bootsteps, states
from celery.backends.base import DisabledBackend
from celery.backends.redis import RedisBackend
from celery.exceptions import InvalidTaskError
from celery.worker import state as worker_state
from kombu.exceptions import ContentDisallowed, DecodeError

from taskrun_workers import ledger

logger = logging.getLogger(__name__)

CLAIM_PREFIX = "taskrun:claim:"
DEFAULT_LEASE_SECONDS = 30
_SOCKET_TIMEOUT = 5.0

# Compare-and-act, so that a worker never extends or deletes a claim another one holds
# (its own may have lapsed and been taken meanwhile).
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('expire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""

StrategyHandler = Callable[[Any, Any, Any, Any, Any], Any]


class Verdict(enum.Enum):
    RUN = "run"
    REVOKED = "revoked"
    DUPLICATE = "duplicate"
    WAIT = "wait"  # hold it unacknowledged and look again


class Claim(enum.Enum):
    """What the guard found when it went for a delivery's claim."""

    TAKEN = "taken"
    HELD = "held"  # by another delivery, here or in another worker
    UNKNOWN = "unknown"  # not tried (no claim store), or the store could not be reached


def verdict(meta: Mapping[str, Any], retries: int) -> Verdict:
    """What to do with a delivery of attempt ``retries``, given the backend record."""
    state = meta.get("status") or states.PENDING
    if state == states.REVOKED:
        return Verdict.REVOKED
    if state == states.PENDING:
        return Verdict.RUN
    stored = meta.get("retries")
    if isinstance(stored, int) and not isinstance(stored, bool):
        return Verdict.RUN if retries > stored else Verdict.DUPLICATE
    return Verdict.RUN if state == states.RETRY else Verdict.DUPLICATE


def settle(record: Verdict | None, claim: Claim, unseen_for: float | None, lease: float) -> Verdict:
    """What to do with a delivery, all told.

    ``record`` is the verdict of its backend record (see ``verdict``), None when the
    backend could not be read; ``claim`` what going for its claim found (tried unless
    the record settles it). ``unseen_for`` is None for a new delivery and, for one held
    already, the seconds since a look last found its claim held.
    """
    if record is Verdict.REVOKED or record is Verdict.DUPLICATE:
        return record
    if claim is Claim.TAKEN:
        return Verdict.RUN
    if claim is Claim.HELD:
        return Verdict.WAIT
    # Blind: fail open, except that a held delivery, whose claim had a live holder when
    # last seen, waits until that holder's lease would have lapsed.
    if unseen_for is None or unseen_for >= lease:
        return Verdict.RUN
    return Verdict.WAIT


def message_identity(message: Any, body: Any) -> tuple[str, str | None, int] | None:
    """(task id, task name, attempt) of a task message, or None if it has no id.

    Protocol 2 carries them in the headers; protocol 1 in the body, which the consumer
    has already decoded and passes along.
    """
    headers = message.headers
    source: Mapping[str, Any] = headers if isinstance(headers, Mapping) else {}
    if "id" not in source and isinstance(body, Mapping):
        source = body
    task_id = source.get("id")
    if not isinstance(task_id, str):
        return None
    retries = source.get("retries")
    attempt = retries if isinstance(retries, int) and not isinstance(retries, bool) else 0
    return task_id, source.get("task"), attempt


def claim_key(task_id: str, retries: int) -> str:
    return f"{CLAIM_PREFIX}{task_id}:{retries}"


def lease_seconds() -> int:
    raw = os.environ.get("TASKRUN_CLAIM_LEASE_SECONDS") or str(DEFAULT_LEASE_SECONDS)
    try:
        seconds = int(raw)
    except ValueError:
        seconds = 0
    # Renewed every third of the lease, and EXPIRE counts whole seconds: shorter leases
    # would renew more often than once a second and risk lapsing between renewals.
    if seconds < 3:
        logger.warning(
            "TASKRUN_CLAIM_LEASE_SECONDS=%r is not a number of seconds >= 3, using %d",
            raw,
            DEFAULT_LEASE_SECONDS,
        )
        return DEFAULT_LEASE_SECONDS
    return seconds


class Claims:
    """Leases on (task id, attempt) in Redis, held under one holder token."""

    def __init__(self, client: redis.Redis, holder: str, lease_seconds: int):
        self.client = client
        self.holder = holder
        self.lease_seconds = lease_seconds
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def take(self, key: str) -> bool:
        return bool(self.client.set(key, self.holder, nx=True, ex=self.lease_seconds))

    def renew(self, keys: Iterable[str]) -> None:
        self._each(self._renew, keys, self.holder, self.lease_seconds)

    def release(self, keys: Iterable[str]) -> None:
        self._each(self._release, keys, self.holder)

    def _each(self, script: Any, keys: Iterable[str], *args: Any) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                script(keys=[key], args=list(args), client=pipe)
            pipe.execute()


def claims_for(app: Any, holder: str, lease: int) -> Claims | None:
    """Claims in the backend's Redis, else the broker's, else None (no Redis at all)."""
    backend = app.backend
    if isinstance(backend, RedisBackend):
        return Claims(backend.client, holder, lease)
    broker_url = app.conf.broker_url or ""
    if broker_url.split(":", 1)[0].lower() in ("redis", "rediss", "unix"):
        client = redis.Redis.from_url(
            broker_url, socket_timeout=_SOCKET_TIMEOUT, socket_connect_timeout=_SOCKET_TIMEOUT
        )
        return Claims(client, holder, lease)
    return None


@dataclass(eq=False)  # each delivery is itself: compared (and removed) by identity
class Delivery:
    """A task message as the consumer handed it to the strategy, while the guard holds it."""

    message: Any
    body: Any
    ack: Any
    reject: Any
    callbacks: Any
    handler: StrategyHandler
    consumer: Any
    task_id: str
    task_name: str | None
    retries: int
    seen_at: float = 0.0  # monotonic time a look last found its claim held

    @property
    def key(self) -> str:
        return claim_key(self.task_id, self.retries)


class TaskRunGuard(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer bootstep that screens every task message before Celery takes it."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.app = parent.app
        self.enabled = not isinstance(self.app.backend, DisabledBackend)
        if not self.enabled:
            logger.warning("taskrun guard off: the app has no result backend to read")
        holder = f"{parent.hostname}/{os.getpid()}/{uuid.uuid4().hex}"
        self.claims = claims_for(self.app, holder, lease_seconds()) if self.enabled else None
        # claim key -> the kombu message it was taken for, while that message is ours
        self._held: dict[str, Any] = {}
        # deliveries whose claim another delivery holds (see the module docstring)
        self._waiting: list[Delivery] = []
        self._lock = threading.Lock()
        self._renewal: Any = None

    def start(self, parent: Any) -> None:
        if not self.enabled:
            return
        strategies = parent.strategies
        for name, handler in list(strategies.items()):
            strategies[name] = self._guarded(parent, handler)
        if self.claims is not None:
            self._renewal = parent.timer.call_repeatedly(self.claims.lease_seconds / 3, self._tick)

    def stop(self, parent: Any) -> None:
        if self._renewal is not None:
            self._renewal.cancel()
            self._renewal = None
        with self._lock:
            unacked = [key for key, message in self._held.items() if not message.acknowledged]
            self._held.clear()
            # Left unacknowledged: the broker gives them to another worker.
            self._waiting.clear()
        self._release_claims(unacked)

    terminate = stop
    shutdown = stop

    def _guarded(self, consumer: Any, handler: StrategyHandler) -> StrategyHandler:
        def guarded(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any) -> Any:
            identity = message_identity(message, body)
            if identity is None:
                return handler(message, body, ack, reject, callbacks)
            task_id, task_name, retries = identity
            delivery = Delivery(
                message,
                body,
                ack,
                reject,
                callbacks,
                handler,
                consumer,
                task_id,
                task_name,
                retries,
            )
            decision, claim = self._screen(delivery, None)
            if claim is Claim.TAKEN:
                with self._lock:
                    self._held[delivery.key] = message
            if decision is Verdict.WAIT:
                logger.info(
                    "taskrun guard: holding %s[%s]: another delivery holds its claim",
                    task_name,
                    task_id,
                )
                tag = message.delivery_tag
                with self._lock:
                    # A newer copy of a message held already replaces the older one, which
                    # is forgotten unacknowledged: both are the same broker message (one
                    # delivery tag), and an ack of either would ack it.
                    self._waiting = [d for d in self._waiting if d.message.delivery_tag != tag]
                    self._waiting.append(delivery)
                return None
            return self._apply(delivery, decision)

        return guarded

    def _screen(self, delivery: Delivery, unseen_for: float | None) -> tuple[Verdict, Claim]:
        """Look at the record and the claim of ``delivery`` (I/O), and decide."""
        record, claim = self._look(delivery)
        if claim is Claim.HELD:
            delivery.seen_at = time.monotonic()
        lease = self.claims.lease_seconds if self.claims is not None else DEFAULT_LEASE_SECONDS
        return settle(record, claim, unseen_for, lease), claim

    def _look(self, delivery: Delivery) -> tuple[Verdict | None, Claim]:
        task_id = delivery.task_id
        record: Verdict | None = None
        try:
            record = verdict(self.app.backend.get_task_meta(task_id, cache=False), delivery.retries)
        except Exception as exc:
            # Failing open (see the module docstring): refusing would lose the run for good.
            logger.warning("taskrun guard: cannot read %s: %r", task_id, exc)
        if record is Verdict.REVOKED or record is Verdict.DUPLICATE or self.claims is None:
            return record, Claim.UNKNOWN
        try:
            taken = self.claims.take(delivery.key)
        except Exception as exc:
            logger.warning("taskrun guard: cannot claim %s: %r", task_id, exc)
            return record, Claim.UNKNOWN
        return record, Claim.TAKEN if taken else Claim.HELD

    def _apply(self, delivery: Delivery, decision: Verdict) -> Any:
        """Carry out a decision other than WAIT: drop the delivery, or hand it to Celery."""
        consumer, task_id, task_name = delivery.consumer, delivery.task_id, delivery.task_name
        if decision is Verdict.DUPLICATE:
            logger.info("taskrun guard: dropping duplicate %s[%s]", task_name, task_id)
            ledger.record(self.app, "skipped-duplicate", task_id, task_name, consumer.hostname)
            delivery.ack(logger, consumer.connection_errors)
            return None
        if decision is Verdict.REVOKED:
            logger.info("taskrun guard: %s[%s] was revoked", task_name, task_id)
            ledger.record(self.app, "skipped-revoked", task_id, task_name, consumer.hostname)
            worker_state.revoked.add(task_id)
        return delivery.handler(
            delivery.message, delivery.body, delivery.ack, delivery.reject, delivery.callbacks
        )

    def _tick(self) -> None:
        self._renew_held()
        with self._lock:
            waiting = list(self._waiting)
        for delivery in waiting:
            decision, claim = self._screen(delivery, time.monotonic() - delivery.seen_at)
            if decision is Verdict.WAIT:
                continue
            with self._lock:
                # Gone if, with a timer on its own thread, the consumer stopped meanwhile
                # (the broker has the message back) or a newer copy replaced it.
                gone = delivery not in self._waiting
                if not gone:
                    self._waiting.remove(delivery)
                    if claim is Claim.TAKEN:
                        self._held[delivery.key] = delivery.message
            if gone:
                if claim is Claim.TAKEN:
                    self._release_claims([delivery.key])
                continue
            logger.info(
                "taskrun guard: %s[%s], held, is now %s",
                delivery.task_name,
                delivery.task_id,
                decision.value,
            )
            self._release(delivery, decision)

    def _release(self, delivery: Delivery, decision: Verdict) -> None:
        # Outside the consumer's own call of the strategy: handle what it would.
        consumer = delivery.consumer
        try:
            self._apply(delivery, decision)
        except (InvalidTaskError, ContentDisallowed) as exc:
            consumer.on_invalid_task(delivery.body, delivery.message, exc)
        except DecodeError as exc:
            consumer.on_decode_error(delivery.message, exc)

    def _renew_held(self) -> None:
        with self._lock:
            for key in [key for key, message in self._held.items() if message.acknowledged]:
                del self._held[key]
            keys = list(self._held)
        if not keys or self.claims is None:
            return
        try:
            self.claims.renew(keys)
        except Exception as exc:
            logger.warning("taskrun guard: could not renew claims: %r", exc)

    def _release_claims(self, keys: list[str]) -> None:
        if not keys or self.claims is None:
            return
        try:
            self.claims.release(keys)
        except Exception as exc:
            # They lapse with their lease anyway.
            logger.warning("taskrun guard: could not release claims %s: %r", keys, exc)


def install(app: Any) -> None:
    """Put the guard and the ledger into ``app``'s workers; call before the worker starts."""
    app.steps["consumer"].add(TaskRunGuard)
    ledger.install(app)
