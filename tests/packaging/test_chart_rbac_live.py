"""The chart's namespaced RBAC is enough for the real operator to run a TaskRun.

The chart's ServiceAccount, ClusterRole, Roles and bindings (watchNamespaces set) are
applied for real to the local API server; the operator runs as a process with that
ServiceAccount's token, the rendered config file and the rendered `--namespace`
arguments, next to a real Celery worker, and must take a TaskRun to Succeeded.  The
namespaces are `iso-...`: the shared e2e operator follows only `t-*` ones.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging_helpers import Render, cluster_wide_operator, dump_all, one

from taskrun_dev import controlplane
from taskrun_dev.processes import ManagedProcess
from taskrun_dev.stack import Stack

pytestmark = pytest.mark.e2e

RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
TASKRUN = """
apiVersion: celery.taskrun.dev/v1alpha1
kind: TaskRun
metadata:
  name: sum
spec:
  task: taskrun_workers.tasks.calculate_sum
  args: [[1, 2, 3, 4, 5]]
  timeout: 60
"""


@pytest.fixture
def namespaces(stack: Stack) -> Iterator[tuple[str, str]]:
    """(watched namespace, the operator's own namespace)."""
    suffix = uuid.uuid4().hex[:6]
    pair = (f"iso-pkg-{suffix}", f"iso-pkg-op-{suffix}")
    for name in pair:
        stack.kubectl("create", "namespace", name, check=True)
    yield pair
    for name in pair:
        stack.kubectl("delete", "namespace", name, "--wait=false")


def test_namespaced_chart_rbac_runs_a_taskrun(
    stack: Stack,
    worker: ManagedProcess,
    render: Render,
    namespaces: tuple[str, str],
    tmp_path: Path,
) -> None:
    busy = cluster_wide_operator(stack)
    if busy:
        pytest.skip(f"operator {busy} watches the whole cluster: it would handle the run too")
    watched, home = namespaces
    release = f"pkg-{watched.rsplit('-', 1)[-1]}"
    docs = render(
        {
            "watchNamespaces": [watched],
            "admissionPolicy": {"enabled": False},  # the stack installed it already
            "metrics": {"enabled": False},
        },
        namespace=home,
        release=release,
    )
    rbac = [d for d in docs if d["kind"] in RBAC_KINDS]
    stack.kubectl("apply", "-f", "-", input=dump_all(rbac), check=True)
    try:
        account = one(docs, "ServiceAccount")["metadata"]["name"]
        user = f"system:serviceaccount:{home}:{account}"
        # Exactly the watched namespace: nothing elsewhere.
        for namespace, expected in ((watched, "yes"), ("default", "no")):
            answer = stack.kubectl(
                "auth", "can-i", "patch", "taskruns.celery.taskrun.dev/status",
                "-n", namespace, "--as", user,
            )  # fmt: skip
            assert answer.stdout.strip() == expected, (namespace, answer.stdout, answer.stderr)

        kubeconfig = tmp_path / "operator.kubeconfig"
        controlplane.write_token_kubeconfig(
            kubeconfig, stack.apiserver_url, stack.pki, user, stack.mint_token(account, home)
        )
        config = tmp_path / "config.yaml"
        config.write_text(one(docs, "ConfigMap")["data"]["config.yaml"])
        args = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        proc = stack.start_operator(
            f"op-{release}",
            config_path=config,
            kubeconfig=kubeconfig,
            extra_args=[a for a in args if a.startswith("--namespace")],
            # In a pod its service account names its namespace: the Lease's.
            env_overrides={"POD_NAMESPACE": home},
        )
        try:
            stack.kubectl("apply", "-n", watched, "-f", "-", input=TASKRUN, check=True)
            waited = stack.kubectl(
                "wait", "taskrun/sum", "-n", watched, "--for=condition=Succeeded", "--timeout=90s"
            )
            status = stack.kubectl_json("get", "taskrun", "sum", "-n", watched).get("status", {})
            assert waited.returncode == 0, (waited.stderr, status, proc.log_text()[-3000:])
            assert status["phase"] == "Succeeded"
            assert status["result"] == 15
            # Deleting goes through the operator's finalizer: still within its rights.
            stack.kubectl("delete", "taskrun", "sum", "-n", watched, "--timeout=60s", check=True)
            log = proc.log_text()
            assert "Forbidden" not in log and " 403" not in log, log[-3000:]
        finally:
            proc.stop()
    finally:
        for doc in rbac:
            if "namespace" not in doc["metadata"]:
                stack.kubectl(
                    "delete", doc["kind"].lower(), doc["metadata"]["name"], "--ignore-not-found"
                )
