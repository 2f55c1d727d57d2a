"""What the CLI prints (pure): the result, the error, a table and a description."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from celery_taskrun.api.model import Phase, Reason
from celery_taskrun.core.outcomes import phase_of, status_of

# A cell of the table; the rest is in `describe`.
CELL = 60


def _clip(text: str, limit: int = CELL) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def name_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", "?"))


def result_json(status: Mapping[str, Any]) -> str:
    """The result as one line of JSON, as a pipeline reads it from stdout."""
    return json.dumps(status.get("result"), ensure_ascii=False)


def truncation_note(name: str, status: Mapping[str, Any]) -> str | None:
    if not status.get("resultTruncated"):
        return None
    size = status.get("resultBytes")
    return f"taskrun/{name}: the result ({size} bytes) was too large for the status: a preview"


def outcome_line(name: str, status: Mapping[str, Any]) -> str:
    """`taskrun/NAME Failed (TaskError): ValueError: boom` for stderr."""
    phase = status.get("phase") or "Pending"
    reason = status.get("reason")
    head = f"taskrun/{name} {phase}" + (f" ({reason})" if reason and reason != phase else "")
    error = status.get("error")
    if isinstance(error, Mapping) and error.get("type"):
        detail = f"{error.get('type')}: {error.get('message') or ''}".rstrip(": ")
    else:
        detail = str(status.get("message") or "")
    return f"{head}: {detail}" if detail else head


def error_text(name: str, status: Mapping[str, Any], *, traceback: bool) -> str:
    """The outcome line, and the traceback when asked for and present."""
    lines = [outcome_line(name, status)]
    error = status.get("error")
    if traceback and isinstance(error, Mapping) and error.get("traceback"):
        lines.append(str(error["traceback"]).rstrip())
    return "\n".join(lines)


def progress_text(status: Mapping[str, Any]) -> str:
    progress = status.get("progress")
    if not isinstance(progress, Mapping):
        return ""
    percent = progress.get("percent")
    if isinstance(percent, int | float):
        return f"{percent:g}%"
    current, total = progress.get("current"), progress.get("total")
    return f"{current}/{total}" if current is not None and total is not None else ""


def ran_out_text(name: str, status: Mapping[str, Any], waited: float | None) -> str:
    phase = status.get("phase") or "Pending"
    progress = progress_text(status)
    within = f" after {waited:g}s" if waited is not None else ""
    detail = f" ({progress})" if progress else ""
    return f"taskrun/{name} is still {phase}{detail}{within}; the run goes on"


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def age(since: Any, now: datetime) -> str:
    """kubectl's short age: 42s, 5m3s, 2h5m, 3d4h."""
    start = _parse_time(since)
    if start is None:
        return "-"
    seconds = max(0, int((now - start).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds}s" if seconds and minutes < 10 else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes}m" if minutes and hours < 10 else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours and days < 10 else f"{days}d"


def detail(status: Mapping[str, Any]) -> str:
    """The table's last cell: a run's error, or why it waits (a concurrency limit)."""
    error = status.get("error")
    if isinstance(error, Mapping) and error.get("type"):
        return _clip(f"{error.get('type')}: {error.get('message') or ''}")
    if status.get("reason") == Reason.THROTTLED:
        return _clip(str(status.get("message") or ""))
    return ""


def table(objs: Sequence[Mapping[str, Any]], now: datetime) -> str:
    """`kubectl get tr`'s columns, and the error of a run that has one or why it waits."""
    rows = [("NAME", "TASK", "PHASE", "REASON", "PROGRESS", "AGE", "DURATION", "DETAIL")]
    for obj in objs:
        status = status_of(obj)
        rows.append(
            (
                name_of(obj),
                _clip(str((obj.get("spec") or {}).get("task", ""))),
                str(status.get("phase") or ""),
                str(status.get("reason") or ""),
                progress_text(status),
                age((obj.get("metadata") or {}).get("creationTimestamp"), now),
                str(status.get("duration") or ""),
                detail(status),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def describe(obj: Mapping[str, Any], now: datetime) -> str:
    """Everything a person asks about one run, the traceback included."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = status_of(obj)
    created = meta.get("creationTimestamp")
    lines = [
        f"Name:         {meta.get('name', '?')}",
        f"Namespace:    {meta.get('namespace', '?')}",
        f"Task:         {spec.get('task', '')}",
        f"Args:         {_json(spec.get('args', []))}",
        f"Kwargs:       {_json(spec.get('kwargs', {}))}",
    ]
    options = {k: v for k, v in spec.items() if k not in ("task", "args", "kwargs")}
    if options:
        lines.append(f"Options:      {_json(options)}")
    lines += [
        f"Created:      {created or '-'} ({age(created, now)} ago)",
        f"Phase:        {status.get('phase') or 'Pending'}",
        f"Reason:       {status.get('reason') or ''}",
        f"Message:      {status.get('message') or ''}",
        *(
            [f"Waiting:      for room, {status.get('message') or ''}; nothing sent yet"]
            if status.get("reason") == Reason.THROTTLED
            else []
        ),
        f"State:        {status.get('state') or ''}",
        f"Task ID:      {status.get('taskId') or ''}",
        f"Attempt:      {status.get('attempt') or ''}",
        f"Worker:       {status.get('worker') or ''}",
    ]
    for key, label in (
        ("submittedAt", "Submitted"),
        ("startedAt", "Started"),
        ("completedAt", "Completed"),
        ("duration", "Duration"),
    ):
        if status.get(key):
            lines.append(f"{label + ':':<14}{status[key]}")
    if progress_text(status):
        lines.append(f"Progress:     {progress_text(status)}")
    limits = status.get("limits")
    if isinstance(limits, Mapping) and limits:
        lines.append("Limits:")
        for key, limit in limits.items():
            if isinstance(limit, Mapping):
                lines.append(f"  {key}: {limit.get('seconds')}s (from {limit.get('source')})")
    if phase_of(status) is Phase.SUCCEEDED:
        lines.append(f"Result:       {_json(status.get('result'))}")
        note = truncation_note(str(meta.get("name", "?")), status)
        if note:
            lines.append(f"              ({note})")
    error = status.get("error")
    if isinstance(error, Mapping) and error:
        lines.append(f"Error:        {error.get('type', '')}: {error.get('message', '')}")
        if error.get("traceback"):
            lines.append("Traceback:")
            lines += ["  " + line for line in str(error["traceback"]).rstrip().splitlines()]
    conditions = status.get("conditions")
    if isinstance(conditions, list) and conditions:
        lines.append("Conditions:")
        for c in conditions:
            if isinstance(c, Mapping):
                lines.append(
                    f"  {c.get('type', ''):<12} {c.get('status', ''):<8} {c.get('reason', '')}"
                    f"  {c.get('lastTransitionTime', '')}"
                )
    attempts = status.get("attempts")
    if isinstance(attempts, list) and attempts:
        lines.append("Earlier attempts:")
        for a in attempts:
            if isinstance(a, Mapping):
                lines.append(
                    f"  #{a.get('attempt')} {a.get('taskId', '')} {a.get('phase', '')}"
                    f" ({a.get('reason', '')}) {a.get('message', '') or ''}".rstrip()
                )
    return "\n".join(lines)
