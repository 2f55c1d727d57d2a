"""Limits, deadlines, expiry, cancellation, deletion, retries, TTL and restarts.

Each test asserts the status and events a user sees and what the worker actually ran
(the ledger the workers keep in a Redis). Lateness figures (deadline, cancel) are
printed for the closing notes; the bounds asserted are generous, as speed targets
belong to benchmarks.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from taskrun_dev.processes import ManagedProcess
from taskrun_dev.servers import RABBITMQ
from taskrun_dev.services import REDIS
from taskrun_dev.stack import Stack

from support import (
    E2E_BACKEND,
    FAST_LEASE,
    TaskRuns,
    ledger,
    queue_length,
    starts,
    stopped,
    wait_for,
    wait_revoked,
)

pytestmark = pytest.mark.e2e


def seconds(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@pytest.fixture
def late_worker(stack: Stack) -> Iterator[tuple[str, list[ManagedProcess]]]:
    """A queue of this test's own, and a way to start its worker later."""
    queue = f"late-{uuid.uuid4().hex[:6]}"
    started: list[ManagedProcess] = []
    yield queue, started
    for proc in started:
        proc.stop()


def start_late_worker(stack: Stack, queue: str, started: list[ManagedProcess]) -> ManagedProcess:
    proc = stack.start_worker(f"w-{queue}", queues=[queue])
    started.append(proc)
    return proc


def wait_discarded(
    stack: Stack, worker: ManagedProcess, queue: str, task_id: str, *, expiring: bool = False
) -> None:
    """The late worker took the message off its queue and discarded it. `expiring`: a
    message sent with an expiry (a deadline, `expires`), which RabbitMQ drops itself once
    it passes (Celery sends it as the message's TTL there): none reaches the worker."""
    wait_for(lambda: queue_length(stack, queue) == 0, timeout=30, what=f"{queue} drained")
    if expiring and stack.broker == RABBITMQ:
        assert task_id not in worker.log_text(), worker.tail(30)
        return
    assert worker.wait_for_log(rf"(Discarding revoked task|skipped).*{task_id}", 30), worker.tail(
        30
    )


def test_deadline_terminates_a_running_task(runs: TaskRuns) -> None:
    runs.apply("slow", "sleep", args=[60], timeout=2)
    status = runs.finished("slow", timeout=30)
    assert (status["phase"], status["reason"]) == ("TimedOut", "DeadlineExceeded")
    assert status["limits"]["timeout"] == {"seconds": 2, "source": "spec"}
    late = seconds(status["completedAt"]) - (seconds(status["submittedAt"]) + 2)
    print(f"deadline lateness (running task): {late * 1000:.0f} ms")
    assert late < 2
    # Terminated: the task started and never finished.
    assert starts(runs.stack, status["taskId"]) == 1
    runs.wait_event("slow", "Warning", "DeadlineExceeded")


def test_deadline_on_an_unconsumed_queue_and_no_run_later(
    runs: TaskRuns, late_worker: tuple[str, list[ManagedProcess]]
) -> None:
    queue, started = late_worker
    runs.apply("waiting", "calculate_sum", args=[[1, 2]], queue=queue, timeout=2)
    status = runs.finished("waiting", timeout=30)
    assert (status["phase"], status["reason"]) == ("TimedOut", "DeadlineExceeded")
    late = seconds(status["completedAt"]) - (seconds(status["submittedAt"]) + 2)
    print(f"deadline lateness (queued task): {late * 1000:.0f} ms")
    assert late < 2
    worker = start_late_worker(runs.stack, queue, started)
    wait_discarded(runs.stack, worker, queue, status["taskId"], expiring=True)
    assert starts(runs.stack, status["taskId"]) == 0
    assert runs.status("waiting")["phase"] == "TimedOut"


def test_expires_before_start_and_no_run_later(
    runs: TaskRuns, late_worker: tuple[str, list[ManagedProcess]]
) -> None:
    queue, started = late_worker
    runs.apply("stale", "calculate_sum", args=[[1, 2]], queue=queue, expires=2)
    status = runs.finished("stale", timeout=30)
    assert (status["phase"], status["reason"]) == ("Revoked", "Expired")
    worker = start_late_worker(runs.stack, queue, started)
    wait_discarded(runs.stack, worker, queue, status["taskId"], expiring=True)
    assert starts(runs.stack, status["taskId"]) == 0


def test_expires_does_not_touch_a_started_task(runs: TaskRuns) -> None:
    runs.apply("started", "sleep", args=[3], expires=1)
    status = runs.finished("started", timeout=30)
    assert (status["phase"], status["result"]) == ("Succeeded", 3)


def test_cancel_terminates_a_running_task(runs: TaskRuns) -> None:
    runs.apply("cancel-me", "sleep", args=[60])
    running = runs.wait_phase("cancel-me", "Running")
    asked = time.time()
    runs.patch("cancel-me", {"cancel": True})
    status = runs.finished("cancel-me", timeout=30)
    assert (status["phase"], status["reason"]) == ("Revoked", "Cancelled")
    lateness = seconds(status["completedAt"]) - asked
    print(f"cancel lateness (running task): {lateness * 1000:.0f} ms")
    assert lateness < 5
    assert status["observedGeneration"] == 2
    assert runs.condition("cancel-me", "Stalled")["observedGeneration"] == 2
    # The pool child was terminated: the ledger shows a start and no successful end.
    wait_revoked(runs.stack, running["taskId"])
    entries = [e for e in ledger(runs.stack) if e["task_id"] == running["taskId"]]
    assert [e["event"] for e in entries].count("start") == 1
    assert not any(e["event"] == "end" and e.get("state") == "SUCCESS" for e in entries)


def test_cancelled_queued_task_never_runs_later(
    runs: TaskRuns, late_worker: tuple[str, list[ManagedProcess]]
) -> None:
    queue, started = late_worker
    runs.apply("never", "calculate_sum", args=[[1, 2]], queue=queue)
    queued = runs.wait_phase("never", "Queued")
    runs.patch("never", {"cancel": True})
    status = runs.finished("never")
    assert (status["phase"], status["reason"]) == ("Revoked", "Cancelled")
    worker = start_late_worker(runs.stack, queue, started)
    wait_discarded(runs.stack, worker, queue, queued["taskId"])
    assert starts(runs.stack, queued["taskId"]) == 0


def test_cancel_before_submission_sends_nothing(runs: TaskRuns) -> None:
    runs.apply("no-go", "calculate_sum", args=[[1]], cancel=True)
    status = runs.finished("no-go")
    assert (status["phase"], status["reason"]) == ("Revoked", "Cancelled")
    assert "taskId" not in status


def test_delete_revokes_the_running_task(runs: TaskRuns) -> None:
    runs.apply("doomed", "sleep", args=[60])
    running = runs.wait_phase("doomed", "Running")
    runs.kubectl("delete", "taskrun", "doomed", "--wait=false", check=True)
    wait_for(lambda: not runs.exists("doomed"), timeout=15, what="doomed deleted")
    wait_revoked(runs.stack, running["taskId"])
    entries = [e for e in ledger(runs.stack) if e["task_id"] == running["taskId"]]
    assert not any(e["event"] == "end" and e.get("state") == "SUCCESS" for e in entries)


def test_delete_completes_with_the_broker_and_backend_down(runs: TaskRuns, stack: Stack) -> None:
    runs.apply("orphan", "sleep", args=[60])
    runs.wait_phase("orphan", "Running")
    with stopped(stack, stack.broker, stack.backend):
        began = time.monotonic()
        runs.kubectl("delete", "taskrun", "orphan", "--wait=false", check=True)
        wait_for(lambda: not runs.exists("orphan"), timeout=30, what="orphan deleted")
        print(
            f"deletion with {stack.broker}/{stack.backend} down took "
            f"{time.monotonic() - began:.1f} s"
        )
        runs.wait_event("orphan", "Warning", "RevokeFailed")


def test_retries_resubmit_after_failure(runs: TaskRuns) -> None:
    runs.apply("again", "fail", args=["still broken"], retries=2)
    status = runs.finished("again", timeout=60)
    assert (status["phase"], status["reason"], status["attempt"]) == ("Failed", "TaskError", 3)
    history = status["attempts"]
    assert [(a["attempt"], a["phase"], a["reason"]) for a in history] == [
        (1, "Failed", "TaskError"),
        (2, "Failed", "TaskError"),
    ]
    ids = [a["taskId"] for a in history] + [status["taskId"]]
    assert len(set(ids)) == 3
    assert [starts(runs.stack, tid) for tid in ids] == [1, 1, 1]
    # Resubmissions that fail at once are coalesced into the end: its event is the last.
    assert [r for _, r, _ in runs.events("again")][-1] == "TaskError"


def test_no_retry_after_cancel(runs: TaskRuns) -> None:
    runs.apply("keep-down", "sleep", args=[60], retries=3)
    runs.wait_phase("keep-down", "Running")
    runs.patch("keep-down", {"cancel": True})
    status = runs.finished("keep-down")
    assert (status["phase"], status["attempt"]) == ("Revoked", 1)


def test_ttl_deletes_finished_runs(runs: TaskRuns) -> None:
    runs.apply("brief", "calculate_sum", args=[[1]], ttlSecondsAfterFinished=1)
    # Watched for its absence alone: where status comes by polls, the run may be
    # finished and deleted between two reads of this test; its Event stays behind.
    wait_for(lambda: not runs.exists("brief"), timeout=60, what="brief deleted by its TTL")
    assert [reason for _, reason, _ in runs.events("brief")][-1] == "Succeeded"


@pytest.fixture
def isolated(stack: Stack, tmp_path: Path) -> Iterator[tuple[TaskRuns, Path]]:
    """A namespace of this test's own, for an operator of its own."""
    namespace = f"iso-{uuid.uuid4().hex[:8]}"
    stack.kubectl("create", "namespace", namespace, check=True)
    yield TaskRuns(stack, namespace), tmp_path
    stack.kubectl("delete", "taskruns", "--all", "-n", namespace, "--wait=false")
    stack.kubectl("delete", "namespace", namespace, "--wait=false")


def own_operator(stack: Stack, namespace: str, name: str, **kw: object) -> ManagedProcess:
    return stack.start_operator(name, extra_args=["--namespace", namespace], **kw)  # type: ignore[arg-type]


def fast_lease(tmp: Path) -> Path:
    """A configuration whose short Lease an operator started again after a kill or a crash
    takes over in seconds (the default's 15 s would only make the test wait)."""
    path = tmp / "fast-lease.yaml"
    path.write_text(json.dumps(FAST_LEASE))
    return path


def test_limit_defaults_from_config(
    isolated: tuple[TaskRuns, Path], worker: ManagedProcess
) -> None:
    runs, tmp = isolated
    config = tmp / "operator.yaml"
    config.write_text(
        "defaults: {timeLimit: 30, softTimeLimit: 25}\n"
        "tasks:\n  taskrun_workers.tasks.sleep: {timeLimit: 2, softTimeLimit: 1}\n"
    )
    operator = own_operator(runs.stack, runs.namespace, "op-defaults", config_path=config)
    try:
        runs.apply("limited", "sleep", args=[30])
        runs.apply("overridden", "sleep", args=[0.1], timeLimit=20)
        runs.apply("global", "calculate_sum", args=[[1]])
        limited = runs.finished("limited", timeout=30)
        assert (limited["phase"], limited["reason"]) == ("TimedOut", "SoftTimeLimitExceeded")
        assert limited["limits"]["timeLimit"] == {"seconds": 2, "source": "taskDefault"}
        overridden = runs.finished("overridden")
        assert overridden["limits"]["timeLimit"] == {"seconds": 20, "source": "spec"}
        assert overridden["limits"]["softTimeLimit"] == {"seconds": 1, "source": "taskDefault"}
        assert runs.finished("global")["limits"]["timeLimit"] == {
            "seconds": 30,
            "source": "globalDefault",
        }
        # A spec whose soft limit meets a default hard limit is refused with the reason.
        runs.apply("clash", "sleep", args=[1], softTimeLimit=5)
        clash = runs.finished("clash")
        assert (clash["phase"], clash["reason"]) == ("Failed", "InvalidSpec")
        assert "from taskDefault" in clash["message"]
    finally:
        operator.stop()


def test_operator_killed_mid_flight_loses_and_repeats_nothing(
    isolated: tuple[TaskRuns, Path],
    late_worker: tuple[str, list[ManagedProcess]],
    worker: ManagedProcess,
) -> None:
    runs, tmp = isolated
    queue, started = late_worker
    config = fast_lease(tmp)
    operator = own_operator(runs.stack, runs.namespace, "op-restart", config_path=config)
    for i in range(4):
        runs.apply(f"running-{i}", "sleep", args=[3])
        runs.apply(f"queued-{i}", "calculate_sum", args=[[i, 1]], queue=queue)
    for i in range(4):
        # Two run at once (the worker's concurrency): where status comes by polls alone
        # (a database backend), one may end before it is seen running.
        runs.wait_phase(f"running-{i}", "Running", "Succeeded")
        runs.wait_phase(f"queued-{i}", "Queued")
    operator.kill()  # SIGKILL, no cleanup
    start_late_worker(runs.stack, queue, started)
    again = own_operator(runs.stack, runs.namespace, "op-restart", config_path=config)
    try:
        for i in range(4):
            running = runs.finished(f"running-{i}", timeout=60)
            queued = runs.finished(f"queued-{i}", timeout=60)
            assert (running["phase"], running["result"]) == ("Succeeded", 3)
            assert (queued["phase"], queued["result"]) == ("Succeeded", i + 1)
            assert starts(runs.stack, running["taskId"]) == 1
            assert starts(runs.stack, queued["taskId"]) == 1
    finally:
        again.stop()


def test_crash_between_send_and_status_sends_once(
    isolated: tuple[TaskRuns, Path], worker: ManagedProcess
) -> None:
    """A fault the test cannot time from outside: the operator exits right after
    sending (TASKRUN_FAULT=exit-after-send), before recording it in status."""
    runs, tmp = isolated
    config = fast_lease(tmp)
    crashing = own_operator(
        runs.stack,
        runs.namespace,
        "op-crash",
        config_path=config,
        env_overrides={"TASKRUN_FAULT": "exit-after-send"},
    )
    runs.apply("once", "sleep", args=[1])
    wait_for(lambda: not crashing.alive, timeout=30, what="the operator's crash after sending")
    intent = runs.get("once")["metadata"]["annotations"]["celery.taskrun.dev/submitting"]
    assert "taskId" not in runs.status("once")
    again = own_operator(
        runs.stack,
        runs.namespace,
        "op-crash",
        config_path=config,
        env_overrides={"TASKRUN_FAULT": ""},
    )
    try:
        status = runs.finished("once", timeout=60)
        assert (status["phase"], status["taskId"]) == ("Succeeded", intent)
        assert starts(runs.stack, intent) == 1
    finally:
        again.stop()


def test_worker_killed_mid_task_is_reported_lost(
    isolated: tuple[TaskRuns, Path], late_worker: tuple[str, list[ManagedProcess]]
) -> None:
    """A whole worker killed (SIGKILL, pool children too): Celery's record stays STARTED,
    so the operator's pings find it gone and the run ends WorkerLost, never Running for
    ever; with a retry left, the task runs again elsewhere."""
    runs, tmp = isolated
    queue, started = late_worker
    config = tmp / "operator.yaml"
    config.write_text("workerCheckInterval: 1\nworkerLostAfter: 2\n")
    operator = own_operator(runs.stack, runs.namespace, "op-lost", config_path=config)
    try:
        doomed = start_late_worker(runs.stack, queue, started)
        runs.apply("lost", "sleep", args=[60], queue=queue)
        # Long enough to be running still when the worker dies, also where status comes
        # by polls alone (a database backend: Running seen up to a poll late).
        runs.apply("lost-retry", "sleep", args=[8], queue=queue, retries=1)
        first = runs.wait_phase("lost-retry", "Running")
        runs.wait_phase("lost", "Running")
        doomed.kill()
        status = runs.finished("lost", timeout=60)
        assert (status["phase"], status["reason"]) == ("Failed", "WorkerLost")
        assert status["error"]["type"] == "WorkerLostError"
        retried = runs.wait(
            "lost-retry", lambda s: s.get("attempt") == 2, "a second attempt", timeout=60
        )
        assert retried["attempts"][0]["reason"] == "WorkerLost"
        start_late_worker(runs.stack, queue, started)
        done = runs.finished("lost-retry", timeout=60)
        assert (done["phase"], done["result"]) == ("Succeeded", 8)
        assert starts(runs.stack, done["taskId"]) == 1
        assert done["taskId"] != first["taskId"]
    finally:
        operator.stop()


def test_broker_down_at_submission_waits_then_meets_its_deadline(
    runs: TaskRuns, stack: Stack
) -> None:
    with stopped(stack, stack.broker):
        # A user-chosen backoff of a minute: the deadline is checked when it falls due.
        poll = {"initialInterval": 60, "maxInterval": 60}
        runs.apply("unsent", "calculate_sum", args=[[1]], timeout=4, poll=poll)
        pending = runs.wait_phase("unsent", "Pending", timeout=30)
        assert pending["reason"] == "BackendUnavailable"
        assert runs.condition("unsent", "Finished")["status"] == "False"
        status = runs.finished("unsent", timeout=30)
        assert (status["phase"], status["reason"]) == ("TimedOut", "DeadlineExceeded")
        assert "could not be sent" in status["message"]
        created = seconds(runs.get("unsent")["metadata"]["creationTimestamp"])
        # Due 4 s after creation, to the second creationTimestamp has (so + 1 s).
        assert seconds(status["completedAt"]) - (created + 5) < 1.5
    runs.apply("after-outage", "calculate_sum", args=[[2, 2]])
    assert runs.finished("after-outage", timeout=60)["result"] == 4


def test_backend_outage_mid_flight_then_the_true_end(runs: TaskRuns, stack: Stack) -> None:
    """The result backend (on Redis/Redis the broker too; no persistence) goes away while
    a task runs: the run reports BackendUnavailable, not an end, and reaches its true end
    once the backend is back."""
    runs.apply("outage", "sleep", args=[8])
    runs.wait_phase("outage", "Running")
    with stopped(stack, stack.backend):
        down = runs.wait(
            "outage",
            lambda s: s.get("reason") == "BackendUnavailable",
            "BackendUnavailable",
            timeout=30,
        )
        assert down["phase"] == "Running"
        assert runs.condition("outage", "Finished")["status"] == "False"
    status = runs.finished("outage", timeout=60)
    assert (status["phase"], status.get("result")) == ("Succeeded", 8), status


def test_api_server_restart_mid_flight(runs: TaskRuns, stack: Stack) -> None:
    runs.apply("through-restart", "sleep", args=[4])
    runs.apply("after-restart", "calculate_sum", args=[[3, 4]], countdown=3)
    runs.wait_phase("through-restart", "Running")
    stack.restart("kube-apiserver", down_for=1)
    status = runs.finished("through-restart", timeout=90)
    assert (status["phase"], status["result"]) == ("Succeeded", 4)
    assert runs.finished("after-restart", timeout=90)["result"] == 7
    assert starts(stack, status["taskId"]) == 1


@pytest.mark.skipif(
    E2E_BACKEND != REDIS,
    reason="result_expires is a TTL on Redis only (a database's records go when celery "
    "beat's backend_cleanup runs); a record gone is ResultLost in tests/unit/"
    "test_transitions.py and tests/shell/test_tracker.py",
)
def test_expired_result_is_reported_lost_never_a_hang(
    isolated: tuple[TaskRuns, Path], late_worker: tuple[str, list[ManagedProcess]]
) -> None:
    """Results kept 2 s (result_expires) and an operator that reads rarely (no wake-ups;
    polls 0.5 s apart, then 5 s once nothing changes): a 2 s task's end is gone before
    it is read, and its worker no longer has it."""
    runs, tmp = isolated
    queue, started = late_worker
    worker = runs.stack.start_worker(f"w-{queue}", {"TASKRUN_RESULT_EXPIRES": "2"}, queues=[queue])
    started.append(worker)
    config = tmp / "operator.yaml"
    # Every status written as it arises: the polls' timing is what this test is about.
    config.write_text("wakeups: false\nstatusHoldSeconds: 0\n")
    operator = own_operator(runs.stack, runs.namespace, "op-expiry", config_path=config)
    try:
        runs.apply(
            "forgotten",
            "sleep",
            args=[2],
            queue=queue,
            poll={"initialInterval": 0.5, "factor": 10, "maxInterval": 8},
        )
        runs.wait_phase("forgotten", "Running", timeout=30)
        status = runs.finished("forgotten", timeout=60)
        assert (status["phase"], status["reason"]) == ("Failed", "ResultLost"), status
        assert starts(runs.stack, status["taskId"]) == 1
    finally:
        operator.stop()


def test_a_name_deleted_and_reused_shows_only_its_own_run(runs: TaskRuns) -> None:
    """A run reporting progress is deleted and a TaskRun of another task is created at
    once under the same name: whatever status the operator held for the old one never
    reaches the new object."""
    runs.apply("reused", "progress", kwargs={"steps": 50, "delay": 0.1})
    old = runs.wait(
        "reused", lambda s: s.get("phase") == "Running" and s.get("progress"), "progress"
    )
    runs.kubectl("delete", "taskrun", "reused", "--wait=true", check=True)
    runs.apply("reused", "sleep", args=[2])
    uid = runs.get("reused")["metadata"]["uid"]
    seen: list[dict[str, object]] = []

    def ended() -> bool:
        status = runs.status("reused")
        seen.append(status)
        return status.get("phase") == "Succeeded"

    wait_for(ended, timeout=30, what="the new run Succeeded")
    foreign = [
        s
        for s in seen
        if s.get("taskId") not in (None, f"tr-{uid}-1")
        or s.get("progress")
        or s.get("taskId") == old["taskId"]
    ]
    assert not foreign, foreign[:3]
