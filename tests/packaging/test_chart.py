"""The Helm chart: in sync with deploy/, lint-clean, and rendering what values ask for.

Everything here but the CRD sync check needs the helm binary built by
devstack/tools/helm/build.sh, and is skipped (saying so) without it.  The rendered
manifests are applied to the real API server in test_dry_run.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging_helpers import (
    CHART,
    DEPLOY,
    REPO,
    Render,
    by_kind,
    load_all,
    one,
    operator_role,
    rule_set,
    run_helm,
)

from celery_taskrun.api import config as operator_config
from celery_taskrun.engine import config_file
from celery_taskrun.gateway.main import parse_args as gateway_args

# Values that turn on everything the defaults leave off, and change the rest.
NON_DEFAULT: dict[str, Any] = {
    "image": {"repository": "registry.example/celery-taskrun", "tag": "1.2.3"},
    "imagePullSecrets": [{"name": "pull"}],
    "fullnameOverride": "tr",
    "celery": {"existingSecret": "celery-connection"},
    "config": {
        "defaults": {"timeLimit": 3600, "softTimeLimit": 3300},
        "tasks": {"reports.*": {"timeLimit": 600, "softTimeLimit": 540}},
        "allowedTasks": ["reports.*", "taskrun_workers.tasks.*"],
        "poll": {"initialInterval": 1, "factor": 2, "maxInterval": 10},
        "wakeups": False,
        "maxResultBytes": 65536,
    },
    "watchNamespaces": ["team-a", "team-b"],
    "serviceAccount": {"annotations": {"example.com/role": "taskrun"}},
    "operator": {
        "verbose": True,
        "env": [{"name": "EXTRA", "value": "1"}],
        "podAnnotations": {"a": "b"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical",
    },
    "metrics": {"port": 9999, "serviceMonitor": {"enabled": True, "labels": {"release": "p"}}},
    "worker": {
        "enabled": True,
        "replicas": 3,
        "concurrency": 4,
        "queues": ["reports", "default"],
        "imports": ["my_tasks.reports", "my_tasks.mail"],
        "env": [{"name": "TASKRUN_RESULT_EXPIRES", "value": "3600"}],
    },
}
# The development convenience: URLs in values, in a Secret the chart makes.
DEV_URLS: dict[str, Any] = {
    "createSecret": True,
    "brokerUrl": "amqp://app:dev-pass@rabbitmq:5672//",
    "resultBackend": "db+postgresql://app:dev-pass@postgresql/results",
}
METRICS_OFF: dict[str, Any] = {"metrics": {"enabled": False}, "rbac": {"create": False},
                               "serviceAccount": {"create": False, "name": "mine"},
                               "admissionPolicy": {"enabled": False}}  # fmt: skip


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def env_of(c: dict[str, Any]) -> dict[str, str]:
    """A container's plain environment variables (not those from a Secret)."""
    return {e["name"]: e.get("value", "") for e in c.get("env", []) if "valueFrom" not in e}


def secret_refs(c: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """A container's variables from Secrets: {variable: (Secret, key)}."""
    refs = {}
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            refs[e["name"]] = (ref["name"], ref["key"])
    return refs


def connection(secret: str, broker: str = "CELERY_BROKER_URL",
               backend: str = "CELERY_RESULT_BACKEND") -> dict[str, tuple[str, str]]:  # fmt: skip
    return {"CELERY_BROKER_URL": (secret, broker), "CELERY_RESULT_BACKEND": (secret, backend)}


def deploy_rbac_rules() -> set[tuple[str, str, str]]:
    docs = load_all((DEPLOY / "rbac.yaml").read_text())
    return rule_set(operator_role(docs)["rules"])


# -- no helm needed ----------------------------------------------------------------------


def test_chart_crd_is_a_copy_of_deploy_crd() -> None:
    result = subprocess.run(
        [str(REPO / "charts" / "sync-crd.sh"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    for source in ("crd.yaml", "crontaskrun-crd.yaml"):
        deploy_crds = by_kind(load_all((DEPLOY / source).read_text()), "CustomResourceDefinition")
        (name,) = [crd["metadata"]["name"] for crd in deploy_crds]
        assert load_all((CHART / "crds" / f"{name}.yaml").read_text()) == deploy_crds


def test_chart_version_follows_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = (REPO / "pyproject.toml").read_text()
    assert f'version = "{chart["appVersion"]}"' in project


# -- helm lint and template ----------------------------------------------------------------


GATEWAY_ON: dict[str, Any] = {"gateway": {"enabled": True}}


@pytest.mark.parametrize(
    "values",
    [
        None,
        NON_DEFAULT,
        METRICS_OFF,
        {**GATEWAY_ON, "watchNamespaces": ["a"]},
        {"celery": DEV_URLS},
    ],
    ids=["default", "custom", "off", "gateway", "dev-urls"],
)
def test_helm_lint(helm: Path, tmp_path: Path, values: dict[str, Any] | None) -> None:
    args = ["lint", "--strict", str(CHART)]
    if values:
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        args += ["--values", str(path)]
    result = run_helm(helm, *args, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_defaults_render_the_cluster_wide_operator(render: Render) -> None:
    docs = render()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            # No Secret: the URLs are in one the user creates.
            "ServiceAccount",
            "ConfigMap",
            "ClusterRole",
            "ClusterRoleBinding",
            # People's rights, aggregated into view, edit and admin.
            *["ClusterRole"] * 2,
            # Leader election's Lease.
            "Role",
            "RoleBinding",
            "Service",
            "Deployment",
            # Bounded args/kwargs on create, frozen ones on update; bounded in a
            # CronTaskRun's template.
            *["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"] * 4,
        ]
    )
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2  # one leads, one stands by
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    c = container(deployment)
    assert c["image"] == "celery-taskrun:0.1.0"
    assert c["args"] == [
        "--config=/etc/celery-taskrun/config.yaml",
        "--liveness=http://0.0.0.0:8080/healthz",
    ]
    assert env_of(c) == {"TASKRUN_METRICS_HOST": "0.0.0.0", "TASKRUN_METRICS_PORT": "9808"}
    assert "envFrom" not in c  # no other key of the Secret reaches the environment
    assert secret_refs(c) == connection("taskrun-celery-taskrun-connection")
    assert "checksum/connection" not in deployment["spec"]["template"]["metadata"]["annotations"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"healthz": 8080, "metrics": 9808}
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["config"] == "/etc/celery-taskrun"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == one(docs, "ConfigMap")["metadata"]["name"]
    service = one(docs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9808, "targetPort": "metrics", "protocol": "TCP"}
    ]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == operator_role(docs)["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": pod["serviceAccountName"],
            "namespace": "celery-taskrun-system",
        }
    ]


def test_cluster_role_mirrors_deploy_rbac(render: Render) -> None:
    assert rule_set(operator_role(render())["rules"]) == deploy_rbac_rules()


def lease_rules(docs: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    (role,) = [r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("-election")]
    return rule_set(role["rules"])


def test_leader_election_may_use_its_lease_and_nothing_else(render: Render) -> None:
    expected = {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")}
    assert lease_rules(render()) == expected
    assert lease_rules(load_all((DEPLOY / "rbac.yaml").read_text())) == expected


def test_namespaced_rbac_splits_the_same_rules(render: Render) -> None:
    docs = render({"watchNamespaces": ["team-a", "team-b"]}, namespace="ops")
    roles = [r for r in by_kind(docs, "Role") if r["metadata"]["namespace"] != "ops"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert rule_set(roles[0]["rules"]) == rule_set(roles[1]["rules"])
    cluster = operator_role(docs)
    # Together, what deploy/rbac.yaml grants; cluster-wide, only reading.
    assert rule_set(roles[0]["rules"]) | rule_set(cluster["rules"]) == deploy_rbac_rules()
    assert {g for g, _, _ in rule_set(cluster["rules"])} <= {"", "apiextensions.k8s.io"}
    assert {v for _, _, v in rule_set(cluster["rules"])} <= {"get", "list", "watch"}
    assert {r for _, r, _ in rule_set(cluster["rules"])} == {
        "customresourcedefinitions",
        "namespaces",
    }
    bindings = [b for b in by_kind(docs, "RoleBinding") if b["metadata"]["namespace"] != "ops"]
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": roles[0]["metadata"]["name"],
        }
        assert binding["subjects"][0]["namespace"] == "ops"
    args = container(one(docs, "Deployment"))["args"]
    assert [a for a in args if a.startswith("--namespace")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]


def test_non_default_values(render: Render) -> None:
    docs = render(NON_DEFAULT, namespace="ops", release="rel")
    assert by_kind(docs, "Secret") == [], "existingSecret: the chart makes no Secret"
    operator = one(docs, "Deployment", "-operator")
    c = container(operator)
    assert operator["metadata"]["name"] == "tr-operator"
    assert c["image"] == "registry.example/celery-taskrun:1.2.3"
    assert secret_refs(c) == connection("celery-connection")
    assert "--verbose" in c["args"]
    assert env_of(c) == {
        "TASKRUN_METRICS_HOST": "0.0.0.0",
        "TASKRUN_METRICS_PORT": "9999",
        "EXTRA": "1",
    }
    pod = operator["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "pull"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert "checksum/connection" not in operator["spec"]["template"]["metadata"]["annotations"]

    worker = one(docs, "Deployment", "-worker")
    w = container(worker)
    assert worker["spec"]["replicas"] == 3
    assert w["command"] == [
        "celery",
        "-A",
        "taskrun_workers.app",
        "worker",
        "--pool=prefork",
        "--concurrency=4",
        "--loglevel=INFO",
        "--queues=reports,default",
    ]
    assert env_of(w) == {
        "TASKRUN_WORKER_IMPORTS": "my_tasks.reports,my_tasks.mail",
        "TASKRUN_RESULT_EXPIRES": "3600",
    }
    assert secret_refs(w) == secret_refs(c)
    assert worker["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert worker["spec"]["selector"] != operator["spec"]["selector"]

    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    assert monitor["metadata"]["labels"]["release"] == "p"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ops"]}


def test_everything_off(render: Render) -> None:
    docs = render(METRICS_OFF)
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment"]
    deployment = one(docs, "Deployment")
    c = container(deployment)
    assert env_of(c) == {}
    assert [p["name"] for p in c["ports"]] == ["healthz"]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "mine"


@pytest.mark.parametrize("values", [None, NON_DEFAULT], ids=["default", "custom"])
def test_rendered_config_is_a_valid_operator_config(
    render: Render, tmp_path: Path, values: dict[str, Any] | None
) -> None:
    config_map = one(render(values), "ConfigMap")
    path = tmp_path / "config.yaml"
    path.write_text(config_map["data"]["config.yaml"])
    loaded = config_file.load(str(path), environ={})
    expected = (values or {}).get("config") or yaml.safe_load((CHART / "values.yaml").read_text())[
        "config"
    ]
    assert loaded.model_dump(
        include=set(expected)
    ) == operator_config.OperatorConfig.model_validate(expected).model_dump(include=set(expected))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"config": {"brokerUrl": "redis://x"}}, "config.brokerUrl is set by the chart"),
        ({"config": {"namespaces": ["a"]}}, "use watchNamespaces"),
        ({"config": {"metricsPort": 1}}, "use metrics.port"),
        ({"watchNamespaces": ["team-*"]}, "is a glob"),
        ({"celery": {**DEV_URLS, "resultBackend": "rpc://"}}, "rpc:// cannot work"),
        ({"serviceAccount": {"create": False}}, "serviceAccount.name is required"),
        # URLs in values only on request, and then from one place.
        ({"celery": {"brokerUrl": "amqp://app:pw@mq//"}}, "only with celery.createSecret=true"),
        ({"celery": {"resultBackend": "redis://r/1"}}, "only with celery.createSecret=true"),
        ({"celery": {**DEV_URLS, "existingSecret": "mine"}}, "leave celery.existingSecret empty"),
        ({"celery": {"createSecret": True, "brokerUrl": "redis://r/0"}}, "needs both"),
        ({"celery": {"brokerUrlKey": "url", "resultBackendKey": "url"}}, "name the same key"),
    ],
    ids=["broker-in-config", "namespaces-in-config", "metrics-in-config", "glob", "rpc", "no-sa",
         "broker-unasked", "backend-unasked", "two-places", "half", "one-key"],
)  # fmt: skip
def test_refused_values(helm: Path, tmp_path: Path, values: dict[str, Any], message: str) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    result = run_helm(helm, "template", "x", str(CHART), "--values", str(path), check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_connection_keys_are_configurable(render: Render) -> None:
    keys = {"brokerUrlKey": "broker-url", "resultBackendKey": "backend-url"}
    docs = render({"celery": {"existingSecret": "shared", **keys}, "worker": {"enabled": True}})
    assert by_kind(docs, "Secret") == []
    for name in ("-operator", "-worker"):
        c = container(one(docs, "Deployment", name))
        assert secret_refs(c) == connection("shared", "broker-url", "backend-url")


def test_urls_in_values_only_on_request(render: Render) -> None:
    """createSecret: the chart's Secret holds the URLs under the configured keys, the pods
    read them from it (and roll when it changes), and no other object quotes them."""
    keys = {"brokerUrlKey": "broker-url", "resultBackendKey": "backend-url"}
    docs = render({"celery": {**DEV_URLS, **keys}, "worker": {"enabled": True},
                   "gateway": {"enabled": True}})  # fmt: skip
    secret = one(docs, "Secret")
    name = secret["metadata"]["name"]
    assert secret["stringData"] == {
        "broker-url": DEV_URLS["brokerUrl"],
        "backend-url": DEV_URLS["resultBackend"],
    }
    for suffix in ("-operator", "-worker"):
        deployment = one(docs, "Deployment", suffix)
        assert secret_refs(container(deployment)) == connection(name, "broker-url", "backend-url")
        assert "checksum/connection" in deployment["spec"]["template"]["metadata"]["annotations"]
    others = yaml.safe_dump_all([d for d in docs if d is not secret])
    assert "dev-pass" not in others


def test_gateway_gets_no_connection(render: Render) -> None:
    """The gateway speaks only to the API server: no broker or backend URL reaches it."""
    docs = render({"celery": DEV_URLS, "gateway": {"enabled": True}})
    gateway = one(docs, "Deployment", "-gateway")
    secret = one(docs, "Secret")["metadata"]["name"]
    assert secret not in yaml.safe_dump(gateway)
    assert not {"CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"} & set(env_of(container(gateway)))
    assert "checksum/connection" not in gateway["spec"]["template"]["metadata"].get(
        "annotations", {}
    )


def test_include_crds_renders_the_crds_first(render: Render) -> None:
    docs = render(include_crds=True)
    assert [d["kind"] for d in docs[:2]] == ["CustomResourceDefinition"] * 2
    assert {d["metadata"]["name"] for d in docs[:2]} == {
        "taskruns.celery.taskrun.dev",
        "crontaskruns.celery.taskrun.dev",
    }


def test_values_schema_knows_every_operator_setting() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    config_keys = set(schema["properties"]["config"]["properties"])
    assert config_keys == set(operator_config.OperatorConfig.model_fields)
    limit_keys = set(schema["properties"]["config"]["properties"]["defaults"]["properties"])
    assert limit_keys == set(operator_config.LimitDefaults.model_fields)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"operator": {"replicas": 0}}, "minimum"),
        ({"config": {"defaults": {"timeLimit": "1h"}}}, "got string, want number"),
        ({"config": {"pollInterval": 1}}, "additional properties 'pollInterval' not allowed"),
        ({"worker": {"concurrency": 0}}, "minimum"),
        ({"gateway": {"replica": 2}}, "additional properties 'replica' not allowed"),
        ({"gateway": {"port": 0}}, "minimum"),
        ({"celery": {"brokerUrlKey": "a/b"}}, "does not match pattern"),
        ({"celery": {"createSecret": "yes"}}, "want boolean"),
    ],
    ids=["no-replicas", "seconds-are-numbers", "config-typo", "concurrency", "gateway", "port",
         "secret-key", "opt-in-is-a-boolean"],
)  # fmt: skip
def test_values_schema_refuses(
    helm: Path, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    result = run_helm(helm, "template", "x", str(CHART), "--values", str(path), check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_scripts_pass_shellcheck() -> None:
    tools = REPO / "devstack" / "tools"
    scripts = [
        REPO / "charts" / "sync-crd.sh",
        REPO / "devstack" / "setup.sh",
        tools / "go-tool.sh",
        tools / "helm" / "build.sh",
        tools / "promtool" / "build.sh",
        tools / "crds" / "fetch.sh",
    ]
    result = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# -- the gateway (off by default) -----------------------------------------------------


def deploy_gateway_rules() -> set[tuple[str, str, str]]:
    docs = load_all((DEPLOY / "gateway.yaml").read_text())
    return rule_set(one(docs, "ClusterRole")["rules"])


def test_gateway_component(render: Render) -> None:
    docs = render(GATEWAY_ON, namespace="ops", release="rel")
    gateway = one(docs, "Deployment", "-gateway")
    operator = one(docs, "Deployment", "-operator")
    c = container(gateway)
    assert c["image"] == container(operator)["image"]
    assert c["command"] == ["celery-taskrun-gateway"]
    assert c["args"] == [
        "--host=0.0.0.0",
        "--port=8080",
        "--max-followers=10000",
        "--max-followers-per-caller=100",
        "--recheck-seconds=60",
    ]
    gateway_args(c["args"])  # the gateway's own parser accepts them
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8080}
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    pod = gateway["spec"]["template"]["spec"]
    account = one(docs, "ServiceAccount", "-gateway")["metadata"]["name"]
    assert (
        pod["serviceAccountName"]
        == account
        != operator["spec"]["template"]["spec"]["serviceAccountName"]
    )
    # Its own rights, exactly those of deploy/gateway.yaml, bound to its own account.
    role = one(docs, "ClusterRole", "-gateway")
    assert rule_set(role["rules"]) == deploy_gateway_rules()
    binding = one(docs, "ClusterRoleBinding", "-gateway")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "ops"}]
    service = one(docs, "Service", "-gateway")
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert (
        not service["spec"]["selector"].items()
        <= operator["spec"]["template"]["metadata"]["labels"].items()
    )
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]


def test_gateway_rights_follow_watch_namespaces(render: Render) -> None:
    docs = render({**GATEWAY_ON, "watchNamespaces": ["team-a", "team-b"]}, namespace="ops")
    roles = [r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("-gateway")]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    cluster = rule_set(one(docs, "ClusterRole", "-gateway")["rules"])
    assert {resource for _, resource, _ in cluster} == {"tokenreviews", "subjectaccessreviews"}
    assert cluster | rule_set(roles[0]["rules"]) == deploy_gateway_rules()
    for binding in by_kind(docs, "RoleBinding"):
        if binding["metadata"]["name"].endswith("-gateway"):
            assert binding["roleRef"]["kind"] == "Role"
            assert binding["subjects"][0]["namespace"] == "ops"


def test_gateway_values(render: Render) -> None:
    values = {
        "gateway": {
            "enabled": True,
            "replicas": 3,
            "port": 9000,
            "service": {"type": "NodePort", "port": 8000},
            "serviceAccount": {"name": "gw", "annotations": {"a": "b"}},
            "tokenAudiences": ["gw", "https://kubernetes.default.svc"],
            "maxFollowers": 50,
            "maxFollowersPerCaller": 5,
            "recheckSeconds": 10,
            "extraArgs": ["--access-log"],
            "env": [{"name": "X", "value": "1"}],
        }
    }
    docs = render(values)
    gateway = one(docs, "Deployment", "-gateway")
    c = container(gateway)
    assert gateway["spec"]["replicas"] == 3
    assert c["args"] == [
        "--host=0.0.0.0",
        "--port=9000",
        "--max-followers=50",
        "--max-followers-per-caller=5",
        "--recheck-seconds=10",
        "--token-audience=gw",
        "--token-audience=https://kubernetes.default.svc",
        "--access-log",
    ]
    args = gateway_args(c["args"])
    assert (args.audiences, args.max_followers_per_caller) == (
        ["gw", "https://kubernetes.default.svc"],
        5,
    )
    assert env_of(c) == {"X": "1"}
    assert gateway["spec"]["template"]["spec"]["serviceAccountName"] == "gw"
    assert one(docs, "ServiceAccount", "gw")["metadata"]["annotations"] == {"a": "b"}
    service = one(docs, "Service", "-gateway")
    assert (service["spec"]["type"], service["spec"]["ports"][0]["port"]) == ("NodePort", 8000)
