"""The TaskRun API: spec and status types, and the vocabulary of phases and reasons.

These pydantic models are the one source of truth: the CRD's schema in
`deploy/crd.yaml` is generated from them (see `crd.py`), and the operator parses
every object it sees through them.  Field names are the contract of DESIGN.md.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from celery_taskrun.api.bounded import deeper_than, values_below

GROUP = "celery.taskrun.dev"
VERSION = "v1alpha1"
KIND = "TaskRun"
PLURAL = "taskruns"
FINALIZER = f"{GROUP}/revoke-on-delete"
# Written (with the finalizer) before a task is sent: the id we are about to send.
INTENT_ANNOTATION = f"{GROUP}/submitting"
# On a finished run (its phase as value), with the finalizer's removal: the operator's
# watch selects runs without it, so finished runs cost it nothing (a takeover lists
# them apart, and never through Kopf).
FINISHED_LABEL = f"{GROUP}/finished"

# Bounds every spec meets (the CRD's schema and admission policy refuse the rest, and
# the operator checks them again for objects that got past an older or edited CRD).
MAX_SECONDS = 365 * 24 * 3600  # any duration: a year
MAX_ARGS_DEPTH = 32  # nesting of args and kwargs
# args and kwargs together: their JSON values (every list, map, string, number, bool and
# null below them), and the UTF-8 bytes of the API server's rendering of them (CEL's
# `format`: about their JSON).  The values bound what an object costs everywhere: the
# API server decodes each on every read, Python spends 60-70 bytes on each, and the
# admission policy's comprehensions cost the API server the square of their count
# (2,048 values on one level: about 25 ms of its time here; see crd.py).
MAX_ARGS_VALUES = 2048
MAX_ARGS_BYTES = 256 * 1024
MAX_NAME_LENGTH = 200
# Celery task and queue names: dotted identifiers and the punctuation brokers accept.
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:@/+-]*$"

Seconds = Annotated[
    float, Field(gt=0, le=MAX_SECONDS, description="Seconds (a positive number, at most a year).")
]


class Phase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    RETRYING = "Retrying"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    TIMED_OUT = "TimedOut"
    REVOKED = "Revoked"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_PHASES


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.TIMED_OUT, Phase.REVOKED})


class Reason(StrEnum):
    """Why a run is in its phase: `status.reason`, and the reason of its conditions."""

    # In flight.
    QUEUED = "Queued"  # sent; no worker has started it (Queued)
    STARTED = "Started"  # a worker runs it (Running)
    PROGRESS = "Progress"  # the task reported a custom state, e.g. PROGRESS (Running)
    RETRY = "Retry"  # the task asked Celery to retry it (Retrying)
    RESUBMITTED = "Resubmitted"  # sent again after a failure, under spec.retries (Retrying)
    # Over a concurrency group's limit: waits, nothing sent, until every group it is in
    # has room (Pending).
    THROTTLED = "Throttled"
    # The backend cannot be read, or the broker take the task: the phase stays, the
    # operator keeps trying (Pending when nothing was sent yet).
    BACKEND_UNAVAILABLE = "BackendUnavailable"
    # Terminal.
    SUCCEEDED = "Succeeded"  # the task returned (Succeeded)
    TASK_ERROR = "TaskError"  # the task raised (Failed)
    SOFT_TIME_LIMIT_EXCEEDED = "SoftTimeLimitExceeded"  # raised at its soft limit (TimedOut)
    TIME_LIMIT_EXCEEDED = "TimeLimitExceeded"  # killed at its hard limit (TimedOut)
    DEADLINE_EXCEEDED = "DeadlineExceeded"  # spec.timeout passed: revoked (TimedOut)
    CANCELLED = "Cancelled"  # spec.cancel, or revoked outside the TaskRun (Revoked)
    EXPIRED = "Expired"  # spec.expires passed before a worker started it (Revoked)
    # The spec cannot run as given: it got past an older CRD, the broker cannot honour
    # it, or its message cannot be encoded (Failed).
    INVALID_SPEC = "InvalidSpec"
    TASK_NOT_ALLOWED = "TaskNotAllowed"  # refused by the operator's policies (Failed)
    WORKER_LOST = "WorkerLost"  # its worker died or went silent while running it (Failed)
    # Its record cannot be read, or vanished after it started: the outcome is unknown
    # (Failed; never resubmitted, it may well have run).
    RESULT_LOST = "ResultLost"
    # The operator failed repeatedly handling the run (a bug): never a hang (Failed).
    INTERNAL_ERROR = "InternalError"


_REASONS = {reason.value: reason for reason in Reason}


def _known_reason(value: object) -> Reason | None:
    return _REASONS.get(value) if isinstance(value, str) else None


# A reason read back from the API server.  Another version of the operator, or anyone
# with rights on the status, may have written one this operator does not know: it reads
# as none rather than failing the whole status, whose task id and times still say how
# to follow an in-flight run.  The schema keeps a plain string (no enum), so the API
# server never refuses a status for a reason it was not told about.
KnownReason = Annotated[
    Reason | None, BeforeValidator(_known_reason), WithJsonSchema({"type": "string"})
]


class _Model(BaseModel):
    # Unknown fields are kept out of the CRD (structural schema prunes them);
    # ignoring them here keeps an older operator working against a newer CRD.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class PollSpec(_Model):
    """How often the operator reads the result backend for this run.

    The defaults are the seed's polling schedule: 0.5 s, x1.5, capped at 5 s.  Wake-ups
    from the Redis backend's publish make most reads unnecessary; polling is the net.
    """

    initialInterval: float | None = Field(
        None, gt=0, le=3600, description="Seconds before the first read (default 0.5)."
    )
    factor: float | None = Field(
        None, ge=1, le=10, description="Each interval is the previous one times this (1.5)."
    )
    maxInterval: float | None = Field(
        None, gt=0, le=3600, description="Seconds between reads at most (default 5)."
    )


class SizeBasedLimits(_Model):
    """Limits computed from the input's size at submission (the seed's dynamic timeout).

    hard limit = clamp(inputBytes / MiB * secondsPerMiB, minSeconds, maxSeconds);
    soft limit = hard limit * softLimitRatio.  Explicit spec limits win over these.
    """

    inputBytes: int = Field(
        ge=0, le=2**50, description="Size of the input the task will process (at most 1 PiB)."
    )
    secondsPerMiB: float = Field(
        60, gt=0, le=86400, description="Hard limit seconds per MiB of input (default 60)."
    )
    minSeconds: float = Field(
        60, gt=0, le=MAX_SECONDS, description="The hard limit at least (default 60)."
    )
    maxSeconds: float = Field(
        3600, gt=0, le=MAX_SECONDS, description="The hard limit at most (default 3600)."
    )
    softLimitRatio: float = Field(
        0.9, gt=0, lt=1, description="The soft limit as a fraction of the hard one (0.9)."
    )


class TaskRunSpec(_Model):  # type: ignore[no-redef]  # pydantic-mypy: clashes with its **kwargs
    """What to run: a Celery task by name, its arguments, and the options it is sent with.

    Every field but `task` is optional.  Once created, only `cancel` may change.
    """

    task: str = Field(
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        pattern=NAME_PATTERN,
        description="Celery task name.",
    )
    args: list[Any] = Field(
        default_factory=list,
        max_length=1000,
        description="The task's positional arguments (JSON values, at most 1000).",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="The task's keyword arguments (at most 256 keys)."
    )
    queue: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        pattern=NAME_PATTERN,
        description="The Celery queue to send to (default: the operator's defaultQueue).",
    )
    priority: int | None = Field(
        None,
        ge=0,
        le=255,
        description="Message priority as the broker reads it: Redis 0 (first) to 9, "
        "RabbitMQ 0-255 (highest first) on a queue declared with x-max-priority (above "
        "it, as its maximum; a plain queue ignores priority).",
    )
    countdown: float | None = Field(
        None, ge=0, le=MAX_SECONDS, description="Seconds to wait before running."
    )
    expires: Seconds | None = Field(None, description="Revoke if not started within N seconds.")
    timeLimit: Seconds | None = Field(None, description="Hard time limit of one execution.")
    softTimeLimit: Seconds | None = Field(None, description="Soft limit, below timeLimit.")
    timeout: Seconds | None = Field(
        None, description="Deadline for the whole run from submission, queueing included."
    )
    sizeBasedLimits: SizeBasedLimits | None = None
    retries: int | None = Field(None, ge=0, le=100, description="Resubmissions after failure.")
    concurrencyKey: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        pattern=NAME_PATTERN,
        description="What the operator's concurrency groups with `per: key` count by: "
        "runs with the same key share the group's limit (e.g. a customer's id).",
    )
    cancel: bool | None = Field(None, description="Revoke the task; cannot be undone.")
    ttlSecondsAfterFinished: int | None = Field(
        None, ge=0, le=MAX_SECONDS, description="Delete the TaskRun this long after it finishes."
    )
    poll: PollSpec | None = None

    @field_validator("args", "kwargs")
    @classmethod
    def _shallow(cls, value: Any) -> Any:
        # The API server stores up to 10,000 levels; Python's JSON codecs stop near 1,000.
        if deeper_than(value, MAX_ARGS_DEPTH):
            raise ValueError(f"nests deeper than {MAX_ARGS_DEPTH} levels")
        return value

    @model_validator(mode="after")
    def _few(self) -> TaskRunSpec:
        if values_below((self.args, self.kwargs), MAX_ARGS_VALUES) > MAX_ARGS_VALUES:
            raise ValueError(
                f"spec.args and spec.kwargs together hold more than {MAX_ARGS_VALUES} values:"
                " pass a reference to the data instead"
            )
        return self


class ErrorInfo(_Model):
    """The failure the task (or the operator) reported."""

    type: str = Field(description="The exception's type name, e.g. ValueError.")
    message: str = Field("", description="The exception's message.")
    traceback: str | None = Field(None, description="The traceback's tail.")


LimitSource = Literal["spec", "sizeBasedLimits", "taskDefault", "globalDefault"]


class EffectiveLimit(_Model):
    """One limit applied to the run, and where it came from."""

    seconds: float = Field(description="The limit in seconds.")
    source: LimitSource = Field(
        description="Where it came from: spec, sizeBasedLimits, taskDefault or globalDefault."
    )


class EffectiveLimits(_Model):
    """The limits the run was sent with, each with its source."""

    timeLimit: EffectiveLimit | None = Field(None, description="The hard time limit applied.")
    softTimeLimit: EffectiveLimit | None = Field(None, description="The soft time limit applied.")
    timeout: EffectiveLimit | None = Field(None, description="The whole run's deadline applied.")
    expires: EffectiveLimit | None = Field(None, description="The expiry applied.")


class Progress(_Model):
    """What the task reported with a custom state (update_state(state="PROGRESS", meta=...))."""

    percent: float | None = Field(None, description="Percent done, from the task's meta.")
    current: float | None = Field(None, description="Units done, from the task's meta.")
    total: float | None = Field(None, description="Units in all, from the task's meta.")
    state: str | None = Field(None, description="The Celery state that carried the progress.")
    info: dict[str, Any] | None = Field(None, description="The task's own progress metadata.")


class AttemptRecord(_Model):
    """An earlier attempt of the run: a submission that ended and was resubmitted."""

    attempt: int = Field(description="Which execution it was.")
    taskId: str = Field(description="Its Celery task id.")
    phase: Phase = Field(description="How it ended.")
    reason: KnownReason = Field(None, description="Why it ended so.")
    message: str | None = Field(None, description="Why it ended so, in a sentence.")
    submittedAt: str | None = Field(None, description="When it was sent (RFC 3339).")
    completedAt: str | None = Field(None, description="When it ended (RFC 3339).")


class Condition(_Model):
    """A condition, as Kubernetes writes them (kstatus, kubectl wait)."""

    type: str = Field(description="The condition's name.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="Why, in one word.")
    message: str = Field("", description="Why, in a sentence.")
    lastTransitionTime: str = Field(description="When the status last changed (RFC 3339).")
    observedGeneration: int | None = Field(
        None, description="The metadata.generation the condition was written for."
    )


class TaskRunStatus(_Model):
    """What the operator saw of the run; written by the operator only."""

    phase: Phase | None = Field(
        None,
        description="Pending, Queued, Running, Retrying, or the terminal Succeeded, Failed, "
        "TimedOut, Revoked.",
    )
    state: str | None = Field(None, description="The raw Celery state.")
    reason: KnownReason = Field(None, description="Why the run is in its phase, in one word.")
    message: str | None = Field(None, description="Why the run is in its phase, in a sentence.")
    taskId: str | None = Field(None, description="The Celery task id: tr-<uid>-<n>.")
    attempt: int | None = Field(None, description="Which execution this is, from 1.")
    worker: str | None = Field(None, description="The hostname of the worker running it.")
    submittedAt: str | None = Field(None, description="When it was first sent (RFC 3339).")
    startedAt: str | None = Field(
        None, description="When the operator first saw it running (RFC 3339)."
    )
    completedAt: str | None = Field(None, description="When it ended (RFC 3339).")
    duration: str | None = Field(None, description="Submission to completion, e.g. 1m3s.")
    progress: Progress | None = None
    result: Any = Field(None, description="The task's return value (or a preview of it).")
    resultTruncated: bool | None = Field(
        None, description="True when result is a preview of a larger result."
    )
    resultBytes: int | None = Field(None, description="Size of the full JSON result.")
    resultKey: str | None = Field(
        None, description="Where the full result is, when status holds a preview: its backend key."
    )
    error: ErrorInfo | None = None
    limits: EffectiveLimits | None = None
    attempts: list[AttemptRecord] | None = Field(None, description="Earlier attempts, newest last.")
    conditions: list[Condition] | None = Field(
        None, description="Succeeded, Finished, and kstatus' Reconciling, Ready and Stalled."
    )
    observedGeneration: int | None = Field(
        None, description="The metadata.generation the status was written for (0: not yet)."
    )
