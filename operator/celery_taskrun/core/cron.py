"""Schedules (pure): what a CronTaskRun's `schedule` means, and which slots run now.

A slot is an instant in Unix seconds (an int): the run made for it is named
`<cron name>-<slot>`, so the slot is what makes a second create of the same run fail,
whichever operator tries, whenever. Every instant here is Unix seconds; the clock is
an argument (`now`), never read.

Two kinds of schedule, one interface (`next_after`, `count`, `newest`):

- `Cron`: wall-clock times in an IANA zone (5 fields, or a macro). Its slots are the
  instants its matching wall times name. A wall time that occurs twice (the clocks go
  back) names its first occurrence only; one that does not occur (the clocks go
  forward) names the first instant after the gap, the instant of the change. So
  `30 2 * * *` runs once on both days, and `0 * * * *` or `*/15 * * * *` run each wall
  time once: through a repeated hour they wait for the wall clock to pass it again (one
  hour with no slot); through a skipped hour its times all become the one instant the
  gap ends (one run). That is the contract's sentence taken as written, for every
  field, and what a reader of the wall clock expects; a period in elapsed time,
  whatever the clocks do, is `@every`'s job.
- `Every`: a period in seconds, its slots the multiples of the period after an anchor
  (see `parse`); the time zone plays no part.

`due` decides, from the last slot recorded, what runs now and what is missed and why.
"""

from __future__ import annotations

import enum
import functools
import math
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# The spec's vocabulary and bounds are the API's (hostile input is normal input: the
# schedule's bound also bounds what is parsed and quoted).
from celery_taskrun.api.cron import (
    MAX_SCHEDULE_CHARS,
    TIME_ZONES,
    ConcurrencyPolicy,
    MissedRuns,
)

MAX_RUNS = 100  # never more runs than this at once, whatever was missed
MAX_PERIOD = 366 * 86400  # `@every` beyond a year is a calendar's job (`@yearly`)

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",  # an alias, as in Vixie cron and Kubernetes
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",  # an alias, as in Vixie cron and Kubernetes
    "@hourly": "0 * * * *",
}


class ScheduleError(ValueError):
    """A schedule or time zone a CronTaskRun cannot have. The message says why, in
    words fit for `kubectl apply`'s refusal; `reason` names it for a condition."""

    reason = "InvalidSchedule"


class InvalidSchedule(ScheduleError):
    """The schedule does not parse, or names no time that ever comes."""


class UnknownTimeZone(ScheduleError):
    """The time zone is not an IANA name this operator's time zone database has."""

    reason = "UnknownTimeZone"


class Reason(enum.StrEnum):
    """Why a slot makes no run: an Event's reason."""

    DEADLINE_EXCEEDED = "DeadlineExceeded"
    SKIPPED = "Skipped"
    SUPERSEDED = "Superseded"
    TOO_MANY_MISSED = "TooManyMissed"
    ALREADY_ACTIVE = "AlreadyActive"
    REPLACED = "Replaced"


_WHY = {
    Reason.DEADLINE_EXCEEDED: "not started within startingDeadlineSeconds of its time",
    Reason.SKIPPED: "missed while no operator acted, and missedRuns is Skip",
    Reason.SUPERSEDED: "missed while no operator acted; missedRuns is Latest, "
    "so only the latest slot runs",
    Reason.TOO_MANY_MISSED: f"missed while no operator acted; missedRuns All runs "
    f"only the newest {MAX_RUNS}",
    Reason.ALREADY_ACTIVE: "a run of this schedule is active and concurrencyPolicy is Forbid",
    Reason.REPLACED: "concurrencyPolicy is Replace and a later slot due now replaces it",
}


def scheduled_at(slot: int) -> str:
    """The slot in RFC 3339, UTC: the `celery.taskrun.dev/scheduled-at` annotation."""
    return datetime.fromtimestamp(slot, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_name(cron: str, slot: int) -> str:
    """The name of the one TaskRun a slot makes (the contract's)."""
    return f"{cron}-{slot}"


@dataclass(frozen=True)
class Missed:
    """`count` slots, from `first` to `last`, that will never run, for one reason."""

    reason: Reason
    first: int
    last: int
    count: int

    @property
    def message(self) -> str:
        """The Event's message: which slots, and why."""
        if self.count == 1:
            return f"slot {scheduled_at(self.first)} not run: {_WHY[self.reason]}"
        return (
            f"{self.count} slots from {scheduled_at(self.first)} to "
            f"{scheduled_at(self.last)} not run: {_WHY[self.reason]}"
        )


@dataclass(frozen=True)
class Due:
    """What a CronTaskRun does now (see `due`)."""

    run: tuple[int, ...]  # slots to make runs for, oldest first; at most MAX_RUNS
    cancel: tuple[str, ...]  # active runs to cancel before they start (Replace)
    missed: tuple[Missed, ...]  # slots that never run, oldest first, one entry a reason
    handled: int | None  # the newest slot decided here (run or missed): record it
    next: int  # the first slot after now: `nextScheduleTime`, and when to look again


@dataclass(frozen=True)
class Every:
    """`@every`: `anchor` plus the multiples of `seconds` (see `parse`)."""

    seconds: int
    anchor: int = 0

    def _index(self, t: float) -> int:
        """How many periods after the anchor `t` is (floored)."""
        return (math.floor(t) - self.anchor) // self.seconds

    def next_after(self, t: float) -> int:
        """The first slot strictly after `t`."""
        return self.anchor + (self._index(t) + 1) * self.seconds

    def count(self, after: float, until: float) -> int:
        """How many slots fall in (after, until], counted, not walked."""
        return max(0, self._index(until) - self._index(after))

    def newest(self, after: float, until: float, limit: int) -> tuple[int, ...]:
        """The newest `limit` slots in (after, until], oldest first."""
        last = self.anchor + self._index(until) * self.seconds
        n = min(limit, self.count(after, until))
        return tuple(last - self.seconds * i for i in reversed(range(n)))


@dataclass(frozen=True)
class Cron:
    """A cron expression in a time zone, read as wall-clock times (module docstring)."""

    zone: ZoneInfo
    times: tuple[int, ...]  # minutes of the day that match (hour * 60 + minute), ascending
    days: frozenset[int]  # days of the month, 1-31
    months: frozenset[int]  # 1-12
    weekdays: frozenset[int]  # 0-6, Sunday 0
    either_day: bool  # both day fields restricted: a day matches either (cron's rule)

    def next_after(self, t: float) -> int:
        """The first slot strictly after `t`."""
        return next(self._forward(math.floor(t)))

    def count(self, after: float, until: float) -> int:
        """How many slots fall in (after, until]: a day at a time, a day with no clock
        change counted without listing its slots, so a year costs 366 small steps."""
        a, b = math.floor(after), math.floor(until)
        if b <= a:
            return 0
        n, previous = 0, a
        for day in self._days(self._date(a) - _DAY, self._date(b) + _DAY):
            if self._regular(day):
                midnight = self._instant(_wall(day))
                first, last = midnight + 60 * self.times[0], midnight + 60 * self.times[-1]
                if first > previous and last <= b:
                    n, previous = n + len(self.times), last
                    continue
            for slot in self._slots_of(day):
                if previous < slot <= b:
                    n, previous = n + 1, slot
        return n

    def newest(self, after: float, until: float, limit: int) -> tuple[int, ...]:
        """The newest `limit` slots in (after, until], oldest first."""
        a, b = math.floor(after), math.floor(until)
        found: list[int] = []
        below = b + 1
        for day in self._days(self._date(b) + _DAY, self._date(a) - _DAY):
            for slot in reversed(self._slots_of(day)):
                if slot <= a or len(found) == limit:
                    return tuple(reversed(found))
                if slot < below:
                    found.append(slot)
                    below = slot
        return tuple(reversed(found))

    def _forward(self, t: int) -> Iterator[int]:
        # From the day before: a wall time in a gap can move past midnight.
        start = self._date(t) - _DAY
        stop = min(start + _CYCLE, date.max - _DAY)
        for day in self._days(start, stop):
            for slot in self._slots_of(day):
                if slot > t:
                    t = slot
                    yield slot

    def _days(self, start: date, stop: date) -> Iterator[date]:
        """The matching days from `start` to `stop` (both included), in that order."""
        forward = stop >= start
        day = start
        while day <= stop if forward else day >= stop:
            if day.month not in self.months:  # on to the next month's first day, or back
                if forward:  # to the last day of the one before
                    day = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
                else:
                    day = day.replace(day=1) - _DAY
                continue
            if self._matches(day):
                yield day
            day += _DAY if forward else -_DAY

    def _matches(self, day: date) -> bool:
        dom = day.day in self.days
        dow = day.isoweekday() % 7 in self.weekdays
        return (dom or dow) if self.either_day else (dom and dow)

    def _slots_of(self, day: date) -> tuple[int, ...]:
        """The day's slots, ascending, each once (a gap's wall times share one)."""
        return _slots_of(self, day)

    def _list_slots(self, day: date) -> tuple[int, ...]:
        if self._regular(day):
            midnight = self._instant(_wall(day))
            return tuple(midnight + 60 * minute for minute in self.times)
        slots: list[int] = []
        for minute in self.times:
            slot = self._instant(_wall(day) + timedelta(minutes=minute))
            if not slots or slot != slots[-1]:
                slots.append(slot)
        return tuple(slots)

    def _regular(self, day: date) -> bool:
        """No clock change on this day: its wall times each occur once, 60 s apart.
        (Read at both midnights; two changes that undo each other within one day are
        in no zone's rules.)"""
        start = datetime(day.year, day.month, day.day, tzinfo=self.zone)
        ends = (start, start + _DAY)
        return len({end.replace(fold=fold).utcoffset() for end in ends for fold in (0, 1)}) == 1

    def _instant(self, wall: datetime) -> int:
        """The instant a wall time names: its first occurrence when it occurs twice, the
        first instant after the gap when it does not occur."""
        after_gap = int(wall.replace(tzinfo=self.zone, fold=0).timestamp())
        if self._local(after_gap) == wall:
            return after_gap
        # In a gap, fold 0 reads the wall time with the offset before the change (an
        # instant after the gap), fold 1 with the one after it (an instant before it).
        before_gap = int(wall.replace(tzinfo=self.zone, fold=1).timestamp())
        while before_gap + 1 < after_gap:
            middle = (before_gap + after_gap) // 2
            if self._local(middle) > wall:
                after_gap = middle
            else:
                before_gap = middle
        return after_gap

    def _local(self, t: int) -> datetime:
        return datetime.fromtimestamp(t, self.zone).replace(tzinfo=None)

    def _date(self, t: int) -> date:
        return datetime.fromtimestamp(t, self.zone).date()


Schedule = Cron | Every


@functools.lru_cache(maxsize=256)
def _slots_of(schedule: Cron, day: date) -> tuple[int, ...]:
    """Cached: a walk through a day with a clock change would otherwise resolve each of
    its up to 1,440 wall times once for every slot it takes."""
    return schedule._list_slots(day)


_DAY = timedelta(days=1)
_CYCLE = timedelta(days=146097)  # 400 years: the Gregorian calendar repeats, so a
# schedule that matches any day matches one within this


def _wall(day: date) -> datetime:
    return datetime(day.year, day.month, day.day)


def time_zone(name: str) -> ZoneInfo:
    """The IANA zone `name`, or UnknownTimeZone."""
    refusal = UnknownTimeZone(
        f'unknown time zone {name[:64]!r}: use an IANA name such as "Europe/Berlin" or "UTC"'
    )
    # Only the pinned database's zones, which admission accepts too (not whatever else a
    # machine's database holds, such as `localtime`).
    if name not in TIME_ZONES:
        raise refusal
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise refusal from None


def spread(uid: str) -> int:
    """The `@every` anchor of the CronTaskRun `uid`: a hash of its uid, which never
    changes, so every operator, before and after any restart, computes the same slots
    without remembering anything; and a thousand schedules applied in one GitOps sync
    spread over their period instead of all falling due in the same second."""
    return zlib.crc32(uid.encode())


def parse(schedule: str, zone: str = "UTC", anchor: int = 0) -> Schedule:
    """The schedule `schedule` means in the IANA zone `zone`, or a ScheduleError.

    `@every`'s slots are `anchor` plus multiples of its period (`spread` gives a
    CronTaskRun's).

    5 fields (minute hour day-of-month month day-of-week), each `*`, a value, a range
    `a-b`, a step `*/s`, `a-b/s` or `a/s` (`a` to the field's end, as Kubernetes reads
    it), or a comma list of those; month and day names (`JAN`, `MON`) in any case; day
    of week 0-7, 0 and 7 both Sunday. When both day fields are restricted (neither
    starts with `*`) a day matches either, else both: cron's rule. Macros `@yearly`
    (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`), `@hourly`; and
    `@every DURATION` (see `period`). A schedule that no day can ever match (`0 0 30 2
    *`) is refused rather than left to never run.
    """
    tz = time_zone(zone)
    text = " ".join(schedule.split())
    quoted = repr(text if len(text) <= 64 else text[:64] + "...")
    if len(schedule) > MAX_SCHEDULE_CHARS:
        raise InvalidSchedule(f"schedule {quoted} is longer than {MAX_SCHEDULE_CHARS} characters")
    if not text:
        raise InvalidSchedule("the schedule is empty: use 5 cron fields, a macro or @every")
    if text.startswith("@"):
        word, _, rest = text.partition(" ")
        if word.lower() == "@every":
            return Every(period(rest), anchor)
        if word.lower() not in MACROS or rest:
            names = ", ".join([*MACROS, "@every DURATION"])
            raise InvalidSchedule(f"schedule {quoted}: unknown macro; use one of {names}")
        text = MACROS[word.lower()]
    if "=" in text.split(" ")[0]:
        raise InvalidSchedule(f"schedule {quoted}: set the time zone in spec.timeZone")
    fields = text.split(" ")
    if len(fields) != 5:
        raise InvalidSchedule(
            f"schedule {quoted} has {len(fields)} fields; cron has 5: minute hour "
            "day-of-month month day-of-week (no seconds field: use @every for that)"
        )
    try:
        minutes, hours, days, months, weekdays = (
            _field(spec, item) for spec, item in zip(_FIELDS, fields, strict=True)
        )
    except ValueError as error:
        raise InvalidSchedule(f"schedule {quoted}: {error}") from None
    days_star, weekdays_star = fields[2].startswith("*"), fields[4].startswith("*")
    if weekdays_star and not any(day <= _LONGEST[month] for month in months for day in days):
        raise InvalidSchedule(f"schedule {quoted}: no month it names has the day it names")
    return Cron(
        zone=tz,
        times=tuple(sorted(h * 60 + m for h in hours for m in minutes)),
        days=days,
        months=months,
        weekdays=frozenset(day % 7 for day in weekdays),
        either_day=not days_star and not weekdays_star,
    )


_DURATION = re.compile(r"(?:(\d{1,9})h)?(?:(\d{1,9})m)?(?:(\d{1,9})s)?")


def period(text: str) -> int:
    """`@every`'s DURATION in whole seconds: `90`, `30s`, `5m`, `1h`, or units
    combined largest first (`1h30m`, `2m30s`), as Go durations and this CLI read them.
    At least 1 s and at most 366 days; no fractions, since slots are whole seconds."""
    given = text.strip().lower()
    shown = repr(given[:32])
    usage = "use seconds, or e.g. 30s, 5m, 1h, 1h30m"
    if given.isdigit() and len(given) <= 9:
        seconds = int(given)
    elif (found := _DURATION.fullmatch(given)) and given:
        hours, minutes, secs = (int(part or 0) for part in found.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    elif re.fullmatch(r"[\d.]+(?:h|m|s)?", given) and "." in given:
        raise InvalidSchedule(f"@every {shown}: whole seconds only (slots are whole seconds)")
    else:
        raise InvalidSchedule(f"@every {shown} is not a duration: {usage}")
    if seconds < 1:
        raise InvalidSchedule(f"@every {shown}: the period must be at least 1s")
    if seconds > MAX_PERIOD:
        raise InvalidSchedule(f"@every {shown}: the period must be at most 366 days")
    return seconds


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names for low, low + 1, ...


_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, _MONTHS),
    _Field("day-of-week", 0, 7, _WEEKDAYS),
)
_LONGEST = {
    month: 29 if month == 2 else 30 if month in (4, 6, 9, 11) else 31 for month in range(1, 13)
}
_ITEM = re.compile(r"(\*|[0-9a-z]+)(?:-([0-9a-z]+))?(?:/([0-9]+))?")


def _field(field: _Field, text: str) -> frozenset[int]:
    """One field's values; a ValueError names the field and the fault."""
    values: set[int] = set()
    for item in text.lower().split(","):
        found = _ITEM.fullmatch(item)
        if not found:
            raise ValueError(f"{field.name} {item!r} is not a value, range or step")
        start, end, step = found.groups()
        if start == "*":
            if end is not None:
                raise ValueError(f"{field.name} {item!r}: a range starts with a value, not *")
            low, high = field.low, field.high
        else:
            low = _value(field, start)
            high = _value(field, end) if end is not None else field.high if step else low
        if low > high:
            raise ValueError(f"{field.name} {item!r}: the range ends before it starts")
        if step is not None and int(step) == 0:
            raise ValueError(f"{field.name} {item!r}: a step must be at least 1")
        values.update(range(low, high + 1, int(step or 1)))
    return frozenset(values)


def _value(field: _Field, text: str) -> int:
    if text.isdigit():
        value = int(text)
        if not field.low <= value <= field.high:
            raise ValueError(f"{field.name} {value} is not in {field.low}-{field.high}")
        return value
    if text in field.names:
        return field.low + field.names.index(text)
    if field.names:
        raise ValueError(f"{field.name} {text!r} is not a number or a name ({field.names[0]}...)")
    raise ValueError(f"{field.name} {text!r} is not a number")


def due(
    schedule: Schedule,
    *,
    handled: int | None,
    since: float,
    now: float,
    missed_runs: MissedRuns = MissedRuns.LATEST,
    starting_deadline: float | None = None,
    concurrency: ConcurrencyPolicy = ConcurrencyPolicy.ALLOW,
    active: Sequence[str] = (),
    acting_since: float = -math.inf,
) -> Due:
    """What runs now: the slots after the later of `handled` (the newest slot already
    decided, run or missed: `Due.handled` of an earlier call) and `since` (when the
    current schedule took effect: the creation, or the edit, so an edit never fires a
    run by itself), up to `now`.

    - A slot more than `starting_deadline` seconds old (in whole seconds, as slots are)
      is missed: DeadlineExceeded.
    - Of the rest, `missed_runs` says what runs. `Latest`: the newest; `All`: the newest
      MAX_RUNS, oldest first (older ones TooManyMissed); `Skip`: only a slot that
      fell due since `acting_since` (when this operator began to act: it was not
      missed, only reached late, however late). Counted, never walked: a year of
      `@every 1s` costs what one slot does.
    - Then `concurrency`, given the `active` runs' names. `Forbid`: with a run active
      none starts (AlreadyActive), else only the oldest due (the others would find it
      active). `Replace`: the active runs are cancelled, and only the newest due starts
      (each older one would be replaced at once).
    """
    after = math.floor(since) if handled is None else max(handled, math.floor(since))
    upcoming = schedule.next_after(max(after, now))
    if schedule.next_after(after) > now:
        return Due(run=(), cancel=(), missed=(), handled=None, next=upcoming)
    missed: list[Missed] = []

    def miss(reason: Reason, start: int, end: float) -> None:
        """The slots in (start, end] never run, for `reason`."""
        if count := schedule.count(start, end):
            last = schedule.newest(start, end, 1)[0]
            missed.append(Missed(reason, schedule.next_after(start), last, count))

    window = after  # the slots after this are within the deadline
    if starting_deadline is not None:
        window = max(after, math.ceil(math.floor(now) - starting_deadline) - 1)
        miss(Reason.DEADLINE_EXCEEDED, after, window)
    run = schedule.newest(window, now, MAX_RUNS if missed_runs is MissedRuns.ALL else 1)
    if missed_runs is MissedRuns.SKIP and run and run[-1] < acting_since:
        run = ()
    miss(_OLDER[missed_runs], window, run[0] - 1 if run else now)

    cancel: tuple[str, ...] = ()
    if run and concurrency is ConcurrencyPolicy.FORBID:
        blocked = run if active else run[1:]
        if blocked:
            missed.append(Missed(Reason.ALREADY_ACTIVE, blocked[0], blocked[-1], len(blocked)))
        run = () if active else run[:1]
    elif run and concurrency is ConcurrencyPolicy.REPLACE:
        cancel = tuple(active)
        if len(run) > 1:
            missed.append(Missed(Reason.REPLACED, run[0], run[-2], len(run) - 1))
        run = run[-1:]
    handled_now = schedule.newest(after, now, 1)[0]
    return Due(run=run, cancel=cancel, missed=tuple(missed), handled=handled_now, next=upcoming)


# Why the due slots older than those that run do not run, by `missedRuns`.
_OLDER = {
    MissedRuns.SKIP: Reason.SKIPPED,
    MissedRuns.LATEST: Reason.SUPERSEDED,
    MissedRuns.ALL: Reason.TOO_MANY_MISSED,
}
