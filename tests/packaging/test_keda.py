"""KEDA: deploy/keda's ScaledObjects, validated by KEDA's own CRDs on the real API server.

KEDA's CRDs come from its Go module (devstack/tools/crds).  The component is built into
the overlay README.md shows (its very text), and applied with a server-side dry run: the
API server checks each ScaledObject against KEDA's schema.  Beside that, what makes
scaling safe is checked on the built objects: the scaled worker's grace period covers
the hard time limit, nobody but KEDA sets its replicas, and the trigger reads the
worker's own queue on the broker the operator uses.
"""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from kombu import Connection
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


# -- a RabbitMQ broker: deploy/keda/rabbitmq ------------------------------------------------

# The env file README.md's RabbitMQ overlay generates its Secret from (kept out of git).
RABBIT_CONNECTION = {
    "CELERY_BROKER_URL": "amqp://app:s3cr%40t@rabbitmq.example.internal:5672//",
    "CELERY_RESULT_BACKEND": "db+postgresql://app:s3cr%40t@db.example.internal/results",
}


@pytest.fixture
def with_rabbitmq_keda(stack: Stack, tmp_path: Path) -> list[Manifest]:
    """README.md's second overlay: the worker and the RabbitMQ component, the Secret
    generated from an env file."""
    mine = readme_yaml("Autoscaling with KEDA", 1)
    (generator,) = mine["secretGenerator"]
    (env_file,) = generator["envs"]
    text = "".join(f"{k}={v}\n" for k, v in RABBIT_CONNECTION.items())
    return build_beside_repo(stack, tmp_path, mine, {env_file: text})


def broker_ref(deployment: Manifest) -> dict[str, str]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    (ref,) = [e["valueFrom"]["secretKeyRef"] for e in c["env"] if e["name"] == "CELERY_BROKER_URL"]
    return {"name": ref["name"], "key": ref["key"]}


@pytest.mark.usefixtures("keda_crds")
def test_rabbitmq_variant_reads_the_operators_broker_url_from_its_secret(
    stack: Stack, with_rabbitmq_keda: list[Manifest]
) -> None:
    docs = with_rabbitmq_keda
    server_side_apply(stack, docs)
    scaled = one(docs, "ScaledObject")
    auth = one(docs, "TriggerAuthentication")
    worker = one(docs, "Deployment", "-worker")
    operator = one(docs, "Deployment", "-operator")
    secret = one(docs, "Secret")
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    namespaces = {d["metadata"]["namespace"] for d in (scaled, auth, worker, secret)}
    assert namespaces == {"celery-taskrun-system"}
    # The same scale-down safety as the Redis component.
    assert "replicas" not in worker["spec"]
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["config.yaml"])
    pod = worker["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= config["defaults"]["timeLimit"]
    # The worker's queue, counted over AMQP (no management plugin), in QueueLength mode.
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    metadata = trigger["metadata"]
    assert (metadata["mode"], metadata["protocol"]) == ("QueueLength", "amqp")
    assert [metadata["queueName"]] == queues(pod["containers"][0])
    assert int(metadata["value"]) > 0
    # The host only from the Secret the operator and the worker read, by the same key,
    # under the name kustomize gave the generated Secret: never in plain text.
    assert "host" not in metadata
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "host"
    assert {"name": ref["name"], "key": ref["key"]} == broker_ref(operator) == broker_ref(worker)
    assert ref["name"] == secret["metadata"]["name"] != "celery-taskrun-connection"
    # KEDA reads that URL as Celery does: a scheme it knows (amqp, amqps; not Celery's
    # pyamqp alias), and the vhost the path's rest ("//": the vhost "/"), as kombu does.
    url = base64.b64decode(secret["data"][ref["key"]]).decode()
    assert urlsplit(url).scheme in {"amqp", "amqps"}
    assert Connection(url).virtual_host == urlsplit(url).path[1:] == "/"


@pytest.mark.usefixtures("keda_crds")
def test_kedas_trigger_authentication_schema_is_enforced(stack: Stack) -> None:
    """A secretTargetRef names its parameter, Secret and key: one without a key is refused."""
    docs = load_all((KEDA / "rabbitmq" / "scaledobject.yaml").read_text())
    auth = one(docs, "TriggerAuthentication")
    server_side_apply(stack, [auth])
    del auth["spec"]["secretTargetRef"][0]["key"]
    refused = stack.kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", "-", input=yaml.safe_dump(auth)
    )
    assert refused.returncode != 0
    assert "key" in refused.stderr and "Required" in refused.stderr, refused.stderr
