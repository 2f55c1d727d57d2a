"""The Celery app of the workers that run TaskRuns.

Start a worker with::

    celery -A taskrun_workers.app worker --pool=prefork

The prefork pool is the one that enforces both the soft and the hard time limit that a
TaskRun passes per call; the other pools enforce one or none.

Configuration comes from the environment:

``CELERY_BROKER_URL``
    Broker, default ``redis://localhost:6379/0``.
``CELERY_RESULT_BACKEND``
    Result backend, default ``redis://localhost:6379/0``. SQLAlchemy URLs
    (``db+sqlite:///path``, ``db+postgresql://...``) work too. ``rpc://`` is refused:
    RPC results go to the process that sent the task, and the operator that reads them
    is never that process.
``TASKRUN_RESULT_EXPIRES``
    Seconds a result is kept in the backend, default one day; ``0`` keeps results forever.
``TASKRUN_VISIBILITY_TIMEOUT``
    Seconds a Redis broker leaves a message unacknowledged before it gives it to another
    worker (kombu's ``visibility_timeout``; unset keeps kombu's hour). Keep it above the
    longest countdown or ETA: a message held longer is delivered again (the guard keeps
    such a copy from running twice, or being lost). Setting it also sweeps for such
    messages every tenth of it (between 1 and 100 s) rather than kombu's 100 s.
``TASKRUN_WORKER_IMPORTS``
    Comma-separated modules with users' own tasks. They are imported by the worker
    (``app.conf.imports``); their tasks must be registered on this app (``from
    taskrun_workers.app import app`` and ``@app.task``, or ``@shared_task``) so that the
    guard and the ledger cover them.

Choices made here:

- JSON only, both ways: the operator reads results and progress from the backend and
  copies them into a Kubernetes status, which is JSON; pickle would also let anyone who
  can write to the broker run code in the worker.
- ``task_track_started``: STARTED is what tells a running task from a queued one, and
  the guard treats it as "this id has already run".
- ``result_extended``: the stored record carries the task name, args and, which the
  guard needs, the attempt number (``retries``), so a Celery retry (same id, next
  attempt) is told apart from a redelivery of the same attempt.
- ``worker_prefetch_multiplier=1``: a worker holds at most one waiting message per pool
  process, so long tasks are not stuck behind each other in one worker while another is
  idle, and few messages are held unacknowledged.
- ``task_acks_late=False`` (Celery's default, kept on purpose): the message is
  acknowledged when a pool process starts the task. The product promises that a run
  never executes twice; with late acks a worker lost mid-task (or a task longer than
  the broker's ``visibility_timeout``) gets its message redelivered, which the guard
  would then have to refuse anyway since the backend already says STARTED. Early acks
  give at-most-once execution outright; a worker lost mid-task leaves STARTED in the
  backend, which the operator reports (``WorkerLost``) and may resubmit under a new id.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from celery import Celery

from taskrun_workers import guard

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_RESULT_EXPIRES = 24 * 60 * 60
# kombu's own sweep for messages past their visibility timeout runs every 100 s (10 s x
# every 10th time); a shorter timeout gets a sweep every tenth of it, within these bounds.
MIN_RESTORE_INTERVAL = 1
MAX_RESTORE_INTERVAL = 100
TASKS_MODULE = "taskrun_workers.tasks"


def _seconds(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    """The whole, non-negative number of seconds in ``env[name]`` (empty: ``default``)."""
    raw = env.get(name)
    if not raw:
        return default
    try:
        seconds = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number of seconds, got {raw!r}") from None
    if seconds < 0:
        raise ValueError(f"{name} must not be negative, got {seconds}")
    return seconds


def transport_options(visibility_timeout: int | None) -> dict[str, int]:
    """``broker_transport_options`` for a visibility timeout (None: kombu's defaults)."""
    if visibility_timeout is None:
        return {}
    interval = visibility_timeout // 10
    return {
        "visibility_timeout": visibility_timeout,
        "unacked_restore_interval": max(MIN_RESTORE_INTERVAL, min(interval, MAX_RESTORE_INTERVAL)),
        # kombu scans only every Nth sweep; 1 makes the interval above the sweep period.
        "unacked_restore_throttle": 1,
    }


def settings_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """Celery settings for the environment ``env``; ValueError names a bad variable."""
    backend = env.get("CELERY_RESULT_BACKEND") or DEFAULT_REDIS_URL
    if backend.split(":", 1)[0].lower() == "rpc":
        raise ValueError(
            "CELERY_RESULT_BACKEND=rpc:// is not supported: RPC results go back to the "
            "process that sent the task, and the operator reading them never is that "
            "process; use a Redis or SQLAlchemy (db+...) backend"
        )
    expires = _seconds(env, "TASKRUN_RESULT_EXPIRES", DEFAULT_RESULT_EXPIRES)
    visibility_timeout = _seconds(env, "TASKRUN_VISIBILITY_TIMEOUT", None)
    if visibility_timeout == 0:
        raise ValueError("TASKRUN_VISIBILITY_TIMEOUT must be at least 1 second, got 0")
    extra_imports = [
        name.strip() for name in env.get("TASKRUN_WORKER_IMPORTS", "").split(",") if name.strip()
    ]
    return {
        "broker_url": env.get("CELERY_BROKER_URL") or DEFAULT_REDIS_URL,
        "result_backend": backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_track_started": True,
        "result_extended": True,
        "worker_prefetch_multiplier": 1,
        "task_acks_late": False,
        # Celery reads 0 as "never expire", which is what 0 means here too.
        "result_expires": expires or None,
        "imports": [TASKS_MODULE, *extra_imports],
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport_options(visibility_timeout),
    }


def create_app(env: Mapping[str, str]) -> Any:
    """A Celery app configured from ``env``, with the guard and the ledger installed."""
    celery_app = Celery("taskrun_workers")
    celery_app.conf.update(settings_from_env(env))
    guard.install(celery_app)
    return celery_app


app = create_app(os.environ)
