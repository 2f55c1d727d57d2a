"""People's rights on TaskRuns and CronTaskRuns: ClusterRoles that Kubernetes' own
view, edit and admin roles aggregate, in every install path (deploy/, each kustomize
overlay, the chart), so `kubectl create rolebinding --clusterrole=edit` gives a team
rights on both kinds.  No API server: the manifests as each path makes them (kustomize
by the stack's kubectl, the chart by helm).  That the API server merges them is
tests/e2e/test_user_roles.py's."""

from __future__ import annotations

import subprocess

import pytest
from packaging_helpers import AGGREGATE_TO, DEPLOY, KUSTOMIZE, Manifest, Render, aggregated
from packaging_helpers import load_all as parse_all

from taskrun_dev.binaries import ensure_binaries

READ = {"get", "list", "watch"}
WRITE = READ | {"create", "update", "patch", "delete", "deletecollection"}
# Which default roles aggregate a role (its aggregate-to-* labels): its verbs.
EXPECTED = {
    frozenset({"view"}): READ,
    frozenset({"edit", "admin"}): WRITE,
}
KINDS = {"taskruns", "crontaskruns"}


def people(docs: list[Manifest]) -> dict[frozenset[str], set[tuple[str, str, str]]]:
    """Each aggregated role, by the default roles it joins: its (group, resource, verb)."""
    out = {}
    for role in aggregated(docs):
        labels = role["metadata"]["labels"]
        joins = frozenset(k.removeprefix(AGGREGATE_TO) for k, v in labels.items() if v == "true")
        assert joins not in out, f"two roles join {sorted(joins)}"
        out[joins] = {
            (group, resource, verb)
            for rule in role["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
    return out


def assert_people_roles(docs: list[Manifest]) -> None:
    assert people(docs) == {
        joins: {("celery.taskrun.dev", kind, verb) for kind in KINDS for verb in verbs}
        for joins, verbs in EXPECTED.items()
    }


def test_deploy_rbac() -> None:
    assert_people_roles(parse_all((DEPLOY / "rbac.yaml").read_text()))


@pytest.mark.parametrize("directory", ["base", "overlays/with-worker", "overlays/namespaced"])
def test_kustomize(directory: str) -> None:
    kubectl = ensure_binaries(lambda message: None).kubectl
    built = subprocess.run(
        [str(kubectl), "kustomize", str(KUSTOMIZE / directory)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert_people_roles(parse_all(built.stdout))


@pytest.mark.parametrize("values", [None, {"watchNamespaces": ["team-a"]}])
def test_chart(render: Render, values: dict[str, list[str]] | None) -> None:
    assert_people_roles(render(values))


def test_chart_without_rbac(render: Render) -> None:
    assert people(render({"rbac": {"create": False}})) == {}
