"""A SQLAlchemy result backend (a SQLite file) read as the operator reads it: what a
worker with `result_extended` stores, its worker and its retries included."""

from __future__ import annotations

from pathlib import Path

from celery import Celery
from celery.app.task import Context

from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.clients.backend import CeleryResultBackend
from celery_taskrun.clients.celery_client import make_app
from celery_taskrun.core.records import TaskRecord


async def test_a_database_record_gives_its_worker_and_retries(tmp_path: Path) -> None:
    url = f"db+sqlite:///{tmp_path / 'results.db'}"
    worker = Celery("worker", broker="memory://", backend=url)
    worker.conf.update(result_extended=True, result_serializer="json")
    request = Context(
        id="tr-1-1", task="t.sum", args=[1, 2], kwargs={}, hostname="w1@host", retries=2
    )
    worker.backend.store_result("tr-1-1", 3, "SUCCESS", request=request)

    operator = make_app(OperatorConfig(brokerUrl="memory://", resultBackend=url))
    readings = await CeleryResultBackend(operator).read(["tr-1-1", "tr-1-2"])

    done = readings["tr-1-1"]
    assert isinstance(done, TaskRecord)
    assert (done.state, done.result, done.worker, done.retries) == ("SUCCESS", 3, "w1@host", 2)
    assert readings["tr-1-2"] == TaskRecord(state="PENDING")
