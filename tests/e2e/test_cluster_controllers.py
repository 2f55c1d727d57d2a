"""The local stack's kube-controller-manager does what it does on any cluster.

- The garbage collector: a deleted owner's dependents go (background), first
  (foreground: the owner waits for dependents that block it), or stay without the
  reference (orphan); TaskRuns as owners and as dependents, an in-flight one revoked.
- The namespace controller: a deleted namespace empties and goes away, its TaskRuns
  included.  The operator's finalizer on an in-flight run holds the namespace while
  no operator runs (Kubernetes' documented behaviour for content with finalizers:
  the namespace stays Terminating, its condition names the finalizer) and lets it go
  once an operator is back to revoke the task.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from celery_taskrun.api.model import FINALIZER
from taskrun_dev.controlplane import CONTROLLER_MANAGER
from taskrun_dev.processes import ManagedProcess
from taskrun_dev.stack import Stack

from support import TASKS, Body, TaskRuns, wait_for, wait_revoked

pytestmark = pytest.mark.e2e

# A finalizer of the test's own: keeps a dependent deleting until the test lets it go.
HOLD = "test.celery.taskrun.dev/hold"


@pytest.fixture(scope="module", autouse=True)
def controller_manager(stack: Stack) -> None:
    if stack.process(CONTROLLER_MANAGER) is None:
        pytest.skip("no kube-controller-manager (KUBEBUILDER_ASSETS without one)")


def reference(owner: Body, *, block: bool = False) -> Body:
    meta = owner["metadata"]
    ref = {"apiVersion": owner["apiVersion"], "kind": owner["kind"]}
    ref |= {"name": meta["name"], "uid": meta["uid"]}
    return {**ref, "blockOwnerDeletion": True} if block else ref


def create(runs: TaskRuns, manifest: Body) -> Body:
    """`kubectl create` in the namespace; the object as stored (with its uid)."""
    out = runs.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(manifest), check=True)
    created: Body = json.loads(out.stdout)
    return created


def config_map(name: str, *owners: Body, finalizers: tuple[str, ...] = ()) -> Body:
    meta: Body = {"name": name, "ownerReferences": list(owners), "finalizers": list(finalizers)}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": "v"}}


def owned_run(runs: TaskRuns, name: str, spec: Body, *owners: Body) -> Body:
    manifest = runs.manifest(name, spec)
    manifest["metadata"]["ownerReferences"] = list(owners)
    return create(runs, manifest)


def read_config_map(runs: TaskRuns, name: str) -> Any | None:
    try:
        return runs.core.read_namespaced_config_map(name, runs.namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def deleting(runs: TaskRuns, name: str) -> bool:
    found = read_config_map(runs, name)
    return found is not None and found.metadata.deletion_timestamp is not None


def namespace_gone(runs: TaskRuns) -> bool:
    try:
        runs.core.read_namespace(runs.namespace)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def test_background_deletion_takes_a_runs_dependents(runs: TaskRuns) -> None:
    runs.apply("parent", "calculate_sum", args=[[1, 2]])
    runs.finished("parent")
    parent = reference(runs.get("parent"))
    create(runs, config_map("parent-input", parent))
    owned_run(runs, "child", {"task": f"{TASKS}.sleep", "args": [60]}, parent)
    running = runs.wait_phase("child", "Running")

    runs.kubectl("delete", "taskrun", "parent", "--cascade=background", check=True)
    wait_for(
        lambda: read_config_map(runs, "parent-input") is None and not runs.exists("child"),
        timeout=60,
        what="the garbage collector to delete parent's ConfigMap and TaskRun",
        interval=0.2,
    )
    # The child was in flight: the operator revoked it before letting it go.
    wait_revoked(runs.stack, running["taskId"])


def test_foreground_deletion_waits_for_blocking_dependents(stack: Stack, namespace: str) -> None:
    runs = TaskRuns(stack, namespace)
    owner = reference(create(runs, config_map("owner")), block=True)
    create(runs, config_map("held", owner, finalizers=(HOLD,)))
    owned_run(runs, "owned", {"task": f"{TASKS}.calculate_sum", "cancel": True}, owner)

    runs.kubectl("delete", "configmap", "owner", "--cascade=foreground", "--wait=false", check=True)
    wait_for(
        lambda: not runs.exists("owned") and deleting(runs, "held"),
        timeout=60,
        what="the garbage collector to delete owner's dependents",
        interval=0.2,
    )
    # A blocking dependent is still there (held): the owner waits for it.
    waiting = read_config_map(runs, "owner")
    assert waiting is not None and waiting.metadata.deletion_timestamp
    assert "foregroundDeletion" in waiting.metadata.finalizers

    patch = json.dumps({"metadata": {"finalizers": None}})
    runs.kubectl("patch", "configmap", "held", "--type=merge", "-p", patch, check=True)
    wait_for(
        lambda: read_config_map(runs, "owner") is None and read_config_map(runs, "held") is None,
        timeout=60,
        what="owner deleted once its last blocking dependent went",
        interval=0.2,
    )


def test_orphan_deletion_keeps_dependents_without_the_reference(
    stack: Stack, namespace: str
) -> None:
    runs = TaskRuns(stack, namespace)
    owner = reference(create(runs, config_map("owner")))
    owned_run(runs, "kept", {"task": f"{TASKS}.calculate_sum", "cancel": True}, owner)

    # kubectl waits until the owner is gone: the collector orphans the dependents first.
    runs.kubectl("delete", "configmap", "owner", "--cascade=orphan", check=True)
    assert read_config_map(runs, "owner") is None
    assert not runs.get("kept")["metadata"].get("ownerReferences")


def test_a_deleted_namespace_goes_with_its_runs(runs: TaskRuns) -> None:
    runs.apply("done", "calculate_sum", args=[[1]])
    runs.finished("done")
    runs.apply("busy", "sleep", args=[60])
    running = runs.wait_phase("busy", "Running")
    create(runs, config_map("settings"))

    runs.stack.kubectl("delete", "namespace", runs.namespace, "--wait=false", check=True)
    # The namespace controller looks again every ~8 s while content with finalizers remains.
    wait_for(
        lambda: namespace_gone(runs),
        timeout=90,
        what=f"namespace {runs.namespace} deleted",
        interval=0.5,
    )
    wait_revoked(runs.stack, running["taskId"])


@pytest.fixture
def lone(stack: Stack) -> Iterator[TaskRuns]:
    """A namespace no shared operator serves, for an operator of the test's own."""
    namespace = f"iso-{uuid.uuid4().hex[:8]}"
    stack.kubectl("create", "namespace", namespace, check=True)
    yield TaskRuns(stack, namespace)
    stack.kubectl("delete", "namespace", namespace, "--wait=false")


def test_a_runs_finalizer_holds_its_namespace_until_an_operator_is_back(
    lone: TaskRuns, worker: ManagedProcess
) -> None:
    stack = lone.stack
    args = ["--namespace", lone.namespace]
    operator = stack.start_operator("op-namespace", extra_args=args)
    try:
        lone.apply("busy", "sleep", args=[60])
        running = lone.wait_phase("busy", "Running")
        operator.stop()

        stack.kubectl("delete", "namespace", lone.namespace, "--wait=false", check=True)

        def finalizers_remaining() -> Body | None:
            status = lone.core.read_namespace(lone.namespace).status
            for condition in status.conditions or []:
                if condition.type == "NamespaceFinalizersRemaining" and condition.status == "True":
                    return {"message": condition.message}
            return None

        held = wait_for(
            finalizers_remaining, timeout=60, what="the namespace held by finalizers", interval=0.5
        )
        assert FINALIZER in held["message"]
        assert lone.get("busy")["metadata"].get("deletionTimestamp")

        operator = stack.start_operator("op-namespace", extra_args=args)
        wait_for(
            lambda: namespace_gone(lone),
            timeout=90,
            what=f"namespace {lone.namespace} deleted",
            interval=0.5,
        )
        wait_revoked(stack, running["taskId"])
    finally:
        operator.stop()
