"""The CRD in deploy/ is generated from the models and must not drift."""

from pathlib import Path
from typing import Any

import yaml

from celery_taskrun.api import crd

ROOT = Path(__file__).resolve().parents[2]


def test_committed_crd_matches_the_models() -> None:
    committed = (ROOT / "deploy" / "crd.yaml").read_text()
    assert committed == crd.render(), (
        "deploy/crd.yaml drifted: run python -m celery_taskrun.api.crd"
    )


def walk(node: Any, path: str = "") -> list[str]:
    """Paths of nodes that break structural-schema rules."""
    bad = []
    if isinstance(node, dict):
        for banned in ("$ref", "anyOf", "$defs", "title", "default"):
            if banned in node:
                bad.append(f"{path}.{banned}")
        if "properties" in node and node.get("type") != "object":
            bad.append(f"{path}: properties without type object")
        for key, value in node.items():
            bad += walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            bad += walk(value, f"{path}[{i}]")
    return bad


def test_schema_is_structural() -> None:
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    # The one default: a status the operator has not written reads as unobserved.
    status = schema["properties"]["status"]
    assert (status["default"], status["properties"]["observedGeneration"]["default"]) == ({}, 0)
    assert walk(schema) == [
        ".properties.status.default",
        ".properties.status.properties.observedGeneration.default",
    ]
    spec = schema["properties"]["spec"]
    assert spec["properties"]["timeLimit"] == {
        "description": "Hard time limit of one execution.",
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": 31536000,
    }
    assert spec["properties"]["kwargs"]["x-kubernetes-preserve-unknown-fields"] is True


def test_contract_names() -> None:
    doc = next(yaml.safe_load_all(crd.render()))
    names = doc["spec"]["names"]
    assert (doc["spec"]["group"], names["plural"], names["kind"], names["shortNames"]) == (
        "celery.taskrun.dev",
        "taskruns",
        "TaskRun",
        ["tr"],
    )
    version = doc["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Task", "Phase", "Reason", "Progress", "Age", "Duration"} <= columns
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for field in (
        "phase",
        "state",
        "reason",
        "message",
        "taskId",
        "attempt",
        "worker",
        "submittedAt",
        "startedAt",
        "completedAt",
        "progress",
        "result",
        "resultTruncated",
        "error",
        "limits",
        "conditions",
        "observedGeneration",
    ):
        assert field in status, field
