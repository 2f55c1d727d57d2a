"""The other brokers and backends end to end: RabbitMQ with a Redis result backend, and
RabbitMQ with PostgreSQL.

Each combination is a stack of its own (`taskrun-dev up --broker ... --backend ...`:
control plane, the servers, the default worker and operator), one after the other; the
stack's control plane cannot be shared with another stack. The basics a user meets
first: a result, an error, a cancelled queued run, a deadline, and status carried by the
backend's wake-ups where it has them (Redis) and by polling where it has none. Then
RabbitMQ's own: priority on a queue declared with x-max-priority, a plain queue left
plain, and how often each run executes when the operator is killed, or RabbitMQ
restarted or stalled, while runs are sent.

At the end, one test of each promise of the lifecycle, limits and reliability suites
(a success, a cancel, a hard limit, a retry, an operator kill, a policy refusal) on the
RabbitMQ/PostgreSQL stack: the reduced matrix `make test` runs; `make test-matrix` runs
the whole suites on each combination.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from taskrun_dev.processes import ManagedProcess, free_port
from taskrun_dev.procfs import is_running, proc_info
from taskrun_dev.servers import EPMD, POSTGRESQL, RABBITMQ
from taskrun_dev.services import REDIS, redis_argv
from taskrun_dev.stack import Stack
from taskrun_workers.ledger import read_ledger

import test_control as control
import test_lifecycle as lifecycle
import test_tenancy as tenancy
from support import (
    FAST_LEASE,
    TaskRuns,
    beyond_loopback,
    listening_addresses,
    queue_length,
    wait_for,
)

pytestmark = pytest.mark.e2e

COMBINATIONS = [(RABBITMQ, REDIS), (RABBITMQ, POSTGRESQL)]
# The default operator's configuration, in each combination's state directory: short
# leases, so the operator killed while sending is back at work in seconds.
OPERATOR_CONFIG = "operator.yaml"


@pytest.fixture(scope="module", params=COMBINATIONS, ids=[f"{b}-{r}" for b, r in COMBINATIONS])
def combination(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A whole stack on this broker and backend, with the default worker and operator;
    when it goes down, none of its processes (epmd, beam, postgres' children) is left."""
    broker, backend = request.param
    state = tmp_path_factory.mktemp(f"{broker}-{backend}")
    stack = Stack(state, say=lambda _: None)
    config = state / OPERATOR_CONFIG
    config.write_text(json.dumps(FAST_LEASE))
    pids: set[int] = set()
    try:
        began = time.monotonic()
        stack.up(broker=broker, backend=backend, ledger_redis=True, operator_config=config)
        print(f"stack up on {broker}/{backend} in {time.monotonic() - began:.1f} s")
        yield stack
    finally:
        for proc in stack.processes().values():
            pids |= proc.group_pids()
        stack.down()
    left = sorted(pid for pid in pids if is_running(proc_info(pid)))
    assert not left, f"still running after down: {left}"


@pytest.fixture
def runs(combination: Stack) -> TaskRuns:
    namespace = f"b-{uuid.uuid4().hex[:8]}"
    combination.kubectl("create", "namespace", namespace, check=True)
    return TaskRuns(combination, namespace)


def operator_metric(stack: Stack, name: str) -> float:
    operator = stack.process("operator")
    assert operator is not None and operator.url
    with urllib.request.urlopen(operator.url, timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"no {name} in the operator's metrics"
    return float(match[1])


def test_the_stack_runs_the_chosen_servers_on_loopback(combination: Stack) -> None:
    stack = combination
    env = stack.env
    assert env["CELERY_BROKER_URL"].startswith("amqp://guest:guest@127.0.0.1:")
    wanted = {RABBITMQ, EPMD, stack.backend}
    if stack.backend == POSTGRESQL:
        assert env["CELERY_RESULT_BACKEND"].startswith("db+postgresql://taskrun@127.0.0.1:")
    else:
        assert env["CELERY_RESULT_BACKEND"].startswith("redis://127.0.0.1:")
    assert env["CELERY_BROKER_URL"] in stack.env_file.read_text()
    procs = stack.processes()
    assert wanted <= {name for name, proc in procs.items() if proc.alive}
    assert (REDIS in procs) == (stack.backend == REDIS)
    pids: set[int] = set()
    for proc in procs.values():
        pids |= proc.group_pids()
    addresses = listening_addresses(pids)
    assert addresses
    assert not beyond_loopback(addresses)
    # `up` again with the same choice restarts nothing.
    before = {name: proc.pid for name, proc in procs.items()}
    stack.up(
        broker=stack.broker, backend=stack.backend, operator_config=stack.dir / OPERATOR_CONFIG
    )
    assert {name: proc.pid for name, proc in stack.processes().items()} == before


def test_a_run_succeeds_with_its_result_and_progress(runs: TaskRuns) -> None:
    runs.apply("sum", "calculate_sum", args=[[1, 2, 3, 4, 5]])
    runs.apply("steps", "progress", kwargs={"steps": 3, "delay": 0.5})
    done = runs.finished("sum")
    assert (done["phase"], done["reason"], done["result"]) == ("Succeeded", "Succeeded", 15)
    assert done["worker"].startswith("worker1@")
    steps = runs.finished("steps")
    assert steps["phase"] == "Succeeded"
    assert steps["progress"]["percent"] == 100


def test_a_failing_task_fails_with_its_error(runs: TaskRuns) -> None:
    runs.apply("boom", "fail", args=["no luck on this broker"])
    failed = runs.finished("boom")
    assert (failed["phase"], failed["reason"]) == ("Failed", "TaskError")
    assert failed["error"]["type"] == "ValueError"
    assert failed["error"]["message"] == "no luck on this broker"
    assert "Traceback" in failed["error"]["traceback"]


@pytest.fixture
def late_queue(combination: Stack) -> Iterator[tuple[str, list[ManagedProcess]]]:
    """A queue of this test's own, nobody consuming it until the test starts a worker."""
    queue = f"late-{uuid.uuid4().hex[:6]}"
    started: list[ManagedProcess] = []
    yield queue, started
    for proc in started:
        proc.stop()


def test_cancel_revokes_a_queued_run_and_it_never_runs(
    runs: TaskRuns, late_queue: tuple[str, list[ManagedProcess]]
) -> None:
    queue, started = late_queue
    runs.apply("never", "calculate_sum", args=[[1, 2]], queue=queue)
    queued = runs.wait_phase("never", "Queued")
    wait_for(
        lambda: queue_length(runs.stack, queue) == 1,
        timeout=15,
        what=f"the message in RabbitMQ's {queue}",
    )
    runs.patch("never", {"cancel": True})
    status = runs.finished("never")
    assert (status["phase"], status["reason"]) == ("Revoked", "Cancelled")
    worker = runs.stack.start_worker(f"w-{queue}", queues=[queue])
    started.append(worker)
    wait_for(
        lambda: queue_length(runs.stack, queue) == 0,
        timeout=30,
        what=f"{queue} drained",
    )
    task_id = queued["taskId"]
    assert worker.wait_for_log(rf"(Discarding revoked task|skipped).*{task_id}", 30), worker.tail()
    assert not re.search(rf"Task \S+\[{task_id}\] succeeded", worker.log_text())
    assert runs.status("never")["phase"] == "Revoked"


def test_a_deadline_ends_a_running_task_timed_out(runs: TaskRuns) -> None:
    runs.apply("slow", "sleep", args=[60], timeout=2)
    status = runs.finished("slow", timeout=30)
    assert (status["phase"], status["reason"]) == ("TimedOut", "DeadlineExceeded")
    assert status["limits"]["timeout"] == {"seconds": 2, "source": "spec"}
    # Terminated in the worker: its pool child was sent the signal.
    worker = runs.stack.process("worker1")
    assert worker is not None
    task_id = status["taskId"]
    assert worker.wait_for_log(rf"Terminating {task_id}", 15), worker.tail()


def test_status_comes_by_wakeups_on_redis_and_by_polling_otherwise(runs: TaskRuns) -> None:
    """The operator hears Redis' publish of each state; a database publishes nothing, so
    its reads (the poll schedule) carry every status, and nothing fails for the lack."""
    stack = runs.stack
    reads_before = operator_metric(stack, "taskrun_backend_reads_total")
    names = [f"s{i}" for i in range(5)]
    for name in names:
        runs.apply(name, "sleep", args=[0.5])
    for name in names:
        assert runs.finished(name)["phase"] == "Succeeded"
    wakeups = operator_metric(stack, "taskrun_wakeups_total")
    if stack.backend == REDIS:
        assert wakeups > 0
    else:
        assert wakeups == 0
        assert operator_metric(stack, "taskrun_backend_reads_total") > reads_before
    assert operator_metric(stack, "taskrun_backend_errors_total") == 0
    assert operator_metric(stack, "taskrun_step_errors_total") == 0


def test_the_operator_logged_no_error(combination: Stack) -> None:
    """Last on each combination: nothing the runs above did made the operator log an
    error or a traceback (a Redis-only path taken on another broker or backend)."""
    operator = combination.process("operator")
    assert operator is not None
    log = operator.log_text()
    problems = [
        line for line in log.splitlines() if re.search(r"\bERROR\b|Traceback|CRITICAL", line)
    ]
    assert not problems, "\n".join(problems[:20])


def test_an_unchosen_server_is_stopped_when_the_choice_changes(tmp_path: Path) -> None:
    """Only the servers asked for run: switching back to Redis stops RabbitMQ and its
    epmd (control plane not needed: the servers alone)."""
    stack = Stack(tmp_path / "switch", say=lambda _: None)
    try:
        stack.start_servers(RABBITMQ, "sqlite")
        assert stack.broker_url.startswith("amqp://")
        assert stack.result_backend == f"db+sqlite:///{stack.dir}/sqlite/results.db"
        pids: set[int] = set()
        for name in (RABBITMQ, EPMD):
            proc = stack.process(name)
            assert proc is not None and proc.alive
            pids |= proc.group_pids()
        stack.start_servers(REDIS, REDIS)
        assert stack.broker_url.startswith("redis://")
        assert set(stack.processes()) == {REDIS}
        assert not [pid for pid in pids if is_running(proc_info(pid))]
    finally:
        stack.down()


# -- RabbitMQ's own: priority, queues' arguments, exactly once ---------------------------
# Last on each combination: the faults below leave warnings in the operator's log.


@pytest.fixture(scope="module")
def counts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of this module's own, for what the workers count (the execution
    ledger, `hostile.count`): RabbitMQ/PostgreSQL has no Redis, and the backend's would
    be stalled and restarted with nothing else here."""
    port = free_port()
    proc = subprocess.Popen(
        redis_argv(port, tmp_path_factory.mktemp("counts")), stdout=subprocess.DEVNULL
    )
    client = redis.Redis(port=port, socket_timeout=2)
    try:
        wait_for(client.ping, timeout=15, what="the counting redis up")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def faults(combination: Stack) -> None:
    """The faults below on RabbitMQ/PostgreSQL (what a scenario runs against) in
    `make test`; on RabbitMQ/Redis too under `make test-matrix` (TASKRUN_E2E_MATRIX=1):
    the send path is the broker's, the same on both, and each fault costs a minute."""
    if combination.backend == REDIS and not os.environ.get("TASKRUN_E2E_MATRIX"):
        pytest.skip("RabbitMQ/Redis: under make test-matrix; make test runs RabbitMQ/PostgreSQL")


@pytest.fixture
def own_workers(combination: Stack) -> Iterator[list[ManagedProcess]]:
    started: list[ManagedProcess] = []
    yield started
    for proc in started:
        proc.stop()


def test_a_higher_priority_run_starts_first_on_a_queue_with_max_priority(
    runs: TaskRuns, counts: str, own_workers: list[ManagedProcess]
) -> None:
    """The worker declares its queue with x-max-priority (Celery's
    task_queue_max_priority), the operator (queueMaxPriority unset) sends to it as it
    is; one process, one message at a time (late acks: the running one holds the
    prefetch slot), so the two waiting runs are taken in RabbitMQ's order."""
    queue = f"prio-{uuid.uuid4().hex[:6]}"
    worker = runs.stack.start_worker(
        f"w-{queue}",
        env_overrides={"TASKRUN_LEDGER_URL": counts},
        queues=[queue],
        concurrency=1,
        extra_args=["--", "task_queue_max_priority=10", "task_acks_late=true"],
    )
    own_workers.append(worker)
    runs.apply("busy", "sleep", args=[6], queue=queue)
    runs.wait_phase("busy", "Running", timeout=30)
    runs.apply("low", "sleep", args=[0.2], queue=queue, priority=1)
    runs.wait_phase("low", "Queued")
    runs.apply("high", "sleep", args=[0.2], queue=queue, priority=9)
    ids = {name: runs.wait_phase(name, "Queued", "Running", "Succeeded")["taskId"]
           for name in ("low", "high")}  # fmt: skip
    wait_for(
        lambda: queue_length(runs.stack, queue) == 2,
        timeout=15,
        what="both waiting in RabbitMQ",
    )
    assert runs.status("busy")["phase"] == "Running"  # both were sent while it ran
    for name in ("busy", "low", "high"):
        assert runs.finished(name, timeout=60)["phase"] == "Succeeded"
    starts = {e["task_id"]: e["time"] for e in read_ledger(counts) if e["event"] == "start"}
    assert starts[ids["high"]] < starts[ids["low"]], starts
    assert "PRECONDITION_FAILED" not in worker.log_text()


def test_a_plain_queue_the_operator_sent_to_first_serves_a_plain_worker(
    runs: TaskRuns, own_workers: list[ManagedProcess]
) -> None:
    """No worker yet: the operator declares the queue (plain, as Celery's defaults do);
    a worker with Celery's defaults then declares it alike and runs the task."""
    queue = f"plain-{uuid.uuid4().hex[:6]}"
    runs.apply("first", "calculate_sum", args=[[1, 2]], queue=queue)
    runs.wait_phase("first", "Queued")
    assert queue_length(runs.stack, queue) == 1
    worker = runs.stack.start_worker(f"w-{queue}", queues=[queue])
    own_workers.append(worker)
    assert runs.finished("first")["result"] == 3
    runs.apply("second", "calculate_sum", args=[[3]], queue=queue)
    assert runs.finished("second")["result"] == 3
    operator = runs.stack.process("operator")
    assert operator is not None
    for log in (worker.log_text(), operator.log_text()):
        assert not re.search(r"PRECONDITION_FAILED|PreconditionFailed|inequivalent arg", log)


def counting_worker(
    runs: TaskRuns, counts: str, own_workers: list[ManagedProcess], queue: str
) -> None:
    """A plain Celery worker (no guard) counting each task's executions."""
    own_workers.append(
        runs.stack.start_worker(
            f"w-{queue}",
            env_overrides={"HOSTILE_COUNT_URL": counts},
            queues=[queue],
            app="hostile_app",
            cwd=Path(__file__).parent,
        )
    )


def apply_counted(runs: TaskRuns, names: list[str], queue: str, seconds: float) -> None:
    """All in one `kubectl apply`: a burst."""
    items = [
        runs.manifest(
            name,
            {
                "task": "hostile.count",
                "args": [f"n:{runs.namespace}:{name}", seconds],
                "queue": queue,
            },
        )
        for name in names
    ]
    body = {"apiVersion": "v1", "kind": "List", "items": items}
    runs.kubectl("apply", "-f", "-", input=json.dumps(body), check=True)


def executions(runs: TaskRuns, counts: str, names: list[str]) -> dict[str, int]:
    for name in names:
        assert runs.finished(name, timeout=180)["phase"] == "Succeeded", name
    client = redis.Redis.from_url(counts)
    return {name: int(client.get(f"n:{runs.namespace}:{name}") or 0) for name in names}


def stopped(stack: Stack, name: str) -> list[int]:
    proc = stack.process(name)
    assert proc is not None
    pids = sorted(proc.group_pids())
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return pids


@pytest.mark.usefixtures("faults")
def test_a_stalled_rabbitmq_runs_each_task_once(
    runs: TaskRuns, counts: str, own_workers: list[ManagedProcess]
) -> None:
    """RabbitMQ stops answering (SIGSTOP: connections still accept what is written) past
    every client timeout while runs are sent: each send fails on the queue check before
    its message leaves, so none lands late beside its resend; each runs once."""
    queue = f"stall-{uuid.uuid4().hex[:6]}"
    counting_worker(runs, counts, own_workers, queue)
    apply_counted(runs, ["warm"], queue, 0)
    runs.finished("warm")
    operator = runs.stack.process("operator")
    assert operator is not None
    names = [f"s{i}" for i in range(10)]
    pids = stopped(runs.stack, RABBITMQ)
    try:
        apply_counted(runs, names, queue, 0.5)

        def tried_again(name: str) -> bool:
            # The first send timed out and the next found no answer either: the stall
            # outlasted every client timeout of a send.
            return operator.log_text().count(f"could not submit {runs.namespace}/{name}:") >= 2

        for name in (names[0], names[-1]):
            wait_for(lambda n=name: tried_again(n), timeout=90, what=f"{name} tried again")
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    after = [f"r{i}" for i in range(5)]
    apply_counted(runs, after, queue, 0.5)
    counted = executions(runs, counts, ["warm", *names, *after])
    assert set(counted.values()) == {1}, counted


@pytest.mark.usefixtures("faults")
def test_a_rabbitmq_restart_loses_no_run(
    runs: TaskRuns, counts: str, own_workers: list[ManagedProcess]
) -> None:
    """RabbitMQ stopped and started again (its data kept) while runs are sent: every run
    ends Succeeded, none lost. Runs twice are counted and printed, not refused: a
    message whose confirm was lost with the connection is sent again, and RabbitMQ
    redelivers a message whose consumer's connection went before its ack (seen once:
    a run whose send never failed ran twice on a plain worker)."""
    queue = f"restart-{uuid.uuid4().hex[:6]}"
    counting_worker(runs, counts, own_workers, queue)
    before = [f"b{i}" for i in range(10)]
    apply_counted(runs, before, queue, 0.5)
    runs.stack.restart(RABBITMQ, down_for=3)
    after = [f"a{i}" for i in range(10)]
    apply_counted(runs, after, queue, 0.5)
    counted = executions(runs, counts, [*before, *after])
    operator = runs.stack.process("operator")
    assert operator is not None
    failed = set(re.findall(rf"could not submit {runs.namespace}/(\w+):", operator.log_text()))
    twice = {name for name, count in counted.items() if count > 1}
    print(
        f"executions across a RabbitMQ restart: {counted}; "
        f"sends that failed, then sent again: {sorted(failed)}; executed twice: {sorted(twice)}"
    )
    assert min(counted.values()) >= 1, counted  # none lost


@pytest.mark.usefixtures("faults")
def test_an_operator_killed_while_sending_loses_no_run(
    runs: TaskRuns, counts: str, own_workers: list[ManagedProcess]
) -> None:
    """The operator killed (SIGKILL) while it sends a burst, then started again: every
    run ends Succeeded, none lost. A run whose message was confirmed but whose status
    was not written yet is sent again by the next operator (it cannot ask RabbitMQ
    whether a queued message is there): such a run, and only such a one, may run
    twice."""
    queue = f"kill-{uuid.uuid4().hex[:6]}"
    counting_worker(runs, counts, own_workers, queue)
    stack = runs.stack
    operator = stack.process("operator")
    assert operator is not None
    names = [f"k{i}" for i in range(20)]
    apply_counted(runs, names, queue, 1)
    wait_for(
        lambda: operator.log_text().count(f"submitting {runs.namespace}/k") >= 6,
        timeout=30,
        what="sends under way",
        interval=0.01,
    )
    os.kill(operator.pid, signal.SIGKILL)
    wait_for(lambda: not is_running(proc_info(operator.pid)), timeout=10, what="operator gone")
    again = stack.restart("operator")
    counted = executions(runs, counts, names)
    print("executions across an operator kill:", counted)
    assert min(counted.values()) >= 1, counted  # none lost
    recovered = set(re.findall(rf"submitting {runs.namespace}/(k\d+) as \S+ \(recovering\)",
                               again.log_text()))  # fmt: skip
    twice = {name for name, count in counted.items() if count > 1}
    print(f"sent again after the kill: {sorted(recovered)}; executed twice: {sorted(twice)}")
    assert twice <= recovered, (twice, recovered)


# -- one test of each promise of the suites, on RabbitMQ/PostgreSQL ----------------------


@pytest.fixture(scope="module")
def suites(combination: Stack) -> Iterator[Stack]:
    """The stack as the suites' session stack is: an operator on the shared `t-*`
    namespaces only, the cluster-wide default stopped meanwhile (the suites' own
    operators must be alone on theirs); the default is back afterwards."""
    if combination.backend != POSTGRESQL:
        pytest.skip(
            "the reduced matrix runs on RabbitMQ/PostgreSQL; RabbitMQ/Redis: make test-matrix"
        )
    default = combination.process("operator")
    assert default is not None
    default.stop()
    shared = combination.start_operator("op-suites", extra_args=["--namespace", "t-*"])
    try:
        yield combination
    finally:
        shared.stop()
        combination.start_operator()


def suite_namespace(stack: Stack, prefix: str) -> TaskRuns:
    namespace = f"{prefix}-{uuid.uuid4().hex[:8]}"
    stack.kubectl("create", "namespace", namespace, check=True)
    return TaskRuns(stack, namespace)


def test_suites_success(suites: Stack) -> None:
    lifecycle.test_sum_succeeds_with_its_result(suite_namespace(suites, "t-suites"))


def test_suites_cancel(suites: Stack) -> None:
    control.test_cancel_terminates_a_running_task(suite_namespace(suites, "t-suites"))


def test_suites_hard_limit(suites: Stack) -> None:
    lifecycle.test_hard_time_limit_kills_and_the_worker_serves_on(
        suite_namespace(suites, "t-suites")
    )


def test_suites_retries(suites: Stack) -> None:
    control.test_retries_resubmit_after_failure(suite_namespace(suites, "t-suites"))


def test_suites_operator_kill(
    suites: Stack, tmp_path: Path, late_queue: tuple[str, list[ManagedProcess]]
) -> None:
    worker = suites.process("worker1")
    assert worker is not None
    control.test_operator_killed_mid_flight_loses_and_repeats_nothing(
        (suite_namespace(suites, "iso-suites"), tmp_path), late_queue, worker
    )


def test_suites_policy_refusal(suites: Stack, tmp_path: Path) -> None:
    worker = suites.process("worker1")
    assert worker is not None
    cluster = tenancy.Cluster(suites, tmp_path)
    try:
        tenancy.test_policies_decide_who_may_run_what(cluster, worker)
    finally:
        cluster.close()
