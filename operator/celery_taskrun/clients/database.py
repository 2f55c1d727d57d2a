"""Reading a SQLAlchemy database result backend (`db+postgresql://`, `db+sqlite://`):
one query for every run due (in chunks), each result whole within the bound and only
its start otherwise (see `backend`, which opens it for a `db+` URL only: SQLAlchemy is
imported by nothing else the operator runs)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from celery_taskrun.clients.backend import (
    HEAD_BYTES,
    READ_CHUNK,
    TRACEBACK_CHARS,
    BackendUnavailable,
    OnRecord,
    OnResync,
)
from celery_taskrun.core import records
from celery_taskrun.core.records import Reading, Row, Stored


class DatabaseResultBackend:
    """A SQLAlchemy database backend (`db+postgresql://`, `db+sqlite:///`), read in a
    worker thread: one query for up to READ_CHUNK runs, on Celery's own table (its
    `database_table_names` and `database_table_schemas` applied), each query bounded by
    the database's own timeouts as well as the caller's.

    Each row comes with its result's length: a result within the bound comes whole
    while the query's byte budget lasts (a running sum in the query, so a chunk of large
    results never arrives at once: the rest come in the next query), a larger one as
    its first HEAD_BYTES only, and a traceback as its last TRACEBACK_CHARS.  SQLAlchemy
    converts no column (a SQLite row may hold anything in any column):
    `records.parse_row` decides what each row means.

    Not Celery's `ResultSession`: outside a forked worker it makes a new engine, so a
    new connection, for every session; the operator keeps one pool.  Celery's tables
    (and the extended columns an older table lacks) are made by Celery's own code at the
    first read that reaches the database; one that goes away after is a backend the
    operator cannot read.
    """

    def __init__(
        self, app: Any, *, max_record_bytes: int, budget_bytes: int, timeout: float
    ) -> None:
        backend = app.backend
        self.limit = max_record_bytes
        self.head = min(HEAD_BYTES, max_record_bytes)
        # The first row of a query always fits: each query reads at least one.
        self.budget = max(budget_bytes, max_record_bytes + TRACEBACK_CHARS)
        self.timeout = timeout
        self.table: sa.Table = backend.task_cls.__table__
        self.models = backend.session_manager
        url = sa.make_url(backend.url)
        options: dict[str, Any] = {"pool_timeout": timeout, **backend.engine_options}
        options["connect_args"] = {
            **connect_args(url, timeout),
            **options.get("connect_args", {}),
        }
        self.engine = sa.create_engine(url, **options)
        self.sqlite = url.get_backend_name() == "sqlite"
        if self.sqlite:
            # SQLite fails a whole query on one TEXT value that is not UTF-8: its text
            # comes as bytes, decoded (with replacements) row by row.
            sa.event.listen(self.engine, "connect", _text_as_bytes)
        callback = backend.session_manager.engine_callback
        if callback is not None:
            callback(self.engine)

    def _query(self, task_ids: Sequence[str]) -> sa.Select[*tuple[Any, ...]]:
        c = self.table.c
        # SQLite keeps text where a writer put text: as a BLOB, its length is in bytes.
        stored = sa.cast(c.result, sa.LargeBinary) if self.sqlite else c.result
        size, tb_size = sa.func.length(stored), sa.func.length(c.traceback)
        within = sa.func.coalesce(size, 0) <= self.limit
        long_tb = tb_size > TRACEBACK_CHARS
        weight = sa.case((within, sa.func.coalesce(size, 0)), else_=self.head) + sa.case(
            (long_tb, TRACEBACK_CHARS), else_=sa.func.coalesce(tb_size, 0)
        )
        fits = sa.func.sum(weight).over(order_by=c.task_id) <= self.budget
        result = sa.case((within, stored), else_=sa.func.substr(stored, 1, self.head))
        traceback = sa.case(
            (long_tb, sa.func.substr(c.traceback, tb_size - TRACEBACK_CHARS + 1)),
            else_=c.traceback,
        )
        columns: dict[str, sa.ColumnElement[Any]] = {
            "task_id": c.task_id,
            "status": sa.func.substr(c.status, 1, 65),
            "size": size,
            "fits": fits,
            "result": sa.case((fits, result)),
            "traceback": sa.case((fits, traceback)),
            "date_done": c.date_done,
        }
        # `result_extended` workers' columns (the operator's app sets it, so Celery adds
        # them at the operator's start to a table made without them).
        if "worker" in c:
            columns["worker"] = sa.func.substr(c.worker, 1, 256)
        if "retries" in c:
            columns["retries"] = c.retries
        # No conversion by SQLAlchemy: the driver's values, whatever a row holds.
        raw = [sa.type_coerce(value, sa.types.NullType()).label(k) for k, value in columns.items()]
        return sa.select(*raw).where(c.task_id.in_(list(task_ids)))

    def _read_chunk(self, connection: sa.Connection, task_ids: Sequence[str]) -> dict[str, Reading]:
        out: dict[str, Reading] = {}
        pending = list(task_ids)
        while pending:
            rows = connection.execute(self._query(pending)).all()
            later = []
            for values in rows:
                row = values._mapping
                task_id = _text(row["task_id"])
                if not isinstance(task_id, str):
                    continue
                if row["fits"]:
                    out[task_id] = records.parse_row(_row(row), self.limit)
                else:
                    later.append(task_id)  # past this query's budget: in the next one
            # Each query reads its first row whole (the budget holds any one): an id
            # read already (a table without Celery's unique task_id) is not read again.
            pending = [tid for tid in later if tid not in out]
        return {tid: out.get(tid, records.NO_RECORD) for tid in task_ids}

    def _read_all(self, task_ids: Sequence[str]) -> dict[str, Reading]:
        out: dict[str, Reading] = {}
        with self.engine.connect() as connection:  # one connection (and ping) a read
            # Reached: Celery makes its tables if missing (once; a no-op after).
            self.models.prepare_models(self.engine)
            for start in range(0, len(task_ids), READ_CHUNK):
                out.update(self._read_chunk(connection, task_ids[start : start + READ_CHUNK]))
        return out

    async def read(self, task_ids: Sequence[str]) -> dict[str, Reading]:
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self._read_all, list(task_ids)), self.timeout * 2
            )
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise BackendUnavailable(f"database: {type(exc).__name__}: {exc}"[:500]) from exc

    async def watch(self, on_record: OnRecord, on_resync: OnResync) -> None:
        return  # no change notifications: polling alone

    async def close(self) -> None:
        await asyncio.to_thread(self.engine.dispose)


def connect_args(url: sa.URL, timeout: float) -> dict[str, Any]:
    """The driver's own timeouts: connecting, and each statement on the server."""
    name = url.get_backend_name()
    if name == "postgresql":
        # libpq counts whole seconds, and takes less than 2 as 2.
        return {
            "connect_timeout": max(2, math.ceil(timeout)),
            "options": f"-c statement_timeout={max(1, int(timeout * 1000))}",
        }
    if name == "sqlite":
        return {"timeout": timeout}  # how long to wait for a writer's lock
    return {}


def _text_as_bytes(connection: Any, _record: Any) -> None:
    connection.text_factory = bytes


def _row(values: sa.RowMapping) -> Row:
    """A query's row -> records.Row: the result as bytes, text decoded."""
    size, result = values["size"], values["result"]
    stored = None
    if result is not None:
        raw = _bytes(result)
        stored = Stored(raw, size if isinstance(size, int) and size >= len(raw) else len(raw))
    return Row(
        status=_text(values["status"]),
        result=stored,
        traceback=_text(values["traceback"]),
        date_done=_text(values["date_done"]),
        worker=_text(values.get("worker")),
        retries=values.get("retries"),
    )


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode(errors="replace")


def _text(value: object) -> object:
    """Text as bytes (SQLite) decoded; any other value as it is, for parse_row to judge."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode(errors="replace")
    return value
