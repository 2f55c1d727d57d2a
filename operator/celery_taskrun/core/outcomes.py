"""What a TaskRun means to someone waiting on it (pure): finished or not, the exit code
of the CLI, and what each event of the API server's watch means for a waiter.

The CLI (`kubectl-taskrun`) and the gateway share these, so a shell, a pipeline and an
application read one run the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any

from celery_taskrun.api.bodies import TaskRunBody
from celery_taskrun.api.model import Phase


class ExitCode(IntEnum):
    """The CLI's exit codes (DESIGN.md): by outcome, or why there is none."""

    SUCCEEDED = 0
    FAILED = 1
    USAGE = 2  # a usage error, or the API server refused (or could not be reached)
    TIMED_OUT = 3
    REVOKED = 4
    WAIT_RAN_OUT = 124  # the run goes on; 124 is what timeout(1) exits with


_EXIT_BY_PHASE = {
    Phase.SUCCEEDED: ExitCode.SUCCEEDED,
    Phase.FAILED: ExitCode.FAILED,
    Phase.TIMED_OUT: ExitCode.TIMED_OUT,
    Phase.REVOKED: ExitCode.REVOKED,
}


def status_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The object's status, `{}` when the operator has written none (or garbage)."""
    status = obj.get("status")
    return status if isinstance(status, Mapping) else {}


def phase_of(status: Mapping[str, Any]) -> Phase | None:
    """The phase in a status; None when absent or not one of ours."""
    try:
        return Phase(str(status.get("phase")))
    except ValueError:
        return None


def finished(status: Mapping[str, Any]) -> bool:
    phase = phase_of(status)
    return phase is not None and phase.terminal


def exit_code(status: Mapping[str, Any]) -> ExitCode:
    """The exit code for a run in this status; a run in flight is a wait that ran out."""
    phase = phase_of(status)
    return _EXIT_BY_PHASE.get(phase, ExitCode.WAIT_RAN_OUT) if phase else ExitCode.WAIT_RAN_OUT


class Step(Enum):
    """What a waiter does with one watch event."""

    UPDATE = "update"  # a new version of the object: look at it
    PROGRESS = "progress"  # nothing to look at, but resume the watch from here
    GONE = "gone"  # deleted: there will be no outcome
    RESYNC = "resync"  # the watch's resourceVersion expired: read the object again


@dataclass(frozen=True)
class Verdict:
    step: Step
    obj: TaskRunBody | None = None
    resource_version: str | None = None


class WatchError(Exception):
    """The watch sent an error other than "expired", or something not an event."""


# HTTP 410 Gone: the resourceVersion we watch from is older than the server keeps.
_EXPIRED = 410


def _resource_version(obj: Mapping[str, Any]) -> str | None:
    meta = obj.get("metadata")
    version = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    return version if isinstance(version, str) else None


def interpret(event: Any) -> Verdict:
    """The meaning of one decoded watch event for someone following one object."""
    if not isinstance(event, Mapping) or not isinstance(event.get("object"), Mapping):
        raise WatchError("the watch sent something that is not an event")
    kind, obj = event.get("type"), event["object"]
    if kind in ("ADDED", "MODIFIED"):
        return Verdict(Step.UPDATE, obj, _resource_version(obj))
    if kind == "DELETED":
        return Verdict(Step.GONE, obj, _resource_version(obj))
    if kind == "BOOKMARK":
        return Verdict(Step.PROGRESS, None, _resource_version(obj))
    if kind == "ERROR" and obj.get("code") == _EXPIRED:
        return Verdict(Step.RESYNC)
    message = obj.get("message") if kind == "ERROR" else f"unknown event type {kind!r}"
    raise WatchError(str(message)[:300])
