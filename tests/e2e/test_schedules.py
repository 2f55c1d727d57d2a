"""CronTaskRuns on the real stack, with `@every` schedules of a few seconds: the runs
each slot makes (names, labels, owner), missed slots after the operator was killed,
two operators, Forbid and Replace with a task longer than the period, history limits,
suspend and resume, a refused template."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from taskrun_dev.processes import ManagedProcess
from taskrun_dev.stack import Stack

from support import FAST_LEASE, TASKS, TaskRuns, wait_for

pytestmark = pytest.mark.e2e

CRON = "celery.taskrun.dev/cron"
SCHEDULED_AT = "celery.taskrun.dev/scheduled-at"


@dataclass
class Crons:
    """CronTaskRuns of one namespace, and the TaskRuns they make."""

    runs: TaskRuns

    def apply(self, name: str, schedule: str, task: str = "echo", **spec: Any) -> None:
        template = spec.pop("template", {"spec": {"task": f"{TASKS}.{task}", "args": [1]}})
        body = {
            "apiVersion": "celery.taskrun.dev/v1alpha1",
            "kind": "CronTaskRun",
            "metadata": {"name": name, "namespace": self.runs.namespace},
            "spec": {"schedule": schedule, "taskRunTemplate": template, **spec},
        }
        self.runs.kubectl("apply", "-f", "-", input=json.dumps(body), check=True)

    def get(self, name: str) -> dict[str, Any]:
        out = self.runs.kubectl("get", "crontaskrun", name, "-o", "json", check=True).stdout
        found: dict[str, Any] = json.loads(out)
        return found

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def made(self, name: str) -> list[dict[str, Any]]:
        """Its TaskRuns, oldest slot first."""
        out = self.runs.kubectl(
            "get", "taskruns", "-l", f"{CRON}={name}", "-o", "json", check=True
        ).stdout
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return sorted(items, key=lambda item: slot(item))

    def slots(self, name: str) -> list[int]:
        return [slot(item) for item in self.made(name)]

    def wait_made(self, name: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        made: list[dict[str, Any]] = wait_for(
            lambda: (m := self.made(name)) and len(m) >= count and m,
            timeout=timeout,
            what=f"{count} runs of {name}",
            interval=0.2,
        )
        return made

    def patch(self, name: str, spec: dict[str, Any]) -> None:
        self.runs.kubectl(
            "patch", "crontaskrun", name, "--type=merge", "-p", json.dumps({"spec": spec}),
            check=True,
        )  # fmt: skip

    def ready(self, name: str) -> dict[str, Any]:
        conditions = {c["type"]: c for c in self.status(name).get("conditions") or []}
        return conditions.get("Ready") or {}


def slot(item: dict[str, Any]) -> int:
    name: str = item["metadata"]["name"]
    return int(name.rsplit("-", 1)[1])


def phases(crons: Crons, name: str) -> dict[int, str | None]:
    return {slot(i): (i.get("status") or {}).get("phase") for i in crons.made(name)}


@pytest.fixture
def crons(runs: TaskRuns) -> Crons:
    return Crons(runs)


@pytest.fixture
def runs(
    stack: Stack, namespace: str, operator: ManagedProcess, worker: ManagedProcess
) -> TaskRuns:
    return TaskRuns(stack, namespace)


def test_each_slot_makes_one_run_named_labelled_and_owned(crons: Crons) -> None:
    crons.apply("every2", "@every 2s")
    made = crons.wait_made("every2", 3, timeout=30)
    cron = crons.get("every2")
    uid = cron["metadata"]["uid"]
    slots = [slot(item) for item in made]
    assert len(set(slots)) == len(slots)
    assert all(b - a == 2 for a, b in pairwise(slots)), slots
    for item in made:
        meta = item["metadata"]
        assert meta["name"] == f"every2-{slot(item)}"
        assert meta["labels"][CRON] == "every2"
        at = datetime.fromtimestamp(slot(item), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert meta["annotations"][SCHEDULED_AT] == at
        [owner] = meta["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("CronTaskRun", "every2", uid)
    first = made[0]["metadata"]["name"]
    assert crons.runs.finished(first)["phase"] == "Succeeded"
    status = crons.status("every2")
    assert status["observedGeneration"] == cron["metadata"]["generation"]
    assert status["lastScheduleTime"] and status["nextScheduleTime"]
    assert crons.ready("every2")["status"] == "True"
    wait_for(
        lambda: crons.status("every2").get("lastSuccessfulTime"),
        timeout=30,
        what="lastSuccessfulTime",
    )
    shown = crons.runs.kubectl("get", "crontaskruns", check=True).stdout
    assert "every2" in shown and "@every 2s" in shown
    # Deleting the schedule deletes its runs (the garbage collector, by their owner).
    crons.runs.kubectl("delete", "crontaskrun", "every2", check=True)
    wait_for(lambda: not crons.made("every2"), timeout=60, what="its runs deleted with it")


def test_history_limits_keep_the_newest_runs(crons: Crons) -> None:
    crons.apply("hist", "@every 1s", successfulRunsHistoryLimit=2)
    # More runs made than the limit keeps, counted over time: a run that ends before the
    # next slot is deleted as that one is made, so three are seldom there at one look.
    made: set[int] = set()

    def three_made() -> bool:
        made.update(crons.slots("hist"))
        return len(made) >= 3

    wait_for(three_made, timeout=30, what="3 runs of hist made")
    wait_for(
        lambda: len([p for p in phases(crons, "hist").values() if p == "Succeeded"]) == 2,
        timeout=30,
        what="two succeeded runs kept",
    )
    crons.patch("hist", {"suspend": True})
    wait_for(
        lambda: (
            set(phases(crons, "hist").values()) == {"Succeeded"} and len(phases(crons, "hist")) == 2
        ),
        timeout=30,
        what="only the two newest kept once suspended",
    )


def test_suspend_stops_new_runs_and_resume_carries_on_without_a_flood(crons: Crons) -> None:
    crons.apply("pause", "@every 1s")
    crons.wait_made("pause", 2, timeout=30)
    crons.patch("pause", {"suspend": True})
    wait_for(
        lambda: crons.ready("pause").get("reason") == "Suspended",
        timeout=30,
        what="suspended",
    )
    assert "nextScheduleTime" not in crons.status("pause")
    before = crons.slots("pause")
    suspended_at = time.time()
    # Three slots pass while suspended (the time passing is what is tested).
    wait_for(lambda: time.time() > suspended_at + 3, timeout=10, what="three slots")
    assert crons.slots("pause") == before  # none made
    resumed_at = time.time()
    crons.patch("pause", {"suspend": False})
    made = crons.wait_made("pause", len(before) + 2, timeout=30)
    new = [slot(i) for i in made if slot(i) > max(before)]
    assert new and min(new) >= int(resumed_at), (before, new, resumed_at)  # no back-fill


def test_forbid_never_runs_two_at_once(crons: Crons) -> None:
    template = {"spec": {"task": f"{TASKS}.sleep", "args": [3]}}
    crons.apply("forbid", "@every 1s", concurrencyPolicy="Forbid", template=template)
    crons.wait_made("forbid", 2, timeout=60)
    for item in crons.made("forbid"):
        assert crons.runs.finished(item["metadata"]["name"], timeout=30)["phase"] == "Succeeded"
    made = crons.made("forbid")
    spans = sorted(
        (
            datetime.fromisoformat(i["status"]["submittedAt"]).timestamp(),
            datetime.fromisoformat(i["status"]["completedAt"]).timestamp(),
        )
        for i in made
    )
    assert all(b[0] >= a[1] for a, b in pairwise(spans)), spans
    events = crons.runs.events("forbid")
    assert any(reason == "AlreadyActive" for _, reason, _ in events), events


def test_replace_cancels_the_active_run_for_the_new_one(crons: Crons) -> None:
    template = {"spec": {"task": f"{TASKS}.sleep", "args": [30]}}
    crons.apply("replace", "@every 3s", concurrencyPolicy="Replace", template=template)
    made = crons.wait_made("replace", 2, timeout=60)
    first = made[0]["metadata"]["name"]
    ended = crons.runs.finished(first, timeout=30)
    assert (ended["phase"], ended["reason"]) == ("Revoked", "Cancelled")
    assert crons.runs.get(first)["spec"]["cancel"] is True


def test_a_template_the_policies_refuse_is_not_ready_and_makes_no_run(
    stack: Stack, make_namespace: Any, tmp_path: Path
) -> None:
    namespace = make_namespace(f"iso-refuse-{uuid.uuid4().hex[:4]}")
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"policies": [{"namespaces": ["*"], "tasks": ["other.*"]}]}))
    operator = stack.start_operator(
        f"refuse-{uuid.uuid4().hex[:6]}", config_path=config, extra_args=["--namespace", namespace]
    )
    try:
        crons = Crons(TaskRuns(stack, namespace))
        crons.apply("refused", "@every 1s")
        ready = wait_for(
            lambda: (r := crons.ready("refused")) and r,
            timeout=30,
            what="a Ready condition",
        )
        assert (ready["status"], ready["reason"]) == ("False", "TaskNotAllowed")
        assert "policies[0]" in ready["message"]
        assert crons.made("refused") == []
    finally:
        operator.stop()


@pytest.fixture
def own(stack: Stack, make_namespace: Any, tmp_path: Path) -> Iterator[tuple[Crons, Any]]:
    """A namespace of this test's own, and `start(name)`: an operator on it with short
    leases, sharing one Lease."""
    namespace = make_namespace(f"iso-cron-{uuid.uuid4().hex[:4]}")
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(FAST_LEASE))
    lease = f"celery-taskrun-{namespace}"
    started: list[ManagedProcess] = []

    def start(name: str, **env: str) -> ManagedProcess:
        proc = stack.start_operator(
            f"{namespace}-{name}",
            config_path=config,
            env_overrides={"TASKRUN_LEASE_NAME": lease, **env},
            extra_args=["--namespace", namespace],
        )
        started.append(proc)
        return proc

    yield Crons(TaskRuns(stack, namespace)), start
    for proc in started:
        proc.stop()


def missed_counts(crons: Crons, name: str, reason: str) -> int:
    """How many slots the CronTaskRun's Events of `reason` say were not run."""
    total = 0
    for _, why, message in crons.runs.events(name):
        if why == reason:
            head = message.split(" ", 1)[0]
            total += int(head) if head.isdigit() else 1  # "N slots from..." or "slot ..."
    return total


def test_after_a_kill_missed_slots_run_as_missed_runs_says(
    own: tuple[Crons, Any], worker: ManagedProcess
) -> None:
    crons, start = own
    operator = start("a")
    keep = {"successfulRunsHistoryLimit": 100}
    for policy in ("Skip", "Latest", "All"):
        crons.apply(policy.lower(), "@every 2s", missedRuns=policy, **keep)
    for policy in ("skip", "latest", "all"):
        crons.wait_made(policy, 1, timeout=30)
    operator.kill()  # kill -9
    before = {policy: max(crons.slots(policy)) for policy in ("skip", "latest", "all")}
    killed_at = time.time()
    # Several slots pass with no operator; then one starts (and takes the Lease over).
    wait_for(lambda: time.time() > killed_at + 9, timeout=15, what="slots missed")
    start("b")
    for policy in ("skip", "latest", "all"):
        crons.wait_made(policy, len(crons.slots(policy)) + 2, timeout=30)
    for policy in ("skip", "latest", "all"):
        after = [s for s in crons.slots(policy) if s > before[policy]]
        # After the first run the new operator made, every slot: none missed, none twice.
        assert all(b - a == 2 for a, b in pairwise(after)), (policy, after)
        gap = (after[0] - before[policy]) // 2 - 1  # slots between the last and the next run
        print(f"{policy}: {gap} slots missed, then {len(after)} made, none twice")
        if policy == "all":
            assert gap == 0, after  # every missed slot ran, oldest first
        elif policy == "latest":
            assert gap >= 3 and missed_counts(crons, policy, "Superseded") == gap, after
        else:
            assert gap >= 4 and missed_counts(crons, policy, "Skipped") == gap, after
    assert missed_counts(crons, "all", "Superseded") == missed_counts(crons, "all", "Skipped") == 0


def test_two_operators_make_each_slot_once(own: tuple[Crons, Any], worker: ManagedProcess) -> None:
    crons, start = own
    a, b = start("a"), start("b")
    crons.apply("pair", "@every 1s", successfulRunsHistoryLimit=100)
    crons.wait_made("pair", 3, timeout=30)
    lease = crons.runs.stack.kubectl_json(
        "get", "lease", f"celery-taskrun-{crons.runs.namespace}", "-n", "celery-taskrun-system"
    )
    holder = lease["spec"]["holderIdentity"]
    leader, standby = (a, b) if f"_{a.pid}_" in holder else (b, a)
    leader.kill()  # kill -9: the standby takes over within a lease
    killed = max(crons.slots("pair"))
    made = crons.wait_made("pair", len(crons.slots("pair")) + 4, timeout=60)
    slots = [slot(i) for i in made]
    assert len(slots) == len(set(slots)), slots
    after = [s for s in slots if s > killed]
    # Missed while none acted: the latest only (missedRuns Latest), then every slot.
    assert all(b - a == 1 for a, b in pairwise(after[1:])), after
    assert missed_counts(crons, "pair", "Superseded") == after[0] - killed - 1
    assert standby.alive


def test_killed_between_a_runs_create_and_the_status_write_the_slot_still_has_one_run(
    own: tuple[Crons, Any], worker: ManagedProcess
) -> None:
    """The operator exits (as kill -9 would) right after it created a slot's run, before
    the CronTaskRun records the slot (TASKRUN_FAULT=exit-after-create); the next one
    finds the slot due, meets the run's name, and takes the run as the slot's."""
    crons, start = own
    crashing = start("crash", TASKRUN_FAULT="exit-after-create")
    # All: the slot of the run already made is among those the next operator makes.
    crons.apply("crash", "@every 2s", missedRuns="All", successfulRunsHistoryLimit=100)
    [first] = crons.wait_made("crash", 1, timeout=30)
    wait_for(lambda: not crashing.alive, timeout=10, what="the operator exited")
    assert not crons.status("crash").get("lastScheduleTime")  # not recorded
    start("again")
    made = crons.wait_made("crash", 3, timeout=60)
    slots = [slot(item) for item in made]
    assert slots[0] == slot(first) and all(b - a == 2 for a, b in pairwise(slots)), slots
    assert made[0]["metadata"]["uid"] == first["metadata"]["uid"]  # the same run, taken
    active_or_done = crons.status("crash")
    assert active_or_done.get("lastScheduleTime"), active_or_done
    assert crons.runs.finished(first["metadata"]["name"])["phase"] == "Succeeded"
