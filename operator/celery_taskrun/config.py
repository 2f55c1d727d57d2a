"""The operator's configuration: connections, limit defaults, bounds.

Read (by `config_file.load`) from a YAML file with connection URLs from the
environment, the same variables a Celery worker reads.  The seed's
`task_time_limit` / `task_soft_time_limit` become `defaults`, and its
`task_annotations` become `tasks` (exact names or globs).
"""

from __future__ import annotations

import fnmatch

from pydantic import BaseModel, ConfigDict, Field, model_validator

MIB = 1024 * 1024


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
    maxResultBytes: int = Field(256 * 1024, ge=1024, le=MIB)
    maxArgsBytes: int = Field(256 * 1024, ge=1024, le=MIB)
    maxTracebackBytes: int = Field(16 * 1024, ge=256, le=256 * 1024)
    # Backend records larger than this are never loaded whole: their head and tail give
    # the outcome, and the result becomes a preview.
    maxRecordBytes: int = Field(2 * MIB, ge=64 * 1024, le=64 * MIB)
    # Every call to the API server, the result backend and the broker gives up after
    # these many seconds (and is tried again on the run's schedule).
    apiTimeout: float = Field(10.0, gt=0, le=300)
    backendTimeout: float = Field(5.0, gt=0, le=300)
    brokerTimeout: float = Field(10.0, gt=0, le=300)
    # Deleting a running TaskRun revokes its task; give up after this long (Redis down).
    revokeTimeout: float = Field(5.0, gt=0, le=300)
    # The liveness probe fails when the tracker's loop has not turned for this long.
    livenessTimeout: float = Field(30.0, ge=5, le=3600)
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
