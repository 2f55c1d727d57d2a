"""deploy/operator.yaml and deploy/worker.yaml agree with the operator and each other.

(The API server's own view of them is in test_dry_run.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from packaging_helpers import DEPLOY, Manifest, by_kind, load_all, one

from celery_taskrun.engine import config_file
from celery_taskrun.engine.main import parse_args
from celery_taskrun.gateway.main import parse_args as gateway_args

NAMESPACE = "celery-taskrun-system"


@pytest.fixture(scope="module")
def operator_docs() -> list[Manifest]:
    return load_all((DEPLOY / "operator.yaml").read_text())


@pytest.fixture(scope="module")
def worker_docs() -> list[Manifest]:
    return load_all((DEPLOY / "worker.yaml").read_text())


def container(deployment: Manifest) -> dict[str, Any]:
    result: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return result


def from_secret(c: dict[str, Any], secret: Manifest) -> dict[str, str]:
    """What a container's variables from Secrets hold, when `secret` is the one they name
    (each by its own key: no envFrom)."""
    assert "envFrom" not in c
    values = {}
    for e in c["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == secret["metadata"]["name"]
            values[e["name"]] = secret["stringData"][ref["key"]]
    return values


def test_the_operator_file_holds_no_url(operator_docs: list[Manifest]) -> None:
    """Real URLs carry passwords: the operator's file refers to a Secret, holds none."""
    assert by_kind(operator_docs, "Secret") == []


def test_everything_lives_in_the_rbac_namespace(
    operator_docs: list[Manifest], worker_docs: list[Manifest]
) -> None:
    rbac = load_all((DEPLOY / "rbac.yaml").read_text())
    assert one(rbac, "Namespace")["metadata"]["name"] == NAMESPACE
    for doc in operator_docs + worker_docs:
        assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]
    service_account = one(rbac, "ServiceAccount")["metadata"]["name"]
    deployment = one(operator_docs, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == service_account


def test_operator_deployment(
    operator_docs: list[Manifest], worker_docs: list[Manifest], tmp_path: Path
) -> None:
    deployment = one(operator_docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2  # one leads, one stands by
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    c = container(deployment)
    assert c["image"] == "celery-taskrun:dev"
    args = parse_args(c["args"])  # the operator's own parser accepts them
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    liveness = urlsplit(args.liveness)
    assert liveness.hostname == "0.0.0.0"
    assert liveness.port == ports["healthz"]
    for probe in ("startupProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": liveness.path, "port": "healthz"}
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    assert env == {"TASKRUN_METRICS_HOST": "0.0.0.0", "TASKRUN_METRICS_PORT": "9808"}
    assert ports["metrics"] == 9808
    assert set(c["resources"]) == {"requests", "limits"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}

    # The config file: mounted where --config points, and valid for the operator.
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    assert args.config == f"{mount['mountPath']}/config.yaml"
    volume = next(
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"
    )
    config_map = one(operator_docs, "ConfigMap")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    path = tmp_path / "config.yaml"
    path.write_text(config_map["data"]["config.yaml"])
    # The URLs from the Secret deploy/worker.yaml makes for its demo Redis.
    secret = one(worker_docs, "Secret")
    connection = from_secret(c, secret)
    assert set(connection) == {"CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"}
    loaded = config_file.load(str(path), environ={**connection, **env})
    assert loaded.metricsPort == 9808
    assert loaded.metricsHost == "0.0.0.0"
    assert loaded.brokerUrl == secret["stringData"]["CELERY_BROKER_URL"]
    assert loaded.resultBackend == secret["stringData"]["CELERY_RESULT_BACKEND"]
    assert loaded.defaults.softTimeLimit is not None and loaded.defaults.timeLimit is not None
    assert loaded.defaults.softTimeLimit < loaded.defaults.timeLimit


def test_metrics_service_selects_the_operator(operator_docs: list[Manifest]) -> None:
    deployment = one(operator_docs, "Deployment")
    service = one(operator_docs, "Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "metrics"
    assert service["metadata"]["annotations"]["prometheus.io/port"] == str(port["port"])


def test_worker_and_redis_match_the_operator(
    operator_docs: list[Manifest], worker_docs: list[Manifest]
) -> None:
    secret = one(worker_docs, "Secret")
    worker = one(worker_docs, "Deployment", "-worker")
    c = container(worker)
    assert from_secret(c, secret) == from_secret(
        container(one(operator_docs, "Deployment")), secret
    )
    assert c["image"] == container(one(operator_docs, "Deployment"))["image"]
    assert c["command"][:4] == ["celery", "-A", "taskrun_workers.app", "worker"]
    assert "--pool=prefork" in c["command"]
    assert worker["spec"]["template"]["spec"]["automountServiceAccountToken"] is False

    # The URLs in the Secret name the demo Redis Service.
    redis = one(worker_docs, "Service")
    redis_deployment = one(worker_docs, "Deployment", "redis")
    assert redis["spec"]["selector"].items() <= (
        redis_deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    for key in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        url = urlsplit(secret["stringData"][key])
        assert url.scheme == "redis"
        assert url.hostname == f"{redis['metadata']['name']}.{NAMESPACE}.svc"
        assert url.port == redis["spec"]["ports"][0]["port"]
    # Worker and Redis pods are told apart by their selectors.
    selectors = [d["spec"]["selector"]["matchLabels"] for d in by_kind(worker_docs, "Deployment")]
    assert selectors[0] != selectors[1]


def test_gateway_manifest() -> None:
    docs = load_all((DEPLOY / "gateway.yaml").read_text())
    for doc in docs:
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    account = one(docs, "ServiceAccount")["metadata"]["name"]
    assert pod["serviceAccountName"] == account
    binding = one(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]
    assert binding["roleRef"]["name"] == one(docs, "ClusterRole")["metadata"]["name"]
    c = container(deployment)
    assert c["command"] == ["celery-taskrun-gateway"]
    args = gateway_args(c["args"])  # the gateway's own parser accepts them
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert (args.host, args.port) == ("0.0.0.0", ports["http"])
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    # Only what the gateway needs: reviews, taskruns without delete or status, and
    # crontaskruns to read (the live page's schedules).
    rules = {
        (r["apiGroups"][0], r["resources"][0]): r["verbs"]
        for r in one(docs, "ClusterRole")["rules"]
    }
    assert rules == {
        ("authentication.k8s.io", "tokenreviews"): ["create"],
        ("authorization.k8s.io", "subjectaccessreviews"): ["create"],
        ("celery.taskrun.dev", "taskruns"): ["get", "list", "watch", "create", "patch"],
        ("celery.taskrun.dev", "crontaskruns"): ["get", "list"],
    }
