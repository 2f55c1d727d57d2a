"""Retention that keeps etcd bounded, and never re-runs what GitOps applies."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from taskrun_dev.processes import ManagedProcess
from taskrun_dev.stack import Stack

from support import TaskRuns, wait_for

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
