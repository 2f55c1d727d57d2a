"""Flux: deploy/flux's GitRepository and Kustomizations, validated by Flux's own CRDs.

Flux's CRDs come from its controllers' Go modules (devstack/tools/crds).  The objects
are applied to the real API server with a server-side dry run, and the migration
TaskRun is built as Flux would build it (kustomize, then postBuild substitution) and
checked against our CRD the same way.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging_helpers import DEPLOY, Manifest, dump_all, load_all, serve_crds, server_side_apply

from taskrun_dev.stack import Stack

pytestmark = pytest.mark.e2e

FLUX = DEPLOY / "flux"
VARIABLE = re.compile(r"\$\{(\w+)\}")


@pytest.fixture(scope="module")
def flux_crds(stack: Stack, foreign_crds: Path) -> None:
    serve_crds(stack, sorted(foreign_crds.glob("*.toolkit.fluxcd.io_*.yaml")))


def kustomized(stack: Stack, path: Path) -> str:
    return stack.kubectl("kustomize", str(path), check=True).stdout


def by_name(docs: list[Manifest], kind: str, name: str) -> Manifest:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


@pytest.mark.usefixtures("flux_crds")
def test_flux_objects_pass_fluxs_schema(stack: Stack) -> None:
    stack.kubectl("create", "namespace", "flux-system")  # may exist
    docs = load_all(kustomized(stack, FLUX))
    assert sorted(d["kind"] for d in docs) == ["GitRepository", "Kustomization", "Kustomization"]
    server_side_apply(stack, docs)


@pytest.mark.usefixtures("flux_crds")
def test_fluxs_schema_is_enforced(stack: Stack) -> None:
    stack.kubectl("create", "namespace", "flux-system")
    migrate = by_name(load_all(kustomized(stack, FLUX)), "Kustomization", "myapp-migrate")
    del migrate["spec"]["sourceRef"]
    refused = stack.kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", "-", input=dump_all([migrate])
    )
    assert refused.returncode != 0 and "sourceRef" in refused.stderr, refused.stderr


def test_the_app_waits_on_a_migration_that_waits_on_its_taskrun(
    stack: Stack, namespace: str
) -> None:
    docs = load_all(kustomized(stack, FLUX))
    migrate = by_name(docs, "Kustomization", "myapp-migrate")["spec"]
    app = by_name(docs, "Kustomization", "myapp")["spec"]
    assert app["dependsOn"] == [{"name": "myapp-migrate"}]
    assert migrate["sourceRef"] == app["sourceRef"]
    # Ready only once what it applied is Current to kstatus: the TaskRun succeeded.
    assert migrate["wait"] is True
    # Built as Flux builds ./deploy/migrate: kustomize, then postBuild substitution.
    text = kustomized(stack, FLUX / Path(migrate["path"]).name)
    substitute = migrate["postBuild"]["substitute"]
    assert set(VARIABLE.findall(text)) == set(substitute)
    (run,) = load_all(VARIABLE.sub(lambda m: substitute[m.group(1)], text))
    assert run["metadata"]["name"] == f"db-migrate-{substitute['RELEASE']}"
    # Flux gives up on the health check after `timeout`: the run's own deadline is shorter.
    minutes = int(migrate["timeout"].removesuffix("m"))
    assert run["spec"]["timeout"] <= minutes * 60
    # Deleting it would make Flux apply it again, and the migration run again.
    assert "ttlSecondsAfterFinished" not in run["spec"]
    run["metadata"]["namespace"] = namespace  # targetNamespace, here the test's
    server_side_apply(stack, [run])
