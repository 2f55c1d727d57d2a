"""Helpers for end-to-end tests: apply TaskRuns, wait on what a user would see.

Reads go through the Kubernetes Python client with the admin kubeconfig (fast enough
to poll); assertions that the issue phrases as `kubectl ...` use the real kubectl.
Every wait is on a condition with a timeout, never a bare sleep.

What the tests read beside the API (the execution ledger, the result backend, a queue's
length) goes through helpers that hold on every broker and backend the session stack
may run (TASKRUN_E2E_BROKER, TASKRUN_E2E_BACKEND): Celery's own result backend client,
AMQP or Redis for queues, the ledger's Redis (`stack.ledger_url`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import amqp
import redis
import yaml
from celery import Celery
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from taskrun_dev.servers import POSTGRESQL, RABBITMQ
from taskrun_dev.services import REDIS
from taskrun_dev.stack import Stack
from taskrun_workers.ledger import read_ledger

GROUP, VERSION, PLURAL = "celery.taskrun.dev", "v1alpha1", "taskruns"
TASKS = "taskrun_workers.tasks"
TERMINAL = ("Succeeded", "Failed", "TimedOut", "Revoked")
# The session stack's broker and backend (tests/conftest.py), for skips decided before
# it runs.
E2E_BROKER = os.environ.get("TASKRUN_E2E_BROKER", "redis")
E2E_BACKEND = os.environ.get("TASKRUN_E2E_BACKEND", "redis")
ON_REDIS = E2E_BROKER == E2E_BACKEND == "redis"

Body = dict[str, Any]

# Short leases, for an operator whose takeover (after a kill, a crash, a pause) a test
# waits on: the defaults (15 s / 10 s / 2 s) would add 15 s to each.
FAST_LEASE = {
    "leaseDurationSeconds": 4,
    "leaseRenewDeadlineSeconds": 3,
    "leaseRetryPeriodSeconds": 0.5,
}


def wait_for(check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def ledger(stack: Stack) -> list[dict[str, Any]]:
    """Every entry of the workers' execution ledger (taskrun_workers.ledger), oldest first."""
    url = stack.ledger_url
    assert url is not None, "this stack keeps no execution ledger (no Redis: up(ledger_redis=True))"
    return read_ledger(url)


def starts(stack: Stack, task_id: str) -> int:
    """How many times the task started executing in a worker, per the ledger."""
    return sum(1 for e in ledger(stack) if e["task_id"] == task_id and e["event"] == "start")


@functools.cache
def _results(result_backend: str) -> Celery:
    # Celery's own client of the backend: the same reads on Redis, PostgreSQL or SQLite.
    return Celery("e2e-results", backend=result_backend, set_as_current=False)


def result_state(stack: Stack, task_id: str) -> str:
    """The state the result backend holds for the task (PENDING when it holds none)."""
    state: str = _results(stack.result_backend).backend.get_task_meta(task_id)["status"]
    return state


def forget_result(stack: Stack, task_id: str) -> None:
    """Delete the task's record from the result backend, as result_expires would."""
    _results(stack.result_backend).backend.forget(task_id)


def wait_revoked(stack: Stack, task_id: str) -> None:
    """The operator stored REVOKED for the task in the result backend (workers check it)."""
    wait_for(
        lambda: result_state(stack, task_id) == "REVOKED",
        timeout=15,
        what=f"{task_id} REVOKED in the result backend",
        interval=0.2,
    )


def queue_length(stack: Stack, queue: str) -> int:
    """Messages waiting in the broker's queue (Redis: its list; RabbitMQ: the queue)."""
    if stack.broker != RABBITMQ:
        client = redis.Redis.from_url(stack.broker_url, socket_timeout=5)
        try:
            return int(client.llen(queue))
        finally:
            client.close()
    connection = amqp.Connection(
        host=stack.broker_url.split("@", 1)[1].split("/", 1)[0],
        userid="guest",
        password="guest",
        connect_timeout=5,
    )
    connection.connect()
    try:
        # passive: only asks; a queue never declared has nothing waiting
        _, count, _ = connection.channel().queue_declare(queue, passive=True)
        return int(count)
    except amqp.NotFound:
        return 0
    finally:
        connection.close()


@contextlib.contextmanager
def stopped(stack: Stack, *servers: str) -> Iterator[None]:
    """The stack's `servers` (its broker, its backend: redis, rabbitmq, postgresql) down
    for the block, then started again on their ports."""
    start = {
        REDIS: stack.start_redis,
        RABBITMQ: stack.start_rabbitmq,
        POSTGRESQL: stack.start_postgresql,
    }
    unique = list(dict.fromkeys(servers))
    for name in unique:
        proc = stack.process(name)
        assert proc is not None and name in start, f"no server {name} in the stack"
        proc.stop()
    try:
        yield
    finally:
        for name in unique:
            start[name]()


@dataclass
class TaskRuns:
    """TaskRuns of one namespace on the test stack."""

    stack: Stack
    namespace: str
    api: client.CustomObjectsApi = field(init=False)
    core: client.CoreV1Api = field(init=False)

    def __post_init__(self) -> None:
        api_client = config.new_client_from_config(str(self.stack.admin_kubeconfig))
        self.api = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)

    def manifest(self, name: str, spec: dict[str, Any]) -> Body:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "TaskRun",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": spec,
        }

    def apply(self, name: str, task: str, **spec: Any) -> Body:
        """`kubectl apply` a TaskRun, as a user would."""
        full = task if "." in task else f"{TASKS}.{task}"
        body = self.manifest(name, {"task": full, **spec})
        self.kubectl("apply", "-f", "-", input=json.dumps(body), check=True)
        return body

    def kubectl(self, *args: str, input: str | None = None, check: bool = False) -> Any:
        return self.stack.kubectl(*args, "-n", self.namespace, input=input, check=check)

    def get(self, name: str) -> Body:
        body: Body = self.api.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name
        )
        return body

    def exists(self, name: str) -> bool:
        try:
            self.get(name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def status(self, name: str) -> Body:
        return self.get(name).get("status") or {}

    def yaml(self, name: str) -> Body:
        """What `kubectl get taskrun NAME -o yaml` shows."""
        out = self.kubectl("get", "taskrun", name, "-o", "yaml", check=True).stdout
        loaded: Body = yaml.safe_load(out)
        return loaded

    def patch(self, name: str, spec: dict[str, Any]) -> None:
        self.kubectl(
            "patch", "taskrun", name, "--type=merge", "-p", json.dumps({"spec": spec}), check=True
        )

    def wait(self, name: str, check: Callable[[Body], Any], what: str, timeout: float = 60) -> Body:
        def probe() -> Body | None:
            status = self.status(name)
            return status if check(status) else None

        try:
            result: Body = wait_for(probe, timeout=timeout, what=f"{name}: {what}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last status: {json.dumps(self.status(name))}") from None
        return result

    def wait_phase(self, name: str, *phases: str, timeout: float = 60) -> Body:
        return self.wait(name, lambda s: s.get("phase") in phases, f"phase in {phases}", timeout)

    def finished(self, name: str, timeout: float = 60) -> Body:
        return self.wait_phase(name, *TERMINAL, timeout=timeout)

    def events(self, name: str) -> list[tuple[str, str, str]]:
        """(type, reason, message) of the events recorded on the TaskRun, oldest first."""
        items = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}"
        ).items
        # Timestamps have one-second precision; etcd's revision orders them exactly.
        items.sort(key=lambda e: int(e.metadata.resource_version))
        return [(e.type, e.reason, e.message) for e in items]

    def wait_event(self, name: str, kind: str, reason: str, timeout: float = 15) -> None:
        """An event of this type and reason recorded on the TaskRun (posted after status)."""
        wait_for(
            lambda: any((t, r) == (kind, reason) for t, r, _ in self.events(name)),
            timeout=timeout,
            what=f"{kind} event {reason} on {name}",
            interval=0.2,
        )

    def condition(self, name: str, kind: str) -> Body:
        conditions = {c["type"]: c for c in self.status(name).get("conditions", [])}
        return conditions[kind]


def kubectl_wait(runs: TaskRuns, name: str, condition: str, timeout: int = 60) -> Any:
    """`kubectl wait --for=condition=X`, as a pipeline would gate on a run."""
    return runs.stack.kubectl(
        "wait",
        f"--for=condition={condition}",
        f"taskrun/{name}",
        "-n",
        runs.namespace,
        f"--timeout={timeout}s",
        timeout=timeout + 30,
    )


def listening_addresses(pids: set[int]) -> list[str]:
    """Local addresses (/proc/net/tcp's hex) of the TCP sockets in LISTEN state owned by
    `pids`."""
    inodes: set[str] = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir() if fd_dir.is_dir() else []:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(fields[1])
    return found


def beyond_loopback(addresses: list[str]) -> list[str]:
    """The addresses of `listening_addresses` that are not 127.0.0.1 or ::1."""
    loopback = ("0100007F:",)  # 127.0.0.1, little-endian hex
    loopback6 = ("0000000000000000FFFF00000100007F:", "00000000000000000000000001000000:")
    return [a for a in addresses if not a.startswith(loopback + loopback6)]
