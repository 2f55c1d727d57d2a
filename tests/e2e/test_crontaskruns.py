"""The CronTaskRun API on the real API server, no operator: what `kubectl apply`
admits and refuses (its schedule's shape, its zone's form, a template a TaskRun would
refuse), the defaults it fills in, that a template may be edited, `kubectl explain`,
and the printer columns."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from taskrun_dev.stack import Stack

from support import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def namespace(make_namespace: Callable[[str], str]) -> str:
    """A namespace no operator serves (the shared one serves `t-*`): the API alone."""
    return make_namespace("api-only")


Body = dict[str, Any]


def manifest(namespace: str, name: str = "nightly", **spec: Any) -> Body:
    return {
        "apiVersion": "celery.taskrun.dev/v1alpha1",
        "kind": "CronTaskRun",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "schedule": "0 3 * * *",
            "taskRunTemplate": {"spec": {"task": "taskrun_workers.tasks.calculate_sum"}},
            **spec,
        },
    }


def template(**spec: Any) -> Body:
    return {"spec": {"task": "taskrun_workers.tasks.calculate_sum", **spec}}


def apply(stack: Stack, body: Body, *extra: str) -> Any:
    # Server-side: a client-side apply keeps the whole manifest in an annotation, whose
    # own 256 KiB limit would refuse big arguments before the admission policy could.
    return stack.kubectl("apply", "--server-side", *extra, "-f", "-", input=json.dumps(body))


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("spec", "refusal"),
    [
        ({"schedule": "* * * * * *"}, "spec.schedule must be 5 cron fields"),
        ({"schedule": "0 9 * *"}, "spec.schedule must be 5 cron fields"),
        ({"schedule": "CRON_TZ=Europe/Berlin 0 9 * * *"}, "the time zone goes in spec.timeZone"),
        ({"schedule": "@reboot"}, "spec.schedule must be 5 cron fields"),
        ({"schedule": "@every 1.5s"}, "spec.schedule must be 5 cron fields"),
        ({"schedule": "@every 0s"}, "@every needs a period of at least 1s"),
        ({"schedule": "x" * 300}, "spec.schedule: Too long"),
        ({"timeZone": "../../etc/passwd"}, "spec.timeZone in body should match"),
        ({"timeZone": "Europe Berlin"}, "spec.timeZone in body should match"),
        (
            {"concurrencyPolicy": "Sometimes"},
            'spec.concurrencyPolicy: Unsupported value: "Sometimes"',
        ),
        ({"missedRuns": "Every"}, 'spec.missedRuns: Unsupported value: "Every"'),
        ({"startingDeadlineSeconds": 0}, "spec.startingDeadlineSeconds"),
        ({"successfulRunsHistoryLimit": 101}, "less than or equal to 100"),
        ({"failedRunsHistoryLimit": -1}, "greater than or equal to 0"),
        ({"taskRunTemplate": {"spec": {}}}, "spec.taskRunTemplate.spec.task: Required value"),
        (
            {"taskRunTemplate": template(softTimeLimit=60, timeLimit=60)},
            "spec.softTimeLimit must be below spec.timeLimit",
        ),
        ({"taskRunTemplate": template(task="a b; rm -rf")}, "spec.taskRunTemplate.spec.task"),
        ({"taskRunTemplate": template(timeout=1e12)}, "less than or equal to 31536000"),
        (
            {"taskRunTemplate": template(args=[nested(40)])},
            "spec.taskRunTemplate.spec.args or spec.taskRunTemplate.spec.kwargs nests deeper"
            " than 32 levels",
        ),
        (
            {"taskRunTemplate": template(args=["x" * 200_000, "y" * 100_000])},
            "spec.taskRunTemplate.spec.args and spec.taskRunTemplate.spec.kwargs together exceed",
        ),
    ],
    ids=lambda value: json.dumps(value)[:40] if isinstance(value, dict) else "",
)
def test_kubectl_apply_refuses(stack: Stack, namespace: str, spec: Body, refusal: str) -> None:
    body = manifest(namespace, **spec)
    # The admission policies act once the API server has read them (at the stack's
    # start, with the CRDs): until then an args refusal may not come yet.
    result = wait_for(
        lambda: (r := apply(stack, body, "--dry-run=server")).returncode != 0 and r,
        timeout=15,
        what=f"kubectl apply to refuse {json.dumps(spec)[:80]}",
        interval=0.2,
    )
    assert refusal in result.stderr, result.stderr


@pytest.mark.parametrize(
    "schedule",
    ["*/5 * * * *", "0 9 * * MON-FRI", "0 0 1 jan,jul *", "@daily", "@HOURLY", "@every 90",
     "@every 1h30m", "@every 30s"],
)  # fmt: skip
def test_kubectl_apply_admits(stack: Stack, namespace: str, schedule: str) -> None:
    result = apply(stack, manifest(namespace, schedule=schedule), "--dry-run=server")
    assert result.returncode == 0, result.stderr


def test_only_the_databases_zones_are_admitted(stack: Stack, namespace: str) -> None:
    # The pinned database's zones (tzdata), the ones the operator knows.
    for zone in ("America/Argentina/Buenos_Aires", "Etc/GMT+5", "US/Eastern", "UTC"):
        result = apply(stack, manifest(namespace, timeZone=zone), "--dry-run=server")
        assert result.returncode == 0, result.stderr
    for zone in ("Mars/Olympus_Mons", "Europe/Atlantis", "localtime"):
        result = apply(stack, manifest(namespace, timeZone=zone), "--dry-run=server")
        assert result.returncode != 0
        assert "spec.timeZone is not a zone of the IANA time zone database" in result.stderr


def test_the_contracts_defaults_and_an_unobserved_status(stack: Stack, namespace: str) -> None:
    assert apply(stack, manifest(namespace)).returncode == 0
    stored = stack.kubectl_json("get", "crontaskrun", "nightly", "-n", namespace)
    assert stored["spec"] == {
        "schedule": "0 3 * * *",
        "timeZone": "UTC",
        "concurrencyPolicy": "Allow",
        "missedRuns": "Latest",
        "suspend": False,
        "successfulRunsHistoryLimit": 3,
        "failedRunsHistoryLimit": 1,
        "taskRunTemplate": {"spec": {"task": "taskrun_workers.tasks.calculate_sum"}},
    }
    assert stored["status"] == {"observedGeneration": 0}
    short = stack.kubectl_json("get", "ctr", "nightly", "-n", namespace)
    assert short["metadata"]["uid"] == stored["metadata"]["uid"]


def test_a_template_may_be_edited_within_a_taskruns_bounds(stack: Stack, namespace: str) -> None:
    body = manifest(namespace, taskRunTemplate=template(args=[[1, 2]], timeLimit=60))
    assert apply(stack, body).returncode == 0
    edited = copy.deepcopy(body)
    edited["spec"]["taskRunTemplate"] = template(args=[[3]], kwargs={"k": 1}, cancel=False)
    edited["spec"]["schedule"] = "@every 10m"
    result = apply(stack, edited)
    assert result.returncode == 0, result.stderr
    stored = stack.kubectl_json("get", "ctr", "nightly", "-n", namespace)
    assert stored["spec"]["taskRunTemplate"]["spec"]["args"] == [[3]]
    # An edit is held to a TaskRun's bounds as a create is.
    edited["spec"]["taskRunTemplate"] = template(kwargs={"k": nested(40)})
    result = apply(stack, edited)
    assert result.returncode != 0
    assert "spec.taskRunTemplate.spec.kwargs nests deeper than 32 levels" in result.stderr


@pytest.mark.parametrize(
    "path",
    [
        "crontaskruns.spec",
        "crontaskruns.spec.schedule",
        "crontaskruns.spec.taskRunTemplate.spec.args",
        "crontaskruns.spec.taskRunTemplate.metadata.labels",
        "crontaskruns.status.active.uid",
        "taskruns.spec",
        "taskruns.spec.args",
        "taskruns.spec.kwargs",
        "taskruns.spec.priority",
        "taskruns.status.limits.timeout.source",
    ],
)
def test_kubectl_explain_describes_every_field(stack: Stack, path: str) -> None:
    explained = stack.kubectl("explain", path, "--recursive", check=True).stdout
    assert "<no description>" not in explained
    assert "DESCRIPTION:" in explained


def test_printer_columns(stack: Stack, namespace: str) -> None:
    assert apply(stack, manifest(namespace, timeZone="Europe/Berlin", suspend=True)).returncode == 0
    status = {
        "status": {
            "active": [{"name": "nightly-1767236400", "uid": "u1"}, {"name": "b", "uid": "u2"}],
            "lastScheduleTime": "2026-01-01T03:00:00Z",
            "nextScheduleTime": "2999-01-01T03:00:00Z",
        }
    }
    stack.kubectl(
        "patch", "ctr", "nightly", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps(status), check=True,
    )  # fmt: skip
    table = stack.kubectl("get", "ctr", "-n", namespace, check=True).stdout.splitlines()
    assert table[0].split() == [
        "NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "NEXT", "AGE",
    ]  # fmt: skip
    # The schedule has spaces: read the row from both ends.
    row = table[1].split()
    assert row[:2] == ["nightly", "0"] and row[-7:-3] == [
        "*",
        "Europe/Berlin",
        "true",
        "nightly-1767236400",
    ]
