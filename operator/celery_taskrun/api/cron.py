"""The CronTaskRun API (provisional: the engine's view until the API branch lands)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from celery_taskrun.api.model import GROUP, MAX_SECONDS, Condition, TaskRunSpec, _Model

CRON_KIND = "CronTaskRun"
CRON_PLURAL = "crontaskruns"
CRON_LABEL = f"{GROUP}/cron"
SCHEDULED_AT_ANNOTATION = f"{GROUP}/scheduled-at"


class ConcurrencyPolicy(StrEnum):
    ALLOW = "Allow"
    FORBID = "Forbid"
    REPLACE = "Replace"


class MissedRuns(StrEnum):
    SKIP = "Skip"
    LATEST = "Latest"
    ALL = "All"


class TemplateMeta(_Model):
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class TaskRunTemplate(_Model):
    metadata: TemplateMeta = Field(default_factory=TemplateMeta)
    spec: TaskRunSpec


class CronTaskRunSpec(_Model):
    schedule: str = Field(min_length=1, max_length=256)
    timeZone: str = Field("UTC", min_length=1, max_length=64)
    concurrencyPolicy: ConcurrencyPolicy = ConcurrencyPolicy.ALLOW
    startingDeadlineSeconds: int | None = Field(None, ge=0, le=MAX_SECONDS)
    missedRuns: MissedRuns = MissedRuns.LATEST
    suspend: bool = False
    successfulRunsHistoryLimit: int = Field(3, ge=0, le=100)
    failedRunsHistoryLimit: int = Field(1, ge=0, le=100)
    taskRunTemplate: TaskRunTemplate


class ActiveRun(_Model):
    name: str
    uid: str


class CronTaskRunStatus(_Model):
    lastScheduleTime: str | None = None
    lastSuccessfulTime: str | None = None
    nextScheduleTime: str | None = None
    active: list[ActiveRun] | None = None
    conditions: list[Condition] | None = None
    observedGeneration: int | None = None
