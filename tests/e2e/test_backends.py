"""Result backends: a SQLAlchemy database end to end, and the RPC backend refused.

The database scenario runs its own worker (consuming its own queue) and its own
operator (following its own namespace), both with `CELERY_RESULT_BACKEND` set to a
SQLite file, beside the shared Redis-backed pair.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

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
    done = runs.finished("sum")
    assert (done["phase"], done["result"]) == ("Succeeded", 15)
    failed = runs.finished("boom")
    assert (failed["phase"], failed["reason"]) == ("Failed", "TaskError")
    assert failed["error"]["type"] == "ValueError" and failed["error"]["message"] == "db says no"
    assert runs.finished("steps")["progress"]["percent"] == 100


def test_rpc_backend_is_refused_at_start(stack: Stack) -> None:
    env = {**stack.env, "CELERY_RESULT_BACKEND": "rpc://", "KUBECONFIG": "/nonexistent"}
    result = subprocess.run(
        ["celery-taskrun-operator"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "rpc:// result backend sends results back to the process that sent the task" in (
        result.stderr
    )
