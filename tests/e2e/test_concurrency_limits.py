"""Concurrency limits on the real stack: per cluster, per namespace, per key, a run in
two groups, priority order, a waiting run timing out, and the operator killed or the
leader changed while runs wait.

Each test runs an operator of its own (a config with its groups, short leases) on
namespaces of its own, and the `span` task on a worker with more processes than any
limit, so only the operator holds runs back.  How many ran at once is measured from the
worker's own execution: each span records when it started and ended, inside the task,
before Celery stores its result (the ledger's `span` entries).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from taskrun_dev.processes import ManagedProcess
from taskrun_dev.stack import Stack
from taskrun_workers.ledger import read_ledger

from support import FAST_LEASE, TaskRuns, wait_for

pytestmark = pytest.mark.e2e

QUEUE = "conc"
SPAN = "span"


@pytest.fixture(scope="module")
def conc_worker(stack: Stack) -> Iterator[ManagedProcess]:
    """More processes than any limit here: the worker never holds a run back."""
    proc = stack.start_worker("w-conc", queues=[QUEUE], concurrency=6)
    yield proc
    proc.stop()


@dataclass
class Limited:
    """Namespaces of a test's own, an operator (or two) on them with `concurrency`."""

    stack: Stack
    tmp_path: Path
    make_namespace: Callable[[str], str]
    groups: list[dict[str, Any]] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    started: list[ManagedProcess] = field(default_factory=list)
    lease: str = field(default_factory=lambda: f"celery-taskrun-conc-{uuid.uuid4().hex[:6]}")

    def runs(self) -> TaskRuns:
        namespace = self.make_namespace("iso-conc")
        self.namespaces.append(namespace)
        return TaskRuns(self.stack, namespace)

    def operator(self, name: str) -> ManagedProcess:
        path = self.tmp_path / "config.yaml"
        path.write_text(json.dumps({"concurrency": self.groups, **FAST_LEASE}))
        args = [arg for namespace in self.namespaces for arg in ("--namespace", namespace)]
        proc = self.stack.start_operator(
            f"{self.lease}-{name}",
            config_path=path,
            env_overrides={"TASKRUN_LEASE_NAME": self.lease},
            extra_args=args,
        )
        self.started.append(proc)
        return proc

    def leader(self, *procs: ManagedProcess) -> ManagedProcess:
        lease = self.stack.kubectl_json("get", "lease", self.lease, "-n", "celery-taskrun-system")
        holder = lease["spec"]["holderIdentity"]
        (found,) = [proc for proc in procs if f"_{proc.pid}_" in holder]
        return found


@pytest.fixture
def limited(
    stack: Stack, tmp_path: Path, make_namespace: Callable[[str], str], conc_worker: ManagedProcess
) -> Iterator[Limited]:
    made = Limited(stack, tmp_path, make_namespace)
    yield made
    for proc in made.started:
        proc.stop()


def span(runs: TaskRuns, name: str, seconds: float, **spec: Any) -> str:
    runs.apply(name, SPAN, args=[seconds], queue=QUEUE, **spec)
    return name


def finish(runs: TaskRuns, names: Sequence[str], timeout: float = 120) -> dict[str, str]:
    """Wait for every run to succeed; their task ids."""
    ids = {}
    for name in names:
        status = runs.finished(name, timeout=timeout)
        assert status["phase"] == "Succeeded", (name, status)
        ids[name] = status["taskId"]
    return ids


def spans(stack: Stack, task_ids: Sequence[str]) -> dict[str, tuple[float, float]]:
    """(started, ended) of each task, as the worker recorded it; each ran once."""
    wanted = set(task_ids)
    found: dict[str, tuple[float, float]] = {}
    for entry in read_ledger(stack.broker_url):
        if entry["event"] == "span" and entry["task_id"] in wanted:
            assert entry["task_id"] not in found, f"{entry['task_id']} ran twice"
            found[entry["task_id"]] = (entry["started"], entry["ended"])
    assert set(found) == wanted, f"no span for {wanted - set(found)}"
    return found


def most_at_once(intervals: Sequence[tuple[float, float]]) -> int:
    """The most intervals open at one moment (an end before a start at the same time)."""
    moments = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = running = 0
    for _, step in moments:
        running += step
        most = max(most, running)
    return most


def throttled(runs: TaskRuns, name: str) -> dict[str, Any]:
    return runs.wait(
        name,
        lambda s: (s.get("phase"), s.get("reason")) == ("Pending", "Throttled"),
        "Pending / Throttled",
    )


def test_per_cluster_at_most_the_limit_at_once(limited: Limited) -> None:
    limited.groups = [{"name": "reports", "tasks": ["*.span"], "queues": [QUEUE], "limit": 2}]
    runs = limited.runs()
    limited.operator("a")
    names = [span(runs, f"r{i}", 1.5) for i in range(6)]
    waiting = throttled(runs, "r5")
    assert waiting["message"] == "concurrency group reports: 2 of 2 in use"
    assert "taskId" not in waiting  # nothing sent
    ids = finish(runs, names)
    assert most_at_once(list(spans(runs.stack, list(ids.values())).values())) == 2
    reasons = [reason for _, reason, _ in runs.events("r5")]
    assert reasons.index("Throttled") < reasons.index("Admitted")


def test_per_namespace_each_namespace_its_own_limit(limited: Limited) -> None:
    limited.groups = [{"name": "team", "queues": [QUEUE], "limit": 1, "per": "namespace"}]
    teams = [limited.runs(), limited.runs()]
    limited.operator("a")
    names = ["r0", "r1", "r2"]
    for runs in teams:
        for name in names:
            span(runs, name, 1.5)
    message = throttled(teams[0], "r2")["message"]
    assert message == f"concurrency group team: 1 of 1 in use (namespace {teams[0].namespace})"
    every = []
    for runs in teams:
        own = list(spans(runs.stack, list(finish(runs, names).values())).values())
        assert most_at_once(own) == 1
        every += own
    assert most_at_once(every) == 2  # the namespaces' runs ran beside each other


def test_per_key_one_run_per_customer(limited: Limited) -> None:
    limited.groups = [{"name": "customer", "queues": [QUEUE], "limit": 1, "per": "key"}]
    runs = limited.runs()
    limited.operator("a")
    keys = {"acme": ["a0", "a1", "a2"], "globex": ["g0", "g1", "g2"]}
    for key, names in keys.items():
        for name in names:
            span(runs, name, 1.5, concurrencyKey=key)
    assert throttled(runs, "a2")["message"].endswith("1 of 1 in use (key acme)")
    every = []
    for names in keys.values():
        own = list(spans(runs.stack, list(finish(runs, names).values())).values())
        assert most_at_once(own) == 1
        every += own
    assert most_at_once(every) == 2


def test_a_run_in_two_groups_takes_a_place_in_each(limited: Limited) -> None:
    """`all` holds 2 of the queue's runs, `customer` 1 per key: every run is in both."""
    limited.groups = [
        {"name": "all", "queues": [QUEUE], "limit": 2},
        {"name": "customer", "queues": [QUEUE], "limit": 1, "per": "key"},
    ]
    runs = limited.runs()
    limited.operator("a")
    keys = {"k1": ["a0", "a1", "a2"], "k2": ["b0", "b1"], "k3": ["c0", "c1"]}
    for key, names in keys.items():
        for name in names:
            span(runs, name, 1.0, concurrencyKey=key)
    every = []
    for names in keys.values():
        own = list(spans(runs.stack, list(finish(runs, names).values())).values())
        assert most_at_once(own) == 1
        every += own
    assert most_at_once(every) == 2


def test_waiting_runs_go_by_priority_then_creation(limited: Limited) -> None:
    limited.groups = [{"name": "one", "queues": [QUEUE], "limit": 1}]
    runs = limited.runs()
    limited.operator("a")
    span(runs, "first", 5)
    runs.wait_phase("first", "Queued", "Running")
    # On Redis 0 goes first and 9 last: the urgent run, created last, goes next.
    order = ["low-0", "low-1", "mid", "urgent"]
    for name, priority in zip(order, (9, 9, 5, 0), strict=True):
        span(runs, name, 0.3, priority=priority)
    for name in order:
        throttled(runs, name)
    ids = finish(runs, ["first", *order])
    started = {name: spans(runs.stack, [ids[name]])[ids[name]][0] for name in ids}
    assert sorted(order, key=started.__getitem__) == ["urgent", "mid", "low-0", "low-1"]


def test_a_waiting_run_times_out_and_frees_nothing(limited: Limited) -> None:
    limited.groups = [{"name": "one", "queues": [QUEUE], "limit": 1}]
    runs = limited.runs()
    limited.operator("a")
    span(runs, "long", 6)
    runs.wait_phase("long", "Queued", "Running")
    span(runs, "impatient", 1, timeout=2)
    span(runs, "patient", 0.5)
    status = runs.finished("impatient", timeout=30)
    assert (status["phase"], status["reason"]) == ("TimedOut", "DeadlineExceeded")
    assert "taskId" not in status  # never sent
    assert runs.status("long")["phase"] in ("Queued", "Running")
    assert runs.status("patient")["reason"] == "Throttled"  # the place is still long's
    ids = finish(runs, ["long", "patient"])
    ran = spans(runs.stack, list(ids.values()))
    assert ran[ids["patient"]][0] >= ran[ids["long"]][1]


@pytest.mark.parametrize("change", ["restart", "leader"])
def test_no_overshoot_when_the_operator_restarts_or_the_leader_changes(
    limited: Limited, change: str
) -> None:
    """kill -9 while runs wait: the next operator counts every TaskRun before admitting
    one, so the limit holds through the change."""
    limited.groups = [{"name": "reports", "queues": [QUEUE], "limit": 2}]
    runs = limited.runs()
    first = limited.operator("a")
    standby = limited.operator("b") if change == "leader" else None
    names = [span(runs, f"r{i}", 2) for i in range(8)]
    wait_for(
        lambda: sum(runs.status(n).get("phase") == "Running" for n in names) == 2,
        timeout=60,
        what="two running",
    )
    throttled(runs, "r7")
    if standby is None:
        first.kill()
        limited.operator("a2")
    else:
        leader = limited.leader(first, standby)
        leader.kill()
    ids = finish(runs, names, timeout=180)
    assert most_at_once(list(spans(runs.stack, list(ids.values())).values())) == 2
