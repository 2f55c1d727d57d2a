"""The CronTaskRun API: a schedule of TaskRuns (DESIGN.md, "Schedules").

Spec and status types and the names the contract fixes.  The CRD's schema
(`deploy/crontaskrun-crd.yaml`) is generated from these models by `crd.py`, with the
admission checks a schema can make (the shape of `schedule`, the form of `timeZone`);
what only a parse can tell (`core/cron.py`) the operator reports as Ready=False.
"""

from __future__ import annotations

from enum import StrEnum
from importlib.metadata import version
from importlib.resources import files

from pydantic import Field

from celery_taskrun.api.model import GROUP, MAX_SECONDS, Condition, TaskRunSpec, _Model

KIND = "CronTaskRun"
PLURAL = "crontaskruns"
SHORT_NAME = "ctr"
# On each run a slot makes: the CronTaskRun's name, and the slot's time (RFC 3339).
CRON_LABEL = f"{GROUP}/cron"
SCHEDULED_AT_ANNOTATION = f"{GROUP}/scheduled-at"

MAX_SCHEDULE_CHARS = 256
MAX_HISTORY = 100  # runs kept of each outcome, at most
# An IANA zone name: `UTC`, `Europe/Berlin`, `America/Argentina/Buenos_Aires`,
# `Etc/GMT+5`.  Whether such a name is a zone the operator's database has, only the
# operator can tell (Ready=False).
TIME_ZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,3}$"
# The zones of the pinned time zone database (the `tzdata` package, in the lock): the
# ones admission accepts and the operator knows, so the two always agree.
TIME_ZONES: frozenset[str] = frozenset(files("tzdata").joinpath("zones").read_text().split())
TIME_ZONE_DATABASE = f"tzdata {version('tzdata')}"
MAX_TIME_ZONE_CHARS = 64

# The shape of a schedule, as admission can check it (RE2 and Python `re` alike): 5
# fields of values, names, ranges, steps and lists; a macro; or `@every DURATION`.
# Values in range, a day that exists, a period of at most 366 days: the operator's
# parse (core/cron.py) decides those.
_ITEM = r"(\*|[0-9A-Za-z]+)(-[0-9A-Za-z]+)?(/[0-9]+)?"
_FIELD = rf"{_ITEM}(,{_ITEM})*"
_MACRO = r"@(?i:yearly|annually|monthly|weekly|daily|midnight|hourly)"
_DURATION = r"(?i:[0-9]+h([0-9]+m)?([0-9]+s)?|[0-9]+m([0-9]+s)?|[0-9]+s?)"
SCHEDULE_SHAPE = rf"^\s*({_FIELD}(\s+{_FIELD}){{4}}|{_MACRO}|@(?i:every)\s+{_DURATION})\s*$"
# `@every` with a period of 0 (`0`, `0s`, `0h0m`): the shape holds, the period does not.
ZERO_PERIOD = r"^\s*@(?i:every)\s+(0+[hmsHMS]?)+\s*$"


class ConcurrencyPolicy(StrEnum):
    """What a slot does while an earlier run of the schedule is active."""

    ALLOW = "Allow"  # run anyway
    FORBID = "Forbid"  # skip the slot
    REPLACE = "Replace"  # cancel the active run, then start


class MissedRuns(StrEnum):
    """What runs for slots that came while no operator acted."""

    SKIP = "Skip"  # none
    LATEST = "Latest"  # the newest only
    ALL = "All"  # each, oldest first, at most 100


class TaskRunMetadata(_Model):
    """Labels and annotations each TaskRun of the schedule gets."""

    labels: dict[str, str] | None = Field(None, description="Labels for each run.")
    annotations: dict[str, str] | None = Field(None, description="Annotations for each run.")


class TaskRunTemplate(_Model):
    """The TaskRun each slot makes: its labels, annotations and spec."""

    metadata: TaskRunMetadata | None = None
    spec: TaskRunSpec = Field(
        description="The spec of each run, as a TaskRun's (kubectl explain taskrun.spec); "
        "unlike a TaskRun's, it may be edited."
    )


class CronTaskRunSpec(_Model):
    """When to make TaskRuns, and from what.

    Each slot makes one TaskRun named `<name>-<slot as Unix seconds>`, owned by the
    CronTaskRun, labelled `celery.taskrun.dev/cron` and annotated
    `celery.taskrun.dev/scheduled-at`.
    """

    schedule: str = Field(
        min_length=1,
        max_length=MAX_SCHEDULE_CHARS,
        description="5 cron fields (minute hour day-of-month month day-of-week), a macro "
        "(@yearly, @monthly, @weekly, @daily, @hourly), or @every DURATION (seconds, or "
        "30s, 5m, 1h; at least 1s).",
    )
    timeZone: str = Field(
        "UTC",
        max_length=MAX_TIME_ZONE_CHARS,
        pattern=TIME_ZONE_PATTERN,
        description="The IANA time zone the cron fields are read in (default UTC).",
    )
    concurrencyPolicy: ConcurrencyPolicy = Field(
        ConcurrencyPolicy.ALLOW,
        description="While a run is active: Allow (default) another, Forbid (skip the "
        "slot), Replace (cancel the active run, then start).",
    )
    startingDeadlineSeconds: int | None = Field(
        None,
        gt=0,
        le=MAX_SECONDS,
        description="A slot not started within this many seconds of its time is missed.",
    )
    missedRuns: MissedRuns = Field(
        MissedRuns.LATEST,
        description="What runs for slots missed while no operator acted: Skip, Latest "
        "(default), All (at most 100, oldest first).",
    )
    suspend: bool = Field(False, description="True: no slot makes a run.")
    successfulRunsHistoryLimit: int = Field(
        3, ge=0, le=MAX_HISTORY, description="Succeeded runs kept (default 3)."
    )
    failedRunsHistoryLimit: int = Field(
        1, ge=0, le=MAX_HISTORY, description="Runs ended otherwise kept (default 1)."
    )
    taskRunTemplate: TaskRunTemplate


class ActiveRun(_Model):
    """A run of the schedule that has not finished."""

    name: str = Field(description="The TaskRun's name.")
    uid: str = Field(description="The TaskRun's uid.")


class CronTaskRunStatus(_Model):
    """What the operator made of the schedule; written by the operator only."""

    lastScheduleTime: str | None = Field(
        None, description="The time of the newest slot the operator handled (RFC 3339)."
    )
    lastSuccessfulTime: str | None = Field(
        None, description="When a run of the schedule last succeeded (RFC 3339)."
    )
    nextScheduleTime: str | None = Field(None, description="The next slot (RFC 3339).")
    active: list[ActiveRun] | None = Field(None, description="The runs not finished.")
    conditions: list[Condition] | None = Field(
        None, description="Ready, False (with the reason) when the schedule cannot run."
    )
    observedGeneration: int | None = Field(
        None, description="The metadata.generation the status was written for (0: not yet)."
    )
