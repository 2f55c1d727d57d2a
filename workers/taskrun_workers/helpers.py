"""Helpers for users' own tasks: progress the operator can show, cleanup on soft timeout.

Progress is a custom Celery state, ``PROGRESS``, whose meta the operator copies into the
TaskRun's ``status.progress``::

    @app.task(bind=True)
    def crunch(self, items):
        for i, item in enumerate(items, 1):
            work(item)
            report_progress(self, i, len(items), item=item.name)

A soft time limit (``spec.softTimeLimit``) raises ``SoftTimeLimitExceeded`` inside the
task; ``on_soft_timeout`` runs a cleanup then and lets the exception through, so the run
still ends as FAILURE with reason ``SoftTimeLimitExceeded``, wherever the signal lands
(inside a progress report or a library that wraps it in an error of its own)::

    @app.task
    def convert(path):
        with on_soft_timeout(lambda: remove_partial_output(path)):
            ...

It also works as a decorator (``@on_soft_timeout(cleanup)`` under ``@app.task``).
Each cleanup is recorded in the ledger as a ``cleanup`` event.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ContextDecorator
from types import TracebackType
from typing import Any, Literal

from celery import current_task
from celery.exceptions import SoftTimeLimitExceeded

from taskrun_workers import ledger

PROGRESS = "PROGRESS"
_RESERVED_KEYS = frozenset({"current", "total", "percent"})


def progress_meta(current: float, total: float, **extra: Any) -> dict[str, Any]:
    """The PROGRESS meta: ``{"current", "total", "percent", **extra}``.

    ``percent`` is ``current / total`` as a percentage with one decimal, kept within
    0..100; nothing to do (``total == 0``) counts as done.
    """
    if current < 0 or total < 0:
        raise ValueError(f"progress must not be negative: current={current}, total={total}")
    clash = _RESERVED_KEYS & extra.keys()
    if clash:
        raise ValueError(f"progress extras may not be named {sorted(clash)}")
    percent = 100.0 if total == 0 else min(100.0, round(100.0 * current / total, 1))
    return {**extra, "current": current, "total": total, "percent": percent}


def report_progress(task: Any, current: float, total: float, **extra: Any) -> dict[str, Any]:
    """Store PROGRESS for the run ``task`` (a bound task) is executing; returns the meta."""
    meta = progress_meta(current, total, **extra)
    # A task called directly (as a plain function, e.g. in a user's unit test) has no
    # run, so no record to update.
    if not task.request.called_directly:
        try:
            task.update_state(state=PROGRESS, meta=meta)
        except Exception as exc:
            # The soft limit's signal can land while the meta is being encoded or
            # stored: kombu then wraps it (EncodeError(SoftTimeLimitExceeded())).  It is
            # the task's soft timeout all the same, and must reach the task as one.
            soft = soft_timeout_in(exc)
            if soft is None or soft is exc:
                raise
            raise soft from exc
    return meta


def soft_timeout_in(exc: BaseException) -> SoftTimeLimitExceeded | None:
    """The SoftTimeLimitExceeded that `exc` is, or wraps (as an argument, a cause or a
    context: libraries that catch everything re-raise it as their own error)."""
    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending and len(seen) < 32:
        found = pending.pop()
        if not isinstance(found, BaseException) or id(found) in seen:
            continue
        if isinstance(found, SoftTimeLimitExceeded):
            return found
        seen.add(id(found))
        pending += [*found.args, found.__cause__, found.__context__]
    return None


class on_soft_timeout(ContextDecorator):
    """Run ``cleanup`` when ``SoftTimeLimitExceeded`` fires inside, then re-raise it."""

    def __init__(self, cleanup: Callable[[], object]) -> None:
        self.cleanup = cleanup

    def __enter__(self) -> on_soft_timeout:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> Literal[False]:
        soft = soft_timeout_in(exc) if exc is not None else None
        if soft is None:
            return False
        self.cleanup()
        if current_task:  # the proxy is falsy outside a task
            ledger.record_for(current_task, "cleanup")
        if soft is not exc:  # wrapped by a library the signal landed in: the task
            raise soft from exc  # fails with its soft timeout, as promised
        return False
