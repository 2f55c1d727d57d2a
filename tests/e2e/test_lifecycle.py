"""Every seed scenario through a TaskRun, on the real stack.

API server + etcd, the broker and backend, a prefork Celery worker and the operator as
its own process (with its ServiceAccount's RBAC). Each test asserts what a user sees: the status,
`kubectl wait`, `kubectl get`, the events, and what the worker actually ran.
"""

from __future__ import annotations

import json

import pytest

from celery_taskrun.api.model import FINISHED_LABEL
from taskrun_dev.services import REDIS

from support import TaskRuns, kubectl_wait, ledger

pytestmark = pytest.mark.e2e


def ledger_events(runs: TaskRuns, task_id: str) -> list[str]:
    return [e["event"] for e in ledger(runs.stack) if e["task_id"] == task_id]


def test_sum_succeeds_with_its_result(runs: TaskRuns) -> None:
    runs.apply("sum", "calculate_sum", args=[[1, 2, 3, 4, 5]])
    assert kubectl_wait(runs, "sum", "Succeeded").returncode == 0

    shown = runs.yaml("sum")
    status = shown["status"]
    assert (status["phase"], status["state"], status["reason"]) == (
        "Succeeded",
        "SUCCESS",
        "Succeeded",
    )
    assert status["result"] == 15
    assert status["taskId"].startswith("tr-") and status["attempt"] == 1
    assert status["worker"].startswith("worker1@")
    # startedAt: when the operator first saw it running; without wake-ups (a database
    # backend) a task shorter than a poll may end unseen running, with none.
    if runs.stack.backend == REDIS or "startedAt" in status:
        assert status["submittedAt"] <= status["startedAt"] <= status["completedAt"]
    assert status["observedGeneration"] == shown["metadata"]["generation"]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {
        "Succeeded": "True",
        "Finished": "True",
        "Reconciling": "False",
        "Ready": "True",
        "Stalled": "False",
    }
    # The finalizer guards in-flight work only: a finished run deletes without the operator.
    assert "celery.taskrun.dev/revoke-on-delete" not in shown["metadata"].get("finalizers", [])
    # An event per phase written (`events: transitions`); a fast task's Queued and
    # Running are coalesced away (statusHoldSeconds), a slower one's are not.
    reasons = [reason for _, reason, _ in runs.events("sum")]
    assert reasons[-1] == "Succeeded" and set(reasons) <= {"Queued", "Started", "Succeeded"}
    assert ledger_events(runs, status["taskId"]) == ["start", "end"]


def test_failure_reports_type_message_and_traceback(runs: TaskRuns) -> None:
    runs.apply("boom", "fail", args=["disk on fire"])
    # `Finished` never waits out a failure; `Succeeded` is False with the reason.
    assert kubectl_wait(runs, "boom", "Finished").returncode == 0
    status = runs.status("boom")
    assert (status["phase"], status["reason"], status["state"]) == (
        "Failed",
        "TaskError",
        "FAILURE",
    )
    assert status["error"]["type"] == "ValueError"
    assert status["error"]["message"] == "disk on fire"
    assert "raise ValueError(message)" in status["error"]["traceback"]
    assert runs.condition("boom", "Succeeded")["status"] == "False"
    assert runs.condition("boom", "Stalled")["status"] == "True"
    runs.wait_event("boom", "Warning", "TaskError")
    assert kubectl_wait(runs, "boom", "Succeeded", timeout=2).returncode != 0


def test_progress_is_reported_while_running(runs: TaskRuns) -> None:
    runs.apply("steps", "progress", kwargs={"steps": 4, "delay": 1.0})
    seen = runs.wait(
        "steps",
        lambda s: (
            s.get("phase") == "Running" and 0 < (s.get("progress") or {}).get("percent", 0) < 100
        ),
        "partial progress while Running",
    )
    assert seen["state"] == "PROGRESS" and seen["reason"] == "Progress"
    assert seen["progress"]["total"] == 4
    table = runs.kubectl("get", "taskruns").stdout
    header = table.splitlines()[0].split()
    assert header[:5] == ["NAME", "TASK", "PHASE", "REASON", "PROGRESS"]
    done = runs.finished("steps")
    assert done["phase"] == "Succeeded" and done["result"] == {"steps": 4}
    assert done["progress"]["percent"] == 100


def test_celery_retry_shows_retrying_then_succeeds(runs: TaskRuns) -> None:
    runs.apply("flaky", "flaky", kwargs={"fail_times": 1, "countdown": 2})
    retrying = runs.wait_phase("flaky", "Retrying")
    assert retrying["state"] == "RETRY" and "fails on purpose" in retrying["message"]
    assert retrying["attempt"] == 2  # the execution to come
    done = runs.finished("flaky")
    assert done["phase"] == "Succeeded" and done["result"] == {"attempts": 2}
    assert done["attempt"] == 2 and "attempts" not in done  # no resubmission
    assert ledger_events(runs, done["taskId"]).count("start") == 2


def test_long_task_shows_running_with_worker_and_start(runs: TaskRuns) -> None:
    runs.apply("sleeper", "sleep", args=[3])
    running = runs.wait_phase("sleeper", "Running")
    assert running["state"] == "STARTED" and running["worker"].startswith("worker1@")
    assert running["startedAt"]
    assert runs.condition("sleeper", "Reconciling")["status"] == "True"
    assert runs.condition("sleeper", "Succeeded")["status"] == "Unknown"
    assert runs.finished("sleeper")["result"] == 3


@pytest.mark.parametrize(
    ("reraise", "phase", "reason"),
    [(True, "TimedOut", "SoftTimeLimitExceeded"), (False, "Succeeded", "Succeeded")],
)
def test_soft_time_limit_lets_the_task_clean_up(
    runs: TaskRuns, reraise: bool, phase: str, reason: str
) -> None:
    runs.apply(
        "soft",
        "cleanup_on_soft_timeout",
        kwargs={"seconds": 30, "reraise": reraise},
        softTimeLimit=1,
        timeLimit=10,
    )
    status = runs.finished("soft", timeout=30)
    assert (status["phase"], status["reason"]) == (phase, reason)
    assert status["limits"]["softTimeLimit"] == {"seconds": 1, "source": "spec"}
    assert "cleanup" in ledger_events(runs, status["taskId"])
    if reraise:
        assert status["error"]["type"] == "SoftTimeLimitExceeded"
    else:
        assert status["result"]["completed"] is False


def test_hard_time_limit_kills_and_the_worker_serves_on(runs: TaskRuns) -> None:
    runs.apply("hard", "sleep", args=[60], timeLimit=2)
    status = runs.finished("hard", timeout=30)
    assert (status["phase"], status["reason"]) == ("TimedOut", "TimeLimitExceeded")
    assert status["error"]["type"] == "TimeLimitExceeded"
    assert ledger_events(runs, status["taskId"]).count("start") == 1
    runs.apply("after", "calculate_sum", args=[[2, 3]])
    assert runs.finished("after")["result"] == 5


def test_file_processor_gets_limits_from_its_declared_size(runs: TaskRuns) -> None:
    mib = 1024 * 1024
    runs.apply(
        "file",
        "process_file",
        kwargs={"size_bytes": 3 * mib, "seconds_per_mb": 0.1},
        sizeBasedLimits={"inputBytes": 3 * mib, "secondsPerMiB": 60},
    )
    status = runs.finished("file")
    assert status["phase"] == "Succeeded"
    # The seed's rule: one minute per MiB, at least 60 s: 3 MiB -> 180 s hard, 162 s soft.
    assert status["limits"]["timeLimit"] == {"seconds": 180, "source": "sizeBasedLimits"}
    assert status["limits"]["softTimeLimit"] == {"seconds": 162, "source": "sizeBasedLimits"}


def test_big_result_is_truncated_never_failed(runs: TaskRuns) -> None:
    runs.apply("big", "big_result", args=[2_000_000])
    status = runs.finished("big")
    assert status["phase"] == "Succeeded"
    assert status["resultTruncated"] is True
    assert status["resultBytes"] >= 2_000_000
    assert isinstance(status["result"], str) and len(status["result"]) < 300_000


def test_unregistered_task_fails_clearly(runs: TaskRuns) -> None:
    # A worker that does not know the task stores FAILURE NotRegistered at once.
    runs.apply("ghost", "no.such.task", timeout=30)
    status = runs.finished("ghost", timeout=30)
    assert (status["phase"], status["reason"]) == ("Failed", "TaskError")
    assert status["error"]["type"] == "NotRegistered"
    assert "no.such.task" in status["message"]


def test_queue_nobody_consumes_ends_at_its_deadline(runs: TaskRuns) -> None:
    runs.apply("lonely", "calculate_sum", args=[[1]], queue="nobody-listens", timeout=2)
    status = runs.finished("lonely", timeout=30)
    assert (status["phase"], status["reason"]) == ("TimedOut", "DeadlineExceeded")
    assert runs.condition("lonely", "Finished")["status"] == "True"
    runs.wait_event("lonely", "Warning", "DeadlineExceeded")


INVALID = [
    ({"task": "t", "softTimeLimit": 5, "timeLimit": 3}, "softTimeLimit must be below"),
    ({"timeLimit": 3}, "spec.task: Required value"),
    ({"task": "t", "timeLimit": -1}, "should be greater than 0"),
    ({"task": "t", "args": "1,2"}, "must be of type array"),
    ({"task": "t", "priority": 300}, "less than or equal to 255"),
    ({"task": "t", "args": list(range(1001))}, "must have at most 1000 items"),
    ({"task": "t", "retries": "many"}, "must be of type integer"),
]


@pytest.mark.parametrize(("spec", "words"), INVALID)
def test_invalid_manifests_are_refused_at_apply(runs: TaskRuns, spec: dict, words: str) -> None:
    result = runs.kubectl("apply", "-f", "-", input=json.dumps(runs.manifest("bad", spec)))
    assert result.returncode != 0
    assert words in result.stderr
    assert not runs.exists("bad")


def test_spec_is_immutable_but_cancel(runs: TaskRuns) -> None:
    runs.apply("frozen", "sleep", args=[30])
    runs.wait_phase("frozen", "Running")
    for change, words in [
        ({"args": [1]}, "spec.args is immutable"),
        ({"timeLimit": 3}, "spec.timeLimit is immutable"),
    ]:
        import json

        result = runs.kubectl(
            "patch", "taskrun", "frozen", "--type=merge", "-p", json.dumps({"spec": change})
        )
        assert result.returncode != 0 and words in result.stderr
    # The operator's watch leaves out runs labelled finished: never on one still going.
    labelled = json.dumps({"metadata": {"labels": {FINISHED_LABEL: "Succeeded"}}})
    result = runs.kubectl("patch", "taskrun", "frozen", "--type=merge", "-p", labelled)
    assert result.returncode != 0 and "on finished runs only" in result.stderr
    runs.patch("frozen", {"cancel": True})
    status = runs.finished("frozen")
    assert (status["phase"], status["reason"]) == ("Revoked", "Cancelled")
