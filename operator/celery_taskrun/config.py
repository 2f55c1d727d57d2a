"""The operator's configuration: connections, limit defaults, bounds.

Read from a YAML file (`--config` or `TASKRUN_CONFIG`) with connection URLs from the
environment (`CELERY_BROKER_URL`, `CELERY_RESULT_BACKEND`), the same variables a
Celery worker reads.  The seed's `task_time_limit` / `task_soft_time_limit` become
`defaults`, and its `task_annotations` become `tasks` (exact names or globs).
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class LimitDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeLimit: float | None = Field(None, gt=0)
    softTimeLimit: float | None = Field(None, gt=0)
    timeout: float | None = Field(None, gt=0)
    expires: float | None = Field(None, gt=0)


class PollDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    initialInterval: float = Field(0.5, gt=0)
    factor: float = Field(1.5, ge=1)
    maxInterval: float = Field(5.0, gt=0)


class OperatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    brokerUrl: str = "redis://127.0.0.1:6379/0"
    resultBackend: str = "redis://127.0.0.1:6379/1"
    # Global limits (the seed's task_time_limit / task_soft_time_limit).
    defaults: LimitDefaults = LimitDefaults()
    # Per task name or glob (the seed's task_annotations); the first match wins.
    tasks: dict[str, LimitDefaults] = {}
    # Task names (globs) a TaskRun may run; empty means any.
    allowedTasks: list[str] = []
    poll: PollDefaults = PollDefaults()
    # Wake up on the Redis backend's publish of every state change.
    wakeups: bool = True
    # etcd caps an object near 1.5 MB: results above this are cut to a preview.
    maxResultBytes: int = Field(256 * 1024, ge=1024)
    maxArgsBytes: int = Field(256 * 1024, ge=1024)
    maxTracebackBytes: int = Field(16 * 1024, ge=256)
    # Deleting a running TaskRun revokes its task; give up after this long (Redis down).
    revokeTimeout: float = Field(5.0, gt=0)
    # A whole worker lost mid-task leaves Celery's record at STARTED for ever: ping the
    # workers of running tasks this often, and call a worker lost after this many
    # unanswered pings in a row (0 turns the check off).
    workerCheckInterval: float = Field(15.0, gt=0)
    workerLostAfter: int = Field(3, ge=0)
    # Status patches in flight at once.
    writeConcurrency: int = Field(16, ge=1)
    metricsHost: str = "127.0.0.1"
    metricsPort: int | None = Field(None, ge=0, le=65535)
    # Namespaces to watch (globs); empty means the whole cluster.
    namespaces: list[str] = []

    @model_validator(mode="after")
    def _refuse_rpc(self) -> OperatorConfig:
        if self.resultBackend.split("://", 1)[0] == "rpc":
            raise ValueError(
                "the rpc:// result backend sends results back to the process that sent the "
                "task and keeps no record, so an operator cannot follow tasks with it: use "
                "Redis (redis://) or a database (db+...://)"
            )
        return self

    def task_defaults(self, task: str) -> LimitDefaults | None:
        for pattern, defaults in self.tasks.items():
            if fnmatch.fnmatchcase(task, pattern):
                return defaults
        return None

    def allows(self, task: str) -> bool:
        return not self.allowedTasks or any(
            fnmatch.fnmatchcase(task, pattern) for pattern in self.allowedTasks
        )


# Settings the environment overrides: a worker reads the same two Celery variables.
ENVIRONMENT = {
    "brokerUrl": "CELERY_BROKER_URL",
    "resultBackend": "CELERY_RESULT_BACKEND",
    "metricsHost": "TASKRUN_METRICS_HOST",
    "metricsPort": "TASKRUN_METRICS_PORT",
}


def load(path: str | None = None, environ: dict[str, str] | None = None) -> OperatorConfig:
    env = dict(os.environ if environ is None else environ)
    path = path or env.get("TASKRUN_CONFIG")
    data: dict[str, Any] = {}
    if path:
        data = yaml.safe_load(Path(path).read_text()) or {}
    for key, var in ENVIRONMENT.items():
        if env.get(var):
            data[key] = env[var]
    return OperatorConfig.model_validate(data)
