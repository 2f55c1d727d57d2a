"""A SQLAlchemy result backend read as the operator reads it, against a real
PostgreSQL (its own, started here as the dev stack starts it) and a SQLite file: what a
worker with `result_extended` stores, many runs in one query, a huge result read in
part, hostile rows each their own run's problem, and a database that cannot be read
failing the read within its timeout.  Celery's table settings apply: every test uses a
table name of its own."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery
from celery.app.task import Context

from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.clients.backend import HEAD_BYTES, BackendUnavailable, open_backend
from celery_taskrun.clients.celery_client import make_app
from celery_taskrun.clients.database import DatabaseResultBackend
from celery_taskrun.core import records
from celery_taskrun.core.records import TaskRecord, Unreadable
from taskrun_dev import servers
from taskrun_dev.processes import StackError, free_port

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        servers.postgres_program("postgres")
    except StackError:
        pytest.skip("no postgres (apt-get install postgresql)")
    with servers.throwaway_postgres(tmp_path_factory.mktemp("pg") / "data") as (url, _):
        yield url


@pytest.fixture(params=["postgresql", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"db+sqlite:///{tmp_path / 'results.db'}"
    return str(request.getfixturevalue("postgres"))


def conf(url: str) -> dict[str, Any]:
    """Celery's table settings, a table of this test's own (and on PostgreSQL a schema:
    index names are the schema's), which the operator's reads must honour."""
    name = f"meta_{uuid.uuid4().hex[:8]}"
    if url.startswith("db+sqlite"):
        return {"database_table_names": {"task": name}}
    engine = sa.create_engine(url.removeprefix("db+"))
    with engine.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {name}"))
    engine.dispose()
    return {"database_table_names": {"task": name}, "database_table_schemas": {"task": name}}


class Database:
    """The worker's side (Celery's backend storing results) and the operator's reader."""

    def __init__(self, url: str, settings: dict[str, Any], *, timeout: float = 5.0) -> None:
        self.worker = Celery("worker", broker="memory://", backend=url)
        self.worker.conf.update(result_extended=True, result_serializer="json", **settings)
        table = self.worker.backend.task_cls.__table__
        self.table = f"{table.schema}.{table.name}" if table.schema else table.name
        operator = make_app(OperatorConfig(brokerUrl="memory://", resultBackend=url))
        operator.conf.update(**settings)
        reader = open_backend(url, operator, max_record_bytes=LIMIT, timeout=timeout)
        assert isinstance(reader, DatabaseResultBackend)  # what a db+ URL gets
        self.reader = reader
        self.statements: list[str] = []
        sa.event.listen(self.reader.engine, "before_cursor_execute", self._heard)
        self.admin = sa.create_engine(self.worker.backend.url)

    def _heard(self, _c: Any, _cursor: Any, statement: str, *_: Any) -> None:
        # The reads' own queries (not the first read's look at the table's columns)
        if statement.startswith("SELECT") and self.table.rpartition(".")[2] in statement:
            self.statements.append(statement)

    def store(self, task_id: str, result: Any, state: str = "SUCCESS", **request: Any) -> None:
        context = Context(id=task_id, task="t.sum", args=[], kwargs={}, **request)
        self.worker.backend.store_result(task_id, result, state, request=context)

    def insert(self, task_id: str, **columns: Any) -> None:
        """A row as another writer might leave it: any value in any column."""
        table = self.worker.backend.task_cls.__table__
        with self.admin.begin() as connection:
            connection.execute(sa.insert(table).values(task_id=task_id, **columns))

    def execute(self, statement: str) -> None:
        with self.admin.begin() as connection:
            connection.execute(sa.text(statement))

    async def read(self, task_ids: list[str]) -> dict[str, records.Reading]:
        self.statements.clear()
        return await self.reader.read(task_ids)

    async def close(self) -> None:
        await self.reader.close()
        self.admin.dispose()


@pytest.fixture
async def db(url: str) -> Any:
    made = Database(url, conf(url))
    yield made
    await made.close()


async def test_a_database_record_gives_its_worker_and_retries(db: Database) -> None:
    db.store("tr-1-1", 3, hostname="w1@host", retries=2)
    db.store("tr-1-3", {"exc_type": "ValueError", "exc_message": ["no"]}, "FAILURE")
    readings = await db.read(["tr-1-1", "tr-1-2", "tr-1-3"])
    done = readings["tr-1-1"]
    assert isinstance(done, TaskRecord)
    assert (done.state, done.result, done.worker, done.retries) == ("SUCCESS", 3, "w1@host", 2)
    assert done.date_done is not None
    assert readings["tr-1-2"] == TaskRecord(state="PENDING")
    failed = readings["tr-1-3"]
    assert isinstance(failed, TaskRecord)
    assert (failed.state, failed.exception_type, failed.exception_message) == (
        "FAILURE",
        "ValueError",
        "no",
    )


async def test_every_run_due_is_read_in_one_query_a_chunk(db: Database) -> None:
    ids = [f"tr-many-{i}" for i in range(1200)]
    for task_id in ids[::10]:
        db.store(task_id, {"n": task_id}, "STARTED" if task_id.endswith("0") else "SUCCESS")
    readings = await db.read(ids)
    assert len(db.statements) == 3  # 1,200 runs: chunks of 500, 500 and 200
    assert all(readings[tid] == records.NO_RECORD for tid in ids if tid not in ids[::10])
    stored = [readings[tid] for tid in ids[::10]]
    assert all(
        isinstance(r, TaskRecord) and r.result == {"n": tid}
        for r, tid in zip(stored, ids[::10], strict=True)
    )
    await db.read(ids[:500])
    assert len(db.statements) == 1


async def test_a_huge_result_is_read_in_part(db: Database) -> None:
    db.store("tr-huge-1", "h" * (5 * 1024 * 1024), hostname="w1@host")
    db.store("tr-huge-2", {"exc_type": "MemoryError", "exc_message": ["m" * LIMIT * 2]}, "FAILURE")
    db.store("tr-small", 1)
    readings = await db.read(["tr-huge-1", "tr-huge-2", "tr-small"])
    huge = readings["tr-huge-1"]
    assert isinstance(huge, TaskRecord)
    assert huge.partial_size == 5 * 1024 * 1024 + 2  # the JSON string's quotes
    assert huge.result.startswith('"hhh') and len(huge.result) <= HEAD_BYTES
    assert huge.worker == "w1@host"
    failure = readings["tr-huge-2"]
    assert isinstance(failure, TaskRecord) and failure.exception_type == "MemoryError"
    small = readings["tr-small"]
    assert isinstance(small, TaskRecord) and (small.result, small.partial_size) == (1, None)
    assert len(db.statements) == 1


async def test_results_past_a_querys_budget_come_in_the_next(url: str) -> None:
    db = Database(url, conf(url))
    db.reader.budget = 3 * LIMIT  # a test's budget: three results near the bound a query
    try:
        ids = [f"tr-budget-{i}" for i in range(10)]
        for task_id in ids:
            db.store(task_id, task_id + "x" * (LIMIT - 1000))
        readings = await db.read(ids)
        assert all(
            isinstance(r, TaskRecord) and r.partial_size is None and r.result.startswith(tid)
            for tid, r in readings.items()
        )
        assert len(db.statements) == 4  # whole, three at a time
    finally:
        await db.close()


async def test_a_hostile_row_is_its_own_runs_problem(db: Database, url: str) -> None:
    db.store("tr-good", 7)
    db.insert("tr-bad-bytes", status="SUCCESS", result=b"\xff\xfe\x00garbage")
    db.insert("tr-bad-status", status="SUCC ESS", result=b"1")
    db.insert("tr-pickle", status="SUCCESS", result=b"\x80\x04\x95\x05\x00")
    hostile = ["tr-bad-bytes", "tr-bad-status", "tr-pickle"]
    if url.startswith("db+sqlite"):
        # SQLite keeps whatever a writer puts in any column: text that is not UTF-8,
        # a number as text, a time that is none.
        db.execute(
            f"INSERT INTO {db.table} (task_id, status, result, retries, date_done, worker, "
            "traceback) VALUES ('tr-wrong-types', 'SUCCESS', '\"fine\"', 'three', 'soon', "
            "CAST(X'FFFE' AS TEXT), CAST(X'C3' AS TEXT))"
        )
        db.execute(
            f"INSERT INTO {db.table} (task_id, status) VALUES ('tr-bad-text', CAST(X'FF' AS TEXT))"
        )
        # Text where Celery writes bytes, over the bound in bytes (not in characters).
        db.execute(
            f"INSERT INTO {db.table} (task_id, status, result) VALUES ('tr-text-result', "
            f"'SUCCESS', '\"' || replace(printf('%.*c', {LIMIT // 2 + 10}, 'x'), 'x', 'é') || '\"')"
        )
        hostile.append("tr-bad-text")
    readings = await db.read(["tr-good", *hostile, "tr-wrong-types", "tr-text-result"])
    assert isinstance(readings["tr-good"], TaskRecord) and readings["tr-good"].result == 7
    for task_id in hostile:
        assert isinstance(readings[task_id], Unreadable), task_id
    assert "pickle" in readings["tr-pickle"].seen  # type: ignore[union-attr]
    if url.startswith("db+sqlite"):
        wrong = readings["tr-wrong-types"]
        assert isinstance(wrong, TaskRecord)
        assert (wrong.result, wrong.retries, wrong.worker) == ("fine", None, "\ufffd\ufffd")
        assert wrong.traceback == "\ufffd"
        text = readings["tr-text-result"]
        assert isinstance(text, TaskRecord) and text.partial_size == 2 * (LIMIT // 2 + 10) + 2
        assert text.result.startswith('"éé')


async def test_the_first_read_makes_celerys_table(url: str) -> None:
    """The operator starts with its database down (nothing is touched at its start),
    and the first read that reaches the database makes the table no worker made yet."""
    settings = conf(url)
    operator = make_app(OperatorConfig(brokerUrl="memory://", resultBackend=url))
    operator.conf.update(**settings)
    reader = open_backend(url, operator, max_record_bytes=LIMIT, timeout=5.0)
    assert isinstance(reader, DatabaseResultBackend)
    table = reader.table
    try:
        assert not sa.inspect(reader.engine).has_table(table.name, schema=table.schema)
        assert (await reader.read(["tr-1"])) == {"tr-1": records.NO_RECORD}
        assert sa.inspect(reader.engine).has_table(table.name, schema=table.schema)
    finally:
        await reader.close()


async def test_a_table_gone_after_fails_the_read(db: Database) -> None:
    db.store("tr-1", 1)
    assert isinstance((await db.read(["tr-1"]))["tr-1"], TaskRecord)
    db.execute(f"DROP TABLE {db.table}")
    with pytest.raises(BackendUnavailable, match="database"):
        await db.read(["tr-1"])


async def test_a_refused_connection_fails_the_read_within_its_timeout() -> None:
    url = f"db+postgresql://taskrun@127.0.0.1:{free_port()}/taskrun"
    operator = make_app(OperatorConfig(brokerUrl="memory://", resultBackend=url))
    reader = open_backend(url, operator, max_record_bytes=LIMIT, timeout=1.0)
    began = time.monotonic()
    with pytest.raises(BackendUnavailable, match="OperationalError"):
        await reader.read(["tr-1"])
    assert time.monotonic() - began < 2.0  # the read's own bound: twice its timeout
    await reader.close()


async def test_a_locked_table_fails_the_read_within_its_timeout(postgres: str) -> None:
    """PostgreSQL cancels the query itself (statement_timeout): the thread does not
    linger past the read."""
    db = Database(postgres, conf(postgres), timeout=1.0)
    db.store("tr-1", 1)
    locker = db.admin.connect()
    try:
        transaction = locker.begin()
        locker.execute(sa.text(f"LOCK TABLE {db.table} IN ACCESS EXCLUSIVE MODE"))
        began = time.monotonic()
        with pytest.raises(BackendUnavailable, match="statement timeout"):
            await db.read(["tr-1"])
        assert time.monotonic() - began < 2.0
        transaction.rollback()
        assert isinstance((await db.read(["tr-1"]))["tr-1"], TaskRecord)
    finally:
        locker.close()
        await db.close()
