"""The kustomize base, components and overlays of deploy/kustomize.

- The base and components are copies of deploy/*.yaml (kustomize reads nothing outside
  a kustomization's directory): in sync, and `kubectl kustomize` of them gives exactly
  deploy/'s objects.
- `kubectl apply --server-side -k` of each overlay passes the real API server (a
  server-side dry run: no deployment controller, scheduler or kubelet runs here to make
  pods anyway).
- The Helm chart, given values that say what the base says, renders the same objects
  wherever both have one: specs compared with names, labels and references made
  neutral.  The namespaced overlay grants what the chart's `watchNamespaces` grants.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging_helpers import (
    AGGREGATE_TO,
    DEPLOY,
    KUSTOMIZE,
    Manifest,
    Render,
    aggregated,
    build_beside_repo,
    by_kind,
    load_all,
    one,
    operator_role,
    readme_yaml,
    rule_set,
    server_side_apply,
)

from taskrun_dev import copies
from taskrun_dev.stack import Stack

OVERLAYS = ["base", "overlays/with-worker", "overlays/namespaced"]
WATCHED = "taskruns"
# The chart's values that say what deploy/ says.
LIKE_DEPLOY: dict[str, Any] = {
    "image": {"tag": "dev"},
    "celery": {
        "createSecret": True,
        "brokerUrl": "redis://redis.celery-taskrun-system.svc:6379/0",
        "resultBackend": "redis://redis.celery-taskrun-system.svc:6379/1",
    },
    "config": {"defaults": {"timeLimit": 3600, "softTimeLimit": 3300}},
    "worker": {"enabled": True, "replicas": 2},
}
Key = tuple[str, str]


def deploy_docs(*names: str) -> list[Manifest]:
    return [doc for name in names for doc in load_all((DEPLOY / name).read_text())]


def built(stack: Stack, directory: str) -> list[Manifest]:
    return load_all(stack.kubectl("kustomize", str(KUSTOMIZE / directory), check=True).stdout)


def canonical(docs: list[Manifest]) -> list[str]:
    return sorted(json.dumps(d, sort_keys=True) for d in docs)


def key(doc: Manifest) -> Key:
    """What an object is for, whatever its name: its kind, and its component if any.
    CRDs and admission policies are named by the kind they define or guard, never by a
    release: their name.  People's roles by the default roles that aggregate them."""
    labels = doc["metadata"].get("labels", {})
    if doc["kind"].startswith("ValidatingAdmissionPolicy") or doc["kind"].endswith("Definition"):
        return doc["kind"], doc["metadata"]["name"]
    if doc in aggregated([doc]):
        return doc["kind"], ",".join(sorted(k for k in labels if k.startswith(AGGREGATE_TO)))
    return doc["kind"], labels.get("app.kubernetes.io/component", "")


def essence(docs: list[Manifest]) -> dict[Key, Any]:
    """Each object by `key`, without names, labels and annotations, its references to
    other objects replaced by theirs `key`, its image by the repository alone."""
    keys = {(d["kind"], d["metadata"]["name"]): key(d) for d in docs}

    def ref(kind: str, name: str) -> str:
        return "/".join(keys.get((kind, name), (kind, f"missing {name}")))

    out: dict[Key, Any] = {}
    for doc in docs:
        doc = copy.deepcopy(doc)
        meta = doc.pop("metadata")
        doc["namespace"] = meta.get("namespace")
        spec = doc.get("spec", {})
        if doc["kind"] == "Deployment":
            spec.pop("selector")
            spec["template"].pop("metadata")
            pod = spec["template"]["spec"]
            if "serviceAccountName" in pod:
                pod["serviceAccountName"] = ref("ServiceAccount", pod["serviceAccountName"])
            for volume in pod.get("volumes", []):
                if "configMap" in volume:
                    volume["configMap"]["name"] = ref("ConfigMap", volume["configMap"]["name"])
            for container in pod["containers"]:
                container["image"] = container["image"].rsplit(":", 1)[0]
                # An empty variable is an unset one to our processes (`env.get(X) or ...`).
                env = [e for e in container.pop("env", []) if e.get("value", None) != ""]
                if env:
                    container["env"] = env
                for variable in container.get("env", []):
                    source = variable.get("valueFrom", {}).get("secretKeyRef")
                    if source:
                        source["name"] = ref("Secret", source["name"])
        elif doc["kind"] == "Service":
            spec.pop("selector")
        elif doc["kind"] in {"ClusterRole", "Role"}:
            doc["rules"] = sorted(rule_set(doc["rules"]))
        elif doc["kind"] in {"ClusterRoleBinding", "RoleBinding"}:
            doc["roleRef"]["name"] = ref(doc["roleRef"]["kind"], doc["roleRef"]["name"])
            for subject in doc["subjects"]:
                subject["name"] = ref(subject["kind"], subject["name"])
        elif doc["kind"] == "ConfigMap":
            doc["data"] = {k: yaml.safe_load(v) for k, v in doc["data"].items()}
        found = key(doc | {"metadata": meta})
        assert found not in out, f"two objects for {found}"
        out[found] = doc
    return out


def assert_selectors_hold(docs: list[Manifest]) -> None:
    """Within one render, each Service and Deployment selects its own pods."""
    deployments = by_kind(docs, "Deployment")
    pods = {key(d): d["spec"]["template"]["metadata"]["labels"] for d in deployments}
    for doc in deployments:
        assert doc["spec"]["selector"]["matchLabels"].items() <= pods[key(doc)].items()
    for doc in by_kind(docs, "Service"):
        assert doc["spec"]["selector"].items() <= pods[("Deployment", key(doc)[1])].items()


# -- no API server needed ---------------------------------------------------------------


def test_copies_are_in_sync() -> None:
    assert copies.stale() == [], "run python -m taskrun_dev.copies"


def test_a_copy_whose_source_lost_its_object_fails(tmp_path: Path) -> None:
    worker_only = deploy_docs("worker.yaml")[2:]
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "worker.yaml").write_text(yaml.safe_dump_all(worker_only))
    redis = next(c for c in copies.COPIES if c.target.endswith("redis/redis.yaml"))
    with pytest.raises(copies.CopyError, match=r"has no .*'redis'"):
        copies.render(redis, tmp_path)


# -- kubectl kustomize and apply -k, against the real API server ---------------------------


@pytest.mark.e2e
def test_base_and_with_worker_are_deploys_objects(stack: Stack) -> None:
    operator = deploy_docs("crd.yaml", "crontaskrun-crd.yaml", "rbac.yaml", "operator.yaml")
    assert canonical(built(stack, "base")) == canonical(operator)
    whole = operator + deploy_docs("worker.yaml")
    assert canonical(built(stack, "overlays/with-worker")) == canonical(whole)


@pytest.mark.e2e
def test_namespaced_overlay_watches_one_namespace(stack: Stack) -> None:
    docs = built(stack, "overlays/namespaced")
    args = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace")] == [f"--namespace={WATCHED}"]
    (role,) = [r for r in by_kind(docs, "Role") if r["metadata"]["namespace"] == WATCHED]
    cluster = operator_role(docs)
    assert {r for _, r, _ in rule_set(cluster["rules"])} == {
        "customresourcedefinitions",
        "namespaces",
    }
    assert all(verb in {"get", "list", "watch"} for *_, verb in rule_set(cluster["rules"]))
    everything = rule_set(operator_role(deploy_docs("rbac.yaml"))["rules"])
    assert rule_set(role["rules"]) | rule_set(cluster["rules"]) == everything
    (binding,) = [b for b in by_kind(docs, "RoleBinding") if b["metadata"]["namespace"] == WATCHED]
    assert binding["subjects"] == one(docs, "ClusterRoleBinding")["subjects"]


@pytest.mark.e2e
@pytest.mark.parametrize("directory", OVERLAYS)
def test_apply_k_passes_the_api_server(stack: Stack, directory: str) -> None:
    stack.kubectl("create", "namespace", WATCHED)  # the namespaced overlay's; may exist
    result = stack.kubectl(
        "apply", "--server-side", "--dry-run=server", "-k", str(KUSTOMIZE / directory)
    )
    assert result.returncode == 0, result.stderr
    applied = [line for line in result.stdout.splitlines() if "(server dry run)" in line]
    assert len(applied) == len(built(stack, directory)), result.stdout


# The env file the README's overlay reads, kept out of git (a URL with a password).
CONNECTION = {
    "CELERY_BROKER_URL": "amqp://app:s3cr%40t@rabbitmq.example.internal:5672//",
    "CELERY_RESULT_BACKEND": "db+postgresql://app:s3cr%40t@db.example.internal/results",
}
CONNECTION_ENV = "".join(f"{k}={v}\n" for k, v in CONNECTION.items())


@pytest.mark.e2e
def test_readme_overlay_sets_the_image_and_the_broker(stack: Stack, tmp_path: Path) -> None:
    """The Secret comes from an env file beside the overlay (a secretGenerator): named with
    its content's hash, so a changed URL rolls the pods, and the operator reads it."""
    mine = readme_yaml("Install with kustomize")
    (generator,) = mine["secretGenerator"]
    (env_file,) = generator["envs"]
    docs = build_beside_repo(stack, tmp_path, mine, {env_file: CONNECTION_ENV})
    (image,) = mine["images"]
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"{image['newName']}:{image['newTag']}"
    secret = one(docs, "Secret")
    name = secret["metadata"]["name"]
    assert name.startswith("celery-taskrun-connection-")  # the content's hash
    stored = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert stored == CONNECTION
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert refs == {k: {"name": name, "key": k} for k in CONNECTION}
    server_side_apply(stack, docs)


# -- the Helm chart renders the same objects ----------------------------------------------


@pytest.mark.e2e
def test_chart_and_kustomize_render_the_same_objects(stack: Stack, render: Render) -> None:
    chart_docs = render(
        LIKE_DEPLOY, namespace="celery-taskrun-system", release="celery-taskrun", include_crds=True
    )
    kustomized = built(stack, "overlays/with-worker")
    for docs in (chart_docs, kustomized):
        assert_selectors_hold(docs)
    chart, ours = essence(chart_docs), essence(kustomized)
    # The chart makes no namespace and no Redis; everything it makes, the base makes too.
    assert set(ours) - set(chart) == {
        ("Namespace", ""),
        ("Deployment", "broker"),
        ("Service", "broker"),
    }
    assert set(chart) <= set(ours)
    assert len(chart) == 22
    for k in sorted(chart):
        assert chart[k] == ours[k], k


@pytest.mark.e2e
def test_namespaced_overlay_grants_what_the_chart_grants(stack: Stack, render: Render) -> None:
    chart = render(
        {"watchNamespaces": [WATCHED]}, namespace="celery-taskrun-system", release="celery-taskrun"
    )
    ours = built(stack, "overlays/namespaced")

    def watched(docs: list[Manifest], kind: str) -> Manifest:
        (found,) = [d for d in by_kind(docs, kind) if d["metadata"]["namespace"] == WATCHED]
        return found

    assert rule_set(watched(ours, "Role")["rules"]) == rule_set(watched(chart, "Role")["rules"])
    assert rule_set(operator_role(ours)["rules"]) == rule_set(operator_role(chart)["rules"])
    for docs in (ours, chart):
        assert watched(docs, "RoleBinding")["roleRef"]["kind"] == "Role"
    args = [one(d, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
            for d in (ours, chart)]  # fmt: skip
    assert args[0] == args[1]
