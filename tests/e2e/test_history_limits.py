"""Retention that keeps etcd bounded, and never re-runs what GitOps applies."""

from __future__ import annotations

import json
import re
import urllib.request
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
        runs.api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        runs.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": finished_status(phase, completed)}
        )
        if name not in ("ok-1", "from-git"):  # those two as an earlier version left them
            labels = {"metadata": {"labels": {FINISHED_LABEL: phase}}}
            runs.api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, labels)
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


def finished_kept(operator: ManagedProcess) -> float | None:
    with urllib.request.urlopen(operator.url or "", timeout=5) as answer:
        text = answer.read().decode()
    found = re.search(r"^taskrun_finished_kept ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else None


def test_a_finished_run_deleted_by_hand_leaves_the_index(
    stack: Stack, worker: ManagedProcess, tmp_path: Path
) -> None:
    """Finished runs are out of the operator's watch; their deletions still reach it
    (a watch of its own), so none stays counted in a history it left."""
    namespace = f"gone-{uuid.uuid4().hex[:6]}"
    stack.kubectl("create", "namespace", namespace, check=True)
    operator = stack.start_operator(f"op-{namespace}", extra_args=["--namespace", namespace])
    runs = TaskRuns(stack, namespace)
    try:
        for name in ("a", "b"):
            runs.apply(name, "calculate_sum", args=[[1]])
            runs.finished(name)
        wait_for(lambda: finished_kept(operator) == 2, timeout=30, what="2 finished runs kept")
        runs.kubectl("delete", "taskrun", "a", check=True)
        wait_for(lambda: finished_kept(operator) == 1, timeout=30, what="1 finished run kept")
    finally:
        operator.stop()
        stack.kubectl("delete", "namespace", namespace, "--wait=false")
