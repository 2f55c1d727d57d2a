"""KEDA: deploy/keda's ScaledObjects, validated by KEDA's own CRDs on the real API server.

KEDA's CRDs come from its Go module (devstack/tools/crds).  The component is built into
the overlay README.md shows (its very text), and applied with a server-side dry run: the
API server checks each ScaledObject against KEDA's schema.  Beside that, what makes
scaling safe is checked on the built objects: the scaled worker's grace period covers
the hard time limit, nobody but KEDA sets its replicas, and the trigger reads the
worker's own queue on the broker the operator uses.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from packaging_helpers import (
    DEPLOY,
    Manifest,
    build_beside_repo,
    defined_metrics,
    load_all,
    one,
    readme_yaml,
    selected,
    serve_crds,
    server_side_apply,
)

from taskrun_dev.stack import Stack
from taskrun_workers.app import settings_from_env

pytestmark = pytest.mark.e2e

KEDA = DEPLOY / "keda"
DEFAULT_QUEUE = "celery"


@pytest.fixture(scope="module")
def keda_crds(stack: Stack, foreign_crds: Path) -> None:
    serve_crds(stack, sorted(foreign_crds.glob("keda.sh_*.yaml")))


@pytest.fixture
def with_keda(stack: Stack, tmp_path: Path) -> list[Manifest]:
    """The overlay README.md shows: the example worker, with the KEDA component."""
    return build_beside_repo(stack, tmp_path, readme_yaml("Autoscaling with KEDA"))


def queues(container: Manifest) -> list[str]:
    """The queues a `celery worker` command consumes (-Q / --queues), or the default."""
    command = container["command"] + container.get("args", [])
    for i, arg in enumerate(command):
        if arg in ("-Q", "--queues"):
            return str(command[i + 1]).split(",")
        if arg.startswith("--queues="):
            return arg.removeprefix("--queues=").split(",")
    return [DEFAULT_QUEUE]


@pytest.mark.usefixtures("keda_crds")
def test_scaled_worker_passes_kedas_schema_and_is_safe_to_scale(
    stack: Stack, with_keda: list[Manifest]
) -> None:
    server_side_apply(stack, with_keda)
    scaled = one(with_keda, "ScaledObject")
    worker = one(with_keda, "Deployment", "-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert scaled["metadata"]["namespace"] == worker["metadata"]["namespace"]
    # Only KEDA's autoscaler sets the count: an apply would put a count back.
    assert "replicas" not in worker["spec"]
    # A pod scaled away may finish its longest task: grace >= the hard time limit.
    config = yaml.safe_load(one(with_keda, "ConfigMap")["data"]["config.yaml"])
    pod = worker["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= config["defaults"]["timeLimit"]
    # The trigger reads the worker's queue, on the broker the operator sends to.
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert [trigger["metadata"]["listName"]] == queues(pod["containers"][0])
    broker = urlsplit(one(with_keda, "Secret")["stringData"]["CELERY_BROKER_URL"])
    assert trigger["metadata"]["address"] == f"{broker.hostname}:{broker.port}"
    assert trigger["metadata"]["databaseIndex"] == broker.path.strip("/")
    # The list shows what waits only if a worker holds at most one message per process.
    settings = settings_from_env({})
    assert settings["worker_prefetch_multiplier"] == 1
    assert settings["task_acks_late"] is False


@pytest.mark.usefixtures("keda_crds")
def test_prometheus_variant_passes_and_reads_an_exported_metric(
    stack: Stack, promtool: tuple[Path, Path]
) -> None:
    scaled = load_all((KEDA / "scaledobject-prometheus.yaml").read_text())
    server_side_apply(stack, scaled)
    (trigger,) = one(scaled, "ScaledObject")["spec"]["triggers"]
    [names] = selected(promtool[1], [trigger["metadata"]["query"]])
    assert names == ["taskrun_queue_runs"]
    assert set(names) <= defined_metrics()


@pytest.mark.usefixtures("keda_crds")
def test_kedas_schema_is_enforced(stack: Stack) -> None:
    """Trigger metadata is a map of strings in KEDA's schema: a bare number is refused."""
    (scaled,) = load_all((KEDA / "scaledobject.yaml").read_text())
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = 4
    refused = stack.kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", "-", input=yaml.safe_dump(scaled)
    )
    assert refused.returncode != 0
    assert "listLength" in refused.stderr and "string" in refused.stderr, refused.stderr
