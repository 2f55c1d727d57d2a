"""Helpers for end-to-end tests: apply TaskRuns, wait on what a user would see.

Reads go through the Kubernetes Python client with the admin kubeconfig (fast enough
to poll); assertions that the issue phrases as `kubectl ...` use the real kubectl.
Every wait is on a condition with a timeout, never a bare sleep.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from taskrun_dev.stack import Stack

GROUP, VERSION, PLURAL = "celery.taskrun.dev", "v1alpha1", "taskruns"
TASKS = "taskrun_workers.tasks"
TERMINAL = ("Succeeded", "Failed", "TimedOut", "Revoked")

Body = dict[str, Any]


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


def wait_revoked(stack: Stack, task_id: str) -> None:
    """The operator stored REVOKED for the task in the result backend (workers check it)."""
    backend = redis.Redis.from_url(stack.result_backend)
    wait_for(
        lambda: b'"REVOKED"' in (backend.get(f"celery-task-meta-{task_id}") or b""),
        timeout=15,
        what=f"{task_id} REVOKED in the result backend",
    )


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
