"""`kubectl-taskrun` end to end, as a user's shell runs it: their kubeconfig (a
ServiceAccount token whose context names the namespace), the real API server, operator
and worker. Every exit code comes from a real outcome."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskrun_dev.stack import Stack

from accounts import Account
from support import TASKS

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
CLI = str(BIN / "kubectl-taskrun")


def env_for(account: Account) -> dict[str, str]:
    return {**os.environ, "KUBECONFIG": str(account.kubeconfig)}


def cli(account: Account, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """`kubectl-taskrun ARGS` with the account's kubeconfig (no -n: its context's)."""
    return subprocess.run(
        [CLI, *args],
        env=env_for(account),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_run_and_wait_print_the_result(accounts: dict[str, Account], stack: Stack) -> None:
    submitter = accounts["submitter"]
    done = cli(submitter, "run", f"{TASKS}.calculate_sum", "[1, 2, 3]", "--wait", "--for", "30s")
    assert (done.returncode, done.stdout) == (0, "6\n"), done.stderr
    assert "created" in done.stderr

    # Each ARG and VALUE is JSON when it parses as JSON, else a string.
    echo = cli(
        submitter,
        "run", f"{TASKS}.echo", "1", "x", '{"a": [1]}', "true", "--kwarg", "k=v",
        "--kwarg", "n=5", "--kwarg", 'q="5"', "--wait",
    )  # fmt: skip
    assert echo.returncode == 0, echo.stderr
    assert json.loads(echo.stdout) == {
        "args": [1, "x", {"a": [1]}, True],
        "kwargs": {"k": "v", "n": 5, "q": "5"},
    }

    # Without --wait: the generated name, then wait / result / get / describe on it.
    created = cli(submitter, "run", f"{TASKS}.calculate_sum", "[4, 5]")
    assert created.returncode == 0, created.stderr
    name = created.stdout.strip()
    assert name.startswith("calculate-sum-")
    assert stack.kubectl("get", "taskrun", name, "-n", submitter.namespace).returncode == 0
    waited = cli(submitter, "wait", name, "--for", "30")
    assert (waited.returncode, waited.stdout) == (0, "9\n"), waited.stderr
    # A reader may read and wait, and gets the same answers.
    reader = accounts["reader"]
    result = cli(reader, "result", name)
    assert (result.returncode, result.stdout) == (0, "9\n"), result.stderr
    table = cli(reader, "get", name)
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split()[:4] == ["NAME", "TASK", "PHASE", "REASON"]
    assert table.stdout.splitlines()[1].split()[:3] == [name, f"{TASKS}.calculate_sum", "Succeeded"]
    described = cli(reader, "describe", name)
    assert "Phase:        Succeeded" in described.stdout
    assert "Result:       9" in described.stdout

    # The same command as a kubectl plugin.
    plugin = subprocess.run(
        [str(stack.binaries.kubectl), "taskrun", "result", name],
        env={**env_for(reader), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (plugin.returncode, plugin.stdout) == (0, "9\n"), plugin.stderr


def test_failure_exits_1_with_the_error(accounts: dict[str, Account]) -> None:
    submitter = accounts["submitter"]
    failed = cli(submitter, "run", f"{TASKS}.fail", "boom", "--name", "bad", "--wait")
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert "taskrun/bad Failed (TaskError): ValueError: boom" in failed.stderr
    assert cli(submitter, "result", "bad").returncode == 1
    table = cli(submitter, "get")
    assert "ValueError: boom" in table.stdout
    described = cli(submitter, "describe", "bad")
    assert "Error:        ValueError: boom" in described.stdout
    assert "Traceback (most recent call last)" in described.stdout


def test_deadline_exits_3(accounts: dict[str, Account]) -> None:
    timed_out = cli(
        accounts["submitter"], "run", f"{TASKS}.sleep", "30", "--timeout", "1", "--wait"
    )
    assert timed_out.returncode == 3, timed_out.stderr
    assert "TimedOut (DeadlineExceeded)" in timed_out.stderr


def test_cancel_while_waiting_exits_4(accounts: dict[str, Account]) -> None:
    submitter = accounts["submitter"]
    assert cli(submitter, "run", f"{TASKS}.sleep", "30", "--name", "long").returncode == 0
    waiter = subprocess.Popen(
        [CLI, "wait", "long", "--for", "60s"],
        env=env_for(submitter),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        cancelled = cli(submitter, "cancel", "long")
        assert cancelled.returncode == 0, cancelled.stderr
        assert "cancel requested" in cancelled.stdout
        _, stderr = waiter.communicate(timeout=60)
    finally:
        waiter.kill()
    assert waiter.returncode == 4, stderr
    assert "taskrun/long Revoked (Cancelled)" in stderr
    again = cli(submitter, "cancel", "long")
    assert (again.returncode, "already finished: Revoked" in again.stderr) == (0, True)


def test_a_wait_that_runs_out_exits_124_and_the_run_goes_on(
    accounts: dict[str, Account],
) -> None:
    submitter = accounts["submitter"]
    started = time.monotonic()
    ran_out = cli(
        submitter, "run", f"{TASKS}.sleep", "30", "--name", "slow", "--wait", "--for", "1s"
    )
    elapsed = time.monotonic() - started
    assert ran_out.returncode == 124, ran_out.stderr
    assert "the run goes on" in ran_out.stderr
    assert elapsed < 15, elapsed  # interpreter start included
    assert cli(submitter, "result", "slow").returncode == 124
    assert cli(submitter, "cancel", "slow").returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run"], "the following arguments are required: task"),
        (["launch", "x"], "invalid choice"),
        (["run", "t", "--for", "5x"], "invalid duration"),
        (["run", "t", "--kwarg", "novalue"], "expected KEY=VALUE"),
        (["run", "t", "--priority", "300"], "priority"),
        (["run", "t", "--time-limit", "5", "--soft-time-limit", "10"], "must be below"),
        (["wait", "no-such-run", "--for", "5"], "NotFound"),
    ],
    ids=["no-task", "command", "duration", "kwarg", "model", "api-server", "missing"],
)
def test_usage_and_refusals_exit_2(
    accounts: dict[str, Account], args: list[str], message: str
) -> None:
    refused = cli(accounts["submitter"], *args)
    assert refused.returncode == 2, refused.stderr
    assert message in refused.stderr


def test_rbac_refusal_exits_2(accounts: dict[str, Account]) -> None:
    refused = cli(accounts["reader"], "run", f"{TASKS}.calculate_sum", "[1]")
    assert refused.returncode == 2
    assert "403 Forbidden" in refused.stderr


def test_trigger_suspend_and_resume_a_schedule(accounts: dict[str, Account], stack: Stack) -> None:
    submitter = accounts["submitter"]
    namespace = submitter.namespace
    cron = {
        "apiVersion": "celery.taskrun.dev/v1alpha1",
        "kind": "CronTaskRun",
        "metadata": {"name": "yearly-sum", "namespace": namespace},
        "spec": {
            "schedule": "@yearly",
            "taskRunTemplate": {"spec": {"task": f"{TASKS}.calculate_sum", "args": [[2, 3]]}},
        },
    }
    stack.kubectl("apply", "-f", "-", input=json.dumps(cron), check=True)
    # A run now, from the template, waited for like `run --wait`.
    done = cli(submitter, "trigger", "yearly-sum", "--wait", "--for", "30s")
    assert (done.returncode, done.stdout) == (0, "5\n"), done.stderr
    made = stack.kubectl_json(
        "get", "taskruns", "-n", namespace, "-l", "celery.taskrun.dev/cron=yearly-sum"
    )["items"]
    [run] = made
    assert run["metadata"]["name"].startswith("yearly-sum-manual-")
    assert run["metadata"]["ownerReferences"][0]["kind"] == "CronTaskRun"

    for command, suspended in (("suspend", True), ("resume", False)):
        answer = cli(submitter, command, "yearly-sum")
        assert answer.returncode == 0, answer.stderr
        spec = stack.kubectl_json("get", "crontaskrun", "yearly-sum", "-n", namespace)["spec"]
        assert spec["suspend"] is suspended
    missing = cli(submitter, "trigger", "no-such-schedule")
    assert missing.returncode == 2 and "404" in missing.stderr, missing.stderr
