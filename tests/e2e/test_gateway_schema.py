"""Schemathesis on the gateway's own OpenAPI document: whatever it generates (valid and
invalid specs, names, filters, timeouts), the running gateway answers as documented and
never with a 5xx."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from celery_taskrun.gateway.app import create_app
from taskrun_dev.stack import Stack

from accounts import Account, make_accounts

pytestmark = pytest.mark.e2e

# The document as the app builds it (no connection needed): one test per operation.
DOCUMENT = create_app().openapi()
OPERATIONS = [(path, method) for path, ops in DOCUMENT["paths"].items() for method in ops]
# Per operation and mode; enough to reach every branch, few enough for the default run.
EXAMPLES = 15
# The longest `wait` a generated request may ask for (the runs it names do not exist,
# but a slow answer must not stall the suite).
MAX_WAIT = 2


@pytest.fixture
def submitter(stack: Stack, tmp_path: Path) -> Iterator[Account]:
    """A submitter in a namespace no operator watches: what the examples create is
    junk by design, and only the gateway's answers are under test here."""
    namespace = f"gateway-schema-{uuid.uuid4().hex[:6]}"
    stack.kubectl("create", "namespace", namespace, check=True)
    yield make_accounts(stack, namespace, tmp_path)["submitter"]
    stack.kubectl("delete", "taskruns", "--all", "-n", namespace, "--wait=false")
    stack.kubectl("delete", "namespace", namespace, "--wait=false")


def steered(document: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The document with namespaces where the caller may act and where it may not."""
    document = copy.deepcopy(document)
    for operation in (op for path in document["paths"].values() for op in path.values()):
        for parameter in operation.get("parameters", []):
            if parameter["name"] == "namespace":
                parameter["schema"] = {"type": "string", "enum": [namespace, "default"]}
            elif parameter["name"] == "timeout":
                parameter["schema"]["maximum"] = MAX_WAIT
    return document


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("path", "method"), OPERATIONS, ids=[f"{m} {p}" for p, m in OPERATIONS])
def test_gateway_answers_as_documented(
    gateway: str, submitter: Account, path: str, method: str, mode: GenerationMode
) -> None:
    served = httpx.get(f"{gateway}/openapi.json").json()
    assert served == DOCUMENT
    schema = schemathesis.openapi.from_dict(steered(served, submitter.namespace))
    operation = schema[path][method]

    @given(case=operation.as_strategy(mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def answers(case: Any) -> None:
        case.call_and_validate(
            base_url=gateway,
            headers=submitter.headers,
            # Every check but "a schema-valid request is accepted": a label selector the
            # API server cannot parse, or a spec its CRD rules refuse, is a 422 by design.
            excluded_checks=[positive_data_acceptance],
        )

    answers()
