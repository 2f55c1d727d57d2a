"""Retention that keeps etcd bounded, and never re-runs what GitOps applies."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from celery_taskrun.api.model import FINISHED_LABEL
from taskrun_dev.processes import ManagedProcess
from taskrun_dev.stack import Stack

from support import GROUP, PLURAL, VERSION, TaskRuns, wait_for

pytestmark = pytest.mark.e2e


def test_history_limits_keep_the_newest_and_spare_gitops_runs(
    stack: Stack, worker: ManagedProcess, tmp_path: Path
) -> None:
    namespace = f"keep-{uuid.uuid4().hex[:6]}"
    stack.kubectl("create", "namespace", namespace, check=True)
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"successfulRunsHistoryLimit": 2, "failedRunsHistoryLimit": 1}))
    operator = stack.start_operator(
        f"op-{namespace}", config_path=config, extra_args=["--namespace", namespace]
    )
    runs = TaskRuns(stack, namespace)
    try:
        names = [f"ok-{i}" for i in range(4)]
        for name in names:
            runs.apply(name, "calculate_sum", args=[[1]])
            runs.finished(name)  # one after the other: their ends are ordered
        flux = runs.manifest(
            "from-git", {"task": "taskrun_workers.tasks.calculate_sum", "args": [[2]]}
        )
        flux["metadata"]["labels"] = {"kustomize.toolkit.fluxcd.io/name": "apps"}
        runs.kubectl("apply", "-f", "-", input=json.dumps(flux), check=True)
        runs.finished("from-git")
        for name in ("bad-0", "bad-1"):
            runs.apply(name, "fail", args=["no"])
            runs.finished(name)

        def kept() -> set[str]:
            listed = runs.kubectl("get", "taskruns", "-o", "name", check=True).stdout
            return {line.split("/", 1)[1] for line in listed.split()}

        wanted = {"ok-2", "ok-3", "from-git", "bad-1"}
        wait_for(lambda: kept() == wanted, timeout=30, what=f"only {sorted(wanted)} kept")
    finally:
        operator.stop()
        stack.kubectl("delete", "namespace", namespace, "--wait=false")


def finished_status(phase: str, completed: datetime) -> dict[str, Any]:
    at = completed.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "phase": phase,
        "state": "SUCCESS" if phase == "Succeeded" else "FAILURE",
        "taskId": "written-by-someone-before",
        "completedAt": at,
        "observedGeneration": 1,
    }


def test_runs_found_finished_on_start_are_kept_by_the_same_limits_and_never_written(
    stack: Stack, worker: ManagedProcess, tmp_path: Path
) -> None:
    """A start (or a takeover) lists runs that finished before it: each is counted in
    its history and TTL from its raw body; one this version left (labelled finished)
    is never written until deleted, one an earlier version left gets the label alone."""
    namespace = f"found-{uuid.uuid4().hex[:6]}"
    stack.kubectl("create", "namespace", namespace, check=True)
    runs = TaskRuns(stack, namespace)
    now = datetime.now(UTC)
    before: dict[str, tuple[str, datetime, dict[str, Any]]] = {
        "ok-0": ("Succeeded", now - timedelta(seconds=40), {}),
        "ok-1": ("Succeeded", now - timedelta(seconds=30), {}),
        "ok-2": ("Succeeded", now - timedelta(seconds=20), {}),
        "from-git": ("Succeeded", now - timedelta(seconds=50), {}),
        "bad-0": ("Failed", now, {"ttlSecondsAfterFinished": 2}),
    }
    for name, (phase, completed, extra) in before.items():
        body = runs.manifest(name, {"task": "taskrun_workers.tasks.calculate_sum", **extra})
        if name == "from-git":
            body["metadata"]["labels"] = {"kustomize.toolkit.fluxcd.io/name": "apps"}
        elif name != "ok-1":  # ok-1 as an earlier version left it: no label
            body["metadata"]["labels"] = {FINISHED_LABEL: phase}
        runs.api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        runs.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": finished_status(phase, completed)}
        )
    versions = {name: runs.get(name)["metadata"]["resourceVersion"] for name in before}
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"successfulRunsHistoryLimit": 2, "failedRunsHistoryLimit": 1}))
    operator = stack.start_operator(
        f"op-{namespace}", config_path=config, extra_args=["--namespace", namespace]
    )
    try:
        runs.apply("ok-new", "calculate_sum", args=[[1]])
        assert runs.finished("ok-new")["phase"] == "Succeeded"

        def kept() -> set[str]:
            listed = runs.kubectl("get", "taskruns", "-o", "name", check=True).stdout
            return {line.split("/", 1)[1] for line in listed.split()}

        # ok-0 and ok-1 beyond the limit of 2 once ok-new ends; bad-0 past its TTL.
        wanted = {"ok-2", "ok-new", "from-git"}
        wait_for(lambda: kept() == wanted, timeout=30, what=f"only {sorted(wanted)} kept")
        assert runs.get("ok-2")["metadata"]["resourceVersion"] == versions["ok-2"]
        labelled = runs.get("from-git")  # labelled, never sent again, its status as it was
        assert labelled["metadata"]["labels"][FINISHED_LABEL] == "Succeeded"
        assert labelled["status"]["taskId"] == "written-by-someone-before"
    finally:
        operator.stop()
        stack.kubectl("delete", "namespace", namespace, "--wait=false")
