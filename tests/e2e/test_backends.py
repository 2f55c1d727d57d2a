"""Result backends: a SQLAlchemy database end to end, and the RPC backend refused.

The database scenario runs its own worker (consuming its own queue) and its own
operator (following its own namespace), both with `CELERY_RESULT_BACKEND` set to a
SQLite file, beside the shared Redis-backed pair.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from celery_taskrun.clients.backend import RedisResultBackend
from celery_taskrun.core.records import Reading
from taskrun_dev.stack import Stack

from support import TaskRuns

pytestmark = pytest.mark.e2e


@pytest.fixture
def database_runs(stack: Stack, tmp_path: Path) -> Iterator[TaskRuns]:
    namespace = f"iso-db-{uuid.uuid4().hex[:6]}"
    stack.kubectl("create", "namespace", namespace, check=True)
    settings = {"CELERY_RESULT_BACKEND": f"db+sqlite:///{tmp_path / 'results.db'}"}
    worker = stack.start_worker("dbworker", settings, queues=["db"])
    operator = stack.start_operator("dboperator", settings, extra_args=["--namespace", namespace])
    try:
        yield TaskRuns(stack, namespace)
    finally:
        operator.stop()
        worker.stop()
        stack.kubectl("delete", "namespace", namespace, "--wait=false")


def test_database_backend_end_to_end(database_runs: TaskRuns) -> None:
    runs = database_runs
    runs.apply("sum", "calculate_sum", args=[[1, 2, 3, 4, 5]], queue="db")
    runs.apply("boom", "fail", args=["db says no"], queue="db")
    runs.apply("steps", "progress", kwargs={"steps": 3, "delay": 0.5}, queue="db")
    # Past the operator's maxRecordBytes (2 MiB), read as its first 64 KiB: the user sees
    # the same outcome as from a record read whole.
    runs.apply("huge", "big_result", args=[3_000_000], queue="db")
    done = runs.finished("sum")
    assert (done["phase"], done["result"]) == ("Succeeded", 15)
    failed = runs.finished("boom")
    assert (failed["phase"], failed["reason"]) == ("Failed", "TaskError")
    assert failed["error"]["type"] == "ValueError" and failed["error"]["message"] == "db says no"
    assert runs.finished("steps")["progress"]["percent"] == 100
    huge = runs.finished("huge")
    assert (huge["phase"], huge["resultTruncated"]) == ("Succeeded", True)
    assert huge["resultBytes"] == 3_000_002  # the JSON string, quotes included
    assert "task succeeded; result of 3000002 bytes cut to a preview" in huge["message"]


def test_rpc_backend_is_refused_at_start(stack: Stack) -> None:
    env = {**stack.env, "CELERY_RESULT_BACKEND": "rpc://", "KUBECONFIG": "/nonexistent"}
    result = subprocess.run(
        ["celery-taskrun-operator"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "rpc:// result backend sends results back to the process that sent the task" in (
        result.stderr
    )


async def test_the_redis_backend_hears_only_the_operators_own_task_ids(stack: Stack) -> None:
    """Another application's publishes (Celery stores and publishes every state of
    every task) never reach the operator, let alone get parsed: it listens to its own
    task ids' channels only."""
    backend = RedisResultBackend(
        stack.result_backend, max_record_bytes=64 * 1024, budget_bytes=1 << 20, timeout=5
    )
    heard: list[str] = []
    subscribed, ours = asyncio.Event(), asyncio.Event()

    async def on_record(task_id: str, reading: Reading | None) -> None:
        heard.append(task_id)
        ours.set()

    async def on_resync() -> None:
        subscribed.set()

    watching = asyncio.create_task(backend.watch(on_record, on_resync))
    publisher = aioredis.from_url(stack.result_backend)
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        record = b'{"status": "PROGRESS", "result": {"current": 1}}'
        await publisher.publish("celery-task-meta-another-apps-task", record * 1000)
        await publisher.publish("celery-task-meta-tr-0123-1", record)
        await asyncio.wait_for(ours.wait(), 10)
        assert heard == ["tr-0123-1"]  # the other application's came first, unheard
    finally:
        watching.cancel()
        await publisher.aclose()
        await backend.close()
