"""What a task produced, on its way into status (pure): its result, progress and
error, each bounded (`bounded`), and a whole status made smaller when a write of it
was refused for its size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery_taskrun.api import bounded
from celery_taskrun.api.model import ErrorInfo, Progress, TaskRunStatus
from celery_taskrun.core.records import TaskRecord


@dataclass(frozen=True)
class Bounds:
    max_result_bytes: int = 256 * 1024
    max_traceback_bytes: int = 16 * 1024


def truncate_result(result: Any, bound: int) -> tuple[Any, bool | None, int | None]:
    """(result or preview, resultTruncated, resultBytes): a big result never fails a run."""
    value, size = bounded.json_value(result, bound)
    return (value, None, None) if size is None else (value, True, size)


def percent_of(info: dict[str, Any]) -> float | None:
    """The task's own percentage, or current/total; within 0-100 for the progress bar."""
    percent = None
    for key in ("percent", "progress"):
        percent = bounded.number(info.get(key))
        if percent is not None:
            break
    current, total = bounded.number(info.get("current")), bounded.number(info.get("total"))
    if percent is None and current is not None and total:
        percent = 100.0 * current / total
    return None if percent is None else round(min(max(percent, 0.0), 100.0), 1)


def progress_of(record: TaskRecord) -> Progress | None:
    """A custom state's meta (e.g. PROGRESS via update_state) as status.progress."""
    if not isinstance(record.result, dict):
        return None
    info: dict[str, Any] | None = record.result
    if bounded.json_value(info, bounded.PROGRESS_INFO_BYTES)[1] is not None:
        info = None  # too large or too deep to copy: the numbers still tell the progress
    return Progress(
        percent=percent_of(record.result),
        current=bounded.number(record.result.get("current")),
        total=bounded.number(record.result.get("total")),
        state=bounded.text(record.state, bounded.STATE_BYTES),
        info=info,
    )


def error_of(record: TaskRecord, bound: int) -> ErrorInfo:
    traceback = record.traceback
    return ErrorInfo(
        type=record.exception_type or bounded.text(record.state, bounded.STATE_BYTES),
        message=record.exception_message,
        # The end of a traceback says where it failed.
        traceback=bounded.tail(traceback, bound) if traceback else None,
    )


def shrunk(status: TaskRunStatus, level: int) -> TaskRunStatus:
    """`status` made smaller after a write was refused for its size: level 1 keeps short
    previews of the large fields, level 2 only what says where the run stands."""
    keep = 1024 if level == 1 else 0
    update: dict[str, Any] = {"attempts": status.attempts[:1] if status.attempts else None}
    if status.result is not None:
        size = status.resultBytes or len(bounded.encoded(status.result) or "")
        update |= {
            "result": bounded.preview(str(status.result), keep) if keep else None,
            "resultTruncated": True,
            "resultBytes": size,
        }
    if status.progress is not None:
        update["progress"] = status.progress.model_copy(update={"info": None})
    if status.error is not None:
        update["error"] = ErrorInfo(
            type=bounded.text(status.error.type, bounded.NAME_BYTES),
            message=bounded.text(status.error.message, keep or 256),
            traceback=bounded.tail(status.error.traceback, 2 * keep)
            if keep and status.error.traceback
            else None,
        )
    if not keep:
        update["message"] = bounded.text(status.message or "", 256)
        update["conditions"] = [
            c.model_copy(update={"message": bounded.text(c.message, 256)})
            for c in status.conditions or []
        ]
    return status.model_copy(update=update)
