"""The execution ledger: a record, in Redis, of every task execution in the workers.

The result backend keeps one record per task id, and each state overwrites the last, so
it cannot show that a task ran twice, or that a cancelled one was refused. The ledger
appends one JSON entry per event to the list ``taskrun:ledger``::

    {"event": "start" | "end" | "cleanup" | "skipped-duplicate" | "skipped-revoked" | "span",
     "task_id": ..., "task": ..., "pid": ..., "hostname": ..., "time": <epoch seconds>}

"start" and "end" entries also carry the attempt number, ``retries``, so a retried task
has one "start" per attempt; "end" entries carry the final Celery ``state`` (None when
the pool process was terminated, as by a hard time limit, before the task ended).

``start`` and ``end`` come from the ``task_prerun`` and ``task_postrun`` signals, so
users' own tasks are recorded too; ``cleanup`` from
:func:`taskrun_workers.helpers.on_soft_timeout` and the example tasks; the ``skipped-*``
events from the guard; ``span`` (with ``started`` and ``ended``) from the ``span``
example task, inside its body: unlike ``end``, written before Celery stores the result,
so spans show how many tasks executed at once. The operator's end-to-end tests read it
with :func:`read_ledger` and :func:`executions` to assert that a run executed exactly
once, or never.

It is off unless ``TASKRUN_LEDGER_URL`` is set: a ``redis://`` URL, or ``broker`` for the
broker itself when it is Redis (the local stack and the tests set it; production workers
should not write every task start to Redis). The list is capped to the newest
``TASKRUN_LEDGER_MAX_ENTRIES`` entries (default 100000; ``0`` turns the ledger off), so
that it cannot grow without bound in a long-lived deployment.

Writing never fails a task: a Redis error is logged and the entry dropped.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any, Literal

import redis
from celery import signals

LEDGER_KEY = "taskrun:ledger"
DEFAULT_MAX_ENTRIES = 100_000
Event = Literal["start", "end", "cleanup", "skipped-duplicate", "skipped-revoked", "span"]

logger = logging.getLogger(__name__)

# Short timeouts: a ledger write sits in the task's path, and an unreachable Redis must
# cost a task seconds, not the 120 s default of Celery's own Redis clients.
_SOCKET_TIMEOUT = 2.0
_clients: dict[str, redis.Redis] = {}
_REDIS_SCHEMES = ("redis", "rediss", "unix")


def ledger_url(broker_url: str | None) -> str | None:
    """Where the ledger of a worker with this broker goes, or None when it is off.

    Off unless asked for: it is a test aid, and a production worker should not write
    every task start to Redis.  ``TASKRUN_LEDGER_URL=broker`` means the broker itself
    (when it is Redis)."""
    wanted = os.environ.get("TASKRUN_LEDGER_URL")
    if not wanted or max_entries() == 0:
        return None
    if wanted != "broker":
        return wanted
    if broker_url and broker_url.split(":", 1)[0].lower() in _REDIS_SCHEMES:
        return broker_url
    return None


def max_entries() -> int:
    raw = os.environ.get("TASKRUN_LEDGER_MAX_ENTRIES") or str(DEFAULT_MAX_ENTRIES)
    try:
        return max(0, int(raw))
    except ValueError:
        logger.warning(
            "TASKRUN_LEDGER_MAX_ENTRIES=%r is not a number, using %d", raw, DEFAULT_MAX_ENTRIES
        )
        return DEFAULT_MAX_ENTRIES


def _client(url: str) -> redis.Redis:
    # One client per URL and process: redis-py's pool notices a fork and reconnects, so
    # a client made in the worker's main process is safe in its pool children.
    client = _clients.get(url)
    if client is None:
        client = redis.Redis.from_url(
            url, socket_timeout=_SOCKET_TIMEOUT, socket_connect_timeout=_SOCKET_TIMEOUT
        )
        _clients[url] = client
    return client


def entry(
    event: Event, task_id: str, task_name: str | None, hostname: str | None, **extra: Any
) -> dict[str, Any]:
    return {
        "event": event,
        "task_id": task_id,
        "task": task_name,
        "pid": os.getpid(),
        "hostname": hostname or socket.gethostname(),
        "time": time.time(),
        **extra,
    }


def record(
    app: Any,
    event: Event,
    task_id: str,
    task_name: str | None,
    hostname: str | None,
    **extra: Any,
) -> None:
    """Append one event to the ledger of ``app``'s workers, if it has one."""
    url = ledger_url(app.conf.broker_url)
    if url is None:
        return
    line = json.dumps(entry(event, task_id, task_name, hostname, **extra))
    try:
        with _client(url).pipeline(transaction=True) as pipe:
            pipe.rpush(LEDGER_KEY, line)
            pipe.ltrim(LEDGER_KEY, -max_entries(), -1)
            pipe.execute()
    except Exception as exc:
        # Any error, not only RedisError: a malformed TASKRUN_LEDGER_URL must not fail
        # every task either.
        logger.warning("ledger: could not record %s of %s: %r", event, task_id, exc)


def record_for(task: Any, event: Event, **extra: Any) -> None:
    """Append ``event`` for the request ``task`` is running (from inside a task)."""
    request = task.request
    if request.id is None:
        return  # called directly, not as a Celery task: there is no run to record
    record(task.app, event, request.id, task.name, request.hostname, **extra)


def read_ledger(redis_url: str) -> list[dict[str, Any]]:
    """Every entry of the ledger kept in the Redis at ``redis_url``, oldest first."""
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.lrange(LEDGER_KEY, 0, -1)
    finally:
        client.close()
    return [json.loads(item) for item in raw]


def executions(redis_url: str, task_id: str) -> int:
    """How many times ``task_id`` started executing, per the ledger."""
    return sum(
        1
        for item in read_ledger(redis_url)
        if item["event"] == "start" and item["task_id"] == task_id
    )


def install(app: Any) -> None:
    """Record the start and end of every task ``app``'s workers execute."""

    def on_prerun(sender: Any = None, task_id: str = "", **_: Any) -> None:
        if sender is not None and sender.app is app:
            request = sender.request
            record(app, "start", task_id, sender.name, request.hostname, retries=request.retries)

    def on_postrun(
        sender: Any = None, task_id: str = "", state: str | None = None, **_: Any
    ) -> None:
        if sender is not None and sender.app is app:
            request = sender.request
            record(
                app,
                "end",
                task_id,
                sender.name,
                request.hostname,
                retries=request.retries,
                state=state,
            )

    # weak=False: the receivers are closures that nothing else keeps alive.
    signals.task_prerun.connect(on_prerun, weak=False, dispatch_uid=f"taskrun-ledger-pre-{id(app)}")
    signals.task_postrun.connect(
        on_postrun, weak=False, dispatch_uid=f"taskrun-ledger-post-{id(app)}"
    )
