"""Fixtures for the operator's end-to-end tests."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskrun_dev.processes import ManagedProcess
from taskrun_dev.stack import Stack

from accounts import Account, make_accounts
from support import TaskRuns

# The shared operator follows the per-test namespaces (`t-...`) only, so a test that
# needs an operator of its own (another backend, a restart) runs it on an `iso-...`
# namespace without two operators fighting over one TaskRun.
SHARED_NAMESPACES = "t-*"


@pytest.fixture(scope="session")
def operator(stack: Stack) -> Iterator[ManagedProcess]:
    args = [
        "--namespace",
        SHARED_NAMESPACES,
        *os.environ.get("TASKRUN_E2E_OPERATOR_ARGS", "").split(),
    ]
    proc = stack.start_operator(extra_args=args)
    assert _handles_a_taskrun(stack, timeout=60), proc.log_path.read_text()[-4000:]
    yield proc
    proc.stop()


def _handles_a_taskrun(stack: Stack, timeout: float) -> bool:
    """Ready once it has handled a TaskRun: leading, and watching the namespaces it
    follows."""
    probe = f"t-operator-ready-{uuid.uuid4().hex[:6]}"
    stack.kubectl("create", "namespace", probe, check=True)
    ready = TaskRuns(stack, probe)
    ready.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(ready.manifest("ready", {"task": "x.y", "cancel": True})),
        check=True,
    )
    try:
        ready.finished("ready", timeout=timeout)
    except AssertionError:
        return False
    return True


@pytest.fixture
def runs(
    stack: Stack, worker: ManagedProcess, operator: ManagedProcess, namespace: str
) -> TaskRuns:
    """TaskRuns in a fresh namespace, with the shared worker and operator running."""
    return TaskRuns(stack, namespace)


@pytest.fixture(scope="session")
def gateway(stack: Stack) -> Iterator[str]:
    """The gateway as a process (its own ServiceAccount's RBAC); yields its URL."""
    proc = stack.start_gateway()
    assert proc.url
    yield proc.url
    proc.stop()


@pytest.fixture
def accounts(
    stack: Stack,
    namespace: str,
    tmp_path: Path,
    worker: ManagedProcess,
    operator: ManagedProcess,
) -> dict[str, Account]:
    """`submitter` and `reader` ServiceAccounts in the test's namespace (accounts.py),
    with the shared worker and operator running."""
    return make_accounts(stack, namespace, tmp_path)
