"""deploy/argocd/health.lua (TaskRun) and crontaskrun-health.lua, run in a real Lua 5.1
(lupa) as Argo CD runs them.

Argo CD evaluates health scripts with gopher-lua, a Lua 5.1, with only the base,
table, string and math libraries open and the resource in the global `obj`.  The
statuses fed to it are built by the operator's own named changes, so the conditions are
exactly the ones the operator writes.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from celery_taskrun.api.cron import ActiveRun, CronTaskRunStatus
from celery_taskrun.api.model import (
    Condition,
    EffectiveLimits,
    Phase,
    Progress,
    Reason,
    TaskRunStatus,
)
from celery_taskrun.core.changes import (
    Report,
    backend_unavailable,
    failed,
    pending,
    progressed,
    queued,
    retrying,
    revoked,
    running,
    succeeded,
    timed_out,
)

lua51 = pytest.importorskip("lupa.lua51", reason="lupa (PyPI) embeds Lua: pip install lupa")

REPO = Path(__file__).resolve().parents[2]
HEALTH_LUA = REPO / "deploy" / "argocd" / "health.lua"
CRON_HEALTH_LUA = REPO / "deploy" / "argocd" / "crontaskrun-health.lua"
README = REPO / "deploy" / "argocd" / "README.md"
CM_KEY = "resource.customizations.health.celery.taskrun.dev_TaskRun"
CRON_CM_KEY = "resource.customizations.health.celery.taskrun.dev_CronTaskRun"
NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
# What gopher-lua opens for Argo CD's health scripts; everything else is removed.
ARGO_LIBS = {"_G", "_VERSION", "table", "string", "math"}
BASE_FUNCTIONS = {
    "assert", "error", "ipairs", "next", "pairs", "pcall", "print", "rawequal", "rawget",
    "rawset", "select", "setmetatable", "getmetatable", "tonumber", "tostring", "type",
    "unpack", "xpcall",
}  # fmt: skip


def to_lua(runtime: Any, value: Any) -> Any:
    """JSON -> Lua as Argo CD converts it: objects and arrays become tables, null nil."""
    if isinstance(value, dict):
        return runtime.table_from({k: to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([to_lua(runtime, v) for v in value])
    return value


def health(obj: dict[str, Any], script: Path = HEALTH_LUA) -> dict[str, str]:
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    g = runtime.globals()
    for name in list(g.keys()):
        if name not in ARGO_LIBS | BASE_FUNCTIONS:
            g[name] = None
    g.obj = to_lua(runtime, obj)
    result = runtime.execute(script.read_text())
    assert result is not None, f"{script.name} must return a table"
    return {str(k): str(v) for k, v in result.items()}


def taskrun(status: TaskRunStatus | None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "celery.taskrun.dev/v1alpha1",
        "kind": "TaskRun",
        "metadata": {"name": "run", "namespace": "default", "generation": generation},
        "spec": {"task": "taskrun_workers.tasks.calculate_sum", "args": [[1, 2]]},
    }
    if status is not None:
        obj["status"] = status.model_dump(mode="json", exclude_none=True)
    return obj


BASE = TaskRunStatus(taskId="3f1c", attempt=1, submittedAt="2026-01-01T11:59:00Z")
AT: dict[str, Any] = {"generation": 1, "now": NOW}
RUNNING = running(BASE, "task is running", Report("STARTED"), **AT)


def success(message: str, result: Any = None) -> TaskRunStatus:
    return succeeded(
        BASE,
        message,
        Report("SUCCESS"),
        result=result,
        truncated=None,
        size=None,
        key=None,
        progress=None,
        **AT,
    )


CASES: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "no status",
        taskrun(None),
        "Progressing",
        "Waiting for the operator to accept the TaskRun",
    ),
    (
        "empty status",
        {**taskrun(None), "status": {}},
        "Progressing",
        "Waiting for the operator to accept the TaskRun",
    ),
    (
        "the schema's default status",
        {**taskrun(None), "status": {"observedGeneration": 0}},
        "Progressing",
        "Waiting for the operator to accept the TaskRun",
    ),
    (
        "pending",
        taskrun(
            pending(
                BASE,
                Reason.BACKEND_UNAVAILABLE,
                "cannot send the task yet: broker down",
                limits=EffectiveLimits(),
                **AT,
            )
        ),
        "Progressing",
        "Pending (BackendUnavailable): cannot send the task yet: broker down",
    ),
    (
        "queued",
        taskrun(queued(BASE, "waiting for a worker", **AT)),
        "Progressing",
        "Queued (Queued): waiting for a worker",
    ),
    (
        "running with progress",
        taskrun(
            progressed(
                BASE,
                "task reports PROGRESS (42.5%)",
                Report("PROGRESS"),
                Progress(percent=42.5, current=17, total=40, state="PROGRESS"),
                **AT,
            )
        ),
        "Progressing",
        "Running (Progress), 42%: task reports PROGRESS (42.5%)",
    ),
    (
        "retrying",
        taskrun(retrying(BASE, "the task asked Celery to retry it", Report("RETRY"), **AT)),
        "Progressing",
        "Retrying (Retry): the task asked Celery to retry it",
    ),
    (
        "backend unavailable (not terminal)",
        taskrun(
            backend_unavailable(
                RUNNING, "result backend unreachable: Connection refused; retrying", **AT
            )
        ),
        "Progressing",
        "Running (BackendUnavailable): result backend unreachable: Connection refused; retrying",
    ),
    (
        "succeeded",
        taskrun(success("task succeeded", result=3)),
        "Healthy",
        "task succeeded",
    ),
    (
        "failed",
        taskrun(failed(BASE, Reason.TASK_ERROR, "ValueError: bad input", Report("FAILURE"), **AT)),
        "Degraded",
        "ValueError: bad input",
    ),
    (
        "timed out: hard limit",
        taskrun(
            timed_out(
                BASE,
                Reason.TIME_LIMIT_EXCEEDED,
                "the worker killed the task at its hard time limit (10s)",
                **AT,
            )
        ),
        "Degraded",
        "the worker killed the task at its hard time limit (10s)",
    ),
    (
        "timed out: deadline",
        taskrun(timed_out(BASE, Reason.DEADLINE_EXCEEDED, "", **AT)),
        "Degraded",
        "DeadlineExceeded",
    ),
    (
        "revoked",
        taskrun(revoked(BASE, Reason.CANCELLED, "cancelled by spec.cancel", **AT)),
        "Degraded",
        "cancelled by spec.cancel",
    ),
    (
        "invalid spec",
        taskrun(failed(BASE, Reason.INVALID_SPEC, "spec.task is not registered", **AT)),
        "Degraded",
        "spec.task is not registered",
    ),
]


@pytest.mark.parametrize(
    ("obj", "expected", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_health(obj: dict[str, Any], expected: str, message: str) -> None:
    assert health(obj) == {"status": expected, "message": message}


def test_success_after_a_cancel_edit_stays_healthy() -> None:
    # spec.cancel on a finished run bumps the generation; the outcome does not change.
    done = success("task succeeded")
    assert health(taskrun(done, generation=2))["status"] == "Healthy"


def test_every_phase_maps_to_one_of_three() -> None:
    one_of_each = [
        pending(BASE, Reason.BACKEND_UNAVAILABLE, "x", limits=EffectiveLimits(), **AT),
        queued(BASE, "x", **AT),
        RUNNING,
        retrying(BASE, "x", Report("RETRY"), **AT),
        success("x"),
        failed(BASE, Reason.TASK_ERROR, "x", **AT),
        timed_out(BASE, Reason.DEADLINE_EXCEEDED, "x", **AT),
        revoked(BASE, Reason.CANCELLED, "x", **AT),
    ]
    seen = {status.phase: health(taskrun(status))["status"] for status in one_of_each}
    assert seen == {
        Phase.PENDING: "Progressing",
        Phase.QUEUED: "Progressing",
        Phase.RUNNING: "Progressing",
        Phase.RETRYING: "Progressing",
        Phase.SUCCEEDED: "Healthy",
        Phase.FAILED: "Degraded",
        Phase.TIMED_OUT: "Degraded",
        Phase.REVOKED: "Degraded",
    }


def test_readme_snippet_is_health_lua_verbatim() -> None:
    text = README.read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block is not None, "README.md lost its argocd-cm block"
    config_map = yaml.safe_load(block.group(1))
    assert config_map["metadata"]["name"] == "argocd-cm"
    assert config_map["data"][CM_KEY] == HEALTH_LUA.read_text()
    assert config_map["data"][CRON_CM_KEY] == CRON_HEALTH_LUA.read_text()


# -- CronTaskRun ---------------------------------------------------------------------


def cron(
    status: CronTaskRunStatus | None, generation: int = 1, suspend: bool = False
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "celery.taskrun.dev/v1alpha1",
        "kind": "CronTaskRun",
        "metadata": {"name": "nightly", "namespace": "default", "generation": generation},
        "spec": {
            "schedule": "@daily",
            "suspend": suspend,
            "taskRunTemplate": {"spec": {"task": "taskrun_workers.tasks.calculate_sum"}},
        },
    }
    if status is not None:
        obj["status"] = status.model_dump(mode="json", exclude_none=True)
    return obj


def ready(
    status: Literal["True", "False"], reason: str, message: str = "", generation: int = 1
) -> Condition:
    return Condition(
        type="Ready",
        status=status,
        reason=reason,
        message=message,
        lastTransitionTime="2026-01-01T00:00:00Z",
        observedGeneration=generation,
    )


SCHEDULED = CronTaskRunStatus(
    observedGeneration=1,
    conditions=[ready("True", "Scheduled")],
    nextScheduleTime="2026-01-02T00:00:00Z",
    active=[ActiveRun(name="nightly-1767225600", uid="u")],
)
REFUSED = CronTaskRunStatus(
    observedGeneration=1,
    conditions=[ready("False", "InvalidSchedule", "unknown time zone 'Mars/Olympus_Mons'")],
)
WAITING = "Waiting for the operator to read the CronTaskRun's spec"
CRON_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("no status", cron(None), "Progressing", WAITING),
    (
        "the schema's default status",
        cron(CronTaskRunStatus(observedGeneration=0)),
        "Progressing",
        WAITING,
    ),
    ("an edit not yet read", cron(SCHEDULED, generation=2), "Progressing", WAITING),
    (
        "suspended, not yet read",
        cron(SCHEDULED, generation=2, suspend=True),
        "Progressing",
        WAITING,
    ),
    (
        "observed, no Ready yet",
        cron(CronTaskRunStatus(observedGeneration=1)),
        "Progressing",
        "Waiting for the operator to accept the CronTaskRun",
    ),
    ("scheduled", cron(SCHEDULED), "Healthy", "Next run at 2026-01-02T00:00:00Z"),
    (
        "scheduled, no next time",
        cron(CronTaskRunStatus(observedGeneration=1, conditions=[ready("True", "Scheduled")])),
        "Healthy",
        "Scheduled",
    ),
    ("suspended", cron(SCHEDULED, suspend=True), "Suspended", "Suspended: no slot makes a run"),
    ("refused", cron(REFUSED), "Degraded", "unknown time zone 'Mars/Olympus_Mons'"),
    (
        "refused and suspended",
        cron(REFUSED, suspend=True),
        "Degraded",
        "unknown time zone 'Mars/Olympus_Mons'",
    ),
]


@pytest.mark.parametrize(
    ("obj", "expected", "message"), [c[1:] for c in CRON_CASES], ids=[c[0] for c in CRON_CASES]
)
def test_cron_health(obj: dict[str, Any], expected: str, message: str) -> None:
    assert health(obj, CRON_HEALTH_LUA) == {"status": expected, "message": message}
