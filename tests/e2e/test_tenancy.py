"""Two operators, who may run what, and the promises that used to leak, on the real
stack with plain Celery workers (`hostile_app`: no guard) whose tasks count their own
executions in the Redis of the stack's ledger, so "executed twice" and "never ran" are
what the test reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from taskrun_dev.audit import AuditLog
from taskrun_dev.processes import ManagedProcess, free_port
from taskrun_dev.servers import RABBITMQ
from taskrun_dev.stack import Stack

from support import (
    FAST_LEASE,
    ON_REDIS,
    TaskRuns,
    forget_result,
    queue_length,
    result_state,
    wait_for,
)

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
INTENT = "celery.taskrun.dev/submitting"

# Whatever the session's broker and backend: once is enough, on Redis/Redis.
OWN_STACK = pytest.mark.skipif(
    not ON_REDIS,
    reason="brings its own Redis or stack whatever the session runs: run on Redis/Redis",
)


class Cluster:
    """Own operators and plain workers on namespaces of this test."""

    def __init__(self, stack: Stack, tmp_path: Path) -> None:
        self.stack = stack
        self.tmp_path = tmp_path
        self.started: list[ManagedProcess] = []
        self.namespaces: list[str] = []
        self.prefix = f"ten-{uuid.uuid4().hex[:6]}"

    def namespace(self, suffix: str = "a") -> TaskRuns:
        name = f"{self.prefix}-{suffix}"
        self.stack.kubectl("create", "namespace", name, check=True)
        self.namespaces.append(name)
        return TaskRuns(self.stack, name)

    def operator(
        self, name: str, config: dict[str, Any] | None = None, **env: str
    ) -> ManagedProcess:
        path = self.tmp_path / f"{name}.yaml"
        path.write_text(json.dumps(config or {}))
        proc = self.stack.start_operator(
            f"{self.prefix}-{name}",
            config_path=path,
            env_overrides=env,
            extra_args=["--namespace", f"{self.prefix}-*"],
        )
        self.started.append(proc)
        return proc

    def worker(self, queue: str, **env: str) -> ManagedProcess:
        proc = self.stack.start_worker(
            f"w-{self.prefix}-{queue}",
            env_overrides=env,
            queues=[queue],
            app="hostile_app",
            cwd=HERE,
        )
        self.started.append(proc)
        return proc

    def executions(self, key: str) -> int:
        url = self.stack.ledger_url
        assert url is not None
        return int(redis.Redis.from_url(url).get(key) or 0)

    def close(self) -> None:
        for proc in self.started:
            proc.stop()
        for name in self.namespaces:
            self.stack.kubectl("delete", "taskruns", "--all", "-n", name, "--wait=false")
            self.stack.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture
def cluster(stack: Stack, tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(stack, tmp_path)
    yield made
    made.close()


def counted(runs: TaskRuns, name: str, queue: str, seconds: float = 0, **spec: Any) -> str:
    key = f"executions:{runs.namespace}:{name}"
    runs.apply(name, "hostile.count", args=[key, seconds], queue=queue, **spec)
    return key


def lease_holder(stack: Stack, name: str) -> str:
    lease = stack.kubectl_json("get", "lease", name, "-n", "celery-taskrun-system")
    holder: str = lease["spec"].get("holderIdentity") or ""
    return holder


# -- two operators ------------------------------------------------------------------------


def test_two_operators_never_both_act_and_the_standby_takes_over(cluster: Cluster) -> None:
    lease = f"celery-taskrun-{cluster.prefix}-pair"
    a = cluster.operator("a", FAST_LEASE, TASKRUN_LEASE_NAME=lease)
    b = cluster.operator("b", FAST_LEASE, TASKRUN_LEASE_NAME=lease)
    cluster.worker("pair")
    runs = cluster.namespace()
    keys = {f"r{i}": counted(runs, f"r{i}", "pair") for i in range(30)}
    for name in keys:
        assert runs.finished(name, timeout=90)["phase"] == "Succeeded"
    assert {cluster.executions(key) for key in keys.values()} == {1}  # each once

    # Runs in flight when the leader dies: none lost, none executed twice.
    slow = {f"s{i}": counted(runs, f"s{i}", "pair", seconds=2) for i in range(6)}
    # Seen running, or (polls alone, a database backend) already done: s1-s5 still go.
    runs.wait_phase("s0", "Running", "Succeeded", timeout=30)
    holder = lease_holder(cluster.stack, lease)
    leader, standby = (a, b) if f"_{a.pid}_" in holder else (b, a)
    assert f"_{leader.pid}_" in holder
    os.kill(leader.pid, signal.SIGKILL)
    killed = time.monotonic()
    key = counted(runs, "after", "pair")
    runs.wait_phase("after", "Queued", "Running", "Succeeded", timeout=60)
    takeover = time.monotonic() - killed
    print(f"takeover after kill -9: {takeover:.1f}s (lease {FAST_LEASE})")
    assert f"_{standby.pid}_" in lease_holder(cluster.stack, lease)
    assert runs.finished("after")["phase"] == "Succeeded" and cluster.executions(key) == 1
    for name, slow_key in slow.items():
        assert runs.finished(name, timeout=90)["phase"] == "Succeeded"
        assert cluster.executions(slow_key) == 1, name
    assert {cluster.executions(k) for k in keys.values()} == {1}
    assert takeover < FAST_LEASE["leaseDurationSeconds"] + 5


def test_namespaces_created_as_the_operator_starts_are_served(cluster: Cluster) -> None:
    """A glob (`--namespace ten-...-*`): every matching namespace is served, those
    created while the operator starts included (Kopf's own globbing could miss them)."""
    cluster.operator("glob")
    spaces = [cluster.namespace(f"n{i}") for i in range(4)]  # at once, as it starts
    for runs in spaces:
        runs.apply("r", "x.y", cancel=True)
    for runs in spaces:
        assert runs.finished("r", timeout=30)["reason"] == "Cancelled"
    outside = TaskRuns(cluster.stack, f"out-{cluster.prefix}")
    cluster.stack.kubectl("create", "namespace", outside.namespace, check=True)
    cluster.namespaces.append(outside.namespace)
    outside.apply("r", "x.y", cancel=True)
    spaces[0].apply("later", "x.y", cancel=True)  # once it is handled, so would `r` be
    assert spaces[0].finished("later", timeout=30)["reason"] == "Cancelled"
    assert "phase" not in outside.status("r")  # not matched: not ours


# -- who may run what ---------------------------------------------------------------------


def test_policies_decide_who_may_run_what(cluster: Cluster, worker: ManagedProcess) -> None:
    cluster.operator(
        "policy",
        {
            "policies": [
                {
                    "namespaces": [f"{cluster.prefix}-a"],
                    "tasks": ["taskrun_workers.tasks.*"],
                    "queues": ["celery"],
                },
                {"namespaces": [f"{cluster.prefix}-b"], "tasks": ["*"]},
            ]
        },
    )
    team_a, team_b, team_c = (cluster.namespace(s) for s in ("a", "b", "c"))
    team_a.apply("allowed", "calculate_sum", args=[[1, 2]])
    assert team_a.finished("allowed")["result"] == 3

    for runs, name, task, queue, words in (
        (team_a, "by-task", "hostile.echo", None, "policies[0]"),
        (team_a, "by-queue", "calculate_sum", "gpu", "on queue 'gpu' is not allowed"),
        (team_b, "built-in", "celery.chain", None, "policies[1]"),
        (team_c, "no-policy", "calculate_sum", None, "no policy covers namespace"),
    ):
        spec = {"queue": queue} if queue else {}
        runs.apply(name, task, args=[[1]], **spec)
        status = runs.finished(name)
        assert (status["phase"], status["reason"]) == ("Failed", "TaskNotAllowed"), status
        assert words in status["message"]
        # Nothing reached the broker: no task id was ever made, no intent recorded.
        assert "taskId" not in status
        assert INTENT not in (runs.get(name)["metadata"].get("annotations") or {})


# -- the promises that used to leak --------------------------------------------------------


def test_a_run_deleted_while_being_sent_is_revoked(cluster: Cluster) -> None:
    cluster.operator("slow-send", TASKRUN_FAULT="slow-send")
    worker = cluster.worker("sent")
    runs = cluster.namespace()
    key = counted(runs, "doomed", "sent", countdown=3)
    meta = wait_for(
        lambda: (runs.get("doomed")["metadata"].get("annotations") or {}).get(INTENT),
        timeout=30,
        what="the intent recorded: the task is being sent",
    )
    runs.kubectl("delete", "taskrun", "doomed", "--wait=false", check=True)
    wait_for(lambda: not runs.exists("doomed"), timeout=30, what="the TaskRun gone")
    assert worker.wait_for_log(rf"Discarding revoked task.*{meta}", 30), worker.tail(30)
    assert cluster.executions(key) == 0


def test_a_worker_restarted_in_place_is_asked_about_its_task(cluster: Cluster) -> None:
    cluster.operator("watchdog", {"workerCheckInterval": 1, "workerLostAfter": 2})
    worker = cluster.worker("inplace")
    runs = cluster.namespace()
    key = counted(runs, "held", "inplace", seconds=600, retries=1)
    first = runs.wait_phase("held", "Running", timeout=30)["taskId"]
    restarted = cluster.stack.restart(worker.name)  # same hostname: it answers pings
    cluster.started.append(restarted)
    second = runs.wait("held", lambda s: s.get("attempt", 1) >= 2, "a second attempt", timeout=60)
    assert second["attempts"][0]["reason"] == "WorkerLost"
    # The first attempt was revoked before the second was sent.
    assert result_state(cluster.stack, first) == "REVOKED"
    runs.wait_phase("held", "Running", timeout=30)
    assert cluster.executions(key) == 2  # the lost execution, then the second: none at once


def test_a_cancelled_run_never_runs_even_after_its_mark_expired(cluster: Cluster) -> None:
    cluster.operator("expiry", {"messageExpires": 2})
    runs = cluster.namespace()
    key = counted(runs, "cancelled", "late")
    task_id = runs.wait_phase("cancelled", "Queued")["taskId"]
    sent = time.time()
    runs.patch("cancelled", {"cancel": True})
    assert runs.finished("cancelled")["reason"] == "Cancelled"
    # result_expires drops the REVOKED mark; the message, sent with an expiry, outlives
    # neither: a worker that comes online later discards it (RabbitMQ drops it itself:
    # Celery sends the expiry as the message's TTL there).
    forget_result(cluster.stack, task_id)
    wait_for(lambda: time.time() > sent + 2.5, timeout=10, what="the message expired")
    worker = cluster.worker("late")
    wait_for(lambda: queue_length(cluster.stack, "late") == 0, timeout=30, what="late drained")
    if cluster.stack.broker == RABBITMQ:
        assert task_id not in worker.log_text(), worker.tail(30)
    else:
        assert worker.wait_for_log(rf"(Discarding|expired).*{task_id}", 30), worker.tail(30)
    assert cluster.executions(key) == 0


# -- secrets ----------------------------------------------------------------------------------


class OwnRedis:
    """A redis-server of this test's own (its faults reach no other test)."""

    def __init__(self, tmp_path: Path, *flags: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path), *flags],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        # Gone, not just asked to go: a run sent meanwhile would still reach it.
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def guarded_redis(tmp_path: Path) -> Iterator[tuple[int, Callable[[], None]]]:
    """A redis-server of its own that wants a password; (port, stop)."""
    own = OwnRedis(tmp_path, "--requirepass", "s3cr3t-pw")
    client = redis.Redis(port=own.port, password="s3cr3t-pw")
    wait_for(lambda: _pings(client), timeout=10, what="the guarded redis up")
    yield own.port, own.stop
    own.stop()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@OWN_STACK
def test_no_secret_in_status_events_logs_or_metrics(
    cluster: Cluster, guarded_redis: tuple[int, Callable[[], None]]
) -> None:
    port, stop_redis = guarded_redis
    urls = {
        "CELERY_BROKER_URL": f"redis://:s3cr3t-pw@127.0.0.1:{port}/0",
        "CELERY_RESULT_BACKEND": f"redis://:s3cr3t-pw@127.0.0.1:{port}/1",
    }
    operator = cluster.operator("secrets", **urls)
    cluster.worker("secret-q", **urls)
    runs = cluster.namespace()
    runs.apply("ok", "hostile.echo", args=[1], queue="secret-q")
    assert runs.finished("ok")["phase"] == "Succeeded"
    stop_redis()  # now every call fails, and its error is reported
    runs.apply("down", "hostile.echo", args=[2], queue="secret-q")
    runs.wait("down", lambda s: s.get("reason") == "BackendUnavailable", "BackendUnavailable")
    runs.wait_event("down", "Warning", "BackendUnavailable")

    shown = runs.kubectl("get", "taskruns,events", "-o", "json", check=True).stdout
    assert "BackendUnavailable" in shown and "s3cr3t-pw" not in shown
    assert "s3cr3t-pw" not in operator.log_text()
    assert operator.url is not None
    metrics = urllib.request.urlopen(operator.url, timeout=10).read().decode()
    assert "taskrun_" in metrics and "s3cr3t-pw" not in metrics


@pytest.fixture
def audited(tmp_path: Path) -> Iterator[Cluster]:
    """A stack of its own whose API server logs every write, with who made it."""
    stack = Stack(tmp_path / "audited", say=lambda _: None, audit=True)
    try:
        stack.up(operator=False, worker=False)
        cluster = Cluster(stack, tmp_path)
        yield cluster
        cluster.close()
    finally:
        stack.down()


@OWN_STACK
def test_a_leader_paused_past_its_lease_writes_nothing_when_it_wakes(audited: Cluster) -> None:
    """The leader is stopped (SIGSTOP: a long GC, a throttled or frozen VM) until the
    standby took over, runs arrive meanwhile, and it is resumed with its watch events
    and its work queued: none of its writes lands after it wakes (the API server's
    audit log, by the operator's user agent), and every run executes exactly once on a
    plain worker (no guard)."""
    cluster = audited
    lease = f"celery-taskrun-{cluster.prefix}-pause"
    a = cluster.operator("a", FAST_LEASE, TASKRUN_LEASE_NAME=lease)
    b = cluster.operator("b", FAST_LEASE, TASKRUN_LEASE_NAME=lease)
    cluster.worker("pause")
    runs = cluster.namespace()
    keys = {"warm": counted(runs, "warm", "pause")}
    assert runs.finished("warm", timeout=60)["phase"] == "Succeeded"
    holder = lease_holder(cluster.stack, lease)
    leader, standby = (a, b) if f"_{a.pid}_" in holder else (b, a)
    # Work in flight as it is paused, and work that arrives while it is.
    keys |= {f"p{i}": counted(runs, f"p{i}", "pause", seconds=1) for i in range(6)}
    os.kill(leader.pid, signal.SIGSTOP)
    try:
        keys |= {f"d{i}": counted(runs, f"d{i}", "pause") for i in range(6)}
        took_over = lambda: f"_{standby.pid}_" in lease_holder(cluster.stack, lease)  # noqa: E731
        wait_for(took_over, timeout=30, what="the standby took over")
        keys |= {f"t{i}": counted(runs, f"t{i}", "pause") for i in range(6)}
        for name in keys:
            runs.wait_phase(name, "Succeeded", timeout=90)
    finally:
        resumed = time.time()
        os.kill(leader.pid, signal.SIGCONT)
    keys |= {f"r{i}": counted(runs, f"r{i}", "pause") for i in range(6)}
    for name in keys:
        assert runs.finished(name, timeout=90)["phase"] == "Succeeded", name
    wait_for(
        lambda: "no longer leading" in leader.log_path.read_text(),
        timeout=30,
        what="the paused leader stepped down",
    )
    executions = {name: cluster.executions(key) for name, key in keys.items()}
    assert set(executions.values()) == {1}, executions
    mine = f"_{leader.pid}_"
    writes = [w for w in AuditLog(cluster.stack.audit_log).read_new() if mine in w.user_agent]
    assert writes, "the leader's writes are told apart by its user agent"
    late = [w for w in writes if datetime.fromisoformat(w.at).timestamp() > resumed]
    # A request that passed the fence just before the pause leaves when the process
    # wakes: no fence can call it back, so its precondition (the resourceVersion or uid
    # it was made on) is what refuses it (409, or 422 for a failed uid test). Nothing of
    # the paused leader's lands.
    landed = [w for w in late if not 400 <= w.code < 500]
    assert not landed, landed[:5]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    own = OwnRedis(tmp_path)
    wait_for(lambda: _pings(redis.Redis(port=own.port)), timeout=10, what="redis up")
    yield own
    os.kill(own.proc.pid, signal.SIGCONT)  # a stopped process does not stop on SIGTERM
    own.stop()


@OWN_STACK
def test_a_redis_stalled_past_every_timeout_runs_each_task_once(
    cluster: Cluster, own_redis: OwnRedis
) -> None:
    """Redis stops answering (SIGSTOP: connections are still accepted and written to, so
    a publish that times out may land when it wakes) for longer than every client
    timeout while runs are sent, then resumes: each run executes exactly once on a plain
    worker, and every run succeeds."""
    urls = {
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{own_redis.port}/0",
        "CELERY_RESULT_BACKEND": f"redis://127.0.0.1:{own_redis.port}/1",
    }
    operator = cluster.operator("stall", {"brokerTimeout": 3, "backendTimeout": 2}, **urls)
    cluster.worker("stall", **urls)
    runs = cluster.namespace()
    keys = {"warm": counted(runs, "warm", "stall")}
    assert runs.finished("warm", timeout=60)["phase"] == "Succeeded"
    # Both of the worker's processes busy past the stall: what was sent stays queued,
    # with no record a resend could find.
    keys |= {f"busy{i}": counted(runs, f"busy{i}", "stall", seconds=40) for i in range(2)}
    for name in ("busy0", "busy1"):
        runs.wait_phase(name, "Running", timeout=60)
    os.kill(own_redis.proc.pid, signal.SIGSTOP)
    try:
        keys |= {f"s{i}": counted(runs, f"s{i}", "stall") for i in range(12)}

        def tried_again(name: str) -> bool:
            # The first publish left and timed out; the next tries found no answer either.
            return operator.log_text().count(f"could not submit {runs.namespace}/{name}:") >= 2

        for name in ("s0", "s11"):
            wait_for(lambda n=name: tried_again(n), timeout=90, what=f"{name} tried again")
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)
    keys |= {f"r{i}": counted(runs, f"r{i}", "stall") for i in range(6)}
    for name in keys:
        assert runs.finished(name, timeout=120)["phase"] == "Succeeded", name
    executions = {name: cluster.executions(key) for name, key in keys.items()}
    assert set(executions.values()) == {1}, executions
