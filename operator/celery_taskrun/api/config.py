"""The operator's configuration: connections, limit defaults, bounds.

Read (by `config_file.load`) from a YAML file with connection URLs from the
environment, the same variables a Celery worker reads.  The seed's
`task_time_limit` / `task_soft_time_limit` become `defaults`, and its
`task_annotations` become `tasks` (exact names or globs).
"""

from __future__ import annotations

import fnmatch
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from celery_taskrun.api.model import MAX_SECONDS

MIB = 1024 * 1024


# Settings the environment overrides: a worker reads the same two Celery variables.
ENVIRONMENT = {
    "brokerUrl": "CELERY_BROKER_URL",
    "resultBackend": "CELERY_RESULT_BACKEND",
    "metricsHost": "TASKRUN_METRICS_HOST",
    "metricsPort": "TASKRUN_METRICS_PORT",
    "leaseName": "TASKRUN_LEASE_NAME",
    "leaseNamespace": "POD_NAMESPACE",
}


class LimitDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeLimit: float | None = Field(
        None, gt=0, le=MAX_SECONDS, description="Hard time limit of one execution, in seconds."
    )
    softTimeLimit: float | None = Field(
        None,
        gt=0,
        le=MAX_SECONDS,
        description="Soft time limit of one execution, in seconds; must be below timeLimit.",
    )
    timeout: float | None = Field(
        None,
        gt=0,
        le=MAX_SECONDS,
        description="Deadline of the whole run from its first submission, in seconds.",
    )
    expires: float | None = Field(
        None,
        gt=0,
        le=MAX_SECONDS,
        description="Revoke the task if no worker starts it within this many seconds.",
    )


class PollDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    initialInterval: float = Field(
        0.5, gt=0, le=3600, description="Seconds before the first read of a run's backend record."
    )
    factor: float = Field(1.5, ge=1, le=10, description="Each wait is the previous one times this.")
    maxInterval: float = Field(
        5.0, gt=0, le=3600, description="Longest wait between reads, in seconds."
    )


class Policy(BaseModel):
    """Who may run what: TaskRuns in these namespaces may run these tasks on these queues."""

    model_config = ConfigDict(extra="forbid")

    namespaces: list[str] = Field(
        min_length=1, description="Namespaces (globs) this policy covers."
    )
    tasks: list[str] = Field(
        min_length=1,
        description="Task names (globs) they may run; Celery's built-ins (celery.*) only "
        "when a pattern starting with `celery.` names them.",
    )
    queues: list[str] = Field(["*"], min_length=1, description="Queues (globs) they may send to.")


class Per(StrEnum):
    """What a concurrency group's limit counts in."""

    CLUSTER = "cluster"  # every run the group matches, together
    NAMESPACE = "namespace"  # each namespace's runs on their own
    KEY = "key"  # the runs of each distinct spec.concurrencyKey on their own


class ConcurrencyGroup(BaseModel):
    """At most `limit` runs of these tasks, namespaces and queues in flight at once."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$",
        description="The group's name, as messages, Events and metrics give it.",
    )
    tasks: list[str] = Field(["*"], min_length=1, description="Task names (globs) it covers.")
    namespaces: list[str] = Field(["*"], min_length=1, description="Namespaces (globs) it covers.")
    queues: list[str] = Field(
        ["*"],
        min_length=1,
        description="Queues (globs) it covers; a run without spec.queue is on defaultQueue.",
    )
    limit: int = Field(ge=1, le=1_000_000, description="Runs in flight at once, at most.")
    per: Per = Field(
        Per.CLUSTER,
        description="What the limit counts in: `cluster` (all the group's runs together), "
        "`namespace` (each namespace's), or `key` (each distinct spec.concurrencyKey's; runs "
        "without one share the empty key).",
    )


class EventPolicy(StrEnum):
    """Which status changes post a core/v1 Event on their TaskRun."""

    TRANSITIONS = "transitions"  # every phase and reason written
    OUTCOMES = "outcomes"  # only each run's end, and every warning


def globbed(patterns: list[str]) -> bool:
    """Whether any namespace pattern is a glob rather than a name."""
    return any(set(p) & set("*?[") for p in patterns)


class OperatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    brokerUrl: str = Field(
        "redis://127.0.0.1:6379/0", description="The Celery broker the operator sends tasks to."
    )
    resultBackend: str = Field(
        "redis://127.0.0.1:6379/1",
        description="The Celery result backend the operator reads task states from: Redis "
        "(redis://) or a database (db+postgresql://..., db+sqlite:///...); rpc:// is refused.",
    )
    defaults: LimitDefaults = Field(
        LimitDefaults(),
        description="Global limits of every task (the seed's task_time_limit and "
        "task_soft_time_limit); a TaskRun's spec overrides them.",
    )
    tasks: dict[str, LimitDefaults] = Field(
        {},
        description="Limits per task name or glob (the seed's task_annotations), over "
        "`defaults`; the first matching pattern wins.",
    )
    allowedTasks: list[str] = Field(
        [],
        description="Task names (globs) any TaskRun may run, a global shorthand over "
        "`policies`; empty allows any. Others end Failed / TaskNotAllowed.",
    )
    ttlSecondsAfterFinished: int | None = Field(
        None,
        ge=0,
        le=MAX_SECONDS,
        description="Delete finished TaskRuns this long after they end, unless their spec "
        "says otherwise, or Argo CD or Flux manages them (they would apply the run again).",
    )
    successfulRunsHistoryLimit: int | None = Field(
        1000,
        ge=0,
        description="Keep the newest this many succeeded TaskRuns of each namespace (or of "
        "each task within a namespace, historyLimitsPer) and delete older ones; never one "
        "Argo CD or Flux manages. Unset: no limit.",
    )
    failedRunsHistoryLimit: int | None = Field(
        1000,
        ge=0,
        description="As successfulRunsHistoryLimit, for runs that ended otherwise.",
    )
    historyLimitsPer: Literal["namespace", "task"] = Field(
        "namespace",
        description="What the history limits count in: a namespace, or a task name within "
        "a namespace.",
    )
    policies: list[Policy] = Field(
        [],
        description="Who may run what, per namespace: a TaskRun is allowed when a policy "
        "matching its namespace allows both its task and its queue. Empty: any namespace may "
        "run any task on any queue, but for Celery's built-ins (celery.*), refused unless a "
        "policy names them. Refused runs end Failed / TaskNotAllowed and nothing is sent.",
    )
    concurrency: list[ConcurrencyGroup] = Field(
        [],
        description="Concurrency limits: a run counts against every group whose tasks, "
        "namespaces and queues all match it, from its send to its end. A run that would "
        "take any of them over its limit is not sent: it stays Pending / Throttled until "
        "every one has room (all or none), waiting runs going in order of priority (as the "
        "broker reads it), then creation. Its timeout counts the wait.",
    )
    defaultQueue: str = Field(
        "celery",
        min_length=1,
        description="The queue of a TaskRun without spec.queue (Celery's task_default_queue), "
        "as policies see it.",
    )
    queueMaxPriority: int | None = Field(
        None,
        ge=1,
        le=255,
        description="RabbitMQ only: the x-max-priority of a queue the operator declares, "
        "which it does only for a queue that does not exist yet (it checks first, and "
        "never declares one again with other arguments, which RabbitMQ refuses). Set it "
        "to the workers' task_queue_max_priority so that whoever declares a queue first "
        "declares it alike. Unset: queues are declared plain, as Celery's defaults do, "
        "and RabbitMQ ignores priority on them.",
    )
    messageExpires: float = Field(
        86400.0,
        ge=1,
        le=MAX_SECONDS,
        description="Every task message expires this long after its countdown, unless the run's "
        "expires or timeout ends it sooner, so a cancelled run never runs later even after "
        "result_expires drops its revoke mark; a message still queued then ends its run "
        "Revoked / Expired.",
    )
    leaseName: str = Field(
        "celery-taskrun-operator",
        min_length=1,
        description="The coordination.k8s.io Lease whose holder is the one operator that acts "
        "(leader election); operators with the same lease never both act.",
    )
    leaseNamespace: str | None = Field(
        None,
        description="The Lease's namespace; default: the pod's own (POD_NAMESPACE or its "
        "service account's), else celery-taskrun-system.",
    )
    leaseDurationSeconds: float = Field(
        15.0, ge=2, le=300, description="How long a Lease not renewed still holds others off."
    )
    leaseRenewDeadlineSeconds: float = Field(
        10.0,
        ge=1,
        le=300,
        description="A leader that could not renew for this long stops acting; below "
        "leaseDurationSeconds, so it stops before another may take over.",
    )
    leaseRetryPeriodSeconds: float = Field(
        2.0, gt=0, le=60, description="How often the Lease is renewed or tried."
    )
    poll: PollDefaults = Field(
        PollDefaults(),
        description="The backoff between reads of a run's backend record (the seed's 0.5 s, "
        "x1.5, capped at 5 s); a TaskRun's spec.poll overrides it.",
    )
    wakeups: bool = Field(
        True,
        description="Wake up on the Redis backend's publish of every state change, so "
        "status follows a task within milliseconds rather than at the next read.",
    )
    # etcd caps an object near 1.5 MB.
    maxResultBytes: int = Field(
        16 * 1024,
        ge=1024,
        le=MIB,
        description="Results larger than this (serialized) are cut to a preview, with "
        "status.resultTruncated true and status.resultKey naming the full result in the "
        "backend. 16 KiB keeps 10,000 finished runs near 300 MB of etcd's 2 GiB quota.",
    )
    maxArgsBytes: int = Field(
        256 * 1024,
        ge=1024,
        le=MIB,
        description="Largest spec.args and spec.kwargs together, serialized; a larger run "
        "ends Failed / InvalidSpec.",
    )
    maxTracebackBytes: int = Field(
        16 * 1024,
        ge=256,
        le=256 * 1024,
        description="The tail of a failure's traceback kept in status.error.",
    )
    maxRecordBytes: int = Field(
        2 * MIB,
        ge=64 * 1024,
        le=64 * MIB,
        description="Result-backend records larger than this are never loaded whole: their "
        "head and tail give the outcome, and the result becomes a preview.",
    )
    apiTimeout: float = Field(
        10.0, gt=0, le=300, description="Seconds before a call to the API server gives up."
    )
    backendTimeout: float = Field(
        5.0, gt=0, le=300, description="Seconds before a read of the result backend gives up."
    )
    brokerTimeout: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Seconds before a call to the broker (send, ping, inspect) gives up.",
    )
    livenessTimeout: float = Field(
        30.0,
        ge=5,
        le=3600,
        description="The liveness endpoint fails when the tracker's loop has not turned for "
        "this many seconds.",
    )
    revokeTimeout: float = Field(
        5.0,
        gt=0,
        le=300,
        description="Seconds to try revoking the task of a deleted running TaskRun (Redis "
        "down) before giving up with a RevokeFailed warning event.",
    )
    # A whole worker lost mid-task leaves Celery's record at STARTED for ever.
    workerCheckInterval: float = Field(
        15.0, gt=0, description="Seconds between pings of the workers of running tasks."
    )
    workerLostAfter: int = Field(
        3,
        ge=0,
        description="Unanswered pings in a row after which a worker is lost and its runs end "
        "Failed / WorkerLost; 0 turns the check off.",
    )
    writeConcurrency: int = Field(16, ge=1, description="Status patches in flight at once.")
    events: EventPolicy = Field(
        EventPolicy.TRANSITIONS,
        description="Which status changes post an Event (`kubectl describe`, dashboards): "
        "`transitions`, every phase and reason written (a fast task's coalesced phases "
        "are never written, so a trivial run posts one); `outcomes`, only each run's end "
        "and every warning (a backend unavailable, a failure, a timeout, a revoke).  Each "
        "Event is one more API write.",
    )
    statusHoldSeconds: float = Field(
        0.5,
        ge=0,
        le=10,
        description="A status in flight (Pending, Queued, Running, progress) is written this "
        "long after it arises unless newer news of the run makes it obsolete first: a fast "
        "task's intermediate phases cost no writes, a queued or long run still shows them. An "
        "end is written at once. 0 writes every change.",
    )
    metricsHost: str = Field(
        "127.0.0.1", description="Address the Prometheus metrics listener binds."
    )
    metricsPort: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port of the Prometheus metrics listener (path /metrics); unset serves "
        "no metrics.",
    )
    namespaces: list[str] = Field(
        [],
        description="Namespaces whose TaskRuns to handle; empty: the whole cluster.  Names "
        "are watched one by one; any glob makes the watch cluster-wide (filtered), which "
        "needs cluster-wide read of taskruns.",
    )

    @model_validator(mode="after")
    def _unique_groups(self) -> OperatorConfig:
        names = [group.name for group in self.concurrency]
        if len(names) != len(set(names)):
            raise ValueError("concurrency: each group needs a name of its own")
        return self

    @model_validator(mode="after")
    def _renew_before_expiry(self) -> OperatorConfig:
        if self.leaseRenewDeadlineSeconds >= self.leaseDurationSeconds:
            raise ValueError(
                "leaseRenewDeadlineSeconds must be below leaseDurationSeconds: a leader that "
                "cannot renew must stop acting before another operator may take over"
            )
        return self

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
