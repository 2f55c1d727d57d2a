"""Every manifest we ship, applied to the real local API server with --dry-run=server.

A server-side dry run goes through decoding, defaulting, schema validation and every
admission plugin (Pod Security included), and persists nothing.  deploy/*.yaml always
runs (it needs the local stack, not helm); the chart's renders need helm.

Pod Security: the API server enforces it on Pods only (a Deployment gets warnings), so
each workload's pod template is also dry-run as a bare Pod in a namespace that enforces
the `restricted` profile.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from packaging_helpers import DEPLOY, Manifest, Render, by_kind, dump_all, load_all, pod_from

from taskrun_dev.stack import Stack

pytestmark = pytest.mark.e2e

SHIPPED = [
    "crd.yaml",
    "crontaskrun-crd.yaml",
    "rbac.yaml",
    "operator.yaml",
    "worker.yaml",
    "gateway.yaml",
]
WORKLOADS = ("Deployment",)
# prometheus-operator's CRD is not installed in the local stack (it is neither built
# here nor fetchable): ServiceMonitors are checked by test_chart.py's assertions only.
NOT_SERVED = {"ServiceMonitor"}


def dry_run(stack: Stack, docs: list[Manifest], namespace: str | None = None) -> str:
    """Apply with --dry-run=server; fail on any error; return kubectl's warnings."""
    args = ["apply", "--dry-run=server", "-f", "-"]
    if namespace:
        args += ["-n", namespace]
    result = stack.kubectl(*args, input=dump_all(docs))
    assert result.returncode == 0, f"{result.stderr}\n---\n{dump_all(docs)}"
    # The stack installs the CRD and RBAC with server-side apply, which leaves no
    # client-side apply annotation: kubectl notes that, and it is no problem of ours.
    return "\n".join(
        line
        for line in result.stderr.splitlines()
        if "kubectl.kubernetes.io/last-applied-configuration" not in line
    )


def restricted(stack: Stack, namespace: str) -> None:
    for mode in ("enforce", "warn"):
        stack.kubectl(
            "label",
            "namespace",
            namespace,
            f"pod-security.kubernetes.io/{mode}=restricted",
            "--overwrite",
            check=True,
        )


def moved(docs: list[Manifest], namespace: str) -> list[Manifest]:
    """Namespaced objects re-homed into `namespace` (cluster-scoped ones dropped)."""
    out = []
    for doc in docs:
        if "namespace" in doc["metadata"]:
            doc = copy.deepcopy(doc)
            doc["metadata"]["namespace"] = namespace
            out.append(doc)
    return out


def assert_pods_restricted(stack: Stack, docs: list[Manifest], namespace: str) -> None:
    workloads = [d for d in docs if d["kind"] in WORKLOADS]
    assert workloads, "no workload to check"
    restricted(stack, namespace)
    warnings = dry_run(stack, moved(workloads, namespace))
    assert "PodSecurity" not in warnings, warnings
    pods = [pod_from(w, namespace) for w in workloads]
    dry_run(stack, pods)


# -- deploy/*.yaml: always ---------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_deploy_manifest_dry_run(stack: Stack, name: str) -> None:
    docs = load_all((DEPLOY / name).read_text())
    assert docs
    warnings = dry_run(stack, docs)
    assert "Warning" not in warnings, warnings


def test_deploy_all_at_once_in_install_order(stack: Stack) -> None:
    docs = [doc for name in SHIPPED for doc in load_all((DEPLOY / name).read_text())]
    dry_run(stack, docs)


def test_deploy_pods_meet_restricted_pod_security(stack: Stack, namespace: str) -> None:
    docs = load_all((DEPLOY / "operator.yaml").read_text())
    docs += load_all((DEPLOY / "worker.yaml").read_text())
    docs += load_all((DEPLOY / "gateway.yaml").read_text())
    assert len(by_kind(docs, "Deployment")) == 4
    assert_pods_restricted(stack, docs, namespace)


# -- the chart: needs helm ---------------------------------------------------------------


def chart_values(case: str, namespace: str) -> dict[str, Any] | None:
    if case == "default":
        return None
    if case == "namespaced":
        return {
            # The development Secret, under keys of its own.
            "celery": {
                "createSecret": True,
                "brokerUrl": "redis://redis:6379/0",
                "resultBackend": "redis://redis:6379/1",
                "brokerUrlKey": "broker.url",
                "resultBackendKey": "backend-url",
            },
            "watchNamespaces": [namespace],
            "worker": {"enabled": True},
            "gateway": {"enabled": True},
        }
    return {
        "celery": {"existingSecret": "celery-connection"},
        "watchNamespaces": [namespace],
        "config": {
            "defaults": {"timeLimit": 3600, "softTimeLimit": 3300},
            "tasks": {"reports.*": {"timeLimit": 600}},
            "allowedTasks": ["reports.*"],
        },
        "metrics": {"port": 9999, "serviceMonitor": {"enabled": True}},
        "worker": {"enabled": True, "queues": ["reports"], "imports": ["my_tasks"]},
        "operator": {"verbose": True, "podAnnotations": {"a": "b"}},
        "gateway": {"enabled": True, "port": 9000, "serviceAccount": {"name": "gw"}},
    }


@pytest.mark.parametrize("case", ["default", "namespaced", "custom"])
def test_chart_dry_run(stack: Stack, namespace: str, render: Render, case: str) -> None:
    release = f"dry-{case}"
    docs = render(
        chart_values(case, namespace), namespace=namespace, release=release, include_crds=True
    )
    served = [d for d in docs if d["kind"] not in NOT_SERVED]
    assert served[0]["kind"] == "CustomResourceDefinition"
    warnings = dry_run(stack, served)
    assert "Warning" not in warnings, warnings
    assert_pods_restricted(stack, served, namespace)


def test_restricted_namespace_rejects_a_loosened_pod(stack: Stack, namespace: str) -> None:
    """The Pod Security check above has teeth: without our securityContext, refused."""
    deployment = by_kind(load_all((DEPLOY / "operator.yaml").read_text()), "Deployment")[0]
    pod = pod_from(deployment, namespace)
    pod["spec"] = copy.deepcopy(pod["spec"])
    del pod["spec"]["securityContext"]
    del pod["spec"]["containers"][0]["securityContext"]
    restricted(stack, namespace)
    result = stack.kubectl("apply", "--dry-run=server", "-f", "-", input=dump_all([pod]))
    assert result.returncode != 0
    assert 'violates PodSecurity "restricted' in result.stderr, result.stderr
