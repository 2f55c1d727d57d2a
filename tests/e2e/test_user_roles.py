"""Kubernetes' own `edit` role gives a namespace's users TaskRuns and CronTaskRuns: a
ServiceAccount bound with `kubectl create rolebinding --clusterrole=edit` creates both.

The merge of deploy/rbac.yaml's aggregated roles into `edit` is the work of
kube-controller-manager's clusterrole-aggregation controller: on a stack that does not
run it, the test is skipped, saying so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taskrun_dev import controlplane as cp
from taskrun_dev.stack import Stack

from support import wait_for

pytestmark = pytest.mark.e2e

# The stack's process name for it, and the controller that merges aggregated roles.
CONTROLLER_MANAGER = "kube-controller-manager"
AGGREGATION = "clusterrole-aggregation"
KINDS = ("taskruns", "crontaskruns")


def aggregates(stack: Stack) -> str | None:
    """Why roles will not be aggregated on this stack, or None when they will."""
    proc = stack.process(CONTROLLER_MANAGER)
    if proc is None or not proc.alive:
        return f"the stack runs no {CONTROLLER_MANAGER}, which aggregates ClusterRoles"
    given = [arg.split("=", 1)[1] for arg in proc.argv if arg.startswith("--controllers=")]
    controllers = given[-1].split(",") if given else ["*"]
    if AGGREGATION in controllers or ("*" in controllers and f"-{AGGREGATION}" not in controllers):
        return None
    return f"{CONTROLLER_MANAGER} runs without its {AGGREGATION} controller ({controllers})"


def edit_rules(stack: Stack) -> set[str]:
    """The celery.taskrun.dev resources the `edit` ClusterRole may create."""
    role = stack.kubectl_json("get", "clusterrole", "edit")
    return {
        resource
        for rule in role.get("rules", [])
        if "celery.taskrun.dev" in rule.get("apiGroups", []) and "create" in rule["verbs"]
        for resource in rule.get("resources", [])
    }


def test_a_team_bound_to_edit_creates_taskruns_and_crontaskruns(
    stack: Stack, namespace: str, tmp_path: Path
) -> None:
    why_not = aggregates(stack)
    if why_not:
        pytest.skip(why_not)
    wait_for(
        lambda: set(KINDS) <= edit_rules(stack),
        timeout=30,
        what="the edit ClusterRole to aggregate celery-taskrun-aggregate-edit",
        interval=0.2,
    )
    stack.kubectl("create", "serviceaccount", "team", "-n", namespace, check=True)
    stack.kubectl(
        "create", "rolebinding", "team-edit", "--clusterrole=edit",
        f"--serviceaccount={namespace}:team", "-n", namespace, check=True,
    )  # fmt: skip
    user = f"system:serviceaccount:{namespace}:team"
    kubeconfig = tmp_path / "team.kubeconfig"
    token = stack.mint_token("team", namespace, duration="1h")
    cp.write_token_kubeconfig(kubeconfig, stack.apiserver_url, stack.pki, user, token)
    # RBAC reads bindings from a cache: wait until the API server applies this one.
    for kind in KINDS:
        wait_for(
            lambda kind=kind: stack.kubectl(
                "auth", "can-i", "create", f"{kind}.celery.taskrun.dev", "-n", namespace,
                f"--as={user}",
            ).stdout.strip() == "yes",
            timeout=10,
            what=f"RBAC to let {user} create {kind}",
        )  # fmt: skip
    spec = {"task": "taskrun_workers.tasks.calculate_sum", "args": [[1, 2]]}
    objects = [
        {"kind": "TaskRun", "metadata": {"name": "by-team"}, "spec": spec},
        {
            "kind": "CronTaskRun",
            "metadata": {"name": "by-team"},
            "spec": {"schedule": "@daily", "suspend": True, "taskRunTemplate": {"spec": spec}},
        },
    ]
    for body in objects:
        body = {"apiVersion": "celery.taskrun.dev/v1alpha1", **body}
        created = stack.kubectl(
            "create", "-n", namespace, "-f", "-", input=json.dumps(body), kubeconfig=kubeconfig
        )
        assert created.returncode == 0, created.stderr
    # Not the operator's rights: a status is the operator's to write.
    denied = stack.kubectl(
        "auth", "can-i", "patch", "crontaskruns.celery.taskrun.dev", "--subresource=status",
        "-n", namespace, f"--as={user}",
    )  # fmt: skip
    assert denied.stdout.strip() == "no"
