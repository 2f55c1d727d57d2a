"""Schedules: what a schedule means, its slots across DST and month ends, and which
slots run now. Times in the tables are local ISO times; slots are Unix seconds."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_taskrun.core.cron import (
    MAX_RUNS,
    ConcurrencyPolicy,
    Cron,
    Due,
    Every,
    InvalidSchedule,
    Missed,
    MissedRuns,
    Reason,
    Schedule,
    UnknownTimeZone,
    due,
    parse,
    period,
    run_name,
    scheduled_at,
    time_zone,
)

UTC = "UTC"
NEW_YORK = "America/New_York"  # 2026: forward 03-08 02:00 -> 03:00, back 11-01 02:00 -> 01:00
BERLIN = "Europe/Berlin"  # 2026: forward 03-29 02:00 -> 03:00, back 10-25 03:00 -> 02:00


def at(local: str, zone: str = UTC) -> int:
    """The instant of an unambiguous local time."""
    return int(datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(zone)).timestamp())


def shown(slot: int, zone: str = UTC) -> str:
    """A slot as local time with its offset, e.g. `03-08 03:00-04:00`."""
    return datetime.fromtimestamp(slot, ZoneInfo(zone)).strftime("%m-%d %H:%M%z")


def walk(schedule: Schedule, start: int, n: int) -> list[int]:
    slots = []
    for _ in range(n):
        start = schedule.next_after(start)
        slots.append(start)
    return slots


# --- macros -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("macro", "start", "expected"),
    [
        ("@hourly", "2026-05-17 10:20", ["05-17 11:00+0000", "05-17 12:00+0000"]),
        ("@daily", "2026-05-17 10:20", ["05-18 00:00+0000", "05-19 00:00+0000"]),
        ("@midnight", "2026-05-17 10:20", ["05-18 00:00+0000", "05-19 00:00+0000"]),
        ("@weekly", "2026-05-17 10:20", ["05-24 00:00+0000", "05-31 00:00+0000"]),  # Sundays
        ("@monthly", "2026-05-17 10:20", ["06-01 00:00+0000", "07-01 00:00+0000"]),
        ("@yearly", "2026-05-17 10:20", ["01-01 00:00+0000", "01-01 00:00+0000"]),
        ("@annually", "2026-05-17 10:20", ["01-01 00:00+0000", "01-01 00:00+0000"]),
        ("@DAILY", "2026-05-17 10:20", ["05-18 00:00+0000", "05-19 00:00+0000"]),
    ],
)
def test_macros(macro: str, start: str, expected: list[str]) -> None:
    schedule = parse(macro)
    assert [shown(s) for s in walk(schedule, at(start), 2)] == expected


def test_yearly_is_each_new_year() -> None:
    slots = walk(parse("@yearly"), at("2026-05-17 10:20"), 2)
    assert slots == [at("2027-01-01 00:00"), at("2028-01-01 00:00")]


# --- @every -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1", 1),
        ("30", 30),
        ("1s", 1),
        ("30s", 30),
        ("5m", 300),
        ("90m", 5400),
        ("1h", 3600),
        ("24h", 86400),
        ("1h30m", 5400),
        ("2m30s", 150),
        ("1h0m1s", 3601),
        ("5M", 300),
        ("8784h", 366 * 86400),
    ],
)
def test_every_durations(text: str, seconds: int) -> None:
    assert period(text) == seconds
    assert parse(f"@every {text}") == Every(seconds)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("0", "at least 1s"),
        ("0s", "at least 1s"),
        ("0h0m0s", "at least 1s"),
        ("0.5s", "whole seconds"),
        ("1.5", "whole seconds"),
        ("", "not a duration"),
        ("soon", "not a duration"),
        ("1d", "not a duration"),
        ("500ms", "not a duration"),
        ("-5s", "not a duration"),
        ("1s30m", "not a duration"),  # largest unit first
        ("5 m", "not a duration"),
        ("8785h", "at most 366 days"),
        ("99999999999", "not a duration"),
    ],
)
def test_every_refusals(text: str, says: str) -> None:
    with pytest.raises(InvalidSchedule, match=says):
        parse(f"@every {text}")


@pytest.mark.parametrize("anchor", [0, 1_700_000_123])
def test_every_slots_are_multiples_of_the_period_after_the_anchor(anchor: int) -> None:
    every = parse("@every 7m", NEW_YORK, anchor)  # the zone plays no part
    assert every == Every(420, anchor)
    slots = walk(every, 1_800_000_000, 3)
    assert all((slot - anchor) % 420 == 0 for slot in slots)
    assert slots[0] - 420 <= 1_800_000_000 < slots[0]
    assert every.next_after(1_800_000_000.5) == slots[0]
    assert every.next_after(slots[0]) == slots[1]  # strictly after
    assert every.count(slots[0] - 1, slots[2]) == 3
    assert every.newest(0, slots[2], 2) == (slots[1], slots[2])


# --- fields -------------------------------------------------------------------------


def fields(schedule: Schedule) -> tuple[set[int], set[int], set[int], set[int], set[int]]:
    assert isinstance(schedule, Cron)
    minutes = {t % 60 for t in schedule.times}
    hours = {t // 60 for t in schedule.times}
    return minutes, hours, set(schedule.days), set(schedule.months), set(schedule.weekdays)


ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS = set(range(1, 32)), set(range(1, 13)), set(range(7))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("* * * * *", (set(range(60)), set(range(24)), ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS)),
        ("5 4 * * *", ({5}, {4}, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS)),
        ("0,15,45 * * * *", ({0, 15, 45}, set(range(24)), ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS)),
        ("10-13 * * * *", ({10, 11, 12, 13}, set(range(24)), ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS)),
        ("*/20 */6 * * *", ({0, 20, 40}, {0, 6, 12, 18}, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS)),
        ("10-30/10 * * * *", ({10, 20, 30}, set(range(24)), ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS)),
        ("50/5 * * * *", ({50, 55}, set(range(24)), ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS)),
        (
            "1,5-6,*/30 * * * *",
            ({0, 1, 5, 6, 30}, set(range(24)), ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
        ),
        ("*/90 * * * *", ({0}, set(range(24)), ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS)),
        ("0 0 1,15 * *", ({0}, {0}, {1, 15}, ALL_MONTHS, ALL_WEEKDAYS)),
        ("0 0 * JAN,jul *", ({0}, {0}, ALL_DAYS, {1, 7}, ALL_WEEKDAYS)),
        ("0 0 * Mar-May *", ({0}, {0}, ALL_DAYS, {3, 4, 5}, ALL_WEEKDAYS)),
        ("0 0 * */3 *", ({0}, {0}, ALL_DAYS, {1, 4, 7, 10}, ALL_WEEKDAYS)),
        ("0 0 * * MON-FRI", ({0}, {0}, ALL_DAYS, ALL_MONTHS, {1, 2, 3, 4, 5})),
        ("0 0 * * sat,Sun", ({0}, {0}, ALL_DAYS, ALL_MONTHS, {6, 0})),
        ("0 0 * * 7", ({0}, {0}, ALL_DAYS, ALL_MONTHS, {0})),
        ("0 0 * * 0", ({0}, {0}, ALL_DAYS, ALL_MONTHS, {0})),
        ("0 0 * * 5-7", ({0}, {0}, ALL_DAYS, ALL_MONTHS, {5, 6, 0})),
        ("0 0 * * */2", ({0}, {0}, ALL_DAYS, ALL_MONTHS, {0, 2, 4, 6})),
        ("  05\t04  *  *  * ", ({5}, {4}, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS)),
    ],
)
def test_field_syntax(text: str, expected: tuple[set[int], ...]) -> None:
    assert fields(parse(text)) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("* * * *", "has 4 fields; cron has 5"),
        ("0 * * * * *", "has 6 fields; cron has 5"),
        ("60 * * * *", "minute 60 is not in 0-59"),
        ("* 24 * * *", "hour 24 is not in 0-23"),
        ("* * 0 * *", "day-of-month 0 is not in 1-31"),
        ("* * 32 * *", "day-of-month 32 is not in 1-31"),
        ("* * * 0 *", "month 0 is not in 1-12"),
        ("* * * 13 *", "month 13 is not in 1-12"),
        ("* * * * 8", "day-of-week 8 is not in 0-7"),
        ("*/0 * * * *", "a step must be at least 1"),
        ("5-1 * * * *", "the range ends before it starts"),
        ("* * * * SAT-SUN", "the range ends before it starts"),
        ("*-5 * * * *", "a range starts with a value"),
        ("1-2-3 * * * *", "not a value, range or step"),
        ("? * * * *", "not a value, range or step"),
        ("1, * * * *", "not a value, range or step"),
        ("-1 * * * *", "not a value, range or step"),
        ("jan * * * *", "minute 'jan' is not a number"),
        ("* * * january *", "month 'january' is not a number or a name"),
        ("* * * * funday", "day-of-week 'funday' is not a number or a name"),
        ("0 0 30 2 *", "no month it names has the day it names"),
        ("0 0 31 4,6,9,11 *", "no month it names has the day it names"),
        ("@reboot", "unknown macro"),
        ("@daily 5", "unknown macro"),
        ("@fortnightly", "unknown macro"),
        ("TZ=UTC 0 * * * *", "spec.timeZone"),
        ("CRON_TZ=Europe/Berlin 0 * * * *", "spec.timeZone"),
        ("0 " * 200, "longer than 256 characters"),
    ],
)
def test_field_refusals(text: str, says: str) -> None:
    with pytest.raises(InvalidSchedule, match=says) as refused:
        parse(text)
    assert refused.value.reason == "InvalidSchedule"
    assert len(str(refused.value)) < 400  # bounded, whatever came in


# --- days: cron's day rule, month ends, leap days -------------------------------------


@pytest.mark.parametrize(
    ("text", "start", "expected"),
    [
        # Both day fields restricted: the 13th or a Friday.
        ("0 0 13 * FRI", "2026-02-01", ["2026-02-06", "2026-02-13", "2026-02-20", "2026-02-27"]),
        ("0 0 13 * 5", "2026-03-10", ["2026-03-13", "2026-03-20", "2026-03-27", "2026-04-03"]),
        # One of them `*`-led: both must match (cron's rule reads the first character).
        ("0 0 */2 * MON", "2026-06-01", ["2026-06-01", "2026-06-15", "2026-06-29", "2026-07-13"]),
        ("0 0 * * 7", "2026-06-01", ["2026-06-07", "2026-06-14", "2026-06-21", "2026-06-28"]),
        ("0 0 1 * *", "2026-12-15", ["2027-01-01", "2027-02-01", "2027-03-01", "2027-04-01"]),
        # The 31st: months without one are skipped.
        ("0 0 31 * *", "2026-01-01", ["2026-01-31", "2026-03-31", "2026-05-31", "2026-07-31"]),
        ("0 0 30 * *", "2026-01-01", ["2026-01-30", "2026-03-30", "2026-04-30", "2026-05-30"]),
        # Feb 29: leap years only; 2100 is not one.
        ("0 0 29 2 *", "2024-03-01", ["2028-02-29", "2032-02-29", "2036-02-29", "2040-02-29"]),
        ("0 0 29 2 *", "2096-03-01", ["2104-02-29", "2108-02-29", "2112-02-29", "2116-02-29"]),
        ("0 0 28,29 2 *", "2027-01-01", ["2027-02-28", "2028-02-28", "2028-02-29", "2029-02-28"]),
    ],
)
def test_days(text: str, start: str, expected: list[str]) -> None:
    slots = walk(parse(text), at(start) - 1, len(expected))
    assert [datetime.fromtimestamp(s, ZoneInfo(UTC)).date().isoformat() for s in slots] == expected


# --- DST ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "text", "start", "expected"),
    [
        # Clocks forward: 02:30 does not occur, so it runs once, at 03:00 (the gap's end).
        (BERLIN, "30 2 * * *", "2026-03-28 12:00",
         ["03-29 03:00+0200", "03-30 02:30+0200"]),
        (NEW_YORK, "30 2 * * *", "2026-03-07 12:00",
         ["03-08 03:00-0400", "03-09 02:30-0400"]),
        # Clocks back: 02:30 occurs twice in Berlin, 01:30 in New York; each runs once.
        (BERLIN, "30 2 * * *", "2026-10-24 12:00",
         ["10-25 02:30+0200", "10-26 02:30+0100"]),
        (NEW_YORK, "30 1 * * *", "2026-10-31 12:00",
         ["11-01 01:30-0400", "11-02 01:30-0500"]),
        # Hourly: the skipped hour's 02:00 becomes 03:00, which runs once.
        (BERLIN, "0 * * * *", "2026-03-29 00:30",
         ["03-29 01:00+0100", "03-29 03:00+0200", "03-29 04:00+0200"]),
        # Hourly: the repeated hour's wall times ran already; the next is 03:00 CET.
        (BERLIN, "0 * * * *", "2026-10-25 01:30",
         ["10-25 02:00+0200", "10-25 03:00+0100", "10-25 04:00+0100"]),
        (NEW_YORK, "0 * * * *", "2026-11-01 00:30",
         ["11-01 01:00-0400", "11-01 02:00-0500", "11-01 03:00-0500"]),
        (NEW_YORK, "@hourly", "2026-03-08 00:30",
         ["03-08 01:00-0500", "03-08 03:00-0400", "03-08 04:00-0400"]),
        # Every 15 minutes: the gap's four wall times and 03:00 are one instant.
        (BERLIN, "*/15 * * * *", "2026-03-29 01:40",
         ["03-29 01:45+0100", "03-29 03:00+0200", "03-29 03:15+0200"]),
        (BERLIN, "*/15 * * * *", "2026-10-25 02:40",
         ["10-25 02:45+0200", "10-25 03:00+0100", "10-25 03:15+0100"]),
        (NEW_YORK, "*/15 * * * *", "2026-11-01 01:40",
         ["11-01 01:45-0400", "11-01 02:00-0500", "11-01 02:15-0500"]),
        # Midnights are not touched by these zones' changes.
        (BERLIN, "@daily", "2026-03-28 12:00", ["03-29 00:00+0100", "03-30 00:00+0200"]),
        (BERLIN, "@daily", "2026-10-24 12:00", ["10-25 00:00+0200", "10-26 00:00+0100"]),
        (NEW_YORK, "@daily", "2026-11-01 00:30", ["11-02 00:00-0500", "11-03 00:00-0500"]),
        # A zone whose clocks go forward at midnight: that day's midnight is 01:00.
        ("America/Santiago", "@daily", "2026-09-05 12:00",
         ["09-06 01:00-0300", "09-07 00:00-0300"]),
    ],
)  # fmt: skip
def test_dst(zone: str, text: str, start: str, expected: list[str]) -> None:
    schedule = parse(text, zone)
    assert [shown(s, zone) for s in walk(schedule, at(start, zone), len(expected))] == expected


@pytest.mark.parametrize(
    ("zone", "text", "day", "slots"),
    [
        (BERLIN, "0 * * * *", "2026-03-29", 23),  # 02:00 and 03:00 are one
        (BERLIN, "0 * * * *", "2026-10-25", 24),  # 02:00 once
        (BERLIN, "*/15 * * * *", "2026-03-29", 92),  # 96 wall times, 5 of them one instant
        (BERLIN, "*/15 * * * *", "2026-10-25", 96),
        (NEW_YORK, "* * * * *", "2026-03-08", 1440 - 60),
        (NEW_YORK, "* * * * *", "2026-11-01", 1440),
        (NEW_YORK, "30 2 * * *", "2026-03-08", 1),
        (UTC, "* * * * *", "2026-03-08", 1440),
    ],
)
def test_a_day_of_slots(zone: str, text: str, day: str, slots: int) -> None:
    """count, newest and next_after agree, on days with a clock change too."""
    schedule = parse(text, zone)
    start = at(f"{day} 00:00", zone) - 1
    end = int((datetime.fromisoformat(day) + timedelta(days=1)).replace(
        tzinfo=ZoneInfo(zone)).timestamp()) - 1  # fmt: skip
    walked = [s for s in walk(schedule, start, slots + 1) if s <= end]
    assert len(walked) == slots
    assert schedule.count(start, end) == slots
    assert schedule.newest(start, end, slots + 5) == tuple(walked)
    assert schedule.newest(start, end, 3) == tuple(walked[-3:])


@pytest.mark.parametrize(
    "name",
    ["Mars/Olympus", "", "localtime", "posixrules", "/etc/passwd", "../etc", "Europe/",
     "america/new_york", "UTC ", "zone.tab", "x" * 300],
)  # fmt: skip
def test_unknown_zone(name: str) -> None:
    with pytest.raises(UnknownTimeZone, match="unknown time zone") as refused:
        parse("@daily", name)
    assert refused.value.reason == "UnknownTimeZone"
    assert len(str(refused.value)) < 200


@pytest.mark.parametrize("name", ["UTC", "Etc/GMT+5", "America/Argentina/Buenos_Aires"])
def test_known_zones(name: str) -> None:
    assert time_zone(name) == ZoneInfo(name)


# --- due: what runs now -------------------------------------------------------------

T = 1_800_000_000  # a multiple of 60 and of 300
MINUTE = Every(60)


def missed(reason: Reason, first: int, last: int, count: int) -> Missed:
    return Missed(reason, first, last, count)


@pytest.mark.parametrize(
    ("case", "arguments", "expected"),
    [
        ("nothing due yet", dict(handled=T, now=T + 30),
         Due((), (), (), None, T + 60)),
        ("on time", dict(handled=T, now=T + 60.4),
         Due((T + 60,), (), (), T + 60, T + 120)),
        ("new: the first slot after creation", dict(handled=None, since=T + 10, now=T + 61),
         Due((T + 60,), (), (), T + 60, T + 120)),
        ("new, created on a slot: not that one", dict(handled=None, since=T, now=T + 59),
         Due((), (), (), None, T + 60)),
        ("the clock behind the creation", dict(handled=None, since=T + 130, now=T + 5),
         Due((), (), (), None, T + 180)),
        ("Latest after 5 missed", dict(handled=T, now=T + 305),
         Due((T + 300,), (), (missed(Reason.SUPERSEDED, T + 60, T + 240, 4),), T + 300,
             T + 360)),
        ("Skip: the latest fell due while acting, reached late",
         dict(handled=T, now=T + 305, missed_runs=MissedRuns.SKIP, acting_since=T + 250),
         Due((T + 300,), (), (missed(Reason.SKIPPED, T + 60, T + 240, 4),), T + 300, T + 360)),
        ("Skip: on time with nothing missed",
         dict(handled=T, now=T + 60.5, missed_runs=MissedRuns.SKIP),
         Due((T + 60,), (), (), T + 60, T + 120)),
        ("Skip: the latest fell due before this operator acted",
         dict(handled=T, now=T + 305, missed_runs=MissedRuns.SKIP, acting_since=T + 301),
         Due((), (), (missed(Reason.SKIPPED, T + 60, T + 300, 5),), T + 300, T + 360)),
        ("All after 5 missed", dict(handled=T, now=T + 305, missed_runs=MissedRuns.ALL),
         Due((T + 60, T + 120, T + 180, T + 240, T + 300), (), (), T + 300, T + 360)),
        ("All after 150 missed: the newest 100",
         dict(handled=T, now=T + 150 * 60, missed_runs=MissedRuns.ALL),
         Due(tuple(T + 60 * i for i in range(51, 151)), (),
             (missed(Reason.TOO_MANY_MISSED, T + 60, T + 50 * 60, 50),), T + 9000, T + 9060)),
        ("Latest, deadline 100 s",
         dict(handled=T, now=T + 305, starting_deadline=100),
         Due((T + 300,), (), (missed(Reason.DEADLINE_EXCEEDED, T + 60, T + 180, 3),
                              missed(Reason.SUPERSEDED, T + 240, T + 240, 1)), T + 300,
             T + 360)),
        ("All, deadline 100 s",
         dict(handled=T, now=T + 305, starting_deadline=100, missed_runs=MissedRuns.ALL),
         Due((T + 240, T + 300), (), (missed(Reason.DEADLINE_EXCEEDED, T + 60, T + 180, 3),),
             T + 300, T + 360)),
        ("deadline passed for every slot",
         dict(handled=T, now=T + 330, starting_deadline=10),
         Due((), (), (missed(Reason.DEADLINE_EXCEEDED, T + 60, T + 300, 5),), T + 300,
             T + 360)),
        ("exactly the deadline late: runs",
         dict(handled=T, now=T + 70, starting_deadline=10),
         Due((T + 60,), (), (), T + 60, T + 120)),
        ("a deadline of 0: only a slot due this very second",
         dict(handled=T, now=T + 60.9, starting_deadline=0),
         Due((T + 60,), (), (), T + 60, T + 120)),
        ("a deadline of 0: a second late is too late",
         dict(handled=T, now=T + 61, starting_deadline=0),
         Due((), (), (missed(Reason.DEADLINE_EXCEEDED, T + 60, T + 60, 1),), T + 60, T + 120)),
        ("Forbid while a run is active",
         dict(handled=T, now=T + 61, concurrency=ConcurrencyPolicy.FORBID, active=["r"]),
         Due((), (), (missed(Reason.ALREADY_ACTIVE, T + 60, T + 60, 1),), T + 60, T + 120)),
        ("Forbid, none active",
         dict(handled=T, now=T + 61, concurrency=ConcurrencyPolicy.FORBID),
         Due((T + 60,), (), (), T + 60, T + 120)),
        ("Forbid with All: the oldest starts, the others find it active",
         dict(handled=T, now=T + 181, concurrency=ConcurrencyPolicy.FORBID,
              missed_runs=MissedRuns.ALL),
         Due((T + 60,), (), (missed(Reason.ALREADY_ACTIVE, T + 120, T + 180, 2),), T + 180,
             T + 240)),
        ("Replace cancels the active runs",
         dict(handled=T, now=T + 61, concurrency=ConcurrencyPolicy.REPLACE, active=["a", "b"]),
         Due((T + 60,), ("a", "b"), (), T + 60, T + 120)),
        ("Replace with nothing due cancels nothing",
         dict(handled=T, now=T + 30, concurrency=ConcurrencyPolicy.REPLACE, active=["a"]),
         Due((), (), (), None, T + 60)),
        ("Replace with All: only the newest starts",
         dict(handled=T, now=T + 181, concurrency=ConcurrencyPolicy.REPLACE, active=["a"],
              missed_runs=MissedRuns.ALL),
         Due((T + 180,), ("a",), (missed(Reason.REPLACED, T + 60, T + 120, 2),), T + 180,
             T + 240)),
        ("Allow with a run active", dict(handled=T, now=T + 61, active=["r"]),
         Due((T + 60,), (), (), T + 60, T + 120)),
        # An edit takes effect at `since`: the slots before it are the old schedule's.
        ("an edit never fires a run by itself",
         dict(handled=T - 3600, since=T + 30, now=T + 31),
         Due((), (), (), None, T + 60)),
        ("after an edit, the new schedule's slots",
         dict(handled=T - 3600, since=T + 30, now=T + 125),
         Due((T + 120,), (), (missed(Reason.SUPERSEDED, T + 60, T + 60, 1),), T + 120,
             T + 180)),
        ("a recorded slot newer than the edit",
         dict(handled=T + 120, since=T + 30, now=T + 185),
         Due((T + 180,), (), (), T + 180, T + 240)),
    ],
)  # fmt: skip
def test_due(case: str, arguments: dict[str, object], expected: Due) -> None:
    arguments = {"since": 0, **arguments}
    assert due(MINUTE, **arguments) == expected, case  # type: ignore[arg-type]


def test_an_edit_to_a_time_just_past_waits_for_its_next_one() -> None:
    """Edited at 10:00:30 to `0 10 * * *`: today's 10:00 is before the edit."""
    daily = parse("0 10 * * *", BERLIN)
    edit = at("2026-06-01 10:00:30", BERLIN)
    result = due(daily, handled=at("2026-06-01 09:00", BERLIN), since=edit, now=edit + 5)
    assert result == Due((), (), (), None, at("2026-06-02 10:00", BERLIN))


def test_a_year_without_an_operator_every_second() -> None:
    """31.5 million slots, counted, not walked (a walk would take minutes)."""
    start = at("2026-01-01 00:00")
    now = start + 365 * 86400 + 0.5
    for policy, runs, reason in [
        (MissedRuns.ALL, MAX_RUNS, Reason.TOO_MANY_MISSED),
        (MissedRuns.LATEST, 1, Reason.SUPERSEDED),
        (MissedRuns.SKIP, 1, Reason.SKIPPED),
    ]:
        result = due(Every(1), handled=start, since=0, now=now, missed_runs=policy)
        assert len(result.run) == runs
        assert result.run[-1] == result.handled == start + 365 * 86400
        assert result.missed == (missed(reason, start + 1, result.run[0] - 1,
                                        365 * 86400 - runs),)  # fmt: skip
        assert result.next == result.handled + 1


def test_a_year_without_an_operator_every_minute_in_a_zone() -> None:
    """The same with cron, across both clock changes: a day at a time."""
    schedule = parse("* * * * *", NEW_YORK)
    start = at("2026-01-01 00:00", NEW_YORK)
    now = at("2027-01-01 00:00", NEW_YORK)
    result = due(schedule, handled=start, since=0, now=now, missed_runs=MissedRuns.ALL)
    assert result.run == tuple(now - 60 * i for i in reversed(range(MAX_RUNS)))
    assert result.missed == (missed(Reason.TOO_MANY_MISSED, start + 60,
                                    result.run[0] - 60, 365 * 1440 - 60 - MAX_RUNS),)  # fmt: skip


def test_missed_messages() -> None:
    one = missed(Reason.DEADLINE_EXCEEDED, T, T, 1)
    assert one.message == (
        "slot 2027-01-15T08:00:00Z not run: not started within startingDeadlineSeconds of its time"
    )
    many = missed(Reason.SKIPPED, T, T + 120, 3)
    assert many.message == (
        "3 slots from 2027-01-15T08:00:00Z to 2027-01-15T08:02:00Z not run: missed while no "
        "operator acted, and missedRuns is Skip"
    )


def test_names_and_annotations() -> None:
    assert run_name("nightly", T) == "nightly-1800000000"
    assert scheduled_at(T) == "2027-01-15T08:00:00Z"


# --- properties ---------------------------------------------------------------------

ZONES = [UTC, NEW_YORK, BERLIN, "Australia/Lord_Howe"]  # Lord Howe moves 30 minutes
# Instants near each zone's 2026 changes, where mistakes would be.
CHANGES = [at("2026-03-08 07:00"), at("2026-11-01 06:00"), at("2026-03-29 01:00"),
           at("2026-10-25 01:00"), at("2026-04-04 15:00"), at("2026-10-03 15:30")]  # fmt: skip


def oracle_next(schedule: Cron, t: int) -> int:
    """The contract read minute by minute: an instant is a slot when its wall time
    matches at its first occurrence, or when it ends a gap in which one matched."""
    zone = schedule.zone
    minute = t - t % 60 + 60
    while True:
        wall = datetime.fromtimestamp(minute, zone)
        before = datetime.fromtimestamp(minute - 60, zone).replace(tzinfo=None)
        walls = [wall.replace(tzinfo=None)] if wall.fold == 0 else []
        gap = wall.replace(tzinfo=None) - before
        walls += [before + timedelta(minutes=i) for i in range(1, gap // timedelta(minutes=1))]
        if any(_matches(schedule, w) for w in walls):
            return minute
        minute += 60


def _matches(schedule: Cron, wall: datetime) -> bool:
    dom, dow = wall.day in schedule.days, wall.isoweekday() % 7 in schedule.weekdays
    return (
        wall.hour * 60 + wall.minute in schedule.times
        and wall.month in schedule.months
        and ((dom or dow) if schedule.either_day else (dom and dow))
    )


minutes = st.sets(st.integers(0, 59), min_size=1, max_size=4)
hours = st.sets(st.integers(0, 23), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(
    minutes=minutes,
    hours=hours,
    zone=st.sampled_from(ZONES),
    change=st.sampled_from(CHANGES),
    offset=st.integers(-2 * 86400, 2 * 86400),
)
def test_next_after_is_the_contract_read_minute_by_minute(
    minutes: set[int], hours: set[int], zone: str, change: int, offset: int
) -> None:
    text = f"{','.join(map(str, minutes))} {','.join(map(str, hours))} * * *"
    schedule = parse(text, zone)
    assert isinstance(schedule, Cron)
    t = change + offset
    slot = schedule.next_after(t)
    assert slot == oracle_next(schedule, t)
    assert schedule.count(t, slot) == 1
    assert schedule.newest(t - 1, slot, 1) == (slot,)
    assert schedule.next_after(slot) > slot


@settings(max_examples=100, deadline=None)
@given(
    seconds=st.integers(1, 10**6),
    after=st.integers(0, 4 * 10**9),
    span=st.integers(0, 10**7),
    limit=st.integers(1, MAX_RUNS),
)
def test_every_counts_what_it_walks(seconds: int, after: int, span: int, limit: int) -> None:
    every = Every(seconds)
    slots = walk(every, after, min(every.count(after, after + span), 200))
    assert all(s % seconds == 0 for s in slots)
    if every.count(after, after + span) <= 200:
        assert every.newest(after, after + span, limit) == tuple(slots[-limit:])
        assert every.next_after(after + span) > after + span
