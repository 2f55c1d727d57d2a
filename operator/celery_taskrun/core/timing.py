"""The run's clock (pure): times as status writes them, the deadline and expiry they
set, and when to look at a run again."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from celery_taskrun.api.model import Phase, Reason, TaskRunStatus
from celery_taskrun.core.backoff import Backoff


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 / ISO string (or a datetime, as database backends return) -> aware UTC."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value and len(value) <= 64:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None  # someone else's record: a time we cannot read is no time
    else:
        return None
    try:
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except OverflowError:  # year 1 or 9999 shifted past the calendar's edge
        return None


def human_duration(seconds: float) -> str:
    """Like kubectl's ages: 850ms, 42s, 3m7s, 2h5m."""
    if seconds < 1:
        return f"{max(seconds, 0) * 1000:.0f}ms"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{seconds:.1f}s" if seconds < 10 else f"{secs}s"


def first_submitted(status: TaskRunStatus) -> datetime | None:
    """When the run's first submission was sent: it anchors the deadline and duration."""
    return parse_time(status.attempts[0].submittedAt if status.attempts else status.submittedAt)


def deadline(status: TaskRunStatus, created: datetime | None = None) -> datetime | None:
    """The run's deadline: spec.timeout counted from the first attempt's submission;
    for a run not sent yet after a failed send, from its creation (to the second, as
    creationTimestamp has it: hence one second more)."""
    limit = status.limits.timeout if status.limits else None
    start = first_submitted(status)
    if start is None and status.phase is Phase.PENDING and created is not None:
        start = created + timedelta(seconds=1)
    return start + timedelta(seconds=limit.seconds) if limit and start else None


def waiting(status: TaskRunStatus) -> bool:
    """Whether the run waits for room under a concurrency limit (nothing sent)."""
    return status.phase is Phase.PENDING and status.reason is Reason.THROTTLED


def expiry(status: TaskRunStatus) -> datetime | None:
    """When the current attempt expires if it has not started (spec.expires)."""
    limit = status.limits.expires if status.limits else None
    sent = parse_time(status.submittedAt)
    return sent + timedelta(seconds=limit.seconds) if limit and sent else None


def next_check(status: TaskRunStatus, created: datetime | None = None) -> datetime | None:
    """The earliest moment the clock alone can change this run's status."""
    moments = [deadline(status, created)]
    if status.phase is Phase.QUEUED:
        moments.append(expiry(status))
    present = [m for m in moments if m is not None]
    return min(present) if present else None


# Polls a second or more apart fall on a grid of this many seconds (of the schedule's
# clock), so runs that are polled anyway are read together: one backend read a second
# for thousands of runs, not one for each.
POLL_GRID = 1.0


def next_delay(
    status: TaskRunStatus,
    backoff: Backoff,
    polls: int,
    now: datetime,
    created: datetime | None,
    tick: float,
) -> float | None:
    """Seconds until this run is looked at again: its poll backoff (long ones aligned to
    the grid; `tick` is the schedule's clock now), or sooner, exactly, when the clock
    alone will change its status (a deadline, an expiry).  A run waiting for room has
    nothing to poll (room wakes it): only its deadline, if any (None: no look)."""
    check = next_check(status, created)
    until = None if check is None else max((check - now).total_seconds(), 0.0)
    if waiting(status):
        return until
    delay = backoff.interval(polls)
    if delay >= POLL_GRID:
        delay = math.ceil((tick + delay) / POLL_GRID) * POLL_GRID - tick
    return delay if until is None else min(delay, until)
