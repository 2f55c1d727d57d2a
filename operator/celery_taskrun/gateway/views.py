"""The gateway's request and response shapes, and what an API server refusal becomes (pure)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from celery_taskrun.api.model import Phase, TaskRunSpec
from celery_taskrun.clients.errors import KubeError
from celery_taskrun.core.outcomes import finished, phase_of, status_of

API = "/api/v1"
# Kubernetes' names: a namespace is a DNS-1123 label, a TaskRun's name a DNS-1123 subdomain.
NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
NAME_MAX = 253
# What a summary keeps of a message or an error (the full run has the rest).
SUMMARY_TEXT = 300


def unknown_fields(model: type[BaseModel], data: Any, at: str = "") -> list[str]:
    """The fields of `data` below its top level that `model`'s nested models do not
    know, as dotted paths (the top level is `extra="forbid"`'s)."""
    if not isinstance(data, dict):
        return []
    found = []
    for name, field in model.model_fields.items():
        value = data.get(field.alias or name, data.get(name))
        for kind in get_args(field.annotation) or (field.annotation,):
            if isinstance(value, dict) and isinstance(kind, type) and issubclass(kind, BaseModel):
                known = {f.alias or key for key, f in kind.model_fields.items()}
                path = f"{at}{name}"
                found += [f"{path}.{key}" for key in value if key not in known]
                found += unknown_fields(kind, value, f"{path}.")
    return found


class SubmitRequest(TaskRunSpec):
    """A TaskRun spec (validated by the operator's own model), and an optional name.

    Unknown fields are refused rather than dropped: a misspelt limit must not vanish.
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_nested_fields(cls, data: Any) -> Any:
        """Nested objects refuse unknown fields too (the model ignores them, so an
        older operator reads a newer CRD): `poll.initalInterval` must not vanish."""
        unknown = unknown_fields(TaskRunSpec, data)
        if unknown:
            raise ValueError(f"unknown fields: {', '.join(unknown)}")
        return data

    name: str | None = Field(
        None,
        max_length=NAME_MAX,
        pattern=NAME_PATTERN,
        description="The TaskRun's name; default: generated from the task name.",
    )

    def spec(self) -> dict[str, Any]:
        dumped: dict[str, Any] = self.model_dump(
            mode="json", exclude={"name"}, exclude_unset=True, exclude_none=True
        )
        return dumped


class Submitted(BaseModel):
    name: str
    namespace: str
    statusUrl: str
    waitUrl: str
    streamUrl: str


class Problem(BaseModel):
    detail: Any = Field(description="What went wrong, for a person.")


class RunView(BaseModel):
    """A TaskRun as the gateway shows it: the status fields, and `status` itself."""

    model_config = ConfigDict(extra="allow")

    name: str
    namespace: str
    uid: str | None = None
    task: str | None = None
    createdAt: str | None = None
    finished: bool = Field(description="True once the phase is terminal.")
    phase: Phase | None = None
    reason: str | None = None
    message: str | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    spec: dict[str, Any] = Field(default_factory=dict)
    status: dict[str, Any] = Field(default_factory=dict)


class RunList(BaseModel):
    items: list[dict[str, Any]] = Field(description="Run summaries (no result, no traceback).")
    continue_: str | None = Field(None, alias="continue")


class ScheduleList(BaseModel):
    items: list[dict[str, Any]] = Field(
        description="CronTaskRuns: schedule, zone, suspended, active runs, last and next run."
    )
    continue_: str | None = Field(None, alias="continue")


def urls(namespace: str, name: str) -> dict[str, str]:
    base = f"{API}/namespaces/{namespace}/taskruns/{name}"
    return {"statusUrl": base, "waitUrl": f"{base}/wait", "streamUrl": f"{base}/stream"}


def _identity(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    return {
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "uid": meta.get("uid"),
        "task": spec.get("task") if isinstance(spec, Mapping) else None,
        "createdAt": meta.get("creationTimestamp"),
    }


def run_view(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The whole run: identity, `finished`, each status field, `spec` and `status`.

    The status fields appear twice (flat, and under `status`) so a client may read
    `phase` or `status.phase` alike; the identity keys win over anything in a status.
    """
    status = dict(status_of(obj))
    spec = obj.get("spec")
    return {
        **status,
        # Always present, null until the operator writes them.
        **{key: status.get(key) for key in ("phase", "reason", "message", "result", "error")},
        "progress": status.get("progress"),
        **_identity(obj),
        "finished": finished(status),
        "spec": dict(spec) if isinstance(spec, Mapping) else {},
        "status": status,
    }


def _clip(value: Any) -> Any:
    return value[:SUMMARY_TEXT] if isinstance(value, str) else value


def summary(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A run for lists and the namespace's live page: small, whatever the result."""
    status = status_of(obj)
    error = status.get("error")
    short_error = None
    if isinstance(error, Mapping):
        short_error = {"type": _clip(error.get("type")), "message": _clip(error.get("message"))}
    kept = ("phase", "reason", "state", "attempt", "progress", "duration")
    times = ("submittedAt", "startedAt", "completedAt")
    return {
        **{key: status.get(key) for key in (*kept, *times)},
        **_identity(obj),
        "message": _clip(status.get("message")),
        "error": short_error,
        "finished": finished(status),
    }


def _field(obj: Any, key: str) -> Mapping[str, Any]:
    """`obj[key]` when both are mappings (anyone may write a CronTaskRun's status)."""
    value = obj.get(key) if isinstance(obj, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def schedule_summary(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A CronTaskRun for the live page: when it ran, when it runs next, and whether it
    can (its Ready condition)."""
    meta, spec, status = _field(obj, "metadata"), _field(obj, "spec"), _field(obj, "status")
    conditions = status.get("conditions")
    ready: Mapping[str, Any] = next(
        (
            c
            for c in (conditions if isinstance(conditions, list) else [])
            if isinstance(c, Mapping) and c.get("type") == "Ready"
        ),
        {},
    )
    active = status.get("active")
    return {
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "task": _clip(_field(_field(spec, "taskRunTemplate"), "spec").get("task")),
        "schedule": _clip(spec.get("schedule")),
        "timeZone": _clip(spec.get("timeZone") or "UTC"),
        "suspend": bool(spec.get("suspend")),
        "active": len(active) if isinstance(active, list) else 0,
        "lastScheduleTime": status.get("lastScheduleTime"),
        "nextScheduleTime": status.get("nextScheduleTime"),
        "ready": ready.get("status"),
        "reason": _clip(ready.get("reason")),
        "message": _clip(ready.get("message")),
    }


def matches(obj: Mapping[str, Any], phases: Iterable[Phase], task: str | None) -> bool:
    """The list's filters: any of `phases` (none: all), a task name or glob."""
    wanted = set(phases)
    if wanted and phase_of(status_of(obj)) not in wanted:
        return False
    if task:
        spec = obj.get("spec") or {}
        name = str(spec.get("task", "")) if isinstance(spec, Mapping) else ""
        return fnmatch.fnmatchcase(name, task)
    return True


def http_error(error: KubeError, where: str = "body") -> tuple[int, Any]:
    """(HTTP status, detail) for an API server refusal; upstream trouble never leaks.

    `where` is what the caller sent that an "invalid" refers to (`body`, `query`).
    """
    if error.status == 404:
        return 404, error.message or "not found"
    if error.status == 409:
        return 409, error.message or "already exists"
    if error.status in (400, 422):
        # The shape of FastAPI's own 422s, so a client reads one kind of error.
        return 422, [{"loc": [where], "msg": error.message or error.reason, "type": "invalid"}]
    if error.status == 410:
        return 410, "the continue token has expired: list again from the start"
    if error.status == 413:
        return 413, "the TaskRun is too large"
    if error.status == 0 or error.status == 429 or error.status >= 500:
        return 503, "the Kubernetes API is unavailable; try again"
    return 502, "the Kubernetes API refused the gateway; see the gateway's log"
