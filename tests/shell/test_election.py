"""Two operators, one Lease: one acts; a leader that cannot renew stops before the
other may take over; a standby writes nothing and adopts everything when it leads."""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.clients.errors import ApiUnavailable, Conflict
from celery_taskrun.core.records import TaskRecord
from celery_taskrun.engine.elector import Elector
from celery_taskrun.engine.fence import Fence

from fakes import Harness, until


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Leases:
    """The Lease as the API server keeps it: a resourceVersion per write."""

    body: dict[str, Any] | None = None
    version: int = 0
    down: set[str] = field(default_factory=set)  # identities cut off from the API server

    def client(self, who: list[str]) -> Any:
        leases = self

        class Client:
            async def lease(self, namespace: str, name: str, seconds: float) -> Any:
                if who[0] in leases.down:
                    raise ApiUnavailable(0, "Unreachable", "unreachable")
                return leases.body

            async def write_lease(
                self, namespace: str, name: str, spec: Any, version: str | None, seconds: float
            ) -> None:
                if who[0] in leases.down:
                    raise ApiUnavailable(0, "Unreachable", "unreachable")
                current = leases.body["metadata"]["resourceVersion"] if leases.body else None
                if version != current:
                    raise Conflict(409, "Conflict", "the object has been modified")
                leases.version += 1
                meta = {"resourceVersion": str(leases.version)}
                leases.body = {"metadata": meta, "spec": spec}

        return Client()


def elector(leases: Leases, clock: Clock, events: list[str], name: str) -> Elector:
    who = [""]

    async def on_lead() -> None:
        events.append(f"{name} leads")

    async def on_lose() -> None:
        events.append(f"{name} stops")

    config = OperatorConfig(leaseDurationSeconds=15, leaseRenewDeadlineSeconds=10)
    made = Elector(
        leases.client(who),
        config,
        on_lead=on_lead,
        on_lose=on_lose,
        fence=Fence(until=-math.inf, monotonic=clock),
        monotonic=clock,
    )
    who[0] = made.me
    return made


async def turn(*electors: Elector) -> None:
    for e in electors:
        await e._try()
        await e._check()


async def test_one_leads_and_the_other_takes_over_only_after_it_stopped() -> None:
    leases, clock, events = Leases(), Clock(), []
    a, b = elector(leases, clock, events, "a"), elector(leases, clock, events, "b")
    await turn(a, b)
    assert (a.leading, b.leading) == (True, False) and events == ["a leads"]
    for _ in range(20):  # a renews every 2 s: b never takes over
        clock.t += 2
        await turn(a, b)
    assert (a.leading, b.leading) == (True, False)

    assert a.fence.open() and not b.fence.open()

    leases.down.add(a.me)  # a is cut off from the API server
    stopped = took = None
    while took is None:
        clock.t += 0.5
        # Whatever either would do now: never both past their fences at once.
        assert not (a.fence.open() and b.fence.open()), clock.t
        await turn(a, b)
        if stopped is None and not a.leading:
            stopped = clock.t
        if b.leading:
            took = clock.t
    assert stopped is not None and stopped < took  # never both acting
    assert events == ["a leads", "a stops", "b leads"]
    assert b.fence.open() and not a.fence.open()


async def test_a_leader_paused_past_its_lease_is_fenced_until_it_reads_the_lease() -> None:
    leases, clock, events = Leases(), Clock(), []
    a, b = elector(leases, clock, events, "a"), elector(leases, clock, events, "b")
    await turn(a, b)
    clock.t += 20  # a is frozen (SIGSTOP) past its lease; b takes over meanwhile
    await turn(b)
    assert b.leading and b.fence.open()
    assert a.leading and not a.fence.open()  # a has not looked yet, and must not act
    await turn(a)  # a wakes: it reads the Lease, finds b holding it and stops
    assert not a.leading and not a.fence.open()
    assert events == ["a leads", "b leads", "a stops"]


async def test_a_released_lease_is_taken_at_once() -> None:
    leases, clock, events = Leases(), Clock(), []
    a, b = elector(leases, clock, events, "a"), elector(leases, clock, events, "b")
    await turn(a, b)
    await a._release()
    clock.t += 0.1
    await turn(b)
    assert b.leading


async def test_a_standby_writes_nothing_then_adopts_everything(harness: Harness) -> None:
    await harness.tracker.step_down()
    run = await harness.apply({"task": "t.a"})  # seen while standing by: ignored
    assert harness.kube.writes == 0 and not harness.celery.sent
    await harness.tracker.lead()  # takes over: lists what the API server has
    name = run["metadata"]["name"]
    await until(lambda: harness.kube.status(name).get("phase") == "Queued", what="Queued")


async def test_stepping_down_stops_every_step(harness: Harness) -> None:
    run = await harness.apply({"task": "t.a"})
    name = run["metadata"]["name"]
    await until(lambda: harness.kube.status(name).get("phase") == "Queued", what="Queued")
    await harness.tracker.step_down()
    assert not list(harness.tracker.tasks) and not harness.tracker.registry
    writes = harness.kube.writes
    await harness.backend.publish(harness.task_id(run), TaskRecord("SUCCESS", 1))
    assert harness.kube.writes == writes


async def test_stepping_down_outlasts_a_lost_cancellation(harness: Harness) -> None:
    stopped = []

    async def stubborn() -> None:  # as a task whose `wait_for` lost the cancellation
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.append(True)

    harness.tracker.tasks.spawn(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(harness.tracker.step_down(), 5)
    assert stopped and not list(harness.tracker.tasks)
