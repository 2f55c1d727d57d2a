"""What the result backend says about one task id, parsed (pure).

Celery stores `{"status", "result", "traceback", "date_done", ...}` under
`celery-task-meta-<id>`; with `result_extended` also `worker` and `retries`.  No
record means PENDING: unknown, queued, expired or forgotten alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PENDING = "PENDING"
STARTED = "STARTED"
RETRY = "RETRY"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})


@dataclass(frozen=True)
class TaskRecord:
    state: str
    result: Any = None
    traceback: str | None = None
    date_done: object = None  # an ISO string (Redis) or a datetime (database backends)
    worker: str | None = None
    retries: int | None = None

    @property
    def ready(self) -> bool:
        return self.state in READY_STATES

    @property
    def exception_type(self) -> str | None:
        """The exception's class name in a FAILURE, RETRY or REVOKED record."""
        if isinstance(self.result, dict):
            exc_type = self.result.get("exc_type")
            return str(exc_type) if exc_type else None
        return None

    @property
    def exception_message(self) -> str:
        if not isinstance(self.result, dict):
            return "" if self.result is None else str(self.result)
        message = self.result.get("exc_message", "")
        if isinstance(message, list | tuple):
            return ", ".join(str(part) for part in message)
        return str(message)

    @property
    def meta_worker(self) -> str | None:
        """STARTED stores `{"pid", "hostname"}` as its result; extended results `worker`."""
        if self.worker:
            return self.worker
        if isinstance(self.result, dict) and isinstance(self.result.get("hostname"), str):
            return str(self.result["hostname"])
        return None


NO_RECORD = TaskRecord(state=PENDING)


def parse(raw: bytes | str | None) -> TaskRecord:
    """A stored record (Celery's JSON serializer) -> TaskRecord; None -> PENDING."""
    if raw is None:
        return NO_RECORD
    data = json.loads(raw)
    if not isinstance(data, dict) or "status" not in data:
        raise ValueError("not a Celery result record")
    return from_meta(data)


def from_meta(data: dict[str, Any]) -> TaskRecord:
    """Celery's meta dict -> TaskRecord; backends that decode exceptions are re-encoded."""
    retries = data.get("retries")
    result = data.get("result")
    if isinstance(result, BaseException):
        result = {"exc_type": type(result).__name__, "exc_message": [str(a) for a in result.args]}
    return TaskRecord(
        state=str(data["status"]),
        result=result,
        traceback=data.get("traceback"),
        date_done=data.get("date_done"),
        worker=data.get("worker"),
        retries=retries if isinstance(retries, int) else None,
    )
