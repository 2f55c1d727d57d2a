"""deploy/examples/, every file (the schedules/ and outcomes/ folders too), admitted by
the real API server as it stands: schema, CEL rules and admission policies, the
contract's defaults filled in.  A server-side dry run: nothing stays, nothing runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from taskrun_dev.stack import Stack

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
FILES = sorted(EXAMPLES.rglob("*.yaml"))


def test_there_are_examples_of_both_kinds() -> None:
    kinds = {doc["kind"] for path in FILES for doc in yaml.safe_load_all(path.read_text())}
    assert kinds == {"TaskRun", "CronTaskRun"}
    assert len([p for p in FILES if p.parent.name == "schedules"]) >= 3


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_the_api_server_admits_the_example(stack: Stack, namespace: str, path: Path) -> None:
    result = stack.kubectl(
        "apply", "--server-side", "--dry-run=server", "-n", namespace, "-f", str(path), "-o", "yaml"
    )
    assert result.returncode == 0, result.stderr
    for doc in yaml.safe_load_all(result.stdout):
        for item in doc.get("items", [doc]):
            assert item["status"] == {"observedGeneration": 0}
            if item["kind"] == "CronTaskRun":
                # Read back as the API server stores it: the contract's defaults filled in.
                assert {"timeZone", "concurrencyPolicy", "missedRuns", "suspend"} <= set(
                    item["spec"]
                )
