"""A plain Celery app (no guard, no ledger) whose tasks produce hostile output, and whose
result encoding the test chooses: what a tenant's worker may do to the operator.

    HOSTILE_SERIALIZER   result_serializer (json, pickle, msgpack, yaml); default json
    HOSTILE_COMPRESSION  result_compression (gzip, bzip2, lzma); default none
    HOSTILE_COUNT_URL    the Redis that `hostile.count` counts in; default the ledger's
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery

app = Celery("hostile_app")
serializer = os.environ.get("HOSTILE_SERIALIZER", "json")
app.conf.update(
    broker_url=os.environ["CELERY_BROKER_URL"],
    result_backend=os.environ["CELERY_RESULT_BACKEND"],
    task_serializer="json",
    accept_content=["json"],
    result_serializer=serializer,
    result_accept_content=[serializer, "json"],
    result_compression=os.environ.get("HOSTILE_COMPRESSION") or None,
    task_track_started=True,
    result_extended=True,
    worker_prefetch_multiplier=1,
)


@app.task(name="hostile.count")
def count(key: str, seconds: float = 0) -> int:
    """Counts its own executions (in HOSTILE_COUNT_URL's Redis, or the stack's execution
    ledger's, whatever the broker and backend): what a run executed twice would show."""
    url = os.environ.get("HOSTILE_COUNT_URL") or os.environ["TASKRUN_LEDGER_URL"]
    executions = int(redis.Redis.from_url(url).incr(key))
    time.sleep(seconds)
    return executions


@app.task(name="hostile.echo")
def echo(value: Any) -> Any:
    return value


@app.task(name="hostile.raise_big")
def raise_big(size: int) -> None:
    raise ValueError("m" * size)


@app.task(name="hostile.big_result")
def big_result(size: int) -> str:
    return "r" * size


@app.task(name="hostile.deep_result")
def deep_result(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


@app.task(name="hostile.nan")
def nan() -> list[float]:
    return [float("nan"), float("inf")]


@app.task(name="hostile.odd_state", bind=True)
def odd_state(self: Any, length: int, seconds: float) -> str:
    self.update_state(state="S" * length, meta={"percent": 10**400, "blob": "b" * 100_000})
    time.sleep(seconds)
    return "done"


@app.task(name="hostile.progress_flood", bind=True)
def progress_flood(self: Any, seconds: float) -> int:
    """update_state in a tight loop: a publish storm for one run."""
    deadline, count = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        count += 1
        self.update_state(state="PROGRESS", meta={"current": count, "total": 10**9})
    return count


class _OpensWhenUnpickled:
    """Unpickling it creates the file at `path`: proof that a reader ran a worker's code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


@app.task(name="hostile.pickle_bomb")
def pickle_bomb(path: str) -> Any:
    return _OpensWhenUnpickled(path)
