"""An AMQP broker's and a database backend's passwords never show when they fail: not in
a TaskRun's status, not in its Events, not in the operator's log (the Redis case is in
test_tenancy.py).

An operator of its own, in a namespace of its own (`iso-...`), `--verbose` (where
libraries say the most), given a URL with a password to a port where nothing listens,
the other URL the stack's Redis.  (Today neither kombu's nor SQLAlchemy's errors quote
the URL there: these hold the outcome whatever a library logs; tests/unit/test_redact.py
holds the masking itself.)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from taskrun_dev.processes import ManagedProcess, free_port
from taskrun_dev.stack import Stack

from support import TaskRuns


def own_operator(stack: Stack, runs: TaskRuns, tmp_path: Path, **urls: str) -> ManagedProcess:
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"brokerTimeout": 2, "backendTimeout": 2}))
    return stack.start_operator(
        f"op-{runs.namespace}",
        env_overrides=urls,
        config_path=config,
        extra_args=["--namespace", runs.namespace, "--verbose"],
    )


@pytest.mark.parametrize(
    ("variable", "url", "shows"),
    [
        # The broker refuses the send: the run waits, BackendUnavailable.
        ("CELERY_BROKER_URL", "amqp://app:{password}@127.0.0.1:{port}//", "BackendUnavailable"),
        # The database is first touched by a read (a database down at the start holds
        # nothing up): a run in flight makes the operator read it, and fail.
        (
            "CELERY_RESULT_BACKEND",
            "db+postgresql://app:{password}@127.0.0.1:{port}/results",
            "OperationalError",
        ),
    ],
    ids=["amqp-broker", "database-backend"],
)
def test_a_password_never_shows(
    stack: Stack,
    make_namespace: Callable[[str], str],
    tmp_path: Path,
    variable: str,
    url: str,
    shows: str,
) -> None:
    password = f"pw-{uuid.uuid4().hex[:8]}"
    runs = TaskRuns(stack, make_namespace("iso-redact"))
    own = own_operator(
        stack, runs, tmp_path, **{variable: url.format(password=password, port=free_port())}
    )
    try:
        runs.apply("down", "calculate_sum", args=[[1, 2]], timeout=120)
        runs.wait("down", lambda s: s.get("reason") == "BackendUnavailable", "BackendUnavailable")
        runs.wait_event("down", "Warning", "BackendUnavailable", timeout=30)
        shown = runs.kubectl("get", "taskruns,events", "-o", "json", check=True).stdout
        assert shows in shown and password not in shown
        log = own.log_text()
        assert password not in log, log[-3000:]
    finally:
        runs.kubectl("delete", "taskrun", "down", "--timeout=60s")
        own.stop()
