"""Reads of a PostgreSQL result backend with many runs in flight: the operator's batched
read against the seed's per-task polling (and the operator's former per-task read).

    python benchmarks/backends.py                          # 10,000 in flight (about 2 minutes)
    python benchmarks/backends.py --runs 200 --window 1 --json   # the smoke run the tests use

A PostgreSQL of its own (`taskrun_dev.servers.throwaway_postgres`, with
pg_stat_statements) holds Celery's `result_extended` table; no Kubernetes, no worker:
this measures the read path alone.  For each scenario (no run has a record yet; a tenth
of them has one, STARTED, so still polled) and each reader, over `--window` seconds of
steady state (every run already at its longest poll interval, 5 s, first looks spread
over those 5 s):

- operator: the operator's poll schedule (`core.schedule.Schedule`, `core.timing.next_delay`:
  polls on a one-second grid) and its reader (`clients.database.DatabaseResultBackend`),
  one `read` for every run due;
- operator-per-task: the same schedule, read through Celery's `get_task_meta` for each
  run (`CeleryResultBackend`, the operator's read before this one; in slices of 50 runs
  a read, as one read of a turn's 2,000 runs outlasts the window and any timeout);
- seed-polling: the seed's `poll_result_with_backoff` for each task at its own 5 s
  interval, one `AsyncResult(id).state` per poll, from one thread (as benchmarks/scale.py).

Figures: statements/s on the results table (pg_stat_statements), sessions opened/s
(pg_stat_database), PostgreSQL's CPU (its processes' and reaped backends' CPU time from
/proc), the reader's CPU (this process's), and reads done per second beside those due
(runs / 5 s; the operator's grid makes its intervals 5-6 s): a reader below it falls
behind its schedule.  And the CPU per 1,000 reads, PostgreSQL's and the reader's.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from celery import Celery
from celery.result import AsyncResult
from kombu.utils.encoding import ensure_bytes

from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.api.model import Phase, TaskRunStatus
from celery_taskrun.clients.backend import CeleryResultBackend, ResultBackend
from celery_taskrun.clients.celery_client import make_app
from celery_taskrun.clients.database import DatabaseResultBackend
from celery_taskrun.core.backoff import Backoff
from celery_taskrun.core.schedule import Schedule
from celery_taskrun.core.timing import next_delay
from taskrun_dev.servers import throwaway_postgres

MAX_INTERVAL = Backoff().maximum  # the seed's and the operator's longest poll interval
STEADY_POLLS = 100  # polls after which every interval is the longest
RECORD_BYTES = 2 * 1024 * 1024
# The former per-task read takes one query (and one connection) per run: a turn's 2,000
# runs at 10,000 in flight took longer than any timeout.  Read here in slices, so the
# window ends on time; each run costs what it did.
PER_TASK_SLICE = 50  # the operator's default maxRecordBytes
TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def postgres_cpu_seconds(postmaster: int) -> float:
    """The postmaster's CPU, its live processes', and its reaped backends' (cutime)."""
    ticks = 0
    own = _stat(postmaster)
    if own is not None:
        ticks += sum(int(field) for field in own[11:15])  # utime stime cutime cstime
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) and int(fields[1]) == postmaster:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / TICKS


class Counters:
    """The server's own counts: statements on the results table, sessions opened."""

    def __init__(self, url: str, table: str, postmaster: int) -> None:
        # One session throughout: the counting opens none of its own.
        self.engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        self.connection = self.engine.connect()
        self.table, self.postmaster = table, postmaster

    def close(self) -> None:
        self.connection.close()
        self.engine.dispose()

    def sample(self) -> dict[str, float]:
        connection = self.connection
        statements = connection.execute(
            sa.text(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
                "WHERE query LIKE :table AND query NOT LIKE '%pg_stat%'"
            ),
            {"table": f"%{self.table}%"},
        ).scalar_one()
        sessions = connection.execute(
            sa.text("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        ).scalar_one()
        return {
            "statements": float(statements),
            "sessions": float(sessions),
            "postgres_cpu": postgres_cpu_seconds(self.postmaster),
            "reader_cpu": time.process_time(),
            "at": time.monotonic(),
        }


def figures(
    before: dict[str, float], after: dict[str, float], reads: int, runs: int
) -> dict[str, Any]:
    elapsed = after["at"] - before["at"]

    def spent(key: str) -> float:
        return after[key] - before[key]

    return {
        "statements_per_s": round(spent("statements") / elapsed, 1),
        "sessions_per_s": round(spent("sessions") / elapsed, 1),
        "postgres_cpu_percent": round(100 * spent("postgres_cpu") / elapsed, 1),
        "reader_cpu_percent": round(100 * spent("reader_cpu") / elapsed, 1),
        "reads_per_s": round(reads / elapsed, 1),
        "reads_due_per_s": round(runs / MAX_INTERVAL, 1),
        "postgres_cpu_ms_per_1000_reads": round(1e6 * spent("postgres_cpu") / max(reads, 1), 1),
        "reader_cpu_ms_per_1000_reads": round(1e6 * spent("reader_cpu") / max(reads, 1), 1),
    }


async def operator_reads(
    reader: ResultBackend, ids: Sequence[str], window: float, slice_runs: int = 0
) -> int:
    """The operator's schedule: every run due read together (at most `slice_runs` at a
    time, if given), the next look on the grid."""
    schedule: Schedule[str] = Schedule(time.monotonic)
    began = time.monotonic()
    for i, task_id in enumerate(ids):  # steady state: a fifth of the runs a grid second
        schedule.at(task_id, math.floor(MAX_INTERVAL * i / len(ids)))
    status, backoff = TaskRunStatus(phase=Phase.QUEUED), Backoff()
    reads, until = 0, began + window
    while (left := until - time.monotonic()) > 0:
        due = schedule.due()
        part, rest = (due[:slice_runs], due[slice_runs:]) if slice_runs else (due, [])
        for task_id in rest:
            schedule.at(task_id, 0.0)  # still due: in the next slice
        if part:
            await reader.read(part)
            reads += len(part)
            now, tick = datetime.now(UTC), time.monotonic()
            for task_id in part:
                delay = next_delay(status, backoff, STEADY_POLLS, now, None, tick)
                schedule.at(task_id, delay or 0.0)
        await asyncio.sleep(min(schedule.wait() or 0.0, left))
    return reads


def seed_reads(app: Celery, ids: Sequence[str], window: float) -> int:
    """The seed's polling: each task on its own 5 s interval, one `.state` per poll."""
    start = time.monotonic()
    due = [(start + MAX_INTERVAL * i / len(ids), task_id) for i, task_id in enumerate(ids)]
    heapq.heapify(due)
    reads, until = 0, start + window
    while (now := time.monotonic()) < until:
        at, task_id = due[0]
        if at > now:
            time.sleep(min(at - now, until - now))
            continue
        heapq.heapreplace(due, (at + MAX_INTERVAL, task_id))
        AsyncResult(task_id, app=app).state  # noqa: B018 (the seed's read)
        reads += 1
    return reads


def measure(counters: Counters, runs: int, work: Callable[[], int]) -> dict[str, Any]:
    before = counters.sample()
    reads = work()
    return figures(before, counters.sample(), reads, runs)


def store_records(worker: Celery, ids: Sequence[str]) -> None:
    """What workers with `result_extended` store for a started task, in one insert."""
    backend = worker.backend
    table = backend.task_cls.__table__
    now = datetime.now(UTC)
    rows = [
        {
            "task_id": task_id,
            "status": "STARTED",
            "result": ensure_bytes(backend.encode({"pid": 4242, "hostname": "worker1@bench"})),
            "date_done": now,
            "worker": "worker1@bench",
            "retries": 0,
            "name": "taskrun_workers.tasks.calculate_sum",
        }
        for task_id in ids
    ]
    with sa.create_engine(backend.url).begin() as connection:
        connection.execute(sa.insert(table), rows)


def scenario(url: str, counters: Counters, ids: Sequence[str], window: float) -> dict[str, Any]:
    config = OperatorConfig(brokerUrl="memory://", resultBackend=url)
    app = make_app(config)
    batched = DatabaseResultBackend(
        app, max_record_bytes=RECORD_BYTES, budget_bytes=16 * RECORD_BYTES, timeout=5.0
    )
    per_task = CeleryResultBackend(app, timeout=60.0)
    seed = Celery("seed", broker="memory://", backend=url)  # the seed's app: Celery's defaults
    out = {
        "operator": measure(
            counters, len(ids), lambda: asyncio.run(operator_reads(batched, ids, window))
        ),
        "operator-per-task": measure(
            counters,
            len(ids),
            lambda: asyncio.run(operator_reads(per_task, ids, window, PER_TASK_SLICE)),
        ),
        "seed-polling": measure(counters, len(ids), lambda: seed_reads(seed, ids, window)),
    }
    asyncio.run(batched.close())
    return out


def run(runs: int, window: float, with_records: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="taskrun-bench-") as tmp:
        settings = ["shared_preload_libraries=pg_stat_statements"]
        with throwaway_postgres(Path(tmp) / "pg", settings) as (url, server):
            worker = Celery("worker", broker="memory://", backend=url)
            worker.conf.update(result_extended=True, result_serializer="json")
            table = worker.backend.task_cls.__table__
            admin = sa.create_engine(worker.backend.url)
            with admin.begin() as connection:
                connection.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
            admin.dispose()
            counters = Counters(worker.backend.url, table.name, server.pid)
            ids = [f"tr-bench-{i:05d}-1" for i in range(runs)]
            results = {"none": scenario(url, counters, ids, window)}
            recorded = ids[:: max(1, round(1 / with_records))] if with_records > 0 else []
            store_records(worker, recorded)
            results[f"{len(recorded) * 100 // runs}%"] = scenario(url, counters, ids, window)
            counters.close()
        return {
            "runs": runs,
            "window_s": window,
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "cores": os.cpu_count(),
            "scenarios": results,
        }


def table(results: dict[str, Any]) -> str:
    columns = [
        ("statements_per_s", "stmts/s"),
        ("sessions_per_s", "sessions/s"),
        ("postgres_cpu_percent", "PG CPU %"),
        ("reader_cpu_percent", "reader CPU %"),
        ("reads_per_s", "reads/s"),
        ("reads_due_per_s", "due/s"),
        ("postgres_cpu_ms_per_1000_reads", "PG ms/1k"),
        ("reader_cpu_ms_per_1000_reads", "reader ms/1k"),
    ]
    head = f"{'records':<8} {'reader':<18} " + " ".join(f"{name:>12}" for _, name in columns)
    lines = [
        f"{results['runs']:,} runs in flight, {results['window_s']:.0f} s windows, "
        f"load average {results['load_average']} on {results['cores']} cores",
        head,
        "-" * len(head),
    ]
    for records, readers in results["scenarios"].items():
        for reader, row in readers.items():
            cells = " ".join(f"{row[key]:>12,.1f}" for key, _ in columns)
            lines.append(f"{records:<8} {reader:<18} {cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--window", type=float, default=15.0, help="seconds each reader runs")
    parser.add_argument(
        "--with-records", type=float, default=0.1, help="share of runs with a record"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = run(args.runs, args.window, args.with_records)
    print(json.dumps(results) if args.json else table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
